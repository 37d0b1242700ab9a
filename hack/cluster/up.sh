#!/usr/bin/env bash
# Starts the test cluster: etcd, kube-apiserver (PodSecurity admission on, audit log),
# kube-controller-manager, kube-scheduler, the volume provisioner, kwok for the fake nodes,
# and node-0, a real node (containerd, kubelet, kube-proxy, CoreDNS; node.sh) running the
# project's images from Docker. A no-op when the cluster already runs. Binaries come from
# build.sh's cache; run `bash hack/cluster/build.sh` (or `make setup`) first.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "${here}/../.." && pwd)"
# shellcheck source=env.sh
source "${here}/env.sh"
# shellcheck source=../images/env.sh
source "${here}/../images/env.sh"

# One cluster operation at a time (concurrent test sessions share the cluster).
mkdir -p "${SLM_CACHE_DIR}"
exec 9>"${SLM_CACHE_DIR}/cluster.lock"
flock 9
state="${SLM_CLUSTER_DIR}"
pki="${state}/pki"
export KUBECONFIG="${SLM_KUBECONFIG}"
python="${SLM_PYTHON:-${root}/.venv/bin/python}"

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

bin() {
  local path="${SLM_BIN_DIR}/$1-$2"
  [ -x "${path}" ] || die "${path} is missing: run 'bash hack/cluster/build.sh' (or 'make setup')"
  printf '%s' "${path}"
}

alive() {
  local pidfile="${state}/pids/$1.pid"
  [ -s "${pidfile}" ] && kill -0 "$(cat "${pidfile}")" 2>/dev/null
}

ready() { kubectl get --raw /readyz >/dev/null 2>&1; }

# start NAME COMMAND...: runs COMMAND in its own session (so down.sh can signal the whole
# group), logging to logs/NAME.log.
start() {
  local name="$1"; shift
  setsid "$@" >>"${state}/logs/${name}.log" 2>&1 </dev/null 9>&- &
  echo "$!" >"${state}/pids/${name}.pid"
}

# wait_for WHAT SECONDS COMMAND...: polls COMMAND until it succeeds.
wait_for() {
  local what="$1" timeout="$2" deadline; shift 2
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    [ "${SECONDS}" -lt "${deadline}" ] || die "${what} not ready after ${timeout}s (logs: ${state}/logs/)"
    sleep 0.2
  done
}

all_alive() {
  local c
  for c in "${SLM_COMPONENTS[@]}"; do alive "${c}" || return 1; done
}

# shellcheck source=node.sh
source "${here}/node.sh"

if [ -d "${state}/pids" ]; then
  if [ -e "${state}/up" ] && all_alive && ready; then
    if node_images_stale; then
      # Running pods keep their images until they restart.
      log "the images changed since ${SLM_NODE_NAME} got them: importing them again"
      node_images || log "warning: ${SLM_NODE_NAME} keeps the images it had"
    fi
    log "cluster already running (KUBECONFIG=${SLM_KUBECONFIG})"
    exit 0
  fi
  log "cluster state is partial: tearing it down first"
  SLM_CLUSTER_LOCKED=1 bash "${here}/down.sh"
fi

apiserver="$(bin kube-apiserver "${K8S_VERSION}")"
kcm="$(bin kube-controller-manager "${K8S_VERSION}")"
scheduler="$(bin kube-scheduler "${K8S_VERSION}")"
etcd="$(bin etcd "${ETCD_VERSION}")"
kwok="$(bin kwok "${KWOK_VERSION}")"
stages="${SLM_BIN_DIR}/kwok-stages-${KWOK_VERSION}"
servicemonitor_crd="${SLM_BIN_DIR}/servicemonitor-crd-${PROM_OPERATOR_VERSION}.yaml"
[ -d "${stages}" ] && [ -s "${servicemonitor_crd}" ] || die "kwok stages or the ServiceMonitor CRD are missing: run 'bash hack/cluster/build.sh crds'"
command -v kubectl >/dev/null || die "kubectl is not on PATH"
[ "$(id -u)" = 0 ] || die "the real node needs root (containerd, the kubelet, iptables)"
[ -x "${python}" ] || die "${python} is missing: run 'make venv'"

"${DOCKER}" info >/dev/null 2>&1 || die "the real node takes its images from Docker: start dockerd (make setup does)"
for tool in runc iptables curl; do
  command -v "${tool}" >/dev/null || die "${tool} is missing: run 'make setup'"
