#!/usr/bin/env bash
# The suite's leak check: what the tests make (cgroups, network namespaces, mounts, state
# dirs) must be gone when they end. `snapshot FILE` before the tests, `compare FILE` after:
# anything of Tug's that is new fails the run, named.
set -euo pipefail
state() {
  find /sys/fs/cgroup -maxdepth 4 -type d 2>/dev/null | sed 's/^/cgroup /'
  ip netns list 2>/dev/null | awk '{print "netns " $1}'
  awk '{print "mount " $5}' /proc/self/mountinfo
  find /run /var/run -maxdepth 1 -mindepth 1 2>/dev/null | sed 's/^/run /'
  find /tmp -maxdepth 1 -mindepth 1 2>/dev/null | sed 's/^/tmp /'
}
case "${1:-}" in
  snapshot) state | sort -u >"$2" ;;
  compare)
    # Only what Tug and its tests make: tug*, tgb* (tugboat tests), libpod* (podman test).
    new=$(state | sort -u | comm -13 "$2" - | grep -E '/(tug|tgb|libpod)[^/]*(/|$)|^netns (tug|tgb)' || true)
    if [ -n "$new" ]; then
      echo "leak check: the tests left these behind:" >&2
      echo "$new" >&2
      exit 1
    fi
    echo "leak check: nothing left behind"
    ;;
  *) echo "usage: $0 snapshot|compare FILE" >&2; exit 2 ;;
esac
