#!/usr/bin/env bash
# The cluster stage: three qemu VMs, each running Debian's kernel on the host's / (read-only
# over 9p), as the Vagrant cluster's three nodes (vagrant/README.md): tug1 runs `tugboat
# server` and an agent, tug2 and tug3 agents that join with a join token. All three are
# provisioned by vagrant/provision.sh and started from deploy/systemd's units
# (tests/vm/cluster-node.sh). Their NICs are tap devices on a bridge in a network namespace
# of this script's own (192.168.76.0/24 there only); the client runs in that namespace too.
#
#   1. a 3-replica service spread over the three nodes, every replica ready; and the shop's
#      real `orders` service (examples/shop/app) with its journal on an NFS volume (driver
#      nfs, docs/volumes.md) served by the kernel's nfsd in tug1's VM
#      (tests/vm/cluster-node.sh), placed on tug3 (tug1 and tug2 cordoned meanwhile); the
#      shop's catalog and cart, which it calls to total an order, run on tug1. A customer's
#      order (two teas, 800 cents at the catalog's prices) is placed through orders on tug3;
#   2. tug3's power is cut (its qemu killed): the replicas are ready again on tug1 and tug2,
#      and the orders instance rescheduled there lists that order (from the NFS journal);
#      a snapshot of the NFS volume (tugboat volume snapshot) holds it too;
#   3. tug3 boots again from its disk: it rejoins, and its old instances are cleaned up
#      (none of them left on its disk, exactly three replicas in the cluster).
#
# Prints `vm cluster: 3/3 replicas ready X.X s after a node's power was cut, old instances
# gone X.X s after it booted again` and `vm cluster: nfs volume data read back on NODE X.X s
# after the power cut (the shop's order ORDER, 800 cents, listed by the rescheduled
# orders)`. Budget: TUG_VM_CLUSTER_TIMEOUT seconds for the whole stage (default 1200; about
# 6 minutes under TCG on 2 cores, of which the NFS volume adds about one and the shop's
# catalog and cart beside orders about one more: two more containers to start on tug1, and
# the NFS volume's snapshot a few seconds; 408 s on a 2-core machine shared with builds). The
# NFS server's programs (rpc.nfsd, rpc.mountd, exportfs) are the host's nfs-kernel-server
# (tests/install-deps.sh --tests); the VMs' kernel brings nfsd and the nfs client. Nothing
# of the root network namespace changes; the VMs, the namespace and the temp dir go on exit.
# The binaries are cargo's debug build in CARGO_TARGET_DIR (default target/), which the VMs
# see through the host's / (read-only).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
here=$repo/tests/vm

cache=${TUG_VM_CACHE:-/var/cache/tug-vm}
accel=${TUG_VM_ACCEL:-auto}
mem=${TUG_VM_MEM:-1024}
budget=${TUG_VM_CLUSTER_TIMEOUT:-1200}

log() { echo "tests/vm/cluster: $*"; }
skip() {
  log "SKIP the three-VM cluster stage: $*"
  exit 0
}

# shellcheck source=tests/vm/lib.sh
. "$here/lib.sh"
vm_check_host
command -v nsenter >/dev/null || { log "missing nsenter (util-linux)"; exit 1; }
for tool in rpc.nfsd rpc.mountd exportfs; do
  PATH=$PATH:/usr/sbin command -v "$tool" >/dev/null ||
    { log "missing $tool, the NFS server in tug1's VM (nfs-kernel-server: bash tests/install-deps.sh --tests)"; exit 1; }
done
[ -c /dev/net/tun ] || skip "no /dev/net/tun for the VMs' tap devices"

