"""The OpenAI Responses API: `POST /v1/responses` on the chat generation path, stateless."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from itertools import count
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import Field

from slm_runtime.api.auth import bearer_auth
from slm_runtime.api.body import RequestBody, TopLevelBody
from slm_runtime.api.openai.router import (
    SSE,
    State,
    _chat_logprobs,
    call_constraint,
    effort_think,
    offer_tools,
)
from slm_runtime.engines.base import MAX_TOP_LOGPROBS, Delta, Finished, TokenLogprob
from slm_runtime.errors import APIError
from slm_runtime.state import Run, RuntimeState
from slm_runtime.thinking import (
    Piece,
    ReplyParser,
    unconstrained,
)
from slm_runtime.tools import ToolCall, ToolParser, new_call_id

log = logging.getLogger(__name__)

ROUTE = "/v1/responses"
MIN_OUTPUT_TOKENS = 16
"""OpenAI refuses a smaller ``max_output_tokens``; clients written for it never send one."""

_STATELESS = (
    "this server keeps no responses or conversations (nothing is stored, whatever `store` "
    "says); send the whole conversation as `input` on every request"
)
LOGPROBS = "message.output_text.logprobs"
_INCLUDABLE = (LOGPROBS, "reasoning.encrypted_content")
"""What ``include`` may name; reasoning is never encrypted, its text is in the item."""
_ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}
# The content part types each role may carry; all of them are text.
_TEXT_PARTS = {"user": "input_text", "system": "input_text", "developer": "input_text"}
_ASSISTANT_PARTS = ("output_text", "input_text")


class ContentPart(RequestBody):
    type: str
    text: str | None = None


class InputItem(RequestBody):
    type: str = "message"
    role: str | None = None
    content: str | list[ContentPart] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[ContentPart] | None = None
    summary: list[ContentPart] | None = None


class TextFormat(RequestBody):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class ReasoningConfig(RequestBody):
    effort: str | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class TextConfig(RequestBody):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponseRequest(TopLevelBody):
    model: str = Field(min_length=1)
    input: str | list[InputItem]
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stream: bool = False
    store: bool | None = None
    text: TextConfig | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_tool_calls: int | None = None
    include: list[str] | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    truncation: Literal["auto", "disabled"] | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    background: bool | None = None
    prompt: dict[str, Any] | None = None
    moderation: dict[str, Any] | None = None
    reasoning: ReasoningConfig | None = None

    def refuse_unsupported(self) -> None:
        """400 for every field that would change the answer and that this server cannot honour."""
        if self.moderation is not None:
            raise APIError(400, "moderation: this server runs no moderation model; leave it out")
        if self.previous_response_id is not None:
            raise APIError(400, f"previous_response_id: {_STATELESS}")
        if self.conversation is not None:
            raise APIError(400, f"conversation: {_STATELESS}")
        if self.background:
            raise APIError(400, f"background: responses run in the foreground only; {_STATELESS}")
        if self.prompt is not None:
            raise APIError(400, "prompt: stored prompt templates are not available on this server")
        if self.tools:
            kinds = sorted({str(tool.get("type")) for tool in self.tools})
            builtin = [kind for kind in kinds if kind != "function"]
            if builtin:
                raise APIError(
                    400,
                    f"tools: built-in tools ({', '.join(builtin)}) are not available: this "
                    "server runs only the model",
                )
        if self.max_output_tokens is not None and self.max_output_tokens < MIN_OUTPUT_TOKENS:
            raise APIError(
                400,
                "Invalid 'max_output_tokens': integer below minimum value. Expected a value "
                f">= {MIN_OUTPUT_TOKENS}, but got {self.max_output_tokens} instead.",
                code="integer_below_min_value",
            )
        if self.max_tool_calls is not None and self.max_tool_calls < 1:
            raise APIError(
                400,
                "Invalid 'max_tool_calls': integer below minimum value. Expected a value >= 1, "
                f"but got {self.max_tool_calls} instead.",
                code="integer_below_min_value",
            )
        unknown = [item for item in self.include or () if item not in _INCLUDABLE]
        if unknown:
            raise APIError(400, f"include: {', '.join(unknown)} is not supported")
        if self.top_logprobs and not self.logprobs:
            raise APIError(400, f"top_logprobs: needs include [{LOGPROBS!r}]")
        if self.truncation == "auto":
            raise APIError(
                400, "truncation: only `disabled`; an input longer than the context is refused"
            )
        if self.text and self.text.verbosity not in (None, "medium"):
            raise APIError(400, "text.verbosity: the model has no verbosity control")

    @property
    def call_limit(self) -> int | None:
        """The most function calls a response answers: ``max_tool_calls``, one without
        ``parallel_tool_calls``; None for no limit."""
        limits = [self.max_tool_calls, 1 if self.parallel_tool_calls is False else None]
        return min((limit for limit in limits if limit is not None), default=None)

    @property
    def logprobs(self) -> bool:
        """Whether the output text carries the log probabilities of its tokens."""
        return LOGPROBS in (self.include or ())

    def messages(self) -> list[dict[str, Any]]:
        """The conversation as chat messages: ``instructions`` first, as a system message;
        ``function_call`` items as assistant tool calls (consecutive ones in one message) and
        ``function_call_output`` items as tool results."""
        messages: list[dict[str, Any]] = (
            [{"role": "system", "content": self.instructions}] if self.instructions else []
        )
        if isinstance(self.input, str):
            if not self.input:
                raise APIError(400, "input: must not be empty")
            return [*messages, {"role": "user", "content": self.input}]
        if not self.input:
            raise APIError(400, "input: must not be empty")
        names: dict[str, str] = {}
        calling: dict[str, Any] | None = None
        thought = ""
        for index, item in enumerate(self.input):
            if item.type == "reasoning":
                thought += _thought(item)
                continue
            if item.type == "function_call":
                call = _call(index, item)
                names[item.call_id or ""] = item.name or ""
                if calling is None:
                    calling = {"role": "assistant", "content": "", "tool_calls": []}
                    messages.append(_thinking(calling, thought))
                    thought = ""
                call["function"]["index"] = len(calling["tool_calls"])
                calling["tool_calls"].append(call)
                continue
            calling = None
            if item.type == "function_call_output":
                messages.append(_result(index, item, names))
            else:
                message = _message(index, item)
                if message["role"] == "assistant":
                    message, thought = _thinking(message, thought), ""
                messages.append(message)
        return messages

    def think(self, state: RuntimeState) -> bool | None:
        """Whether the model thinks: ``reasoning.effort`` as chat's ``reasoning_effort``, on
        by default for a model whose template renders thoughts."""
        effort = self.reasoning.effort if self.reasoning else None
        refusal = (
            f"reasoning.effort: {self.model} does not support thinking (its template renders "
            "no thoughts); leave it unset or send none"
        )
        return effort_think(effort, None, state, "reasoning.effort", refusal)

    def tool_choice_parts(self) -> tuple[str | None, str | None]:
        """``tool_choice`` as a mode (none, auto, required) or the name of one function."""
        choice = self.tool_choice
        if choice is None or choice in ("none", "auto", "required"):
            return (choice if isinstance(choice, str) else None), None
        if isinstance(choice, dict) and choice.get("type") == "function":
            name = choice.get("name")
            if not isinstance(name, str) or not name:
                raise APIError(400, "tool_choice.name: required for a function tool choice")
            return None, name
        raise APIError(
            400, 'tool_choice: must be none, auto, required or {"type": "function", "name"}'
        )

    def chat_tools(self) -> list[dict[str, Any]]:
        """The function tools in chat completions' shape (``function`` nested)."""
        tools = []
        for index, tool in enumerate(self.tools or ()):
            function = {
                key: tool[key] for key in ("name", "description", "parameters") if key in tool
            }
            if "name" not in function:
                raise APIError(400, f"tools[{index}].name: required for a function tool")
            tools.append({"type": "function", "function": function})
        return tools

    def offered(self, state: RuntimeState) -> tuple[list[dict[str, Any]], ToolParser | None]:
        """The tools the template offers the model and the parser of their calls."""
        choice, named = self.tool_choice_parts()
        if not self.tools and named is None and choice in (None, "none", "auto"):
            return [], None
        try:
            return offer_tools(
                state, self.model, self.chat_tools(), choice, named, "tool_choice.name"
            )
        except APIError as exc:
            exc.message = exc.message.replace("].function.", "].")
            raise

    def json_mode(self) -> tuple[bool, dict[str, Any] | None]:
        fmt = self.text.format if self.text else None
        if fmt is None or fmt.type == "text":
            return False, None
        if fmt.type == "json_object":
            return True, None
        if not fmt.name:
            raise APIError(400, "text.format.name: required for a json_schema format")
        if fmt.schema_ is None:
            raise APIError(400, "text.format.schema: required for a json_schema format")
        return True, fmt.schema_


