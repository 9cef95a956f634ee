#!/usr/bin/env bash
# Provisions one node of the Vagrant cluster (vagrant/Vagrantfile): packages, the tug and
# tugboat binaries, the shop's images, settings, systemd units; then starts the services.
#
# Settings (the Vagrantfile passes them):
#   TUG_ROLE         server (tugboat server + an agent) or agent
#   TUG_NODE         this node's name (default: the hostname)
#   TUG_SERVER_ADDR  the server's address, e.g. 192.168.56.10:7480 (a scheme is dropped: the
#                    API speaks TLS), or the servers' addresses, comma-separated (the first
#                    answers the provisioning; agents and clients are given them all)
#   TUG_ETCD_CLUSTER a server node's control plane on etcd, three servers on a three-member
#                    etcd (docs/etcd.md "Three servers, three etcd members"): etcd's initial
#                    cluster, name=peer URL, e.g. tug1=http://192.168.56.10:2380,tug2=...;
#                    this node runs the member named TUG_NODE (Debian's etcd-server, its
#                    etcd.service) and its server uses --store etcd on every member. Unset:
#                    the server keeps its store in its data dir (the embedded store)
#   TUG_TOKEN        the cluster's admin token (the server uses it; clients send it). Agents
#                    on other hosts do not keep it: they join with a join token made with it,
#                    trusting the CA the server shows at first contact (TOFU, on the private
#                    network; a real cluster passes --ca-hash; docs/security.md)
#   TUG_SUBNET       this node's container subnet (one per node), e.g. 10.88.1.0/24
#   TUG_ADDRESS      this node's address on the cluster's network, e.g. 192.168.56.11: the
#                    other nodes route its subnet via it, the server reaches its agent API
#   TUG_LABELS       node labels, space-separated key=value
#   TUG_SRC          the Tug source tree (default /tug, the Vagrantfile's synced folder)
#   TUG_BIN_DIR      take tug and tugboat from here instead of building them; by default
#                    $TUG_SRC/vagrant/bin if binaries there run, else a build in the VM
# For the test in tests/vm (no network, no systemd as PID 1):
#   TUG_PROVISION_OFFLINE=1  no apt-get, no rustup, no build (TUG_BIN_DIR is then required)
#   TUG_PROVISION_START=0    install and enable nothing with systemctl; start nothing
#   TUG_CA_FILE              where an agent keeps the server's CA (/etc/tugboat/ca.pem)
set -euo pipefail

role=${TUG_ROLE:?TUG_ROLE must be server or agent}
node=${TUG_NODE:-$(hostname)}
server_addr=${TUG_SERVER_ADDR:-127.0.0.1:7480}
server_addr=${server_addr//https:\/\//}
server_addr=${server_addr//http:\/\//}
first_server=${server_addr%%,*}
etcd_cluster=${TUG_ETCD_CLUSTER:-}
token=${TUG_TOKEN:-}
subnet=${TUG_SUBNET:-10.88.0.0/24}
address=${TUG_ADDRESS:-}
labels=${TUG_LABELS:-}
src=${TUG_SRC:-/tug}
bin_dir=${TUG_BIN_DIR:-}
offline=${TUG_PROVISION_OFFLINE:-0}
start=${TUG_PROVISION_START:-1}
data_dir=/var/lib/tugboat
shop_images=/var/lib/tug-shop-images

say() { echo "provision[$node]: $*"; }
case $role in server | agent) ;; *) say "TUG_ROLE must be server or agent, not '$role'"; exit 1 ;; esac
if [ -n "$etcd_cluster" ]; then
  [ "$role" = server ] || { say "TUG_ETCD_CLUSTER is for server nodes (TUG_ROLE=server), not '$role'"; exit 1; }
  # This node's member, and the client URLs of all (peer port 2380 -> client port 2379).
  etcd_peer=$(echo "$etcd_cluster" | tr ',' '\n' | sed -n "s|^$node=||p")
  [ -n "$etcd_peer" ] || { say "TUG_ETCD_CLUSTER names no member '$node' (TUG_NODE): $etcd_cluster"; exit 1; }
  case $etcd_peer in
    http://*:2380) ;;
    *) say "TUG_ETCD_CLUSTER: member $node's peer URL must be http://ADDRESS:2380, not '$etcd_peer'"; exit 1 ;;
  esac
  etcd_endpoints=$(echo "$etcd_cluster" | tr ',' '\n' | sed 's|^[^=]*=||; s|:2380$|:2379|' | paste -sd, -)
fi
[ -f "$src/Cargo.toml" ] || { say "no Tug source tree at $src (TUG_SRC)"; exit 1; }

