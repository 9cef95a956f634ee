#!/usr/bin/env bash
# The test command: formatting, lints with warnings denied, then every test (root tests run
# for real when this runs as root, as CI does).
set -euo pipefail
cd "$(dirname "$0")/.."
# A clean clone gains nothing from incremental caches; they were 12 GB of CI's disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
bash tests/install-deps.sh --tests
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace
leaks=$(mktemp)
log=$(mktemp)
trap 'rm -f "$leaks" "$log"' EXIT
bash tests/leak-check.sh snapshot "$leaks"
# Every test's own output is kept (--show-output) in $log, so that the tests that did not
# run what they are for (a SKIP line: no root, no runc, no cgroup2 here) are counted and
# named below; the console shows libtest's usual lines and the failures.
cargo test --workspace -- --test-threads=2 --show-output 2>&1 | tee "$log" |
  awk '/^successes:$/ { hide = 1; next } /^(failures:|test result:)/ { hide = 0 } !hide'
# What scripts/install.sh installs is the static musl `dist` build of `tug` (and of
# tugboat-monitor): the runtime's tests that run the `tug` binary (podman through it, its
# command line, exec) run again with that binary.
musl=$(uname -m)-unknown-linux-musl
if [ -d "$(rustc --print sysroot)/lib/rustlib/$musl/lib" ]; then
  cargo build --profile dist --target "$musl" -p tug-runtime --bin tug -p tugboat-monitor --bin tugboat-monitor
  TUG_BIN=$(realpath "${CARGO_TARGET_DIR:-target}/$musl/dist/tug") \
    cargo test -p tug-runtime --test podman --test lifecycle --test exec -- --test-threads=2 --show-output 2>&1 |
    tee -a "$log" | awk '/^successes:$/ { hide = 1; next } /^(failures:|test result:)/ { hide = 0 } !hide'
else
  echo "SKIP the static tug's tests: Rust has no $musl target (rustup target add $musl)" | tee -a "$log"
fi
bash tests/leak-check.sh compare "$leaks"
skipped=$(grep -E '^SKIP' "$log" | sort -u || true)
if [ -n "$skipped" ]; then
  echo "skipped (ran less than their names say): $(echo "$skipped" | wc -l)"
  echo "$skipped" | sed 's/^/  /'
else
  echo "skipped: none"
fi
# Pure cgroup v2: the runtime's root tests and the Vagrant provisioning inside a qemu VM.
bash tests/vm/run.sh
# Three VMs as the Vagrant cluster's nodes: a node's power cut, replicas ready elsewhere, the
# node back from its disk and its old instances gone (a budget of 20 minutes; ~6 under TCG).
bash tests/vm/cluster.sh
bash tests/vm/vagrant-validate.sh
