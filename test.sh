#!/usr/bin/env bash
# Installs what the tests need (apt packages, the tansu broker), builds, and runs every test.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/meridian/target}"
scripts/setup.sh --with-test-broker
export PATH="$HOME/.cargo/bin:$PATH"
# The end-to-end tests start the `meridian` binary as separate processes.
cargo build --bin meridian
cargo test --workspace "$@"
