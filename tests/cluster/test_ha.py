"""Two operator replicas over one Lease: exactly one reconciles, the other takes over.

Each replica runs under a ServiceAccount of its own, so the audit log tells their requests
apart. The Lease uses the chart's default duration (15 s).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from .conftest import KWOK_SCHEDULING, Cluster
from .operator_run import (
    SYSTEM_NAMESPACE,
    OperatorProcess,
    install_rbac,
    run_operator,
    wait_for,
    writes_by,
)

ACTIVE, STANDBY = "slm-operator-a", "slm-operator-b"
INSTANCE = "app.kubernetes.io/instance"


def localmodel(name: str) -> dict[str, Any]:
    """A CPU LocalModel on kwok nodes."""
    return {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "LocalModel",
        "metadata": {"name": name},
        "spec": {
            "model": {"source": "https://models.example/gemma-3-270m-q4_k_m.gguf"},
            "hardware": {"preferred": "cpu", "fallback": []},
            "scheduling": KWOK_SCHEDULING,
            "serving": {"replicas": 2},
        },
    }


def holder(cluster: Cluster, lease: str) -> str | None:
    """The Lease's holder, or None when it does not exist yet."""
    out = cluster.kubectl(
        "get", "lease", lease, "-o", "json", "--ignore-not-found", namespace=SYSTEM_NAMESPACE
    ).stdout
    return json.loads(out)["spec"].get("holderIdentity") if out.strip() else None


def phase(cluster: Cluster, namespace: str, name: str) -> str | None:
    """The LocalModel's phase."""
    status: dict[str, Any] = cluster.get("localmodel", name, namespace).get("status") or {}
    return status.get("phase")


def count(cluster: Cluster, namespace: str, kind: str, name: str) -> int:
    """How many objects of a kind belong to the LocalModel."""
    out = cluster.kubectl(
        "get", kind, "-l", f"{INSTANCE}={name}", "-o", "name", namespace=namespace
    ).stdout
    return len(out.split())


@pytest.fixture
def replicas(
    cluster: Cluster, crds: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[OperatorProcess, OperatorProcess, str]]:
    """Replica a (started first, so it leads) and replica b, sharing a fresh Lease."""
    install_rbac(cluster, (ACTIVE, STANDBY))
    lease = f"ha-{uuid.uuid4().hex[:8]}"
    env = {
        "SLM_OPERATOR_LEADER_ELECTION": "true",
        "SLM_OPERATOR_LEASE_NAMESPACE": SYSTEM_NAMESPACE,
        "SLM_OPERATOR_LEASE_NAME": lease,
    }
    workdir = tmp_path_factory.mktemp("ha")
    with ExitStack() as stack:
        a = stack.enter_context(
            run_operator(cluster, workdir, {**env, "SLM_OPERATOR_IDENTITY": "a"}, ACTIVE)
        )
        wait_for(lambda: holder(cluster, lease) == "a", timeout=30, what="replica a to lead")
        b = stack.enter_context(
            run_operator(cluster, workdir, {**env, "SLM_OPERATOR_IDENTITY": "b"}, STANDBY)
        )
        yield a, b, lease


def test_one_replica_reconciles_and_the_standby_takes_over_after_sigkill(
    cluster: Cluster,
    namespace: str,
    replicas: tuple[OperatorProcess, OperatorProcess, str],
) -> None:
    a, b, lease = replicas
    started = time.time() - 1
    cluster.apply(localmodel("before"), namespace)
    wait_for(lambda: phase(cluster, namespace, "before") == "Ready", timeout=90, what="before")
    assert "slm_operator_leader 1.0" in a.metrics()
    assert "standby as b" in b.log()
    assert holder(cluster, lease) == "a"
    # The standby has only read the Lease so far (the audit log is written synchronously).
    assert writes_by(cluster, b.username, started) == []

    # SIGKILL: no chance to hand the Lease over; b waits for it to expire.
    assert a.process is not None
    a.process.kill()
    a.process.wait()
    killed = time.time()
    wait_for(lambda: holder(cluster, lease) == "b", timeout=30, what="replica b to take over")
    took_over = time.time()
    wait_for(lambda: "leading as b" in b.log(), timeout=10, what="b to start its controller")

    # Its first write is the Lease it takes over.
    first = writes_by(cluster, b.username, started)[0]
    assert first["objectRef"]["resource"] == "leases"

    # b reconciles: a new model comes up, the old one keeps exactly one set of children.
    cluster.apply(localmodel("after"), namespace)
    wait_for(lambda: phase(cluster, namespace, "after") == "Ready", timeout=90, what="after")
    for name in ("before", "after"):
        assert count(cluster, namespace, "deployments", name) == 1
        assert count(cluster, namespace, "services", name) == 1
        assert count(cluster, namespace, "poddisruptionbudgets", name) == 1
    assert writes_by(cluster, b.username, took_over - 1, namespace)
    print(f"takeover after SIGKILL: {took_over - killed:.1f}s")
