#!/usr/bin/env bash
# The shop under load (as root): `tugboat up -f examples/shop.yaml` as in the main job
# (tests/demo.sh), inside a network namespace this script makes and deletes, then the shop's
# load generator (`shop load`, examples/shop/app/src/load.rs) against the ingress port: each
# visit browses, adds tea and coffee to a cart, checks out, pays and looks at the order.
# It prints requests/s, failed requests, purchases and p50/p99 latency.
# Touches nothing outside the namespace and its temp dir, both removed at the end.
# Usage: bash bench/shop/run.sh   (RATE=visits/s, default 20; DURATION=seconds, default 30;
# TUGBOAT=path to the binary, default the release build under CARGO_TARGET_DIR or target/)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
rate=${RATE:-20}
duration=${DURATION:-30}
if [ -z "${TUGBOAT:-}" ]; then
  (cd "$root" && cargo build -q --release -p tugboat -p tug-runtime -p tugboat-monitor)
fi
bin=${TUGBOAT:-${CARGO_TARGET_DIR:-$root/target}/release/tugboat}
ns=tugshop$$
dir=/tmp/tugshop$$
up_pid=
cleanup() {
  set +e
  if [ -n "$up_pid" ] && kill -0 "$up_pid" 2>/dev/null; then
    kill -INT "$up_pid"; wait "$up_pid"
  fi
  ip netns del "$ns" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT
TUGBOAT=$bin bash "$root/examples/shop/build.sh" --data-dir "$dir/build/data" --oci "$dir/build/oci" >/dev/null
shop=$(ls -t "${CARGO_TARGET_DIR:-$root/target}"/shop/*/release/shop | head -n 1)
ip netns add "$ns"
ip -n "$ns" link set lo up
imports=()
for d in "$dir"/build/oci/*; do imports+=(--import "$d"); done
nsenter --net="/run/netns/$ns" "$bin" up -f "$root/examples/shop.yaml" --data-dir "$dir" "${imports[@]}" > "$dir/up.out" 2>&1 &
up_pid=$!
for _ in $(seq 1 1200); do
  grep -q 'front: http' "$dir/up.out" 2>/dev/null && break
  kill -0 "$up_pid" 2>/dev/null || { cat "$dir/up.out" >&2; echo "tugboat up exited" >&2; exit 1; }
  sleep 0.1
done
grep -q 'front: http' "$dir/up.out" || { cat "$dir/up.out" >&2; echo "the shop was not ready" >&2; exit 1; }
echo "shop load: $rate visits/s for ${duration}s against the ingress port (2 fronts, 2 catalogs, 2 carts, 1 orders, 2 payments)"
nsenter --net="/run/netns/$ns" "$shop" load --addr 127.0.0.1:8080 --rate "$rate/s" --duration "${duration}s"
