"""The Ollama API served by one loaded model: generate, chat, embed, embeddings, tags, show, ps
and version. Each method takes a checked request and returns its typed answer, or the answer's
parts as they are generated; the router only binds the methods to HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any, TypeVar

from slm_runtime.api.ollama.protocol import (
    ChatMessageOut,
    ChatRequest,
    ChatResponse,
    DebugInfo,
    EmbeddingResponse,
    EmbeddingsRequest,
    EmbedRequest,
    EmbedResponse,
    Format,
    GenerateRequest,
    GenerateResponse,
    KeepAlive,
    ListedModel,
    Message,
    ModelDetails,
    Options,
    PsResponse,
    RunningModel,
    ShowRequest,
    ShowResponse,
    StreamError,
    TagsResponse,
    ToolCallOut,
    ToolFunction,
    VersionResponse,
    logprobs_of,
)
from slm_runtime.api.vectors import unit_vector
from slm_runtime.config import ModelParameters
from slm_runtime.engines.base import Delta, Finished, PromptTooLongError, SamplingParams
from slm_runtime.errors import APIError
from slm_runtime.state import SAMPLING_FIELDS, Disconnected, Run, RuntimeState
from slm_runtime.thinking import NoThinkingError, Piece, ReplyParser, request_think, unconstrained
from slm_runtime.tool_checks import check_tools
from slm_runtime.tools import NoToolsError, ToolCall, ToolParser, new_call_id

_NS = 1_000_000_000
_NEVER = "9999-12-31T23:59:59Z"

A = TypeVar("A", GenerateResponse, ChatResponse)
"""What generate or chat answers."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _check_load_options(params: ModelParameters, state: RuntimeState) -> None:
    """Refuse what would need the model loaded again: a larger context or other threads."""
    loaded = state.engine.context_length
    if params.context_length is not None and params.context_length > loaded:
        raise APIError(
            400,
            f"options.num_ctx: {params.context_length} is more than the {loaded}-token context "
            "window this model was loaded with; a request may only narrow it (raise "
            "parameters.contextLength in the LocalModel for more)",
        )
    threads = state.engine.threads
    if params.num_thread is not None and params.num_thread != threads:
        raise APIError(
            400,
            f"options.num_thread: this model generates with {threads} threads, set when it was "
            "loaded; a request cannot change it (set parameters.numThread in the LocalModel)",
        )


def _overrides(options: Options, state: RuntimeState) -> dict[str, Any]:
    """The options as sampling overrides for the engine, after checking that what was loaded
    can honour them: num_ctx may narrow the loaded context window, num_thread must match the
    loaded thread count."""
    params = options.parameters()
    _check_load_options(params, state)
    out = params.model_dump(include={*SAMPLING_FIELDS, "stop", "context_length"}, exclude_none=True)
    if params.num_predict is not None:
        out["max_tokens"] = params.num_predict
    return out


def _json_format(fmt: Format) -> tuple[bool, dict[str, Any] | None]:
    if isinstance(fmt, dict):
        return True, fmt
    return fmt == "json", None


def _reject_images(images: list[str] | None) -> None:
    if images:
        raise APIError(400, "this model does not accept images")


def _think(model: str, value: bool | str | None, state: RuntimeState) -> bool | None:
    """Whether the model thinks for this request, as Ollama decides it: a model whose template
    renders thoughts thinks unless ``think`` is false; asking one that does not is a 400."""
    try:
        return request_think(value, state.prompts.thinking_markers() is not None)
    except NoThinkingError:
        raise APIError(400, f"{json.dumps(model)} does not support thinking") from None


def _final(model: str, end: Finished, started: float) -> dict[str, Any]:
    """The fields of the last part of an answer: why it ended, its counts and durations."""
    return {
        "model": model,
        "created_at": _now(),
        "done": True,
        "done_reason": "stop" if end.finish_reason == "stop" else "length",
        "total_duration": int((time.monotonic() - started) * _NS),
        "load_duration": 0,
        "prompt_eval_count": end.prompt_tokens,
        "prompt_eval_duration": int(end.prompt_seconds * _NS),
        "eval_count": end.completion_tokens,
        "eval_duration": int(end.generation_seconds * _NS),
    }