def _call(index: int, item: InputItem) -> dict[str, Any]:
    """A ``function_call`` input item as a chat tool call, its arguments an object."""
    where = f"input.{index}"
    for field in ("call_id", "name", "arguments"):
        if not getattr(item, field):
            raise APIError(400, f"{where}.{field}: required for a function_call item")
    try:
        arguments = json.loads(item.arguments or "")
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        raise APIError(400, f"{where}.arguments: must be a JSON object in a string")
    return {
        "id": item.call_id,
        "type": "function",
        "function": {"name": item.name, "arguments": arguments},
    }


def _thought(item: InputItem) -> str:
    """The text of a ``reasoning`` input item: its reasoning text, else its summary."""
    parts = item.content if isinstance(item.content, list) else []
    text = "".join(p.text or "" for p in parts if p.type == "reasoning_text")
    return text or "".join(p.text or "" for p in item.summary or () if p.type == "summary_text")


def _thinking(message: dict[str, Any], thought: str) -> dict[str, Any]:
    """The assistant message with the thought before it, under the names Ollama's and Hugging
    Face's templates read."""
    if thought:
        message.update(thinking=thought, reasoning_content=thought)
    return message


def _result(index: int, item: InputItem, names: dict[str, str]) -> dict[str, Any]:
    """A ``function_call_output`` input item as a chat tool message; it must answer the
    ``call_id`` of an earlier ``function_call`` item."""
    where = f"input.{index}"
    if not item.call_id:
        raise APIError(400, f"{where}.call_id: required for a function_call_output item")
    name = names.get(item.call_id)
    if name is None:
        raise APIError(
            400,
            f"{where}.call_id: {item.call_id!r} answers no earlier function_call item",
        )
    if item.output is None:
        raise APIError(400, f"{where}.output: required for a function_call_output item")
    if isinstance(item.output, str):
        output = item.output
    else:
        texts = []
        for part_index, part in enumerate(item.output):
            if part.type != "input_text" or part.text is None:
                raise APIError(
                    400,
                    f"{where}.output.{part_index}.type: {part.type!r} is not supported; "
                    "use input_text",
                )
            texts.append(part.text)
        output = "".join(texts)
    return {
        "role": "tool",
        "content": output,
        "tool_call_id": item.call_id,
        "tool_name": name,
        "name": name,
    }


