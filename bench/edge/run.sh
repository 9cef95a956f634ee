#!/usr/bin/env bash
# Edge figures (as root): the bytes the node writes per day with the shop idle, read from
# /proc/PID/io (write_bytes: the page-cache pages a process dirtied, data and metadata) of
# `tugboat server`, `tugboat agent` and the monitors over DURATION seconds
# (default 600, the issue asks for at least 10 minutes), and the time from an agent's start
# to every instance running and its service answering after a reboot while the server is
# unreachable (the root test orchestrator/tests/edge.rs, which prints it).
# The agent runs with --log-mode LOG_MODE (default ring: the containers' output stays in
# memory, as an edge device asks; `file` writes it to container.log through the monitors).
# What the containers write themselves is reported apart: their output through the monitors
# (file mode), and the commands of exec probes (the shop has none since its cart's probe, which
# touched a file in its volume every 5 s, became an http probe), which run as the agent's
# children: a child's write_bytes is added to its parent's when it is reaped, so the agent's
# own writes are the sum over its live threads and the rest is its children's.
# Runs inside a network namespace it makes and deletes; touches nothing else on the host.
# Usage: bash bench/edge/run.sh   (DURATION=seconds; LOG_MODE=ring|file; TUGBOAT=path to the
# binary, default the release build under CARGO_TARGET_DIR or target/)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
duration=${DURATION:-600}
if [ -z "${TUGBOAT:-}" ]; then
  (cd "$root" && cargo build -q --release -p tugboat -p tug-runtime -p tugboat-monitor)
