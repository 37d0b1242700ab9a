"""Prometheus metrics of one runtime, on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """The runtime's metrics; one instance per app so tests and reloads never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "slm_runtime_requests",
            "HTTP requests by route and status code.",
            ["route", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "slm_runtime_request_duration_seconds",
            "Time from request to the last byte of the response.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "slm_runtime_time_to_first_token_seconds",
            "Time from request to the first generated token.",
            ["route"],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "slm_runtime_prompt_tokens", "Prompt tokens processed.", registry=r
        )
        self.cached_prompt_tokens = Counter(
            "slm_runtime_prompt_cached_tokens",
            "Prompt tokens found in the KV cache of an earlier request and not evaluated again.",
            registry=r,
        )
        self.generated_tokens = Counter(
            "slm_runtime_generated_tokens", "Tokens generated.", registry=r
        )
        self.in_flight = Gauge(
            "slm_runtime_requests_in_flight", "Requests holding a sequence slot.", registry=r
        )
        self.last_request = Gauge(
            "slm_runtime_last_request_timestamp_seconds",
            "Unix time at which the last API request ended (the server's start until one has); "
            "the gateway reads it to tell how long a model has been idle.",
            registry=r,
        )
        self.last_request.set_to_current_time()
        self.queued = Gauge(
            "slm_runtime_requests_queued", "Requests waiting for a sequence slot.", registry=r
        )
        self.kv_cache_usage = Gauge(
            "slm_runtime_kv_cache_usage_ratio",
            "Fraction of the KV cache (context length x parallel sequences) that running requests "
            "hold, from 0 to 1; prefixes kept for reuse by later requests count as free.",
            registry=r,
        )
        self.load_seconds = Gauge(
            "slm_runtime_model_load_seconds", "Seconds the model took to load.", registry=r
        )
        self.device = Info(
            "slm_runtime_device", "The device and engine serving the model.", registry=r
        )
