"""The Ollama API: generate, chat, embed, embeddings, tags and show."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from slm_runtime.api.auth import bearer_auth
from slm_runtime.api.ollama.models import (
    ChatRequest,
    EmbeddingsRequest,
    EmbedRequest,
    Format,
    GenerateRequest,
    KeepAlive,
    Message,
    Options,
    ShowRequest,
)
from slm_runtime.api.vectors import unit_vector
from slm_runtime.config import ModelParameters
from slm_runtime.engines.base import (
    Delta,
    Finished,
    PromptTooLongError,
    TokenChoice,
    TokenLogprob,
)
from slm_runtime.errors import APIError, model_managed
from slm_runtime.state import SAMPLING_FIELDS, Run, RuntimeState, runtime
from slm_runtime.thinking import NoThinkingError, Piece, ReplyParser, request_think, unconstrained
from slm_runtime.tool_checks import check_tools
from slm_runtime.tools import NoToolsError, ToolCall, ToolParser, new_call_id

NDJSON = "application/x-ndjson"
_NS = 1_000_000_000
_NEVER = "9999-12-31T23:59:59Z"


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


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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


def _final(model: str, end: Finished, started: float, load_seconds: float) -> dict[str, Any]:
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


def _token(choice: TokenChoice) -> dict[str, Any]:
    out: dict[str, Any] = {"token": choice.token, "logprob": choice.logprob}
    if choice.bytes:
        out["bytes"] = list(choice.bytes)
    return out


def _logprobs(entries: Sequence[TokenLogprob]) -> dict[str, Any]:
    """Ollama's ``logprobs`` field (left out when there is nothing to report, as Ollama does)."""
    if not entries:
        return {}
    items = []
    for entry in entries:
        item = _token(entry.chosen)
        if entry.top:
            item["top_logprobs"] = [_token(choice) for choice in entry.top]
        items.append(item)
    return {"logprobs": items}


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


def _ollama_calls(calls: Sequence[ToolCall], short_ids: bool) -> list[dict[str, Any]]:
    """``message.tool_calls`` as Ollama writes them: an id, and the function's index, name and
    arguments as an object."""
    return [
        {
            "id": new_call_id(short_ids),
            "function": {"index": call.index, "name": call.name, "arguments": call.arguments},
        }
        for call in calls
    ]


async def _ndjson(
    run: Run,
    model: str,
    piece: Any,
    final_extra: dict[str, Any],
    load_seconds: float,
    parser: ReplyParser | None,
) -> AsyncIterator[bytes]:
    try:
        async for event in run:
            if isinstance(event, Delta):
                part = Piece(content=event.text)
                if parser is not None:
                    part = parser.add(event.text)
                    if not part and not event.logprobs:
                        continue
                yield _line(
                    {
                        "model": model,
                        "created_at": _now(),
                        **piece(part),
                        "done": False,
                        **_logprobs(event.logprobs),
                    }
                )
            else:
                rest = parser.finish() if parser is not None else Piece()
                yield _line(
                    {
                        **_final(model, event, run.started, load_seconds),
                        **piece(rest),
                        **final_extra,
                    }
                )
    except APIError as exc:
        yield _line({"error": exc.message})
    except Exception:
        yield _line({"error": "internal error while generating"})


async def _respond(
    state: RuntimeState,
    request: Request,
    route: str,
    prompt: str,
    params: Any,
    model: str,
    stream: bool,
    piece: Any,
    final_extra: dict[str, Any] | None = None,
    parser: ReplyParser | None = None,
) -> Any:
    run = await state.run(prompt, params, route)
    if stream:
        return StreamingResponse(
            _ndjson(run, model, piece, final_extra or {}, state.load_seconds, parser),
            media_type=NDJSON,
        )
    out = await run.collect(request)
    whole = parser.parse(out.text) if parser is not None else Piece(content=out.text)
    return {
        **_final(model, out.end, run.started, state.load_seconds),
        **piece(whole),
        **(final_extra or {}),
        **_logprobs(out.logprobs),
    }


def _rendered(model: str, prompt: str, empty: dict[str, Any]) -> dict[str, Any]:
    """The answer to ``_debug_render_only``: the prompt as the template rendered it, with
    nothing generated, as Ollama answers it."""
    return {
        "model": model,
        "created_at": _now(),
        **empty,
        "done": False,
        "_debug_info": {"rendered_template": prompt, "image_count": 0},
    }


def _load_response(model: str, keep_alive: KeepAlive) -> dict[str, Any]:
    unload = keep_alive in (0, "0", "0s", "0m")
    return {
        "model": model,
        "created_at": _now(),
        "response": "",
        "done": True,
        "done_reason": "unload" if unload else "load",
    }


def _details(state: RuntimeState) -> dict[str, Any]:
    d = state.engine.details
    return {
        "parent_model": "",
        "format": state.engine.format.value,
        "family": d.family,
        "families": [d.family] if d.family else None,
        "parameter_size": d.parameter_size,
        "quantization_level": d.quantization_level,
    }


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


State = Annotated[RuntimeState, Depends(runtime)]


