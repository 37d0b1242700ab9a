"""Startup, readiness and liveness probes (HTTP, TCP and exec) against a pod."""

from __future__ import annotations

import http.client
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]


def _port(container: Obj, port: int | str) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"probe names port {port!r}, which the container does not declare")


@dataclass
class Prober:
    """One probe of one container, with its thresholds and counters."""

    spec: Obj
    successes: int = 0
    failures: int = 0
    result: bool | None = None
    next_at: float = 0.0
    message: str = ""
    armed_at: float = field(default_factory=time.monotonic)

    def arm(self) -> None:
        """Start probing again from scratch (after a container (re)start)."""
        self.successes = self.failures = 0
        self.result = None
        self.armed_at = time.monotonic()
        self.next_at = self.armed_at + self.spec.get("initialDelaySeconds", 0)

    def due(self, now: float) -> bool:
        """Whether the period has elapsed."""
        return now >= self.next_at

    def record(self, ok: bool, message: str, now: float) -> bool | None:
        """Count one result; return the new verdict once a threshold is crossed."""
        self.next_at = now + self.spec.get("periodSeconds", 10)
        self.message = message
        if ok:
            self.successes += 1
            self.failures = 0
            if self.successes >= self.spec.get("successThreshold", 1):
                self.result = True
        else:
            self.failures += 1
            self.successes = 0
            if self.failures >= self.spec.get("failureThreshold", 3):
                self.result = False
        return self.result


def run_probe(
    spec: Obj, container: Obj, pod_ip: str, pid: int, env: dict[str, str], uid: int, gid: int
) -> tuple[bool, str]:
    """Execute a probe once; return (success, message)."""
    timeout = spec.get("timeoutSeconds", 1)
    try:
        if "httpGet" in spec:
            get = spec["httpGet"]
            host = get.get("host") or pod_ip
            conn_cls = (
                http.client.HTTPSConnection
                if get.get("scheme") == "HTTPS"
                else http.client.HTTPConnection
            )
            conn = conn_cls(host, _port(container, get["port"]), timeout=timeout)
            headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
            try:
                conn.request("GET", get.get("path", "/"), headers=headers)
                status = conn.getresponse().status
            finally:
                conn.close()
            ok = 200 <= status < 400
            return ok, "" if ok else f"HTTP probe failed with statuscode: {status}"
        if "tcpSocket" in spec:
            tcp = spec["tcpSocket"]
            port = _port(container, tcp["port"])
            with socket.create_connection((tcp.get("host") or pod_ip, port), timeout=timeout):
                return True, ""
        if "exec" in spec:
            cmd = [
                "nsenter", f"--target={pid}", "--net", "--mount", "--uts",
                f"--setuid={uid}", f"--setgid={gid}", "--", *spec["exec"]["command"],
            ]  # fmt: skip
            result = subprocess.run(
                cmd, env=env, capture_output=True, timeout=timeout, check=False, text=True
            )
            out = (result.stdout + result.stderr).strip()
            return result.returncode == 0, out or f"command exited with {result.returncode}"
    except (OSError, subprocess.TimeoutExpired, http.client.HTTPException, ValueError) as e:
        return False, f"probe failed: {e}"
    return False, f"probe type {sorted(spec)} is not supported on host-0"
