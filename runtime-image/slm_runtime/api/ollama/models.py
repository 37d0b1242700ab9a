"""The Ollama API's request models."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError

from slm_runtime.api.body import RequestBody, TopLevelBody
from slm_runtime.config import ModelParameters
from slm_runtime.engines.base import (
    MAX_TOP_LOGPROBS,
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
