#!/usr/bin/env bash
# Validates the ETL (etl.jq) on the recorded dump: replays it through the transform and a
# per-minute window into a fresh table, then compares the table with expected.csv.
# Exit 0: same results; 1: they differ (the diff is printed); 2: a usage or setup problem.
# `check.sh --update` rewrites expected.csv from the current ETL (review it, then commit it).
set -euo pipefail
cd "$(dirname "$0")"
KAPPA_LOG=$(mktemp -d)
export KAPPA_LOG
trap 'rm -rf "$KAPPA_LOG"' EXIT
replay --file dump.ndjson --ts ts \
  | transform -q -f etl.jq \
  | window -q --tumbling 1m --ts ts --by vehicle_id \
      --agg 'count(), avg(.speed_kmh), max(.speed_kmh), sum(.speeding) as speeding' \
  | store -q --table out --key vehicle_id,window_start
if [ "${1:-}" = "--update" ]; then
  store export out --csv > expected.csv
  echo "expected.csv rewritten: review and commit it"
  exit 0
fi
store diff out ./expected.csv --tolerance 1e-9
