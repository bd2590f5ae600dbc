#!/usr/bin/env bash
# Side-by-side benchmarks: kappa's tools beside baselines run in the same session on the same
# file (cat, dd, jq), since the machine is shared and noisy. Each command runs RUNS times and
# the best wall time is kept (jq and mlr, much slower, run once). Usage: scripts/bench.sh [RECORDS]
# (default 2,000,000). ONLY="window transform" runs just those sections (after the baselines);
# the sections are produce, consume, latency, transform, window, compact, store, replay, serve
# and kafka
# (kafka needs tansu: KAPPA_TANSU or the one .ci/run installs, and kafka-python).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000000}
runs=${RUNS:-3}
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-$PWD/target}/release"
work=${BENCH_DIR:-$(mktemp -d)}
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
data="$work/telemetry.ndjson"
scripts/gen-telemetry.sh "$n" > "$data"
bytes=$(stat -c %s "$data")
printf 'records: %d, bytes: %d (%.0f bytes/record), cores: %d\n\n' "$n" "$bytes" "$(echo "$bytes / $n" | bc -l)" "$(nproc)"

best() { # best wall time in seconds of "$@" run $runs times (after an optional setup via $SETUP)
  local b=""
  for _ in $(seq "$runs"); do
    [ -n "${SETUP:-}" ] && eval "$SETUP"
    local s e
    s=$(date +%s.%N)
    eval "$@" > /dev/null
    e=$(date +%s.%N)
    local t
    t=$(echo "$e - $s" | bc -l)
    if [ -z "$b" ] || (( $(echo "$t < $b" | bc -l) )); then b=$t; fi
  done
  echo "$b"
}

row() { # name seconds
  printf '%-58s %7.3f s %10.0f rec/s %8.1f MB/s\n' "$1" "$2" "$(echo "$n / $2" | bc -l)" "$(echo "$bytes / $2 / 1000000" | bc -l)"
}

want() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }

echo "== baselines"
t_cat=$(best "cat '$data'"); row "cat FILE > /dev/null" "$t_cat"
t_dd=$(best "cat '$data' | dd of='$work/copy' bs=64K status=none"); row "cat FILE | dd of=X bs=64K" "$t_dd"
if command -v jq >/dev/null; then t_jq=$(best "jq -c . '$data'"); row "jq -c . FILE" "$t_jq"; fi

if want produce; then
echo "== produce --key vehicle_id --ts ts (validates every line as a JSON object)"
log="$work/log"
SETUP="rm -rf '$log'"
t_pn=$(best "'$bin/produce' --log '$log' -q -t t --key vehicle_id --ts ts --fsync never '$data'"); row "produce --fsync never" "$t_pn"
t_pb=$(best "'$bin/produce' --log '$log' -q -t t --key vehicle_id --ts ts --fsync batch '$data'"); row "produce --fsync batch" "$t_pb"
t_pp=$(best "cat '$data' | '$bin/produce' --log '$log' -q -t t --key vehicle_id --ts ts --fsync batch"); row "cat FILE | produce --fsync batch" "$t_pp"
t_p4=$(best "'$bin/produce' --log '$log' -q -t t --partitions 4 --key vehicle_id --ts ts --fsync batch '$data'"); row "produce --fsync batch, 4 partitions" "$t_p4"
unset SETUP

fi

if want consume; then
echo "== consume (one partition holding all records)"
rm -rf "$log"; "$bin/produce" --log "$log" -q -t t --key vehicle_id --ts ts --fsync never "$data"
t_cv=$(best "'$bin/consume' --log '$log' -t t --value"); row "consume --value > /dev/null" "$t_cv"
t_cw=$(best "'$bin/consume' --log '$log' -t t --value | wc -l"); row "consume --value | wc -l" "$t_cw"
t_ce=$(best "'$bin/consume' --log '$log' -t t"); row "consume (envelopes) > /dev/null" "$t_ce"
t_cat_wc=$(best "cat '$data' | wc -l"); row "baseline: cat FILE | wc -l" "$t_cat_wc"

fi

