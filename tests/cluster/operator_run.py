"""Run the real operator: installed in the cluster by its chart (the `operator` fixture), or as a
subprocess under its own ServiceAccount and RBAC (the leader-election test's two replicas)."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from .conftest import ROOT, Cluster

# Apart from the names an install uses (slm-system/slm-operator), so `make demo` or a real
# `helm install` on the same cluster never meets objects it does not own.
SYSTEM_NAMESPACE = "slm-operator-tests"
SERVICE_ACCOUNT = "slm-operator"
CLUSTER_ROLE = "slm-operator-tests"
RBAC_RULES = ROOT / "charts" / "slm-operator" / "files" / "rbac-rules.yaml"
LEADER_ELECTION_RULES = RBAC_RULES.with_name("leader-election-rules.yaml")


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(check: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def install_rbac(cluster: Cluster, accounts: tuple[str, ...] = (SERVICE_ACCOUNT,)) -> None:
    """ServiceAccounts, the ClusterRole from the single RBAC source, and the Lease Role."""
    subjects = [
        {"kind": "ServiceAccount", "name": account, "namespace": SYSTEM_NAMESPACE}
        for account in accounts
    ]
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NAMESPACE}},
        *(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": account, "namespace": SYSTEM_NAMESPACE},
            }
            for account in accounts
        ),
    ]
    for kind, rules, namespace in (
        ("Cluster", RBAC_RULES, None),
        ("", LEADER_ELECTION_RULES, SYSTEM_NAMESPACE),
    ):
        meta: dict[str, Any] = {"name": CLUSTER_ROLE}
        if namespace:
            meta["namespace"] = namespace
        objects += [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": f"{kind}Role",
                "metadata": meta,
                "rules": yaml.safe_load(rules.read_text()),
            },
            # One binding per account, so installing one account never unbinds another.
            *(
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": f"{kind}RoleBinding",
                    "metadata": {**meta, "name": f"{CLUSTER_ROLE}-{subject['name']}"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": f"{kind}Role",
                        "name": CLUSTER_ROLE,
                    },
                    "subjects": [subject],
                }
                for subject in subjects
            ),
        ]
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"kind": "List", "apiVersion": "v1", "items": objects})
    )


def service_account_kubeconfig(
    cluster: Cluster, path: Path, account: str = SERVICE_ACCOUNT
) -> Path:
    """A kubeconfig that authenticates as one of the operator's ServiceAccounts."""
    token = cluster.kubectl(
        "create", "token", account, "-n", SYSTEM_NAMESPACE, "--duration=4h"
    ).stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    server = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": server}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "op", "context": {"cluster": "test", "user": account}}],
        "current-context": "op",
    }
    if "certificate-authority" in server and not server.get("certificate-authority-data"):
        ca = Path(server["certificate-authority"]).read_bytes()
        config["clusters"][0]["cluster"] = {
            "server": server["server"],
            "certificate-authority-data": base64.b64encode(ca).decode(),
        }
    path.write_text(yaml.safe_dump(config))
    return path


def writes_by(
    cluster: Cluster, username: str, since: float, namespace: str | None = None
) -> list[dict[str, Any]]:
    """Mutating requests the audit log recorded for ``username`` after ``since`` (epoch s).

    With ``namespace``, only requests for objects in it (other tests share the cluster).
    """
    found = []
    for line in Path(cluster.audit_log).read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("user", {}).get("username") != username:
            continue
        if entry.get("verb") not in {"create", "update", "patch", "delete", "deletecollection"}:
            continue
        if namespace and entry.get("objectRef", {}).get("namespace") != namespace:
            continue
        stamp = entry.get("requestReceivedTimestamp", "")
        when = time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        if when >= since:
            found.append(entry)
    return found


