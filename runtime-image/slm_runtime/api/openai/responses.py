"""The OpenAI Responses API on the chat generation path, stateless: the response object as it
stands at each step of a generation, and the events of a streamed one."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from itertools import count
from typing import Any

from slm_runtime.api.openai.protocol import TokenLogprobs
from slm_runtime.api.openai.responses_protocol import (
    FunctionCallItem,
    FunctionTool,
    IncompleteDetails,
    InputTokensDetails,
    MessageItem,
    OutputItem,
    OutputText,
    ReasoningItem,
    ReasoningSettings,
    ReasoningText,
    Response,
    ResponseError,
    ResponseEvent,
    ResponseRequest,
    ResponseUsage,
)
from slm_runtime.engines.base import Delta, Finished, TokenLogprob
from slm_runtime.state import Run
from slm_runtime.thinking import Piece, ReplyParser
from slm_runtime.tools import ToolCall, ToolParser, new_call_id

log = logging.getLogger(__name__)


ROUTE = "/v1/responses"


def _usage(end: Finished) -> ResponseUsage:
    return ResponseUsage(
        input_tokens=end.prompt_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=end.cached_tokens),
        output_tokens=end.completion_tokens,
        total_tokens=end.prompt_tokens + end.completion_tokens,
    )


def output_logprobs(entries: Sequence[TokenLogprob]) -> list[TokenLogprobs]:
    """``logprobs`` of an output text (or of one delta of it): chat completions' entries."""
    return [TokenLogprobs.entry(entry) for entry in entries]


def _text_part(text: str, logprobs: list[TokenLogprobs] | None = None) -> OutputText:
    return OutputText(text=text, logprobs=list(logprobs or ()))


def _item(ident: str, status: str, content: list[OutputText]) -> MessageItem:
    return MessageItem(id=ident, status=status, content=content)


def _reasoning(ident: str, status: str, text: str | None) -> ReasoningItem:
    """A ``reasoning`` output item holding ``text``; with None, one that holds nothing yet."""
    content = [] if text is None else [ReasoningText(text=text)]
    return ReasoningItem(id=ident, status=status, content=content)


def _echo_tool(tool: dict[str, Any]) -> FunctionTool:
    """A function tool of the request as the response lists it."""
    return FunctionTool(
        name=tool.get("name"),
        description=tool.get("description"),
        parameters=tool.get("parameters"),
        strict=tool.get("strict"),
    )


def _function_call(call: ToolCall, parser: ToolParser, status: str) -> FunctionCallItem:
    """A call the model made as a ``function_call`` output item."""
    return FunctionCallItem(
        id=f"fc_{uuid.uuid4().hex}",
        status=status,
        call_id=new_call_id(parser.short_ids),
        name=call.name,
        arguments=json.dumps(call.arguments, ensure_ascii=False),
    )


class Reply:
    """The response object of one request, as it stands at each step of its generation."""

    def __init__(self, body: ResponseRequest) -> None:
        self.body = body
        self.id = f"resp_{uuid.uuid4().hex}"
        self.item_id = f"msg_{uuid.uuid4().hex}"
        self.created_at = int(time.time())

    def object(
        self,
        status: str,
        output: list[OutputItem],
        end: Finished | None = None,
        error: ResponseError | None = None,
    ) -> Response:
        body = self.body
        fmt = body.text.format if body.text and body.text.format else None
        reasoning = body.reasoning
        incomplete = (
            IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None
        )
        return Response(
            id=self.id,
            created_at=self.created_at,
            status=status,
            completed_at=int(time.time()) if status == "completed" else None,
            error=error,
            incomplete_details=incomplete,
            instructions=body.instructions,
            max_output_tokens=body.max_output_tokens,
            max_tool_calls=body.max_tool_calls,
            model=body.model,
            output=output,
            parallel_tool_calls=body.parallel_tool_calls is not False,
            reasoning=ReasoningSettings(
                effort=reasoning.effort if reasoning else None,
                summary=reasoning.summary if reasoning else None,
            ),
            temperature=body.temperature,
            text={
                "format": fmt.model_dump(by_alias=True, exclude_none=True)
                if fmt
                else {"type": "text"}
            },
            tool_choice=body.tool_choice or "auto",
            tools=[_echo_tool(tool) for tool in body.tools or ()],
            top_p=body.top_p,
            top_logprobs=body.top_logprobs,
            usage=_usage(end) if end else None,
            user=body.user,
            metadata=body.metadata or {},
        )

    def finished(
        self, text: str, logprobs: list[TokenLogprobs], end: Finished, calls: bool = False
    ) -> tuple[str, MessageItem]:
        """The final status and message item of a generation that ended with ``end``; a
        generation that made calls is complete."""
        status = "completed" if calls or end.finish_reason == "stop" else "incomplete"
        return status, _item(self.item_id, status, [_text_part(text, logprobs)])

    def output(
        self, text: str, logprobs: list[TokenLogprobs], end: Finished, parser: ReplyParser | None
    ) -> tuple[str, list[OutputItem]]:
        """The final status and output items of a whole generation: its thought as a reasoning
        item, its text as a message (left out when it is empty and the model made calls) and
        each call it made."""
        whole = parser.parse(text) if parser is not None else Piece(content=text)
        text, calls = whole.content, whole.calls[: self.body.call_limit]
        status, item = self.finished(text, logprobs, end, bool(calls))
        output: list[OutputItem] = (
            [_reasoning(f"rs_{uuid.uuid4().hex}", status, whole.thinking)] if whole.thinking else []
        )
        if text or not calls:
            output.append(item)
        tools = parser.tools if parser else None
        output.extend(_function_call(call, tools, "completed") for call in calls if tools)
        return status, output