if want latency; then
echo "== produce | consume --follow latency (--fsync never, 2000 records, 1 ms apart)"
python3 - "$bin" "$work/lat" <<'PY'
import subprocess, sys, time, threading, os
bin, log = sys.argv[1], sys.argv[2]
subprocess.run([f"{bin}/produce", "--log", log, "-q", "-t", "lat"], input=b'{"warm":1}\n', check=True)
c = subprocess.Popen([f"{bin}/consume", "--log", log, "-t", "lat", "--from", "latest", "--follow", "--value"], stdout=subprocess.PIPE)
time.sleep(0.5)
p = subprocess.Popen([f"{bin}/produce", "--log", log, "-q", "-t", "lat", "--fsync", "never"], stdin=subprocess.PIPE)
n = 2000
sent = {}
lat = []
def reader():
    for _ in range(n):
        line = c.stdout.readline()
        now = time.perf_counter_ns()
        i = int(line.split(b'"i":')[1].split(b'}')[0])
        lat.append((now - sent[i]) / 1e6)
t = threading.Thread(target=reader); t.start()
for i in range(n):
    sent[i] = time.perf_counter_ns()
    p.stdin.write(b'{"i":%d}\n' % i); p.stdin.flush()
    time.sleep(0.001)
t.join(); p.stdin.close(); p.wait(); c.terminate(); c.wait()
lat.sort()
print(f"latency over {n} records: p50 {lat[n//2]:.3f} ms, p99 {lat[int(n*0.99)]:.3f} ms, max {lat[-1]:.3f} ms")
PY

fi

slow() { runs=1 best "$@"; }
if want transform; then
log="$work/log"
echo "== transform: the same filter and map in transform, jq -c and mlr (slow peers run once)"
filter='select(.speed > 80)'
map='.speed_kmh = .speed * 1.609 | .alert = (.engine_temp > 95)'
if command -v jq >/dev/null; then
  t_jf=$(slow "jq -c '$filter' '$data'"); row "jq -c 'select(.speed > 80)'" "$t_jf"
  t_jm=$(slow "jq -c '$map' '$data'"); row "jq -c '.speed_kmh = ... | .alert = ...'" "$t_jm"
fi
if command -v mlr >/dev/null; then
  t_mf=$(slow "mlr --ijsonl --ojsonl filter '\$speed > 80' '$data'"); row "mlr filter '\$speed > 80'" "$t_mf"
  t_mm=$(slow "mlr --ijsonl --ojsonl put '\$speed_kmh = \$speed * 1.609; \$alert = \$engine_temp > 95' '$data'"); row "mlr put (the same map)" "$t_mm"
fi
ratio() { # name seconds: the row, then the ratio to jq when jq ran
  row "$1" "$2"
  if [ -n "${3:-}" ]; then printf '%58s %7.1fx jq -c\n' "" "$(echo "$3 / $2" | bc -l)"; fi
}
for j in 1 2; do
  t=$(best "'$bin/transform' -q -j $j '$filter' '$data'"); ratio "transform -j $j 'select(.speed > 80)'" "$t" "${t_jf:-}"
  t=$(best "'$bin/transform' -q -j $j '$map' '$data'"); ratio "transform -j $j (the same map)" "$t" "${t_jm:-}"
done
for j in 1 2; do
  t=$(slow "'$bin/transform' -q -j $j --no-fast-path '$filter' '$data'"); ratio "transform -j $j, every record through jaq: filter" "$t" "${t_jf:-}"
  t=$(slow "'$bin/transform' -q -j $j --no-fast-path '$map' '$data'"); ratio "transform -j $j, every record through jaq: map" "$t" "${t_jm:-}"
done
rm -rf "$log"; "$bin/produce" --log "$log" -q -t t --key vehicle_id --ts ts --fsync never "$data"
t=$(best "'$bin/consume' --log '$log' -t t | '$bin/transform' -q '$filter'"); row "consume | transform 'select(.speed > 80)' (envelopes)" "$t"

