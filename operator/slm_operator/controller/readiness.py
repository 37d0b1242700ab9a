"""The device each runtime pod serves on: its /readyz answer, read once when the pod is Ready.

The kubelet probes /readyz but keeps only pass or fail; which device the runtime opened, and
why it left the ones before it, is in the answer's body. The operator asks each ready pod once
per container start, in background threads (no reconcile waits on a pod), and queues the model
again when an answer comes. Nothing is asked or written at rest: 1000 models cost 1000 GETs
when their pods start, then none. A pod that cannot be reached (a NetworkPolicy that does not
admit the operator, a node with no pod network) is not asked again until it restarts; its
model's status keeps showing the placed tier.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from slm_runtime.config import READYZ_PATH

from slm_operator.summary import RuntimeDevice, runtime_device

log = logging.getLogger(__name__)

Key = tuple[str, str]

TIMEOUT_SECONDS: Final = 3.0
WORKERS: Final = 4

_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Pod IPs are asked directly, whatever proxy the operator's environment names."""


def _ready(status: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def _stamp(pod: Mapping[str, Any]) -> str:
    """A pod's uid and container restarts: a restarted runtime chooses its device again."""
    status = pod.get("status") or {}
    restarts = sum(c.get("restartCount", 0) for c in status.get("containerStatuses") or [])
    return f"{pod['metadata'].get('uid', '')}/{restarts}"


def readyz_url(ip: str, port: int) -> str:
    """The pod's /readyz URL (IPv6 addresses in brackets)."""
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}{READYZ_PATH}"


def ask(url: str, timeout: float = TIMEOUT_SECONDS) -> RuntimeDevice | None:
    """GET one pod's /readyz; None when it cannot be read or names no device."""
    try:
        with _direct.open(url, timeout=timeout) as answer:
            return runtime_device(json.load(answer))
    except (OSError, ValueError) as exc:  # refused, unreachable, 503 while draining, not JSON
        log.info("could not read the serving device from %s: %s", url, exc)
        return None


class DeviceReader:
    """Remembers what each runtime pod reported and asks the pods that have not been asked."""

    def __init__(
        self,
        notify: Callable[[Key, str], None],
        *,
        workers: int = WORKERS,
        asker: Callable[[str], RuntimeDevice | None] = ask,
    ) -> None:
        self._notify = notify
        self._ask = asker
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="readyz")
        self._lock = threading.Lock()
        self._known: dict[Key, dict[str, tuple[str, RuntimeDevice | None]]] = {}
        """Per model: pod name -> (stamp, what it answered; None when it could not be read)."""
        self._asking: set[tuple[Key, str, str]] = set()

    def devices(
        self, key: Key, pods: Iterable[Mapping[str, Any]], port: int
    ) -> dict[str, RuntimeDevice]:
        """What the model's pods reported, by pod name; a ready pod not asked since it (re)started
        is asked in the background, and the model is queued again once it has answered."""
        pods = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        stamps = {p["metadata"]["name"]: _stamp(p) for p in pods}
        found: dict[str, RuntimeDevice] = {}
        with self._lock:
            known = self._known.setdefault(key, {})
            for name in [n for n, (stamp, _) in known.items() if stamps.get(n) != stamp]:
                del known[name]  # gone or restarted
            for pod in pods:
                name = pod["metadata"]["name"]
                status = pod.get("status") or {}
                if name in known:
                    device = known[name][1]
                    if device is not None:
                        found[name] = device
                    continue
                ip = status.get("podIP")
                job = (key, name, stamps[name])
                if not ip or not _ready(status) or job in self._asking:
                    continue
                self._asking.add(job)
                self._pool.submit(self._read, job, readyz_url(str(ip), port))
        return found

    def _read(self, job: tuple[Key, str, str], url: str) -> None:
        key, name, stamp = job
        device = self._ask(url)
        with self._lock:
            self._asking.discard(job)
            known = self._known.get(key)
            if known is None:  # the model was deleted meanwhile
                return
            known[name] = (stamp, device)
        if device is not None:
            self._notify(key, "readyz")

    def forget(self, key: Key) -> None:
        """Drop what a deleted LocalModel's pods reported."""
        with self._lock:
            self._known.pop(key, None)

    def shutdown(self) -> None:
        """Stop the background threads (tests)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