def _tool_calls(calls: Sequence[ToolCall], short_ids: bool) -> list[ToolCallOut]:
    """``message.tool_calls`` as Ollama writes them: an id, and the function's index, name and
    arguments as an object."""
    return [
        ToolCallOut(
            id=new_call_id(short_ids),
            function=ToolFunction(index=call.index, name=call.name, arguments=call.arguments),
        )
        for call in calls
    ]


def _tool_parser(model: str, tools: list[dict[str, Any]], state: RuntimeState) -> ToolParser:
    """The parser for the model's tool calls, after checking the tools; a model whose template
    renders no tools is refused as Ollama refuses it."""
    try:
        names = check_tools(tools)
    except ValueError as exc:
        raise APIError(400, f"invalid request: {exc}") from None
    try:
        return state.prompts.tool_parser(names)
    except NoToolsError:
        raise APIError(400, f"{model} does not support tools") from None


def _template_message(index: int, message: Message) -> dict[str, Any]:
    """A message as the templates read it (its thought also as Hugging Face templates name
    it); tool call arguments must be objects."""
    out = message.model_dump(exclude_none=True)
    if message.thinking:
        out["reasoning_content"] = message.thinking
    for j, call in enumerate(message.tool_calls or []):
        function = call.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise APIError(
                400, f"invalid request: messages[{index}].tool_calls[{j}].function.name is required"
            )
        arguments = function.get("arguments", {})
        if not isinstance(arguments, dict):
            raise APIError(
                400,
                f"invalid request: messages[{index}].tool_calls[{j}].function.arguments must be "
                "an object",
            )
    return out


def _parameters_text(state: RuntimeState) -> str:
    params = state.config.parameters.model_dump(exclude_none=True)
    lines = []
    names = {"context_length": "num_ctx"}
    for key, value in params.items():
        values = value if isinstance(value, list) else [value]
        lines += [
            f"{names.get(key, key):<30} {json.dumps(v) if key == 'stop' else v}" for v in values
        ]
    return "\n".join(lines)


def _modelfile(state: RuntimeState) -> str:
    cfg = state.config
    out = [f"FROM {cfg.model_path}"]
    if cfg.template is not None:
        out.append(f'TEMPLATE """{cfg.template}"""')
    if cfg.system is not None:
        out.append(f'SYSTEM """{cfg.system}"""')
    for line in _parameters_text(state).splitlines():
        out.append(f"PARAMETER {' '.join(line.split(maxsplit=1))}")
    return "\n".join(out) + "\n"


def _loaded(keep_alive: KeepAlive) -> str:
    """Why an empty generate request is done: the model stays loaded, or ``keep_alive`` 0 asks
    for it to be unloaded (which the server answers without unloading it)."""
    return "unload" if keep_alive in (0, "0", "0s", "0m") else "load"


