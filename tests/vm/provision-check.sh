#!/usr/bin/env bash
# A job of the cgroup v2 VM (tests/vm/run.sh), run inside it: vagrant/provision.sh as it runs
# on the cluster's server node, but offline (no apt, no build: the binaries built on the
# host) and without systemd, in a private mount namespace where /usr/local/bin, /etc/default,
# /etc/systemd/system, /var and /root are empty tmpfs. Then:
#   - what it installed is there, with the modes it should have;
#   - `systemd-analyze verify` accepts the two units as installed;
#   - both services start from their units' own Environment=, EnvironmentFile= and
#     ExecStart= lines (read here the way systemd reads them, as no systemd runs in the VM);
#   - the server answers the client with the provisioned config, and the agent's node
#     registers with the provisioned labels;
#   - examples/shop.yaml runs on that node (images imported by the provisioned agent) until
#     every instance is ready, and deleting its services leaves no container cgroup.
# Not covered: apt-get, rustup and the build in a box, systemctl, a private network of
# three VMs (vagrant/README.md says how to try those).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
if [ -z "${TUG_VM_PROVISION_NS:-}" ]; then
  exec unshare -m --propagation private env TUG_VM_PROVISION_NS=1 bash "$0" "$@"
fi
[ -f /run/tug-vm/jobs ] || { echo "provision-check: runs only inside the VM of tests/vm/run.sh"; exit 1; }
for d in /usr/local/bin /etc/default /etc/systemd/system /root /var; do
  mount -t tmpfs -o mode=0755 tmpfs "$d"
done
chmod 0700 /root
export HOME=/root

# shellcheck source=tests/vm/units.sh
. "$repo/tests/vm/units.sh"

fails=0
check() {
  if "${@:2}"; then echo "ok   $1"; else echo "FAIL $1"; fails=$((fails + 1)); fi
}

token=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
echo "--- vagrant/provision.sh (server role, offline, no systemctl)"
TUG_ROLE=server TUG_NODE=vmnode TUG_SERVER_ADDR=http://127.0.0.1:7480 TUG_TOKEN=$token \
  TUG_SUBNET=10.88.1.0/24 TUG_LABELS="zone=vm disk=ssd" TUG_SRC=$repo \
  TUG_BIN_DIR=$repo/target/debug TUG_PROVISION_OFFLINE=1 TUG_PROVISION_START=0 \
  bash "$repo/vagrant/provision.sh"

echo "--- what it installed"
mode() { [ "$(stat -c %a "$1")" = "$2" ]; }
check "tugboat and tug in /usr/local/bin" test -x /usr/local/bin/tugboat -a -x /usr/local/bin/tug
check "the units in /etc/systemd/system" test -f /etc/systemd/system/tugboat-server.service \
  -a -f /etc/systemd/system/tugboat-agent.service
check "the token file, mode 600" mode /var/lib/tugboat/token 600
check "the token file holds the token" grep -qx "$token" /var/lib/tugboat/token
check "the agent's settings, mode 600" mode /etc/default/tugboat-agent 600
check "the shop's images" test -f /var/lib/tug-shop-images/oci/shop-front/index.json
check "the client config, mode 600" mode /root/.config/tugboat/config.yaml 600
echo "--- systemd-analyze verify"
check "systemd-analyze verify accepts the units" \
  systemd-analyze verify /etc/systemd/system/tugboat-server.service /etc/systemd/system/tugboat-agent.service

# The client, bounded: a call that hangs counts as a failed try.
tb() { timeout 20 /usr/local/bin/tugboat "$@"; }

echo "--- the services, started from their units"
start_unit tugboat-server.service /tmp/server.log
pids+=($!)
check "the server answers the provisioned client config" \
  wait_for "the server" 120 tb get nodes
