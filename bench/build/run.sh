#!/usr/bin/env bash
# `tugboat build` vs `buildah bud` (as root) on the shop's six images (examples/shop: the
# busybox base, then front, catalog, cart, orders, payments FROM it): cold (empty store and
# cache) and warm (nothing changed: everything from the cache), RUNS runs each, medians.
# RUN steps get no network either way (tug: its own loopback-only netns; buildah: --network
# none), and buildah runs runc (crun refuses hybrid cgroup hosts). Everything lives under a
# temp dir that is removed at the end; nothing else on the host is touched.
# Usage: bench/build/run.sh   (TUGBOAT=path, default target/release/tugboat, with tug next
#                               to it; RUNS=3)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${TUGBOAT:-$root/target/release/tugboat}
runs=${RUNS:-3}
[ -x "$bin" ] || { echo "build it first: cargo build --release -p tugboat -p tug-runtime" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
busybox=/bin/busybox
[ -x "$busybox" ] || { echo "needs busybox-static at /bin/busybox" >&2; exit 1; }
dir=$(mktemp -d /tmp/tugbuildbench.XXXXXX)
cleanup() {
  set +e
  for r in "$dir"/buildah*; do
    [ -d "$r" ] || continue
    buildah --root "$r/root" --runroot "$r/runroot" --storage-driver overlay rmi -a -f >/dev/null 2>&1
  done
  rm -rf "$dir"
}
trap cleanup EXIT
services=(front catalog cart orders payments)
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
median() { tr ' ' '\n' | grep . | sort -n | sed -n "$(( (runs + 1) / 2 ))p"; }

tug_all() { TUGBOAT=$bin bash "$root/examples/shop/build.sh" --data-dir "$1" >/dev/null; }

bctx=$dir/base-ctx
mkdir -p "$bctx"
cp "$busybox" "$bctx/busybox"
runc=$(command -v runc || true)
buildah_all() {
  local B=(buildah --root "$1/root" --runroot "$1/runroot" --storage-driver overlay)
  "${B[@]}" bud --layers --runtime "$runc" --network none -q -t shop/base:1 \
    -f "$root/examples/shop/base/Dockerfile" "$bctx" >/dev/null
  for s in "${services[@]}"; do
    "${B[@]}" bud --layers --runtime "$runc" --network none -q -t "shop/$s:1" \
      "$root/examples/shop/$s" >/dev/null
  done
}

measure() { # name cold|warm fn dir-prefix
  local fn=$2 prefix=$3 cold="" warm="" t0 t1
  for i in $(seq 1 "$runs"); do
    t0=$(now); $fn "$dir/$prefix$i"; t1=$(now); cold+=" $(secs "$t0" "$t1")"
  done
  for _ in $(seq 1 "$runs"); do
    t0=$(now); $fn "$dir/${prefix}1"; t1=$(now); warm+=" $(secs "$t0" "$t1")"
  done
  printf '%-15s cold median %6s s (runs:%s)\n' "$1" "$(echo "$cold" | median)" "$cold"
  printf '%-15s warm median %6s s (runs:%s)\n' "$1" "$(echo "$warm" | median)" "$warm"
}

echo "shop: 6 images (base + ${services[*]}), $runs runs each; $(nproc) cpus, $(uname -r)"
measure "tugboat build" tug_all tug
layers=$(ls "$dir/tug1/build/layers/sha256" | wc -l)
tug_all "$dir/tug1"
[ "$(ls "$dir/tug1/build/layers/sha256" | wc -l)" = "$layers" ] || echo "warning: a warm tugboat build made a layer"
if ! command -v buildah >/dev/null; then
  echo "buildah bud: not installed (apt-get install buildah); tug's figures only"
elif [ -z "$runc" ]; then
  echo "buildah bud: needs runc (crun refuses this host's hybrid cgroups); tug's figures only"
elif ! err=$(buildah_all "$dir/buildah-probe" 2>&1); then
  echo "buildah bud cannot build here: $err"
else
  measure "buildah bud" buildah_all buildah
fi