start_all=$(date +%s)
deadline=$((start_all + budget))
tmp=$(mktemp -d /tmp/tug-vmc.XXXXXX)
ns=tgbvmc$$
declare -A qpid=()
cleanup() {
  local i
  for i in "${!qpid[@]}"; do
    if kill -0 "${qpid[$i]}" 2>/dev/null; then
      kill "${qpid[$i]}" 2>/dev/null || true
      wait "${qpid[$i]}" 2>/dev/null || true
    fi
  done
  ip netns delete "$ns" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

vm_kernel
log "building: cargo build -p tugboat -p tug-runtime -p tugboat-monitor --bins"
cargo build -q -p tugboat -p tug-runtime -p tugboat-monitor --bins
bin=$(realpath "${CARGO_TARGET_DIR:-$repo/target}")/debug
# The shop's static binary beside them (provision.sh builds the images with it).
cp "$(bash "$repo/examples/shop/build.sh" --binary-only)" "$bin/shop"
vm_initramfs "$tmp"
vm_accel "$tmp"

# --- the network: a bridge and three taps in a namespace of our own ---
ip netns add "$ns"
ip -n "$ns" link add br0 type bridge
ip -n "$ns" link set br0 up
ip -n "$ns" addr add 192.168.76.254/24 dev br0
ip -n "$ns" link set lo up
for i in 1 2 3; do
  ip -n "$ns" tuntap add dev "tap$i" mode tap
  ip -n "$ns" link set "tap$i" master br0
  ip -n "$ns" link set "tap$i" up
done

token=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
server=192.168.76.11
for i in 1 2 3; do
  out=$tmp/out$i
  mkdir -p "$out"
  role=agent
  [ "$i" = 1 ] && role=server
  cat >"$out/node.env" <<EOF
TUG_ROLE=$role
TUG_NODE=tug$i
TUG_ADDRESS=192.168.76.1$i
TUG_SUBNET=10.88.$i.0/24
TUG_SERVER_ADDR=$server:7480
TUG_TOKEN=$token
TUG_LABELS=host=tug$i
TUG_BIN_DIR=$bin
EOF
  # tug1 serves the NFS volume (on its disk: /tmp in the VM).
  [ "$i" != 1 ] || printf '%s\n' TUG_NFS_EXPORT=/tmp/nfs-export TUG_NFS_CLIENTS=192.168.76.0/24 >>"$out/node.env"
  echo "node 1500 $repo /bin/bash $here/cluster-node.sh" >"$out/jobs"
  truncate -s 4G "$tmp/disk$i.img"
  mkfs.ext4 -q -F -E lazy_itable_init=1,lazy_journal_init=1 "$tmp/disk$i.img"
done

boot() {
  local i=$1
  rm -f "$tmp/out$i/up" "$tmp/out$i/instances"
  # qemu opens its tap in the stage's namespace.
  nsenter --net="/run/netns/$ns" qemu-system-x86_64 -nodefaults -no-user-config -machine q35 \
    "${accel_args[@]}" -smp 1 -m "$mem" -display none -no-reboot \
    -netdev "tap,id=n0,ifname=tap$i,script=no,downscript=no" \
    -device "virtio-net-pci,netdev=n0,mac=52:54:00:76:00:0$i" \
    -serial "file:$tmp/vm$i.log" \
    -drive "file=$tmp/disk$i.img,format=raw,if=virtio,cache=unsafe" \
    -kernel "$vmlinuz" -initrd "$tmp/initrd" \
    -append "console=ttyS0 panic=-1 quiet loglevel=4 rdinit=/init cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -virtfs "local,path=$repo,mount_tag=tugrepo,security_model=none,readonly=on,multidevs=remap" \
    -virtfs "local,path=$tmp/out$i,mount_tag=tugout,security_model=none,multidevs=remap" \
    </dev/null >/dev/null 2>&1 &
  qpid[$i]=$!
}

exec 3>&1 # (the stage's output, for fail called by a condition whose output is dropped)
fail() {
  exec >&3 2>&1
  log "FAILED: $*"
  for i in 1 2 3; do
    echo "--- tug$i's console (last lines)"
    tail -n 40 "$tmp/vm$i.log" 2>/dev/null || true
    for f in server agent mountd; do
      [ ! -f "$tmp/out$i/$f.log" ] || { echo "--- tug$i's $f (last lines)"; tail -n 40 "$tmp/out$i/$f.log"; }
    done
    [ ! -f "$tmp/out$i/state" ] || { echo "--- tug$i's processes, instances and mounts"; cat "$tmp/out$i/state"; }
  done
  tb get nodes 2>&1 || true
  tb get instances 2>&1 || true
  exit 1
}

# wait_until WHAT SECONDS COMMAND...: within the stage's budget.
wait_until() {
  local what=$1 until=$(($(date +%s) + $2))
  shift 2
  [ "$until" -le "$deadline" ] || until=$deadline
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$until" ] || fail "timed out waiting for $what"
    sleep 1
  done
}

# The client, in the stage's namespace, bounded.
tb() {
  timeout 20 nsenter --net="/run/netns/$ns" "$bin/tugboat" \
    --addr "$server:7480" --token "$token" --ca "$tmp/out1/ca.pem" "$@"
}
jq_instances() { tb -o json get instances | jq -e "$1"; }

log "booting three VMs ($accel, 1 cpu and ${mem} MiB each); budget ${budget}s"
for i in 1 2 3; do boot "$i"; done
units_up() { # tug$1's units run; a VM that powered off meanwhile fails the stage at once
  [ -e "$tmp/out$1/up" ] && return 0
  kill -0 "${qpid[$1]}" 2>/dev/null || fail "tug$1's VM stopped before its units ran"
  return 1
}
for i in 1 2 3; do wait_until "tug$i's units" 600 units_up "$i"; done
nodes_ready() { tb -o json get nodes | jq -e '[.items[] | select(.status == "ready")] | length == 3'; }
wait_until "the three nodes ready" 300 nodes_ready
log "three nodes ready after $(($(date +%s) - start_all))s"

cat >"$tmp/web.yaml" <<'EOF'
services:
  web:
    image: shop/catalog:1
    replicas: 3
    ports:
      - {container: 80}
    health:
      readiness: {http: {port: 80, path: /healthz}, interval_seconds: 1, failure_threshold: 1}
    stop: {grace_seconds: 1}
    placement:
      anti_affinity: [{service: web, required: false}]
EOF
tb apply -f "$tmp/web.yaml" >/dev/null
ready_on() { # the number of ready web replicas on the nodes named
  local nodes
  nodes=$(printf '"%s",' "$@")
  jq_instances "[.items[] | select(.service == \"web\" and .phase == \"running\" and .ready
    and (.node | IN(${nodes%,})))] | length"
}
spread() { [ "$(ready_on tug1)" = 1 ] && [ "$(ready_on tug2)" = 1 ] && [ "$(ready_on tug3)" = 1 ]; }
wait_until "web ready on each node" 600 spread
log "web ready on tug1, tug2 and tug3"

