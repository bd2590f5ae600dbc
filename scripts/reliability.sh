#!/usr/bin/env bash
# The reliability battery (docs/DURABILITY.md), all of it, ending with one table:
#   crash loop, corruption trials, full disk, concurrency   (scripts/reliability.py)
#   hostile input                                           (cargo test --test cli hostile)
#   power cuts at crash points                              (cargo test --features failpoints)
#   fuzzing, when --fuzz SECONDS is given                   (scripts/fuzz.sh; nightly)
#
#   scripts/reliability.sh                  200 kills per fsync mode, 1000 trials, 60 s run
#   scripts/reliability.sh --short          the CI version: 10 kills, 150 trials, 15 s
#   scripts/reliability.sh --fuzz 60 ...    also each fuzz target for 60 s
# Other flags go to scripts/reliability.py (--only crash,corrupt,disk,concurrency, --seed N).
# Exit 1 when any check failed.
set -uo pipefail
cd "$(dirname "$0")/.."
fuzz=""
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --fuzz) fuzz="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kappa/target}"
rows="$(mktemp)"
trap 'rm -f "$rows"' EXIT
status=0

# A cargo test run as one row of the table.
test_row() {
  local name="$1" what="$2"
  shift 2
  local log
  log="$(mktemp)"
  if cargo test --release --quiet "$@" >"$log" 2>&1; then
    echo "| $name | $what | $(grep -o '[0-9]* passed' "$log" | tail -1); 0 failed |" >>"$rows"
  else
    echo "| $name | $what | FAILED: $(grep -o '[0-9]* failed' "$log" | tail -1) |" >>"$rows"
    tail -40 "$log" >&2
    status=1
  fi
  rm -f "$log"
}

# The power-cut tests build the tools with crash points; the hostile-input test then builds
# them back without, and the battery runs those.
test_row "power cuts" "10 crash points of produce and 7 of compaction at several passes, files cut to their last fsync, seeks before recovery, recovery, --source rerun" \
  --features failpoints --test cli powercut
test_row "hostile input" "bad-input corpus and a 100 MB line through produce, transform, window, store, replay --file in every --on-error mode, and logd serve" \
  --test cli hostile
# The battery last, so its table (with the rows above appended) ends the output.
python3 scripts/reliability.py --bin "$CARGO_TARGET_DIR/release" --rows "$rows" "${args[@]}" || status=1
if [ -n "$fuzz" ]; then
  scripts/fuzz.sh "$fuzz" || status=1
fi
exit $status