class _Events:
    """Responses streaming events, numbered in order."""

    def __init__(self) -> None:
        self._numbers: Iterator[int] = count()

    def __call__(self, kind: str, **fields: Any) -> ResponseEvent:
        return ResponseEvent(type=kind, **fields, sequence_number=next(self._numbers))


class _Streamer:
    """The events of a streamed response: output items opened and closed in order."""

    def __init__(self, reply: Reply, parser: ToolParser | None) -> None:
        self.reply = reply
        self.parser = parser
        self.event = _Events()
        # The reasoning item open now: its id and its text.
        self.thinking: str | None = None
        self.thoughts: list[str] = []
        self.output: list[OutputItem] = []
        self.calls = 0
        # The message item open now: its id, its text and logprobs.
        self.message: str | None = None
        self.parts: list[str] = []
        self.logprobs: list[TokenLogprobs] = []

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.message, "output_index": len(self.output), "content_index": 0}

    def thought(self, text: str) -> Iterator[ResponseEvent]:
        """Thinking as the text of a reasoning item, opened with the first of it."""
        where = {"output_index": len(self.output), "content_index": 0}
        if self.thinking is None:
            self.thinking = f"rs_{uuid.uuid4().hex}"
            item = _reasoning(self.thinking, "in_progress", None)
            yield self.event("response.output_item.added", output_index=len(self.output), item=item)
            part = ReasoningText(text="")
            yield self.event(
                "response.content_part.added", item_id=self.thinking, **where, part=part
            )
        self.thoughts.append(text)
        yield self.event(
            "response.reasoning_text.delta", item_id=self.thinking, **where, delta=text
        )

    def close_thought(self, status: str = "completed") -> Iterator[ResponseEvent]:
        """Closes the open reasoning item, if any."""
        if self.thinking is None:
            return
        text = "".join(self.thoughts)
        where = {"item_id": self.thinking, "output_index": len(self.output), "content_index": 0}
        part = ReasoningText(text=text)
        item = _reasoning(self.thinking, status, text)
        yield self.event("response.reasoning_text.done", **where, text=text)
        yield self.event("response.content_part.done", **where, part=part)
        yield self.event("response.output_item.done", output_index=len(self.output), item=item)
        self.output.append(item)
        self.thinking, self.thoughts = None, []

    def open(self) -> Iterator[ResponseEvent]:
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

    def text(self, text: str, entries: list[TokenLogprobs]) -> Iterator[ResponseEvent]:
        yield from self.open()
        self.parts.append(text)
        self.logprobs.extend(entries)
        yield self.event(
            "response.output_text.delta", **self._where(), delta=text, logprobs=entries
        )

    def close(self, status: str) -> Iterator[ResponseEvent]:
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

    def call(self, call: ToolCall) -> Iterator[ResponseEvent]:
        """A call as a function_call item: added, its arguments in one delta, done."""
        limit = self.reply.body.call_limit
        if self.parser is None or (limit is not None and self.calls >= limit):
            return
        self.calls += 1
        yield from self.close("completed")
        yield from self.close_thought()
        item = _function_call(call, self.parser, "in_progress")
        arguments = item.arguments
        index = len(self.output)
        added = item.model_copy(update={"arguments": ""})
        yield self.event("response.output_item.added", output_index=index, item=added)
        where = {"item_id": item.id, "output_index": index}
        yield self.event("response.function_call_arguments.delta", **where, delta=arguments)
        yield self.event("response.function_call_arguments.done", **where, arguments=arguments)
        done = item.model_copy(update={"status": "completed"})
        yield self.event("response.output_item.done", output_index=index, item=done)
        self.output.append(done)


async def stream(
    reply: Reply, run: Run, parser: ReplyParser | None
) -> AsyncIterator[ResponseEvent]:
    """The events of a streamed response, ``response.created`` to ``response.completed`` (or
    ``incomplete``, or ``failed`` when generation fails on the way)."""
    out = _Streamer(reply, parser.tools if parser else None)
    event = out.event
    yield event("response.created", response=reply.object("in_progress", []))
    yield event("response.in_progress", response=reply.object("in_progress", []))
    if parser is None:
        for chunk in out.open():
            yield chunk
    # Log probabilities of output held back by the parser go with the next text.
    held: list[TokenLogprobs] = []
    end: Finished | None = None
    try:
        async for step in run:
            if isinstance(step, Delta):
                entries = output_logprobs(step.logprobs) if reply.body.logprobs else []
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
        error = ResponseError(code="server_error", message="internal error while generating")
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
