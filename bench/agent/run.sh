#!/usr/bin/env bash
# Agent benchmarks (as root): from `apply` of 100 instances of a small image to all 100
# ready, resident memory of server, agent and a monitor at idle with the shop, and the
# monitors' resident memory per running container next to podman's conmon (100 containers
# of the same image each).
# Runs inside a network namespace it makes and deletes; touches nothing else on the host.
# Usage: bench/agent/run.sh   (what scripts/install.sh installs, into a temp PREFIX: it
# builds what is not built; or TUGBOAT=path to a tugboat binary, with tug and, if any,
# tugboat-monitor next to it)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
ns=tugbench$$
dir=/tmp/tugbench$$
if [ -n "${TUGBOAT:-}" ]; then
  bin=$TUGBOAT
else
  mkdir -p "$dir"
  PREFIX=$dir/prefix SYSTEMD_DIR='' bash "$root/scripts/install.sh" 2>"$dir/install.log" ||
    { cat "$dir/install.log" >&2; rm -rf "$dir"; exit 1; }
  bin=$dir/prefix/bin/tugboat
fi
[ -x "$bin" ] || { echo "no tugboat at $bin" >&2; exit 1; }
api=127.0.0.1:7480
in_ns() { nsenter --net=/run/netns/$ns "$@"; }
# nsenter execs the command: $! is then the tugboat process itself.
spawn_in_ns() { nsenter --net=/run/netns/$ns "$@" & }
pids=()
cleanup() {
  set +e
  if [ -f "$dir/server/token" ]; then
    for s in web front catalog cart orders payments; do
      in_ns curl -s -o /dev/null -X DELETE --cacert "$dir/server/tls/ca.pem" -H "Authorization: Bearer $(cat $dir/server/token)" https://$api/v1/services/$s
    done
    for _ in $(seq 1 200); do
      [ -z "$(ls -A $dir/agent/instances 2>/dev/null)" ] && break; sleep 0.1
    done
  fi
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  if [ -d "$dir/podman" ]; then
    "${P[@]}" rm -f -a -t 0 >/dev/null 2>&1
    "${P[@]}" system reset -f >/dev/null 2>&1
    # podman's cgroupfs parent, if this run made it (conmon leaves it a moment later).
    if [ "$libpod_before" = 0 ]; then
      for _ in $(seq 1 50); do
        for h in /sys/fs/cgroup/*/libpod_parent; do
          [ -d "$h" ] || continue
          rmdir "$h/conmon" 2>/dev/null; rmdir "$h" 2>/dev/null
        done
        ls -d /sys/fs/cgroup/*/libpod_parent >/dev/null 2>&1 || break
        sleep 0.2
      done
    fi
  fi
  ip netns del $ns 2>/dev/null
  rm -rf "$dir"
}
libpod_before=$(ls -d /sys/fs/cgroup/*/libpod_parent >/dev/null 2>&1 && echo 1 || echo 0)
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
spawn_in_ns "$bin" --addr $api --data-dir "$dir/agent" agent --node bench --join-token "$join" --ca-hash "$hash" "${imports[@]}" 2>"$dir/agent.log"
pids+=($!); agent=$!
cli() { in_ns "$bin" --addr $api --token "$token" --ca "$ca" "$@"; }
ready_count() {
  in_ns curl -s --cacert "$ca" -H "Authorization: Bearer $token" "https://$api/v1/instances?service=$1" |
    python3 -c 'import json,sys; print(sum(1 for i in json.load(sys.stdin)["items"] if i.get("ready")))'
}
for _ in $(seq 1 100); do cli get nodes 2>/dev/null | grep -q bench && break; sleep 0.1; done

cli apply -f "$root/examples/shop.yaml" >/dev/null
while [ "$(cli get instances | grep -c ' yes ')" -lt 9 ]; do sleep 0.2; done
sleep 30
rss() {
  printf '%s (private %s)' "$(awk '/VmRSS/ {printf "%.1f MB", $2/1024}' /proc/$1/status)" \
    "$(awk '/^Private_(Clean|Dirty)/ {s += $2} END {printf "%.1f MB", s/1024}' /proc/$1/smaps_rollup)"
}
# This run's monitors (`tugboat-monitor ...`, or `tugboat monitor ...` without it) and
# podman's conmons, by their command lines naming this run's directory.
pids_matching() {
  local p
  for p in /proc/[0-9]*; do
    tr '\0' ' ' 2>/dev/null < "$p/cmdline" | grep -qE "$1" && echo "${p#/proc/}"
  done
  return 0
}
monitors() { pids_matching "(tugboat-| )monitor .*$dir/"; }
conmons() { pids_matching "^[^ ]*conmon .*$dir/podman/"; }
# Median VmRSS in MB of the pids on stdin.
median_rss() {
  while read -r p; do awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null; done |
    python3 -c 'import sys,statistics; v=[int(l) for l in sys.stdin]; print(f"{statistics.median(v)/1024:.1f}" if v else "?")'
}
monitor=$(monitors | sed -n 1p)
echo "idle with the shop (9 instances), resident memory:"
echo "  server  $(rss $server)"
echo "  agent   $(rss $agent)"
echo "  monitor $(rss $monitor) (one per container: $(readlink /proc/$monitor/exe))"
ps -o pid,rss,args -p "$server,$agent,$monitor" | cut -c1-100
for svc in front catalog cart orders payments; do cli delete service $svc >/dev/null; done
for _ in $(seq 1 600); do [ -z "$(ls -A $dir/agent/instances)" ] && break; sleep 0.1; done

# ROUNDS (default 5) applies of the hundred, each from nothing, each paired with 100
# `podman run -d` (runc, --network none, 4 at a time) of the same image in the same round:
# every time, the medians and the median of the paired ratios. PODMAN=0 leaves podman out.
podman_ok=0
if [ "${PODMAN:-1}" = 1 ] && command -v podman >/dev/null && command -v runc >/dev/null; then
  P=(podman --root "$dir/podman/root" --runroot "$dir/podman/run" --cgroup-manager cgroupfs
     --events-backend file --storage-driver overlay)
  if "${P[@]}" pull -q "oci:$dir/build/oci/shop-catalog" >/dev/null 2>&1 &&
     "${P[@]}" tag "$("${P[@]}" images -q | head -1)" shop-catalog:1; then
    podman_ok=1
  else
    echo "podman could not load the image: no comparison"
  fi
fi
podman_hundred() {
  seq 1 100 | xargs -P 4 -I{} "${P[@]}" run -d --network none --runtime runc \
    --ulimit nofile=20000:20000 --ulimit nproc=32768:32768 --name bench{} shop-catalog:1 >/dev/null
  while [ "$("${P[@]}" ps -q --filter status=running | wc -l)" -lt 100 ]; do sleep 0.05; done
}
times=(); ptimes=(); ratios=(); monitor_mb='?'; conmon_mb='?'; monitor_count=0; conmon_count=0
for round in $(seq 1 "${ROUNDS:-5}"); do
  start=$(date +%s.%N)
  cli apply -f "$root/bench/agent/hundred.yaml" >/dev/null
  while [ "$(ready_count web)" -lt 100 ]; do sleep 0.05; done
  end=$(date +%s.%N)
  t=$(python3 -c "print(f'{$end-$start:.2f}')")
  times+=("$t")
  if [ "$round" = 1 ]; then
    monitor_mb=$(monitors | median_rss)
    monitor_count=$(monitors | wc -l)
  fi
  cli delete service web >/dev/null
  for _ in $(seq 1 600); do [ -z "$(ls -A $dir/agent/instances)" ] && break; sleep 0.1; done
  line="100 instances, round $round: tugboat apply to all ready $t s"
  if [ $podman_ok = 1 ]; then
    start=$(date +%s.%N)
    podman_hundred
    end=$(date +%s.%N)
    p=$(python3 -c "print(f'{$end-$start:.2f}')")
    ptimes+=("$p"); ratios+=("$(python3 -c "print(f'{$t/$p:.3f}')")")
    if [ "$round" = 1 ]; then
      conmon_mb=$(conmons | median_rss)
      conmon_count=$(conmons | wc -l)
    fi
    "${P[@]}" rm -f -a -t 0 >/dev/null 2>&1
    line="$line; podman run -d x100 to all running $p s; ratio ${ratios[-1]}"
  fi
  echo "$line"
done
median() { printf '%s\n' "$@" | python3 -c 'import sys,statistics; print(statistics.median(float(l) for l in sys.stdin))'; }
echo "100 instances: tugboat apply to all ready, median of ${#times[@]}: $(median "${times[@]}") s"
if [ $podman_ok = 1 ]; then
  echo "100 podman run -d (runc, no network, no probe), median: $(median "${ptimes[@]}") s"
  echo "paired ratio tugboat/podman, median: $(median "${ratios[@]}")"
fi
# Medians over the 100 running containers of round 1, each side.
if [ $podman_ok = 1 ]; then
  echo "(medians of $monitor_count monitors and $conmon_count conmons ($(conmon --version | sed -n 1p)))"
  echo "monitor: $monitor_mb MB RSS per running container (conmon $conmon_mb MB)"
else
  echo "monitor: $monitor_mb MB RSS per running container (conmon not measured: no podman)"
fi
