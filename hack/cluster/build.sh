#!/usr/bin/env bash
# Builds the test cluster's binaries from the Go module proxy into a cache outside the
# checkout, one file per name and version: ${SLM_CACHE_DIR:-~/.cache/slm-operator}/bin/<name>-<version>,
# beside <name>-<version>.gosum, the hash of the wrapper module's go.sum it was built from. A
# binary already in the cache is not rebuilt unless that go.sum has changed. Usage: build.sh [k8s|kubectl|etcd|kwok|helm|containerd|coredns|pause|prometheus|
# prometheus_operator|crds ...]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=env.sh
source "${here}/env.sh"

export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
jobs="${GO_BUILD_JOBS:-2}"
mkdir -p "${SLM_BIN_DIR}"

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# go_sum DIR: the hash of wrapper module DIR's go.sum.
go_sum() { sha256sum "${here}/$1/go.sum" | cut -d' ' -f1; }

# install_built TMP DIR VERSION NAME...: moves each NAME built from wrapper module DIR out of
# TMP into the cache, with the go.sum hash it was built from.
install_built() {
  local tmp="$1" dir="$2" version="$3"; shift 3
  local name sum
  sum="$(go_sum "${dir}")"
  for name in "$@"; do
    mv -f "${tmp}/${name}" "${SLM_BIN_DIR}/${name}-${version}"
    printf '%s\n' "${sum}" > "${SLM_BIN_DIR}/${name}-${version}.gosum"
  done
  rm -rf "${tmp}"
}

# all_cached DIR VERSION NAME...: every NAME is cached and was built from DIR's current go.sum.
all_cached() {
  local dir="$1" version="$2"; shift 2
  local name sum
  sum="$(go_sum "${dir}")"
  for name in "$@"; do
    [ -x "${SLM_BIN_DIR}/${name}-${version}" ] || return 1
    [ "$(cat "${SLM_BIN_DIR}/${name}-${version}.gosum" 2>/dev/null)" = "${sum}" ] || return 1
  done
}

# k8s_build NAME...: commands of k8s.io/kubernetes, version-stamped, built in one go build.
k8s_build() {
  local names=("$@")
  all_cached k8s "${K8S_VERSION}" "${names[@]}" && return 0
  local v="${K8S_VERSION}" major minor stamp="" pkg tmp start=$SECONDS name cmds=()
  major="${v#v}"; major="${major%%.*}"
  minor="${v#v*.}"; minor="${minor%%.*}"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    stamp+=" -X ${pkg}.gitVersion=${v} -X ${pkg}.gitMajor=${major} -X ${pkg}.gitMinor=${minor}"
    stamp+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=${K8S_BUILD_DATE}"
  done
  tmp="$(mktemp -d "${SLM_BIN_DIR}/.build.XXXXXX")"
  for name in "${names[@]}"; do cmds+=("k8s.io/kubernetes/cmd/${name}"); done
  log "building ${names[*]} ${v} (cold: minutes to tens of minutes on 2 cores)"
  (cd "${here}/k8s" && go build -p "${jobs}" -trimpath -tags=selinux,notest \
    -ldflags "-s -w${stamp}" -o "${tmp}/" "${cmds[@]}")
  install_built "${tmp}" k8s "${v}" "${names[@]}"
  log "built ${names[*]} ${v} in $((SECONDS - start))s"
}

# The control plane and the real node's kubelet and kube-proxy, in one go build.
build_k8s() {
  k8s_build kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy
}

# The kubectl that matches the control plane (setup links it into .venv/bin).
build_kubectl() {
  k8s_build kubectl
}

# build_tool DIR NAME VERSION PACKAGE [LDFLAGS]: one binary from a wrapper module.
build_tool() {
  local dir="$1" name="$2" version="$3" pkg="$4" ldflags="${5:-}" tmp start=$SECONDS
  all_cached "${dir}" "${version}" "${name}" && return 0
  tmp="$(mktemp -d "${SLM_BIN_DIR}/.build.XXXXXX")"
  log "building ${name} ${version}"
  (cd "${here}/${dir}" && go build -p "${jobs}" -trimpath -ldflags "-s -w ${ldflags}" \
    -o "${tmp}/${name}" "${pkg}")
  install_built "${tmp}" "${dir}" "${version}" "${name}"
  log "built ${name} ${version} in $((SECONDS - start))s"
}

build_etcd() {
  build_tool etcd etcd "${ETCD_VERSION}" go.etcd.io/etcd/server/v3
}

build_kwok() {
  build_tool kwok kwok "${KWOK_VERSION}" sigs.k8s.io/kwok/cmd/kwok
}

# The real node's container runtime: containerd, its runc shim and ctr (runc itself is
# Debian's). btrfs, devmapper and zfs snapshotters need cgo; overlayfs does not.
build_containerd() {
  local name pkg
  for name in containerd containerd-shim-runc-v2 ctr; do
    pkg="github.com/containerd/containerd/v2/cmd/${name}"
    GOFLAGS="${GOFLAGS} -tags=no_btrfs,no_devmapper,no_zfs" \
      build_tool containerd "${name}" "${CONTAINERD_VERSION}" "${pkg}" \
      "-X github.com/containerd/containerd/v2/version.Version=${CONTAINERD_VERSION}"
  done
}

# The real node's sandbox process; up.sh wraps it into the pause image.
build_pause() {
  build_tool pause pause "${PAUSE_VERSION}" slm.dev/hack/cluster/pause
}

# The cluster DNS of the real node's pods.
build_coredns() {
  build_tool coredns coredns "${COREDNS_VERSION}" github.com/coredns/coredns \
    "-X github.com/coredns/coredns/coremain.GitCommit=${COREDNS_VERSION}"
}

