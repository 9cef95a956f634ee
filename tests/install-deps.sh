#!/usr/bin/env bash
# Installs what Tug's build, tests and demo need on a fresh Debian or Ubuntu machine (as root).
set -euo pipefail
need=()
command -v busybox >/dev/null || need+=(busybox-static)
command -v ip >/dev/null || need+=(iproute2)
command -v unshare >/dev/null || need+=(util-linux)
command -v cc >/dev/null || need+=(gcc libc6-dev)
command -v cargo >/dev/null || need+=(cargo rustc)
command -v podman >/dev/null || need+=(podman)
command -v script >/dev/null || need+=(bsdutils)
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v skopeo >/dev/null || need+=(skopeo)
command -v umoci >/dev/null || need+=(umoci)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
