"""Probes and metrics: open to everyone, never behind the API token."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from slm_runtime.config import HEALTHZ_PATH, METRICS_PATH, READYZ_PATH
from slm_runtime.state import RuntimeState

router = APIRouter()


@router.get(HEALTHZ_PATH)
async def healthz() -> JSONResponse:
    """The process is up and serving HTTP."""
    return JSONResponse({"status": "ok"})


@router.get(READYZ_PATH)
async def readyz(request: Request) -> JSONResponse:
    """Ready when the model is loaded and the server is not draining; reports the device."""
    state: RuntimeState | None = request.app.state.runtime
    if state is None:
        return JSONResponse({"status": "loading"}, status_code=503)
    body = {
        "status": "draining" if state.admission.draining else "ready",
        "model": state.config.model_name,
        "device": state.engine.device.value,
        "engine": state.engine.engine_name,
        "cpuBackend": state.engine.cpu_backend,
        "fallback": {device.value: error for device, error in state.device_failures.items()},
    }
    return JSONResponse(body, status_code=503 if state.admission.draining else 200)


@router.get(METRICS_PATH, response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    return Response(
        generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )


@router.get("/", response_class=PlainTextResponse)
@router.head("/", response_class=PlainTextResponse)
async def root() -> str:
    """What Ollama answers at its root; clients probe it."""
    return "Ollama is running"
