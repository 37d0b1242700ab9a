"""The FastAPI app factory: lifespan loads the model, routers serve the API families."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from slm_runtime.api import health
from slm_runtime.api.ollama import router as ollama
from slm_runtime.api.ollama.serving import OllamaServing
from slm_runtime.api.openai import router as openai
from slm_runtime.api.openai.serving import OpenAIServing
from slm_runtime.config import (
    HEALTHZ_PATH,
    METRICS_PATH,
    MODEL_METADATA_FILE,
    READYZ_PATH,
    Api,
    RuntimeConfig,
)
from slm_runtime.engines import EngineError, LoadResult, load_engine
from slm_runtime.errors import error_response, install_handlers
from slm_runtime.integrity import model_problem
from slm_runtime.metrics import Metrics
from slm_runtime.state import RuntimeState

log = logging.getLogger(__name__)

EngineLoader = Callable[[RuntimeConfig], LoadResult]


def _model_digest(model_path: str) -> str:
    """The puller's digest from ``.slm-model.json`` beside (or inside) the model, if present."""
    path = Path(model_path)
    for folder in (path, path.parent):
        meta = folder / MODEL_METADATA_FILE
        if meta.is_file():
            try:
                digest = json.loads(meta.read_text(encoding="utf-8")).get("digest", "")
            except (OSError, ValueError):
                return ""
            return digest if isinstance(digest, str) else ""
    return ""


_NOT_USE = frozenset({HEALTHZ_PATH, READYZ_PATH, METRICS_PATH, "/", "unmatched"})
"""Routes whose requests do not keep a model from being idle: probes, scrapes, stray paths."""


class _Observe:
    """Pure ASGI middleware: request counts and latency by route, and the body size limit."""

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body
        self._too_large = f"the request body exceeds {max_body} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    # FastAPI lets HTTP exceptions through body parsing to the handlers.
                    raise StarletteHTTPException(413, self._too_large)
            return message

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        headers = dict(scope.get("headers", ()))
        declared_type = headers.get(b"content-type", b"")
        if scope["method"] == "POST" and (
            not declared_type or declared_type.startswith(b"application/x-www-form-urlencoded")
        ):
            # `curl -d` sends the form type by default, and some clients send none; the APIs
            # take only JSON, and read it either way, as Ollama does.
            headers[b"content-type"] = b"application/json"
            scope = {**scope, "headers": list(headers.items())}
        declared = headers.get(b"content-length")
        try:
            if declared is not None and declared.isdigit() and int(declared) > self.max_body:
                status = 413
                response = error_response(Request(scope), 413, self._too_large)
                await response(scope, receive, send)
                return
            await self.app(scope, limited_receive, observed_send)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            if label not in _NOT_USE:
                self.metrics.last_request.set_to_current_time()
            self.metrics.requests.labels(label, str(status)).inc()
            self.metrics.latency.labels(label).observe(time.monotonic() - started)


def create_app(
    config: RuntimeConfig,
    *,
    api_token: str | None = None,
    engine_loader: EngineLoader = load_engine,
) -> FastAPI:
    """Build the app for one model; the model loads in the lifespan, before traffic is accepted."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started = time.monotonic()
        problem = await asyncio.to_thread(model_problem, config.model_path)
        if problem is not None:
            app.state.startup_error = f"refusing to serve the model: {problem}"
            raise EngineError(problem)
        try:
            result = await asyncio.to_thread(engine_loader, config)
        except EngineError as exc:
            app.state.startup_error = f"the model could not be loaded: {exc}"
            raise
        load_seconds = time.monotonic() - started
        engine = result.engine
        metrics.load_seconds.set(load_seconds)
        capacity = engine.context_length * config.parallel
        metrics.kv_cache_usage.set_function(lambda: min(1.0, engine.kv_tokens() / capacity))
        metrics.device.info(
            {
                "device": engine.device.value,
                "engine": engine.engine_name,
                "engine_version": engine.engine_version,
                "format": engine.format.value,
                "model": config.model_name,
            }
        )
        state = RuntimeState.loaded(
            config, result, metrics, load_seconds, _model_digest(config.model_path)
        )
        app.state.runtime = state
        app.state.openai = OpenAIServing(state)
        app.state.ollama = OllamaServing(state)
        log.info(
            "serving %s on %s (%s) in %.2fs",
            config.model_name,
            engine.device.value,
            engine.engine_name,
            load_seconds,
        )
        try:
            yield
        finally:
            await asyncio.to_thread(engine.close)

    app = FastAPI(
        title="slm-runtime",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.metrics = metrics
    app.state.runtime = None
    install_handlers(app)
    app.include_router(health.router)
    if Api.OLLAMA in config.apis:
        app.include_router(ollama.build_router(api_token))
    if Api.OPENAI in config.apis:
        app.include_router(openai.build_router(api_token))
    app.add_middleware(_Observe, metrics=metrics, max_body=config.limits.max_request_bytes)
    return app
