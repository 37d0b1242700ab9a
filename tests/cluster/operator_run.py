"""Run the real operator as a subprocess under its own ServiceAccount and RBAC, not as admin."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.cluster.conftest import ROOT, Cluster

SYSTEM_NAMESPACE = "slm-system"
SERVICE_ACCOUNT = "slm-operator"
RBAC_RULES = ROOT / "charts" / "slm-operator" / "files" / "rbac-rules.yaml"


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
    """ServiceAccount, ClusterRole from the single RBAC source, and their binding."""
    rules = yaml.safe_load(RBAC_RULES.read_text())
    objects = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": SERVICE_ACCOUNT, "namespace": SYSTEM_NAMESPACE},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "slm-operator"},
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "slm-operator"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "slm-operator",
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": SYSTEM_NAMESPACE}
            ],
        },
    ]
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"kind": "List", "apiVersion": "v1", "items": objects})
    )


def service_account_kubeconfig(cluster: Cluster, path: Path) -> Path:
    """A kubeconfig that authenticates as the operator's ServiceAccount."""
    token = cluster.kubectl(
        "create", "token", SERVICE_ACCOUNT, "-n", SYSTEM_NAMESPACE, "--duration=4h"
    ).stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    server = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": server}],
        "users": [{"name": SERVICE_ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": "op", "context": {"cluster": "test", "user": SERVICE_ACCOUNT}}],
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


@dataclass
class OperatorProcess:
    """A running operator."""

    process: subprocess.Popen[bytes]
    metrics_url: str
    health_url: str
    log_path: Path
    username: str = f"system:serviceaccount:{SYSTEM_NAMESPACE}:{SERVICE_ACCOUNT}"

    def log(self) -> str:
        """Everything the operator printed so far."""
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> str:
        """The operator's /metrics text."""
        return httpx.get(self.metrics_url, timeout=5).text


@contextmanager
def run_operator(
    cluster: Cluster, workdir: Path, extra_env: dict[str, str] | None = None
) -> Iterator[OperatorProcess]:
    """Start the operator and wait for its liveness endpoint; stop it afterwards."""
    install_rbac(cluster)
    kubeconfig = service_account_kubeconfig(cluster, workdir / "operator.kubeconfig")
    metrics_port, health_port = free_port(), free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "SLM_OPERATOR_METRICS_PORT": str(metrics_port),
        "SLM_OPERATOR_HEALTH_PORT": str(health_port),
        **(extra_env or {}),
    }
    log_path = workdir / "operator.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "slm_operator", "--verbose"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    op = OperatorProcess(
        process,
        f"http://127.0.0.1:{metrics_port}/metrics",
        f"http://127.0.0.1:{health_port}/healthz",
        log_path,
    )

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"operator exited with {process.returncode}:\n{op.log()}")
        try:
            return httpx.get(op.health_url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, timeout=60, what="the operator's liveness endpoint")
        yield op
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
