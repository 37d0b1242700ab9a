#!/usr/bin/env bash
# Builds the project's images with Docker's layer cache: the local base where needed, then
# the operator and the CPU runtime image (default), or those named: base operator runtime
# runtime-cuda. Tags come from hack/images/env.sh (the chart's default tags); each built
# image's ID is printed. SLM_BASE_IMAGE=<image> builds from that base instead of the local
# one, e.g. SLM_BASE_IMAGE=python:3.11-slim-bookworm where a registry is reachable.
# CUDA_ARCHITECTURES (runtime-cuda only) replaces the Dockerfile's list of GPUs llama.cpp
# compiles for, e.g. 90-real.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "${here}/../.." && pwd)"
# shellcheck source=env.sh
source "${here}/env.sh"
# The local base unless SLM_BASE_IMAGE names another (make setup has sourced and exported
# env.sh before it runs this, so the name alone does not tell).
use_local_base=0
[ "${SLM_BASE_IMAGE}" = "${SLM_LOCAL_BASE_IMAGE}" ] && use_local_base=1
cd "${root}"

"${DOCKER}" info >/dev/null 2>&1 || { echo "images: no Docker engine answers (${DOCKER} info); make setup starts one" >&2; exit 1; }

revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
git diff --quiet HEAD 2>/dev/null || revision="${revision}-dirty"
# The build host's CA bundle reaches pip inside the build as a secret, never as a layer.
ca="${SLM_BUILD_CA:-/etc/ssl/certs/ca-certificates.crt}"
secret=()
[ -s "${ca}" ] && secret=(--secret "id=ca,src=${ca}")

# build FILE TAG [DOCKER BUILD ARGS...]
build() {
  local file="$1" tag="$2" start=$SECONDS
  shift 2
  echo "==> ${tag} (${file})" >&2
  DOCKER_BUILDKIT=1 "${DOCKER}" build --progress=plain "${secret[@]}" "$@" \
    --build-arg "BASE=${SLM_BASE_IMAGE}" --build-arg "VERSION=${SLM_VERSION}" \
    --build-arg "REVISION=${revision}" -f "${file}" -t "${tag}" . >&2
  "${DOCKER}" image prune -f >/dev/null  # the images this tag replaced; the build cache stays
  printf '%s %s (%ss)\n' "${tag}" "$("${DOCKER}" image inspect --format '{{.Id}}' "${tag}")" "$((SECONDS - start))"
}

targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(base operator runtime)
for t in "${targets[@]}"; do
  case "${t}" in
    base) [ "${use_local_base}" = 1 ] && bash "${here}/base.sh" ;;
    operator) build Dockerfile "${SLM_OPERATOR_IMAGE}" ;;
    runtime) build runtime-image/Dockerfile "${SLM_RUNTIME_IMAGE}" ;;
    runtime-cuda) build runtime-image/Dockerfile.cuda "${SLM_RUNTIME_CUDA_IMAGE}" \
      ${CUDA_ARCHITECTURES:+--build-arg "CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES}"} ;;
    *) echo "images: unknown image ${t} (base operator runtime runtime-cuda)" >&2; exit 2 ;;
  esac
done
