"""Bearer-token authentication for the API routes (health and metrics stay open)."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request

from slm_runtime.errors import APIError


def bearer_auth(token: str | None) -> Callable[[Request], Coroutine[Any, Any, None]]:
    """A dependency that accepts only ``Authorization: Bearer <token>`` when a token is set."""
    expected = f"Bearer {token}".encode() if token else None

    async def check(request: Request) -> None:
        if expected is None:
            return
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise APIError(
                401,
                "missing or invalid API token: send Authorization: Bearer <token>",
                code="invalid_api_key",
            )

    return check
