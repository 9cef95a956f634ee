#!/usr/bin/env bash
# Control-plane figures, end to end (issue 21): `tugboat server` processes on the embedded
# store, then 3 servers on a 3-member etcd (Debian's etcd-server), all on loopback ports;
# NODES simulated agents (default 5,000) acknowledge INSTANCES instances (default 100,000)
# applied through the HTTP API; then, on etcd, kill -9 of the leader. The servers run in
# release mode. Prints each store's placements/s, API p99 and RSS, then one line:
#   controlplane: embedded X placements/s end to end, etcd X placements/s, leader failover X.X s
# Needs no root and no network namespace: everything is on 127.0.0.1, and everything it
# starts is killed by pid when it ends.
# Usage: bash bench/controlplane/run.sh   (NODES=n INSTANCES=n STORE=embedded|etcd|both;
# TUG_BENCH_KEEP=1 keeps the servers' logs)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
command -v etcd >/dev/null || { echo "bench/controlplane: needs etcd (apt-get install etcd-server)" >&2; exit 1; }
cargo build -q --release -p tugboat --bin tugboat
target=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
echo "bench/controlplane: $(date -u +%F), $(nproc) cores"
# The simulated agents and the servers each hold a connection per node.
ulimit -n "$(ulimit -Hn)"
cargo bench -q -p tugboat --bench controlplane -- --tugboat "$target/release/tugboat" \
  --nodes "${NODES:-5000}" --instances "${INSTANCES:-100000}" --store "${STORE:-both}"