if /usr/local/bin/tugboat agent --help >/dev/null 2>&1; then
  start_unit tugboat-agent.service /tmp/agent.log
  pids+=($!)
  node_up() { tb get nodes | grep -q vmnode; }
  check "the agent's node registers" wait_for "node vmnode" 180 node_up
  tb get nodes || true
  labels() { tb -o json get nodes | grep -q '"zone": *"vm"'; }
  check "the node has the provisioned labels" labels
  if [ "${TUG_VM_SHOP:-1}" = 1 ]; then
    # The shop on this one node, every replica ready (TUG_VM_SHOP=0 tests/vm/run.sh: not).
    echo "--- examples/shop.yaml on the provisioned node"
    tb apply -f "$repo/examples/shop.yaml"
    shop_ready() {
      tb -o json get instances |
        jq -e '.items | length > 0 and all(.[]; .phase == "running" and .ready == true)' >/dev/null
    }
    check "every shop instance runs and is ready" wait_for "the shop" 600 shop_ready
    tb get instances || true
    # Containers outlive their agent: delete the services first, so that nothing is left.
    for svc in front catalog cart orders payments; do tb delete service "$svc" || true; done
    shop_gone() { tb -o json get instances | jq -e '.items | length == 0' >/dev/null; }
    check "deleting the shop's services stops every instance" wait_for "no instances" 300 shop_gone
    no_containers() { [ -z "$(find /sys/fs/cgroup/tug -mindepth 1 -type d 2>/dev/null)" ]; }
    check "no container cgroup is left" wait_for "no container cgroups" 120 no_containers
  fi
else
  echo "SKIP the agent: this tugboat has no 'agent' subcommand yet"
fi
stop_all

# The Vagrant cluster's default control plane (TUG_ETCD_CLUSTER): here one member of one, as
# each VM of three runs it. Fresh /etc and /var; the same binaries.
echo "--- vagrant/provision.sh (server role on etcd, offline, no systemctl)"
for d in /etc/default /etc/systemd/system /root /var; do
  umount "$d"
  mount -t tmpfs -o mode=0755 tmpfs "$d"
done
chmod 0700 /root
TUG_ROLE=server TUG_NODE=vmnode TUG_SERVER_ADDR=127.0.0.1:7480 TUG_TOKEN=$token \
  TUG_ETCD_CLUSTER=vmnode=http://127.0.0.1:2380 TUG_SUBNET=10.88.1.0/24 TUG_SRC=$repo \
  TUG_BIN_DIR=$repo/target/debug TUG_PROVISION_OFFLINE=1 TUG_PROVISION_START=0 \
  bash "$repo/vagrant/provision.sh"
check "etcd's settings name this member" grep -qx 'ETCD_NAME="vmnode"' /etc/default/etcd
check "etcd's settings hold the initial cluster" \
  grep -qx 'ETCD_INITIAL_CLUSTER="vmnode=http://127.0.0.1:2380"' /etc/default/etcd
check "the server's settings use etcd" \
  grep -qx 'TUGBOAT_SERVER_ARGS=--store etcd --etcd-endpoints http://127.0.0.1:2379' /etc/default/tugboat-server
if [ -f /lib/systemd/system/etcd.service ]; then
  start_unit etcd.service /tmp/etcd.log
  pids+=($!)
  # A server that finds no etcd exits, and systemd starts it again (Restart=on-failure);
  # nothing restarts it here, so it starts once etcd answers.
  etcd_up() { curl -sf http://127.0.0.1:2379/health | grep -q '"health":"true"'; }
  check "etcd answers, started from Debian's etcd.service" wait_for "etcd" 120 etcd_up
  start_unit tugboat-server.service /tmp/server-etcd.log
  pids+=($!)
  leads_on_etcd() { tb -o json get servers | jq -e '(if type == "array" then . else .items end) | any(.[]; .role == "leader")' >/dev/null; }
  check "the server leads on the provisioned etcd" wait_for "a leader on etcd" 180 leads_on_etcd
  tb get servers || true
  stop_all
else
  echo "SKIP etcd from its unit: no etcd-server on the host (bash tests/install-deps.sh --tests)"
fi

if [ "$fails" != 0 ]; then
  for f in /tmp/server.log /tmp/agent.log /tmp/etcd.log /tmp/server-etcd.log; do
    [ -f "$f" ] && { echo "--- $f"; tail -n 40 "$f"; }
  done
  echo "provision-check: $fails check(s) failed"
  exit 1
fi
echo "provision-check: all passed"