# --- packages ---
if [ "$offline" != 1 ]; then
  say "installing packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends ca-certificates curl gcc libc6-dev pkg-config \
    busybox-static iproute2 nftables file rsync python3 >/dev/null
  if [ -n "$etcd_cluster" ] && ! command -v etcd >/dev/null; then
    # Debian starts the package's own single-member etcd: stopped until configured below.
    apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
    systemctl stop etcd.service 2>/dev/null || true
  fi
fi
if [ -n "$etcd_cluster" ] && ! command -v etcd >/dev/null; then
  say "TUG_ETCD_CLUSTER needs etcd (Debian's etcd-server)"
  exit 1
fi

# --- binaries: given, synced in, or built here ---
runs() { [ -x "$1/tugboat" ] && [ -x "$1/tug" ] && "$1/tugboat" --help >/dev/null 2>&1; }
if [ -z "$bin_dir" ] && runs "$src/vagrant/bin"; then
  bin_dir=$src/vagrant/bin
fi
if [ -z "$bin_dir" ]; then
  [ "$offline" != 1 ] || { say "TUG_PROVISION_OFFLINE=1 needs TUG_BIN_DIR"; exit 1; }
  # The workspace needs Rust 1.85; Debian 12's is older, so rustup's stable when needed.
  export PATH=/root/.cargo/bin:$PATH
  if ! cargo --version 2>/dev/null | awk '{ split($2, v, "."); exit !(v[1] > 1 || v[2] >= 85) }'; then
    say "installing Rust (rustup, minimal profile)"
    curl -sSf https://sh.rustup.rs | sh -s -- -y -q --profile minimal --default-toolchain stable
  fi
  say "building tug, tugboat and tugboat-monitor (release, no LTO: a few minutes)"
  # A target dir in the VM: the synced tree may be read-only or shared by the three nodes.
  (cd "$src" && CARGO_TARGET_DIR=/var/cache/tug-build CARGO_PROFILE_RELEASE_LTO=false \
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 cargo build -q --release --locked -p tugboat -p tug-runtime -p tugboat-monitor)
  bin_dir=/var/cache/tug-build/release
fi
runs "$bin_dir" || { say "$bin_dir/tugboat and $bin_dir/tug must exist and run"; exit 1; }
say "installing tug and tugboat from $bin_dir into /usr/local/bin"
install -m 0755 "$bin_dir/tugboat" "$bin_dir/tug" /usr/local/bin/
# The per-container monitor (the agent falls back to `tugboat monitor` without it).
if [ -x "$bin_dir/tugboat-monitor" ]; then
  install -m 0755 "$bin_dir/tugboat-monitor" /usr/local/bin/
fi

# --- data: the shop's images, the token ---
install -d -m 0700 "$data_dir"
# The shop's images as OCI layouts; the agent imports them into its image store
# (<data-dir>/images) when it starts (--import, below).
say "building the shop's images into $shop_images"
# The shop's static binary comes with the others when they are given (the VM stages).
shop_bin=()
[ -x "$bin_dir/shop" ] && shop_bin=(SHOP_BIN="$bin_dir/shop")
env "${shop_bin[@]}" TUGBOAT=/usr/local/bin/tugboat bash "$src/examples/shop/build.sh" --data-dir "$shop_images/data" \
  --oci "$shop_images/oci" >/dev/null
if [ "$role" = server ] && [ -n "$token" ]; then
  # The server uses a token file that is there at its first start.
  (umask 077 && echo "$token" >"$data_dir/token")
fi

