"""Run the real operator in the cluster, installed by its chart (the `operator` fixture and the
leader-election test's two replicas), and the helpers the operator image's own test uses to run
it under a ServiceAccount token from outside the cluster."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
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


def install_rbac(cluster: Cluster) -> None:
    """The ServiceAccount, the ClusterRole from the single RBAC source, and the Lease Role."""
    subject = {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": SYSTEM_NAMESPACE}
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": SERVICE_ACCOUNT, "namespace": SYSTEM_NAMESPACE},
        },
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
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": f"{kind}RoleBinding",
                "metadata": {**meta, "name": f"{CLUSTER_ROLE}-{SERVICE_ACCOUNT}"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": f"{kind}Role",
                    "name": CLUSTER_ROLE,
                },
                "subjects": [subject],
            },
        ]
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"kind": "List", "apiVersion": "v1", "items": objects})
    )


def service_account_kubeconfig(cluster: Cluster, path: Path) -> Path:
    """A kubeconfig that authenticates as the operator's ServiceAccount."""
    account = SERVICE_ACCOUNT
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
    cluster: Cluster,
    username: str,
    since: float,
    namespace: str | None = None,
    pod: str | None = None,
    *,
    carried_out: bool = False,
) -> list[dict[str, Any]]:
    """Mutating requests the audit log recorded for ``username`` after ``since`` (epoch s).

    With ``namespace``, only requests for objects in it (other tests share the cluster); with
    ``pod``, only those made with the token the kubelet gave that pod (replicas of one
    Deployment share a ServiceAccount); with ``carried_out``, only those the API server did not
    refuse (a Lease update that lost a race gets 409 and changes nothing).
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
        if carried_out and entry.get("responseStatus", {}).get("code", 0) >= 400:
            continue
        if namespace and entry.get("objectRef", {}).get("namespace") != namespace:
            continue
        extra = entry["user"].get("extra", {})
        if pod and extra.get("authentication.kubernetes.io/pod-name") != [pod]:
            continue
        stamp = entry.get("requestReceivedTimestamp", "")
        when = time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        if when >= since:
            found.append(entry)
    return found


SUITE_RELEASE = "slm-operator-suite"
"""The chart release the `operator` fixture installs in SYSTEM_NAMESPACE (apart from `make
demo`'s slm-system/slm-operator and from install_rbac's ClusterRole)."""
CHART = ROOT / "charts" / "slm-operator"


def operator_status(pod: dict[str, Any]) -> dict[str, Any]:
    """The operator container's status in ``pod`` (empty before the kubelet reports one)."""
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return next((s for s in statuses if s["name"] == "operator"), {})