done
[ -x /usr/lib/cni/bridge ] || die "the CNI plugins are missing: run 'make setup'"
# node-0 uses cgroup v1 with the cgroupfs driver, and down.sh removes every kubepods cgroup:
# refuse a machine that is a Kubernetes node already.
[ -d /sys/fs/cgroup/memory ] || die "node-0 needs cgroup v1 (this host has no /sys/fs/cgroup/memory)"
if compgen -G "/sys/fs/cgroup/*/kubepods" >/dev/null; then
  die "kubepods cgroups exist: another kubelet runs here (or a stopped one left them); stop it first"
fi

started=$SECONDS
mkdir -p "${state}"/{pids,logs,pki,etcd}
chmod 700 "${state}"
node_network

# PKI: one CA; a serving cert for the API server; one admin client cert (system:masters)
# that every component uses; an ECDSA key pair for service-account tokens.
gen_cert() {
  local name="$1" subject="$2" ext="$3"
  openssl ecparam -name prime256v1 -genkey -noout -out "${pki}/${name}.key" 2>/dev/null
  openssl req -new -key "${pki}/${name}.key" -subj "${subject}" -out "${pki}/${name}.csr" 2>/dev/null
  openssl x509 -req -in "${pki}/${name}.csr" -CA "${pki}/ca.crt" -CAkey "${pki}/ca.key" \
    -CAcreateserial -days 30 -extfile <(printf '%s\n' "${ext}") -out "${pki}/${name}.crt" 2>/dev/null
  rm -f "${pki}/${name}.csr"
}
openssl ecparam -name prime256v1 -genkey -noout -out "${pki}/ca.key" 2>/dev/null
openssl req -x509 -new -key "${pki}/ca.key" -subj "/CN=slm-test-ca" -days 30 -out "${pki}/ca.crt" 2>/dev/null
gen_cert apiserver "/CN=kube-apiserver" \
  "subjectAltName=IP:127.0.0.1,IP:${SLM_NODE_IP},IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth"
