"""The real test cluster, for every test under tests/cluster (marker `cluster`).

Fixtures:
    cluster     session-scoped `Cluster`: brings the cluster up with hack/cluster/up.sh, or
                reuses a running one; the last test session using a cluster that tests
                started tears it down and checks that nothing it made is left on the host.
    namespace   a fresh namespace per test, deleted afterwards.
    kubectl     `kubectl(*args, input=..., check=True)` bound to the cluster and `namespace`.
    crds        the project's CRDs, installed and Established.
    operator    one operator per module, installed in the cluster by its chart.
    model_server, fixtures_claim    the Gemma GGUF over HTTP, the tiny ONNX model on a claim.

Pods that run for real run on node-0 (kubelet, containerd, the project's images); the fake
(kwok) nodes are tainted, and KWOK_SCHEDULING places a LocalModel there.

A cluster that cannot start fails the tests; set SLM_SKIP_CLUSTER=1 to skip them instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import http.server
import json
import os
import re
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .operator_run import InClusterOperator

ROOT = Path(__file__).resolve().parents[2]
HACK = ROOT / "hack" / "cluster"
CACHE = Path(os.environ.get("SLM_CACHE_DIR", Path.home() / ".cache" / "slm-operator"))
STATE = Path(os.environ.get("SLM_CLUSTER_DIR", CACHE / "cluster"))
REAL_NODE = "node-0"
"""The node whose kubelet and containerd run pods from the project's images."""
NODE_GATEWAY = "10.244.1.1"
"""The host's address as seen from node-0 pods (serve test fixtures on it or 0.0.0.0)."""
KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}
"""The fake nodes are tainted so that only pods meant for them land there."""

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def _versions() -> dict[str, str]:
    """The pinned versions from hack/cluster/versions.sh."""
    text = (HACK / "versions.sh").read_text()
    return dict(re.findall(r"^([A-Z0-9_]+)=(v[^\s]+)$", text, re.MULTILINE))


VERSIONS = _versions()


@dataclass(frozen=True)
class Cluster:
    """A running test cluster."""

    kubeconfig: Path
    state_dir: Path
    audit_log: Path
    """JSON lines, one per write (Metadata level); see docs/test-cluster.md."""

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        namespace: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; raise with its stderr when check fails."""
        cmd = ["kubectl", f"--kubeconfig={self.kubeconfig}"]
        if namespace:
            cmd.append(f"--namespace={namespace}")
        result = subprocess.run(
            [*cmd, *args], input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
        return result

    def wait_established(self, *crds: str, timeout: float = 60) -> None:
        """Wait until each CRD (a name or ``crd/<name>``) is Established.

        ``kubectl wait --for=condition=Established`` fails at once on a CRD whose
        status.conditions the API server has not written yet, so poll the condition; until
        they are written kubectl's jsonpath filter fails too (on a null list), which is polled
        as not yet Established.
        """
        path = 'jsonpath={.status.conditions[?(@.type=="Established")].status}'
        deadline = time.monotonic() + timeout
        for name in (crd.split("/", 1)[-1] for crd in crds):
            while self.kubectl("get", "crd", name, "-o", path, check=False).stdout != "True":
                if time.monotonic() > deadline:
                    raise AssertionError(f"CRD {name} not Established after {timeout:.0f}s")
                time.sleep(0.2)

    @property
    def helm_path(self) -> Path:
        """The cached Helm v3 binary."""
        return CACHE / "bin" / f"helm-{VERSIONS['HELM_VERSION']}"

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run Helm against this cluster."""
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        result = subprocess.run(
            [str(self.helm_path), *args], capture_output=True, text=True, env=env, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
        return result

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        """One object as a dict."""
        out = self.kubectl("get", kind, name, "-o", "json", namespace=namespace).stdout
        obj: dict[str, Any] = json.loads(out)
        return obj

    def apply(self, obj: dict[str, Any], namespace: str | None = None) -> None:
        """Create or update an object (client-side apply from JSON)."""
        self.kubectl("apply", "-f", "-", input=json.dumps(obj), namespace=namespace)


def container_pids(pod: dict[str, Any], container: str) -> list[int]:
    """The host PIDs of a node-0 container's processes, from its cgroup (cgroupfs driver:
    /sys/fs/cgroup/pids/kubepods/<qos>/pod<uid>/<container id>)."""
    (status,) = [c for c in pod["status"]["containerStatuses"] if c["name"] == container]
    container_id = status["containerID"].split("://", 1)[1]
    (procs,) = Path("/sys/fs/cgroup/pids/kubepods").glob(f"**/{container_id}/cgroup.procs")
    return [int(pid) for pid in procs.read_text().split()]


def import_into_node(image: str) -> None:
    """Put a Docker image on node-0 (its containerd's ``k8s.io`` namespace), as up.sh does."""
    from tests.images.conftest import image_names  # the image suite's names and Docker CLI

    ctr = CACHE / "bin" / f"ctr-{VERSIONS['CONTAINERD_VERSION']}"
    socket = STATE / "node" / "containerd" / "containerd.sock"
    save = subprocess.Popen([image_names()["DOCKER"], "save", image], stdout=subprocess.PIPE)
    assert save.stdout is not None
    try:
        load = subprocess.run(
            [str(ctr), "--address", str(socket), "-n", "k8s.io", "images", "import", "-"],
            stdin=save.stdout, capture_output=True, text=True, check=False, timeout=300,
        )  # fmt: skip
    finally:
        save.stdout.close()  # docker save ends, not blocks, when ctr stopped reading
    assert save.wait(timeout=300) == 0, f"docker save {image} failed"
    assert load.returncode == 0, load.stderr


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this folder needs the cluster."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.cluster)


def _leftovers() -> list[str]:
    """Processes and mounts of the cluster's own that a stopped cluster must not leave."""
    found = []
    with open("/proc/self/mounts", encoding="utf-8") as f:
        found += [f"mount {line.split()[1]}" for line in f if str(STATE) in line]
    procs = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=False)
    names = (
        "kube-apiserver|kube-controller-manager|kube-scheduler|etcd|kwok|kubelet|kube-proxy"
        "|containerd|containerd-shim-runc-v2|coredns"
    )
    binaries = re.compile(
        rf"{re.escape(str(CACHE / 'bin'))}/({names})-v"
        r"|/node/bin/containerd-shim|/provisioner\.py "
    )
    found += [
        f"process {line.strip()}" for line in procs.stdout.splitlines() if binaries.search(line)
    ]
    return found