def build_router(api_token: str | None) -> APIRouter:
    """The Ollama routes, behind the API token when one is set."""
    router = APIRouter(dependencies=[Depends(bearer_auth(api_token))])

    @router.post("/api/generate")
    async def generate(body: GenerateRequest, request: Request, state: State) -> Any:
        state.check_model(body.model)
        _reject_images(body.images)
        if not body.prompt and body.suffix is None:
            return _load_response(body.model, body.keep_alive)
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
            return _rendered(body.model, prompt, {"response": ""})

        def piece(part: Piece) -> dict[str, Any]:
            out: dict[str, Any] = {"response": part.content}
            if part.thinking:
                out["thinking"] = part.thinking
            return out

        return await _respond(
            state,
            request,
            "/api/generate",
            prompt,
            params,
            body.model,
            body.stream,
            piece,
            parser=state.prompts.reply_parser(prompt, think, None),
        )

    @router.post("/api/chat")
    async def chat(body: ChatRequest, request: Request, state: State) -> Any:
        state.check_model(body.model)
        for message in body.messages:
            _reject_images(message.images)
        if not body.messages:
            return {
                "model": body.model,
                "created_at": _now(),
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": "load",
            }
        json_mode, schema = _json_format(body.format)
        params = state.sampling(
            _overrides(body.options, state),
            json_mode=json_mode,
            json_schema=schema,
            logprobs=bool(body.logprobs),
            top_logprobs=body.top_logprobs or 0,
        )
        tools = None
        if body.tools:
            tools = _tool_parser(body.model, body.tools, state)
        think = unconstrained(_think(body.model, body.think, state), json_mode)
        prompt = state.prompts.chat(
            [_template_message(i, m) for i, m in enumerate(body.messages)],
            tools=body.tools or None,
            think=think,
        )
        if body.debug_render_only:
            return _rendered(body.model, prompt, {"message": {"role": "", "content": ""}})
        parser = state.prompts.reply_parser(prompt, think, tools)

        def piece(part: Piece) -> dict[str, Any]:
            message: dict[str, Any] = {"role": "assistant", "content": part.content}
            if part.thinking:
                message["thinking"] = part.thinking
            if part.calls:
                message["tool_calls"] = _ollama_calls(
                    part.calls, parser is not None and parser.short_ids
                )
            return {"message": message}

        return await _respond(
            state,
            request,
            "/api/chat",
            prompt,
            params,
            body.model,
            body.stream,
            piece,
            parser=parser,
        )

    async def _embed(
        state: RuntimeState, texts: list[str], options: Options, truncate: bool = False
    ) -> tuple[list[list[float]], int]:
        """The vectors of ``texts`` and the tokens read; an input longer than the context is cut
        to it with ``truncate``, else a 400 in Ollama's words."""
        state.check_embeddings()
        params = options.parameters()
        _check_load_options(params, state)
        try:
            return await state.embed(texts, context_length=params.context_length, truncate=truncate)
        except PromptTooLongError as exc:
            raise APIError(400, f"the input length exceeds the context length: {exc}") from None

    @router.post("/api/embed")
    async def embed(body: EmbedRequest, state: State) -> Any:
        state.check_model(body.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts:
            raise APIError(400, "input must not be empty")
        started = time.monotonic()
        vectors, tokens = await _embed(state, texts, body.options, body.truncate)
        return {
            "model": body.model,
            "embeddings": [unit_vector(vector, body.dimensions) for vector in vectors],
            "total_duration": int((time.monotonic() - started) * _NS),
            "load_duration": 0,
            "prompt_eval_count": tokens,
        }

    @router.post("/api/embeddings")
    async def embeddings(body: EmbeddingsRequest, state: State) -> Any:
        state.check_model(body.model)
        if not body.prompt:
            return {"embedding": []}
        vectors, _ = await _embed(state, [body.prompt], body.options)
        return {"embedding": vectors[0]}

    def _model_entry(state: RuntimeState) -> dict[str, Any]:
        name = f"{state.config.model_name}:latest"
        return {
            "name": name,
            "model": name,
            "modified_at": _rfc3339(state.loaded_at),
            "size": state.engine.details.size_bytes,
            "digest": state.digest.removeprefix("sha256:"),
            "details": _details(state),
        }

    @router.get("/api/tags")
    async def tags(state: State) -> Any:
        return {"models": [_model_entry(state)]}

    @router.post("/api/show")
    async def show(body: ShowRequest, state: State) -> Any:
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
        return {
            "license": "",
            "modelfile": _modelfile(state),
            "parameters": _parameters_text(state),
            "template": state.config.template or state.engine.chat_template or "",
            "system": state.config.system or "",
            "details": _details(state),
            "model_info": {
                **state.engine.details.architecture_info,
                "context_length": state.engine.context_length,
            },
            "capabilities": capabilities,
            "modified_at": _rfc3339(state.loaded_at),
        }

    @router.get("/api/ps")
    async def ps(state: State) -> Any:
        entry = _model_entry(state)
        size = state.engine.details.size_bytes
        entry.pop("modified_at")
        return {
            "models": [
                {
                    **entry,
                    "expires_at": _NEVER,
                    "size_vram": 0 if state.engine.device.value == "cpu" else size,
                    "context_length": state.engine.context_length,
                    "device": state.engine.device.value,
                }
            ]
        }

    @router.get("/api/version")
    async def api_version() -> Any:
        try:
            return {"version": version("slm-operator")}
        except PackageNotFoundError:
            return {"version": "0.0.0"}

    async def managed(request: Request, state: State) -> JSONResponse:
        raise model_managed(request, state.config.model_name)

    for path, methods in (
        ("/api/pull", ["POST"]),
        ("/api/push", ["POST"]),
        ("/api/create", ["POST"]),
        ("/api/copy", ["POST"]),
        ("/api/delete", ["DELETE"]),
        ("/api/blobs/{digest}", ["HEAD", "POST"]),
    ):
        router.add_api_route(path, managed, methods=methods, include_in_schema=False)

    return router
