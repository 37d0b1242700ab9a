# The real node: containerd (with Debian's runc and CNI plugins), a kubelet and kube-proxy
# built with the control plane, and CoreDNS answering the cluster's names. Sourced by up.sh
# (node_network, node_start) and down.sh (node_stop); nothing runs at source time.
#
# What the node changes on the host, and how node_stop undoes it:
# - the bridge ${SLM_NODE_BRIDGE} (the node's and its pods' network): deleted;
# - sysctls the kubelet and kube-proxy set (kernel.panic, vm.overcommit_memory, ...): the
#   values before the start are kept in node/sysctls and written back;
# - iptables and ip6tables chains named KUBE-*, CNI-* or SLM-NODE-* (the kubelet's
#   KUBE-FIREWALL and canaries, kube-proxy's, CNI portmap's, ours) that were not there before:
#   the rules that jump to them, then the chains, are deleted;
# - containers: containerd deletes its tasks (so their shims exit and remove their sockets in
#   /run/containerd/s) before it stops; what is left in the kubepods cgroups (under each v1
#   controller) is killed and the groups removed;
# - folders the kubelet and containerd create outside their own (/var/lib/kubelet,
#   /var/log/containers, /var/lib/cni, ...): removed when they were not there before;
# - mounts (container root filesystems, pod volumes, network namespaces) under the node's
#   state: unmounted.
# shellcheck shell=bash

node_dir="${state}/node"
node_sysctls=(kernel.panic kernel.panic_on_oops vm.overcommit_memory vm.panic_on_oom
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.conf.all.route_localnet
  net.bridge.bridge-nf-call-iptables net.ipv4.ip_forward)
# Folders the kubelet, containerd and the CNI plugins create whatever their configured roots.
node_host_dirs=(/var/lib/kubelet /var/log/pods /var/log/containers /var/lib/cni /run/containerd
  /etc/cni /opt/cni /var/run/netns)
node_tables=(filter nat mangle raw)
node_iptables=(iptables ip6tables)
shim_sockets=/run/containerd/s

# node_chains TOOL TABLE: the table's chains that the node may make, one per line, sorted.
node_chains() {
  { "$1" -t "$2" -S 2>/dev/null || true; } |
    sed -n 's/^-N \(\(KUBE-\|CNI-\|SLM-NODE-\).*\)$/\1/p' | LC_ALL=C sort
}

# node_forward_off: the forward rule and chain of ours, and the bridge, whatever is recorded.
node_forward_off() {
  while iptables -D FORWARD -j SLM-NODE-FORWARD 2>/dev/null; do :; done
  iptables -F SLM-NODE-FORWARD 2>/dev/null || true
  iptables -X SLM-NODE-FORWARD 2>/dev/null || true
  ip link del "${SLM_NODE_BRIDGE}" 2>/dev/null || true
}

# node_network: what must exist before the API server starts (it advertises the node's
# gateway address): the record of the host's state, then the bridge and the forward rule.
node_network() {
  local name table tool value
  mkdir -p "${node_dir}"/{containerd,cni/net.d,cni/ipam,kubelet,logs,pki,bin}
  node_forward_off  # a leftover of a cluster that was not stopped
  for name in "${node_sysctls[@]}"; do
    value="$(sysctl -n "${name}" 2>/dev/null)" || continue
    printf '%s=%s\n' "${name}" "${value}"
  done >"${node_dir}/sysctls"
  for name in "${node_host_dirs[@]}"; do
    [ -e "${name}" ] && printf '%s\n' "${name}"
  done >"${node_dir}/host-dirs"
  ls -1 "${shim_sockets}" 2>/dev/null | LC_ALL=C sort >"${node_dir}/shim-sockets" || true
  for tool in "${node_iptables[@]}"; do
    for table in "${node_tables[@]}"; do
      node_chains "${tool}" "${table}" >"${node_dir}/chains-${tool}-${table}"
    done
  done
  ip link add "${SLM_NODE_BRIDGE}" type bridge
  ip addr add "${SLM_NODE_IP}/${SLM_NODE_POD_CIDR#*/}" dev "${SLM_NODE_BRIDGE}"
  ip link set "${SLM_NODE_BRIDGE}" up
  # Pods reach each other and Services across the bridge, and get answers; Docker's FORWARD
  # policy drops what no rule accepts. Nothing else is forwarded to pods. Bridged traffic
  # must pass iptables for Service NAT.
  iptables -N SLM-NODE-FORWARD
  iptables -A SLM-NODE-FORWARD -i "${SLM_NODE_BRIDGE}" -j ACCEPT
  iptables -A SLM-NODE-FORWARD -o "${SLM_NODE_BRIDGE}" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
  iptables -I FORWARD 1 -j SLM-NODE-FORWARD
  sysctl -q -w net.bridge.bridge-nf-call-iptables=1 net.ipv4.ip_forward=1
}