echo "== transform latency: one record at a time into a live transform (2000 records, 1 ms apart)"
python3 - "$bin" <<'PY'
import subprocess, sys, time
bin = sys.argv[1]
t = subprocess.Popen([f"{bin}/transform", "-q", ".seen = true"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
n, lat = 2000, []
for i in range(n):
    s = time.perf_counter_ns()
    t.stdin.write(b'{"i":%d}\n' % i); t.stdin.flush()
    t.stdout.readline()
    lat.append((time.perf_counter_ns() - s) / 1e6)
    time.sleep(0.001)
t.stdin.close(); t.wait()
lat.sort()
print(f"latency over {n} records: p50 {lat[n//2]:.3f} ms, p99 {lat[int(n*0.99)]:.3f} ms, max {lat[-1]:.3f} ms")
PY
fi

if want window; then
echo "== window: tumbling 1 minute by vehicle, count/avg/max/p95, beside mlr and DuckDB (2 threads)"
peak() { # peak RSS in MB of the command "$@" (output discarded)
  python3 -c 'import resource, subprocess, sys
subprocess.run(sys.argv[1], shell=True, stdout=subprocess.DEVNULL, check=True)
print(round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024))' "$1"
}
agg='count(), avg(.speed), max(.speed), p95(.speed)'
if command -v mlr >/dev/null; then
  t_mw=$(slow "mlr --ijsonl --ojsonl put '\$minute = int(\$ts / 60000) * 60000' then stats1 -a count,mean,max,p95 -f speed -g vehicle_id,minute '$data'")
  row "mlr put (minute) then stats1 -a count,mean,max,p95" "$t_mw"
fi
cat > "$work/duck.py" <<'PY'
import duckdb, sys
con = duckdb.connect(config={"threads": 2})
src = "read_json(?, format='newline_delimited')" if sys.argv[2] == "auto" else \
      "read_json(?, format='newline_delimited', columns={'vehicle_id':'VARCHAR','ts':'BIGINT','speed':'DOUBLE'})"
con.execute(f"""copy (select vehicle_id, time_bucket(interval 1 minute, epoch_ms(ts)) as w, count(*),
  avg(speed), max(speed), quantile_disc(speed, 0.95) from {src} group by all) to '/dev/null' (format csv)""", [sys.argv[1]])
PY
if python3 -c 'import duckdb' 2>/dev/null; then
  t_da=$(best "python3 '$work/duck.py' '$data' auto"); row "duckdb read_json (detected types), 2 threads" "$t_da"
  t_dc=$(best "python3 '$work/duck.py' '$data' columns"); row "duckdb read_json (3 typed columns), 2 threads" "$t_dc"
  printf '%58s %7d MB peak RSS\n' "" "$(peak "python3 '$work/duck.py' '$data' columns")"
fi
for j in 1 2; do
  cmd="'$bin/window' -q -j $j --tumbling 1m --ts ts --by vehicle_id --agg '$agg' '$data'"
  t=$(best "$cmd"); row "window -j $j --tumbling 1m --by vehicle_id" "$t"
  [ -n "${t_mw:-}" ] && printf '%58s %7.1fx mlr\n' "" "$(echo "$t_mw / $t" | bc -l)"
  [ -n "${t_da:-}" ] && printf '%58s %7.2fx duckdb (detected), %.2fx duckdb (typed)\n' "" "$(echo "$t_da / $t" | bc -l)" "$(echo "$t_dc / $t" | bc -l)"
  printf '%58s %7d MB peak RSS\n' "" "$(peak "$cmd")"
done
echo "== window: 1,000,000 distinct keys open at once ($n records, every key in one minute)"
scripts/gen-telemetry.sh "$n" 1795000000000 1000000 > "$work/keys.ndjson"
cmd="'$bin/window' -q -j 2 --tumbling 1m --ts ts --by vehicle_id --agg '$agg' '$work/keys.ndjson'"
t=$(best "$cmd"); row "window -j 2, 1M groups" "$t"
printf '%58s %7d MB peak RSS\n' "" "$(peak "$cmd")"
# Memory follows open windows x groups, not the input: 2 s windows over the same keys, then
# over four times the records (four such windows one after another): the same peak.
for m in 1 4; do
  scripts/gen-telemetry.sh "$((n * m))" 1795000000000 1000000 > "$work/keys.ndjson"
  cmd="'$bin/window' -q -j 2 --tumbling 2s --ts ts --by vehicle_id --agg '$agg' '$work/keys.ndjson'"
  printf '%-58s %7d MB peak RSS (%d windows of 1M groups, one after another)\n' \
    "window -j 2 --tumbling 2s, $((n * m)) records" "$(peak "$cmd")" "$m"
done
rm -f "$work/keys.ndjson"
fi

if want compact; then
echo "== logd compact: $n records of 100,000 keys (20 updates a key), 16 MiB segments, beside copying the files"
scripts/gen-telemetry.sh "$n" 1795000000000 100000 > "$work/keyed.ndjson"
clog0="$work/clog0"; clog="$work/clog"
rm -rf "$clog0"
"$bin/logd" --log "$clog0" topics create cfg --cleanup-policy compact --segment-bytes 16MiB
"$bin/produce" --log "$clog0" -q -t cfg --key vehicle_id --ts ts --fsync never "$work/keyed.ndjson"
segs=$(du -sb "$clog0/topics/cfg/0" | cut -f1)
t_cp=$(best "rm -rf '$clog'; cp -r '$clog0' '$clog'"); printf '%-58s %7.3f s %8.1f MB/s\n' "baseline: cp -r of the log ($((segs / 1000000)) MB)" "$t_cp" "$(echo "$segs / $t_cp / 1000000" | bc -l)"
t_rd=$(best "cat '$clog0'/topics/cfg/0/*.log"); printf '%-58s %7.3f s %8.1f MB/s\n' "baseline: cat of the segments" "$t_rd" "$(echo "$segs / $t_rd / 1000000" | bc -l)"
t_co=$(best "rm -rf '$clog'; cp -r '$clog0' '$clog'; '$bin/logd' --log '$clog' compact --force")
t_c=$(echo "$t_co - $t_cp" | bc -l)
printf '%-58s %7.3f s %8.1f MB/s  %.2fx cp -r\n' "logd compact --force (less the copy)" "$t_c" "$(echo "$segs / $t_c / 1000000" | bc -l)" "$(echo "$t_cp / $t_c" | bc -l)"
rm -rf "$clog"; cp -r "$clog0" "$clog"; "$bin/logd" --log "$clog" compact --force | sed 's/^/  /'
after=$(du -sb "$clog/topics/cfg/0" | cut -f1)
printf '  partition bytes: %d MB before, %.1f MB after\n' "$((segs / 1000000))" "$(echo "$after / 1000000" | bc -l)"
t_full=$(best "'$bin/consume' --log '$clog0' -t cfg --value"); printf '%-58s %7.3f s\n' "consume --value, before compaction" "$t_full"
t_comp=$(best "'$bin/consume' --log '$clog' -t cfg --value"); printf '%-58s %7.3f s\n' "consume --value, compacted" "$t_comp"
rm -rf "$clog" "$clog0" "$work/keyed.ndjson"
fi

if want store; then
echo "== store: upsert $n records with 100,000 distinct keys (--key vehicle_id), beside SQLite"
scripts/gen-telemetry.sh "$n" 1795000000000 100000 > "$work/upsert.ndjson"
slog="$work/slog"
SETUP="rm -rf '$slog'"
t_sn=$(best "'$bin/store' --log '$slog' -q --table t --key vehicle_id --fsync never < '$work/upsert.ndjson'"); row "store --fsync never" "$t_sn"
t_sb=$(best "'$bin/store' --log '$slog' -q --table t --key vehicle_id --fsync batch < '$work/upsert.ndjson'"); row "store --fsync batch" "$t_sb"
unset SETUP
if command -v sqlite3 >/dev/null; then
  # SQLite's own C code end to end: .import the lines, then one INSERT OR REPLACE (last
  # write wins in input order), without journal or syncs (generous to SQLite).
  { echo "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"; echo "CREATE TABLE raw(line TEXT);"
    echo ".mode ascii"; printf '.separator "\x1f" "\\n"\n'; echo ".import '$work/upsert.ndjson' raw"
    echo "CREATE TABLE t(key TEXT PRIMARY KEY, value TEXT);"
    echo "INSERT OR REPLACE INTO t SELECT json_extract(line, '\$.vehicle_id'), line FROM raw ORDER BY rowid;"
    echo "DROP TABLE raw;"; } > "$work/load.sql"
  SETUP="rm -f '$work/load.db'"
  t_sq=$(slow "sqlite3 '$work/load.db' < '$work/load.sql'"); row "sqlite3: .import + INSERT OR REPLACE, no sync" "$t_sq"
  unset SETUP
  printf '%58s %7.2fx sqlite3 (never), %.2fx (batch)\n' "" "$(echo "$t_sq / $t_sn" | bc -l)" "$(echo "$t_sq / $t_sb" | bc -l)"
fi
echo "== store: a table of 1,000,000 keys: get latency and export"
scripts/gen-telemetry.sh 1000000 1795000000000 1000000 > "$work/keys1m.ndjson"
rm -rf "$slog"
"$bin/store" --log "$slog" -q --table big --key vehicle_id < "$work/keys1m.ndjson"
cargo bench --quiet --bench store_get -- "$slog" big 10000 2>/dev/null
t_v=$(best "'$bin/store' --version"); printf '%-58s %7.2f ms\n' "store --version (starting a process, baseline)" "$(echo "$t_v * 1000" | bc -l)"
t_g=$(best "'$bin/store' --log '$slog' get big truck-500000"); printf '%-58s %7.2f ms\n' "store get (a whole process, best of $runs)" "$(echo "$t_g * 1000" | bc -l)"
n_saved=$n; bytes_saved=$bytes; n=1000000; bytes=$(stat -c %s "$work/keys1m.ndjson")
t_c1=$(best "cat '$work/keys1m.ndjson'"); row "cat of the 1M-record input (baseline)" "$t_c1"
t_e=$(best "'$bin/store' --log '$slog' export big"); row "store export big --ndjson" "$t_e"
t_ec=$(best "'$bin/store' --log '$slog' export big --csv"); row "store export big --csv" "$t_ec"
n=$n_saved; bytes=$bytes_saved
fi

if want replay; then
echo "== replay: $n records across 4 partitions to /dev/null, beside consume of the same topic"
rlog="$work/rlog"
rm -rf "$rlog"
"$bin/produce" --log "$rlog" -q -t t --partitions 4 --key vehicle_id --ts ts --fsync never "$data"
t_rc=$(best "'$bin/consume' --log '$rlog' -t t"); row "consume (baseline)" "$t_rc"
t_rp=$(best "'$bin/replay' --log '$rlog' -t t --order partition"); row "replay --order partition" "$t_rp"
printf '%58s %7.2fx consume\n' "" "$(echo "$t_rc / $t_rp" | bc -l)"
t_rt=$(best "'$bin/replay' --log '$rlog' -t t --order time"); row "replay --order time" "$t_rt"
printf '%58s %7.2fx consume\n' "" "$(echo "$t_rc / $t_rt" | bc -l)"
echo "== replay: pacing, a recorded hour (gen-fleet.sh: 50 vans, one reading a second) at --speed 60x"
scripts/gen-fleet.sh 180000 > "$work/hour.ndjson"
t_p=$(runs=1 best "'$bin/replay' --file '$work/hour.ndjson' --ts ts --speed 60x")
printf '%-58s %7.3f s (the recording spans 3599 s: %.3f s expected, %+.2f%%)\n' "replay --speed 60x" "$t_p" "$(echo "3599 / 60" | bc -l)" "$(echo "($t_p - 3599 / 60) / (3599 / 60) * 100" | bc -l)"
fi

if want serve; then
echo "== serve: produce/consume through logd serve (loopback, --fsync batch) beside the local tools"
slog="$work/srvlog"; llog="$work/srvlocal"
rm -rf "$slog" "$llog"
"$bin/logd" --log "$slog" serve -q --listen 127.0.0.1:0 > "$work/url" &
spid=$!
sleep 0.5
url=$(cat "$work/url")
SETUP="rm -rf '$llog'"
t_lp=$(best "'$bin/produce' --log '$llog' -q -t t --partitions 4 --key vehicle_id --ts ts '$data'"); row "produce --log (baseline)" "$t_lp"
unset SETUP
t_sp=$(runs=1 best "'$bin/produce' --server '$url' -q -t t --partitions 4 --key vehicle_id --ts ts '$data'"); row "produce --server" "$t_sp"
printf '%58s %7.2fx local produce\n' "" "$(echo "$t_lp / $t_sp" | bc -l)"
t_lc=$(best "'$bin/consume' --log '$llog' -t t"); row "consume --log (baseline)" "$t_lc"
t_sc=$(best "'$bin/consume' --server '$url' -t t"); row "consume --server" "$t_sc"
printf '%58s %7.2fx local consume\n' "" "$(echo "$t_lc / $t_sc" | bc -l)"
kill -TERM "$spid"; wait "$spid" || true
echo "== serve: 64 producers x 1,000-record batches for 10 s + 16 followers; 2,000 idle connections"
KAPPA_LOAD_PRODUCERS=64 KAPPA_LOAD_SECONDS=10 KAPPA_LOAD_FOLLOWERS=16 KAPPA_LOAD_IDLE=2000 \
  cargo test --release --test cli serve_load -- --test-threads 1 --nocapture 2>&1 | grep -oE 'serve (load|under).*'
fi

if want kafka; then
echo "== kafka: produce/consume --broker on a tansu broker (loopback, memory storage) beside the local log and kafka-python"
tansu=${KAPPA_TANSU:-$HOME/.cache/kappa/tansu/bin/tansu}
kport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$tansu" broker --listener-url "tcp://127.0.0.1:$kport" --advertised-listener-url "tcp://127.0.0.1:$kport" \
  --storage-engine memory://tansu/ > /dev/null 2>&1 &
kpid=$!
sleep 1
k="kafka://127.0.0.1:$kport"
klog="$work/klocal"
SETUP="rm -rf '$klog'"
t_lp=$(best "'$bin/produce' --log '$klog' -q -t t --partitions 4 --key vehicle_id --ts ts '$data'"); row "produce --log, 4 partitions (baseline)" "$t_lp"
unset SETUP
t_kp=$(runs=1 best "'$bin/produce' --broker '$k' -q -t t --partitions 4 --key vehicle_id --ts ts '$data'"); row "produce --broker (acks=all, idempotent)" "$t_kp"
printf '%58s %7.2fx local produce\n' "" "$(echo "$t_lp / $t_kp" | bc -l)"
"$tansu" topic create py --broker "tcp://127.0.0.1:$kport" --partitions 4 > /dev/null 2>&1 || true
t_pp=$(runs=1 best "python3 scripts/kafka-python-bench.py produce 127.0.0.1:$kport py '$data'"); row "kafka-python produce (acks=all)" "$t_pp"
printf '%58s %7.2fx kafka-python\n' "" "$(echo "$t_pp / $t_kp" | bc -l)"
t_lc=$(best "'$bin/consume' --log '$klog' -t t"); row "consume --log (baseline)" "$t_lc"
t_kc=$(best "'$bin/consume' --broker '$k' -t t"); row "consume --broker" "$t_kc"
printf '%58s %7.2fx local consume\n' "" "$(echo "$t_lc / $t_kc" | bc -l)"
t_pc=$(runs=1 best "python3 scripts/kafka-python-bench.py consume 127.0.0.1:$kport py $n"); row "kafka-python consume" "$t_pc"
printf '%58s %7.2fx kafka-python\n' "" "$(echo "$t_pc / $t_kc" | bc -l)"
kill "$kpid"; wait "$kpid" 2>/dev/null || true
fi
