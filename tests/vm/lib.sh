#!/usr/bin/env bash
# What the VM stages share (tests/vm/run.sh, the cgroup v2 stage; tests/vm/cluster.sh, the
# three-VM cluster): Debian's kernel, fetched into a cache and never installed; the
# initramfs (busybox, the virtio/9p modules and tests/vm/init); KVM or TCG. Sourced after the
# caller has set cache, accel, here, repo and the functions log and skip.
# shellcheck shell=bash
# (cache, accel, here, repo: the caller's; kdir, kver, vmlinuz, moddir, accel_args: for it)
# shellcheck disable=SC2154,SC2034

# Can qemu run at all? (the only reason to skip a stage.) Sets busybox.
vm_check_host() {
  command -v qemu-system-x86_64 >/dev/null || skip "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
  [ "$(uname -m)" = x86_64 ] || skip "this stage boots an amd64 kernel and needs an x86_64 host"
  qemu-system-x86_64 -accel help 2>/dev/null | grep -qx tcg ||
    skip "qemu-system-x86_64 has no software emulation (tcg)"
  for tool in cpio dpkg-deb apt-get jq timeout; do
    command -v "$tool" >/dev/null || { log "missing $tool (bash tests/install-deps.sh)"; exit 1; }
  done
  busybox=$(command -v busybox) || { log "missing busybox (busybox-static)"; exit 1; }
  if ldd "$busybox" >/dev/null 2>&1; then
    log "$busybox is dynamically linked; the initramfs needs busybox-static"
    exit 1
  fi
}

# --- the kernel: Debian's linux-image-amd64, unpacked into the cache, never installed ---
kernel_pkg() {
  apt-cache depends linux-image-amd64 2>/dev/null |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}
fetch_kernel() {
  local pkg=$1 dir=$cache/$1 work kver
  [ -f "$dir/.complete" ] && return 0
  log "fetching $pkg into $dir (apt-get download + dpkg-deb -x, not installed)"
  mkdir -p "$cache"
  work=$(mktemp -d "$cache/.fetch.XXXXXX")
  # (apt warns that it downloads as root, unsandboxed, into a root-owned dir: expected.)
  (cd "$work" && apt-get download -qq "$pkg") 2>"$work/err" || sed 's/^/  /' "$work/err"
  local deb
  deb=$(find "$work" -maxdepth 1 -name "${pkg}_*.deb" | head -n1)
  if [ -z "$deb" ]; then
    rm -rf "$work"
    return 1
  fi
  mkdir "$work/root"
  dpkg-deb -x "$deb" "$work/root"
  rm -f "$deb"
  kver=$(ls "$work/root/lib/modules")
  # No depmod on the host (kmod is not needed there): busybox makes modules.dep.
  busybox depmod -b "$work/root" "$kver"
  touch "$work/root/.complete"
  rm -rf "$dir"
  mv "$work/root" "$dir"
  rm -rf "$work"
  # Keep only the current kernel in the cache.
  find "$cache" -mindepth 1 -maxdepth 1 ! -name "$pkg" ! -name .lock -exec rm -rf {} +
}
# Sets kdir, kver, vmlinuz and moddir.
vm_kernel() {
  # One fetch at a time: two runs at once share the cache.
  mkdir -p "$cache"
  exec 9>"$cache/.lock"
  flock 9
  pkg=$(kernel_pkg)
  if [ -z "$pkg" ]; then
    apt-get update -qq || true
    pkg=$(kernel_pkg)
  fi
  if [ -z "$pkg" ] || ! fetch_kernel "$pkg"; then
    # Offline: fall back to whatever kernel is cached.
    pkg=$(find "$cache" -mindepth 2 -maxdepth 2 -name .complete -printf '%h\n' 2>/dev/null |
      head -n1 | xargs -r basename)
    [ -n "$pkg" ] || { log "cannot fetch a linux-image-*-amd64 package and none is cached in $cache"; exit 1; }
    log "could not fetch the current kernel package; using the cached $pkg"
  fi
  exec 9>&-
  kdir=$cache/$pkg
  kver=$(ls "$kdir/lib/modules")
  vmlinuz=$kdir/boot/vmlinuz-$kver
  moddir=$kdir/lib/modules/$kver
  log "kernel $kver from $pkg"
}

# Builds DIR/initrd.
vm_initramfs() {
  local ir=$1/initramfs want m
  mkdir -p "$ir/bin" "$ir/dev" "$ir/proc" "$ir/sys" "$ir/lib/modules/$kver"
  cp "$busybox" "$ir/bin/busybox"
  cp "$here/init" "$ir/init"
  chmod 0755 "$ir/init"
  want=$(awk -F: '$1 ~ /\/(virtio_pci|9pnet_virtio|9p)\.ko$/ { print $1; print $2 }' "$moddir/modules.dep" | tr ' ' '\n' | sort -u)
  for m in $want; do
    mkdir -p "$ir/lib/modules/$kver/$(dirname "$m")"
    cp "$moddir/$m" "$ir/lib/modules/$kver/$m"
    grep "^$m:" "$moddir/modules.dep" >>"$ir/lib/modules/$kver/modules.dep"
  done
  printf '%s\n' "TUG_VM_KVER=$kver" "TUG_VM_MODULES=$moddir" "TUG_VM_GUEST=$here/guest.sh" \
    "TUG_VM_REPO=$repo" >"$ir/tug-vm.env"
  (cd "$ir" && find . | cpio -o -H newc --quiet) >"$1/initrd"
}

# KVM where it can boot this kernel: a probe boots the initramfs alone (init prints a marker
# and powers off: about a second with KVM). On the development machines /dev/kvm is there but
# cannot boot a stock kernel (qemu stops at once: "failed to set MSR 0x10a"), so TCG is used.
kvm_boots() {  # DIR: where the initrd is
  [ -r /dev/kvm ] && [ -w /dev/kvm ] || return 1
  # (in a subshell, so that bash's report of qemu's abort goes to /dev/null as well)
  (timeout -k 5 "${TUG_VM_KVM_PROBE_SECONDS:-20}" qemu-system-x86_64 -nodefaults -no-user-config \
    -machine q35 -accel kvm -cpu host -m 256 -display none -no-reboot -nic none \
    -serial "file:$1/kvm-probe.log" -kernel "$vmlinuz" -initrd "$1/initrd" \
    -append "console=ttyS0 panic=-1 quiet rdinit=/init tug_vm_probe=1" </dev/null; true) >/dev/null 2>&1
  grep -q TUG-VM-PROBE-OK "$1/kvm-probe.log" 2>/dev/null
}

# Sets accel_args (and accel, when auto) for the initrd in DIR.
vm_accel() {
  if [ "$accel" = auto ]; then
    if kvm_boots "$1"; then accel=kvm; else accel=tcg; fi
  fi
  case $accel in
    kvm) accel_args=(-accel kvm -cpu host) ;;
    tcg) accel_args=(-accel "tcg,thread=multi" -cpu max) ;;
    *) log "TUG_VM_ACCEL must be auto, kvm or tcg"; exit 1 ;;
  esac
}