# node_kubeconfig NAME CERT: a kubeconfig for NAME's client certificate.
node_kubeconfig() {
  local name="$1" cert="$2" file="${node_dir}/$1.kubeconfig"
  KUBECONFIG="${file}" kubectl config set-cluster slm-test \
    --server="https://${SLM_NODE_IP}:${SLM_API_PORT}" --certificate-authority="${pki}/ca.crt" --embed-certs >/dev/null
  KUBECONFIG="${file}" kubectl config set-credentials "${name}" --client-certificate="${pki}/${cert}.crt" \
    --client-key="${pki}/${cert}.key" --embed-certs >/dev/null
  KUBECONFIG="${file}" kubectl config set-context default --cluster=slm-test --user="${name}" >/dev/null
  KUBECONFIG="${file}" kubectl config use-context default >/dev/null
  chmod 600 "${file}"
}

# node_image_ids: "TAG ID" of the pause, operator and runtime images as Docker has them.
node_image_ids() {
  local image id
  for image in "${SLM_PAUSE_IMAGE}" "${SLM_OPERATOR_IMAGE}" "${SLM_RUNTIME_IMAGE}"; do
    id="$("${DOCKER}" image inspect -f '{{.Id}}' "${image}" 2>/dev/null)" || id=missing
    printf '%s %s\n' "${image}" "${id}"
  done
}

# node_images: the pause image (the sandbox, made from the cached binary), then the project's
# images, from Docker into the node's containerd; what was imported is kept in node/images.
node_images() {
  local pause_bin
  pause_bin="$(bin pause "${PAUSE_VERSION}")"
  ctr="$(bin ctr "${CONTAINERD_VERSION}")"
  tar -C "$(dirname "${pause_bin}")" --transform="s|.*|pause|" -c "$(basename "${pause_bin}")" |
    "${DOCKER}" import --change 'ENTRYPOINT ["/pause"]' --change 'USER 65535:65535' - \
      "${SLM_PAUSE_IMAGE}" >/dev/null
  if node_image_ids | grep -q ' missing$'; then
    log "error: the project's images are not built: run 'make images' (make setup does); missing: $(node_image_ids | sed -n 's/ missing$//p' | tr '\n' ' ')"
    return 1
  fi
  "${DOCKER}" save "${SLM_PAUSE_IMAGE}" "${SLM_OPERATOR_IMAGE}" "${SLM_RUNTIME_IMAGE}" |
    node_ctr images import --no-unpack - >/dev/null || return 1
  node_image_ids >"${node_dir}/images"
}

# node_images_stale: whether Docker holds other images than node-0 got (make images since).
node_images_stale() {
  [ "$(node_image_ids)" != "$(cat "${node_dir}/images" 2>/dev/null)" ]
}

node_ctr() { "${ctr}" --address "${node_dir}/containerd/containerd.sock" -n k8s.io "$@"; }

