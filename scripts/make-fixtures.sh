#!/usr/bin/env bash
# Writes the format-v1 fixtures under tests/fixtures/ once. They are committed and must read
# back identically forever: never regenerate them for a format change, add new ones.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=target/release
out=tests/fixtures
rm -rf "$out/v1" "$out/v1-corrupt"
mkdir -p "$out/v1"
log="$out/v1/log"
{
  for i in $(seq 0 59); do
    printf '{"vehicle_id":"truck-%d","ts":%d,"speed":%d.5,"note":"r%d"}\n' $((i % 5)) $((1795000000000 + i * 1000)) $((30 + i)) "$i"
  done
} > "$out/v1/input.ndjson"
"$bin/logd" --log "$log" topics create telemetry --partitions 2 --segment-bytes 4096
"$bin/produce" --log "$log" -q -t telemetry --key vehicle_id --ts ts < <(head -n 40 "$out/v1/input.ndjson")
"$bin/produce" --log "$log" -q -t telemetry --key vehicle_id --ts ts < <(tail -n 20 "$out/v1/input.ndjson")
printf 'plain line\n\xff\xfe\n' | "$bin/produce" --log "$log" -q -t raw --lines
"$bin/consume" --log "$log" -t telemetry --group fixture --max 7 > /dev/null
rm -f "$log"/topics/*/*/.lock "$log"/groups/*.lock
"$bin/consume" --log "$log" -t telemetry > "$out/v1/expected.ndjson"
"$bin/consume" --log "$log" -t raw > "$out/v1/expected-raw.ndjson"
cp -r "$out/v1" "$out/v1-corrupt"
# One flipped bit inside the records of the first frame of partition 0.
seg="$out/v1-corrupt/log/topics/telemetry/0/00000000000000000000.log"
python3 - "$seg" <<'PY'
import sys
p = sys.argv[1]
b = bytearray(open(p, 'rb').read())
b[32 + 40 + 30] ^= 0x01
open(p, 'wb').write(bytes(b))
PY
echo "fixtures written under $out"
