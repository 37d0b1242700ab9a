"""`slm-operator`: run the LocalModel controller."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

import kopf

from slm_operator import metrics
from slm_operator.controller.kube import Kube
from slm_operator.settings import OperatorSettings


def main(argv: Sequence[str] | None = None) -> int:
    """Run the operator until it is stopped (SIGTERM / SIGINT)."""
    parser = argparse.ArgumentParser(prog="slm-operator", description=__doc__)
    parser.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable); default: SLM_OPERATOR_NAMESPACES, else all",
    )
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--log-format", choices=["plain", "full", "json"], default="full", help="log line format"
    )
    args = parser.parse_args(argv)

    settings = OperatorSettings()
    namespaces = args.namespace or settings.namespaces
    kopf.configure(
        verbose=args.verbose,
        log_format={
            "plain": kopf.LogFormat.PLAIN,
            "full": kopf.LogFormat.FULL,
            "json": kopf.LogFormat.JSON,
        }[args.log_format],
    )
    if not args.verbose:
        # kopf reports every handler call ("Handler 'pods_event' succeeded."): one line per
        # watch event. The operator logs what it does itself (slm_operator.* loggers).
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if settings.leader_election:
        from slm_operator.controller.lease import wait_for_leadership

        Kube.from_environment()  # the Lease client uses the default configuration
        wait_for_leadership(settings)
    else:
        metrics.LEADER.set(1)
    import slm_operator.handlers  # noqa: F401 - registers the handlers

    asyncio.run(
        kopf.operator(
            clusterwide=not namespaces,
            namespaces=namespaces,
            standalone=True,  # the Lease (controller/lease.py) decides which replica runs
            liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz",
            memo=kopf.Memo(namespaces=list(namespaces)),
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