# requires DIR MODULE VERSION: the wrapper module DIR pins MODULE at VERSION (versions.sh names
# the binaries, the go.mod decides what is built: they must agree).
requires() {
  grep -qE "^[[:space:]]*(require[[:space:]]+)?$2 $3([[:space:]]|$)" "${here}/$1/go.mod" || {
    echo "build.sh: hack/cluster/$1/go.mod does not require $2 $3 (versions.sh)" >&2
    exit 1
  }
}

# Prometheus and promtool, with only the Kubernetes service discovery the Prometheus Operator
# configures (and file and HTTP, always in); stamped with the release they are.
build_prometheus() {
  local name
  requires prometheus github.com/prometheus/prometheus "${PROMETHEUS_MODULE_VERSION}"
  for name in prometheus promtool; do
    GOFLAGS="${GOFLAGS} -tags=remove_all_sd,enable_kubernetes_sd" \
      build_tool prometheus "${name}" "${PROMETHEUS_VERSION}" \
      "github.com/prometheus/prometheus/cmd/${name}" \
      "-X github.com/prometheus/common/version.Version=${PROMETHEUS_VERSION#v}"
  done
}

# The Prometheus Operator and the config reloader it runs beside each Prometheus.
build_prometheus_operator() {
  local name
  requires prometheus-operator github.com/prometheus-operator/prometheus-operator \
    "${PROM_OPERATOR_VERSION}"
  for name in operator prometheus-config-reloader; do
    build_tool prometheus-operator "prometheus-${name#prometheus-}" "${PROM_OPERATOR_VERSION}" \
      "github.com/prometheus-operator/prometheus-operator/cmd/${name}" \
      "-X github.com/prometheus/common/version.Version=${PROM_OPERATOR_VERSION#v}"
  done
}

# Stamped so `helm template` without --kube-version assumes the cluster's Kubernetes.
build_helm() {
  local major minor
  major="${K8S_VERSION#v}"; major="${major%%.*}"
  minor="$(echo "${K8S_VERSION}" | cut -d. -f2)"
  build_tool helm helm "${HELM_VERSION}" helm.sh/helm/v3/cmd/helm \
    "-X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=${major} -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=${minor}"
}

# The ServiceMonitor and InferencePool CRDs and kwok's stage definitions, copied out of the
# module cache.
build_crds() {
  local dest="${SLM_BIN_DIR}/servicemonitor-crd-${PROM_OPERATOR_VERSION}.yaml" dir
  if [ ! -s "${dest}" ]; then
    # Outside any module: `go mod download` fetches and checks it against the checksum database.
    dir="$(cd / && GOFLAGS=-mod=mod go mod download -json "github.com/prometheus-operator/prometheus-operator@${PROM_OPERATOR_VERSION}" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
    cp "${dir}/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" "${dest}.tmp"
    mv -f "${dest}.tmp" "${dest}"
  fi
  # Every CRD of the Prometheus Operator and the RBAC of its examples, for the tests that run
  # it (tests/cluster/monitoring.py).
  dest="${SLM_BIN_DIR}/prometheus-operator-examples-${PROM_OPERATOR_VERSION}"
  if [ ! -d "${dest}" ]; then
    dir="$(cd "${here}/prometheus-operator" && go mod download -json github.com/prometheus-operator/prometheus-operator | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
    [ -d "${dir}" ] || { echo "build.sh: no module folder for the Prometheus Operator" >&2; exit 1; }
    rm -rf "${dest}.tmp" && mkdir -p "${dest}.tmp"
    cp -r "${dir}/example/prometheus-operator-crd" "${dest}.tmp/crds"
    cp -r "${dir}/example/rbac" "${dest}.tmp/rbac"
    chmod -R u+w "${dest}.tmp"
    mv "${dest}.tmp" "${dest}"
  fi
  # The Gateway API Inference Extension's InferencePool CRD, for the tests of the pools the
  # operator renders (it ships no endpoint picker, and neither do the tests).
  dest="${SLM_BIN_DIR}/inferencepool-crd-${INFERENCE_EXTENSION_VERSION}.yaml"
  if [ ! -s "${dest}" ]; then
    dir="$(cd / && GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/gateway-api-inference-extension@${INFERENCE_EXTENSION_VERSION}" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
    [ -d "${dir}" ] || { echo "build.sh: no module folder for the Gateway API Inference Extension" >&2; exit 1; }
    cp "${dir}/config/crd/bases/inference.networking.k8s.io_inferencepools.yaml" "${dest}.tmp"
    chmod u+w "${dest}.tmp"
    mv -f "${dest}.tmp" "${dest}"
  fi
  dest="${SLM_BIN_DIR}/kwok-stages-${KWOK_VERSION}"
  if [ ! -d "${dest}" ]; then
    # `go mod download` (not `go list -m`, which answers an empty Dir until something has
    # downloaded the module) fetches the version the wrapper module pins and names its folder.
    dir="$(cd "${here}/kwok" && go mod download -json sigs.k8s.io/kwok | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
    [ -d "${dir}" ] || { echo "build.sh: no module folder for sigs.k8s.io/kwok" >&2; exit 1; }
    rm -rf "${dest}.tmp" && mkdir -p "${dest}.tmp"
    cp "${dir}/kustomize/stage/node/fast/node-initialize.yaml" \
      "${dir}/kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml" \
      "${dir}"/kustomize/stage/pod/fast/pod-{ready,complete,delete}.yaml "${dest}.tmp/"
    chmod -R u+w "${dest}.tmp"
    mv "${dest}.tmp" "${dest}"
  fi
}

targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(crds etcd kwok helm k8s kubectl containerd coredns pause prometheus prometheus_operator)
for t in "${targets[@]}"; do
  "build_${t}"
done
