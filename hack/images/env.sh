# Names shared by the image scripts, the Makefile and the tests. Sourced, not run.
# shellcheck shell=bash
images_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Debian's docker client when the one on PATH cannot build with BuildKit (no buildx plugin).
if [ -z "${DOCKER:-}" ]; then
  DOCKER=docker
  if ! docker buildx version >/dev/null 2>&1 && [ -x /usr/bin/docker ]; then
    DOCKER=/usr/bin/docker
  fi
fi
SLM_VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' "${images_here}/../../pyproject.toml")"
SLM_REGISTRY="${SLM_REGISTRY:-ghcr.io/slm-operator}"
# The local stand-in base that base.sh builds (its tag carries a digest of base.sh), used
# unless SLM_BASE_IMAGE names another.
SLM_LOCAL_BASE_IMAGE="slm-local/debian-python:bookworm-$(sha256sum "${images_here}/base.sh" | cut -c1-12)"
SLM_BASE_IMAGE="${SLM_BASE_IMAGE:-${SLM_LOCAL_BASE_IMAGE}}"
SLM_OPERATOR_IMAGE="${SLM_REGISTRY}/slm-operator:${SLM_VERSION}"
SLM_RUNTIME_IMAGE="${SLM_REGISTRY}/slm-runtime:${SLM_VERSION}"
SLM_RUNTIME_CUDA_IMAGE="${SLM_REGISTRY}/slm-runtime:${SLM_VERSION}-cuda"
export DOCKER SLM_VERSION SLM_REGISTRY SLM_LOCAL_BASE_IMAGE SLM_BASE_IMAGE SLM_OPERATOR_IMAGE SLM_RUNTIME_IMAGE SLM_RUNTIME_CUDA_IMAGE
