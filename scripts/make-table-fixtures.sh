#!/usr/bin/env bash
# Writes the table fixtures (format v1) under tests/fixtures/table-v1 and table-v1-corrupt
# once. They are committed and must read back identically forever: never regenerate them for
# a format change, add new ones.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-target}/release"
out=tests/fixtures
rm -rf "$out/table-v1" "$out/table-v1-corrupt"
mkdir -p "$out/table-v1"
log="$out/table-v1/log"
env() { # envelopes of topic "tel" partition P, offsets FROM..TO
  for o in $(seq "$2" "$3"); do
    printf '{"topic":"tel","partition":%d,"offset":%d,"ts":%d,"key":"dev-%d","value":{"n":%d,"temp":%d.25}}\n' \
      "$1" "$o" $((1795000000000 + o * 1000)) $((o % 6)) "$o" $((20 + o))
  done
}
# v1: two runs over overlapping ranges (the second skips what the first applied), a delete,
# a compaction, then one more batch.
env 0 0 9 | "$bin/store" --log "$log" -q --table fleet
{ env 0 5 14; env 1 0 3; } | "$bin/store" --log "$log" -q --table fleet
printf '{"key":"dev-2","value":null}\n' | "$bin/store" --log "$log" -q --table fleet
"$bin/store" --log "$log" compact fleet
env 1 4 6 | "$bin/store" --log "$log" -q --table fleet
# v2: plain records keyed by a field, not promoted.
printf '{"id":"a","v":1}\n{"id":"b","v":[1,2]}\n{"id":"a","v":3}\n' \
  | "$bin/store" --log "$log" -q --table fleet@v2 --key id
rm -f "$log"/tables/*/.lock "$log"/tables/*/*/.lock
"$bin/store" --log "$log" export fleet > "$out/table-v1/expected.ndjson"
"$bin/store" --log "$log" export fleet@v2 > "$out/table-v1/expected-v2.ndjson"
"$bin/store" --log "$log" stats fleet > "$out/table-v1/expected-stats.json"
cp -r "$out/table-v1" "$out/table-v1-corrupt"
# One flipped bit inside the first frame's records of v1's changelog.
seg=$(ls "$out"/table-v1-corrupt/log/tables/fleet/v1.g*/00000000000000000000.log)
python3 - "$seg" <<'PY'
import sys
p = sys.argv[1]
b = bytearray(open(p, 'rb').read())
b[32 + 40 + 30] ^= 0x01
open(p, 'wb').write(bytes(b))
PY
echo "table fixtures written under $out"
