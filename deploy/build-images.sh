#!/usr/bin/env bash
# Builds the `meridian` and `tansu` container images FROM scratch: each holds one binary and the
# shared libraries `ldd` lists for it (no base image or registry is needed).
# Usage: deploy/build-images.sh   (after ./dev.sh or ./test.sh has built the binary)
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$HOME/.cache/meridian/target}"

image() { # name binary
  local name=$1 bin=$2 stage
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' RETURN
  mkdir -p "$stage/bin" "$stage/tmp"
  cp "$bin" "$stage/bin/$name"
  ldd "$bin" | awk '$3 ~ /^\// {print $3} $1 ~ /^\/.*ld-linux/ {print $1}' | while read -r lib; do
    cp --parents -L "$lib" "$stage"
  done
  printf 'FROM scratch\nCOPY . /\nENTRYPOINT ["/bin/%s"]\n' "$name" > "$stage/Dockerfile"
  docker build -q -t "$name:local" "$stage"
  echo "built image $name:local"
}

[ -x "$target/debug/meridian" ] || cargo build --bin meridian
image meridian "$target/debug/meridian"
tansu=$(command -v tansu || echo "$HOME/.cargo/bin/tansu")
[ -x "$tansu" ] || scripts/setup.sh --with-test-broker
image tansu "$tansu"