class Container:
    """An operator container on node-0, killed as a crash would kill it: SIGKILL to its
    processes (found through its cgroup); the kubelet starts it again."""

    def __init__(self) -> None:
        self.container_id = ""
        self.pids: list[int] = []

    def attach(self, pod: dict[str, Any]) -> None:
        """Follow the running operator container of ``pod``."""
        from .conftest import container_pids  # operator_run is imported by conftest's fixtures

        self.pids = container_pids(pod, "operator")
        self.container_id = operator_status(pod)["containerID"].split("://", 1)[1]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the processes attach() found, that are still that container's (no
        API call: a test kills at a moment it chooses)."""
        killed = []
        for pid in self.pids:
            try:
                if self.container_id in Path(f"/proc/{pid}/cgroup").read_text():
                    os.kill(pid, sig)
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


def assert_from_built_image(pod: dict[str, Any]) -> None:
    """The operator pod runs on node-0, from the operator image the build produced."""
    from tests.images.conftest import docker_engine, image_names

    from .conftest import REAL_NODE

    assert pod["spec"]["nodeName"] == REAL_NODE
    built = docker_engine().inspect(image_names()["SLM_OPERATOR_IMAGE"])
    assert operator_status(pod)["imageID"] == built["Id"]


class InClusterOperator:
    """The operator as users run it: installed by its chart (the defaults, `--verbose`, and the
    module's values) and running on node-0 from the operator image the build produced, under
    the RBAC the chart makes."""

    def __init__(self, cluster: Cluster, values: list[str], release: str = SUITE_RELEASE) -> None:
        self.cluster = cluster
        self.values = values
        self.release = release  # also the Deployment's, ServiceAccount's and Lease's name
        self.username = f"system:serviceaccount:{SYSTEM_NAMESPACE}:{release}"
        self.process = Container()
        self._seen: tuple[str, int] | None = None  # the pod and restart count start() saw

    def install(self, *, start: bool = True) -> None:
        """Install the release (all its replicas ready); then, with ``start``, follow its one
        pod."""
        self.cluster.kubectl("create", "namespace", SYSTEM_NAMESPACE, check=False)
        self.cluster.kubectl(
            "label", "namespace", SYSTEM_NAMESPACE, "--overwrite",
            "pod-security.kubernetes.io/enforce=restricted",
        )  # fmt: skip
        self.uninstall()  # what an interrupted session left
        # The CRD is the `crds` fixture's, and the aggregated LocalModel roles are left to the
        # installs under test (test_install.py): the suite's release owns nothing shared.
        self.cluster.helm(
            "install", self.release, str(CHART), "--namespace", SYSTEM_NAMESPACE,
            "--wait", "--timeout", "180s", "--set", "operator.verbose=true",
            "--set", "crds.enabled=false", "--set", "rbac.aggregateToDefaultRoles=false",
            *self.values,
        )  # fmt: skip
        if start:
            self.start()

    def uninstall(self) -> None:
        self.cluster.helm("uninstall", self.release, "--namespace", SYSTEM_NAMESPACE,
                          "--ignore-not-found", "--wait")  # fmt: skip

    def pod_status(self, name: str) -> dict[str, Any]:
        """The operator container's status in pod ``name`` (empty before it has one)."""
        return operator_status(self.cluster.get("pod", name, SYSTEM_NAMESPACE))

    def pods(self) -> list[dict[str, Any]]:
        """The release's operator pods that are not being deleted."""
        selector = (
            f"app.kubernetes.io/instance={self.release},app.kubernetes.io/name=slm-operator,"
            "app.kubernetes.io/component=controller"
        )
        out = self.cluster.kubectl(
            "get", "pods", "-l", selector, "-o", "json", namespace=SYSTEM_NAMESPACE
        ).stdout
        items: list[dict[str, Any]] = json.loads(out)["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def pod(self) -> dict[str, Any]:
        """The one live operator pod."""
        (pod,) = wait_for(
            lambda: pods if len(pods := self.pods()) == 1 else None,
            timeout=60,
            what="one operator pod",
        )
        result: dict[str, Any] = pod
        return result

    @staticmethod
    def _state(pod: dict[str, Any]) -> tuple[str, int, bool]:
        status = operator_status(pod)
        return pod["metadata"]["name"], status.get("restartCount", 0), bool(status.get("ready"))

    def start(self) -> None:
        """Wait until the operator runs again (a new pod, or its container restarted by the
        kubelet) and is ready; check that it is node-0's, from the built image."""
        before = self._seen

        def ready() -> dict[str, Any] | None:
            pod = self.pod()
            name, restarts, is_ready = self._state(pod)
            fresh = before is None or (name, restarts) != before
            return pod if fresh and is_ready else None

        pod = wait_for(ready, timeout=180, what="the operator ready", interval=0.5)
        name, restarts, _ = self._state(pod)
        self._seen = (name, restarts)
        self.process.attach(pod)
        assert_from_built_image(pod)

    def restart(self) -> None:
        """Scale the Deployment to zero until its pod is gone, then back to one: a new operator
        starts from the cluster's state alone, never beside the old one."""
        deployment = f"deployment/{self.release}"
        self.cluster.kubectl("scale", deployment, "--replicas=0", namespace=SYSTEM_NAMESPACE)
        wait_for(
            lambda: not self.cluster.kubectl(
                "get", "pods", "-l",
                f"app.kubernetes.io/instance={self.release},app.kubernetes.io/component=controller",
                "-o", "name",
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

    def log(self, name: str | None = None) -> str:
        """What the operator printed (the one pod's, or pod ``name``'s): the previous
        container's output too after a restart."""
        name = name or self.pod()["metadata"]["name"]
        previous = self.cluster.kubectl(
            "logs", name, "--previous", namespace=SYSTEM_NAMESPACE, check=False
        ).stdout
        return previous + self.cluster.kubectl("logs", name, namespace=SYSTEM_NAMESPACE).stdout

    def metrics(self, pod: dict[str, Any] | None = None) -> str:
        """The operator's /metrics text, from its (or ``pod``'s) address."""
        ip = (pod or self.pod())["status"]["podIP"]
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
