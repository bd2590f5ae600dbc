#!/usr/bin/env bash
# Runs the cargo-fuzz targets (fuzz/fuzz_targets/) and prints executions and coverage.
#   scripts/fuzz.sh [SECONDS] [TARGET...]    default: 60 s each, every target
# Needs a nightly toolchain (rustup toolchain install nightly); installs cargo-fuzz if absent.
# Seeds are in fuzz/seeds/TARGET; the growing corpus in fuzz/corpus/TARGET; a crash is saved
# under fuzz/artifacts/TARGET and becomes a regression test in the crate's unit tests.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(frame index envelope csv window_spec template)
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
# Instrumented builds differ from normal ones: their own cache.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kappa/target}-fuzz"
rows=()
status=0
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/seeds/$t"
  log="$(mktemp)"
  if cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
      -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result="CRASH (see fuzz/artifacts/$t)"
    status=1
    tail -30 "$log" >&2
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
  corp=$(ls "fuzz/corpus/$t" | wc -l)
  rows+=("| $t | ${secs} s | ${runs:-?} | ${cov:-?} edges, ${ft:-?} features | $corp | $result |")
  rm -f "$log"
done
echo "| target | time | executions | coverage | corpus | result |"
echo "| --- | --- | --- | --- | --- | --- |"
printf '%s\n' "${rows[@]}"
exit $status
