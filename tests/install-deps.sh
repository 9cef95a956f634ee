#!/usr/bin/env bash
# Installs what Tug needs on a fresh Debian or Ubuntu machine (as root), in groups:
#
#   bash tests/install-deps.sh          the build and the main job (tests/demo.sh)
#   bash tests/install-deps.sh --tests  also what the test command uses (podman, a registry,
#                                       skopeo/umoci, script(1), etcd, chromium) and the cgroup v2 VM stage
#                                       with the Vagrant check (qemu, cpio, shellcheck, vagrant),
#                                       the cluster stage's NFS server (nfs-kernel-server)
#
# Every apt call waits for the dpkg lock (a fresh cloud VM's unattended-upgrades holds it for
# minutes) instead of failing at once, and a failure names the packages and the group.
set -euo pipefail
tests=false
[ "${1:-}" = "--tests" ] && tests=true

say() { echo "install-deps: $*" >&2; }
updated=false
# `apt-get update` has no lock timeout of its own: retry while another apt holds the lists.
update() {
  $updated && return 0
  local err
  err=$(mktemp)
  for _ in $(seq 1 60); do
    if apt-get -o DPkg::Lock::Timeout=600 update -qq 2>"$err"; then
      updated=true
      rm -f "$err"
      return 0
    fi
    grep -qi 'lock' "$err" || { cat "$err" >&2; rm -f "$err"; return 1; }
    say "another apt holds the package lists; waiting"
    sleep 10
  done
  rm -f "$err"
  return 1
}
apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends "$@"
}
# The packages of a group that fail on their own: which one apt could not resolve.
failing() {
  local p bad=()
  for p in "$@"; do apt_install "$p" >/dev/null 2>&1 || bad+=("$p"); done
  echo "${bad[*]:-$*}"
}
# install GROUP PACKAGE...: installs without recommends; a failure names the package that
# failed and the group it is required for, and stops.
install() {
  local group=$1
  shift
  [ $# -gt 0 ] || return 0
  say "installing for $group: $*"
  update || { say "apt-get update failed (needed for $group: $*)"; exit 1; }
  if ! apt_install "$@"; then
    say "could not install $(failing "$@") (required for $group)"
    exit 1
  fi
}
# install_optional GROUP WITHOUT PACKAGE...: as install, but a failure is a warning that says
# what happens without the packages (WITHOUT), and the script goes on.
install_optional() {
  local group=$1 without=$2
  shift 2
  [ $# -gt 0 ] || return 0
  say "installing for $group (optional): $*"
  if ! update || ! apt_install "$@"; then
    say "WARNING: could not install $(failing "$@") (optional, for $group: $without); going on"
  fi
}

# The build and the main job.
base=()
command -v busybox >/dev/null || [ -x /bin/busybox ] || base+=(busybox-static)
command -v ip >/dev/null || base+=(iproute2)
command -v nsenter >/dev/null || base+=(util-linux)
command -v cc >/dev/null || base+=(gcc libc6-dev)
command -v cargo >/dev/null || base+=(cargo rustc)
command -v curl >/dev/null || base+=(curl ca-certificates)
command -v file >/dev/null || base+=(file)
# The etcd client (orchestrator/server: etcd-client) compiles etcd's protobuf files at build
# time: protoc and the well-known types it imports.
command -v protoc >/dev/null || base+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || base+=(libprotobuf-dev)
install "the build and the demo (required)" "${base[@]}"
$tests || exit 0

# The test command's root tests.
t=()
command -v podman >/dev/null || t+=(podman)
command -v script >/dev/null || t+=(bsdutils)
command -v docker-registry >/dev/null || t+=(docker-registry)
command -v skopeo >/dev/null || t+=(skopeo)
command -v umoci >/dev/null || t+=(umoci)
# orchestrator/tests/dialout.rs: an edge namespace that drops inbound connections, as NAT.
command -v nft >/dev/null || t+=(nftables)
# runtime: runc in a service (orchestrator/tests/runtimes.rs), and buildah's runtime.
command -v runc >/dev/null || t+=(runc)
command -v sha256sum >/dev/null || t+=(coreutils)
# etcd for the store conformance suite and the leader election test (orchestrator/tests).
command -v etcd >/dev/null || t+=(etcd-server)
command -v etcdctl >/dev/null || t+=(etcd-client)
# Volumes: sized local volumes are ext4 images (mkfs.ext4), the example plugin reads JSON.
command -v mkfs.ext4 >/dev/null || t+=(e2fsprogs)
command -v jq >/dev/null || t+=(jq)
install "the root tests (required by the test command)" "${t[@]}"

# Prometheus for the metrics tests (orchestrator/tests/metrics.rs, api_e2e.rs): promtool
# checks the exposition format and a real Prometheus scrapes the server and a node. Only the
# package's files, unpacked under /opt/tug-test/prometheus: installing the package would also
# enable and start a prometheus service on this machine.
prom=/opt/tug-test/prometheus
if [ ! -x $prom/usr/bin/prometheus ] || [ ! -x $prom/usr/bin/promtool ]; then
  say "unpacking Debian's prometheus (promtool and prometheus) into $prom"
  # dpkg-deb -x makes the last directory only: on a fresh machine /opt/tug-test is not there.
  mkdir -p "$(dirname "$prom")"
  debs=$(mktemp -d)
  chmod 755 "$debs"
  chown _apt "$debs" 2>/dev/null || true
  if update && (cd "$debs" && apt-get -o DPkg::Lock::Timeout=600 download -qq prometheus) &&
    dpkg-deb -x "$debs"/prometheus_*.deb "$prom.new"; then
    rm -rf "$prom" && mv "$prom.new" "$prom"
  else
    rm -rf "$prom.new"
    say "WARNING: could not fetch prometheus (optional, for the metrics tests: they skip without it); going on"
  fi
  rm -rf "$debs"
fi

# The dashboard's browser test (orchestrator/tests/ui.rs): headless Chromium, driven over CDP.
if ! command -v chromium >/dev/null; then
  install_optional "the dashboard's browser test" "the test prints SKIP without chromium" chromium
fi

# The cgroup v2 VM stage (tests/vm/run.sh) and the Vagrant check (tests/vm/vagrant-validate.sh).
# qemu-system-x86 must match an installed qemu-utils: on a machine that has qemu-utils from
# backports (Debian's qemu-utils 10 breaks qemu-system-common < 8), take qemu from the same
# backports suite instead of removing the host's qemu-img.
if ! command -v qemu-system-x86_64 >/dev/null; then
  utils=$(dpkg-query -W -f '${Status} ${Version}' qemu-utils 2>/dev/null || true)
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  if [[ $utils == "install ok installed "*bpo* ]] && [ -n "$codename" ] && grep -q '^ID=debian' /etc/os-release; then
    version=${utils##* }
    say "qemu-utils $version is from ${codename}-backports: qemu-system-x86 from there too"
    parts=$(mktemp -d)
    cp /etc/apt/sources.list.d/*.sources "$parts/" 2>/dev/null || true
    cp /etc/apt/sources.list.d/*.list "$parts/" 2>/dev/null || true
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$codename" > "$parts/tug-backports.sources"
    apt-get -o DPkg::Lock::Timeout=600 -o Dir::Etc::sourceparts="$parts" update -qq ||
      say "WARNING: apt-get update with ${codename}-backports failed (optional, for the VM stage)"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -o Dir::Etc::sourceparts="$parts" \
      install -y -qq --no-install-recommends -t "${codename}-backports" "qemu-system-x86=$version" "qemu-system-common=$version" "qemu-system-data=$version" ||
      say "WARNING: could not install qemu-system-x86 $version (optional, for the cgroup v2 VM stage of the test command: it skips without qemu); going on"
    rm -rf "$parts"
  else
    install_optional "the cgroup v2 VM stage of the test command" "the stage skips without qemu" qemu-system-x86
  fi
fi
vm=()
command -v cpio >/dev/null || vm+=(cpio)
command -v jq >/dev/null || vm+=(jq)
command -v mkfs.ext4 >/dev/null || vm+=(e2fsprogs)
command -v systemd-analyze >/dev/null || vm+=(systemd)
command -v shellcheck >/dev/null || vm+=(shellcheck)
# The cluster stage's NFS server (tests/vm/cluster.sh): its VM runs the host's rpc.nfsd,
# rpc.mountd and exportfs.
nfs_new=false
[ -x /usr/sbin/rpc.nfsd ] || { vm+=(nfs-kernel-server); nfs_new=true; }
# Without recommends: vagrant-libvirt's would bring libguestfs and a kernel package.
command -v vagrant >/dev/null || vm+=(vagrant vagrant-libvirt)
install "the VM stage and the Vagrant check of the test command" "${vm[@]}"
# Only its programs are wanted: a fresh install does not make this machine an NFS server.
if $nfs_new && [ -d /run/systemd/system ]; then
  systemctl disable --now nfs-server.service >/dev/null 2>&1 || true
fi
