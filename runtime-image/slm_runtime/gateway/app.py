"""The gateway's HTTP app: one endpoint for every LocalModel the installation watches.

A request names its model (``model`` in the body, as both API families do); the gateway finds
that LocalModel's ready replicas, checks the caller's token against the model's, picks a
replica (least in-flight requests, or prefix affinity) and relays the answer as it comes. A
model with no ready replica holds the request (bounded, with a timeout); a model scaled to
zero is asked for one replica first. Errors answer in the API family's own shape.

The routes; ``service.Gateway`` holds the state behind them."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from slm_runtime.config import HEALTHZ_PATH, METRICS_PATH, READYZ_PATH
from slm_runtime.errors import (
    APIError,
    busy_response,
    install_handlers,
    is_openai,
)
from slm_runtime.gateway.core import (
    Balance,
    Model,
    prompt_prefix,
)
from slm_runtime.gateway.service import FORWARDED, ClientGoneError, Gateway, HoldQueueFullError

MANAGED: Final = (
    ("/api/pull", "POST"),
    ("/api/push", "POST"),
    ("/api/create", "POST"),
    ("/api/copy", "POST"),
    ("/api/delete", "DELETE"),
)


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) past ``limit`` bytes before more is read."""
    too_large = APIError(413, f"the request body exceeds {limit} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _model_card(name: str, model: Model) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": model.namespace}


def _tag(name: str, model: Model) -> dict[str, Any]:
    tag = name if ":" in name else f"{name}:latest"
    return {
        "name": tag,
        "model": tag,
        "modified_at": "1970-01-01T00:00:00Z",
        "size": model.size_bytes,
        "digest": model.digest.removeprefix("sha256:"),
        "details": {"format": "", "family": "", "parameter_size": "", "quantization_level": ""},
    }


def create_gateway_app(
    gateway: Gateway, background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = ()
) -> FastAPI:
    """The app; the ``background`` coroutines (the watches, the scale-to-zero loop) run while
    it serves."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        await gateway.open()
        tasks = [loop.create_task(start()) for start in background]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await gateway.close()

    app = FastAPI(title="slm-gateway", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.gateway = gateway
    install_handlers(app)

    @app.exception_handler(HoldQueueFullError)
    async def _busy(request: Request, exc: HoldQueueFullError) -> JSONResponse:
        return busy_response(
            request, "too many requests are waiting for this model to start; retry later"
        )

    async def relay(request: Request) -> Response:
        raw = await _body(request, gateway.settings.max_body)
        try:
            body = json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError) as exc:
            raise APIError(400, f"the request body is not valid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        model = gateway.resolve(body.get("model") or body.get("name"))
        labels = (model.namespace, model.name)
        status = 500
        try:
            await gateway.authorize(request, model)
            requested = str(body.get("model") or body.get("name"))
            if "/" in requested:  # namespace/name: the replica knows its model by name
                body["model" if "model" in body else "name"] = model.name
                raw = json.dumps(body).encode()
            try:
                model = await gateway.ready(model, request)
            except HoldQueueFullError:
                status = 429 if is_openai(request) else 503
                raise
            except ClientGoneError:
                status = 499  # nginx's "client closed request": nobody reads this answer
                return Response(status_code=status)
            prefix = (  # only prefix affinity reads the prompt
                prompt_prefix(body, gateway.settings.prefix_length)
                if gateway.settings.balance is Balance.PREFIX_AFFINITY
                else ""
            )
            response = await gateway.forward(request, model, raw, prefix)
            status = response.status_code
            return response
        except APIError as exc:
            status = exc.status
            raise
        finally:
            gateway.metrics.requests.labels(*labels, str(status)).inc()

    for path in FORWARDED:
        app.add_route(path, relay, methods=["POST"], include_in_schema=False)

    async def managed(request: Request) -> Response:
        raise APIError(
            403,
            f"{request.method} {request.url.path} is refused: models are managed by LocalModel "
            "objects; create, change or delete a LocalModel instead",
        )

    for path, method in MANAGED:
        app.add_api_route(path, managed, methods=[method], include_in_schema=False)

    async def visible(request: Request) -> list[tuple[str, Model]]:
        found = []
        for model in gateway.directory.models():
            try:
                opens = await gateway.allowed(request, model)
            except APIError:  # a token that cannot be checked now, or a Failed model
                continue
            if opens:
                found.append((gateway.directory.public_name(model), model))
        return found

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        return {"object": "list", "data": [_model_card(n, m) for n, m in await visible(request)]}

    @app.get("/v1/models/{name:path}")
    async def one_model(name: str, request: Request) -> Any:
        model = gateway.resolve(name)
        await gateway.authorize(request, model)
        return _model_card(gateway.directory.public_name(model), model)

    @app.get("/api/tags")
    async def tags(request: Request) -> Any:
        return {"models": [_tag(n, m) for n, m in await visible(request)]}

    @app.get("/api/ps")
    async def running(request: Request) -> Any:
        return {"models": [_tag(n, m) for n, m in await visible(request) if m.endpoints]}

    @app.get("/api/version")
    async def api_version() -> Any:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return {"version": version("slm-operator")}
        except PackageNotFoundError:
            return {"version": "0.0.0"}

    @app.get(HEALTHZ_PATH)
    async def healthz() -> Any:
        return {"status": "ok"}

    @app.get(READYZ_PATH)
    async def readyz() -> JSONResponse:
        if gateway.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if not gateway.synced:
            return JSONResponse({"status": "syncing"}, status_code=503)
        return JSONResponse({"status": "ready", "models": len(gateway.directory.models())})

    @app.get(METRICS_PATH, response_class=PlainTextResponse)
    async def metrics() -> Response:
        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=PlainTextResponse)
    @app.head("/", response_class=PlainTextResponse)
    async def root() -> str:
        return "Ollama is running"

    return app
