#!/usr/bin/env bash
# The container engine and the project's images: Debian's docker.io (engine, BuildKit,
# containerd, runc) and debootstrap, a dockerd started when none answers (log and pid under
# ~/.cache/slm-operator/docker), then `make images` (the local base, the operator image and
# the CPU runtime image; Docker's layer cache makes a rebuild after a Python-only change take
# seconds), and syft for their SBOMs. Without a working engine this fails: the image tests
# never turn into skips.
set -euo pipefail
cd "$(dirname "$0")/../.."
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)

if [ ! -x /usr/sbin/dockerd ] || ! command -v debootstrap >/dev/null; then
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    docker.io debootstrap >/dev/null
fi

# shellcheck source=../images/env.sh
source hack/images/env.sh
if ! "${DOCKER}" info >/dev/null 2>&1; then
  state="${SLM_CACHE_DIR:-${HOME}/.cache/slm-operator}/docker"
  mkdir -p "${state}"
  echo "starting dockerd (log: ${state}/dockerd.log)" >&2
  "${sudo_cmd[@]}" setsid /usr/sbin/dockerd --pidfile "${state}/dockerd.pid" \
    >"${state}/dockerd.log" 2>&1 < /dev/null &
  for _ in $(seq 60); do
    "${DOCKER}" info >/dev/null 2>&1 && break
    sleep 1
  done
  "${DOCKER}" info >/dev/null 2>&1 || { echo "50-images: dockerd did not answer; see ${state}/dockerd.log" >&2; exit 1; }
fi

bash hack/images/build.sh
bash hack/images/sbom.sh --tool
