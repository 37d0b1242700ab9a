#!/usr/bin/env bash
# Stops the test cluster and removes everything it left: node-0's pods, mounts, network,
# iptables chains, cgroups and sysctl changes (node.sh), the processes and the state folder
# (the volumes' folders with it).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=env.sh
source "${here}/env.sh"
# One cluster operation at a time (concurrent test sessions share the cluster).
if [ "${SLM_CLUSTER_LOCKED:-}" != 1 ]; then
  mkdir -p "${SLM_CACHE_DIR}"
  exec 9>"${SLM_CACHE_DIR}/cluster.lock"
  flock 9
fi
state="${SLM_CLUSTER_DIR}"

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# stop NAME: SIGTERM to the component's process group, SIGKILL after 15 seconds.
stop() {
  local pidfile="${state}/pids/$1.pid" pid i
  [ -s "${pidfile}" ] || return 0
  pid="$(cat "${pidfile}")"
  local start=$SECONDS
  if kill -0 "${pid}" 2>/dev/null; then
    kill -TERM -- "-${pid}" 2>/dev/null || true
    for i in $(seq 150); do
      kill -0 "${pid}" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "${pid}" 2>/dev/null; then
      log "$1 did not stop on SIGTERM within 15s: killing it"
      kill -KILL -- "-${pid}" 2>/dev/null || true
    fi
  fi
  rm -f "${pidfile}"
  [ $((SECONDS - start)) -lt 3 ] || log "$1 took $((SECONDS - start))s to stop"
}

# The real node first: its pods' processes, mounts and networks go before containerd does.
# shellcheck source=node.sh
source "${here}/node.sh"
node_stop
for ((i = ${#SLM_COMPONENTS[@]} - 1; i >= 0; i--)); do
  stop "${SLM_COMPONENTS[i]}"
done

ip route del unreachable "${SLM_KWOK_POD_CIDR}" 2>/dev/null || true
if [ -d "${state}" ]; then
  if grep -q " ${state}" /proc/self/mounts; then
    log "error: mounts remain under ${state}:"
    grep " ${state}" /proc/self/mounts >&2
    exit 1
  fi
  rm -rf "${state}"
fi
log "cluster down"
