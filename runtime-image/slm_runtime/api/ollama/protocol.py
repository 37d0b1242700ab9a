"""The Ollama API's request and answer models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, ValidationError

from slm_runtime.api.body import RequestBody, TopLevelBody
from slm_runtime.api.reply import ReplyBody, omitted
from slm_runtime.config import ModelParameters
from slm_runtime.engines.base import (
    MAX_TOP_LOGPROBS,
    TokenChoice,
    TokenLogprob,
)
from slm_runtime.errors import APIError

Format = Literal["json", ""] | dict[str, Any] | None

KeepAlive = str | int | float | None


class Options(RequestBody):
    """Per-request overrides of the Modelfile PARAMETERs, bounded as the configuration's are."""

    num_predict: int | None = Field(default=None, ge=-2)
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: list[str] | str | None = None
    num_ctx: int | None = None
    num_thread: int | None = None

    def parameters(self) -> ModelParameters:
        """The options as configuration PARAMETERs, refused (400) where the configuration
        would refuse them; num_predict -1 and -2 both mean "until the context is full"."""
        values = self.model_dump(exclude_none=True)
        if "num_ctx" in values:
            values["context_length"] = values.pop("num_ctx")
        if isinstance(self.stop, str):
            values["stop"] = [self.stop]
        if self.num_predict is not None and self.num_predict < 0:
            values["num_predict"] = -1
        try:
            return ModelParameters.model_validate(values)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = [str(p) for p in err["loc"]]
            name = "num_ctx" if loc[:1] == ["context_length"] else ".".join(loc)
            raise APIError(400, f"invalid request: options.{name}: {err['msg']}") from None


class GenerateRequest(TopLevelBody):
    model: str = Field(min_length=1)
    prompt: str = ""
    suffix: str | None = None
    images: list[str] | None = None
    format: Format = None
    options: Options = Field(default_factory=Options)
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    stream: bool = True
    raw: bool = False
    keep_alive: KeepAlive = None
    think: bool | Literal["high", "medium", "low", "max"] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    debug_render_only: bool = Field(default=False, alias="_debug_render_only")


class Message(RequestBody):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    thinking: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


class ChatRequest(TopLevelBody):
    model: str = Field(min_length=1)
    messages: list[Message] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    format: Format = None
    options: Options = Field(default_factory=Options)
    stream: bool = True
    keep_alive: KeepAlive = None
    think: bool | Literal["high", "medium", "low", "max"] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    debug_render_only: bool = Field(default=False, alias="_debug_render_only")


class EmbedRequest(TopLevelBody):
    model: str = Field(min_length=1)
    input: str | list[str]
    truncate: bool = True
    options: Options = Field(default_factory=Options)
    keep_alive: KeepAlive = None
    dimensions: int | None = Field(default=None, ge=1)


class EmbeddingsRequest(TopLevelBody):
    model: str = Field(min_length=1)
    prompt: str
    options: Options = Field(default_factory=Options)
    keep_alive: KeepAlive = None


class ShowRequest(TopLevelBody):
    model: str = ""
    name: str = ""
    verbose: bool = False


# The answers.


class TokenOut(ReplyBody):
    token: str
    logprob: float
    bytes: list[int] | None = omitted()

    @classmethod
    def of(cls, choice: TokenChoice) -> TokenOut:
        return cls(token=choice.token, logprob=choice.logprob, bytes=list(choice.bytes) or None)


class TokenLogprobs(TokenOut):
    """A generated token, with the most likely tokens of its position when asked for."""

    top_logprobs: list[TokenOut] | None = omitted()

    @classmethod
    def entry(cls, entry: TokenLogprob) -> TokenLogprobs:
        chosen = entry.chosen
        return cls(
            token=chosen.token,
            logprob=chosen.logprob,
            bytes=list(chosen.bytes) or None,
            top_logprobs=[TokenOut.of(choice) for choice in entry.top] or None,
        )


def logprobs_of(entries: Sequence[TokenLogprob]) -> list[TokenLogprobs] | None:
    """Ollama's ``logprobs`` field: left out when there is nothing to report, as Ollama does."""
    return [TokenLogprobs.entry(entry) for entry in entries] or None


class DebugInfo(ReplyBody):
    rendered_template: str
    image_count: int = 0


class _Answer(ReplyBody):
    """What generate and chat answer: a part of a stream (``done`` false), or the last part or
    the whole answer, with its counts and durations."""

    model: str
    created_at: str
    done: bool
    done_reason: str | None = omitted()
    total_duration: int | None = omitted()
    load_duration: int | None = omitted()
    prompt_eval_count: int | None = omitted()
    prompt_eval_duration: int | None = omitted()
    eval_count: int | None = omitted()
    eval_duration: int | None = omitted()
    logprobs: list[TokenLogprobs] | None = omitted()
    debug_info: DebugInfo | None = omitted(alias="_debug_info")


class GenerateResponse(_Answer):
    response: str
    thinking: str | None = omitted()


class ToolFunction(ReplyBody):
    index: int
    name: str
    arguments: dict[str, Any]


class ToolCallOut(ReplyBody):
    id: str
    function: ToolFunction


class ChatMessageOut(ReplyBody):
    role: str
    content: str
    thinking: str | None = omitted()
    tool_calls: list[ToolCallOut] | None = omitted()


class ChatResponse(_Answer):
    message: ChatMessageOut


class EmbedResponse(ReplyBody):
    model: str
    embeddings: list[list[float]]
    total_duration: int
    load_duration: int = 0
    prompt_eval_count: int


class EmbeddingResponse(ReplyBody):
    embedding: list[float]


class ModelDetails(ReplyBody):
    parent_model: str = ""
    format: str
    family: str
    families: list[str] | None
    parameter_size: str
    quantization_level: str


class ListedModel(ReplyBody):
    """A model as ``/api/tags`` lists it."""

    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails


class TagsResponse(ReplyBody):
    models: list[ListedModel]


class RunningModel(ReplyBody):
    """A model as ``/api/ps`` lists it: loaded until the server stops, on its device."""

    name: str
    model: str
    size: int
    digest: str
    details: ModelDetails
    expires_at: str
    size_vram: int
    context_length: int
    device: str


class PsResponse(ReplyBody):
    models: list[RunningModel]


class ShowResponse(ReplyBody):
    license: str = ""
    modelfile: str
    parameters: str
    template: str
    system: str
    details: ModelDetails
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str


class VersionResponse(ReplyBody):
    version: str


class StreamError(ReplyBody):
    """What a stream ends with when generation fails after its first part went out."""

    error: str
