#!/usr/bin/env bash
# For jobs run inside the test VMs (provision-check.sh, cluster-node.sh), where no systemd
# runs: start deploy/systemd's units as systemd would, stop them, wait for a condition.
# shellcheck shell=bash

# Starts a unit's ExecStart the way systemd would: Environment= lines, then EnvironmentFile=
# (KEY=VALUE lines), %H, %p, ${VAR} as one word and $VAR split on whitespace. Enough for our
# units and Debian's etcd.service.
start_unit() {
  local unit=/etc/systemd/system/$1 log=$2 line file exec word kv value
  # A package's own unit (Debian's etcd.service) when none is installed over it.
  [ -f "$unit" ] || unit=/lib/systemd/system/$1
  local -a argv=()
  exec=$(sed -n 's/^ExecStart=//p' "$unit")
  (
    while IFS= read -r line; do
      case $line in
        Environment=*) export "${line#Environment=}" ;;
        EnvironmentFile=*)
          file=${line#EnvironmentFile=}
          file=${file#-}
          [ -f "$file" ] || continue
          while IFS= read -r kv; do
            case $kv in '' | '#'*) continue ;; esac
            # systemd takes the quotes off a quoted value (KEY="a b" is a b).
            value=${kv#*=}
            case $value in
              \"*\") value=${value#\"} value=${value%\"} ;;
              \'*\') value=${value#\'} value=${value%\'} ;;
            esac
            export "${kv%%=*}=$value"
          done <"$file"
          ;;
      esac
    done < <(grep -E '^(Environment|EnvironmentFile)=' "$unit" | sed "s/%H/$(hostname)/g; s/%p/${1%.service}/g")
    for word in $exec; do
      if [[ $word =~ ^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$ ]]; then
        argv+=("${!BASH_REMATCH[1]}")
      elif [[ $word =~ ^\$([A-Za-z_][A-Za-z0-9_]*)$ ]]; then
        # shellcheck disable=SC2206 # split on purpose, as systemd splits $VAR
        argv+=(${!BASH_REMATCH[1]})
      else
        argv+=("$word")
      fi
    done
    echo "starting $1: ${argv[*]}"
    exec "${argv[@]}" >"$log" 2>&1
  ) &
}

# The pids of the units started.
pids=()
stop_all() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap stop_all EXIT

wait_for() { # what seconds command...
  local what=$1 deadline=$(($(date +%s) + $2))
  shift 2
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge $deadline ]; then echo "timed out waiting for $what"; return 1; fi
    sleep 1
  done
}

