"""The OpenAI API served by one loaded model: chat completions, completions, embeddings, models
and the Responses API. Each method takes a checked request and returns its typed answer, or the
answer's parts as they are generated; the router only binds the methods to HTTP."""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from slm_runtime.api.openai import responses
from slm_runtime.api.openai.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatLogprobs,
    ChatMessage,
    ChunkChoice,
    ChunkDelta,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
    FunctionDelta,
    FunctionOut,
    Model,
    ModelList,
    NamedToolChoice,
    ResponseFormat,
    StreamError,
    ToolCallDelta,
    ToolCallOut,
    Usage,
)
from slm_runtime.api.openai.responses_protocol import (
    Response,
    ResponseEvent,
    ResponseRequest,
)
from slm_runtime.api.openai.shared import (
    call_constraint,
    effort_think,
    offered_tools,
)
from slm_runtime.api.vectors import unit_vector
from slm_runtime.engines.base import Delta, Finished, TokenLogprob
from slm_runtime.errors import APIError
from slm_runtime.state import Disconnected, Run, RuntimeState
from slm_runtime.thinking import Piece, ReplyParser, unconstrained
from slm_runtime.tools import ToolCall, new_call_id

OWNER = "slm-operator"

ChunkOf = Callable[[ChunkDelta, Sequence[TokenLogprob], str | None], ChatCompletionChunk]
"""One chunk of a streamed chat completion: its delta, log probabilities and finish reason."""


def _finish_reason(end: Finished) -> str:
    return "stop" if end.finish_reason == "stop" else "length"


def _json_mode(fmt: ResponseFormat | None) -> tuple[bool, dict[str, Any] | None]:
    if fmt is None or fmt.type == "text":
        return False, None
    if fmt.type == "json_schema":
        schema = (fmt.json_schema or {}).get("schema")
        if not isinstance(schema, dict):
            raise APIError(400, "response_format.json_schema.schema must be a JSON schema object")
        return True, schema
    return True, None


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


def _tool_call(call: ToolCall, short_id: bool) -> ToolCallOut:
    arguments = json.dumps(call.arguments, ensure_ascii=False)
    return ToolCallOut(
        id=new_call_id(short_id), function=FunctionOut(name=call.name, arguments=arguments)
    )


def _announce(index: int, name: str, short_id: bool) -> ChunkDelta:
    """The delta that begins a call: its index, id, type and name, no arguments yet."""
    function = FunctionDelta(name=name, arguments="")
    call = ToolCallDelta(index=index, id=new_call_id(short_id), type="function", function=function)
    return ChunkDelta(tool_calls=[call])


def _arguments(index: int, arguments: str) -> ChunkDelta:
    """The delta that carries a piece of a call's arguments."""
    return ChunkDelta(
        tool_calls=[ToolCallDelta(index=index, function=FunctionDelta(arguments=arguments))]
    )


async def _chat_stream(
    run: Run,
    parser: ReplyParser | None,
    parallel: bool,
    include_usage: bool,
    chunk: ChunkOf,
) -> AsyncIterator[ChatCompletionChunk | StreamError]:
    """Chat chunks: thoughts as reasoning_content deltas, text as content deltas, each tool
    call as a delta with its index, id, type and name, then its arguments: in the pieces the
    model writes them where the parser hands them out (``ToolParser.streams_arguments``), else
    whole once the call is complete."""
    calls = 0
    short = parser is not None and parser.short_ids
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
                    yield chunk(ChunkDelta(reasoning_content=part.thinking), entries, None)
                if text or (event.logprobs and not part.thinking) or parser is None:
                    yield chunk(ChunkDelta(content=text), event.logprobs, None)
                for call in found:
                    if calls and not parallel:
                        continue
                    if call.sent:
                        # Its id, name and first arguments went out while it was written.
                        rest = call.raw_arguments[call.sent :]
                        if rest:
                            yield chunk(_arguments(calls, rest), (), None)
                        calls += 1
                        continue
                    yield chunk(_announce(calls, call.name, short), (), None)
                    arguments = json.dumps(call.arguments, ensure_ascii=False)
                    yield chunk(_arguments(calls, arguments), (), None)
                    calls += 1
                written = parser.argument_piece() if parser is not None else None
                if written is not None and (parallel or not calls):
                    index, name, arguments = written
                    if index != announced:
                        announced = index
                        yield chunk(_announce(index, name, short), (), None)
                    yield chunk(_arguments(index, arguments), (), None)
            else:
                last = parser.finish() if parser is not None else Piece()
                # A call whose pieces went out but that max_tokens cut off: the answer ends
                # with it, by length, and its text is not sent again as content.
                cut = announced >= calls
                if last.thinking:
                    yield chunk(ChunkDelta(reasoning_content=last.thinking), (), None)
                if last.content and not cut:
                    yield chunk(ChunkDelta(content=last.content), (), None)
                reason = "tool_calls" if calls and not cut else _finish_reason(event)
                yield chunk(ChunkDelta(), (), reason)
                if include_usage:
                    usage = chunk(ChunkDelta(), (), None)
                    yield usage.model_copy(update={"choices": [], "usage": Usage.of(event)})
    except Exception:
        yield StreamError.internal()