FOOTPRINT_SYSCTLS = (
    "kernel.panic",
    "kernel.panic_on_oops",
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.conf.all.route_localnet",
    "net.bridge.bridge-nf-call-iptables",
    "net.ipv4.ip_forward",
)
FOOTPRINT_PATHS = (
    "/var/lib/kubelet",
    "/var/log/pods",
    "/var/log/containers",
    "/var/lib/cni",
    "/etc/cni",
    "/opt/cni",
    "/var/run/netns",
)
FOOTPRINT_FILE = CACHE / "cluster-footprint.json"
"""The host's footprint before the running cluster started, kept by the session that started it
for the one that stops it."""


def _footprint() -> dict[str, set[str]]:
    """What the cluster changes on the host: network interfaces, iptables and ip6tables
    chains, cgroups, sysctls, mounts, folders, containerd shim sockets, the cluster's
    processes. Compared before the cluster starts and after it stops."""

    def lines(*cmd: str) -> list[str]:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
        return out.splitlines()

    def sysctl(name: str) -> str:
        value = lines("sysctl", "-n", name)
        return f"{name}={value[0] if value else '(unreadable)'}"

    found: dict[str, set[str]] = {
        "interface": {line.split(": ")[1].split("@")[0] for line in lines("ip", "-o", "link")},
        "sysctl": {sysctl(name) for name in FOOTPRINT_SYSCTLS},
        "process": set(_leftovers()),
        "shim socket": {
            str(path) for path in Path("/run/containerd/s").glob("*") if path.is_socket()
        },
        "path": {path for path in FOOTPRINT_PATHS if Path(path).exists()},
        "cgroup": {
            str(group)
            for controller in Path("/sys/fs/cgroup").iterdir()
            for group in (controller / "kubepods", controller / "k8s.io")
            if group.exists()
        },
    }
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle", "raw"):
            found[f"{tool} {table} chain"] = {
                line.split()[1] for line in lines(tool, "-t", table, "-S") if line.startswith("-N ")
            }
    with open("/proc/self/mounts", encoding="utf-8") as f:
        found["mount"] = {
            line.split()[1]
            for line in f
            if not line.split()[1].startswith(("/var/lib/docker", "/run/docker"))
        }
    return found


GUARDED = ("sysctl", "path", "chain")
"""Kinds whose items cluster-down must also not remove (it deletes chains, folders and sets
sysctls); Docker may add and remove interfaces, mounts and sockets of its own meanwhile."""


