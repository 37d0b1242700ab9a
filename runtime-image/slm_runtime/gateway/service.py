"""The gateway's state behind its routes: the directory of models, who may call them, holding a
request until a replica is ready, picking a replica, relaying to it, and scaling idle models
to zero."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import httpx
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import Receive, Scope, Send

from slm_runtime.config import METRICS_PATH
from slm_runtime.errors import (
    APIError,
    error_body,
)
from slm_runtime.gateway.core import (
    Balance,
    Holds,
    Model,
    Ring,
    choose,
    idle_for,
    wants_scale_down,
    wants_scale_up,
)
from slm_runtime.gateway.directory import AmbiguousModelError, Directory
from slm_runtime.gateway.kube import SecretUnavailableError
from slm_runtime.gateway.metrics import GatewayMetrics

log = logging.getLogger("slm_gateway")


FORWARDED: Final = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/api/embeddings",
    "/api/show",
)
"""POST routes relayed to the model the body names."""


_HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


_NOT_RELAYED: Final = frozenset(name.encode() for name in (*_HOP_BY_HOP, "date", "server"))
"""Answer headers not relayed: the hop-by-hop ones, and those the gateway's own server sets
(uvicorn writes its Date)."""


_STREAMS: Final = ("text/event-stream", "application/x-ndjson")
AVOID_SECONDS: Final = 5.0
"""How long a replica that refused a connection is passed over while others remain."""


KEEPALIVE_SECONDS: Final = 4.0
"""An upstream connection idle longer than this is not used again: below the runtime's 5 s
(uvicorn's default), so no request goes out on a connection the replica may be closing."""


TokenDigest = Callable[[str, str], Awaitable[bytes | None]]
"""(namespace, Secret name) -> sha256 of the Secret's token; None when there is no such Secret,
``b""`` when it holds no token; raises SecretUnavailableError when it cannot be read now."""


Scale = Callable[[str, str, int, int], Awaitable[bool]]
"""(namespace, Deployment, when, to) -> whether the replicas were written."""


@dataclass(frozen=True)
class Settings:
    """How the gateway balances, holds and scales."""

    balance: Balance = Balance.LEAST_LOAD
    prefix_length: int = 256
    load_factor: float = 1.25
    hold_queue: int = 64
    hold_timeout: float = 300.0
    idle_check_seconds: float = 5.0
    max_body: int = 16 * 1024 * 1024
    namespace_token_secret: str | None = None
    """A Secret of this name in a namespace (key ``token``) is the token of every model there
    that has no ``serving.authSecret`` of its own."""


class HoldQueueFullError(Exception):
    """The model's hold queue is full."""


class ClientGoneError(Exception):
    """The client of a held request went away."""


class Gateway:
    """The state behind the routes: the directory, in-flight counts, holds and scaling."""

    def __init__(
        self,
        directory: Directory,
        settings: Settings,
        metrics: GatewayMetrics,
        *,
        token_digest: TokenDigest | None = None,
        scale: Scale | None = None,
    ) -> None:
        self.directory = directory
        self.settings = settings
        self.metrics = metrics
        self.token_digest = token_digest
        self.scale = scale
        self.started = time.monotonic()
        self.synced = False
        self.draining = False
        self._client: aiohttp.ClientSession | None = None
        self.holds = Holds(settings.hold_queue)
        self._pod_in_flight: dict[str, int] = {}
        self._model_in_flight: dict[str, int] = {}
        self._last_request: dict[str, float] = {}
        self._avoid: dict[str, float] = {}
        self._rings: dict[str, Ring] = {}
        self._turn = itertools.count()
        self._scaling: dict[str, asyncio.Task[None]] = {}
        self._changed = asyncio.Event()
        self._upstream_series: set[tuple[str, str, str]] = set()

    async def open(self) -> None:
        """Open the upstream connection pool (in the serving loop)."""
        self._client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_SECONDS),
            timeout=aiohttp.ClientTimeout(total=None, connect=10.0),
            auto_decompress=False,  # bodies pass through as the replica encoded them
            # The caller's headers go on as they came, with none added.
            skip_auto_headers=("Accept", "Accept-Encoding", "Content-Type", "User-Agent"),
            cookie_jar=aiohttp.DummyCookieJar(),  # a replica's cookies are not every caller's
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    @property
    def client(self) -> aiohttp.ClientSession:
        if self._client is None:
            raise RuntimeError("the gateway's upstream pool is not open")
        return self._client

    def changed(self) -> None:
        """The directory changed: wake every held request to look again, and drop the series of
        replicas that are gone."""
        self._changed.set()
        self._changed = asyncio.Event()
        live = {(m.namespace, m.name, pod) for m in self.directory.models() for pod in m.endpoints}
        for labels in self._upstream_series - live:
            self.metrics.upstream.remove(*labels)
        self._upstream_series &= live

    # --- per request --------------------------------------------------------------------------

    def resolve(self, requested: Any) -> Model:
        if not isinstance(requested, str) or not requested:
            raise APIError(400, "model is required: name the LocalModel to use")
        try:
            model = self.directory.resolve(requested)
        except AmbiguousModelError as exc:
            raise APIError(400, str(exc), code="model_ambiguous") from exc
        if model is None:
            self.metrics.errors.labels("", "", "not_found").inc()
            raise APIError(
                404,
                f'model "{requested}" not found; GET /v1/models or /api/tags lists the models '
                "you may use",
                code="model_not_found",
            )
        return model

    async def allowed(self, request: Request, model: Model) -> bool:
        """Whether the caller's bearer token opens the model: the token of its
        ``serving.authSecret`` (which its replicas check too); for a model without one, the
        token of its namespace's token Secret where that exists; otherwise any caller."""
        secret = model.auth_secret or self.settings.namespace_token_secret
        if secret is None:
            return True
        expected = await self._digest(model, secret)
        if expected is None and model.auth_secret is None:
            return True  # the namespace has no token Secret: the model is open
        if not expected:  # its Secret is missing or holds no token: closed
            if model.phase == "Failed":  # the operator says why (SecretNotFound)
                raise self._failed(model)
            return False
        given = request.headers.get("authorization", "")
        if not given.startswith("Bearer "):
            return False
        # The replica compares the header with its token as given, so does this.
        actual = hashlib.sha256(given.removeprefix("Bearer ").encode()).digest()
        return hmac.compare_digest(actual, expected)

    async def _digest(self, model: Model, secret: str) -> bytes | None:
        if self.token_digest is None:
            return None
        try:
            return await self.token_digest(model.namespace, secret)
        except SecretUnavailableError as exc:
            log.warning("%s", exc)
            raise APIError(
                503, f'the token of model "{model.name}" cannot be checked right now; retry'
            ) from exc

    async def authorize(self, request: Request, model: Model) -> None:
        if not await self.allowed(request, model):
            self.metrics.errors.labels(model.namespace, model.name, "unauthorized").inc()
            raise APIError(
                401,
                f'missing or invalid API token for model "{model.name}": send Authorization: '
                "Bearer <token> with the token of its serving.authSecret or of its namespace",
                code="invalid_api_key",
            )

    def _failed(self, model: Model) -> APIError:
        self.metrics.errors.labels(model.namespace, model.name, "unavailable").inc()
        return APIError(
            503,
            f'model "{model.name}" is Failed; kubectl describe localmodel -n '
            f"{model.namespace} {model.name} says what to change",
        )

    async def ready(self, model: Model, request: Request) -> Model:
        """The model with a ready replica: at once, or after holding the request until one is
        Ready (asking for a replica when the model is scaled to zero). A held request whose
        client goes away gives its place back."""
        if model.endpoints:
            return model
        if model.phase == "Failed":
            raise self._failed(model)
        if not self.holds.admit(model.key):
            self.metrics.errors.labels(model.namespace, model.name, "queue_full").inc()
            raise HoldQueueFullError
        labels = (model.namespace, model.name)
        self.metrics.held.labels(*labels).inc()
        started = time.monotonic()
        deadline = started + self.settings.hold_timeout
        try:
            current: Model | None = model
            while True:
                changed = self._changed
                current = self.directory.get(model.key)
                if current is None:
                    raise APIError(
                        404, f'model "{model.name}" was deleted while the request waited'
                    )
                if current.endpoints:
                    return current
                if current.phase == "Failed":
                    raise self._failed(current)
                if await request.is_disconnected():
                    raise ClientGoneError
                if wants_scale_up(current):
                    self._scale_up(current)
                self._last_request[model.key] = time.monotonic()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.metrics.errors.labels(*labels, "hold_timeout").inc()
                    raise APIError(
                        503,
                        f'model "{model.name}" has no ready replica after '
                        f"{self.settings.hold_timeout:g}s (phase {current.phase or 'unknown'}); "
                        "retry later, or see kubectl describe localmodel -n "
                        f"{model.namespace} {model.name}",
                    )
                with contextlib.suppress(TimeoutError):  # look at the client every second
                    await asyncio.wait_for(changed.wait(), min(remaining, 1.0))
        finally:
            self.holds.release(model.key)
            self.metrics.held.labels(*labels).dec()
            self.metrics.hold_seconds.labels(*labels).observe(time.monotonic() - started)

    def _scale_up(self, model: Model) -> None:
        task = self._scaling.get(model.key)
        if self.scale is None or (task is not None and not task.done()):
            return
        self._scaling[model.key] = asyncio.get_running_loop().create_task(
            self._write_scale(model, 0, 1)
        )

    async def _write_scale(self, model: Model, when: int, to: int) -> None:
        if self.scale is None:
            return
        try:
            if await self.scale(model.namespace, model.name, when, to):
                direction = "up" if to > when else "down"
                self.metrics.scale_writes.labels(model.namespace, model.name, direction).inc()
                log.info(
                    "scaled %s from %d to %d replicas",
                    model.key,
                    when,
                    to,
                    extra={"localmodel": model.key},
                )
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            log.warning("cannot scale %s from %d to %d: %s", model.key, when, to, exc)

    def _pick(self, model: Model, prefix: str, tried: set[str]) -> str | None:
        now = time.monotonic()
        left = [p for p in model.endpoints if p not in tried]
        fresh = [p for p in left if self._avoid.get(model.endpoints[p], 0.0) <= now]
        candidates = sorted(fresh or left)
        if not candidates:
            return None
        ring = None
        if self.settings.balance is Balance.PREFIX_AFFINITY:
            ring_key = f"{model.key}|{','.join(candidates)}"
            ring = self._rings.get(ring_key)
            if ring is None:
                if len(self._rings) > 1024:
                    self._rings.clear()
                ring = self._rings[ring_key] = Ring(candidates)
        in_flight = {p: self._pod_in_flight.get(model.endpoints[p], 0) for p in candidates}
        return choose(
            self.settings.balance,
            candidates,
            in_flight,
            prefix,
            turn=next(self._turn),
            ring=ring,
            load_factor=self.settings.load_factor,
        )

    def _begin(self, model: Model, url: str) -> None:
        self._pod_in_flight[url] = self._pod_in_flight.get(url, 0) + 1
        self._model_in_flight[model.key] = self._model_in_flight.get(model.key, 0) + 1
        self.metrics.in_flight.labels(model.namespace, model.name).inc()

    def _end(self, model: Model, url: str) -> None:
        self._pod_in_flight[url] -= 1
        if not self._pod_in_flight[url]:
            del self._pod_in_flight[url]
        self._model_in_flight[model.key] -= 1
        self.metrics.in_flight.labels(model.namespace, model.name).dec()
        self._last_request[model.key] = time.monotonic()

    async def forward(self, request: Request, model: Model, body: bytes, prefix: str) -> Response:
        """Send the request to one ready replica and relay its answer; a replica that refuses
        the connection is passed over for another (nothing was sent yet)."""
        tried: set[str] = set()
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
        while True:
            pod = self._pick(model, prefix, tried)
            if pod is None:
                self.metrics.errors.labels(model.namespace, model.name, "upstream_connect").inc()
                raise APIError(
                    503, f'no replica of model "{model.name}" accepted the connection; retry'
                )
            base = model.endpoints[pod]
            url = base + request.url.path + (f"?{request.url.query}" if request.url.query else "")
            self._begin(model, base)
            started = time.perf_counter()
            try:
                response = await self.client.request(
                    request.method, url, headers=headers, data=body, allow_redirects=False
                )
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                self._end(model, base)
                tried.add(pod)
                self._avoid[base] = time.monotonic() + AVOID_SECONDS
                log.warning("replica %s of %s refused the connection: %s", pod, model.key, exc)
                continue
            except aiohttp.ClientError as exc:
                self._end(model, base)
                self.metrics.errors.labels(model.namespace, model.name, "upstream_broken").inc()
                raise APIError(502, f'replica {pod} of model "{model.name}" failed: {exc}') from exc
            except BaseException:  # cancelled (shutdown): nothing is in flight any more
                self._end(model, base)
                raise
            self.metrics.upstream.labels(model.namespace, model.name, pod).inc()
            self._upstream_series.add((model.namespace, model.name, pod))
            return await self._relay(request, model, base, pod, response, started)

    async def _relay(
        self,
        request: Request,
        model: Model,
        base: str,
        pod: str,
        response: aiohttp.ClientResponse,
        started: float,
    ) -> Response:
        media = response.headers.get("content-type", "")
        streamed = media.startswith(_STREAMS)
        try:
            content = b""
            if not streamed:
                try:
                    content = await response.read()
                except aiohttp.ClientError as exc:
                    self.metrics.errors.labels(model.namespace, model.name, "upstream_broken").inc()
                    raise APIError(
                        502, f'replica {pod} of model "{model.name}" broke off its answer: {exc}'
                    ) from exc
            timing = "upstream-start" if streamed else "upstream"
            headers = _answer_headers(response, timing, started)
        except BaseException:
            response.release()
            self._end(model, base)
            raise
        if not streamed:
            response.release()
            self._end(model, base)
            answer = Response(content, response.status)
            answer.raw_headers.extend(headers)
            return answer

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.content.iter_any():
                    yield chunk
            except aiohttp.ClientError as exc:
                self.metrics.errors.labels(model.namespace, model.name, "upstream_broken").inc()
                log.warning("replica %s of %s broke off a stream: %s", pod, model.key, exc)
                message = f'replica {pod} of model "{model.name}" failed mid-answer; retry'
                yield _stream_error(request, media, message)

        closed = False

        async def close() -> None:
            nonlocal closed
            if not closed:
                closed = True
                response.release()  # kept for reuse when read to its end, else closed
                self._end(model, base)

        relayed = _Relayed(relay(), response.status, on_close=close)
        relayed.raw_headers.extend(headers)
        return relayed

    # --- scale to zero ------------------------------------------------------------------------

    async def replicas_idle(self, model: Model) -> float | None:
        """Seconds since any replica last answered an API request (their own record, so
        callers that bypass this gateway count too); 0 while one has work; None when a replica
        cannot tell."""
        newest = 0.0
        for base in model.endpoints.values():
            try:
                async with self.client.get(
                    base + METRICS_PATH, timeout=aiohttp.ClientTimeout(total=5.0)
                ) as got:
                    got.raise_for_status()
                    text = await got.text()
            except (aiohttp.ClientError, TimeoutError):
                return None
            try:
                busy, last = _idle_signals(text)
            except ValueError:
                return None
            if busy or last is None:
                return 0.0 if busy else None
            newest = max(newest, last)
        return time.time() - newest if newest else None

    async def scale_down_idle(self) -> None:
        """One look at every model that may go to zero."""
        now = time.monotonic()
        for model in self.directory.models():
            if model.scale_to_zero_after is None:
                continue
            if not wants_scale_down(model, *self._activity(model, now)):
                continue
            theirs = await self.replicas_idle(model)
            if theirs is None:
                continue
            # Look again: a request may have come while the replicas were asked.
            current = self.directory.get(model.key)
            in_flight, held, mine = self._activity(model, time.monotonic())
            if current is not None and wants_scale_down(
                current, in_flight, held, min(mine, theirs)
            ):
                await self._write_scale(current, 1, 0)

    def _activity(self, model: Model, now: float) -> tuple[int, int, float]:
        """(requests in flight, requests held, idle seconds) of a model through this gateway."""
        return (
            self._model_in_flight.get(model.key, 0),
            self.holds.held(model.key),
            idle_for(self._last_request.get(model.key), self.started, now),
        )

    async def scale_down_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.idle_check_seconds)
            if self.scale is not None:
                try:
                    await self.scale_down_idle()
                except Exception:  # one failed look must not end the loop
                    log.exception("scale-to-zero check failed")


