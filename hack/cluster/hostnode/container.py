"""One container of a host-0 pod: a host process in the pod's network namespace."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .paths import MountPoints
from .probes import Prober
from .volumes import Volume

Obj = dict[str, Any]
log = logging.getLogger(__name__)
LAUNCH = Path(__file__).with_name("launch.py")
MESSAGE_LIMIT = 4096


def now_rfc3339() -> str:
    """The current time as the API writes it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Identity:
    """Who the container runs as."""

    uid: int
    gid: int
    groups: list[int]
    read_only_root: bool
    no_new_privs: bool


@dataclass
class Container:
    """State of one container across its restarts."""

    spec: Obj
    dir: Path
    pod_key: str
    probes: dict[str, Prober] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    restart_count: int = 0
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = field(default_factory=dict)
    started: bool = False
    ready: bool = False
    done: bool = False
    next_start: float = 0.0
    kill_deadline: float | None = None
    kill_message: str = ""
    env: dict[str, str] = field(default_factory=dict)
    uid: int = 0
    gid: int = 0
    held: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            if self.spec.get(kind):
                self.probes[kind] = Prober(self.spec[kind])

    @property
    def name(self) -> str:
        """The container's name."""
        return str(self.spec["name"])

    @property
    def log_path(self) -> Path:
        """Where stdout and stderr go."""
        return self.dir / "log"

    @property
    def running(self) -> bool:
        """Whether the process is alive (not yet reaped)."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def container_id(self) -> str:
        """A stable id per start, in the API's <runtime>://<id> form."""
        return f"hostnode://{self.pod_key}-{self.name}-{self.restart_count}"

    def start(
        self,
        argv: list[str],
        env: dict[str, str],
        ident: Identity,
        volumes: dict[str, Volume],
        mount_points: MountPoints,
        netns: str | None,
        hostname: str,
        hide: list[Obj],
        restore: list[str] | None = None,
    ) -> str | None:
        """Start the process; return why it could not start, or None."""
        mounts: list[Obj] = []
        held: list[Path] = []
        termination = self.dir / "termination-log"
        termination.write_bytes(b"")
        termination.chmod(0o666)
        targets: list[tuple[Path, Path, bool, bool]] = []
        for vm in self.spec.get("volumeMounts") or []:
            vol = volumes[vm["name"]]
            source = vol.path / vm["subPath"] if vm.get("subPath") else vol.path
            if not source.exists():
                source.mkdir(parents=True)
            read_only = bool(vm.get("readOnly")) or vol.read_only
            targets.append((source, Path(vm["mountPath"]), read_only, vol.tmpfs))
        path = self.spec.get("terminationMessagePath") or "/dev/termination-log"
        targets.append((termination, Path(path), False, False))
        for source, target, read_only, tmpfs in sorted(targets, key=lambda t: len(t[1].parts)):
            held += mount_points.acquire(target, is_file=source.is_file())
            kind = "tmpfs" if tmpfs else "bind"
            mounts.append(
                {"source": str(source), "target": str(target), "readOnly": read_only, "kind": kind}
            )
        self.held = held
        spec_file = self.dir / "spec.json"
        fd = os.open(spec_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(
                {
                    "hostname": hostname[:63],
                    "hide": hide,
                    "restore": restore or [],
                    "mounts": mounts,
                    "readOnlyRoot": ident.read_only_root,
                    "uid": ident.uid,
                    "gid": ident.gid,
                    "groups": ident.groups,
                    "noNewPrivs": ident.no_new_privs,
                    "workingDir": self.spec.get("workingDir") or "/",
                    "argv": argv,
                    "env": env,
                },
                f,
            )
        cmd = ["unshare", "--mount", "--uts", "--propagation", "private", "--"]
        if netns:
            cmd = ["nsenter", f"--net={netns}", "--", *cmd]
        read_fd, write_fd = os.pipe()
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [*cmd, sys.executable, "-I", str(LAUNCH), str(spec_file), str(write_fd)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=(write_fd,),
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            )
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as r:
            error = r.read().decode(errors="replace")
        (self.dir / "pid").write_text(str(self.proc.pid))
        self.env, self.uid, self.gid = env, ident.uid, ident.gid
        if error:
            self.proc.wait()
            return error
        self.state = {"running": {"startedAt": now_rfc3339()}}
        self.started = "startupProbe" not in self.probes
        self.ready = False
        self.kill_deadline = None
        self.kill_message = ""
        for prober in self.probes.values():
            prober.arm()
        log.info("%s/%s: started pid %d: %s", self.pod_key, self.name, self.proc.pid, argv)
        return None

    def kill(self, grace: float, message: str = "") -> None:
        """SIGTERM the container's process group now, SIGKILL after grace seconds."""
        if not self.running or self.kill_deadline is not None:
            return
        self.kill_message = message
        self.kill_deadline = time.monotonic() + grace
        self._signal(signal.SIGTERM)

    def enforce_kill(self) -> None:
        """SIGKILL once the grace period has passed."""
        if (
            self.running
            and self.kill_deadline is not None
            and time.monotonic() >= self.kill_deadline
        ):
            self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def reap(self, policy: str) -> int:
        """Record the exit of the (exited) process; return its exit code."""
        if self.proc is None or self.proc.returncode is None:
            raise RuntimeError(f"{self.name}: reap before exit")
        code = self.proc.returncode
        if code < 0:
            code = 128 - code
        message = (
            (self.dir / "termination-log").read_bytes()[:MESSAGE_LIMIT].decode(errors="replace")
        )
        if not message and code != 0 and policy == "FallbackToLogsOnError":
            message = self.log_path.read_bytes()[-2048:].decode(errors="replace")
        started_at = self.state.get("running", {}).get("startedAt", now_rfc3339())
        terminated: Obj = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": started_at,
            "finishedAt": now_rfc3339(),
            "containerID": self.container_id,
        }
        if message:
            terminated["message"] = message
        self.state = {"terminated": terminated}
        self.ready = False
        self.started = False
        self.proc = None
        (self.dir / "pid").unlink(missing_ok=True)
        log.info("%s/%s: exited with %d %s", self.pod_key, self.name, code, self.kill_message)
        return code

    def status(self, image: str) -> Obj:
        """The containerStatuses entry."""
        out: Obj = {
            "name": self.name,
            "image": image,
            "imageID": "",
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }
        if "waiting" not in self.state:
            out["containerID"] = self.container_id
        return out
