#!/usr/bin/env bash
# Regenerates man/*.1 from the clap Commands.
cd "$(dirname "$0")/.." && KAPPA_UPDATE_MAN=1 cargo test --release --test cli man_pages_are_fresh
