#!/usr/bin/env bash
# The job of each VM of the cluster stage (tests/vm/cluster.sh), run inside it by guest.sh:
# one node of a three-node cluster, provisioned by vagrant/provision.sh (offline, binaries
# from the host) and started from deploy/systemd's units as on the Vagrant cluster.
#
# /run/tug-vm/node.env (written by cluster.sh) says who this node is: TUG_ROLE, TUG_NODE,
# TUG_ADDRESS, TUG_SUBNET, TUG_SERVER_ADDR, TUG_TOKEN, TUG_LABELS, and on the node that
# serves the stage's NFS volume TUG_NFS_EXPORT (a directory) and TUG_NFS_CLIENTS (who may
# mount it). The node's /var lives on
# the VM's own disk (/tmp is its ext4 disk), so a power cut keeps the node's data as a real
# reboot would; /usr/local/bin, /etc/default, /etc/systemd/system and /root are tmpfs, filled
# again by the provisioning at each boot. It says `up` in /run/tug-vm once its units run,
# lists its instance directories in /run/tug-vm/instances and copies the units' logs there
# every second, and stops its units when the host makes /run/tug-vm/stop.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
if [ -z "${TUG_VM_CLUSTER_NS:-}" ]; then
  exec unshare -m --propagation private env TUG_VM_CLUSTER_NS=1 bash "$0" "$@"
fi
share=/run/tug-vm
[ -f "$share/node.env" ] || { echo "cluster-node: runs only inside a VM of tests/vm/cluster.sh"; exit 1; }
set -a
# shellcheck disable=SC1091 # written by cluster.sh
. "$share/node.env"
set +a
say() { echo "cluster-node[$TUG_NODE]: $*"; }

# The network: the VM's virtio NIC, on the stage's bridge.
/run/tug-vm-modroot/modprobe virtio_net
for _ in $(seq 1 100); do [ -e /sys/class/net/eth0 ] && break; sleep 0.1; done
ip link set eth0 up
ip addr add "$TUG_ADDRESS/24" dev eth0
hostname "$TUG_NODE"

mkdir -p /tmp/persist/var
mount --bind /tmp/persist/var /var
for d in /usr/local/bin /etc/default /etc/systemd/system /root; do
  mount -t tmpfs -o mode=0755 tmpfs "$d"
done
chmod 0700 /root
export HOME=/root

# shellcheck source=tests/vm/units.sh
. "$repo/tests/vm/units.sh"

# The NFS server: the kernel's nfsd, NFSv4 only (no rpcbind, no statd, no lockd), set up by
# nfs-utils' exportfs, rpc.mountd (which answers the kernel's export upcalls) and rpc.nfsd
# from the host's tree (nfs-kernel-server). Their state, /var/lib/nfs, is on the node's disk
# with the rest of /var. Lease and grace times of 10 s (the kernel's least) so that a
# client that died holds nothing for long and the server's start costs little.
if [ -n "${TUG_NFS_EXPORT:-}" ]; then
  say "nfs server: exporting $TUG_NFS_EXPORT to $TUG_NFS_CLIENTS"
  /run/tug-vm-modroot/modprobe nfsd
  mount -t nfsd nfsd /proc/fs/nfsd
  mkdir -p /var/lib/nfs/v4recovery "$TUG_NFS_EXPORT"
  touch /var/lib/nfs/etab /var/lib/nfs/rmtab
  exportfs -i -o rw,no_root_squash,no_subtree_check,insecure,fsid=0 \
    "$TUG_NFS_CLIENTS:$TUG_NFS_EXPORT"
  rpc.mountd -F -N 2 -N 3 >/tmp/mountd.log 2>&1 &
  pids+=($!)
  # (No -N 2: this kernel has no NFSv2 server at all, and rpc.nfsd fails to turn it off.)
  rpc.nfsd -N 3 -U --lease-time 10 --grace-time 10 4
fi

say "provisioning ($TUG_ROLE)"
TUG_SRC=$repo TUG_BIN_DIR=${TUG_BIN_DIR:-$repo/target/debug} TUG_PROVISION_OFFLINE=1 TUG_PROVISION_START=0 \
  TUG_CA_FILE=/etc/default/tugboat-ca.pem bash "$repo/vagrant/provision.sh"

if [ "$TUG_ROLE" = server ]; then
  start_unit tugboat-server.service /tmp/server.log
  pids+=($!)
  wait_for "the server's CA" 300 test -s /var/lib/tugboat/tls/ca.pem
  cp /var/lib/tugboat/tls/ca.pem "$share/ca.pem"
fi
start_unit tugboat-agent.service /tmp/agent.log
pids+=($!)
say "up"
touch "$share/up"
while [ ! -e "$share/stop" ]; do
  ls /var/lib/tugboat/instances >"$share/instances.tmp" 2>/dev/null || true
  mv "$share/instances.tmp" "$share/instances"
  # The units' logs and the node's state, for the host to show when a step fails.
  for f in /tmp/server.log /tmp/agent.log /tmp/mountd.log; do
    [ ! -f "$f" ] || tail -n 200 "$f" >"$share/${f##*/}" 2>/dev/null || true
  done
  {
    ps -eo pid,ppid,stat,etime,wchan:24,args
    ls -la /var/lib/tugboat/instances/* 2>&1
    grep -F /var/lib/tugboat /proc/self/mountinfo
    [ ! -d /proc/fs/nfsd/clients ] || { echo "nfsd clients:"; cat /proc/fs/nfsd/clients/*/info; }
  } >"$share/state" 2>&1 || true
  for p in "${pids[@]}"; do
    kill -0 "$p" 2>/dev/null || { say "a unit stopped"; tail -n 30 /tmp/*.log; exit 1; }
  done
  sleep 1
done
say "stopping"
stop_all
