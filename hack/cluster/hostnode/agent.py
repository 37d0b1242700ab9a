"""The host-0 node: registration, heartbeats, and one PodRunner per pod bound to it."""

from __future__ import annotations

import logging
import os
import platform
import shutil
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from .logs import LogServer
from .network import GATEWAY, POD_CIDR, Network
from .objects import Objects, to_dict
from .paths import MountPoints
from .pod import PodRunner

Obj = dict[str, Any]
log = logging.getLogger(__name__)
HEARTBEAT = 10.0
KUBELET_PORT = 10250
TAINT_KEY = "slm.dev/host-node"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _memory_bytes() -> int:
    with open("/proc/meminfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("MemTotal missing from /proc/meminfo")


class Agent:
    """Registers the node and runs its pods."""

    def __init__(
        self,
        api: client.ApiClient,
        node_name: str,
        state_dir: Path,
        container_path: str,
        version: str,
        backoff: float,
        tls: tuple[str, str, str] | None = None,
        shared: tuple[str, ...] = (),
    ) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.coord = client.CoordinationV1Api(api)
        self.objects = Objects(api)
        self.node_name = node_name
        self.state_dir = state_dir
        self.container_path = container_path
        self.version = version
        self.backoff = backoff
        self.backoff_cap = 20.0
        self.tls = tls
        # Pods see an empty /root (the host's holds the cluster's admin credentials), except
        # for the Python installation that the repository's .venv links into and `shared`.
        keep = [p for p in (sys.base_prefix, *shared) if p.startswith("/root/")]
        self.hide: list[Obj] = [{"path": "/root", "keep": keep}]
        # The checkout whose .venv provides container commands stays visible even when a volume
        # is mounted over a folder that holds it (a clone under /tmp, with /tmp an emptyDir).
        self.restore = sorted(
            {
                os.path.dirname(os.path.dirname(entry))
                for entry in container_path.split(":")
                if entry.endswith("/.venv/bin")
            }
        )
        self.network = Network(state_dir)
        self.mount_points = MountPoints(state_dir / "created-paths")
        self.stop = threading.Event()
        self.runners: dict[str, PodRunner] = {}
        self.runners_lock = threading.Lock()
        cpus = str(os.cpu_count() or 1)
        memory = str(_memory_bytes())
        # The disk that holds pod folders (emptyDirs, container writes), as the kubelet reports
        # its root filesystem.
        storage = str(shutil.disk_usage(state_dir).total)
        self.allocatable: Obj = {
            "cpu": cpus,
            "memory": memory,
            "ephemeral-storage": storage,
            "pods": "110",
        }

    # --- node ------------------------------------------------------------------------

    def register(self) -> None:
        """Create (or take over) the Node object and report it Ready."""
        node: Any = {
            "metadata": {
                "name": self.node_name,
                "labels": {
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    TAINT_KEY: "true",
                },
            },
            "spec": {
                "podCIDR": str(POD_CIDR),
                "podCIDRs": [str(POD_CIDR)],
                "taints": [{"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}],
            },
        }
        try:
            self.core.create_node(node)
        except ApiException as e:
            if e.status != 409:
                raise
        self._node_status()

    def _node_status(self) -> None:
        now = _now()

        def cond(kind: str, status: str, reason: str) -> Obj:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "lastHeartbeatTime": now,
                "lastTransitionTime": self._since.get(kind, now),
            }

        self._since = getattr(self, "_since", None) or {
            k: now for k in ("Ready", "MemoryPressure", "DiskPressure", "PIDPressure")
        }
        status = {
            "capacity": self.allocatable,
            "allocatable": self.allocatable,
            "conditions": [
                cond("Ready", "True", "KubeletReady"),
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": GATEWAY},
                {"type": "Hostname", "address": self.node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": KUBELET_PORT if self.tls else 0}},
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "osImage": "host-0 test node",
                "kernelVersion": platform.release(),
                "kubeletVersion": self.version,
                "kubeProxyVersion": "",
                "containerRuntimeVersion": "hostnode://0.1",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }
        self.core.patch_node_status(self.node_name, {"status": status})

    def _renew_lease(self) -> None:
        lease: Any = {
            "metadata": {"name": self.node_name, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": self.node_name,
                "leaseDurationSeconds": 40,
                "renewTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            },
        }
        try:
            self.coord.patch_namespaced_lease(self.node_name, "kube-node-lease", lease)
        except ApiException as e:
            if e.status != 404:
                raise
            self.coord.create_namespaced_lease("kube-node-lease", lease)

    def _heartbeat(self) -> None:
        while not self.stop.is_set():
            try:
                self._renew_lease()
                self._node_status()
            except Exception as e:  # the API may be briefly away; keep beating
                log.warning("heartbeat failed: %s", e)
            self.stop.wait(HEARTBEAT)

    # --- pods ------------------------------------------------------------------------

    def locate_log(self, namespace: str, pod: str, container: str) -> Any:
        """The log file of a container and a check whether it still runs."""
        with self.runners_lock:
            runners = list(self.runners.values())
        for r in runners:
            if r.key == f"{namespace}/{pod}":
                for c in (*r.init, *r.main):
                    if c.name == container:
                        return c.log_path, lambda c=c: c.running
        return None

    def forget(self, uid: str) -> None:
        """Drop a finished runner."""
        with self.runners_lock:
            self.runners.pop(uid, None)

    def _handle(self, kind: str, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        with self.runners_lock:
            runner = self.runners.get(uid)
            if kind == "DELETED":
                if runner is not None:
                    runner.gone.set()
                return
            if runner is not None:
                runner.update(pod)
                return
            phase = (pod.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed") and not pod["metadata"].get("deletionTimestamp"):
                return
            runner = PodRunner(self, pod)
            self.runners[uid] = runner
        runner.start()

    def _sync(self) -> str:
        selector = f"spec.nodeName={self.node_name}"
        pods = self.core.list_pod_for_all_namespaces(field_selector=selector)
        seen = set()
        for item in pods.items:
            pod = to_dict(self.api, item)
            seen.add(pod["metadata"]["uid"])
            self._handle("ADDED", pod)
        with self.runners_lock:
            vanished = [r for uid, r in self.runners.items() if uid not in seen]
        for r in vanished:
            r.gone.set()
        return str(pods.metadata.resource_version) if pods.metadata else ""

    def _watch_pods(self) -> None:
        selector = f"spec.nodeName={self.node_name}"
        while not self.stop.is_set():
            try:
                version = self._sync()
                w = watch.Watch()  # type: ignore[no-untyped-call]
                for event in w.stream(  # type: ignore[no-untyped-call]
                    self.core.list_pod_for_all_namespaces,
                    field_selector=selector,
                    resource_version=version,
                    timeout_seconds=60,
                ):
                    if self.stop.is_set():
                        w.stop()  # type: ignore[no-untyped-call]
                        break
                    if event["type"] not in ("ADDED", "MODIFIED", "DELETED"):
                        continue
                    self._handle(event["type"], to_dict(self.api, event["object"]))
            except Exception as e:  # relist after any watch failure
                if not self.stop.is_set():
                    log.warning("pod watch failed, relisting: %s", e)
                    time.sleep(1)

    def run(self) -> None:
        """Serve until stop is set, then stop every pod and remove the network."""
        self.network.ensure_bridge()
        if self.tls:
            LogServer((GATEWAY, KUBELET_PORT), self.locate_log, *self.tls).start()
        self.register()
        threads = [
            threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True),
            threading.Thread(target=self._watch_pods, name="pods", daemon=True),
        ]
        for t in threads:
            t.start()
        log.info("node %s ready", self.node_name)
        self.stop.wait()
        with self.runners_lock:
            runners = list(self.runners.values())
        for r in runners:
            r.stopping.set()
        for r in runners:
            r.join(timeout=15)
        self.network.teardown()
        log.info("node %s stopped", self.node_name)
