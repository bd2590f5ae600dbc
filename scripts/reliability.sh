#!/usr/bin/env bash
# The reliability battery (docs/DURABILITY.md): crash loop, corruption trials, full disk.
#   scripts/reliability.sh           the full battery (100 kills per fsync mode, 1000 trials)
#   scripts/reliability.sh --short   the CI version (10 kills per mode, 150 trials)
# Other flags go to scripts/reliability.py (--only crash,corrupt,disk, --seed N, ...).
# Prints a table; exit 1 when any check failed.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bins
target="${CARGO_TARGET_DIR:-$PWD/target}"
exec python3 scripts/reliability.py --bin "$target/release" "$@"