def _changed(before: dict[str, set[str]]) -> list[str]:
    """What the host has now that it did not have before, and, for the GUARDED kinds, what it
    had that is gone (a changed sysctl shows as both)."""
    after = _footprint()
    return [
        f"{sign} {kind} {item}"
        for kind in sorted(after.keys() | before.keys())
        for sign, items in (
            ("left:", after.get(kind, set()) - before.get(kind, set())),
            (
                "removed:",
                before.get(kind, set()) - after.get(kind, set())
                if kind.split()[0] in GUARDED or kind.endswith(" chain")
                else set(),
            ),
        )
        for item in sorted(items)
    ]


@contextlib.contextmanager
def _users_lock() -> Iterator[Path]:
    """Serialize the bookkeeping of which test sessions use the cluster."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "cluster-users.lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        users = STATE / "users"
        users.mkdir(parents=True, exist_ok=True)
        for entry in users.iterdir():  # forget sessions that died without teardown
            if not Path(f"/proc/{entry.name}").exists():
                entry.unlink()
        yield users


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The running test cluster (started here when none runs).

    Sessions share the cluster. One that a test session started is stopped by the last
    session using it, which then checks that nothing is left behind; one started with
    `make cluster-up` is left running.
    """
    if os.environ.get("SLM_SKIP_CLUSTER") == "1":
        pytest.skip("SLM_SKIP_CLUSTER=1")
    c = Cluster(STATE / "kubeconfig", STATE, STATE / "audit.log")
    with _users_lock() as users:
        if (STATE / "pids").exists() and not (STATE / "up").exists():
            # A cluster that did not finish starting: gone before the host is recorded.
            subprocess.run(["bash", str(HACK / "down.sh")], capture_output=True, timeout=300)
        before = _footprint()
        result = subprocess.run(
            ["bash", str(HACK / "up.sh")], capture_output=True, text=True, timeout=300, check=False
        )
        if result.returncode != 0:
            said = result.stderr
            if "starting etcd" in said:  # this session was starting it: undo what it made
                down = subprocess.run(
                    ["bash", str(HACK / "down.sh")], capture_output=True, text=True, timeout=300
                )
                said += f"\ndown.sh:\n{down.stderr}"
            pytest.fail(f"the test cluster did not start:\n{said}", pytrace=False)
        if "cluster already running" not in result.stderr:
            (STATE / "started-by-tests").touch()
            FOOTPRINT_FILE.write_text(json.dumps({k: sorted(v) for k, v in before.items()}))
        users.mkdir(parents=True, exist_ok=True)  # up.sh may have reset the state
        (users / str(os.getpid())).touch()
    yield c
    with _users_lock() as users:
        (users / str(os.getpid())).unlink(missing_ok=True)
        last = not any(users.iterdir())
        if not last or not (STATE / "started-by-tests").exists():
            return
        if os.environ.get("SLM_KEEP_CLUSTER") == "1":
            return
        down = subprocess.run(
            ["bash", str(HACK / "down.sh")],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert down.returncode == 0, down.stderr
    assert not _leftovers(), f"cluster-down left: {_leftovers()}"
    started = json.loads(FOOTPRINT_FILE.read_text()) if FOOTPRINT_FILE.exists() else None
    FOOTPRINT_FILE.unlink(missing_ok=True)
    assert started is not None, f"no footprint of the cluster's start in {FOOTPRINT_FILE}"
    changed = _changed({k: set(v) for k, v in started.items()})
    assert not changed, f"cluster-down changed the host: {changed}"


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of this test's own, deleted afterwards (without waiting)."""
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{stem}-{secrets.token_hex(3)}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl(
        "wait", "--for=create", "serviceaccount/default",
        f"--namespace={name}", "--timeout=30s",
    )  # fmt: skip
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture
def kubectl(cluster: Cluster, namespace: str) -> Kubectl:
    """kubectl bound to the cluster and this test's namespace."""

    def run(
        *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return cluster.kubectl(
            *args, input=input, check=check, namespace=namespace, timeout=timeout
        )

    return run


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> list[str]:
    """Install the project's CRDs from crds/ (server-side apply); return their names."""
    files = sorted((ROOT / "crds").glob("*.yaml"))
    if not files:
        pytest.skip("crds/ not generated yet")
    args = [arg for f in files for arg in ("-f", str(f))]
    out = cluster.kubectl("apply", "--server-side", *args, "-o", "name").stdout.split()
    cluster.wait_established(*out)
    return [name.split("/", 1)[1] for name in out]


REAL_NODE_SCHEDULING: dict[str, Any] = {"nodeSelector": {"kubernetes.io/hostname": REAL_NODE}}
"""spec.scheduling that pins a LocalModel to node-0, where its pods run from the images."""
KWOK_SCHEDULING: dict[str, Any] = {
    "nodeSelector": {"type": "kwok"},
    "tolerations": [KWOK_TOLERATION],
}
"""spec.scheduling that keeps a LocalModel on the fake nodes (pods Ready, nothing runs)."""


@pytest.fixture(scope="module")
def operator_values() -> list[str]:
    """Extra `helm install` arguments for the module's operator; a module overrides it to tune
    settings (``["--set", "operator.resyncSeconds=60"]``)."""
    return []


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, crds: list[str], operator_values: list[str]
) -> Iterator[InClusterOperator]:
    """One operator for the module's tests, installed by its chart in the cluster (on node-0,
    from the operator image), watching every namespace under the chart's RBAC."""
    cluster.apply(
        {
            "apiVersion": "node.k8s.io/v1",
            "kind": "RuntimeClass",
            "metadata": {"name": "nvidia"},
            "handler": "nvidia",
        }
    )
    from .operator_run import in_cluster_operator  # operator_run itself imports this module

    with in_cluster_operator(cluster, operator_values) as op:
        yield op


TINY_ONNX = ROOT / "tests" / "fixtures" / "tiny-onnx"
"""A tiny ONNX Runtime GenAI model folder; pods read it through ``fixtures_claim``."""


@pytest.fixture
def fixtures_claim(cluster: Cluster, namespace: str) -> Iterator[str]:
    """A claim in ``namespace`` bound to a read-only hostPath volume of tests/fixtures, so a
    LocalModel can name ``pvc://CLAIM/tiny-onnx`` (verified in place, never fetched) and run a
    real ONNX model on node-0; yields the claim's name. The volume goes afterwards."""
    volume, claim = f"fixtures-{namespace}", "fixtures"
    try:
        cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": volume},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadOnlyMany"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": "",
                    "hostPath": {"path": str(TINY_ONNX.parent), "type": "Directory"},
                    "claimRef": {"namespace": namespace, "name": claim},
                },
            }
        )
        cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim},
                "spec": {
                    "accessModes": ["ReadOnlyMany"],
                    "storageClassName": "",
                    "volumeName": volume,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
            namespace,
        )
        yield claim
    finally:
        cluster.kubectl("delete", "pv", volume, "--wait=false", check=False)