# --- the shop's orders on an NFS volume, on tug3 (the other nodes cordoned while it is
# placed); the catalog (prices, stock) and the cart that it calls, on tug1 ---
cat >"$tmp/shop.yaml" <<'EOF'
volumes:
  orders:
    driver: nfs
    options: {server: 192.168.76.11, path: /, timeout_seconds: "30"}
services:
  catalog:
    image: shop/catalog:1
    ports: [{container: 80}]
    placement: {node_labels: {host: tug1}}
    health:
      readiness: {http: {port: 80, path: /healthz}, interval_seconds: 1, failure_threshold: 1}
    stop: {grace_seconds: 1}
  cart:
    image: shop/cart:1
    ports: [{container: 80}]
    placement: {node_labels: {host: tug1}}
    health:
      readiness: {http: {port: 80, path: /healthz}, interval_seconds: 1, failure_threshold: 1}
    stop: {grace_seconds: 1}
EOF
cat >"$tmp/orders.yaml" <<'EOF'
services:
  orders:
    image: shop/orders:1
    ports: [{container: 80}]
    volumes: [{type: volume, source: orders, target: /data}]
    health:
      readiness: {http: {port: 80, path: /healthz}, interval_seconds: 1, failure_threshold: 1}
    stop: {grace_seconds: 1}
EOF
tb apply -f "$tmp/shop.yaml" >/dev/null
ready_of() { # the id of a ready instance of service $1 on one of the nodes named after it
  local service=$1 nodes
  shift
  nodes=$(printf '"%s",' "$@")
  tb -o json get instances | jq -er "[.items[] | select(.service == \"$service\" and .phase == \"running\"
    and .ready and (.node | IN(${nodes%,})))][0] | .id"
}
wait_until "catalog ready on tug1" 300 ready_of catalog tug1
wait_until "cart ready on tug1" 300 ready_of cart tug1
tb node cordon tug1 >/dev/null
tb node cordon tug2 >/dev/null
tb apply -f "$tmp/orders.yaml" >/dev/null
wait_until "orders ready on tug3" 300 ready_of orders tug3
writer=$(ready_of orders tug3)
tb node uncordon tug1 >/dev/null
tb node uncordon tug2 >/dev/null
tb exec "$writer" -- cat /proc/mounts | grep -q ' /data nfs4 ' ||
  fail "$writer's /data is not an nfs4 mount: $(tb exec "$writer" -- cat /proc/mounts 2>&1 | grep /data)"
# A customer's checkout as the front makes it: two teas into the cart, then the order
# (orders asks the cart for the lines and the catalog for their prices and stock).
suffix=$(od -An -tx1 -N4 /dev/urandom | tr -d ' \n')
session=vmc$suffix order=order$suffix
placed=$(tb exec "$writer" -- sh -c "wget -qO- --post-data '{\"sku\":\"tea\",\"quantity\":2}' \
    http://cart/carts/$session/items >/dev/null && wget -qO- --post-data \
    '{\"id\":\"$order\",\"session\":\"$session\",\"name\":\"Ada\",\"address\":\"1 Lane\"}' \
    http://127.0.0.1/orders" 2>&1) || fail "orders on tug3 ($writer) could not place an order: $placed"