class OperatorProcess:
    """A running operator that can be stopped and started again."""

    def __init__(self, env: dict[str, str], log_path: Path, account: str = SERVICE_ACCOUNT) -> None:
        self.username = f"system:serviceaccount:{SYSTEM_NAMESPACE}:{account}"
        self.env = env
        self.log_path = log_path
        self.metrics_url = f"http://127.0.0.1:{env['SLM_OPERATOR_METRICS_PORT']}/metrics"
        self.health_url = f"http://127.0.0.1:{env['SLM_OPERATOR_HEALTH_PORT']}/healthz"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the operator and wait for its liveness endpoint."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "slm_operator", "--verbose"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=ROOT,
            )
        wait_for(self._healthy, timeout=60, what="the operator's liveness endpoint")

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"operator exited with {self.process.returncode}:\n{self.log()}")
        try:
            return httpx.get(self.health_url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 30 s."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        """Stop and start again (state must come back from the cluster alone)."""
        self.stop()
        self.start()

    def alive(self) -> bool:
        """Whether the process still runs and answers its liveness endpoint."""
        return self.process is not None and self.process.poll() is None and self._healthy()

    def log(self) -> str:
        """Everything the operator printed so far."""
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> str:
        """The operator's /metrics text."""
        return httpx.get(self.metrics_url, timeout=5).text


@contextmanager
def run_operator(
    cluster: Cluster,
    workdir: Path,
    extra_env: dict[str, str] | None = None,
    account: str = SERVICE_ACCOUNT,
) -> Iterator[OperatorProcess]:
    """Start the operator under a ServiceAccount of its own; stop it afterwards."""
    install_rbac(cluster, (account,))
    kubeconfig = service_account_kubeconfig(cluster, workdir / f"{account}.kubeconfig", account)
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "SLM_OPERATOR_METRICS_PORT": str(free_port()),
        "SLM_OPERATOR_HEALTH_PORT": str(free_port()),
        **(extra_env or {}),
    }
    op = OperatorProcess(env, workdir / f"{account}.log", account)
    try:
        op.start()
        yield op
    finally:
        op.stop()


SUITE_RELEASE = "slm-operator-suite"
"""The chart release the `operator` fixture installs in SYSTEM_NAMESPACE (apart from `make
demo`'s slm-system/slm-operator and from the host processes' ClusterRole)."""
CHART = ROOT / "charts" / "slm-operator"


class _Container:
    """The in-cluster operator's container, killed as a crash would kill it: SIGKILL to its
    processes on node-0 (found through its cgroup); the kubelet starts it again."""

    def __init__(self, operator: InClusterOperator) -> None:
        self.operator = operator
        self.container_id = ""
        self.pids: list[int] = []

    def kill(self) -> None:
        """SIGKILL the processes start() found, that are still that container's (no API call:
        a test kills at a moment it chooses)."""
        killed = []
        for pid in self.pids:
            try:
                if self.container_id in Path(f"/proc/{pid}/cgroup").read_text():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            except (FileNotFoundError, ProcessLookupError):
                continue
        assert killed, f"container {self.container_id} has none of {self.pids} left to kill"

    def wait(self) -> None:
        wait_for(
            lambda: not any(Path(f"/proc/{pid}").exists() for pid in self.pids),
            timeout=30,
            what="the operator's processes gone",
        )


