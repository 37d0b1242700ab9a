"""Errors the API answers with, and the exception handlers that give each API family its shape."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from slm_runtime.admission import DrainingError, OverloadedError
from slm_runtime.engines.base import (
    EngineError,
    GenerationFailedError,
    PromptTooLongError,
    UnsupportedError,
)

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "1"


class APIError(Exception):
    """An error with an HTTP status and a message for the client."""

    def __init__(self, status: int, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


MODEL_MANAGED_STATUS = 403
"""Model-management routes (pull, push, create, copy, delete) answer this: the request is
understood and permanently refused on this server, which clients do not retry as they retry
a 5xx; 405 would say the method is wrong, while no method of these routes is allowed."""


def model_managed(request: Request, model_name: str) -> APIError:
    """The refusal of a model-management route: the LocalModel owns the model."""
    return APIError(
        MODEL_MANAGED_STATUS,
        f"{request.method} {request.url.path} is refused: the model on this server is managed "
        f'by the LocalModel "{model_name}"; to serve another model change that LocalModel\'s '
        "spec (spec.model), to remove it delete the LocalModel",
    )


def is_openai(request: Request) -> bool:
    """Whether the request belongs to the OpenAI API family."""
    return request.url.path.startswith("/v1/") or request.url.path == "/v1"


_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    501: "not_implemented_error",
    503: "service_unavailable_error",
}


def error_body(request: Request, status: int, message: str, code: str | None = None) -> Any:
    """The error body in the request's API family shape."""
    if is_openai(request):
        return {
            "error": {
                "message": message,
                "type": _OPENAI_TYPES.get(status, "server_error"),
                "param": None,
                "code": code,
            }
        }
    return {"error": message}


def error_response(
    request: Request,
    status: int,
    message: str,
    *,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A JSON error response in the request's API family shape."""
    return JSONResponse(error_body(request, status, message, code), status, headers=headers)


def busy_response(request: Request, message: str) -> JSONResponse:
    """Too much waiting already: 429 for OpenAI (which its clients retry), 503 for Ollama, with
    Retry-After."""
    status = 429 if is_openai(request) else 503
    return error_response(
        request,
        status,
        message,
        code="rate_limit_exceeded" if status == 429 else None,
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        if err.get("type") == "json_invalid":
            return "the request body is not valid JSON: " + str(err.get("ctx", {}).get("error", ""))
        if err.get("type") == "invalid_unicode":  # the message names the field itself
            parts.append(str(err.get("msg")))
            continue
        where = ".".join(loc) or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def install_handlers(app: FastAPI) -> None:
    """Map every failure to its status code and family shape; nothing escapes as a crash."""

    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError) -> JSONResponse:
        return error_response(request, exc.status, exc.message, code=exc.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request, 400, _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        headers = dict(exc.headers) if exc.headers else None
        return error_response(request, exc.status_code, message, headers=headers)

    @app.exception_handler(OverloadedError)
    async def _overloaded(request: Request, exc: OverloadedError) -> JSONResponse:
        return busy_response(
            request,
            "the server is busy: every sequence slot is taken and the queue is full; retry later",
        )

    @app.exception_handler(DrainingError)
    async def _draining(request: Request, exc: DrainingError) -> JSONResponse:
        return error_response(
            request,
            503,
            "the server is shutting down; retry on another replica",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )

    @app.exception_handler(EngineError)
    async def _engine(request: Request, exc: EngineError) -> JSONResponse:
        if isinstance(exc, GenerationFailedError):
            return error_response(request, 500, "internal error while generating")
        if isinstance(exc, UnsupportedError):
            return error_response(request, 501, str(exc))
        if isinstance(exc, PromptTooLongError):
            return error_response(request, 400, str(exc), code="context_length_exceeded")
        return error_response(request, 400, str(exc))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s", request.url.path, exc_info=exc)
        return error_response(request, 500, "internal error")