async def _completion_stream(
    run: Run,
    include_usage: bool,
    chunk: Callable[[str, Sequence[TokenLogprob], str | None], Completion],
) -> AsyncIterator[Completion | StreamError]:
    try:
        async for event in run:
            if isinstance(event, Delta):
                yield chunk(event.text, event.logprobs, None)
            else:
                yield chunk("", (), _finish_reason(event))
                if include_usage:
                    usage = chunk("", (), None)
                    yield usage.model_copy(update={"choices": [], "usage": Usage.of(event)})
    except Exception:
        yield StreamError.internal()


class OpenAIServing:
    """The OpenAI API over the loaded model of ``state``."""

    def __init__(self, state: RuntimeState) -> None:
        self.state = state

    async def chat(
        self, body: ChatCompletionRequest, disconnected: Disconnected | None = None
    ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk | StreamError]:
        """A chat completion: the whole of it, or its chunks when ``body.stream``."""
        state = self.state
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
                delta: ChunkDelta, entries: Sequence[TokenLogprob], reason: str | None
            ) -> ChatCompletionChunk:
                nonlocal first
                if first:
                    delta.role = "assistant"
                    first = False
                logprobs = ChatLogprobs.of(entries) if entries else None
                choice = ChunkChoice(delta=delta, logprobs=logprobs, finish_reason=reason)
                return ChatCompletionChunk(
                    id=ident, created=created, model=body.model, choices=[choice]
                )

            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _chat_stream(run, parser, body.parallel_tool_calls, include_usage, chunk)
        out = await run.collect(disconnected)
        whole = parser.parse(out.text) if parser is not None else Piece(content=out.text)
        content, calls = whole.content, whole.calls
        if not body.parallel_tool_calls:
            calls = calls[:1]
        message = AssistantMessage(content=content, reasoning_content=whole.thinking or None)
        if calls:
            message.content = content if content.strip() else None
            short = parser is not None and parser.short_ids
            message.tool_calls = [_tool_call(call, short) for call in calls]
        answer = ChatChoice(
            message=message,
            finish_reason="tool_calls" if calls else _finish_reason(out.end),
            logprobs=ChatLogprobs.of(out.logprobs) if body.logprobs else None,
        )
        return ChatCompletion(
            id=ident, created=created, model=body.model, choices=[answer], usage=Usage.of(out.end)
        )

    async def completion(
        self, body: CompletionRequest, disconnected: Disconnected | None = None
    ) -> Completion | AsyncIterator[Completion | StreamError]:
        """A legacy completion: the whole of it, or its chunks when ``body.stream``."""
        state = self.state
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

        def chunk(text: str, entries: Sequence[TokenLogprob], reason: str | None) -> Completion:
            choice = CompletionChoice(
                text=text,
                logprobs=CompletionLogprobs.of(entries) if logprobs else None,
                finish_reason=reason,
            )
            return Completion(id=ident, created=created, model=body.model, choices=[choice])

        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _completion_stream(run, include_usage, chunk)
        out = await run.collect(disconnected)
        echo = prompts[0] if body.echo else ""
        whole = chunk(echo + out.text, out.logprobs, _finish_reason(out.end))
        whole.usage = Usage.of(out.end)
        return whole

    async def embeddings(self, body: EmbeddingRequest) -> EmbeddingList:
        """The embedding of each input, scaled to unit length (after cutting to ``dimensions``)."""
        state = self.state
        state.check_model(body.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or any(not t for t in texts):
            raise APIError(400, "input must be a non-empty string or list of non-empty strings")
        vectors, tokens = await state.embed(texts)
        data = []
        for index, full in enumerate(vectors):
            vector = unit_vector(full, body.dimensions)
            embedding: list[float] | str = vector
            if body.encoding_format == "base64":
                packed = struct.pack(f"<{len(vector)}f", *vector)
                embedding = base64.b64encode(packed).decode()
            data.append(Embedding(index=index, embedding=embedding))
        usage = EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
        return EmbeddingList(data=data, model=body.model, usage=usage)

    def model(self, model_id: str | None = None) -> Model:
        """The served model (404 when ``model_id`` names another)."""
        state = self.state
        if model_id is not None:
            state.check_model(model_id)
        return Model(id=state.config.model_name, created=int(state.loaded_at), owned_by=OWNER)

    def models(self) -> ModelList:
        return ModelList(data=[self.model()])

    async def respond(
        self, body: ResponseRequest, disconnected: Disconnected | None = None
    ) -> Response | AsyncIterator[ResponseEvent]:
        """A Responses API response: the whole of it, or its events when ``body.stream``."""
        state = self.state
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
        run = await state.run(prompt, params, responses.ROUTE)
        reply = responses.Reply(body)
        if body.stream:
            return responses.stream(reply, run, parser)
        out = await run.collect(disconnected)
        logprobs = responses.output_logprobs(out.logprobs) if body.logprobs else []
        status, output = reply.output(out.text, logprobs, out.end, parser)
        return reply.object(status, output, out.end)
