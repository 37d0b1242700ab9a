#!/usr/bin/env bash
# Installs what the puller's tests use as real servers on loopback: nginx (Debian) for HTTP
# Range transfers, the CNCF distribution registry and the oras CLI (both built from their Go
# modules; versions in hack/pull-versions.sh) for oci:// and ollama:// pulls. Binaries are cached
# one file per name and version under ${SLM_CACHE_DIR:-~/.cache/slm-operator}/bin/<name>-<version>;
# a rerun does nothing.
set -euo pipefail

# shellcheck source=../pull-versions.sh
source "$(dirname "${BASH_SOURCE[0]}")/../pull-versions.sh"
SLM_CACHE_DIR="${SLM_CACHE_DIR:-${HOME}/.cache/slm-operator}"
bin_dir="${SLM_CACHE_DIR}/bin"
mkdir -p "${bin_dir}"

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

if [ ! -x /usr/sbin/nginx ] || ! command -v htpasswd >/dev/null; then
  log "installing nginx and htpasswd (apache2-utils) from Debian"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    nginx apache2-utils
fi

# go_tool NAME VERSION PACKAGE [LDFLAGS]: `go install PACKAGE@VERSION` into the cache.
go_tool() {
  local name="$1" version="$2" pkg="$3" ldflags="${4:-}" tmp start=$SECONDS
  [ -x "${bin_dir}/${name}-${version}" ] && return 0
  tmp="$(mktemp -d "${bin_dir}/.build.XXXXXX")"
  log "building ${name} ${version} from ${pkg}"
  GOBIN="${tmp}" CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
    go install -p "${GO_BUILD_JOBS:-2}" -trimpath -ldflags "-s -w ${ldflags}" "${pkg}@${version}"
  mv -f "${tmp}/$(basename "${pkg}")" "${bin_dir}/${name}-${version}"
  rm -rf "${tmp}"
  log "built ${name} ${version} in $((SECONDS - start))s"
}

go_tool registry "${REGISTRY_VERSION}" github.com/distribution/distribution/v3/cmd/registry
go_tool oras "${ORAS_VERSION}" oras.land/oras/cmd/oras
