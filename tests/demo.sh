#!/usr/bin/env bash
# The main job for now: build tug and run a container from a busybox bundle.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/install-deps.sh
cargo build --release -p tug-runtime
bundle=$(mktemp -d /tmp/tug-demo.XXXXXX)
trap 'rm -rf "$bundle"' EXIT
mkdir -p "$bundle/rootfs/bin" "$bundle/rootfs/proc" "$bundle/rootfs/sys" "$bundle/rootfs/dev" "$bundle/rootfs/tmp"
cp "$(command -v busybox)" "$bundle/rootfs/bin/busybox"
for a in sh echo hostname id ls cat; do ln -sf busybox "$bundle/rootfs/bin/$a"; done
./target/release/tug spec --bundle "$bundle"
python3 - "$bundle/config.json" <<'PY'
import json, sys
p = sys.argv[1]; c = json.load(open(p))
c["process"]["args"] = ["sh", "-c", "echo hello from container $(hostname); id; ls /"]
json.dump(c, open(p, "w"), indent=2)
PY
./target/release/tug --root /run/tug-demo run "demo-$$" --bundle "$bundle"
