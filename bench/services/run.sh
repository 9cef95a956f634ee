#!/usr/bin/env bash
# Service address vs direct connections (as root): the same server instance reached from a
# container directly at its address and through a service address balanced by tug-netns'
# nftables services (DNAT), in network namespaces the benchmark makes (tgsvc<pid>...; the
# root namespace is never changed, everything is deleted at the end). Medians of RUNS runs
# (default 5) of: new connections per second, requests per second on a kept-alive
# connection, bulk MB/s. Ends with one line:
#   services: service/direct connections/s X.XX, requests/s X.XX, MB/s X.XX
# Usage: bash bench/services/run.sh   (RUNS=n)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
echo "bench/services: $(date -u +%F), $(nproc) cores, $(uname -r)"
cargo bench -q -p tug-netns --bench services --no-run 2>/dev/null
cargo bench -q -p tug-netns --bench services -- "runs=${RUNS:-5}"
