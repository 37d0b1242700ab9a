"""The answer models on the wire: which fields are left out while unset and which are written as
null, as each API family writes them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from slm_runtime.api.ollama.protocol import (
    ChatMessageOut,
    ChatResponse,
    DebugInfo,
    GenerateResponse,
    TokenLogprobs,
    logprobs_of,
)
from slm_runtime.api.openai.protocol import (
    AssistantMessage,
    ChatCompletionChunk,
    ChunkChoice,
    ChunkDelta,
    FunctionDelta,
    ToolCallDelta,
)
from slm_runtime.api.openai.responses_protocol import OutputText, ResponseEvent
from slm_runtime.engines.base import TokenChoice, TokenLogprob

pytestmark = pytest.mark.unit


def wire(model: Any) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(model.wire())
    return parsed


def test_an_openai_chunk_writes_only_the_delta_it_carries_but_always_its_finish_reason() -> None:
    assert wire(ChunkDelta()) == {}
    chunk = ChatCompletionChunk(
        id="c", created=1, model="m", choices=[ChunkChoice(delta=ChunkDelta(content="x"))]
    )
    assert wire(chunk) == {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "delta": {"content": "x"}, "logprobs": None, "finish_reason": None}
        ],
    }
    piece = ToolCallDelta(index=1, function=FunctionDelta(arguments='{"a"'))
    assert wire(piece) == {"index": 1, "function": {"arguments": '{"a"'}}


def test_an_assistant_message_with_calls_writes_null_content_and_no_absent_thought() -> None:
    assert wire(AssistantMessage(content=None)) == {"role": "assistant", "content": None}
    assert wire(AssistantMessage(content="", reasoning_content="hm"))["reasoning_content"] == "hm"


def test_ollama_parts_leave_out_what_only_the_last_part_carries() -> None:
    part = GenerateResponse(model="m", created_at="t", response="hi", done=False)
    assert wire(part) == {"model": "m", "created_at": "t", "response": "hi", "done": False}
    rendered = ChatResponse(
        model="m",
        created_at="t",
        message=ChatMessageOut(role="", content=""),
        done=False,
        debug_info=DebugInfo(rendered_template="<p>"),
    )
    assert wire(rendered)["_debug_info"] == {"rendered_template": "<p>", "image_count": 0}
    assert "debug_info" not in wire(rendered)


def test_ollama_logprobs_leave_out_empty_bytes_and_absent_alternatives() -> None:
    chosen = TokenChoice("a", b"a", -0.5)
    unnamed = TokenChoice("", b"", -1.5)
    assert logprobs_of(()) is None
    (only,) = logprobs_of([TokenLogprob(unnamed, (), 0)]) or []
    assert wire(only) == {"token": "", "logprob": -1.5}
    entry = TokenLogprobs.entry(TokenLogprob(chosen, (chosen, unnamed), 0))
    assert wire(entry) == {
        "token": "a",
        "logprob": -0.5,
        "bytes": [97],
        "top_logprobs": [
            {"token": "a", "logprob": -0.5, "bytes": [97]},
            {"token": "", "logprob": -1.5},
        ],
    }


def test_a_responses_event_writes_only_its_own_fields() -> None:
    event = ResponseEvent(
        type="response.content_part.added",
        item_id="msg_1",
        output_index=0,
        content_index=0,
        part=OutputText(text=""),
        sequence_number=3,
    )
    assert wire(event) == {
        "type": "response.content_part.added",
        "item_id": "msg_1",
        "output_index": 0,
        "content_index": 0,
        "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []},
        "sequence_number": 3,
    }