# Orders totals at the catalog's prices: a tea is 400 cents.
echo "$placed" | jq -e ".order.id == \"$order\" and .order.total_cents == 800" >/dev/null ||
  fail "orders on tug3 answered the checkout with $placed, not order $order of 800 cents"
old=$(tb -o json get instances | jq -r '.items[] | select(.node == "tug3") | .id')
log "orders $writer on tug3 stored order $order on the nfs volume (${old//$'\n'/, } on tug3)"

# --- 2. tug3's power cut ---
kill -9 "${qpid[3]}"
wait "${qpid[3]}" 2>/dev/null || true
cut=$(date +%s.%N)
elsewhere() { [ "$(ready_on tug1 tug2)" = 3 ]; }
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
read_back() { # the rescheduled orders lists the order placed on tug3; sets reader_node
  local id got
  id=$(ready_of orders tug1 tug2) || return 1
  got=$(tb exec "$id" -- wget -qO- "http://127.0.0.1/orders?session=$session") || return 1
  echo "$got" | jq -e ".orders | map(select(.id == \"$order\" and .total_cents == 800)) | length == 1" >/dev/null ||
    fail "orders $id on the nfs volume lists \`$got\` for session $session, not order $order of 800 cents"
  reader_node=$(tb -o json get instances | jq -r ".items[] | select(.id == \"$id\") | .node")
}
# Both at once, each timed from the cut when first seen.
healed="" read_at="" reader_node="" until=$(($(date +%s) + 300))
[ "$until" -le "$deadline" ] || until=$deadline
while [ -z "$healed" ] || [ -z "$read_at" ]; do
  if [ "$(date +%s)" -ge "$until" ]; then
    [ -n "$healed" ] || fail "timed out waiting for 3 web replicas ready on tug1 and tug2"
    fail "timed out waiting for the rescheduled orders to list the order from the nfs volume"
  fi
  [ -n "$healed" ] || ! elsewhere >/dev/null 2>&1 || healed=$(since "$cut")
  [ -n "$read_at" ] || ! read_back 2>/dev/null || read_at=$(since "$cut")
  sleep 1
done
log "3/3 replicas ready on tug1 and tug2 $healed s after tug3's power was cut"
log "orders on $reader_node listed order $order from the nfs volume $read_at s after the power cut"

# A snapshot of the NFS volume (made by the first ready node's agent) holds the order.
tb volume snapshot orders -f "$tmp/orders.tar" >"$tmp/snapshot.out" 2>&1 ||
  fail "snapshot of the nfs volume: $(cat "$tmp/snapshot.out")"
tar -xOf "$tmp/orders.tar" orders.jsonl | grep -q "\"$order\"" ||
  fail "the nfs volume's snapshot has no order $order: $(tar -tvf "$tmp/orders.tar" 2>&1)"
log "$(cat "$tmp/snapshot.out")"

# --- 3. tug3 boots again from its disk ---
boot 3
booted=$(date +%s.%N)
wait_until "tug3's units after its reboot" 600 test -e "$tmp/out3/up"
back() {
  tb -o json get nodes | jq -e '.items[] | select(.name == "tug3") | .status == "ready"'
}
wait_until "tug3 ready again" 300 back
old_gone() {
  local id
  [ -f "$tmp/out3/instances" ] || return 1
  for id in $old; do ! grep -qx "$id" "$tmp/out3/instances" || return 1; done
}
wait_until "tug3's old instances cleaned up" 300 old_gone
cleaned=$(since "$booted")
three=$(jq_instances '[.items[] | select(.service == "web")] | length')
[ "$three" = 3 ] || fail "web has $three instances after tug3 came back, not 3"
[ "$(ready_on tug1 tug2 tug3)" = 3 ] || fail "not every web replica is ready after tug3 came back"
orders=$(jq_instances '[.items[] | select(.service == "orders")] | length')
[ "$orders" = 1 ] || fail "orders has $orders instances after tug3 came back, not 1"

# --- the end: each node stops its units and powers off ---
for i in 1 2 3; do touch "$tmp/out$i/stop"; done
for i in 1 2 3; do
  for _ in $(seq 1 60); do kill -0 "${qpid[$i]}" 2>/dev/null || break; sleep 1; done
done
log "stage took $(($(date +%s) - start_all))s"
echo "vm cluster: 3/3 replicas ready $healed s after a node's power was cut, old instances gone $cleaned s after it booted again"
echo "vm cluster: nfs volume data read back on $reader_node $read_at s after the power cut (the shop's order $order, 800 cents, listed by the rescheduled orders)"