fi
bin=${TUGBOAT:-${CARGO_TARGET_DIR:-$root/target}/release/tugboat}
log_mode=${LOG_MODE:-ring}
ns=tugedge$$
dir=/tmp/tugedge$$
api=127.0.0.1:7480
in_ns() { nsenter --net=/run/netns/$ns "$@"; }
spawn_in_ns() { nsenter --net=/run/netns/$ns "$@" & }
pids=()
cleanup() {
  set +e
  if [ -f "$dir/server/token" ]; then
    for s in front catalog cart orders payments; do
      in_ns curl -s -o /dev/null -X DELETE --cacert "$dir/server/tls/ca.pem" -H "Authorization: Bearer $(cat "$dir/server/token")" https://$api/v1/services/$s
    done
    for _ in $(seq 1 300); do
      [ -z "$(ls -A "$dir/agent/instances" 2>/dev/null)" ] && break; sleep 0.1
    done
  fi
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  ip netns del $ns 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT
mkdir -p "$dir"
TUGBOAT=$bin bash "$root/examples/shop/build.sh" --data-dir "$dir/build/data" --oci "$dir/build/oci" >/dev/null
ip netns add $ns
ip -n $ns link set lo up
spawn_in_ns "$bin" server --data-dir "$dir/server" --listen $api 2>"$dir/server.log"
pids+=($!); server=$!
for _ in $(seq 1 100); do [ -f "$dir/server/token" ] && break; sleep 0.05; done
token=$(cat "$dir/server/token")
# Over TLS: the client trusts the cluster CA; the agent joins with a join token and the CA's
# hash, and then speaks with its own certificate (as a user runs it; docs/security.md).
ca="$dir/server/tls/ca.pem"
for _ in $(seq 1 100); do
  in_ns "$bin" --addr $api --token "$token" --ca "$ca" describe cluster >/dev/null 2>&1 && break
  sleep 0.1
done
hash=$(in_ns "$bin" --addr $api --token "$token" --ca "$ca" -o json describe cluster |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["ca_hash"])')
join=$(in_ns "$bin" --addr $api --token "$token" --ca "$ca" token create --ttl 10m)
imports=()
for d in "$dir"/build/oci/*; do imports+=(--import "$d"); done
spawn_in_ns "$bin" --addr $api --data-dir "$dir/agent" agent --log-mode "$log_mode" --node edge --join-token "$join" --ca-hash "$hash" "${imports[@]}" 2>"$dir/agent.log"
pids+=($!); agent=$!
in_ns "$bin" --addr $api --token "$token" --ca "$ca" apply -f "$root/examples/shop.yaml" >/dev/null
ready=0
for _ in $(seq 1 600); do
  ready=$(in_ns "$bin" --addr $api --token "$token" --ca "$ca" get instances -o json 2>/dev/null |
    grep -o '"ready": *true' | wc -l || true)
  [ "$ready" -ge 9 ] && break
  sleep 0.2
done
[ "$ready" -ge 9 ] || { echo "bench/edge: the shop did not get ready" >&2; cat "$dir/agent.log" >&2; exit 1; }
# Settle (first reports, images), then measure.
sleep 10
monitors() {
  for p in /proc/[0-9]*; do
    tr '\0' ' ' 2>/dev/null < "$p/cmdline" | grep -qE "(tugboat-| )monitor .*$dir/" && echo "${p#/proc/}"
  done
  return 0
}
written() { # pids... -> total write_bytes
  local sum=0 p
  for p in "$@"; do
    sum=$((sum + $(awk '/^write_bytes/ {print $2}' "/proc/$p/io" 2>/dev/null || echo 0)))
  done
  echo $sum
}
threads() { # pid -> write_bytes of its live threads (not of its reaped children)
  local sum=0 t
  for t in /proc/"$1"/task/*; do
    sum=$((sum + $(awk '/^write_bytes/ {print $2}' "$t/io" 2>/dev/null || echo 0)))
  done
  echo $sum
}
mons=$(monitors)
# shellcheck disable=SC2086
declare -A before=([server]=$(written $server) [agent]=$(written $agent) [agent_threads]=$(threads $agent) [monitors]=$(written $mons))
sync
sleep "$duration"
sync
# shellcheck disable=SC2086
declare -A after=([server]=$(written $server) [agent]=$(written $agent) [agent_threads]=$(threads $agent) [monitors]=$(written $mons))
per_day() { awk -v b="$1" -v s="$duration" 'BEGIN { printf "%.1f", b / s * 86400 / 1e6 }'; }
delta() { echo $((after[$1] - before[$1])); }
# The agent's own: its threads (none exits while the node idles); the rest of its figure is
# its reaped children's: exec probes' helpers and the commands they run in containers.
agent_own=$(delta agent_threads)
probes=$(( $(delta agent) - agent_own ))
# In ring mode what the monitors write is their own (the output stays in memory); in file
# mode it is the containers' output (a ring run shows what is left of their own).
if [ "$log_mode" = ring ]; then
  monitors_own=$(delta monitors); output=0
else
  monitors_own=0; output=$(delta monitors)
fi
node=$(( $(delta server) + agent_own + monitors_own ))
echo "bench/edge: $(date -u +%F), $(nproc) cores, shop idle (9 instances) for ${duration}s, --log-mode $log_mode"
printf '  %-40s %8s MB/day\n' "server" "$(per_day "$(delta server)")" \
  "agent (its own threads)" "$(per_day "$agent_own")" \
  "monitors (their own)" "$(per_day "$monitors_own")" \
  "node's own writes" "$(per_day "$node")" \
  "containers: output through the monitors" "$(per_day "$output")" \
  "containers: exec probes' commands" "$(per_day "$probes")"
per_process="server $(per_day "$(delta server)"), agent $(per_day "$agent_own"), monitors $(per_day "$monitors_own"); containers apart: output $(per_day "$output"), exec probes $(per_day "$probes")"
cleanup
trap - EXIT
# Offline reboot recovery: the root test measures it (server killed, every process of the
# node killed, then only the agent started).
recovery=$(cd "$root" && cargo test -q -p tugboat --test edge -- --nocapture 2>&1 |
  sed -n 's/.*service answers \([0-9.]*\) s after the agent started.*/\1/p' | head -1)
[ -n "$recovery" ] || { echo "bench/edge: the offline reboot test did not report" >&2; exit 1; }
echo "  ($per_process MB/day)"
# The last line, exactly as issue 14 gives it (scripts read it).
echo "edge: $(per_day "$node") MB/day written by the node, offline reboot recovery $recovery s"
