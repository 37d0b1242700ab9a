"""The lifecycle of one pod on host-0: set up, run, probe, report, terminate, clean up."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .container import Container, Identity, now_rfc3339
from .environment import argv, environment
from .network import GATEWAY
from .objects import ConfigError, NotReadyError
from .probes import run_probe
from .volumes import PodVolumes, Volume

if TYPE_CHECKING:
    from .agent import Agent

Obj = dict[str, Any]
log = logging.getLogger(__name__)
TICK = 0.1


class PodRunner(threading.Thread):
    """Runs one pod bound to host-0 until it is deleted."""

    def __init__(self, agent: Agent, pod: Obj) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.agent = agent
        self.pod = pod
        self.uid: str = meta["uid"]
        self.key = f"{meta['namespace']}/{meta['name']}"
        self.dir = agent.state_dir / "pods" / self.uid
        self.lock = threading.Lock()
        self.gone = threading.Event()
        self.stopping = threading.Event()
        self.netns: str | None = None
        self.pod_ip = ""
        self.volumes: dict[str, Volume] | None = None
        self.error: tuple[str, str] | None = None
        self.phase = "Pending"
        self.started_at = now_rfc3339()
        spec = pod["spec"]
        self.policy = spec.get("restartPolicy", "Always")
        self.init = [self._container(c) for c in spec.get("initContainers") or []]
        self.main = [self._container(c) for c in spec["containers"]]
        self.init_done = not self.init
        self.last_status: Obj | None = None
        self.retry_at = 0.0

    def _container(self, spec: Obj) -> Container:
        return Container(spec, self.dir / "containers" / spec["name"], self.key)

    def update(self, pod: Obj) -> None:
        """Take a newer version of the pod from the watch."""
        with self.lock:
            self.pod = pod

    # --- main loop -------------------------------------------------------------------

    def run(self) -> None:
        """Drive the pod until it is deleted or the agent stops."""
        try:
            self._loop()
        except Exception as e:
            log.exception("%s: runner failed", self.key)
            self.error = ("RunContainerError", f"host-0 failed to run the pod: {e}")
            self.phase = "Failed"
            self._report()
            while not self.gone.is_set() and not self.stopping.is_set() and not self._deleting():
                time.sleep(TICK)
        finally:
            self._kill_all(grace=0 if self.gone.is_set() else None)
            self._cleanup()
            if self._deleting() and not self.stopping.is_set() and not self.gone.is_set():
                self._finalize_delete()
            self.agent.forget(self.uid)

    def _deleting(self) -> bool:
        with self.lock:
            return self.pod["metadata"].get("deletionTimestamp") is not None

    def _loop(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        while not self.gone.is_set() and not self.stopping.is_set() and not self._deleting():
            now = time.monotonic()
            if self.phase in ("Succeeded", "Failed"):
                self._release_sandbox()
            elif self.error is None or self.error[0] == "ContainerCreating":
                self._step(now)
            self._report()
            time.sleep(TICK)

    def _step(self, now: float) -> None:
        if self.volumes is None:
            if now < self.retry_at:
                return
            if not self._setup():
                self.retry_at = now + 1
                return
        if not self.init_done:
            self._step_init(now)
        else:
            for c in self.main:
                self._step_container(c, now)
            self._update_phase()

    def _setup(self) -> bool:
        try:
            if self.netns is None and not self.pod["spec"].get("hostNetwork"):
                self.netns, self.pod_ip = self.agent.network.create(self.uid)
            elif self.pod["spec"].get("hostNetwork"):
                self.pod_ip = GATEWAY
            with self.lock:
                pod = self.pod
            self.volumes = PodVolumes(
                self.agent.objects, pod, self.dir, self.agent.allocatable
            ).prepare()
        except NotReadyError as e:
            self.error = ("ContainerCreating", str(e))
            return False
        except ConfigError as e:
            self.error = ("CreateContainerConfigError", str(e))
            return False
        self.error = None
        return True

    def _step_init(self, now: float) -> None:
        for c in self.init:
            if c.done:
                continue
            if c.running:
                return
            if c.proc is not None:
                code = c.reap(c.spec.get("terminationMessagePolicy", "File"))
                self._release(c)
                if code == 0:
                    c.done = True
                    continue
                if self.policy == "Never":
                    self.phase = "Failed"
                    return
                self._schedule_restart(c, now)
                return
            if now >= c.next_start:
                self._start(c)
            return
        self.init_done = True

    def _step_container(self, c: Container, now: float) -> None:
        if c.done:
            return
        if c.running:
            c.enforce_kill()
            self._probe(c, now)
            return
        if c.proc is not None:
            code = c.reap(c.spec.get("terminationMessagePolicy", "File"))
            self._release(c)
            restart = self.policy == "Always" or (self.policy == "OnFailure" and code != 0)
            if not restart:
                c.done = True
                return
            self._schedule_restart(c, now)
            return
        if now >= c.next_start:
            self._start(c)

    def _schedule_restart(self, c: Container, now: float) -> None:
        delay = (
            0.0
            if c.restart_count == 0
            else min(self.agent.backoff * 2 ** (c.restart_count - 1), self.agent.backoff_cap)
        )
        c.last_state = c.state
        c.restart_count += 1
        c.next_start = now + delay
        if delay:
            c.state = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off {delay:g}s restarting failed container={c.name} "
                    f"pod={self.pod['metadata']['name']}",
                }
            }

    def _identity(self, c: Container) -> Identity:
        pod_sc = self.pod["spec"].get("securityContext") or {}
        sc = c.spec.get("securityContext") or {}
        uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
        gid = sc.get("runAsGroup", pod_sc.get("runAsGroup", 0))
        non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if non_root and not uid:
            raise ConfigError(
                f"container {c.name!r} has runAsNonRoot and would run as root: set runAsUser "
                "(host-0 has no image to read a default user from)"
            )
        groups = list(pod_sc.get("supplementalGroups") or [])
        if pod_sc.get("fsGroup") is not None:
            groups.append(pod_sc["fsGroup"])
        return Identity(
            uid=uid or 0,
            gid=gid,
            groups=groups,
            read_only_root=bool(sc.get("readOnlyRootFilesystem")),
            no_new_privs=sc.get("allowPrivilegeEscalation") is False,
        )

    def _start(self, c: Container) -> None:
        if self.volumes is None:
            return
        with self.lock:
            pod = self.pod
        status = dict(pod.get("status") or {})
        status.update({"podIP": self.pod_ip, "hostIP": GATEWAY})
        view = {**pod, "status": status}
        base = {
            "PATH": self.agent.container_path,
            "HOSTNAME": pod["metadata"]["name"],
            "HOME": "/root",
        }
        try:
            ident = self._identity(c)
            if ident.uid:
                base["HOME"] = "/"
            env = environment(self.agent.objects, view, c.spec, base, self.agent.allocatable)
            command = argv(c.spec, env)
        except NotReadyError as e:
            c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
            c.next_start = time.monotonic() + 1
            return
        except ConfigError as e:
            c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
            c.next_start = float("inf")
            return
        error = c.start(
            command, env, ident, self.volumes, self.agent.mount_points, self.netns,
            pod["metadata"]["name"],
            self.agent.hide, self.agent.restore,
        )  # fmt: skip
        if error:
            self._release(c)
            log.info("%s/%s: failed to start: %s", self.key, c.name, error)
            c.state = {
                "terminated": {
                    "exitCode": 128,
                    "reason": "StartError",
                    "message": error,
                    "startedAt": now_rfc3339(),
                    "finishedAt": now_rfc3339(),
                    "containerID": c.container_id,
                }
            }
            c.proc = None
            if self.policy == "Never" or (c in self.init and self.policy == "Never"):
                c.done = True
                if c in self.init:
                    self.phase = "Failed"
            else:
                self._schedule_restart(c, time.monotonic())

    def _release(self, c: Container) -> None:
        self.agent.mount_points.release(c.held)
        c.held = []

    def _probe(self, c: Container, now: float) -> None:
        if c.proc is None:
            return
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            prober = c.probes.get(kind)
            if prober is None or not prober.due(now) or c.kill_deadline is not None:
                continue
            if kind == "startupProbe" and c.started:
                continue
            if kind != "startupProbe" and not c.started:
                continue
            ok, message = run_probe(
                prober.spec, c.spec, self.pod_ip or "127.0.0.1", c.proc.pid, c.env, c.uid, c.gid
            )
            verdict = prober.record(ok, message, time.monotonic())
            if kind == "startupProbe" and verdict:
                c.started = True
                for p in c.probes.values():
                    if p is not prober:
                        p.arm()
            elif kind in ("startupProbe", "livenessProbe") and verdict is False:
                name = "Startup" if kind == "startupProbe" else "Liveness"
                grace = prober.spec.get("terminationGracePeriodSeconds", self._grace())
                log.info("%s/%s: %s probe failed: %s", self.key, c.name, name, message)
                c.kill(grace, f"{name} probe failed: {message}")
            elif kind == "readinessProbe" and verdict is not None:
                c.ready = verdict
        if "readinessProbe" not in c.probes:
            c.ready = c.started

    def _update_phase(self) -> None:
        if all(c.done for c in self.main):
            failed = any(c.state.get("terminated", {}).get("exitCode", 0) != 0 for c in self.main)
            self.phase = "Failed" if failed else "Succeeded"
        elif any(c.running or c.restart_count for c in self.main):
            self.phase = "Running"

    # --- status ----------------------------------------------------------------------

    def _condition(self, kind: str, ok: bool, reason: str = "") -> Obj:
        old = {c["type"]: c for c in (self.last_status or {}).get("conditions", [])}
        status = "True" if ok else "False"
        prev = old.get(kind)
        since = prev["lastTransitionTime"] if prev and prev["status"] == status else now_rfc3339()
        cond: Obj = {
            "type": kind,
            "status": status,
            "lastTransitionTime": since,
            "lastProbeTime": None,
        }
        if reason and not ok:
            cond["reason"] = reason
        return cond

    def _status(self) -> Obj:
        init_statuses = [c.status(c.spec.get("image", "")) for c in self.init]
        statuses = [c.status(c.spec.get("image", "")) for c in self.main]
        if self.error is not None:
            reason, message = self.error
            for s in (*init_statuses, *statuses):
                if "waiting" in s["state"]:
                    s["state"] = {"waiting": {"reason": reason, "message": message}}
        ready = self.phase == "Running" and all(c.ready for c in self.main)
        sandbox = self.volumes is not None and self.phase not in ("Succeeded", "Failed")
        conditions = [
            self._condition("PodReadyToStartContainers", sandbox),
            self._condition("Initialized", self.init_done, "ContainersNotInitialized"),
            self._condition("Ready", ready, "ContainersNotReady"),
            self._condition("ContainersReady", ready, "ContainersNotReady"),
            self._condition("PodScheduled", True),
        ]
        status: Obj = {
            "phase": self.phase,
            "conditions": conditions,
            "hostIP": GATEWAY,
            "hostIPs": [{"ip": GATEWAY}],
            "startTime": self.started_at,
            "containerStatuses": statuses,
            "qosClass": (self.pod.get("status") or {}).get("qosClass", "BestEffort"),
        }
        if self.pod_ip:
            status["podIP"] = self.pod_ip
            status["podIPs"] = [{"ip": self.pod_ip}]
        if init_statuses:
            status["initContainerStatuses"] = init_statuses
        if self.error is not None:
            status["message"] = self.error[1]
            status["reason"] = self.error[0]
        return status

    def _report(self) -> None:
        status = self._status()
        if status == self.last_status:
            return
        meta = self.pod["metadata"]
        try:
            # A merge patch replaces the lists whole (no stale container states).
            self.agent.core.patch_namespaced_pod_status(
                meta["name"],
                meta["namespace"],
                {"status": status},
                _content_type="application/merge-patch+json",
            )
        except ApiException as e:
            if e.status != 404:
                log.warning("%s: status update failed: %s", self.key, e.reason)
                return
        self.last_status = status

    # --- termination -----------------------------------------------------------------

    def _grace(self) -> float:
        with self.lock:
            meta, spec = self.pod["metadata"], self.pod["spec"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        return float(grace)

    def _kill_all(self, grace: float | None) -> None:
        if grace is None:
            grace = self._grace() if not self.stopping.is_set() else min(self._grace(), 5)
        containers = [c for c in (*self.init, *self.main) if c.running]
        for c in containers:
            c.kill_deadline = None
            c.kill(grace, "pod deleted")
        while any(c.running for c in containers):
            for c in containers:
                c.enforce_kill()
            time.sleep(TICK)
        for c in (*self.init, *self.main):
            if c.proc is not None:
                c.reap("File")
            self._release(c)

    def _release_sandbox(self) -> None:
        if self.netns is not None:
            self.agent.network.delete(self.uid)
            self.netns = None

    def _cleanup(self) -> None:
        for c in (*self.init, *self.main):
            self._release(c)
        self._release_sandbox()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _finalize_delete(self) -> None:
        meta = self.pod["metadata"]
        try:
            self.agent.core.delete_namespaced_pod(
                meta["name"],
                meta["namespace"],
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=self.uid)
                ),
            )
        except ApiException as e:
            if e.status not in (404, 409):
                log.warning("%s: final delete failed: %s", self.key, e.reason)
        log.info("%s: deleted", self.key)


def pod_dir(state_dir: Path, uid: str) -> Path:
    """Where host-0 keeps a pod's files (volumes, logs)."""
    return state_dir / "pods" / uid
