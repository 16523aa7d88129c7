#!/usr/bin/env bash
# Builds Meridian and runs the all-in-one local cluster with sample data (`meridian dev`).
# Extra arguments go to `meridian dev` (see `meridian dev --help`).
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/meridian/target}"
scripts/setup.sh
cargo build --bin meridian
exec "$CARGO_TARGET_DIR/debug/meridian" dev "$@"
