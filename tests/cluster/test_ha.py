"""Two operator replicas from the chart (`replicaCount=2`, `leaderElection.enabled`): exactly
one reconciles, and when its pod dies the other takes over.

Both replicas run on node-0 from the operator image under the chart's ServiceAccount; the audit
log tells their requests apart by the pod its token was bound to. The Lease uses the chart's
default duration (15 s).
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import KWOK_SCHEDULING, Cluster
from .operator_run import (
    SYSTEM_NAMESPACE,
    Container,
    InClusterOperator,
    assert_from_built_image,
    wait_for,
    writes_by,
)

RELEASE = "slm-operator-ha"  # apart from the other modules' release; the Lease's name too
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


def holder(cluster: Cluster) -> str | None:
    """The Lease's holder, or None when it does not exist yet."""
    out = cluster.kubectl(
        "get", "lease", RELEASE, "-o", "json", "--ignore-not-found", namespace=SYSTEM_NAMESPACE
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


def ready_pods(op: InClusterOperator) -> dict[str, dict[str, Any]]:
    """The release's pods whose operator container is ready, by name."""
    return {
        pod["metadata"]["name"]: pod
        for pod in op.pods()
        if all(c.get("ready") for c in pod["status"].get("containerStatuses") or [{}])
    }


@pytest.fixture
def replicas(cluster: Cluster, crds: list[str]) -> Iterator[InClusterOperator]:
    """The chart installed with two replicas and leader election (both ready)."""
    op = InClusterOperator(
        cluster,
        ["--set", "replicaCount=2", "--set", "leaderElection.enabled=true"],
        release=RELEASE,
    )
    lease = ("lease", RELEASE, "--ignore-not-found")
    try:
        cluster.kubectl("delete", *lease, namespace=SYSTEM_NAMESPACE)  # an earlier run's
        op.install(start=False)
        yield op
    finally:
        op.uninstall()
        cluster.kubectl("delete", *lease, namespace=SYSTEM_NAMESPACE)


def test_one_replica_reconciles_and_the_other_takes_over_when_its_pod_dies(
    cluster: Cluster, namespace: str, replicas: InClusterOperator
) -> None:
    op = replicas
    started = time.time() - 1
    pods = wait_for(
        lambda: found if len(found := ready_pods(op)) == 2 else None,
        timeout=60,
        what="two ready operator pods",
    )
    for pod in pods.values():
        assert_from_built_image(pod)
    leader = wait_for(
        lambda: (now := holder(cluster)) in pods and now,
        timeout=30,
        what="one of them to take the Lease",
    )
    (standby,) = set(pods) - {leader}

    cluster.apply(localmodel("before"), namespace)
    wait_for(lambda: phase(cluster, namespace, "before") == "Ready", timeout=90, what="before")
    assert "slm_operator_leader 1.0" in op.metrics(pods[leader])
    assert f"leading as {leader}" in op.log(leader)
    assert f"standby as {standby}" in op.log(standby)
    assert f"leading as {standby}" not in op.log(standby)
    assert holder(cluster) == leader
    # The standby has only read the Lease so far (the audit log is written synchronously).
    assert writes_by(cluster, op.username, started, pod=standby) == []
    assert writes_by(cluster, op.username, started, namespace, pod=leader)

    # The leader's pod is lost: its processes SIGKILLed (no chance to hand the Lease over) and
    # the pod removed at once, as when its node fails. The Lease passes when it expires.
    container = Container()
    container.attach(pods[leader])
    container.kill()
    killed = time.time()
    cluster.kubectl(
        "delete", "pod", leader, "--grace-period=0", "--force", "--wait=false",
        namespace=SYSTEM_NAMESPACE,
    )  # fmt: skip
    successor = wait_for(
        lambda: (now := holder(cluster)) != leader and now,
        timeout=60,
        what="another replica to take the Lease over",
    )
    took_over = time.time()
    # The standby, or the Deployment's replacement pod if it asked first once the Lease expired.
    assert successor != leader
    wait_for(
        lambda: f"leading as {successor}" in op.log(successor),
        timeout=30,
        what=f"{successor} to start its controller",
    )
    # Its first write is the Lease it takes over.
    first = writes_by(cluster, op.username, started, pod=successor)[0]
    assert first["objectRef"]["resource"] == "leases"

    # The successor reconciles: a new model comes up, the old one keeps one set of children.
    cluster.apply(localmodel("after"), namespace)
    wait_for(lambda: phase(cluster, namespace, "after") == "Ready", timeout=90, what="after")
    for name in ("before", "after"):
        assert count(cluster, namespace, "deployments", name) == 1
        assert count(cluster, namespace, "services", name) == 1
        assert count(cluster, namespace, "poddisruptionbudgets", name) == 1
    assert writes_by(cluster, op.username, took_over - 1, namespace, pod=successor)

    # The Deployment is back at two replicas, and the one that does not lead has written nothing.
    pods = wait_for(
        lambda: found if len(found := ready_pods(op)) == 2 and leader not in found else None,
        timeout=90,
        what="two ready operator pods again",
    )
    assert successor in pods
    (waiting,) = set(pods) - {successor}
    assert f"standby as {waiting}" in op.log(waiting)
    # (Its Lease update may have lost the takeover race with 409, which wrote nothing.)
    assert writes_by(cluster, op.username, started, pod=waiting, carried_out=True) == []
    assert holder(cluster) == successor

    # A standby stops at SIGTERM (it is PID 1 in its container, which ignores signals it has
    # no handler for): exit code 0, not the kubelet's SIGKILL after the grace period.
    container.attach(pods[waiting])
    container.kill(signal.SIGTERM)
    restarted = wait_for(
        lambda: (s := op.pod_status(waiting)) and s.get("restartCount", 0) >= 1 and s,
        timeout=60,
        what=f"{waiting} to stop at SIGTERM",
    )
    assert restarted["lastState"]["terminated"]["exitCode"] == 0
    assert holder(cluster) == successor
    by = "the standby" if successor == standby else "the replacement pod"
    print(f"takeover by {by} after the leader's pod was lost: {took_over - killed:.1f}s")
