#!/usr/bin/env bash
# Autoscaling figures (as root): the time from the start of a sustained load to the
# autoscaler's scale-out decision and to the new instances ready, and the requests that
# failed while it scaled back in under a light load. The scenario is the root test
# orchestrator/tests/autoscale.rs (`tugboat up` in a network namespace of its own; a busybox
# httpd service whose CGI burns CPU, cpu request 100m, limit 300m, target 50%, min 1, max 4;
# four clients without pause, then two at 10 requests/s each while it scales in), built in
# release mode and run RUNS times (default 3); each run prints its own line.
# Quotes the medians of the times and the worst run's failed requests.
# Touches nothing outside the namespace it makes; each run removes what it made.
# Usage: bash bench/autoscale/run.sh   (RUNS=n)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
runs=${RUNS:-3}
cd "$root"
cargo test -q --release -p tugboat --test autoscale --no-run 2>/dev/null
decisions=()
readies=()
worst=0
median() {
  printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'
}
echo "bench/autoscale: $(date -u +%F), $(nproc) cores, $runs runs"
for n in $(seq 1 "$runs"); do
  line=$(cargo test -q --release -p tugboat --test autoscale -- --nocapture 2>&1 | grep '^autoscale: ' || true)
  [ -n "$line" ] || { echo "bench/autoscale: run $n did not report" >&2; exit 1; }
  echo "  run $n: ${line#autoscale: }"
  decisions+=("$(sed -n 's/.*decision \([0-9.]*\) s after load.*/\1/p' <<<"$line")")
  readies+=("$(sed -n 's/.*, ready \([0-9.]*\) s,.*/\1/p' <<<"$line")")
  failed=$(sed -n 's/.*, \([0-9]*\) failed requests.*/\1/p' <<<"$line")
  [ "$failed" -gt "$worst" ] && worst=$failed
done
printf 'autoscale: decision %.1f s after load, ready %.1f s, %d failed requests during scale-in\n' \
  "$(median "${decisions[@]}")" "$(median "${readies[@]}")" "$worst"