class _Relayed(StreamingResponse):
    """A relayed stream whose upstream is closed (and in-flight count released) however the
    response ends: finished, failed, or the client gone (Starlette runs no background task
    then)."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        status_code: int,
        *,
        on_close: Callable[[], Awaitable[None]],
    ) -> None:
        super().__init__(content, status_code)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._on_close()


def _answer_headers(
    response: aiohttp.ClientResponse, timing: str, started: float
) -> list[tuple[bytes, bytes]]:
    """The replica's headers as it sent them (repeats kept), less the hop-by-hop ones, and a
    Server-Timing entry (W3C Server Timing) with the replica's share, so a caller can tell the
    model's time from the gateway's: ``upstream`` for a whole answer, ``upstream-start`` until a
    stream's first byte."""
    headers = [
        (lowered, value)
        for name, value in response.raw_headers
        if (lowered := name.lower()) not in _NOT_RELAYED
    ]
    duration = (time.perf_counter() - started) * 1000
    headers.append((b"server-timing", f"{timing};dur={duration:.3f}".encode()))
    return headers


def _idle_signals(text: str) -> tuple[bool, float | None]:
    """(whether requests are running or queued, the last request's Unix time) from a runtime's
    metrics."""
    busy, last = False, None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("slm_runtime_requests_in_flight", "slm_runtime_requests_queued"):
                busy = busy or sample.value > 0
            elif sample.name == "slm_runtime_last_request_timestamp_seconds":
                last = sample.value
    return busy, last


def _stream_error(request: Request, media: str, message: str) -> bytes:
    """A last event that clients read as an error: the API family's error body, in the
    stream's own framing."""
    body = json.dumps(error_body(request, 500, message))
    if media.startswith("text/event-stream"):
        return f"data: {body}\n\n".encode()
    return (body + "\n").encode()