class OllamaServing:
    """The Ollama API over the loaded model of ``state``."""

    def __init__(self, state: RuntimeState) -> None:
        self.state = state

    async def generate(
        self, body: GenerateRequest, disconnected: Disconnected | None = None
    ) -> GenerateResponse | AsyncIterator[GenerateResponse | StreamError]:
        """A completion of ``body.prompt``: the whole of it, or its parts when ``body.stream``;
        with no prompt, the answer that the model is loaded."""
        state = self.state
        state.check_model(body.model)
        _reject_images(body.images)
        if not body.prompt and body.suffix is None:
            return GenerateResponse(
                model=body.model,
                created_at=_now(),
                response="",
                done=True,
                done_reason=_loaded(body.keep_alive),
            )
        if body.suffix:
            raise APIError(400, "suffix (fill-in-the-middle) is not supported by this model")
        if body.context:
            raise APIError(
                400,
                "context: answers here carry no context, so none can be sent back; send the "
                "earlier turns in prompt, or use /api/chat with messages",
            )
        json_mode, schema = _json_format(body.format)
        params = state.sampling(
            _overrides(body.options, state),
            json_mode=json_mode,
            json_schema=schema,
            logprobs=bool(body.logprobs),
            top_logprobs=body.top_logprobs or 0,
        )
        think = unconstrained(_think(body.model, body.think, state), json_mode)
        prompt = state.prompts.generate(
            body.prompt,
            system=body.system,
            template=body.template,
            raw=body.raw,
            think=think,
        )
        if body.debug_render_only:
            return GenerateResponse(
                model=body.model,
                created_at=_now(),
                response="",
                done=False,
                debug_info=DebugInfo(rendered_template=prompt),
            )

        def answer(part: Piece, **fields: Any) -> GenerateResponse:
            return GenerateResponse(response=part.content, thinking=part.thinking or None, **fields)

        parser = state.prompts.reply_parser(prompt, think, None)
        return await self._reply(
            "/api/generate", prompt, params, body.model, body.stream, answer, parser, disconnected
        )

    async def chat(
        self, body: ChatRequest, disconnected: Disconnected | None = None
    ) -> ChatResponse | AsyncIterator[ChatResponse | StreamError]:
        """The assistant's next message: the whole of it, or its parts when ``body.stream``;
        with no messages, the answer that the model is loaded."""
        state = self.state
        state.check_model(body.model)
        for message in body.messages:
            _reject_images(message.images)
        if not body.messages:
            return ChatResponse(
                model=body.model,
                created_at=_now(),
                message=ChatMessageOut(role="assistant", content=""),
                done=True,
                done_reason="load",
            )
        json_mode, schema = _json_format(body.format)
        params = state.sampling(
            _overrides(body.options, state),
            json_mode=json_mode,
            json_schema=schema,
            logprobs=bool(body.logprobs),
            top_logprobs=body.top_logprobs or 0,
        )
        tools = _tool_parser(body.model, body.tools, state) if body.tools else None
        think = unconstrained(_think(body.model, body.think, state), json_mode)
        prompt = state.prompts.chat(
            [_template_message(i, m) for i, m in enumerate(body.messages)],
            tools=body.tools or None,
            think=think,
        )
        if body.debug_render_only:
            return ChatResponse(
                model=body.model,
                created_at=_now(),
                message=ChatMessageOut(role="", content=""),
                done=False,
                debug_info=DebugInfo(rendered_template=prompt),
            )
        parser = state.prompts.reply_parser(prompt, think, tools)
        short = parser is not None and parser.short_ids

        def answer(part: Piece, **fields: Any) -> ChatResponse:
            message = ChatMessageOut(
                role="assistant",
                content=part.content,
                thinking=part.thinking or None,
                tool_calls=_tool_calls(part.calls, short) if part.calls else None,
            )
            return ChatResponse(message=message, **fields)

        return await self._reply(
            "/api/chat", prompt, params, body.model, body.stream, answer, parser, disconnected
        )

    async def _reply(
        self,
        route: str,
        prompt: str,
        params: SamplingParams,
        model: str,
        stream: bool,
        answer: Callable[..., A],
        parser: ReplyParser | None,
        disconnected: Disconnected | None,
    ) -> A | AsyncIterator[A | StreamError]:
        """The answer, made by ``answer`` from a part of the reply (its text, thought and
        calls) and the fields given; its parts as they are generated when ``stream``."""
        run = await self.state.run(prompt, params, route)
        if stream:
            return self._parts(run, model, answer, parser)
        out = await run.collect(disconnected)
        whole = parser.parse(out.text) if parser is not None else Piece(content=out.text)
        final = _final(model, out.end, run.started)
        return answer(whole, **final, logprobs=logprobs_of(out.logprobs))

    @staticmethod
    async def _parts(
        run: Run, model: str, answer: Callable[..., A], parser: ReplyParser | None
    ) -> AsyncIterator[A | StreamError]:
        """The parts of a streamed answer: each piece of text (and its log probabilities), then
        the rest with the counts and durations; an error once parts went out is a last line."""
        try:
            async for event in run:
                if isinstance(event, Delta):
                    part = Piece(content=event.text)
                    if parser is not None:
                        part = parser.add(event.text)
                        if not part and not event.logprobs:
                            continue
                    yield answer(
                        part,
                        model=model,
                        created_at=_now(),
                        done=False,
                        logprobs=logprobs_of(event.logprobs),
                    )
                else:
                    rest = parser.finish() if parser is not None else Piece()
                    yield answer(rest, **_final(model, event, run.started))
        except APIError as exc:
            yield StreamError(error=exc.message)
        except Exception:
            yield StreamError(error="internal error while generating")

    async def _embed(
        self, texts: list[str], options: Options, truncate: bool = False
    ) -> tuple[list[list[float]], int]:
        """The vectors of ``texts`` and the tokens read; an input longer than the context is cut
        to it with ``truncate``, else a 400 in Ollama's words."""
        state = self.state
        state.check_embeddings()
        params = options.parameters()
        _check_load_options(params, state)
        try:
            return await state.embed(texts, context_length=params.context_length, truncate=truncate)
        except PromptTooLongError as exc:
            raise APIError(400, f"the input length exceeds the context length: {exc}") from None

    async def embed(self, body: EmbedRequest) -> EmbedResponse:
        """The embedding of each input, scaled to unit length (after cutting to ``dimensions``)."""
        self.state.check_model(body.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts:
            raise APIError(400, "input must not be empty")
        started = time.monotonic()
        vectors, tokens = await self._embed(texts, body.options, body.truncate)
        return EmbedResponse(
            model=body.model,
            embeddings=[unit_vector(vector, body.dimensions) for vector in vectors],
            total_duration=int((time.monotonic() - started) * _NS),
            prompt_eval_count=tokens,
        )

    async def embeddings(self, body: EmbeddingsRequest) -> EmbeddingResponse:
        """The legacy endpoint: one prompt's embedding, not scaled; none for an empty prompt."""
        self.state.check_model(body.model)
        if not body.prompt:
            return EmbeddingResponse(embedding=[])
        vectors, _ = await self._embed([body.prompt], body.options)
        return EmbeddingResponse(embedding=vectors[0])

    def _details(self) -> ModelDetails:
        engine = self.state.engine
        d = engine.details
        return ModelDetails(
            format=engine.format.value,
            family=d.family,
            families=[d.family] if d.family else None,
            parameter_size=d.parameter_size,
            quantization_level=d.quantization_level,
        )

    def tags(self) -> TagsResponse:
        state = self.state
        name = f"{state.config.model_name}:latest"
        listed = ListedModel(
            name=name,
            model=name,
            modified_at=_rfc3339(state.loaded_at),
            size=state.engine.details.size_bytes,
            digest=state.digest.removeprefix("sha256:"),
            details=self._details(),
        )
        return TagsResponse(models=[listed])

    def ps(self) -> PsResponse:
        state = self.state
        engine = state.engine
        name = f"{state.config.model_name}:latest"
        size = engine.details.size_bytes
        running = RunningModel(
            name=name,
            model=name,
            size=size,
            digest=state.digest.removeprefix("sha256:"),
            details=self._details(),
            expires_at=_NEVER,
            size_vram=0 if engine.device.value == "cpu" else size,
            context_length=engine.context_length,
            device=engine.device.value,
        )
        return PsResponse(models=[running])

    def show(self, body: ShowRequest) -> ShowResponse:
        state = self.state
        name = body.model or body.name
        if not name:
            raise APIError(400, "model is required")
        state.check_model(name)
        capabilities = ["completion"]
        if state.engine.supports_embeddings:
            capabilities.append("embedding")
        if state.prompts.tool_tag() is not None:
            capabilities.append("tools")
        if state.prompts.thinking_markers() is not None:
            capabilities.append("thinking")
        return ShowResponse(
            modelfile=_modelfile(state),
            parameters=_parameters_text(state),
            template=state.config.template or state.engine.chat_template or "",
            system=state.config.system or "",
            details=self._details(),
            model_info={
                **state.engine.details.architecture_info,
                "context_length": state.engine.context_length,
            },
            capabilities=capabilities,
            modified_at=_rfc3339(state.loaded_at),
        )

    @staticmethod
    def version() -> VersionResponse:
        try:
            return VersionResponse(version=version("slm-operator"))
        except PackageNotFoundError:
            return VersionResponse(version="0.0.0")
