#!/usr/bin/env bash
# Builds Tug (release) and installs it:
#   $PREFIX/bin/tug, tugboat, tugboat-monitor, tug-cni (PREFIX default /usr/local)
#   $SYSTEMD_DIR/tugboat-server.service, tugboat-agent.service
#                                                      (SYSTEMD_DIR default /etc/systemd/system
#                                                       when systemd runs; SYSTEMD_DIR= skips)
# `tug` and `tugboat-monitor` (one process per running container) are static musl binaries
# built with the `dist` profile when Rust has the musl target (BENCHMARKS.md: they meet
# their speed and memory targets so, and not as dynamic binaries); STATIC=0, or no musl
# target, builds them like the others (a line says so).
# It changes nothing else: no network, no service is enabled or started (it says how).
# Run as root for the default PREFIX. CARGO_TARGET_DIR is honoured; NO_BUILD=1 installs what
# is already built there; PROFILE=debug installs a debug build (the repository's tests).
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${PREFIX:-/usr/local}
target=${CARGO_TARGET_DIR:-$PWD/target}
profile=${PROFILE:-release}
case $profile in
  release) build=(--release) ;;
  debug) build=() ;;
  *) echo "install.sh: PROFILE is release or debug, not $profile" >&2; exit 1 ;;
esac
if [ -z "${SYSTEMD_DIR+set}" ]; then
  SYSTEMD_DIR=
  [ -d /run/systemd/system ] && SYSTEMD_DIR=/etc/systemd/system
fi
say() { echo "install.sh: $*" >&2; }

command -v cargo >/dev/null || { say "needs cargo (bash tests/install-deps.sh installs it)"; exit 1; }
musl=$(uname -m)-unknown-linux-musl
static=0
if [ "$profile" = release ] && [ "${STATIC:-1}" = 1 ]; then
  if [ -d "$(rustc --print sysroot)/lib/rustlib/$musl/lib" ]; then
    static=1
  else
    say "Rust has no $musl target: tug and tugboat-monitor are built dynamic, larger and"
    say "slower (rustup target add $musl, then run this again, for the static ones)"
  fi
fi
dynamic=(-p tugboat --bin tugboat -p tug-netns --bin tug-cni)
[ $static = 1 ] || dynamic+=(-p tug-runtime --bin tug -p tugboat-monitor --bin tugboat-monitor)
if [ "${NO_BUILD:-0}" != 1 ]; then
  say "building tug, tugboat, tugboat-monitor and tug-cni ($profile). A first build compiles"
  say "some 335 crates: 7 to 12 minutes on 2 cores; the bar below counts them (later builds"
  say "take seconds)"
  # Cargo draws its progress bar only on a terminal: draw it anyway (CI logs, pipes).
  [ -t 2 ] || export CARGO_TERM_PROGRESS_WHEN=always CARGO_TERM_PROGRESS_WIDTH=100
  started=$SECONDS
  cargo build "${build[@]}" "${dynamic[@]}"
  if [ $static = 1 ]; then
    cargo build --profile dist --target "$musl" -p tug-runtime --bin tug -p tugboat-monitor --bin tugboat-monitor
  fi
  say "built in $((SECONDS - started)) s"
fi

# Where each binary is built.
from() {
  case $static:$1 in
    1:tug | 1:tugboat-monitor) echo "$target/$musl/dist/$1" ;;
    *) echo "$target/$profile/$1" ;;
  esac
}
mkdir -p "$prefix/bin"
for bin in tug tugboat tugboat-monitor tug-cni; do
  built=$(from $bin)
  [ -x "$built" ] || { say "$built is missing (build first)"; exit 1; }
  install -m 0755 "$built" "$prefix/bin/$bin.new"
  mv -f "$prefix/bin/$bin.new" "$prefix/bin/$bin"
  say "installed $prefix/bin/$bin"
done

if [ -n "$SYSTEMD_DIR" ]; then
  mkdir -p "$SYSTEMD_DIR"
  for unit in deploy/systemd/*.service; do
    [ -e "$unit" ] || continue
    # The units name /usr/local/bin/tugboat: point them at this PREFIX.
    sed "s#/usr/local/bin/#$prefix/bin/#g" "$unit" > "$SYSTEMD_DIR/$(basename "$unit").new"
    mv -f "$SYSTEMD_DIR/$(basename "$unit").new" "$SYSTEMD_DIR/$(basename "$unit")"
    say "installed $SYSTEMD_DIR/$(basename "$unit") (not enabled)"
  done
  say "a cluster node: systemctl daemon-reload && systemctl enable --now tugboat-server tugboat-agent"
  say "  (settings: /etc/default/tugboat-server, /etc/default/tugboat-agent; see vagrant/README.md)"
fi
case ":$PATH:" in
  *":$prefix/bin:"*) ;;
  *) say "$prefix/bin is not on your PATH: export PATH=$prefix/bin:\$PATH" ;;
esac
say "done; try: tugboat up -f examples/shop.yaml (README.md, Run your own services)"
