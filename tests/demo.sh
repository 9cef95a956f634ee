#!/usr/bin/env bash
# The main job: build tugboat, build the shop's images, run `tugboat up -f examples/shop.yaml`
# inside a network namespace of its own (the host's network is not touched), buy tea and coffee
# through the front's pages (examples/shop/buy.sh), put the shop under load for 40 s (`shop
# load`): meanwhile a catalog container is killed (SIGKILL, as a crash) and the catalog is
# rolled out to a new template, and the front scales out; every purchase must go through.
# Then show what runs, stop it all and leave the host clean.
# With a terminal, it waits for Enter before stopping (look around meanwhile).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/install-deps.sh
echo "demo: building tugboat and tug (release); a first build compiles ~300 crates, about 10 minutes on 2 cores" >&2
# Cargo draws its progress bar only on a terminal: draw it anyway when the output is a log.
[ -t 2 ] || export CARGO_TERM_PROGRESS_WHEN=always CARGO_TERM_PROGRESS_WIDTH=100
cargo build --release -p tugboat -p tug-runtime
bin=$PWD/target/release/tugboat
ns=tugdemo$$
data=/tmp/tugdemo$$
up_pid=
load_pid=
cleanup() {
  set +e
  if [ -n "$load_pid" ]; then kill "$load_pid" 2>/dev/null; wait "$load_pid"; fi
  if [ -n "$up_pid" ] && kill -0 "$up_pid" 2>/dev/null; then
    kill -INT "$up_pid"; wait "$up_pid"
  fi
  ip netns del "$ns" 2>/dev/null
  rm -rf "$data"
}
trap cleanup EXIT
TUGBOAT=$bin bash examples/shop/build.sh --data-dir "$data/build/data" --oci "$data/build/oci"
ip netns add "$ns"
ip -n "$ns" link set lo up
in_ns() { nsenter --net="/run/netns/$ns" "$@"; }
imports=()
for d in "$data"/build/oci/*; do imports+=(--import "$d"); done
# nsenter execs tugboat: $! is tugboat up itself, which Ctrl-C (SIGINT) stops cleanly.
nsenter --net="/run/netns/$ns" "$bin" up -f examples/shop.yaml --data-dir "$data" "${imports[@]}" > "$data/up.out" &
up_pid=$!
for _ in $(seq 1 600); do
  grep -q 'front: http' "$data/up.out" 2>/dev/null && break
  kill -0 "$up_pid" 2>/dev/null || { echo "tugboat up exited" >&2; exit 1; }
  sleep 0.2
done
cat "$data/up.out"
echo "--- the front page (inside network namespace $ns), its products:"
in_ns curl -s http://127.0.0.1:8080/ | grep -o '<h2><a [^>]*>[^<]*</a></h2>' | sed 's/<[^>]*>//g'
echo "--- a purchase through the pages: front, catalog, cart, orders and payments:"
in_ns bash examples/shop/buy.sh 127.0.0.1:8080
# build.sh built the shop's static binary; `shop load` is its load generator.
shop=$(ls -t "${CARGO_TARGET_DIR:-$PWD/target}"/shop/*/release/shop | head -n 1)
cli() { in_ns "$bin" --addr 127.0.0.1:7480 --data-dir "$data/server" "$@"; }
fronts() { cli describe service front | awk '/^Replicas/ {print $2; exit}'; }
# The catalog's next template: its spec with one more environment variable (a new version
# would change its image), applied alone so that nothing else changes.
{
  echo "services:"
  awk '/^  catalog:$/ { on = 1; print; print "    env: {VERSION: \"2\"}"; next }
       /^  [a-z]+:$/ { on = 0 }
       on' examples/shop.yaml
} >"$data/catalog-v2.yaml"
# A crash: SIGKILL to the container's init, from this host (its monitor records the pid).
kill_one() {
  local id pid
  id=$(cli get instances --service "$1" | awk 'NR==2 {print $1}')
  pid=$(sed -n 's/.*"container_pid": *\([0-9]*\).*/\1/p' "$data/agent/instances/$id/monitor.json" 2>/dev/null)
  if [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null; then
    echo "  $((SECONDS - started)) s: killed $1 instance $id (its container's pid $pid)"
  else
    echo "  $((SECONDS - started)) s: no $1 container to kill (instance ${id:-none})"
  fi
}
echo "--- the shop under load for 40 s: 15 customers a second, each buys tea and coffee;"
echo "    the front is autoscaled (examples/shop.yaml: 2 to 4 fronts, 50% of their CPU request);"
echo "    at 8 s a catalog container is killed, at 16 s the catalog is rolled out (max_surge 1):"
in_ns "$shop" load --addr 127.0.0.1:8080 --rate 15/s --duration 40s > "$data/load.out" &
load_pid=$!
started=$SECONDS
killed=0 rolled=0
while kill -0 "$load_pid" 2>/dev/null; do
  n=$(fronts)
  if [ "${n%%/*}" != "${last:-}" ]; then
    echo "  $((SECONDS - started)) s: front replicas ${n:-?}"
    last=${n%%/*}
  fi
  if [ "$killed" = 0 ] && [ $((SECONDS - started)) -ge 8 ]; then
    kill_one catalog
    killed=1
  fi
  if [ "$rolled" = 0 ] && [ $((SECONDS - started)) -ge 16 ]; then
    echo "  $((SECONDS - started)) s: tugboat apply -f catalog-v2.yaml (env VERSION=2)"
    cli apply -f "$data/catalog-v2.yaml" | sed 's/^/    /'
    rolled=1
  fi
  sleep 1
done
wait "$load_pid" && load_ok=1 || load_ok=0
load_pid=
cat "$data/load.out"
cli describe service front | grep -E '^(Replicas|Autoscale)'
echo "--- tugboat rollout status catalog:"
cli rollout status catalog
[ "$load_ok" = 1 ] || { echo "shop load had failed requests" >&2; exit 1; }
echo "--- what runs:"
in_ns "$bin" --addr 127.0.0.1:7480 --data-dir "$data/server" get instances
in_ns "$bin" --addr 127.0.0.1:7480 --data-dir "$data/server" top
front=$(in_ns "$bin" --addr 127.0.0.1:7480 --data-dir "$data/server" get instances --service front | awk 'NR==2 {print $1}')
echo "--- tugboat logs --tail 3 $front (its requests):"
in_ns "$bin" --addr 127.0.0.1:7480 --data-dir "$data/server" logs --tail 3 "$front"
echo "--- tugboat exec $front -- cat /etc/hosts (service names, kept current by the agent):"
in_ns "$bin" --addr 127.0.0.1:7480 --data-dir "$data/server" exec "$front" -- cat /etc/hosts
echo "--- tugboat exec -i $front -- sh (its stdin passed on; -it gives a terminal):"
echo 'echo "I am $(hostname), serving $SHOP_SERVICE"' |
  in_ns "$bin" --addr 127.0.0.1:7480 --data-dir "$data/server" exec -i "$front" -- sh
if [ -t 0 ]; then
  echo "--- the shop answers inside the namespace: nsenter --net=/run/netns/$ns curl http://127.0.0.1:8080/"
  echo "--- a shell in it: nsenter --net=/run/netns/$ns $bin --addr 127.0.0.1:7480 --data-dir $data/server exec -it $front -- sh"
  read -r -p "press Enter to stop it " _
fi
echo "--- stopping (Ctrl-C to tugboat up)"
kill -INT "$up_pid"; wait "$up_pid"; up_pid=
echo "stopped; no container, mount or cgroup of the demo is left"