node_start() {
  local containerd kubelet kube_proxy coredns
  containerd="$(bin containerd "${CONTAINERD_VERSION}")"
  kubelet="$(bin kubelet "${K8S_VERSION}")"
  kube_proxy="$(bin kube-proxy "${K8S_VERSION}")"
  coredns="$(bin coredns "${COREDNS_VERSION}")"
  ctr="$(bin ctr "${CONTAINERD_VERSION}")"
  ln -sfn "$(bin containerd-shim-runc-v2 "${CONTAINERD_VERSION}")" "${node_dir}/bin/containerd-shim-runc-v2"

  gen_cert kubelet "/O=system:nodes/CN=system:node:${SLM_NODE_NAME}" "extendedKeyUsage=clientAuth"
  gen_cert kubelet-serving "/CN=${SLM_NODE_NAME}" \
    "subjectAltName=IP:${SLM_NODE_IP},DNS:${SLM_NODE_NAME}
extendedKeyUsage=serverAuth"
  gen_cert kube-proxy "/CN=system:kube-proxy" "extendedKeyUsage=clientAuth"
  gen_cert coredns "/CN=system:coredns" "extendedKeyUsage=clientAuth"
  chmod 600 "${pki}"/*.key
  node_kubeconfig kubelet kubelet
  node_kubeconfig kube-proxy kube-proxy
  node_kubeconfig coredns coredns

  local c="${node_dir}/containerd" cri="plugins.'io.containerd.cri.v1.runtime'"
  cat >"${c}/config.toml" <<EOF
version = 3
root = '${c}/root'
state = '${c}/state'
disabled_plugins = ['io.containerd.nri.v1.nri', 'io.containerd.tracing.processor.v1.otlp',
  'io.containerd.internal.v1.tracing']
[grpc]
  address = '${c}/containerd.sock'
[ttrpc]
  address = '${c}/containerd.sock.ttrpc'
[plugins.'io.containerd.internal.v1.opt']
  path = '${c}/opt'
[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = '${SLM_PAUSE_IMAGE}'
[${cri}]
  # Root here lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj below its own.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_cdi = false
  [${cri}.containerd.runtimes.runc]
    runtime_type = 'io.containerd.runc.v2'
    [${cri}.containerd.runtimes.runc.options]
      BinaryName = '$(command -v runc)'
      Root = '${c}/runc'
      SystemdCgroup = false
  [${cri}.cni]
    bin_dirs = ['/usr/lib/cni']
    conf_dir = '${node_dir}/cni/net.d'
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = '127.0.0.1'
EOF
  cat >"${node_dir}/cni/net.d/10-slm.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "slm-node", "plugins": [
  {"type": "bridge", "bridge": "${SLM_NODE_BRIDGE}", "isGateway": true, "isDefaultGateway": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "${node_dir}/cni/ipam",
            "ranges": [[{"subnet": "${SLM_NODE_POD_CIDR}", "gateway": "${SLM_NODE_IP}"}]]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}
]}
EOF
  log "starting containerd ${CONTAINERD_VERSION} for ${SLM_NODE_NAME}"
  start containerd env PATH="${node_dir}/bin:${PATH}" "${containerd}" --config "${c}/config.toml"
  wait_for containerd 60 node_ctr version
  local t0=$SECONDS
  node_images || die "${SLM_NODE_NAME} has no images"
  log "images imported into ${SLM_NODE_NAME}'s containerd in $((SECONDS - t0))s"

  cat >"${node_dir}/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: ${SLM_NODE_IP}
port: ${SLM_KUBELET_PORT}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: ${SLM_KUBELET_HEALTHZ_PORT}
containerRuntimeEndpoint: unix://${c}/containerd.sock
podLogsDir: ${node_dir}/logs
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: ${pki}/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: ${pki}/kubelet-serving.crt
tlsPrivateKeyFile: ${pki}/kubelet-serving.key
clusterDNS: [${SLM_CLUSTER_DNS}]
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
podCIDR: ${SLM_NODE_POD_CIDR}
serializeImagePulls: false
# No registry can give an image back: never collect them, never evict for disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
EOF
  log "starting kubelet ${K8S_VERSION} as ${SLM_NODE_NAME} on ${SLM_NODE_IP}"
  start kubelet "${kubelet}" --config="${node_dir}/kubelet.yaml" \
    --kubeconfig="${node_dir}/kubelet.kubeconfig" --root-dir="${node_dir}/kubelet" \
    --hostname-override="${SLM_NODE_NAME}" --node-ip="${SLM_NODE_IP}"

  cat >"${node_dir}/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: ${node_dir}/kube-proxy.kubeconfig}
hostnameOverride: ${SLM_NODE_NAME}
mode: iptables
clusterCIDR: ${SLM_POD_CIDR}
healthzBindAddress: 127.0.0.1:${SLM_KUBE_PROXY_HEALTHZ_PORT}
metricsBindAddress: 127.0.0.1:${SLM_KUBE_PROXY_METRICS_PORT}
nodePortAddresses: [${SLM_NODE_IP}/32]
iptables: {localhostNodePorts: false}
# Leave the host's conntrack sysctls alone.
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  log "starting kube-proxy ${K8S_VERSION} (iptables)"
  start kube-proxy "${kube_proxy}" --config="${node_dir}/kube-proxy.yaml"

  # CoreDNS reads what it answers from and nothing else (the rules of its own manifests).
  kubectl apply --server-side -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
  - apiGroups: [""]
    resources: [endpoints, services, pods, namespaces]
    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects:
  - {apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:coredns"}
EOF
  cat >"${node_dir}/Corefile" <<EOF
.:53 {
  bind ${SLM_NODE_IP}
  errors
  ready 127.0.0.1:${SLM_COREDNS_READY_PORT}
  kubernetes cluster.local in-addr.arpa ip6.arpa {
    kubeconfig ${node_dir}/coredns.kubeconfig default
    pods insecure
    fallthrough in-addr.arpa ip6.arpa
  }
  cache 30
}
EOF
  log "starting CoreDNS ${COREDNS_VERSION} on ${SLM_NODE_IP}:53 (Service ${SLM_CLUSTER_DNS})"
  start coredns "${coredns}" -conf "${node_dir}/Corefile"
}

# node_services: the Services of what runs on the host: kube-system/kube-dns (CoreDNS) and
# default/kubernetes (the API server), with their endpoints on the node's gateway address.
node_services() {
  kubectl apply --server-side -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  clusterIP: ${SLM_CLUSTER_DNS}
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-host
  namespace: kube-system
  labels: {kubernetes.io/service-name: kube-dns, endpointslice.kubernetes.io/managed-by: slm-test-cluster}
addressType: IPv4
endpoints:
- addresses: [${SLM_NODE_IP}]
  conditions: {ready: true}
ports:
- {name: dns, port: 53, protocol: UDP}
- {name: dns-tcp, port: 53, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes
  namespace: default
  labels: {kubernetes.io/service-name: kubernetes, endpointslice.kubernetes.io/managed-by: slm-test-cluster}
addressType: IPv4
endpoints:
- addresses: [${SLM_NODE_IP}]
  conditions: {ready: true}
ports:
- {name: https, port: ${SLM_API_PORT}, protocol: TCP}
EOF
}

# Ready, and without the not-ready and unreachable taints, which the node lifecycle controller
# removes only after it has seen the node Ready: until then no pod without a toleration is
# scheduled there.
node_ready() {
  local taints
  taints="$(kubectl get node "${SLM_NODE_NAME}" -o jsonpath='{.spec.taints[*].key}')" || return 1
  [ "$(kubectl get node "${SLM_NODE_NAME}" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ] \
    && [[ ! "${taints}" =~ node\.kubernetes\.io/(not-ready|unreachable) ]] \
    && curl -sf "http://127.0.0.1:${SLM_COREDNS_READY_PORT}/ready" >/dev/null \
    && curl -sf "http://127.0.0.1:${SLM_KUBE_PROXY_HEALTHZ_PORT}/healthz" >/dev/null
}

# node_remove_containers: containerd kills and deletes every task and container of the node,
# so that each shim exits and removes its socket; then whatever is left of the node's pods
# (processes in the kubepods cgroups, shims of this containerd) is killed and the cgroups
# removed. The kubelet is stopped first, so that nothing starts them again.
node_remove_containers() {
  local id group pids i
  ctr="${SLM_BIN_DIR}/ctr-${CONTAINERD_VERSION}"
  if [ -S "${node_dir}/containerd/containerd.sock" ] && node_ctr version >/dev/null 2>&1; then
    for id in $(node_ctr tasks ls -q 2>/dev/null); do
      timeout 20 "${ctr}" --address "${node_dir}/containerd/containerd.sock" -n k8s.io \
        tasks delete --force "${id}" >/dev/null 2>&1 || true
    done
    for id in $(node_ctr containers ls -q 2>/dev/null); do
      timeout 20 "${ctr}" --address "${node_dir}/containerd/containerd.sock" -n k8s.io \
        containers delete "${id}" >/dev/null 2>&1 || true
    done
  fi
  for i in 1 2 3; do
    pids="$(cat /sys/fs/cgroup/*/kubepods/tasks /sys/fs/cgroup/*/kubepods/*/tasks \
      /sys/fs/cgroup/*/kubepods/*/*/tasks /sys/fs/cgroup/*/kubepods/*/*/*/tasks 2>/dev/null | sort -u || true)"
    pids+=" $(pgrep -f -- "-address ${node_dir}/containerd/containerd.sock" || true)"
    [ -n "${pids// /}" ] || break
    # shellcheck disable=SC2086
    kill -KILL ${pids} 2>/dev/null || true
    sleep 0.5
  done
  for group in $(find /sys/fs/cgroup/*/kubepods -depth -type d 2>/dev/null); do
    rmdir "${group}" 2>/dev/null || true
  done
}

