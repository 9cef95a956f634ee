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
command -v curl >/dev/null || need+=(curl)
command -v nsenter >/dev/null || need+=(util-linux)
command -v sha256sum >/dev/null || need+=(coreutils)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
# The cgroup v2 VM stage (tests/vm/run.sh) and the Vagrant check (tests/vm/vagrant-validate.sh).
# Without recommends: vagrant-libvirt's would bring libguestfs and a kernel package.
vm=()
command -v qemu-system-x86_64 >/dev/null || vm+=(qemu-system-x86)
command -v cpio >/dev/null || vm+=(cpio)
command -v jq >/dev/null || vm+=(jq)
command -v mkfs.ext4 >/dev/null || vm+=(e2fsprogs)
command -v systemd-analyze >/dev/null || vm+=(systemd)
command -v shellcheck >/dev/null || vm+=(shellcheck)
command -v vagrant >/dev/null || vm+=(vagrant vagrant-libvirt)
if [ ${#vm[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${vm[@]}"
fi
