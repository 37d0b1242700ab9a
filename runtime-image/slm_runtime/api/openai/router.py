"""The OpenAI API: chat completions, completions, embeddings and models."""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from slm_runtime.api.auth import bearer_auth
from slm_runtime.api.openai.models import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    EmbeddingRequest,
    NamedToolChoice,
    ResponseFormat,
)
from slm_runtime.api.openai.shared import (
    SSE,
    State,
    call_constraint,
    chat_logprobs,
    effort_think,
    offered_tools,
)
from slm_runtime.api.vectors import unit_vector
from slm_runtime.engines.base import (
    Delta,
    Finished,
    TokenLogprob,
)
from slm_runtime.errors import APIError, model_managed
from slm_runtime.state import Run, RuntimeState
from slm_runtime.thinking import (
    Piece,
    ReplyParser,
    unconstrained,
)
from slm_runtime.tools import ToolCall, new_call_id

_OWNER = "slm-operator"


def _usage(end: Finished) -> dict[str, Any]:
    return {
        "prompt_tokens": end.prompt_tokens,
        "completion_tokens": end.completion_tokens,
        "total_tokens": end.prompt_tokens + end.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": end.cached_tokens},
    }


def _finish_reason(end: Finished) -> str:
    return "stop" if end.finish_reason == "stop" else "length"


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def _json_mode(fmt: ResponseFormat | None) -> tuple[bool, dict[str, Any] | None]:
    if fmt is None or fmt.type == "text":
        return False, None
    if fmt.type == "json_schema":
        schema = (fmt.json_schema or {}).get("schema")
        if not isinstance(schema, dict):
            raise APIError(400, "response_format.json_schema.schema must be a JSON schema object")
        return True, schema
    return True, None


def _completion_logprobs(entries: Sequence[TokenLogprob]) -> dict[str, Any]:
    """``choices[].logprobs`` of a legacy completion: the chosen token always among the
    ``top_logprobs`` of its position, so there are up to ``logprobs`` + 1 of them."""
    top: list[dict[str, float]] = []
    for entry in entries:
        alternatives = {c.token: c.logprob for c in entry.top}
        alternatives.setdefault(entry.chosen.token, entry.chosen.logprob)
        top.append(alternatives)
    return {
        "tokens": [entry.chosen.token for entry in entries],
        "token_logprobs": [entry.chosen.logprob for entry in entries],
        "top_logprobs": top,
        "text_offset": [entry.offset for entry in entries],
    }


def _chat_messages(items: list[ChatMessage]) -> list[dict[str, Any]]:
    """The messages as the templates read them: tool calls with their arguments as objects,
    tool results with the name of the call they answer; a result for no earlier call is a 400."""
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for i, m in enumerate(items):
        message: dict[str, Any] = {
            "role": "system" if m.role == "developer" else m.role,
            "content": m.text(),
        }
        if m.tool_calls:
            if m.role != "assistant":
                raise APIError(400, f"messages[{i}].tool_calls: only assistant messages hold calls")
            calls = []
            for j, call in enumerate(m.tool_calls):
                try:
                    arguments = json.loads(call.function.arguments or "{}")
                except ValueError:
                    arguments = None
                if not isinstance(arguments, dict):
                    raise APIError(
                        400,
                        f"messages[{i}].tool_calls[{j}].function.arguments must be a JSON object "
                        "in a string",
                    )
                names[call.id] = call.function.name
                calls.append(
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {
                            "index": j,
                            "name": call.function.name,
                            "arguments": arguments,
                        },
                    }
                )
            message["tool_calls"] = calls
        if m.role == "tool":
            if m.tool_call_id is None:
                raise APIError(400, f"messages[{i}].tool_call_id is required for a tool message")
            name = names.get(m.tool_call_id)
            if name is None:
                raise APIError(
                    400,
                    f"messages[{i}].tool_call_id: {m.tool_call_id!r} answers no tool call of an "
                    "earlier assistant message",
                )
            message.update(tool_call_id=m.tool_call_id, tool_name=name, name=name)
        out.append(_with_thought(message, m))
    return out


