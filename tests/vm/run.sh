#!/usr/bin/env bash
# The pure cgroup v2 stage: boots Debian's own kernel under qemu with every controller left to
# cgroup v2 (cgroup_no_v1=all), the host's / shared in read-only over 9p, and runs test
# binaries of the workspace inside it (built here, run only there). Output streams to this
# terminal; the exit status is non-zero when a test binary fails or the VM dies.
#
#   tests/vm/run.sh [NAME[:FILTER[,FILTER...]]]...
#
# NAME is a test target of the package(s) in TUG_VM_PACKAGES (default tug-runtime), e.g.
# `lifecycle` or `cgroups:memory,pids`. With no NAME: lifecycle, cgroups and devices (the
# eBPF device program, which `tug update` replaces, exists only on cgroup v2).
#
# Environment:
#   TUG_VM_CACHE         kernel cache (default /var/cache/tug-vm; not under /run)
#   TUG_VM_ACCEL         auto (default: KVM if a probe boot with it works, else TCG), kvm, tcg
#   TUG_VM_CPUS          vCPUs (2); TUG_VM_MEM: MiB (1024)
#   TUG_VM_TIMEOUT       seconds for the whole VM (2700)
#   TUG_VM_JOB_TIMEOUT   seconds per test binary (1500)
#   TUG_VM_TEST_THREADS  --test-threads inside (1)
#   TUG_VM_PACKAGES      packages whose test targets can be named (tug-runtime)
#   TUG_VM_PROVISION     1 (default): also run tests/vm/provision-check.sh inside; 0: do not
#   TUG_VM_SHOP          1 (default): provision-check.sh also runs examples/shop.yaml; 0: not
#
# Nothing is installed on the host: the kernel package is fetched with `apt-get download`
# and unpacked into the cache; the VM has no network device; qemu runs as a child of this
# script and is killed by its pid on exit; the temp dir is removed.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
here=$repo/tests/vm

cache=${TUG_VM_CACHE:-/var/cache/tug-vm}
accel=${TUG_VM_ACCEL:-auto}
cpus=${TUG_VM_CPUS:-2}
mem=${TUG_VM_MEM:-1024}
vm_timeout=${TUG_VM_TIMEOUT:-2700}
job_timeout=${TUG_VM_JOB_TIMEOUT:-1500}
threads=${TUG_VM_TEST_THREADS:-1}
packages=${TUG_VM_PACKAGES:-tug-runtime}
provision=${TUG_VM_PROVISION:-1}

log() { echo "tests/vm: $*"; }
skip() {
  log "SKIP the cgroup v2 VM stage: $*"
  exit 0
}

# shellcheck source=tests/vm/lib.sh
. "$here/lib.sh"
vm_check_host

