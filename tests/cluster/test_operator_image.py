"""The operator image, as `make images` built it, runs against the test cluster.

It runs as the chart's Deployment runs it (UID 65532, read-only root, /tmp the only scratch)
and authenticates with a token of a ServiceAccount bound to the chart's own RBAC rules, then
reconciles a LocalModel: its children and its status come from the container.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.images.conftest import Docker, built, docker_engine, image_names

from .conftest import KWOK_SCHEDULING, Cluster
from .operator_run import free_port, install_rbac, service_account_kubeconfig, wait_for

pytestmark = pytest.mark.image


@pytest.fixture
def docker() -> Docker:
    """The Docker engine, as the image suites use it."""
    return docker_engine()


def test_the_operator_image_prints_its_help(docker: Docker) -> None:
    image = built(docker, image_names()["SLM_OPERATOR_IMAGE"])
    out = docker.run(
        "run", "--rm", "--read-only", "--user", "65532:65532", image, "slm-operator", "--help"
    )
    assert "run the LocalModel controller" in out


@pytest.fixture
def operator_container(
    cluster: Cluster, crds: list[str], namespace: str, docker: Docker, tmp_path: Path
) -> Iterator[str]:
    """The operator image watching ``namespace`` under the chart's RBAC; its logs at the end."""
    image = built(docker, image_names()["SLM_OPERATOR_IMAGE"])
    install_rbac(cluster)
    kubeconfig = service_account_kubeconfig(cluster, tmp_path / "kubeconfig")
    kubeconfig.chmod(0o644)
    health = free_port()
    name = f"slm-operator-test-{time.monotonic_ns()}"
    docker.run(
        "run", "-d", "--name", name, "--network", "host",
        *("--read-only", "--user", "65532:65532", "--tmpfs", "/tmp"),
        *("-v", f"{kubeconfig}:/etc/slm/kubeconfig:ro", "-e", "KUBECONFIG=/etc/slm/kubeconfig"),
        *("-e", f"SLM_OPERATOR_HEALTH_PORT={health}"),
        *("-e", f"SLM_OPERATOR_METRICS_PORT={free_port()}"),
        image, "slm-operator", "--namespace", namespace,
    )  # fmt: skip

    def logs() -> str:
        proc = subprocess.run(
            [docker.binary, "logs", name], capture_output=True, text=True, check=False
        )
        return proc.stdout + proc.stderr

    def healthy() -> bool:
        state = docker.run("inspect", "--format", "{{.State.Running}}", name).strip()
        if state != "true":
            raise AssertionError(f"the operator container exited:\n{logs()}")
        try:
            return httpx.get(f"http://127.0.0.1:{health}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(healthy, timeout=90, what="the operator container's liveness endpoint")
        yield name
    finally:
        docker.run("rm", "-f", name, check=False)


def test_the_operator_image_reconciles_a_localmodel_under_the_charts_rbac(
    cluster: Cluster, namespace: str, operator_container: str
) -> None:
    cluster.apply(
        {
            "apiVersion": "slm.dev/v1alpha1",
            "kind": "LocalModel",
            "metadata": {"name": "from-image"},
            "spec": {
                "model": {"source": "https://models.example/gemma-3-270m-q4_k_m.gguf"},
                "hardware": {"preferred": "cpu", "fallback": []},
                "scheduling": KWOK_SCHEDULING,
            },
        },
        namespace,
    )

    def reconciled() -> dict[str, Any] | None:
        st: dict[str, Any] = cluster.get("localmodel", "from-image", namespace).get("status") or {}
        return st if st.get("phase") and st.get("observedGeneration") == 1 else None

    st = wait_for(reconciled, timeout=90, what="a status from the operator container")
    assert st["phase"] in {"Pending", "Pulling", "Deploying"}
    for kind, child in (("deployment", "from-image"), ("configmap", "from-image-config")):
        owner = cluster.get(kind, child, namespace)["metadata"]["ownerReferences"][0]
        assert owner["kind"] == "LocalModel"
        assert owner["name"] == "from-image"
