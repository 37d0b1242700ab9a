# Paths and ports of the test cluster. Sourced by up.sh, down.sh and build.sh; the pytest
# fixture reads the same defaults. Every value can be overridden from the environment.
# shellcheck shell=bash
# shellcheck source=versions.sh
source "$(dirname "${BASH_SOURCE[0]}")/versions.sh"
SLM_CLUSTER_DIR="${SLM_CLUSTER_DIR:-${SLM_CACHE_DIR}/cluster}"
SLM_KUBECONFIG="${SLM_CLUSTER_DIR}/kubeconfig"
SLM_AUDIT_LOG="${SLM_CLUSTER_DIR}/audit.log"
SLM_API_PORT="${SLM_API_PORT:-16443}"
SLM_ETCD_PORT="${SLM_ETCD_PORT:-12379}"
SLM_ETCD_PEER_PORT="${SLM_ETCD_PEER_PORT:-12380}"
SLM_KWOK_PORT="${SLM_KWOK_PORT:-10247}"
SLM_SERVICE_CIDR="${SLM_SERVICE_CIDR:-10.96.0.0/16}"
# The kwok pods' addresses. Nothing serves them: cluster-up routes the range as unreachable on
# this machine, so a connection to a kwok pod (the operator reads a Ready pod's /readyz) fails
# here at once and never leaves the machine.
SLM_KWOK_POD_CIDR="${SLM_KWOK_POD_CIDR:-10.0.0.0/16}"
SLM_NODES_FILE="${SLM_NODES_FILE:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/manifests/nodes.yaml}"
# The components, in start order; down.sh stops them in reverse.
SLM_COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok host-0)
