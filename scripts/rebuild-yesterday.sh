#!/usr/bin/env bash
# Rebuilds yesterday's hourly table from the log with the current ETL, as a new version, and
# promotes it only when it is within a tolerance of the live version (else it is kept for
# review and the job fails). Made for cron, e.g. every night at 02:15 UTC:
#
#   15 2 * * * cd /srv/fleet && KAPPA_LOG=/srv/fleet/log ETL=/srv/fleet/etl.jq /srv/kappa/scripts/rebuild-yesterday.sh >> /var/log/fleet-rebuild.log 2>&1
#
# Settings (environment): TOPIC (telemetry), TABLE (hourly), ETL (etl.jq), TOLERANCE (1e-6),
# KAPPA_LOG (the log directory). Exit 0: rebuilt and promoted (or nothing live to compare
# with: promoted); 1: the new version differs beyond the tolerance, or a step failed.
set -euo pipefail
topic=${TOPIC:-telemetry}
table=${TABLE:-hourly}
etl=${ETL:-etl.jq}
tolerance=${TOLERANCE:-1e-6}
# Yesterday in UTC, [00:00, 24:00): replay's --from is inclusive, --to exclusive.
from=$(date -u -d 'yesterday 00:00' +%Y-%m-%dT%H:%M:%SZ)
to=$(date -u -d 'today 00:00' +%Y-%m-%dT%H:%M:%SZ)
# The next version number after every existing one.
# (No table yet: no versions.)
last=$({ store versions "$table" 2>/dev/null || true; } | sed -n 's/^v\([0-9]*\).*/\1/p' | sort -n | tail -n 1)
next=$(( ${last:-0} + 1 ))
echo "$(date -u +%FT%TZ) rebuilding $table@v$next from $topic [$from, $to)"
replay -t "$topic" --from "@$from" --to "@$to" \
  | transform -q -f "$etl" \
  | window -q --tumbling 1h --by vehicle_id --agg 'count(), avg(.speed), max(.speed), p95(.speed)' \
  | store -q --table "$table@v$next" --key vehicle_id,window_start
if ! store versions "$table" | grep -q 'live$'; then
  # Nothing live to compare with: the first build goes live.
  store promote "$table@v$next"
  exit 0
fi
if store diff "$table" "$table@v$next" --tolerance "$tolerance"; then
  store promote "$table@v$next"
else
  echo "$table@v$next differs from the live version beyond $tolerance: kept for review (store promote $table@v$next)" >&2
  exit 1
fi