class InClusterOperator:
    """The operator as users run it: installed by its chart (the defaults, `--verbose`, and the
    module's values) and running on node-0 from the operator image the build produced, under
    the RBAC the chart makes. The same methods as OperatorProcess."""

    def __init__(self, cluster: Cluster, values: list[str]) -> None:
        self.cluster = cluster
        self.values = values
        self.username = f"system:serviceaccount:{SYSTEM_NAMESPACE}:{SUITE_RELEASE}"
        self.process = _Container(self)
        self._seen: tuple[str, int] | None = None  # the pod and restart count start() saw

    def install(self) -> None:
        self.cluster.kubectl("create", "namespace", SYSTEM_NAMESPACE, check=False)
        self.cluster.kubectl(
            "label", "namespace", SYSTEM_NAMESPACE, "--overwrite",
            "pod-security.kubernetes.io/enforce=restricted",
        )  # fmt: skip
        self.uninstall()  # what an interrupted session left
        # The CRD is the `crds` fixture's, and the aggregated LocalModel roles are left to the
        # installs under test (test_install.py): the suite's release owns nothing shared.
        self.cluster.helm(
            "install", SUITE_RELEASE, str(CHART), "--namespace", SYSTEM_NAMESPACE,
            "--wait", "--timeout", "180s", "--set", "operator.verbose=true",
            "--set", "crds.enabled=false", "--set", "rbac.aggregateToDefaultRoles=false",
            *self.values,
        )  # fmt: skip
        self.start()

    def uninstall(self) -> None:
        self.cluster.helm("uninstall", SUITE_RELEASE, "--namespace", SYSTEM_NAMESPACE,
                          "--ignore-not-found", "--wait")  # fmt: skip

    def _pods(self) -> list[dict[str, Any]]:
        selector = (
            f"app.kubernetes.io/instance={SUITE_RELEASE},app.kubernetes.io/name=slm-operator,"
            "app.kubernetes.io/component!=test"
        )
        out = self.cluster.kubectl(
            "get", "pods", "-l", selector, "-o", "json", namespace=SYSTEM_NAMESPACE
        ).stdout
        items: list[dict[str, Any]] = json.loads(out)["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def pod(self) -> dict[str, Any]:
        """The one live operator pod."""
        (pod,) = wait_for(
            lambda: pods if len(pods := self._pods()) == 1 else None,
            timeout=60,
            what="one operator pod",
        )
        result: dict[str, Any] = pod
        return result

    @staticmethod
    def _state(pod: dict[str, Any]) -> tuple[str, int, bool]:
        statuses = pod.get("status", {}).get("containerStatuses") or [{}]
        return (
            pod["metadata"]["name"],
            statuses[0].get("restartCount", 0),
            bool(statuses[0].get("ready")),
        )

    def start(self) -> None:
        """Wait until the operator runs again (a new pod, or its container restarted by the
        kubelet) and is ready; check that it is node-0's, from the built image."""
        from tests.images.conftest import docker_engine, image_names

        from .conftest import REAL_NODE, container_pids

        before = self._seen

        def ready() -> dict[str, Any] | None:
            pod = self.pod()
            name, restarts, is_ready = self._state(pod)
            fresh = before is None or (name, restarts) != before
            return pod if fresh and is_ready else None

        pod = wait_for(ready, timeout=180, what="the operator ready", interval=0.5)
        name, restarts, _ = self._state(pod)
        self._seen = (name, restarts)
        self.process.pids = container_pids(pod, "operator")
        self.process.container_id = pod["status"]["containerStatuses"][0]["containerID"].split(
            "://", 1
        )[1]
        assert pod["spec"]["nodeName"] == REAL_NODE
        built = docker_engine().inspect(image_names()["SLM_OPERATOR_IMAGE"])
        assert pod["status"]["containerStatuses"][0]["imageID"] == built["Id"]

    def restart(self) -> None:
        """Scale the Deployment to zero until its pod is gone, then back to one: a new operator
        starts from the cluster's state alone, never beside the old one."""
        deployment = f"deployment/{SUITE_RELEASE}"
        self.cluster.kubectl("scale", deployment, "--replicas=0", namespace=SYSTEM_NAMESPACE)
        wait_for(
            lambda: not self.cluster.kubectl(
                "get", "pods", "-l", f"app.kubernetes.io/instance={SUITE_RELEASE}", "-o", "name",
                namespace=SYSTEM_NAMESPACE,
            ).stdout.strip(),
            timeout=60, what="the operator pod gone",
        )  # fmt: skip
        self.cluster.kubectl("scale", deployment, "--replicas=1", namespace=SYSTEM_NAMESPACE)
        self.start()

    def alive(self) -> bool:
        """Whether the pod start() saw still runs, ready, without a restart since."""
        name, restarts, is_ready = self._state(self.pod())
        return (name, restarts) == self._seen and is_ready

    def log(self) -> str:
        """What the operator printed: the previous container's output too after a restart."""
        name = self.pod()["metadata"]["name"]
        previous = self.cluster.kubectl(
            "logs", name, "--previous", namespace=SYSTEM_NAMESPACE, check=False
        ).stdout
        return previous + self.cluster.kubectl("logs", name, namespace=SYSTEM_NAMESPACE).stdout

    def metrics(self) -> str:
        """The operator's /metrics text, from its pod's address."""
        ip = self.pod()["status"]["podIP"]
        return httpx.get(f"http://{ip}:9090/metrics", timeout=5).text


@contextmanager
def in_cluster_operator(cluster: Cluster, values: list[str]) -> Iterator[InClusterOperator]:
    """Install the operator's chart for the module; uninstall it afterwards."""
    op = InClusterOperator(cluster, values)
    try:
        op.install()
        yield op
    finally:
        op.uninstall()
