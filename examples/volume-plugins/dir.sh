#!/bin/sh
# An exec volume plugin (docs/volumes.md): each volume is a directory under `base` (an
# option; default /var/lib/tug-volumes), a file system every node already has mounted,
# e.g. an NFS or CephFS share the host manages. Use it as a template for a plugin that
# attaches a cloud disk or an iSCSI LUN: the agent calls
#   PLUGIN create|mount|unmount|remove|usage   with the volume as JSON on stdin:
#   {"volume": NAME, "node": NODE, "size_bytes": N|null, "options": {...}, "target": DIR}
# and reads JSON from stdout: mount answers {"path": DIR} (the directory bound into the
# containers), usage {"bytes_used": N, "bytes_total": N, ...}; a non-zero exit is a failure
# whose last line of stderr the agent reports. Every call must be idempotent.
# Needs jq. Each call is appended to BASE/calls.log ("ACTION VOLUME NODE").
set -eu
action=${1:?usage: dir.sh create|mount|unmount|remove|usage}
request=$(cat)
volume=$(printf '%s' "$request" | jq -er .volume)
node=$(printf '%s' "$request" | jq -r .node)
base=$(printf '%s' "$request" | jq -r '.options.base // "/var/lib/tug-volumes"')
case $volume in
  */* | .* | "") echo "dir.sh: bad volume name: $volume" >&2; exit 2 ;;
esac
mkdir -p "$base"
echo "$action $volume $node" >>"$base/calls.log"
dir=$base/$volume
case $action in
  create) mkdir -p "$dir" ;;
  mount)
    [ -d "$dir" ] || { echo "dir.sh: $dir does not exist (was create called?)" >&2; exit 1; }
    jq -cn --arg path "$dir" '{path: $path}'
    ;;
  unmount) ;;
  remove) rm -rf -- "$dir" ;;
  usage)
    used=$(du -sk -- "$dir" | cut -f1)
    size=$(printf '%s' "$request" | jq -r '.size_bytes // 0')
    jq -cn --argjson used "$((used * 1024))" --argjson size "$size" \
      'if $size > 0 then {bytes_used: $used, bytes_total: $size} else {bytes_used: $used} end'
    ;;
  *) echo "dir.sh: unknown action $action" >&2; exit 2 ;;
esac