@contextlib.contextmanager
def file_server(path: Path) -> Iterator[str]:
    """A plain HTTP server on node-0's gateway serving ``path`` to pods; yields its URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=path.parent)
    server = http.server.ThreadingHTTPServer((NODE_GATEWAY, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{NODE_GATEWAY}:{server.server_address[1]}/{path.name}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def model_server(cluster: Cluster, gemma_gguf: Path) -> Iterator[str]:
    """A plain HTTP server on node-0's gateway serving the Gemma GGUF to pods."""
    with file_server(gemma_gguf) as url:
        yield url


@pytest.fixture
def npu_on_the_real_node(cluster: Cluster) -> Iterator[str]:
    """node-0 advertises one fake intel.com/npu, by a node status patch (how any extended
    resource is advertised; the kubelet keeps resources it does not manage); the patch is
    undone afterwards."""

    def advertise(count: str | None) -> None:
        resources = {"intel.com/npu": count}
        patch = {"status": {"capacity": resources, "allocatable": resources}}
        cluster.kubectl(
            "patch", "node", REAL_NODE, "--subresource=status", "--type=merge",
            "-p", json.dumps(patch),
        )  # fmt: skip

    advertise("1")
    try:
        yield REAL_NODE
    finally:
        advertise(None)


def hold_device(cluster: Cluster, namespace: str, node: str, resource: str) -> str:
    """Take ``node``'s one ``resource`` with a pod that never runs (its image is never pulled:
    the scheduler counts its request all the same); returns the pod's name."""
    name = f"{resource.split('/')[-1]}-hog"
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": node},
                "tolerations": [KWOK_TOLERATION],
                "containers": [
                    {
                        "name": "hog",
                        "image": "hog",
                        "imagePullPolicy": "Never",
                        "resources": {"limits": {resource: "1"}},
                    }
                ],
            },
        },
        namespace,
    )
    from .pods import wait_until  # pods imports this module

    wait_until(
        f"{resource} on {node} to be taken",
        lambda: cluster.get("pod", name, namespace).get("spec", {}).get("nodeName"),
        timeout=30,
    )
    return name
