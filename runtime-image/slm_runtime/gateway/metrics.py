"""The gateway's Prometheus metrics, on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_HOLD_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 30, 60, 120, 300)


class GatewayMetrics:
    """Requests, holds, upstream choices, errors and scale writes, by model."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        model = ["namespace", "localmodel"]
        self.requests = Counter(
            "slm_gateway_requests",
            "Model requests by the model they named and the status code answered.",
            [*model, "code"],
            registry=r,
        )
        self.in_flight = Gauge(
            "slm_gateway_requests_in_flight",
            "Requests forwarded to a replica and not yet answered in full.",
            model,
            registry=r,
        )
        self.upstream = Counter(
            "slm_gateway_upstream_requests",
            "Requests forwarded, by the replica (pod) chosen.",
            [*model, "pod"],
            registry=r,
        )
        self.held = Gauge(
            "slm_gateway_requests_held",
            "Requests waiting for the model to have a ready replica.",
            model,
            registry=r,
        )
        self.hold_seconds = Histogram(
            "slm_gateway_hold_seconds",
            "Time a request waited for a ready replica (only requests that waited).",
            model,
            buckets=_HOLD_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "slm_gateway_errors",
            "Requests the gateway could not complete, by reason: queue_full, hold_timeout, "
            "unavailable, upstream_connect, upstream_broken, unauthorized, not_found.",
            [*model, "reason"],
            registry=r,
        )
        self.scale_writes = Counter(
            "slm_gateway_scale_writes",
            "Writes to a model Deployment's scale subresource, by direction (up: 0 -> 1, "
            "down: 1 -> 0).",
            [*model, "direction"],
            registry=r,
        )