gen_cert admin "/O=system:masters/CN=kubernetes-admin" "extendedKeyUsage=clientAuth"
openssl ecparam -name prime256v1 -genkey -noout -out "${pki}/sa.key" 2>/dev/null
openssl ec -in "${pki}/sa.key" -pubout -out "${pki}/sa.pub" 2>/dev/null
chmod 600 "${pki}"/*.key

kubectl config set-cluster slm-test --server="https://${SLM_NODE_IP}:${SLM_API_PORT}" \
  --certificate-authority="${pki}/ca.crt" --embed-certs >/dev/null
kubectl config set-credentials admin --client-certificate="${pki}/admin.crt" \
  --client-key="${pki}/admin.key" --embed-certs >/dev/null
kubectl config set-context slm-test --cluster=slm-test --user=admin >/dev/null
kubectl config use-context slm-test >/dev/null
chmod 600 "${SLM_KUBECONFIG}"

log "starting etcd ${ETCD_VERSION}"
start etcd "${etcd}" --name=node0 --data-dir="${state}/etcd" --unsafe-no-fsync \
  --listen-client-urls="http://127.0.0.1:${SLM_ETCD_PORT}" \
  --advertise-client-urls="http://127.0.0.1:${SLM_ETCD_PORT}" \
  --listen-peer-urls="http://127.0.0.1:${SLM_ETCD_PEER_PORT}" \
  --initial-advertise-peer-urls="http://127.0.0.1:${SLM_ETCD_PEER_PORT}" \
  --initial-cluster="node0=http://127.0.0.1:${SLM_ETCD_PEER_PORT}" \
  --auto-compaction-retention=1 --log-level=warn

# On the node's address only: the host and pods reach it there (pods also through the
# kubernetes Service), and no other interface of the machine exposes it.
log "starting kube-apiserver ${K8S_VERSION} on ${SLM_NODE_IP}:${SLM_API_PORT}"
start kube-apiserver "${apiserver}" \
  --etcd-servers="http://127.0.0.1:${SLM_ETCD_PORT}" \
  --bind-address="${SLM_NODE_IP}" --advertise-address="${SLM_NODE_IP}" --secure-port="${SLM_API_PORT}" \
  --endpoint-reconciler-type=none \
  --tls-cert-file="${pki}/apiserver.crt" --tls-private-key-file="${pki}/apiserver.key" \
  --client-ca-file="${pki}/ca.crt" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="${pki}/sa.pub" --service-account-signing-key-file="${pki}/sa.key" \
  --service-cluster-ip-range="${SLM_SERVICE_CIDR}" \
  --authorization-mode=Node,RBAC --allow-privileged=true \
  --audit-policy-file="${here}/manifests/audit-policy.yaml" --audit-log-path="${SLM_AUDIT_LOG}" \
  --audit-log-maxsize=0 --audit-log-mode=blocking \
  --kubelet-client-certificate="${pki}/admin.crt" --kubelet-client-key="${pki}/admin.key" \
  --kubelet-preferred-address-types=InternalIP \
  --profiling=false
wait_for kube-apiserver 90 ready

log "starting kube-controller-manager, kube-scheduler"
start kube-controller-manager "${kcm}" --kubeconfig="${SLM_KUBECONFIG}" --secure-port=0 \
  --leader-elect=false --root-ca-file="${pki}/ca.crt" \
  --service-account-private-key-file="${pki}/sa.key" --use-service-account-credentials=false \
  --cluster-signing-cert-file="${pki}/ca.crt" --cluster-signing-key-file="${pki}/ca.key" \
  --kube-api-qps=200 --kube-api-burst=400 \
  --node-monitor-grace-period=40s --terminated-pod-gc-threshold=100
start kube-scheduler "${scheduler}" --kubeconfig="${SLM_KUBECONFIG}" --secure-port=0 \
  --leader-elect=false

log "starting kwok ${KWOK_VERSION} (fake nodes only)"
stage_args=()
for f in "${stages}"/*.yaml; do stage_args+=("--config=${f}"); done
ip route replace unreachable "${SLM_KWOK_POD_CIDR}"
start kwok "${kwok}" --kubeconfig="${SLM_KUBECONFIG}" "${stage_args[@]}" --cidr="${SLM_KWOK_POD_CIDR}" \
  --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
  --node-lease-duration-seconds=40 --server-address="127.0.0.1:${SLM_KWOK_PORT}" \
  --tls-cert-file="${pki}/admin.crt" --tls-private-key-file="${pki}/admin.key"
log "starting the volume provisioner (hostPath folders under ${state}/volumes)"
start provisioner "${python}" "${here}/provisioner.py" --kubeconfig="${SLM_KUBECONFIG}" \
  --root="${state}/volumes"

node_start

# The default ServiceAccount and RBAC bootstrap come from the controller manager and the
# API server; wait for them before handing the cluster over.
wait_for "default service account" 60 kubectl get serviceaccount default -n default -o name
kubectl apply --server-side -f "${here}/manifests/cluster.yaml" -f "${servicemonitor_crd}" >/dev/null
node_services
kubectl create -f "${SLM_NODES_FILE}" >/dev/null
# Node status (capacity, allocatable) is only writable through the status subresource.
kubectl create --dry-run=client -o json -f "${SLM_NODES_FILE}" | python3 -c '
import json, sys
text, decoder, pos = sys.stdin.read(), json.JSONDecoder(), 0
while text[pos:].strip():
    node, end = decoder.raw_decode(text, pos + len(text[pos:]) - len(text[pos:].lstrip()))
    pos = end
    print(node["metadata"]["name"], json.dumps({"status": node.get("status", {})}))
' | while read -r name patch; do
  kubectl patch node "${name}" --subresource=status --type=merge -p "${patch}" >/dev/null
done
wait_for "nodes Ready" 60 bash -c \
  "[ \"\$(kubectl get nodes -o jsonpath='{range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}' | grep -c True)\" -eq \"\$(kubectl get nodes -o name | wc -l)\" ]"
wait_for "${SLM_NODE_NAME}, its CoreDNS and kube-proxy" 120 node_ready
# (kubectl wait --for=condition=Established fails at once while status.conditions is unset)
wait_for "the ServiceMonitor CRD Established" 60 bash -c \
  "[ \"\$(kubectl get crd servicemonitors.monitoring.coreos.com -o jsonpath='{.status.conditions[?(@.type==\"Established\")].status}')\" = True ]"

touch "${state}/up"
log "cluster up in $((SECONDS - started))s: export KUBECONFIG=${SLM_KUBECONFIG}"
kubectl get nodes >&2