# --- settings and units ---
install -d -m 0755 /etc/default /etc/systemd/system
if [ -n "$etcd_cluster" ]; then
  # deploy/ha/etcd.default with this node's name and addresses.
  etcd_host=${etcd_peer#http://}
  etcd_host=${etcd_host%:2380}
  sed -e "s|^ETCD_NAME=.*|ETCD_NAME=\"$node\"|" \
    -e "s|^ETCD_LISTEN_PEER_URLS=.*|ETCD_LISTEN_PEER_URLS=\"http://$etcd_host:2380\"|" \
    -e "s|^ETCD_LISTEN_CLIENT_URLS=.*|ETCD_LISTEN_CLIENT_URLS=\"http://$etcd_host:2379,http://127.0.0.1:2379\"|" \
    -e "s|^ETCD_INITIAL_ADVERTISE_PEER_URLS=.*|ETCD_INITIAL_ADVERTISE_PEER_URLS=\"http://$etcd_host:2380\"|" \
    -e "s|^ETCD_ADVERTISE_CLIENT_URLS=.*|ETCD_ADVERTISE_CLIENT_URLS=\"http://$etcd_host:2379\"|" \
    -e "s|^ETCD_INITIAL_CLUSTER=.*|ETCD_INITIAL_CLUSTER=\"$etcd_cluster\"|" \
    -e "1s|^# .*|# Written by vagrant/provision.sh from deploy/ha/etcd.default, for member $node.|" \
    "$src/deploy/ha/etcd.default" >/etc/default/etcd
  install -d -m 0700 /var/lib/etcd
fi
if [ "$role" = server ]; then
  server_args=
  [ -z "$etcd_cluster" ] || server_args="--store etcd --etcd-endpoints $etcd_endpoints"
  cat >/etc/default/tugboat-server <<EOF
# Written by vagrant/provision.sh.
TUGBOAT_LISTEN=0.0.0.0:7480
TUGBOAT_DATA_DIR=$data_dir
TUGBOAT_SERVER_ARGS=$server_args
EOF
  install -m 0644 "$src/deploy/systemd/tugboat-server.service" /etc/systemd/system/
fi
agent_args="--subnet $subnet"
agent_token=$token
ca_file=$data_dir/tls/ca.pem
if [ "$role" = agent ]; then
  # Join: the server's CA (first contact), then a join token for this node made with the
  # admin token, which this host then forgets.
  ca_file=${TUG_CA_FILE:-/etc/tugboat/ca.pem}
  install -d -m 0755 "$(dirname "$ca_file")"
  say "waiting for the server's CA at https://$first_server"
  for _ in $(seq 1 600); do
    curl -skf "https://$first_server/v1/cluster/ca" -o /tmp/tug-ca.json && break
    sleep 1
  done
  python3 -c 'import json,sys; print(json.load(open("/tmp/tug-ca.json"))["ca"], end="")' >"$ca_file"
  ca_hash=$(python3 -c 'import json; print(json.load(open("/tmp/tug-ca.json"))["hash"])')
  join=$(curl -sf --cacert "$ca_file" -H "Authorization: Bearer $token" \
    -d '{"scope": "join", "ttl_seconds": 3600, "description": "vagrant '"$node"'"}' \
    "https://$first_server/v1/tokens" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  agent_args+=" --ca-hash $ca_hash"
  agent_token=
fi
[ -z "$address" ] || agent_args+=" --address $address --api-listen $address:7481"
for l in $labels; do agent_args+=" --label $l"; done
for d in "$shop_images"/oci/*; do agent_args+=" --import $d"; done
(
  umask 077
  cat >/etc/default/tugboat-agent <<EOF
# Written by vagrant/provision.sh.
TUGBOAT_ADDR=$server_addr
TUGBOAT_NODE=$node
TUGBOAT_DATA_DIR=$data_dir
TUGBOAT_AGENT_ARGS=$agent_args
EOF
  [ -z "$agent_token" ] || echo "TUGBOAT_TOKEN=$agent_token" >>/etc/default/tugboat-agent
  [ -z "${join:-}" ] || echo "TUGBOAT_JOIN_TOKEN=$join" >>/etc/default/tugboat-agent
)
install -m 0644 "$src/deploy/systemd/tugboat-agent.service" /etc/systemd/system/
# The client's settings, so that `tugboat get nodes` works for root and the vagrant user.
for home in /root /home/vagrant; do
  [ -d "$home" ] || continue
  install -d -m 0700 "$home/.config" "$home/.config/tugboat"
  (umask 077 && printf 'addr: %s\ntoken: %s\nca: %s\n' "$server_addr" "$token" "$ca_file" >"$home/.config/tugboat/config.yaml")
  owner=$(stat -c %U:%G "$home")
  chown -R "$owner" "$home/.config/tugboat"
done

# --- start ---
if [ "$start" = 1 ]; then
  systemctl daemon-reload
  units=(tugboat-agent.service)
  [ "$role" = server ] && units=(tugboat-server.service tugboat-agent.service)
  if [ -n "$etcd_cluster" ]; then
    # Not waited for: a new member is ready only once a quorum of the three has started,
    # and the VMs are provisioned one after the other. The server retries until etcd
    # answers (Restart=on-failure), as the agents retry the servers.
    systemctl enable -q etcd.service
    systemctl restart --no-block etcd.service
  fi
  systemctl enable -q "${units[@]}"
  # restart, not start: a second provision brings new binaries and settings into effect.
  systemctl restart "${units[@]}"
  say "started ${units[*]}"
fi
say "done"
