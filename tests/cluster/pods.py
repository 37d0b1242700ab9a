"""Waits on pods and their status."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .conftest import Cluster

Obj = dict[str, Any]


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
