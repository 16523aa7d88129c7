#!/usr/bin/env bash
# Installs what building and testing Meridian needs. Safe to run again: it only installs what
# is missing. Usage: scripts/setup.sh [--with-test-broker]
set -euo pipefail

need_apt=()
# iproute2 and iptables: the network-fault chaos test puts nodes in network namespaces.
for pkg in libclang-dev clang cmake pkg-config g++ make zlib1g-dev iproute2 iptables; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} (apt)"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is missing; install Rust (rustup) first" >&2
  exit 1
fi

if [ "${1:-}" = "--with-test-broker" ]; then
  # The Kubernetes manifests are checked against the Kubernetes schemas, offline.
  if ! python3 -c "import kubernetes_validate" >/dev/null 2>&1; then
    echo "setup: installing kubernetes-validate (pip) for the manifest test"
    python3 -m pip install -q kubernetes-validate
  fi
  # The ClickHouse client most ClickHouse users reach for, for the ClickHouse HTTP test.
  if ! python3 -c "import clickhouse_connect" >/dev/null 2>&1; then
    echo "setup: installing clickhouse-connect (pip) for the ClickHouse client test"
    python3 -m pip install -q clickhouse-connect
  fi
  if ! command -v tansu >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/tansu" ]; then
    echo "setup: installing the tansu Kafka broker for the end-to-end tests (cargo install, about 11 minutes once)"
    cargo install tansu --locked --features dynostore,libsql
  fi
fi
