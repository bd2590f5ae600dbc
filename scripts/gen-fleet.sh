#!/usr/bin/env bash
# gen-fleet.sh N [START_MS] [VEHICLES]: N fleet readings as NDJSON, one per vehicle per second,
# with each vehicle's speed following its own course (km/h) and the change since its previous
# reading (`speed_delta`, as telematics units report it), including hard braking now and then.
# Deterministic for the same arguments.
set -euo pipefail
n=${1:?usage: gen-fleet.sh N [START_MS] [VEHICLES]}
start=${2:-1795000000000}
vehicles=${3:-50}
awk -v n="$n" -v start="$start" -v nv="$vehicles" 'BEGIN {
  srand(7);
  for (v = 0; v < nv; v++) { speed[v] = 40 + (v * 13) % 60; cruise[v] = 70 + (v * 17) % 70; }
  for (i = 0; i < n; i++) {
    v = i % nv; t = start + int(i / nv) * 1000;
    r = rand();
    if (r < 0.01) d = -(18 + int(rand() * 15));        # hard braking
    else if (r < 0.06) d = -(4 + int(rand() * 8));     # braking
    else d = int(rand() * 7) - 3 + (speed[v] < cruise[v] ? 1 : 0);  # cruising back up
    s = speed[v] + d; if (s < 0) s = 0; if (s > 190) s = 190;
    d = s - speed[v]; speed[v] = s;
    printf "{\"vehicle_id\":\"van-%03d\",\"driver\":\"drv-%03d\",\"ts\":%.0f,\"speed_kmh\":%d,\"speed_delta\":%d}\n", v, (v * 7) % 100, t, s, d;
  }
}'
