"""Run the host-0 node agent: `python -m hostnode --kubeconfig ... --state-dir ...`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType

from kubernetes import config

from .agent import Agent


def main() -> None:
    """Parse flags, then serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="hostnode", description=__doc__)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--node-name", default="host-0")
    parser.add_argument(
        "--container-path",
        default="/usr/local/bin:/usr/bin:/bin",
        help="PATH given to containers (their commands come from the host)",
    )
    parser.add_argument("--kubelet-version", default="v1.36.3")
    parser.add_argument(
        "--restart-backoff",
        type=float,
        default=1.0,
        help="first crash-loop back-off in seconds (doubles, capped at 20)",
    )
    parser.add_argument("--tls-cert-file", help="serve container logs (kubectl logs) with this")
    parser.add_argument("--tls-private-key-file")
    parser.add_argument("--client-ca-file", help="CA of the API server's kubelet client cert")
    parser.add_argument(
        "--share",
        action="append",
        default=[],
        help="a folder under /root that pods still see (the repository)",
    )
    args = parser.parse_args()  # fmt: skip
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    args.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    api = config.new_client_from_config(config_file=args.kubeconfig)  # type: ignore[no-untyped-call]
    agent = Agent(
        api, args.node_name, args.state_dir, args.container_path, args.kubelet_version,
        args.restart_backoff,
        tls=(args.tls_cert_file, args.tls_private_key_file, args.client_ca_file)
        if args.tls_cert_file
        else None,
        shared=tuple(args.share),
    )  # fmt: skip

    def stop(signum: int, frame: FrameType | None) -> None:
        agent.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    agent.run()


if __name__ == "__main__":
    main()
