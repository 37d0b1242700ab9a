#!/usr/bin/env bash
# Removes what the host-0 agent may have left if it was killed: container processes,
# pod network namespaces, the pod bridge, and mount points it created on the host.
# Usage: cleanup.sh STATE_DIR (the agent's --state-dir).
set -uo pipefail
state="$1"
for pidfile in "${state}"/pods/*/containers/*/pid; do
  [ -s "${pidfile}" ] || continue
  kill -KILL -- "-$(cat "${pidfile}")" 2>/dev/null
done
for f in "${state}"/ips/*; do
  [ -s "${f}" ] || continue
  ip netns del "slm-$(head -c 13 "${f}")" 2>/dev/null
  rm -f "${f}"
done
ip link del slm0 2>/dev/null
# `ip netns add` bind-mounts /run/netns onto itself; undo that once no namespace is left.
if mountpoint -q /run/netns && [ -z "$(ls -A /run/netns)" ]; then
  umount /run/netns && rmdir /run/netns
fi
if [ -s "${state}/created-paths" ]; then
  # Deepest first; only empty folders and empty files are removed.
  tac "${state}/created-paths" | while read -r p; do
    if [ -d "${p}" ]; then rmdir "${p}" 2>/dev/null; elif [ -f "${p}" ] && [ ! -s "${p}" ]; then rm -f "${p}"; fi
  done
fi
exit 0
