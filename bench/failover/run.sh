#!/usr/bin/env bash
# Failover figures (as root): the time from a node's death to all replicas of a service
# ready on the other nodes, and the requests that failed meanwhile for a client sending 20
# requests/s with a 2 s timeout. The scenario is the root test orchestrator/tests/failover.rs
# (three hosts in network namespaces of its own on a bridge in a fourth; server with the
# default LAN timers; 6 replicas spread 2/2/2; one node's link cut and its agent killed),
# built in release mode and run RUNS times (default 5); each run prints its own line.
# Quotes the median time and the worst run's failed requests.
# Touches nothing outside the namespaces it makes; each run removes what it made.
# Usage: bash bench/failover/run.sh   (RUNS=n)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
runs=${RUNS:-5}
cd "$root"
cargo test -q --release -p tugboat --test failover --no-run 2>/dev/null
times=()
worst=0
replicas=
echo "bench/failover: $(date -u +%F), $(nproc) cores, $runs runs"
for n in $(seq 1 "$runs"); do
  line=$(cargo test -q --release -p tugboat --test failover -- --nocapture 2>&1 | grep '^failover: ' || true)
  [ -n "$line" ] || { echo "bench/failover: run $n did not report" >&2; exit 1; }
  echo "  run $n: ${line#failover: }"
  replicas=$(sed -n 's/^failover: \([0-9]*\/[0-9]*\) replicas.*/\1/p' <<<"$line")
  times+=("$(sed -n 's/.* ready \([0-9.]*\) s after.*/\1/p' <<<"$line")")
  failed=$(sed -n 's/.*, \([0-9]*\) failed requests/\1/p' <<<"$line")
  [ "$failed" -gt "$worst" ] && worst=$failed
done
median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}')
echo "failover: $replicas replicas ready $(printf '%.1f' "$median") s after node loss, $worst failed requests"
