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
# The real node: its name, the bridge its pods live on, the node's address on that bridge
# (the host as its pods see it), and the pod and cluster DNS addresses.
SLM_NODE_NAME="${SLM_NODE_NAME:-node-0}"
SLM_NODE_BRIDGE="${SLM_NODE_BRIDGE:-slm-node0}"
SLM_NODE_IP="${SLM_NODE_IP:-10.244.1.1}"
SLM_NODE_POD_CIDR="${SLM_NODE_POD_CIDR:-10.244.1.0/24}"
SLM_POD_CIDR="${SLM_POD_CIDR:-10.244.0.0/16}"
SLM_CLUSTER_DNS="${SLM_CLUSTER_DNS:-10.96.0.10}"
SLM_KUBELET_PORT="${SLM_KUBELET_PORT:-10250}"
SLM_KUBELET_HEALTHZ_PORT="${SLM_KUBELET_HEALTHZ_PORT:-10248}"
SLM_KUBE_PROXY_HEALTHZ_PORT="${SLM_KUBE_PROXY_HEALTHZ_PORT:-10256}"
SLM_KUBE_PROXY_METRICS_PORT="${SLM_KUBE_PROXY_METRICS_PORT:-10249}"
SLM_COREDNS_READY_PORT="${SLM_COREDNS_READY_PORT:-18181}"
SLM_PAUSE_IMAGE="slm-local/pause:${PAUSE_VERSION}"
SLM_NODES_FILE="${SLM_NODES_FILE:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/manifests/nodes.yaml}"
# The components, in start order; down.sh stops them in reverse.
SLM_COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler provisioner kwok
  containerd kubelet kube-proxy coredns)