def _with_thought(message: dict[str, Any], item: ChatMessage) -> dict[str, Any]:
    """The message with the assistant's earlier reasoning (``reasoning_content``, or
    ``reasoning`` as Ollama's OpenAI compatibility names it), under the names Ollama's
    (``thinking``) and Hugging Face's (``reasoning_content``) templates read."""
    thought = item.reasoning_content or item.reasoning
    if item.role == "assistant" and thought:
        message.update(thinking=thought, reasoning_content=thought)
    return message


def _chat_think(body: ChatCompletionRequest, state: RuntimeState) -> bool | None:
    """Whether the model thinks for this request: as Ollama's OpenAI compatibility maps
    ``reasoning_effort`` (``none`` off, any other effort on), else as vLLM and llama.cpp's
    server read ``chat_template_kwargs.enable_thinking``, and on by default for a model whose
    template renders thoughts; thinking asked of a model that does not think is a 400."""
    enable = (body.chat_template_kwargs or {}).get("enable_thinking")
    if enable is not None and not isinstance(enable, bool):
        raise APIError(400, "chat_template_kwargs.enable_thinking must be a boolean")
    refusal = (
        f"{body.model} does not support thinking (its template renders no thoughts); leave "
        "reasoning_effort unset or send none"
    )
    return effort_think(body.reasoning_effort, enable, state, "reasoning_effort", refusal)


def _openai_call(call: ToolCall, short_id: bool) -> dict[str, Any]:
    return {
        "id": new_call_id(short_id),
        "type": "function",
        "function": {
            "name": call.name,
            "arguments": json.dumps(call.arguments, ensure_ascii=False),
        },
    }


async def _chat_stream(
    run: Run,
    parser: ReplyParser | None,
    parallel: bool,
    include_usage: bool,
    chunk: Any,
) -> AsyncIterator[bytes]:
    """Chat chunks: thoughts as reasoning_content deltas, text as content deltas, each tool
    call as a delta with its index, id, type and name, then its arguments: in the pieces the
    model writes them where the parser hands them out (``ToolParser.streams_arguments``), else
    whole once the call is complete."""
    calls = 0
    # The last call whose id and name went out while it was written.
    announced = -1
    try:
        async for event in run:
            if isinstance(event, Delta):
                part = Piece(content=event.text)
                if parser is not None:
                    part = parser.add(event.text)
                text, found = part.content, part.calls
                if part.thinking:
                    entries = () if text else event.logprobs
                    yield _sse(chunk({"reasoning_content": part.thinking}, entries, None))
                if text or (event.logprobs and not part.thinking) or parser is None:
                    yield _sse(chunk({"content": text}, event.logprobs, None))
                for call in found:
                    if calls and not parallel:
                        continue
                    if call.sent:
                        # Its id, name and first arguments went out while it was written.
                        rest = call.raw_arguments[call.sent :]
                        if rest:
                            piece = {"index": calls, "function": {"arguments": rest}}
                            yield _sse(chunk({"tool_calls": [piece]}, (), None))
                        calls += 1
                        continue
                    out = _openai_call(call, parser is not None and parser.short_ids)
                    arguments = out["function"]["arguments"]
                    out["function"]["arguments"] = ""
                    yield _sse(chunk({"tool_calls": [{"index": calls, **out}]}, (), None))
                    piece = {"index": calls, "function": {"arguments": arguments}}
                    yield _sse(chunk({"tool_calls": [piece]}, (), None))
                    calls += 1
                written = parser.argument_piece() if parser is not None else None
                if parser is not None and written is not None and (parallel or not calls):
                    index, name, arguments = written
                    if index != announced:
                        announced = index
                        out = _openai_call(ToolCall(name, {}, index), parser.short_ids)
                        out["function"]["arguments"] = ""
                        yield _sse(chunk({"tool_calls": [{"index": index, **out}]}, (), None))
                    piece = {"index": index, "function": {"arguments": arguments}}
                    yield _sse(chunk({"tool_calls": [piece]}, (), None))
            else:
                last = parser.finish() if parser is not None else Piece()
                # A call whose pieces went out but that max_tokens cut off: the answer ends
                # with it, by length, and its text is not sent again as content.
                cut = announced >= calls
                if last.thinking:
                    yield _sse(chunk({"reasoning_content": last.thinking}, (), None))
                if last.content and not cut:
                    yield _sse(chunk({"content": last.content}, (), None))
                reason = "tool_calls" if calls and not cut else _finish_reason(event)
                yield _sse(chunk({}, (), reason))
                if include_usage:
                    yield _sse({**chunk({}, (), None), "choices": [], "usage": _usage(event)})
    except Exception:
        yield _sse(
            {"error": {"message": "internal error while generating", "type": "server_error"}}
        )
    yield b"data: [DONE]\n\n"


