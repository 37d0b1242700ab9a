"""Active/standby replicas: only the holder of a coordination.k8s.io Lease runs the controller.

A standby only reads the Lease (one GET per retry period) and answers its liveness probe; it
opens no watches and writes nothing until the Lease expires, then takes it over and starts
reconciling. A leader that cannot renew exits at once, so two replicas never reconcile together;
its pod restarts as a standby. kopf's own peering would keep writing from every replica and
freezes peers of equal priority, hence a Lease.
"""

from __future__ import annotations

import http.server
import logging
import os
import signal
import threading
from types import FrameType
from typing import Any

from kubernetes.leaderelection import electionconfig, leaderelection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

from slm_operator import metrics
from slm_operator.settings import OperatorSettings

log = logging.getLogger(__name__)

LOST_LEADERSHIP_EXIT: int = 75


class _StandbyHealth(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        """200 on /healthz: a standby is healthy while it waits."""
        status = 200 if self.path == "/healthz" else 404
        body = b'{"status": "standby"}' if status == 200 else b"{}"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Probes are not worth a log line."""


def wait_for_leadership(settings: OperatorSettings) -> None:
    """Block until this replica holds the Lease; keep renewing it in a background thread."""
    leading = threading.Event()
    health = http.server.ThreadingHTTPServer(("0.0.0.0", settings.health_port), _StandbyHealth)  # noqa: S104
    threading.Thread(target=health.serve_forever, name="standby-health", daemon=True).start()
    renew = max(2, settings.lease_seconds * 2 // 3)
    retry = max(1, renew // 4)
    config = electionconfig.Config(  # type: ignore[no-untyped-call]
        LeaseLock(settings.lease_name, settings.lease_namespace, settings.identity),  # type: ignore[no-untyped-call]
        lease_duration=settings.lease_seconds,
        renew_deadline=renew,
        retry_period=retry,
        onstarted_leading=leading.set,
        onstopped_leading=_lost,
    )
    election = leaderelection.LeaderElection(config)  # type: ignore[no-untyped-call]
    # The library logs every retry period at INFO ("lease held by ... has not expired").
    logging.getLogger("leaderelection").setLevel(logging.WARNING)
    log.info(
        "standby as %s: waiting for Lease %s/%s",
        settings.identity,
        settings.lease_namespace,
        settings.lease_name,
    )
    threading.Thread(target=election.run, name="leader-election", daemon=True).start()
    # In a container the operator is PID 1, which the kernel spares from signals it has no
    # handler for: without one a standby would ignore SIGTERM until the kubelet's SIGKILL.
    # (kopf installs its own once the controller starts.)
    previous = signal.signal(signal.SIGTERM, _stop_standby)
    try:
        leading.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    health.shutdown()
    health.server_close()
    metrics.LEADER.set(1)
    log.info("leading as %s: starting the controller", settings.identity)


def _stop_standby(signum: int, frame: FrameType | None) -> None:
    log.info("stopping: standby, nothing to hand over")
    raise SystemExit(0)


def _lost() -> None:
    log.error("lost the leader Lease; exiting so that only one replica reconciles")
    logging.shutdown()
    os._exit(LOST_LEADERSHIP_EXIT)
