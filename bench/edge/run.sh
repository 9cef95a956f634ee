#!/usr/bin/env bash
# Edge figures (as root): the bytes the node writes per day with the shop idle, read from
# /proc/PID/io (write_bytes: what reached the block layer) of `tugboat server`, `tugboat
# agent` and the monitors over DURATION seconds (default 600, the issue asks for
# at least 10 minutes), and the time from an agent's start to every instance running and its
# service answering after a reboot while the server is unreachable (the root test
# orchestrator/tests/edge.rs, which prints it).
# Runs inside a network namespace it makes and deletes; touches nothing else on the host.
# Usage: bash bench/edge/run.sh   (DURATION=seconds; TUGBOAT=path to the binary)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
duration=${DURATION:-600}
if [ -z "${TUGBOAT:-}" ]; then
  (cd "$root" && cargo build -q --release -p tugboat -p tug-runtime)
fi
bin=${TUGBOAT:-$root/target/release/tugboat}
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
spawn_in_ns "$bin" --addr $api --data-dir "$dir/agent" agent --node edge --join-token "$join" --ca-hash "$hash" "${imports[@]}" 2>"$dir/agent.log"
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
    tr '\0' ' ' < "$p/cmdline" 2>/dev/null | grep -q " monitor .*$dir/" && echo "${p#/proc/}"
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
mons=$(monitors)
# shellcheck disable=SC2086
declare -A before=([server]=$(written $server) [agent]=$(written $agent) [monitors]=$(written $mons))
sync
sleep "$duration"
sync
# shellcheck disable=SC2086
declare -A after=([server]=$(written $server) [agent]=$(written $agent) [monitors]=$(written $mons))
per_day() { awk -v b="$1" -v s="$duration" 'BEGIN { printf "%.1f", b / s * 86400 / 1e6 }'; }
total=0
echo "bench/edge: $(date -u +%F), $(nproc) cores, shop idle (9 instances) for ${duration}s"
for k in server agent monitors; do
  d=$((after[$k] - before[$k]))
  total=$((total + d))
  printf '  %-9s %8s MB/day\n' "$k" "$(per_day $d)"
done
echo "  (monitors: the containers' own output, e.g. each probe request httpd logs)"
node=$((total - (after[monitors] - before[monitors])))
echo "  node without the containers' logs: $(per_day $node) MB/day"
cleanup
trap - EXIT
# Offline reboot recovery: the root test measures it (server killed, every process of the
# node killed, then only the agent started).
recovery=$(cd "$root" && cargo test -q -p tugboat --test edge -- --nocapture 2>&1 |
  sed -n 's/.*service answers \([0-9.]*\) s after the agent started.*/\1/p' | head -1)
[ -n "$recovery" ] || { echo "bench/edge: the offline reboot test did not report" >&2; exit 1; }
echo "edge: $(per_day $total) MB/day written by the node, offline reboot recovery $recovery s"
