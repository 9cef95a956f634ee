#!/bin/sh
# A node-pool provider for `tugboat server --node-pools` (docs/nodepools.md) that makes a
# simulated host on this machine: a new network namespace with a veth on an existing bridge
# (in another namespace: the "LAN"), and `tugboat agent` running in it. The tests use it;
# it is also a template for a real provider (a cloud API call instead of `ip netns add`).
#
#   netns-agent.sh add POOL           prints the new node's name
#   netns-agent.sh remove POOL NODE   stops its agent, deletes its namespace and files
#
# From the server (docs/nodepools.md): TUGBOAT_POOL_LABELS (k=v,k=v), TUGBOAT_POOL_CPU,
# TUGBOAT_POOL_MEMORY. Settings, from the environment:
#   NETNS_AGENT_DIR      state: one slot per node (required)
#   NETNS_AGENT_LAN      the namespace that holds the bridge (required)
#   NETNS_AGENT_BRIDGE   the bridge there (default: lan)
#   NETNS_AGENT_NET      the LAN's first three octets, a /24 (required; nodes get .10-.249)
#   NETNS_AGENT_SERVER   the server's address, host:port (required)
#   NETNS_AGENT_PREFIX   prefix of the namespaces it makes (default: tgbpool-)
#   NETNS_AGENT_ARGS     more `tugboat agent` arguments (e.g. --import DIR)
#   TUGBOAT              the tugboat binary (default: tugboat on PATH)
# and $NETNS_AGENT_DIR/join-token, $NETNS_AGENT_DIR/ca-hash: how the agent joins.
# Nothing changes in the namespace this script runs in.
set -eu

die() { echo "netns-agent: $*" >&2; exit 1; }
: "${NETNS_AGENT_DIR:?}" "${NETNS_AGENT_LAN:?}" "${NETNS_AGENT_NET:?}" "${NETNS_AGENT_SERVER:?}"
BRIDGE=${NETNS_AGENT_BRIDGE:-lan}
PREFIX=${NETNS_AGENT_PREFIX:-tgbpool-}
TUGBOAT=${TUGBOAT:-tugboat}
DIR=$NETNS_AGENT_DIR
mkdir -p "$DIR"

add() {
    pool=$1
    n=10
    # mkdir is atomic: two adds at once take two slots.
    while ! mkdir "$DIR/slot-$n" 2>/dev/null; do
        n=$((n + 1))
        [ "$n" -lt 250 ] || die "no free slot under $DIR"
    done
    node="$pool-$n"
    ns="$PREFIX$n"
    slot="$DIR/slot-$n"
    echo "$node" >"$slot/node"
    echo "$ns" >"$slot/netns"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$NETNS_AGENT_LAN" link add "pool$n" type veth peer name eth1 netns "$ns"
    ip -n "$NETNS_AGENT_LAN" link set "pool$n" master "$BRIDGE" up
    ip -n "$ns" addr add "$NETNS_AGENT_NET.$n/24" dev eth1
    ip -n "$ns" link set eth1 up
    labels=""
    for kv in $(echo "${TUGBOAT_POOL_LABELS:-}" | tr ',' ' '); do
        labels="$labels --label $kv"
    done
    # Its output goes to a file: the server reads this script's stdout to its end.
    # shellcheck disable=SC2086
    setsid nsenter --net="/run/netns/$ns" "$TUGBOAT" agent \
        --addr "$NETNS_AGENT_SERVER" \
        --join-token "$(cat "$DIR/join-token")" --ca-hash "$(cat "$DIR/ca-hash")" \
        --data-dir "$slot/data" --node "$node" \
        --subnet "10.89.$n.0/24" --address "$NETNS_AGENT_NET.$n" \
        --api-listen "$NETNS_AGENT_NET.$n:7481" \
        $labels ${NETNS_AGENT_ARGS:-} </dev/null >"$slot/agent.log" 2>&1 &
    echo $! >"$slot/pid"
    echo "$node"
}

remove() {
    node=$2
    n=${node##*-}
    slot="$DIR/slot-$n"
    [ -d "$slot" ] && [ "$(cat "$slot/node" 2>/dev/null)" = "$node" ] || die "no node $node here"
    if [ -f "$slot/pid" ]; then
        pid=$(cat "$slot/pid")
        kill -INT "$pid" 2>/dev/null || true
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    # Mounts the agent left under its data dir (none once drained), deepest first.
    awk -v p="$slot/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
        while read -r m; do umount -l "$m" || true; done
    ip netns del "$(cat "$slot/netns")" 2>/dev/null || true
    rm -rf "$slot"
}

case "${1:-}" in
add) [ $# -eq 2 ] || die "usage: $0 add POOL"; add "$2" ;;
remove) [ $# -eq 3 ] || die "usage: $0 remove POOL NODE"; remove "$2" "$3" ;;
*) die "usage: $0 add POOL | remove POOL NODE" ;;
esac