# node_remove_sockets: shim sockets made while the node ran that nothing listens on any more.
node_remove_sockets() {
  local name made listening
  [ -d "${shim_sockets}" ] || return 0
  # The folder first, then what listens: a socket made in between is not taken for stale.
  made="$(ls -1 "${shim_sockets}" | LC_ALL=C sort | LC_ALL=C comm -13 "${node_dir}/shim-sockets" -)"
  listening="$(ss -xlH 2>/dev/null | awk '{print $5}')"
  for name in ${made}; do
    grep -qxF "${shim_sockets}/${name}" <<<"${listening}" || rm -f "${shim_sockets:?}/${name}"
  done
}

node_unmount() {
  local mnt
  # Deepest first; lazy, as a pod's volumes can still be busy for a moment.
  for mnt in $(awk -v d="${node_dir}" 'index($2, d "/") == 1 {print $2}' /proc/self/mounts | sort -r); do
    umount -l "${mnt}" 2>/dev/null || true
  done
}

# node_remove_chains TOOL TABLE: the chains the node made in TABLE (see node_chains) that were
# not there at its start: first the rules that jump to them (as -S quotes them: comments hold
# spaces), then the chains.
node_remove_chains() {
  local tool="$1" table="$2" chain rule made
  [ -e "${node_dir}/chains-${tool}-${table}" ] || return 0
  made="$(node_chains "${tool}" "${table}" | LC_ALL=C comm -13 "${node_dir}/chains-${tool}-${table}" -)"
  for chain in ${made}; do
    { "${tool}" -t "${table}" -S | grep -E -- "-j ${chain}( |$)" || true; } | sed 's/^-A /-D /' |
      while read -r rule; do
        eval "${tool} -t ${table} ${rule}" 2>/dev/null || true
      done
  done
  for chain in ${made}; do
    "${tool}" -t "${table}" -F "${chain}" 2>/dev/null || true
  done
  for chain in ${made}; do
    "${tool}" -t "${table}" -X "${chain}" 2>/dev/null || true
  done
}

