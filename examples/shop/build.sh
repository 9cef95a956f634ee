#!/usr/bin/env bash
# Builds the shop's images with `tugboat build`, into the image store under the data dir:
#   the static `shop` binary  cargo build of examples/shop/app (musl when that target is
#                             installed, else glibc with crt-static), in a target dir of its own
#                             ($CARGO_TARGET_DIR/shop, default target/shop) so the workspace's
#                             build is not invalidated
#   shop/base:1        examples/shop/base/Dockerfile, on a temp context holding busybox-static
#   shop/<service>:1   examples/shop/<service>/Dockerfile, for front catalog cart orders
#                      payments, on a temp context holding the binary
# With --oci OUT, each service is also written as an OCI layout OUT/shop-<service> (the
# form `tugboat up --import` and `tugboat image import` take).
# With --binary-only, only the binary is built and its path printed. SHOP_BIN=PATH uses a
# static binary built already instead of cargo (the VM stages: the VMs have no cargo).
# Usage: examples/shop/build.sh [--data-dir DIR] [--oci OUT] [--binary-only]
# Environment: TUGBOAT (default: tugboat on PATH); `tug` must be next to it or on PATH
# (or TUG_RUNTIME=path), for the RUN steps.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tugboat=${TUGBOAT:-tugboat}
global=() oci="" binary_only=0
while [ $# -gt 0 ]; do
  case $1 in
    --data-dir) global+=(--data-dir "$2"); shift 2 ;;
    --oci) oci=$2; shift 2 ;;
    --binary-only) binary_only=1; shift ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
root=$(cd "$here/../.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}/shop
cargo=${CARGO:-cargo}
if [ -n "${SHOP_BIN:-}" ]; then
  # Built already (the VM stages build it on the host: the VMs have no cargo).
  binary=$SHOP_BIN
elif rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
  triple=x86_64-unknown-linux-musl
  (cd "$root" && "$cargo" build -q --release -p tug-shop --bin shop --target "$triple" --target-dir "$target_dir")
else
  # Debian's packaged rustc has no musl: glibc, linked statically (--target keeps the flag
  # off build scripts).
  triple=x86_64-unknown-linux-gnu
  (cd "$root" && RUSTFLAGS='-C target-feature=+crt-static' "$cargo" build -q --release -p tug-shop --bin shop --target "$triple" --target-dir "$target_dir")
fi
[ -n "${SHOP_BIN:-}" ] || binary=$target_dir/$triple/release/shop
if command -v file >/dev/null; then
  file -L "$binary" | grep -q 'statically linked\|static-pie linked' || { echo "build.sh: $binary is not static" >&2; exit 1; }
fi
if [ "$binary_only" = 1 ]; then
  echo "$binary"
  exit 0
fi
busybox=$(command -v busybox || true)
if [ -z "$busybox" ] || ! file -L "$busybox" 2>/dev/null | grep -q 'statically linked'; then
  [ -x /bin/busybox ] && busybox=/bin/busybox
fi
[ -n "$busybox" ] || { echo "build.sh: needs busybox-static (apt-get install busybox-static)" >&2; exit 1; }
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$busybox" "$ctx/busybox"
"$tugboat" "${global[@]}" build -q -t shop/base:1 -f "$here/base/Dockerfile" "$ctx" >/dev/null
rm "$ctx/busybox"
cp "$binary" "$ctx/shop"
for svc in front catalog cart orders payments; do
  out=()
  [ -n "$oci" ] && out=(--oci "$oci/shop-$svc")
  [ -n "$oci" ] && rm -rf "$oci/shop-$svc"
  "$tugboat" "${global[@]}" build -q -t "shop/$svc:1" "${out[@]}" -f "$here/$svc/Dockerfile" "$ctx" >/dev/null
  echo "built shop/$svc:1"
done
