#!/usr/bin/env bash
# Writes an SPDX JSON SBOM of each built image to dist/sbom/<image>-<version>.spdx.json with
# syft, built from its Go module into the binary cache once (a few minutes cold). Reads the
# images from the Docker engine. Usage: sbom.sh [operator runtime runtime-cuda ...], or
# sbom.sh --tool to build syft only (setup does, so the image tests find it).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=env.sh
source "${here}/env.sh"
# shellcheck source=../cluster/versions.sh
source "${here}/../cluster/versions.sh"
cd "${here}/../.."

syft="${SLM_BIN_DIR}/syft-${SYFT_VERSION}"
if [ ! -x "${syft}" ]; then
  mkdir -p "${SLM_BIN_DIR}"
  tmp="$(mktemp -d "${SLM_BIN_DIR}/.build.XXXXXX")"
  echo "building syft ${SYFT_VERSION} from its Go module" >&2
  GOBIN="${tmp}" CGO_ENABLED=0 GOFLAGS=-buildvcs=false go install -p "${GO_BUILD_JOBS:-2}" \
    -trimpath -ldflags "-s -w -X main.version=${SYFT_VERSION}" \
    "github.com/anchore/syft/cmd/syft@${SYFT_VERSION}"
  mv -f "${tmp}/syft" "${syft}"
  rm -rf "${tmp}"
fi

[ "${1:-}" = "--tool" ] && exit 0
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(operator runtime)
mkdir -p dist/sbom
for t in "${targets[@]}"; do
  case "${t}" in
    operator) image="${SLM_OPERATOR_IMAGE}" ;;
    runtime) image="${SLM_RUNTIME_IMAGE}" ;;
    runtime-cuda) image="${SLM_RUNTIME_CUDA_IMAGE}" ;;
    *) echo "sbom: unknown image ${t} (operator runtime runtime-cuda)" >&2; exit 2 ;;
  esac
  out="dist/sbom/slm-${t}-${SLM_VERSION}.spdx.json"
  SYFT_CHECK_FOR_APP_UPDATE=false DOCKER_HOST="${DOCKER_HOST:-unix:///var/run/docker.sock}" \
    "${syft}" scan "docker:${image}" --quiet -o "spdx-json=${out}"
  echo "${out}"
done
