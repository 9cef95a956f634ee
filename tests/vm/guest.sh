#!/bin/sh
# PID 1 of the cgroup v2 VM (tests/vm/run.sh), started by tests/vm/init on the host's tree
# (read-only 9p, tmpfs on /tmp /run /var). Mounts cgroup2, enables every controller, runs the
# jobs the host wrote to /run/tug-vm/jobs and leaves each job's output and exit status there.
# shellcheck shell=sh
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TMPDIR=/tmp LANG=C.UTF-8 RUST_BACKTRACE=1
out=/run/tug-vm
repo=${1:-}

off() {
  sync
  # -no-reboot on the qemu side turns this into qemu exiting.
  busybox reboot -f
  echo b >/proc/sysrq-trigger
}
trap off EXIT

mkdir -p /dev/pts /dev/shm /dev/mqueue
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t mqueue mqueue /dev/mqueue
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
hostname tug-vm
ip link set lo up 2>/dev/null || busybox ip link set lo up

# The kernel loads modules (crc32c for ext4, nf_tables, veth, ...) through the helper that
# init made: busybox's modprobe chrooted next to the VM kernel's modules.
modprobe=/run/tug-vm-modroot/modprobe
echo "$modprobe" >/proc/sys/kernel/modprobe

# The scratch disk (virtio-blk, ext4 made by the host) becomes /tmp, so that the tests' temp
# dirs are on a real block device (io.max needs one; O_DIRECT needs more than tmpfs).
if $modprobe virtio_blk && $modprobe ext4; then
  i=0
  while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
  # The repository, if it lives under /tmp (init mounted its share there), moves aside while
  # the disk covers /tmp and comes back on top of it: a 9p share mounts only once.
  case "$repo" in
    /tmp/*) mkdir -p /run/tug-vm-repo && mount --move "$repo" /run/tug-vm-repo ;;
  esac
  if mount -t ext4 /dev/vda /tmp; then
    chmod 1777 /tmp
  else
    echo "tug-vm: cannot mount the scratch disk; /tmp stays a tmpfs"
  fi
fi
if mountpoint -q /run/tug-vm-repo 2>/dev/null || grep -q " /run/tug-vm-repo " /proc/mounts; then
  mkdir -p "$repo" && mount --move /run/tug-vm-repo "$repo" ||
    echo "tug-vm: cannot put the repository back at $repo"
fi

# Every controller the kernel has, for the children of the root cgroup.
# shellcheck disable=SC2013 # one line of words
for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
  echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control || echo "tug-vm: cannot enable $c"
done
echo "tug-vm: kernel $(uname -r), $(nproc) cpu(s), $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo)"
echo "tug-vm: /sys/fs/cgroup is $(stat -f -c %T /sys/fs/cgroup); v1 hierarchies: $(awk '!/^#/ && $2 != 0' /proc/cgroups | wc -l)"
echo "tug-vm: subtree_control: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
echo "tug-vm: cmdline: $(cat /proc/cmdline)"

# Each line of jobs: NAME TIMEOUT_SECONDS CWD PROGRAM [ARG...] (no spaces inside fields).
while read -r name limit cwd prog args; do
  [ -n "$name" ] || continue
  echo "tug-vm: === $name: $prog $args (in $cwd, limit ${limit}s)"
  start=$(date +%s)
  # shellcheck disable=SC2086 # args are split on purpose
  { (cd "$cwd" && exec timeout -k 10 "$limit" "$prog" $args); echo $? >"$out/$name.rc"; } 2>&1 |
    tee "$out/$name.log"
  echo "tug-vm: === $name: exit $(cat "$out/$name.rc") after $(($(date +%s) - start))s"
done <"$out/jobs"

# What the tests left behind: a cgroup under the root or a mount under /tmp.
find /sys/fs/cgroup -mindepth 1 -type d >"$out/cgroups-left"
awk -v repo="$repo" '$2 ~ "^/tmp/" && $2 != repo' /proc/mounts >"$out/mounts-left"
echo finished >"$out/finished"
