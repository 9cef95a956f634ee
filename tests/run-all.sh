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
trap 'rm -f "$leaks"' EXIT
bash tests/leak-check.sh snapshot "$leaks"
cargo test --workspace -- --test-threads=2
bash tests/leak-check.sh compare "$leaks"
# Pure cgroup v2: the runtime's root tests and the Vagrant provisioning inside a qemu VM.
bash tests/vm/run.sh
bash tests/vm/vagrant-validate.sh
