#!/usr/bin/env bash
# README.md's "Run your own services", step by step, as a new user follows it, with three
# differences so that this machine is left as it was:
#   - it installs into a temporary PREFIX (and SYSTEMD_DIR), not /usr/local;
#   - its data dir is temporary, not /var/lib/tugboat;
#   - `tugboat up` runs inside a network namespace this script makes (tugyours<pid>, deleted
#     at the end; the host's own network namespace is not changed), entered with nsenter.
# As root. PROFILE=debug installs a debug build (the root test that runs this script).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run-your-own.sh: needs root" >&2; exit 1; }
ns=tugyours$$
work=$(mktemp -d /tmp/tugyours.XXXXXX)
data=$work/data
up_pid=
say() { echo "run-your-own.sh: $*" >&2; }
cleanup() {
  set +e
  if [ -n "$up_pid" ] && kill -0 "$up_pid" 2>/dev/null; then
    kill -INT "$up_pid"
    for _ in $(seq 1 300); do kill -0 "$up_pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$up_pid" 2>/dev/null && kill -KILL "$up_pid"
    wait "$up_pid" 2>/dev/null
  fi
  ip netns del "$ns" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
fail() { say "FAILED: $*"; [ -f "$work/up.out" ] && sed 's/^/  up: /' "$work/up.out" >&2; exit 1; }
in_ns() { nsenter --net="/run/netns/$ns" "$@"; }
# http GET inside the namespace: curl, or busybox wget.
get() {
  if command -v curl >/dev/null; then in_ns curl -sf --max-time 10 "$1"
  else in_ns busybox wget -q -T 10 -O- "$1"; fi
}
# until SECONDS COMMAND...: polls the command every 0.5 s.
until_ok() {
  local limit=$1; shift
  for _ in $(seq 1 $((limit * 2))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  return 1
}

say "1. install (into $work/prefix)"
PREFIX=$work/prefix SYSTEMD_DIR=$work/systemd bash scripts/install.sh
export PATH=$work/prefix/bin:$PATH
for bin in tug tugboat tugboat-monitor tug-cni; do
  [ "$(command -v $bin)" = "$work/prefix/bin/$bin" ] || fail "$bin is not the installed one"
done
tug --version >/dev/null || fail "tug --version"
grep -q "ExecStart=$work/prefix/bin/tugboat agent" "$work/systemd/tugboat-agent.service" ||
  fail "the agent unit does not name the installed tugboat"

say "2. the shop's images"
bash examples/shop/build.sh --data-dir "$data" >/dev/null
tugboat --data-dir "$data" image ls | grep 'shop/front' >/dev/null || fail "shop/front is not in the store"

say "3. tugboat up -f examples/shop.yaml (in network namespace $ns)"
ip netns add "$ns"
ip -n "$ns" link set lo up
nsenter --net="/run/netns/$ns" tugboat up -f examples/shop.yaml --data-dir "$data" > "$work/up.out" 2>&1 &
up_pid=$!
for _ in $(seq 1 1500); do
  grep -q 'front: http://127.0.0.1:8080/' "$work/up.out" && break
  kill -0 "$up_pid" 2>/dev/null || fail "tugboat up exited"
  sleep 0.1
done
grep -q 'front: http://127.0.0.1:8080/' "$work/up.out" || fail "the shop was not ready"
# The same --data-dir as up's: the client finds the token and CA under <data-dir>/server.
client=(tugboat --data-dir "$data")

say "4. open the shop"
get http://127.0.0.1:8080/ | grep 'Tug shop' >/dev/null || fail "the front page"
in_ns bash examples/shop/buy.sh 127.0.0.1:8080 | grep 'Thank you' >/dev/null || fail "a purchase"
in_ns "${client[@]}" get instances | grep '^front-' >/dev/null || fail "get instances"

say "5. change it: three fronts, and 6. a service of your own"
# The front is the first service with `replicas: 2`: make it 3.
awk '/^  front:/ {f=1} f && /replicas: 2/ {sub(/2/, "3"); f=0} {print}' examples/shop.yaml > "$work/my-shop.yaml"
cat >> "$work/my-shop.yaml" <<'YAML'

  hello:
    image: shop/front:1
    command: [sh, -c, "mkdir -p /tmp/www && echo hello from $(hostname) > /tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www"]
    replicas: 2
    ports:
      - {container: 80, published: 8081, mode: ingress}
    health:
      readiness: {http: {port: 80, path: /}, interval_seconds: 1}
YAML
changes=$(in_ns "${client[@]}" diff -f "$work/my-shop.yaml" || true)
grep -q '^+replicas: 3' <<<"$changes" || fail "diff shows the front's new replica count"
in_ns "${client[@]}" apply -f "$work/my-shop.yaml"
in_ns "${client[@]}" rollout status front --timeout 90s || fail "rollout status front"
logs=$(in_ns "${client[@]}" logs front --tail 5)
grep -q '^\[front-' <<<"$logs" || fail "logs front"
fronts() { [ "$(in_ns "${client[@]}" get instances | awk '$1 ~ /^front-/ && $5 == "yes"' | wc -l)" = 3 ]; }
until_ok 90 fronts || fail "three ready fronts"
until_ok 90 get http://127.0.0.1:8081/ || fail "hello answers on 8081"
get http://127.0.0.1:8081/ | grep '^hello from hello-' >/dev/null || fail "hello's page"

say "7. Ctrl-C stops everything"
kill -INT "$up_pid"
for _ in $(seq 1 600); do kill -0 "$up_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$up_pid" 2>/dev/null && fail "tugboat up did not stop on Ctrl-C"
wait "$up_pid" || fail "tugboat up exited with an error"
up_pid=
left=$(find "$data/agent/instances" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
[ "$left" = 0 ] || fail "$left instance dirs left"
say "ok: installed, imported, ran, opened, changed the shop and ran a service of our own"
