#!/usr/bin/env bash
# Benchmarks tug against runc and crun in one run (see bench/runtime/bench.py).
# crun refuses hybrid cgroup hosts, so everything runs in a private mount namespace where
# /sys/fs/cgroup/unified/cgroup.controllers is covered by an empty file; the three runtimes
# share that namespace, so the comparison stays paired.
set -euo pipefail
cd "$(dirname "$0")/../.."
need=()
command -v runc >/dev/null || need+=(runc)
command -v crun >/dev/null || need+=(crun)
command -v busybox >/dev/null || need+=(busybox-static)
command -v python3 >/dev/null || need+=(python3)
command -v gcc >/dev/null || need+=(gcc libc6-dev)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
cargo build --release -p tug-runtime
target=$(realpath "${CARGO_TARGET_DIR:-target}")
tug="$target/release/tug"
# The same code as one static binary, measured beside the default build: the shipped static
# build (musl static-pie, profile dist: opt-level z) where rustup can add the target, else
# glibc static-pie.
tug_static=$(mktemp)
# A musl build that fails to compile fails the bench (it once fell back to glibc unseen).
if [ -d "$(rustc --print sysroot)/lib/rustlib/x86_64-unknown-linux-musl/lib" ] ||
   rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1; then
  cargo build --profile dist -p tug-runtime --bin tug --target x86_64-unknown-linux-musl
  export STATIC_LABEL=tug-musl
  strip -o "$tug_static" "$target/x86_64-unknown-linux-musl/dist/tug"
else
  export STATIC_LABEL=tug-static
  RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p tug-runtime \
    --target x86_64-unknown-linux-gnu
  strip -o "$tug_static" "$target/x86_64-unknown-linux-gnu/release/tug"
fi
empty=$(mktemp)
launcher=$(mktemp)
trap 'rm -f "$empty" "$launcher" "${tug_static:-}"' EXIT
gcc -O2 -static -o "$launcher" bench/runtime/maxrss.c
echo "Date: $(date -u +%Y-%m-%d), machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), Linux $(uname -r)"
echo "tug $(git rev-parse --short HEAD), $(runc --version | head -1), $(crun --version | head -1)"
echo
unshare -m bash -c '
  set -e
  if [ -e /sys/fs/cgroup/unified/cgroup.controllers ]; then
    mount --bind "$1" /sys/fs/cgroup/unified/cgroup.controllers
  fi
  exec python3 bench/runtime/bench.py "$2" "$3" "$4"
' _ "$empty" "$tug" "$launcher" "$tug_static"