def _message(index: int, item: InputItem) -> dict[str, str]:
    where = f"input.{index}"
    if item.type != "message":
        if item.type == "item_reference":
            raise APIError(400, f"{where}.type: item_reference: {_STATELESS}")
        raise APIError(400, f"{where}.type: {item.type!r} input items are not supported")
    if item.role not in _ROLES:
        raise APIError(
            400, f"{where}.role: {item.role!r} is not one of user, system, developer, assistant"
        )
    role = item.role
    if item.content is None:
        raise APIError(400, f"{where}.content: required")
    if isinstance(item.content, str):
        return {"role": _ROLES[role], "content": item.content}
    allowed = _ASSISTANT_PARTS if role == "assistant" else (_TEXT_PARTS[role],)
    texts = []
    for part_index, part in enumerate(item.content):
        if part.type not in allowed:
            raise APIError(
                400,
                f"{where}.content.{part_index}.type: {part.type!r} is not supported in a "
                f"{role} message; use {' or '.join(allowed)}",
            )
        if part.text is None:
            raise APIError(400, f"{where}.content.{part_index}.text: required")
        texts.append(part.text)
    return {"role": _ROLES[role], "content": "".join(texts)}


def _usage(end: Finished) -> dict[str, Any]:
    return {
        "input_tokens": end.prompt_tokens,
        "input_tokens_details": {"cached_tokens": end.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": end.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": end.prompt_tokens + end.completion_tokens,
    }


def _logprobs(entries: Sequence[TokenLogprob]) -> list[dict[str, Any]]:
    """``logprobs`` of an output text (or of one delta of it): chat completions' entries."""
    content: list[dict[str, Any]] = _chat_logprobs(entries)["content"]
    return content


def _text_part(text: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def _item(ident: str, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": ident,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _reasoning(ident: str, status: str, text: str) -> dict[str, Any]:
    """A ``reasoning`` output item: the model's thought as its text; no summary is made."""
    return {
        "id": ident,
        "type": "reasoning",
        "status": status,
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
        "encrypted_content": None,
    }


def _echo_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """A function tool of the request as the response lists it."""
    return {
        "type": "function",
        "name": tool.get("name"),
        "description": tool.get("description"),
        "parameters": tool.get("parameters"),
        "strict": tool.get("strict"),
    }


def _function_call(call: ToolCall, parser: ToolParser, status: str) -> dict[str, Any]:
    """A call the model made as a ``function_call`` output item."""
    return {
        "id": f"fc_{uuid.uuid4().hex}",
        "type": "function_call",
        "status": status,
        "call_id": new_call_id(parser.short_ids),
        "name": call.name,
        "arguments": json.dumps(call.arguments, ensure_ascii=False),
    }


class _Reply:
    """The response object of one request, as it stands at each step of its generation."""

    def __init__(self, body: ResponseRequest) -> None:
        self.body = body
        self.id = f"resp_{uuid.uuid4().hex}"
        self.item_id = f"msg_{uuid.uuid4().hex}"
        self.created_at = int(time.time())

    def object(
        self,
        status: str,
        output: list[dict[str, Any]],
        end: Finished | None = None,
        error: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        body = self.body
        fmt = body.text.format if body.text and body.text.format else None
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": error,
            "incomplete_details": {"reason": "max_output_tokens"}
            if status == "incomplete"
            else None,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "max_tool_calls": body.max_tool_calls,
            "model": body.model,
            "output": output,
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "previous_response_id": None,
            "reasoning": {
                "effort": body.reasoning.effort if body.reasoning else None,
                "summary": body.reasoning.summary if body.reasoning else None,
            },
            "store": False,
            "temperature": body.temperature,
            "text": {
                "format": fmt.model_dump(by_alias=True, exclude_none=True)
                if fmt
                else {"type": "text"}
            },
            "tool_choice": body.tool_choice or "auto",
            "tools": [_echo_tool(tool) for tool in body.tools or ()],
            "top_p": body.top_p,
            "top_logprobs": body.top_logprobs,
            "truncation": "disabled",
            "usage": _usage(end) if end else None,
            "user": body.user,
            "metadata": body.metadata or {},
        }

    def finished(
        self, text: str, logprobs: list[dict[str, Any]], end: Finished, calls: bool = False
    ) -> tuple[str, dict[str, Any]]:
        """The final status and message item of a generation that ended with ``end``; a
        generation that made calls is complete."""
        status = "completed" if calls or end.finish_reason == "stop" else "incomplete"
        return status, _item(self.item_id, status, [_text_part(text, logprobs)])

    def output(
        self, text: str, logprobs: list[dict[str, Any]], end: Finished, parser: ReplyParser | None
    ) -> tuple[str, list[dict[str, Any]]]:
        """The final status and output items of a whole generation: its thought as a reasoning
        item, its text as a message (left out when it is empty and the model made calls) and
        each call it made."""
        whole = parser.parse(text) if parser is not None else Piece(content=text)
        text, calls = whole.content, whole.calls[: self.body.call_limit]
        status, item = self.finished(text, logprobs, end, bool(calls))
        output = (
            [_reasoning(f"rs_{uuid.uuid4().hex}", status, whole.thinking)] if whole.thinking else []
        )
        if text or not calls:
            output.append(item)
        tools = parser.tools if parser else None
        output.extend(_function_call(call, tools, "completed") for call in calls if tools)
        return status, output


class _Events:
    """Responses streaming events as SSE, numbered in order."""

    def __init__(self) -> None:
        self._numbers: Iterator[int] = count()

    def __call__(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, **fields, "sequence_number": next(self._numbers)}
        payload = json.dumps(data, ensure_ascii=False)
        return f"event: {kind}\ndata: {payload}\n\n".encode()


class _Streamer:
    """The events of a streamed response: output items opened and closed in order."""

    def __init__(self, reply: _Reply, parser: ToolParser | None) -> None:
        self.reply = reply
        self.parser = parser
        self.event = _Events()
        # The reasoning item open now: its id and its text.
        self.thinking: str | None = None
        self.thoughts: list[str] = []
        self.output: list[dict[str, Any]] = []
        self.calls = 0
        # The message item open now: its id, its text and logprobs.
        self.message: str | None = None
        self.parts: list[str] = []
        self.logprobs: list[dict[str, Any]] = []

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.message, "output_index": len(self.output), "content_index": 0}

    def thought(self, text: str) -> Iterator[bytes]:
        """Thinking as the text of a reasoning item, opened with the first of it."""
        where = {"output_index": len(self.output), "content_index": 0}
        if self.thinking is None:
            self.thinking = f"rs_{uuid.uuid4().hex}"
            item = {**_reasoning(self.thinking, "in_progress", ""), "content": []}
            yield self.event("response.output_item.added", output_index=len(self.output), item=item)
            part = {"type": "reasoning_text", "text": ""}
            yield self.event(
                "response.content_part.added", item_id=self.thinking, **where, part=part
            )
        self.thoughts.append(text)
        yield self.event(
            "response.reasoning_text.delta", item_id=self.thinking, **where, delta=text
        )

    def close_thought(self, status: str = "completed") -> Iterator[bytes]:
        """Closes the open reasoning item, if any."""
        if self.thinking is None:
            return
        text = "".join(self.thoughts)
        where = {"item_id": self.thinking, "output_index": len(self.output), "content_index": 0}
        part = {"type": "reasoning_text", "text": text}
        item = _reasoning(self.thinking, status, text)
        yield self.event("response.reasoning_text.done", **where, text=text)
        yield self.event("response.content_part.done", **where, part=part)
        yield self.event("response.output_item.done", output_index=len(self.output), item=item)
        self.output.append(item)
        self.thinking, self.thoughts = None, []

    def open(self) -> Iterator[bytes]:
        """Opens a message item unless one is open."""
        if self.message is not None:
            return
        yield from self.close_thought()
        self.message = self.reply.item_id if not self.output else f"msg_{uuid.uuid4().hex}"
        yield self.event(
            "response.output_item.added",
            output_index=len(self.output),
            item=_item(self.message, "in_progress", []),
        )
        yield self.event("response.content_part.added", **self._where(), part=_text_part(""))

    def text(self, text: str, entries: list[dict[str, Any]]) -> Iterator[bytes]:
        yield from self.open()
        self.parts.append(text)
        self.logprobs.extend(entries)
        yield self.event(
            "response.output_text.delta", **self._where(), delta=text, logprobs=entries
        )

    def close(self, status: str) -> Iterator[bytes]:
        """Closes the open message item, if any."""
        if self.message is None:
            return
        text = "".join(self.parts)
        item = _item(self.message, status, [_text_part(text, self.logprobs)])
        where = self._where()
        yield self.event("response.output_text.done", **where, text=text, logprobs=self.logprobs)
        yield self.event(
            "response.content_part.done", **where, part=_text_part(text, self.logprobs)
        )
        yield self.event("response.output_item.done", output_index=len(self.output), item=item)
        self.output.append(item)
        self.message, self.parts, self.logprobs = None, [], []

    def call(self, call: ToolCall) -> Iterator[bytes]:
        """A call as a function_call item: added, its arguments in one delta, done."""
        limit = self.reply.body.call_limit
        if self.parser is None or (limit is not None and self.calls >= limit):
            return
        self.calls += 1
        yield from self.close("completed")
        yield from self.close_thought()
        item = _function_call(call, self.parser, "in_progress")
        arguments = item["arguments"]
        index = len(self.output)
        yield self.event(
            "response.output_item.added", output_index=index, item={**item, "arguments": ""}
        )
        where = {"item_id": item["id"], "output_index": index}
        yield self.event("response.function_call_arguments.delta", **where, delta=arguments)
        yield self.event("response.function_call_arguments.done", **where, arguments=arguments)
        done = {**item, "status": "completed"}
        yield self.event("response.output_item.done", output_index=index, item=done)
        self.output.append(done)


async def _stream(reply: _Reply, run: Run, parser: ReplyParser | None) -> AsyncIterator[bytes]:
    out = _Streamer(reply, parser.tools if parser else None)
    event = out.event
    yield event("response.created", response=reply.object("in_progress", []))
    yield event("response.in_progress", response=reply.object("in_progress", []))
    if parser is None:
        for chunk in out.open():
            yield chunk
    # Log probabilities of output held back by the parser go with the next text.
    held: list[dict[str, Any]] = []
    end: Finished | None = None
    try:
        async for step in run:
            if isinstance(step, Delta):
                entries = _logprobs(step.logprobs) if reply.body.logprobs else []
                if parser is None:
                    if step.text or step.logprobs:
                        for chunk in out.text(step.text, entries):
                            yield chunk
                    continue
                held.extend(entries)
                part = parser.add(step.text)
                for chunk in out.thought(part.thinking) if part.thinking else ():
                    yield chunk
                found, text = part.calls, part.content
                if text:
                    for chunk in out.text(text, held):
                        yield chunk
                    held = []
                for call in found:
                    for chunk in out.call(call):
                        yield chunk
            else:
                end = step
        if end is None:
            raise RuntimeError("generation ended without a result")
    except Exception:
        log.exception("generation failed during a streamed response")
        error = {"code": "server_error", "message": "internal error while generating"}
        failed = reply.object("failed", [_item(reply.item_id, "incomplete", [])], error=error)
        yield event("response.failed", response=failed)
        return
    last = parser.finish() if parser is not None else Piece()
    for chunk in out.thought(last.thinking) if last.thinking else ():
        yield chunk
    rest = last.content
    if rest or not out.output:
        for chunk in out.text(rest, held) if rest else out.open():
            yield chunk
    status = "completed" if out.calls or end.finish_reason == "stop" else "incomplete"
    for chunk in out.close(status):
        yield chunk
    kind = "response.completed" if status == "completed" else "response.incomplete"
    yield event(kind, response=reply.object(status, out.output, end))


def build_router(api_token: str | None) -> APIRouter:
    """The Responses routes, behind the API token when one is set."""
    router = APIRouter(prefix="/v1", dependencies=[Depends(bearer_auth(api_token))])

    @router.post("/responses")
    async def create(body: ResponseRequest, request: Request, state: State) -> Any:
        state.check_model(body.model)
        body.refuse_unsupported()
        json_mode, schema = body.json_mode()
        messages = body.messages()
        offered, tools = body.offered(state)
        choice, named = body.tool_choice_parts()
        other = "a JSON text.format" if json_mode else None
        constraint = call_constraint(state, offered, choice, named, body.call_limit != 1, other)
        if constraint is not None and tools is not None:
            tools.streams_arguments = True
        params = state.sampling(
            {
                "max_tokens": body.max_output_tokens,
                "temperature": body.temperature,
                "top_p": body.top_p,
            },
            json_mode=json_mode,
            json_schema=schema,
            logprobs=body.logprobs,
            top_logprobs=body.top_logprobs or 0,
            grammar=constraint,
        )
        think = unconstrained(body.think(state), json_mode or constraint is not None)
        prompt = state.prompts.chat(messages, tools=offered or None, think=think)
        parser = state.prompts.reply_parser(prompt, think, tools)
        run = await state.run(prompt, params, ROUTE)
        reply = _Reply(body)
        if body.stream:
            return StreamingResponse(_stream(reply, run, parser), media_type=SSE)
        out = await run.collect(request)
        logprobs = _logprobs(out.logprobs) if body.logprobs else []
        status, output = reply.output(out.text, logprobs, out.end, parser)
        return reply.object(status, output, out.end)

    @router.get("/responses/{response_id}")
    @router.delete("/responses/{response_id}")
    @router.post("/responses/{response_id}/cancel")
    @router.get("/responses/{response_id}/input_items")
    async def stored(response_id: str) -> Any:
        raise APIError(404, f"response {response_id!r} not found: {_STATELESS}")

    return router
