"""Pod manifests for host-0 tests and waits on their status."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .conftest import HOST_NODE, Cluster

PODSERVER = Path(__file__).with_name("podserver.py")
Obj = dict[str, Any]


def host_pod(name: str, command: list[str], **spec: Any) -> Obj:
    """A pod bound to host-0 whose single container runs command."""
    container: Obj = {"name": "main", "image": "host/none", "command": command}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "nodeName": HOST_NODE,
            "terminationGracePeriodSeconds": 5,
            "containers": [container],
            **spec,
        },
    }


def server_pod(name: str, **spec: Any) -> Obj:
    """A host-0 pod running podserver.py on 8080 as a restricted, non-root user."""
    probe = {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1}
    live = {"httpGet": {"path": "/live", "port": 8080}, "periodSeconds": 1, "failureThreshold": 2}
    startup = {**live, "failureThreshold": 120}
    container = {
        "ports": [{"name": "http", "containerPort": 8080}],
        "startupProbe": startup,
        "readinessProbe": probe,
        "livenessProbe": live,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    return host_pod(name, ["python3", str(PODSERVER), "8080"], container=container, **spec)


def http(url: str, method: str = "GET") -> Obj:
    """One JSON request to a pod from the host."""
    req = urllib.request.Request(url, method=method)  # noqa: S310
    with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
        body: Obj = json.loads(resp.read())
        return body


def wait_until(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    """Poll check until it returns something truthy; fail with what after timeout."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            result = check()
        except Exception as e:  # not there yet: connection refused, missing key
            result, last = None, e
        else:
            last = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last error: {last})")
        time.sleep(0.2)


def pod_status(cluster: Cluster, namespace: str, name: str) -> Obj:
    """The pod's status."""
    status: Obj = cluster.get("pod", name, namespace).get("status", {})
    return status


def condition(status: Obj, kind: str) -> str | None:
    """The status of one pod condition."""
    for c in status.get("conditions", []):
        if c["type"] == kind:
            return str(c["status"])
    return None
