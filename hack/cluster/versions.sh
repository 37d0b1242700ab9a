# Versions of the test cluster's binaries and where they are cached. Sourced by the
# cluster scripts; the Go versions must match the wrapper modules' go.mod files.
# shellcheck shell=bash
K8S_VERSION=v1.36.3
K8S_BUILD_DATE=2026-01-01T00:00:00Z
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.21.4
# The real node's container runtime and cluster DNS.
CONTAINERD_VERSION=v2.2.9
COREDNS_VERSION=v1.15.0
# hack/cluster/pause, named by its source.
PAUSE_VERSION="$(sha256sum "$(dirname "${BASH_SOURCE[0]}")/pause/main.go" | cut -c1-12)"
PROM_OPERATOR_VERSION=v0.85.0
# Prometheus v3.16.0 is the module version v0.316.0.
PROMETHEUS_MODULE_VERSION=v0.316.0
PROMETHEUS_VERSION=v3.16.0
# The InferencePool CRD (inference.networking.k8s.io/v1) for the operator's pools.
INFERENCE_EXTENSION_VERSION=v1.6.0
# syft writes the images' SBOMs (hack/images/sbom.sh).
SYFT_VERSION=v1.57.2
SLM_CACHE_DIR="${SLM_CACHE_DIR:-${HOME}/.cache/slm-operator}"
SLM_BIN_DIR="${SLM_CACHE_DIR}/bin"