node_stop() {
  [ -d "${node_dir}" ] || return 0
  local table tool name value real mnt
  stop kube-proxy
  stop coredns
  stop kubelet
  node_remove_containers
  stop containerd
  node_remove_sockets
  node_unmount
  node_forward_off
  for tool in "${node_iptables[@]}"; do
    for table in "${node_tables[@]}"; do
      node_remove_chains "${tool}" "${table}"
    done
  done
  if [ -s "${node_dir}/sysctls" ]; then
    while IFS='=' read -r name value; do
      [ -n "${value}" ] || continue
      sysctl -q -w "${name}=${value}" || true
    done <"${node_dir}/sysctls"
  fi
  if [ -e "${node_dir}/host-dirs" ]; then
    for name in "${node_host_dirs[@]}"; do
      grep -qxF "${name}" "${node_dir}/host-dirs" && continue
      if [ -e "${name}" ]; then
        # Unmount anything mounted there before removing it (/proc/self/mounts names the
        # resolved path: /run/netns for /var/run/netns).
        real="$(readlink -f "${name}")"
        for mnt in $(awk -v d="${real}" '$2 == d || index($2, d "/") == 1 {print $2}' /proc/self/mounts | sort -r); do
          umount -l "${mnt}" 2>/dev/null || true
        done
        rm -rf "${name}" || log "could not remove ${name}"
      fi
    done
  fi
}