async def _stream(
    run: Run,
    include_usage: bool,
    chunk: Any,
) -> AsyncIterator[bytes]:
    try:
        async for event in run:
            if isinstance(event, Delta):
                yield _sse(chunk(event, None))
            else:
                yield _sse(chunk(None, _finish_reason(event)))
                if include_usage:
                    yield _sse({**chunk(None, None), "choices": [], "usage": _usage(event)})
    except Exception:
        yield _sse(
            {"error": {"message": "internal error while generating", "type": "server_error"}}
        )
    yield b"data: [DONE]\n\n"


def build_router(api_token: str | None) -> APIRouter:
    """The OpenAI routes, behind the API token when one is set."""
    router = APIRouter(prefix="/v1", dependencies=[Depends(bearer_auth(api_token))])

    @router.post("/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request, state: State) -> Any:
        state.check_model(body.model)
        body.refuse_unsupported()
        json_mode, schema = _json_mode(body.response_format)
        if json_mode and body.grammar is not None:
            raise APIError(400, "grammar and a JSON response_format cannot be combined; send one")
        messages = _chat_messages(body.messages)
        offered, tools = offered_tools(body, state)
        choice = body.tool_choice
        other = "grammar" if body.grammar is not None else None
        constraint = call_constraint(
            state,
            offered,
            None if isinstance(choice, NamedToolChoice) else choice,
            choice.function.name if isinstance(choice, NamedToolChoice) else None,
            body.parallel_tool_calls,
            "a JSON response_format" if json_mode else other,
        )
        if constraint is not None and tools is not None:
            # The grammar makes sure a call begun ends as one: its arguments go out as written.
            tools.streams_arguments = True
        max_tokens = body.max_completion_tokens or body.max_tokens
        params = state.sampling(
            body.overrides(max_tokens),
            json_mode=json_mode,
            json_schema=schema,
            logprobs=bool(body.logprobs),
            top_logprobs=body.top(),
            grammar=constraint or body.grammar,
        )
        think = unconstrained(_chat_think(body, state), json_mode or constraint is not None)
        prompt = state.prompts.chat(messages, tools=offered or None, think=think)
        parser = state.prompts.reply_parser(prompt, think, tools)
        run = await state.run(prompt, params, "/v1/chat/completions")
        ident = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if body.stream:
            first = True

            def chunk(
                fields: dict[str, Any], entries: Sequence[TokenLogprob], reason: str | None
            ) -> dict[str, Any]:
                nonlocal first
                delta: dict[str, Any] = {}
                if first:
                    delta["role"] = "assistant"
                    first = False
                delta.update(fields)
                logprobs = chat_logprobs(entries) if entries else None
                return {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": body.model,
                    "choices": [
                        {
                            "index": 0,
                            "delta": delta,
                            "logprobs": logprobs,
                            "finish_reason": reason,
                        }
                    ],
                }

            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                _chat_stream(run, parser, body.parallel_tool_calls, include_usage, chunk),
                media_type=SSE,
            )
        out = await run.collect(request)
        whole = parser.parse(out.text) if parser is not None else Piece(content=out.text)
        content, calls = whole.content, whole.calls
        if not body.parallel_tool_calls:
            calls = calls[:1]
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if whole.thinking:
            message["reasoning_content"] = whole.thinking
        if calls:
            message["content"] = content if content.strip() else None
            short = parser is not None and parser.short_ids
            message["tool_calls"] = [_openai_call(call, short) for call in calls]
        return {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": body.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if calls else _finish_reason(out.end),
                    "logprobs": chat_logprobs(out.logprobs) if body.logprobs else None,
                }
            ],
            "usage": _usage(out.end),
        }

    @router.post("/completions")
    async def completions(body: CompletionRequest, request: Request, state: State) -> Any:
        state.check_model(body.model)
        body.refuse_unsupported()
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise APIError(400, "prompt: send exactly one prompt per request")
        if body.suffix:
            raise APIError(400, "suffix is not supported by this model")
        if body.echo and body.logprobs is not None:
            raise APIError(
                400,
                "logprobs with echo: the log probabilities of prompt tokens are not computed; "
                "set echo to false",
            )
        logprobs = body.logprobs is not None
        params = state.sampling(
            body.overrides(body.max_tokens),
            logprobs=logprobs,
            top_logprobs=body.logprobs or 0,
            grammar=body.grammar,
        )
        run = await state.run(prompts[0], params, "/v1/completions")
        ident = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        echo = prompts[0] if body.echo else ""

        def choice(
            text: str, entries: Sequence[TokenLogprob], reason: str | None
        ) -> dict[str, Any]:
            return {
                "id": ident,
                "object": "text_completion",
                "created": created,
                "model": body.model,
                "choices": [
                    {
                        "index": 0,
                        "text": text,
                        "logprobs": _completion_logprobs(entries) if logprobs else None,
                        "finish_reason": reason,
                    }
                ],
            }

        def chunk(event: Delta | None, reason: str | None) -> dict[str, Any]:
            return choice(event.text if event else "", event.logprobs if event else (), reason)

        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_stream(run, include_usage, chunk), media_type=SSE)
        out = await run.collect(request)
        response = choice(echo + out.text, out.logprobs, _finish_reason(out.end))
        response["usage"] = _usage(out.end)
        return response

    @router.post("/embeddings")
    async def embeddings(body: EmbeddingRequest, state: State) -> Any:
        state.check_model(body.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or any(not t for t in texts):
            raise APIError(400, "input must be a non-empty string or list of non-empty strings")
        vectors, tokens = await state.embed(texts)
        data = []
        for index, full in enumerate(vectors):
            vector = unit_vector(full, body.dimensions)
            embedding: Any = vector
            if body.encoding_format == "base64":
                packed = struct.pack(f"<{len(vector)}f", *vector)
                embedding = base64.b64encode(packed).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        return {
            "object": "list",
            "data": data,
            "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def _model(state: RuntimeState) -> dict[str, Any]:
        return {
            "id": state.config.model_name,
            "object": "model",
            "created": int(state.loaded_at),
            "owned_by": _OWNER,
        }

    @router.get("/models")
    async def models(state: State) -> Any:
        return {"object": "list", "data": [_model(state)]}

    @router.get("/models/{model_id:path}")
    async def model(model_id: str, state: State) -> Any:
        state.check_model(model_id)
        return _model(state)

    @router.delete("/models/{model_id:path}", include_in_schema=False)
    async def delete_model(model_id: str, request: Request, state: State) -> Any:
        raise model_managed(request, state.config.model_name)

    return router
