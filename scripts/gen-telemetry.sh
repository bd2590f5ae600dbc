#!/usr/bin/env bash
# gen-telemetry.sh N [START_MS] [VEHICLES]: N fleet-telemetry records as NDJSON (about 190
# bytes each), one per vehicle per second, deterministic for the same arguments.
set -euo pipefail
n=${1:?usage: gen-telemetry.sh N [START_MS] [VEHICLES]}
start=${2:-1795000000000}
vehicles=${3:-500}
awk -v n="$n" -v start="$start" -v nv="$vehicles" 'BEGIN {
  srand(42);
  for (i = 0; i < n; i++) {
    v = i % nv; t = start + int(i / nv) * 1000;
    speed = 40 + (v * 7 + i * 13) % 80 + (i % 10) / 10;
    printf "{\"vehicle_id\":\"truck-%04d\",\"driver\":\"d-%04d\",\"ts\":%.0f,\"speed\":%.1f,\"lat\":%.6f,\"lon\":%.6f,\"heading\":%d,\"fuel\":%.3f,\"engine_temp\":%.1f,\"odometer\":%.1f,\"status\":\"moving\"}\n",
      v, (v * 31) % 1000, t, speed, 52.3 + (v % 100) / 1000 + i % 997 / 1e6, 13.2 + (v % 50) / 1000 + i % 991 / 1e6,
      (v * 37 + i) % 360, 0.2 + (i % 800) / 1000, 80 + (i % 200) / 10, 100000 + v * 1000 + i / 10;
  }
}'