start_all=$(date +%s)
tmp=$(mktemp -d /tmp/tug-vm.XXXXXX)
qpid=
cleanup() {
  if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then
    kill "$qpid" 2>/dev/null || true
    wait "$qpid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the kernel (tests/vm/lib.sh) ---
vm_kernel

# --- the test binaries: built here (only those asked for), run only inside ---
pkg_args=()
for p in $packages; do pkg_args+=(-p "$p"); done
mapfile -t targets < <(cargo metadata -q --no-deps --format-version 1 |
  jq -r --arg pkgs "$packages" '.packages[] | select(.name as $n | $pkgs | split(" ") | index($n))
                                | .targets[] | select(.kind | index("test")) | .name')
has_target() { printf '%s\n' "${targets[@]}" | grep -qx "$1"; }
jobs=()
if [ $# -eq 0 ]; then
  for name in lifecycle cgroups devices; do
    if has_target "$name"; then
      jobs+=("$name")
    else
      log "SKIP test target $name: not in $packages (yet)"
    fi
  done
else
  jobs=("$@")
fi
[ ${#jobs[@]} -gt 0 ] || { log "no test target to run"; exit 1; }
test_args=()
for job in "${jobs[@]}"; do
  name=${job%%:*}
  filters=
  [ "$job" != "$name" ] && filters=${job#*:}
  if [[ ! $name =~ ^[A-Za-z0-9_-]+$ || ! $filters =~ ^[A-Za-z0-9_:,-]*$ ]]; then
    log "bad test spec '$job' (NAME[:FILTER[,FILTER...]])"
    exit 1
  fi
  has_target "$name" || { log "no test target '$name' in $packages: ${targets[*]}"; exit 1; }
  [[ " ${test_args[*]} " != *" $name "* ]] ||
    { log "'$name' named twice: give its filters once, joined by commas"; exit 1; }
  test_args+=(--test "$name")
done
log "building: cargo test ${pkg_args[*]} ${test_args[*]} --no-run"
cargo test "${pkg_args[@]}" "${test_args[@]}" --no-run --message-format=json >"$tmp/build.json"
declare -A exe cwd_of
while IFS=$'\t' read -r name path manifest; do
  exe[$name]=$path
  cwd_of[$name]=$(dirname "$manifest")
done < <(jq -r 'select(.reason == "compiler-artifact" and .executable != null
                        and .profile.test == true and (.target.kind | index("test")))
                | [.target.name, .executable, .manifest_path] | @tsv' "$tmp/build.json")
if [ "$provision" = 1 ]; then
  # provision-check.sh installs these into the VM's /usr/local/bin.
  log "building: cargo build -p tugboat -p tug-runtime -p tugboat-monitor --bins"
  cargo build -q -p tugboat -p tug-runtime -p tugboat-monitor --bins
  # The shop's static binary beside them (provision.sh builds the images with it).
  cp "$(bash "$repo/examples/shop/build.sh" --binary-only)" "$repo/target/debug/shop"
fi

out=$tmp/out
mkdir "$out"
: >"$out/jobs"
for job in "${jobs[@]}"; do
  name=${job%%:*}
  filters=
  [ "$job" != "$name" ] && filters=${job#*:}
  [[ "${exe[$name]}${cwd_of[$name]}" != *' '* ]] || { log "paths with spaces are not supported"; exit 1; }
  echo "$name $job_timeout ${cwd_of[$name]} ${exe[$name]} --test-threads=$threads --nocapture ${filters//,/ }" >>"$out/jobs"
done
if [ "$provision" = 1 ]; then
  echo "provision 900 $repo /usr/bin/env TUG_VM_SHOP=${TUG_VM_SHOP:-1} /bin/bash $here/provision-check.sh" >>"$out/jobs"
fi

# --- the initramfs (tests/vm/lib.sh) ---
vm_initramfs "$tmp"

# --- the scratch disk for /tmp inside (sparse; ext4 made here, where it is fast) ---
disk_args=()
if command -v mkfs.ext4 >/dev/null; then
  truncate -s 4G "$tmp/scratch.img"
  mkfs.ext4 -q -F -E lazy_itable_init=1,lazy_journal_init=1 "$tmp/scratch.img"
  disk_args=(-drive "file=$tmp/scratch.img,format=raw,if=virtio,cache=unsafe")
else
  log "no mkfs.ext4: /tmp inside is a tmpfs and block-device tests will skip"
fi

# --- boot ---
vm_accel "$tmp"
append="console=ttyS0 panic=-1 quiet loglevel=4 rdinit=/init cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1"
log "booting ($accel, $cpus cpu(s), ${mem} MiB); jobs: ${jobs[*]}$([ "$provision" = 1 ] && echo ' provision')"
boot_start=$(date +%s)
# timeout ends qemu after TUG_VM_TIMEOUT, and passes on the TERM of cleanup().
timeout -k 10 "$vm_timeout" qemu-system-x86_64 -nodefaults -no-user-config -machine q35 "${accel_args[@]}" \
  -smp "$cpus" -m "$mem" -display none -no-reboot -nic none \
  -chardev stdio,id=con,signal=off -serial chardev:con \
  "${disk_args[@]}" \
  -kernel "$vmlinuz" -initrd "$tmp/initrd" -append "$append" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs "local,path=$repo,mount_tag=tugrepo,security_model=none,readonly=on,multidevs=remap" \
  -virtfs "local,path=$out,mount_tag=tugout,security_model=none,multidevs=remap" \
  </dev/null &
qpid=$!
qrc=0
wait "$qpid" || qrc=$?
qpid=
[ "$qrc" != 124 ] || log "the VM was stopped after TUG_VM_TIMEOUT=${vm_timeout}s"
vm_secs=$(($(date +%s) - boot_start))

# --- results ---
fail=0
if [ ! -f "$out/finished" ]; then
  log "the VM did not finish its jobs (qemu exit $qrc)"
  fail=1
fi
for job in "${jobs[@]}" $([ "$provision" = 1 ] && echo provision); do
  name=${job%%:*}
  rc=$(cat "$out/$name.rc" 2>/dev/null || echo none)
  log "$name: exit $rc"
  [ "$rc" = 0 ] || fail=1
done
if [ -s "$out/cgroups-left" ]; then
  log "cgroups left behind in the VM:"
  sed 's/^/  /' "$out/cgroups-left"
  fail=1
fi
if [ -s "$out/mounts-left" ]; then
  log "mounts left behind in the VM:"
  sed 's/^/  /' "$out/mounts-left"
  fail=1
fi
log "VM ran ${vm_secs}s; stage took $(($(date +%s) - start_all))s in all"
if [ "$fail" != 0 ]; then
  log "FAILED"
  exit 1
fi
log "passed"
