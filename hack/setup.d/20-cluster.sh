#!/usr/bin/env bash
# The test cluster's binaries (kube-apiserver, kube-controller-manager, kube-scheduler,
# etcd, kwok, Helm) and the ServiceMonitor CRD, built from the Go module proxy into
# ~/.cache/slm-operator/bin. Cached binaries are reused: a warm run takes about a second.
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in go kubectl openssl ip unshare nsenter; do
  command -v "${tool}" >/dev/null || { echo "20-cluster: ${tool} is required" >&2; exit 1; }
done
bash hack/cluster/build.sh
