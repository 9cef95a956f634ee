#!/usr/bin/env bash
# The test command: formatting, lints with warnings denied, then every test (root tests run
# for real when this runs as root, as CI does).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/install-deps.sh --tests
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace
leaks=$(mktemp)
out=$(mktemp)
trap 'rm -f "$leaks" "$out"' EXIT
bash tests/leak-check.sh snapshot "$leaks"
cargo test --workspace -- --test-threads=2 2>&1 | tee "$out"
bash tests/leak-check.sh compare "$leaks"
# Tests that could not run on this machine say so on a line starting SKIP; count them, so a
# green run that ran less than it seems is visible (as root, CI runs all but what needs
# another machine: pure cgroup v2 runs in the VM stage below).
skipped=$(grep -cE '^SKIP' "$out" || true)
echo "skipped on this machine: $skipped"
grep -E '^SKIP' "$out" | sed 's/^/  /' || true
# Pure cgroup v2: the runtime's root tests and the Vagrant provisioning inside a qemu VM.
bash tests/vm/run.sh
bash tests/vm/vagrant-validate.sh
