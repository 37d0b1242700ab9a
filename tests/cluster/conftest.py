"""The real test cluster, for every test under tests/cluster (marker `cluster`).

Fixtures:
    cluster     session-scoped `Cluster`: brings the cluster up with hack/cluster/up.sh, or
                reuses a running one; the last test session using a cluster that tests
                started tears it down and checks that no process or namespace is left.
    namespace   a fresh namespace per test, deleted afterwards.
    kubectl     `kubectl(*args, input=..., check=True)` bound to the cluster and `namespace`.
    host_node   the name of the node whose pods really run ("host-0").

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
    from .operator_run import OperatorProcess

ROOT = Path(__file__).resolve().parents[2]
HACK = ROOT / "hack" / "cluster"
CACHE = Path(os.environ.get("SLM_CACHE_DIR", Path.home() / ".cache" / "slm-operator"))
STATE = Path(os.environ.get("SLM_CLUSTER_DIR", CACHE / "cluster"))
HOST_NODE = "host-0"
HOST_GATEWAY = "10.244.0.1"
"""The host's address as seen from host-0 pods (serve test fixtures on it or 0.0.0.0)."""
HOST_NODE_TOLERATION = {"key": "slm.dev/host-node", "operator": "Exists", "effect": "NoSchedule"}
"""host-0 is tainted so that only pods meant for it land there."""

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
    host_node: str = HOST_NODE
    host_gateway: str = HOST_GATEWAY

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

    def host_log(self, namespace: str, pod: str, container: str) -> str:
        """stdout and stderr of a host-0 container, read from the node's files."""
        uid = str(self.get("pod", pod, namespace)["metadata"]["uid"])
        path = self.state_dir / "host-0" / "pods" / uid / "containers" / container / "log"
        return path.read_text(errors="replace")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this folder needs the cluster."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.cluster)


def _leftovers() -> list[str]:
    """Processes, network namespaces and mounts a stopped cluster must not leave."""
    found = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    found += [
        f"netns {line.split()[0]}" for line in netns.stdout.splitlines() if line.startswith("slm-")
    ]
    with open("/proc/self/mounts", encoding="utf-8") as f:
        found += [f"mount {line.split()[1]}" for line in f if str(STATE) in line]
    procs = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=False)
    names = "kube-apiserver|kube-controller-manager|kube-scheduler|etcd|kwok"
    binaries = re.compile(rf"{re.escape(str(CACHE / 'bin'))}/({names})-v|-m hostnode ")
    found += [
        f"process {line.strip()}" for line in procs.stdout.splitlines() if binaries.search(line)
    ]
    return found


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
        result = subprocess.run(
            ["bash", str(HACK / "up.sh")], capture_output=True, text=True, timeout=300, check=False
        )
        if result.returncode != 0:
            pytest.fail(f"the test cluster did not start:\n{result.stderr}", pytrace=False)
        if "cluster already running" not in result.stderr:
            (STATE / "started-by-tests").touch()
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
            timeout=120,
            check=False,
        )
    assert down.returncode == 0, down.stderr
    assert not _leftovers(), f"cluster-down left: {_leftovers()}"


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
def host_node(cluster: Cluster) -> str:
    """The node whose pods really run."""
    return cluster.host_node


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


HOST_NODE_SCHEDULING: dict[str, Any] = {
    "nodeSelector": {"kubernetes.io/hostname": HOST_NODE},
    "tolerations": [HOST_NODE_TOLERATION],
}
"""spec.scheduling that pins a LocalModel to host-0, where its pods really run."""


@pytest.fixture(scope="module")
def operator_env() -> dict[str, str]:
    """Extra environment for the module's operator; a module overrides it to tune settings."""
    return {}


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster,
    crds: list[str],
    operator_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    """One operator for the module's tests, watching every namespace under its own RBAC."""
    cluster.apply(
        {
            "apiVersion": "node.k8s.io/v1",
            "kind": "RuntimeClass",
            "metadata": {"name": "nvidia"},
            "handler": "nvidia",
        }
    )
    from .operator_run import run_operator  # operator_run itself imports this module

    with run_operator(cluster, tmp_path_factory.mktemp("operator"), operator_env) as op:
        yield op


@pytest.fixture(scope="module")
def model_server(cluster: Cluster, gemma_gguf: Path) -> Iterator[str]:
    """A plain HTTP server on the host gateway serving the Gemma GGUF to host-0 pods."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=gemma_gguf.parent)
    server = http.server.ThreadingHTTPServer((cluster.host_gateway, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{cluster.host_gateway}:{server.server_address[1]}/{gemma_gguf.name}"
    server.shutdown()
    server.server_close()
