"""What every API family's answers share: typed, closed models, and how a stream of them is
framed on the wire (OpenAI's server-sent events, Ollama's JSON lines)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

JSON = "application/json"
SSE = "text/event-stream"
NDJSON = "application/x-ndjson"


class ReplyBody(BaseModel):
    """An answer or a part of one: only its declared fields, each written, null included,
    unless declared with :func:`omitted`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def wire(self) -> bytes:
        """The answer as JSON, as it goes out (UTF-8, field aliases)."""
        return self.model_dump_json(by_alias=True).encode()


def _is_none(value: Any) -> bool:
    return value is None


def omitted(alias: str | None = None) -> Any:
    """A field that is left out of the answer, rather than written as null, while it is None."""
    return Field(default=None, exclude_if=_is_none, serialization_alias=alias)


def whole(answer: ReplyBody) -> Response:
    """A whole answer, serialised once by pydantic (FastAPI's encoder would walk it again)."""
    return Response(answer.wire(), media_type=JSON)


def framed(
    answer: ReplyBody | AsyncIterator[ReplyBody],
    frame: Callable[[AsyncIterator[ReplyBody]], StreamingResponse],
) -> Response:
    """What a serving method returned: the whole answer, or its parts framed by ``frame``."""
    return whole(answer) if isinstance(answer, ReplyBody) else frame(answer)


def sse(stream: AsyncIterator[ReplyBody]) -> StreamingResponse:
    """``data:`` events, one per part, ended by ``data: [DONE]``."""

    async def frames() -> AsyncIterator[bytes]:
        async for part in stream:
            yield b"data: " + part.wire() + b"\n\n"
        yield b"data: [DONE]\n\n"

    return StreamingResponse(frames(), media_type=SSE)


def named_sse(stream: AsyncIterator[ReplyBody], kind: str = "type") -> StreamingResponse:
    """Events named by each part's ``kind`` field, as the Responses API streams them."""

    async def frames() -> AsyncIterator[bytes]:
        async for part in stream:
            name = getattr(part, kind)
            yield b"event: " + name.encode() + b"\ndata: " + part.wire() + b"\n\n"

    return StreamingResponse(frames(), media_type=SSE)


def ndjson(stream: AsyncIterator[ReplyBody]) -> StreamingResponse:
    """One JSON object per line, as Ollama streams."""

    async def lines() -> AsyncIterator[bytes]:
        async for part in stream:
            yield part.wire() + b"\n"

    return StreamingResponse(lines(), media_type=NDJSON)
