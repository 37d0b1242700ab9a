#!/usr/bin/env bash
# The test cluster's binaries (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, etcd, kwok, Helm; node-0's kubelet, kube-proxy, containerd and CoreDNS, and its
# pause binary; Prometheus, promtool and the Prometheus Operator for the monitoring tests) and the
# ServiceMonitor CRD, built from the Go module proxy into
# ~/.cache/slm-operator/bin, and the Debian packages node-0 runs with (runc, the CNI plugins,
# iptables). Cached binaries are reused: a warm run takes about a second.
# The kubectl built with the control plane is linked into .venv/bin, which the Makefile puts
# first on PATH, so every make target talks to the v1.36 server with a v1.36 client.
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in go openssl ip; do
  command -v "${tool}" >/dev/null || { echo "20-cluster: ${tool} is required" >&2; exit 1; }
done
if ! command -v runc >/dev/null || ! command -v iptables >/dev/null || ! command -v curl >/dev/null \
  || [ ! -x /usr/lib/cni/bridge ]; then
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    runc containernetworking-plugins iptables curl >/dev/null
fi
bash hack/cluster/build.sh
# shellcheck source=../cluster/versions.sh
source hack/cluster/versions.sh
ln -sfn "${SLM_BIN_DIR}/kubectl-${K8S_VERSION}" "${VENV:-.venv}/bin/kubectl"
