#!/usr/bin/env bash
# Builds the shop's images with `tugboat build`, into the image store under the data dir:
#   shop/base:1        examples/shop/base/Dockerfile, on a temp context holding busybox-static
#   shop/<service>:1   examples/shop/<service>/Dockerfile, for front catalog cart orders payments
# With --oci OUT, each service is also written as an OCI layout OUT/shop-<service> (the
# form `tugboat up --import` and `tugboat image import` take).
# Usage: examples/shop/build.sh [--data-dir DIR] [--oci OUT]
# Environment: TUGBOAT (default: tugboat on PATH); `tug` must be next to it or on PATH
# (or TUG_RUNTIME=path), for the RUN steps.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tugboat=${TUGBOAT:-tugboat}
global=() oci=""
while [ $# -gt 0 ]; do
  case $1 in
    --data-dir) global+=(--data-dir "$2"); shift 2 ;;
    --oci) oci=$2; shift 2 ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
busybox=$(command -v busybox || true)
if [ -z "$busybox" ] || ! file -L "$busybox" 2>/dev/null | grep -q 'statically linked'; then
  [ -x /bin/busybox ] && busybox=/bin/busybox
fi
[ -n "$busybox" ] || { echo "build.sh: needs busybox-static (apt-get install busybox-static)" >&2; exit 1; }
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$busybox" "$ctx/busybox"
"$tugboat" "${global[@]}" build -q -t shop/base:1 -f "$here/base/Dockerfile" "$ctx" >/dev/null
for svc in front catalog cart orders payments; do
  out=()
  [ -n "$oci" ] && out=(--oci "$oci/shop-$svc")
  [ -n "$oci" ] && rm -rf "$oci/shop-$svc"
  "$tugboat" "${global[@]}" build -q -t "shop/$svc:1" "${out[@]}" "$here/$svc" >/dev/null
  echo "built shop/$svc:1"
done
