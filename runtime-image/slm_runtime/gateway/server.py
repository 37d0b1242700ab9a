"""`slm-runtime gateway`: watch the cluster's LocalModels and serve them behind one endpoint."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any

import uvicorn

from slm_runtime.gateway.app import create_gateway_app
from slm_runtime.gateway.core import Balance
from slm_runtime.gateway.directory import MODEL_SLICE_SELECTOR, Directory, static_objects
from slm_runtime.gateway.kube import ENDPOINT_SLICES, LOCALMODELS, Kube, in_cluster_client
from slm_runtime.gateway.metrics import GatewayMetrics
from slm_runtime.gateway.service import Gateway, Settings
from slm_runtime.server import setup_logging

log = logging.getLogger("slm_gateway")


def _env(name: str, default: str) -> str:
    return os.environ.get(f"SLM_GATEWAY_{name}", default)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``slm-runtime gateway``; each has an ``SLM_GATEWAY_*`` variable."""
    parser.add_argument("--port", type=int, default=int(_env("PORT", "8080")))
    parser.add_argument(
        "--namespaces",
        default=_env("NAMESPACES", ""),
        help="comma-separated namespaces whose LocalModels to serve; empty: every namespace",
    )
    parser.add_argument(
        "--balance",
        choices=[b.value for b in Balance],
        default=_env("BALANCE", Balance.LEAST_LOAD.value),
        help="LeastLoad: the replica with the fewest requests in flight; PrefixAffinity: "
        "consistent hashing of the prompt's start, with bounded load",
    )
    parser.add_argument(
        "--prefix-length",
        type=int,
        default=int(_env("PREFIX_LENGTH", "256")),
        help="characters of the prompt that prefix affinity hashes",
    )
    parser.add_argument(
        "--load-factor",
        type=float,
        default=float(_env("LOAD_FACTOR", "1.25")),
        help="prefix affinity sends a request elsewhere once its replica has this many times "
        "the mean load",
    )
    parser.add_argument(
        "--hold-queue",
        type=int,
        default=int(_env("HOLD_QUEUE", "64")),
        help="requests per model that may wait for a ready replica; more get 429/503",
    )
    parser.add_argument(
        "--hold-timeout",
        type=float,
        default=float(_env("HOLD_TIMEOUT", "300")),
        help="seconds a request waits for a ready replica before a 503",
    )
    parser.add_argument(
        "--idle-check",
        type=float,
        default=float(_env("IDLE_CHECK", "5")),
        help="seconds between looks for models idle past their scaleToZeroAfter",
    )
    parser.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="MODEL=URL[,URL...]",
        help="serve MODEL from these runtime URLs instead of watching the cluster (repeatable; "
        "no tokens, no scale to zero): for running outside Kubernetes and for benchmarks",
    )
    parser.add_argument(
        "--namespace-token-secret",
        default=_env("NAMESPACE_TOKEN_SECRET", ""),
        help="name of a Secret (key token) that, where a namespace has it, is the token of "
        "every model there without a serving.authSecret of its own; empty: none",
    )
    parser.add_argument("--drain-timeout", type=int, default=int(_env("DRAIN_TIMEOUT", "60")))
    parser.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
    )


class _DrainingServer(uvicorn.Server):
    """Answers /readyz 503 from the first signal, while in-flight answers finish."""

    def __init__(self, config: uvicorn.Config, gateway: Gateway) -> None:
        super().__init__(config)
        self._gateway = gateway

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._gateway.draining = True
        super().handle_exit(sig, frame)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; 0 on a clean shutdown."""
    setup_logging(args.log_level)
    settings = Settings(
        balance=Balance(args.balance),
        prefix_length=args.prefix_length,
        load_factor=args.load_factor,
        hold_queue=args.hold_queue,
        hold_timeout=args.hold_timeout,
        idle_check_seconds=args.idle_check,
        namespace_token_secret=args.namespace_token_secret or None,
    )
    directory = Directory()
    if args.upstream:
        try:
            upstreams = dict(_upstream(u) for u in args.upstream)
            models, slices = static_objects(upstreams)
        except ValueError as exc:
            log.error("invalid --upstream: %s", exc)
            return 2
        directory.sync_models(models)
        directory.sync_slices(slices)
        gateway = Gateway(directory, settings, GatewayMetrics())
        gateway.synced = True
        return _serve(args, gateway, [])
    namespaces = [n.strip() for n in args.namespaces.split(",") if n.strip()]
    kube = Kube(in_cluster_client())
    gateway = Gateway(
        directory,
        settings,
        GatewayMetrics(),
        token_digest=kube.token_digest,
        scale=lambda ns, name, when, to: kube.scale(ns, name, when=when, to=to),
    )
    directory.on_change = gateway.changed
    scopes: list[str | None] = [*namespaces] if namespaces else [None]
    synced = [asyncio.Event() for _ in range(2 * len(scopes))]

    async def watch_all() -> None:
        coros = []
        for i, namespace in enumerate(scopes):
            coros.append(
                kube.watch(LOCALMODELS, "localmodels", namespace, directory.sync_models,
                           directory.model_event, synced[2 * i])
            )  # fmt: skip
            coros.append(
                kube.watch(ENDPOINT_SLICES, "endpointslices", namespace, directory.sync_slices,
                           directory.slice_event, synced[2 * i + 1], MODEL_SLICE_SELECTOR)
            )  # fmt: skip
        await asyncio.gather(*coros)

    async def mark_synced() -> None:
        await asyncio.gather(*(event.wait() for event in synced))
        gateway.synced = True
        log.info("watching LocalModels in %s", ", ".join(namespaces) or "every namespace")

    return _serve(args, gateway, [watch_all, mark_synced, gateway.scale_down_loop])


def _upstream(text: str) -> tuple[str, list[str]]:
    name, sep, urls = text.partition("=")
    if not sep or not name or not urls:
        raise ValueError(f"{text!r} is not MODEL=URL[,URL...]")
    return name, [u.strip() for u in urls.split(",") if u.strip()]


def _serve(
    args: argparse.Namespace,
    gateway: Gateway,
    background: list[Callable[[], Coroutine[Any, Any, None]]],
) -> int:
    app = create_gateway_app(gateway, background)
    config = uvicorn.Config(
        app,
        host="0.0.0.0",  # noqa: S104 - the pod's address; the Service and NetworkPolicy bound it
        port=args.port,
        log_config=None,
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=args.drain_timeout or None,
        server_header=False,
        proxy_headers=False,
    )
    server = _DrainingServer(config, gateway)
    with contextlib.suppress(SystemExit):
        server.run()
    return 0 if server.started else 1
