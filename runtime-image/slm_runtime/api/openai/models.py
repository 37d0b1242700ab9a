"""The OpenAI API's request models: chat completions, completions and embeddings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from slm_runtime.api.body import RequestBody, TopLevelBody
from slm_runtime.config import MAX_STOP_CHARS, MAX_STOP_SEQUENCES
from slm_runtime.engines.base import (
    MAX_TOP_LOGPROBS,
)
from slm_runtime.errors import APIError

Stop = str | list[str] | None


class ContentPart(RequestBody):
    type: str
    text: str | None = None


class FunctionCall(RequestBody):
    name: str = Field(min_length=1)
    arguments: str


class MessageToolCall(RequestBody):
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(RequestBody):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None

    def text(self) -> str:
        """The message text; only text parts are accepted."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        texts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise APIError(400, f"content part type {part.type!r} is not supported; use text")
            texts.append(part.text)
        return "".join(texts)


class ResponseFormat(RequestBody):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class FunctionName(RequestBody):
    name: str


class NamedToolChoice(RequestBody):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice | None


class StreamOptions(RequestBody):
    include_usage: bool = False


class _Sampling(TopLevelBody):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=1, description="Only one choice per request.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Stop = Field(default=None)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    grammar: str | None = Field(
        default=None,
        min_length=1,
        description="A GBNF grammar the output must match, as llama.cpp's server takes it.",
    )
    logit_bias: dict[str, Any] | None = None

    def refuse_unsupported(self) -> None:
        """400 for each field that would change the answer and that this server cannot honour."""
        if self.logit_bias:
            raise APIError(
                400,
                "logit_bias: per-token biases are not supported by this server's sampler; "
                "leave logit_bias out",
            )

    def stops(self) -> list[str] | None:
        """``stop`` as a list, checked as ``parameters.stop`` is; an empty list is no list."""
        stop = [self.stop] if isinstance(self.stop, str) else self.stop or None
        if stop is None:
            return None
        if len(stop) > MAX_STOP_SEQUENCES:
            raise APIError(400, f"stop: at most {MAX_STOP_SEQUENCES} sequences")
        for index, sequence in enumerate(stop):
            where = "stop" if isinstance(self.stop, str) else f"stop.{index}"
            if not sequence:
                raise APIError(400, f"{where}: a stop sequence must not be empty")
            if len(sequence) > MAX_STOP_CHARS:
                raise APIError(
                    400, f"{where}: a stop sequence has at most {MAX_STOP_CHARS} characters"
                )
        return stop

    def overrides(self, max_tokens: int | None) -> dict[str, Any]:
        stop = self.stops()
        return {
            "max_tokens": max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "stop": stop,
        }


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: ToolChoice = None
    parallel_tool_calls: bool = True
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    moderation: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    def refuse_unsupported(self) -> None:
        """400 for each field that would change the answer and that this server cannot honour."""
        super().refuse_unsupported()
        if self.audio is not None or any(kind != "text" for kind in self.modalities or ()):
            raise APIError(
                400,
                'modalities, audio: the model writes text only; send modalities ["text"] or leave '
                "both out",
            )
        if self.verbosity not in (None, "medium"):
            raise APIError(
                400, "verbosity: the model has no verbosity control; leave it out or send medium"
            )
        if self.moderation is not None:
            raise APIError(400, "moderation: this server runs no moderation model; leave it out")
        if self.web_search_options is not None:
            raise APIError(
                400,
                "web_search_options: web search is not available: this server runs only the model",
            )

    def top(self) -> int:
        """How many most likely tokens to report per position; as OpenAI, ``top_logprobs``
        needs ``logprobs: true``."""
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs: logprobs must be true when top_logprobs is set")
        return self.top_logprobs or 0


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = Field(default=None, ge=0, le=5)
    best_of: int | None = Field(default=None, ge=1)

    def refuse_unsupported(self) -> None:
        """400 for each field that would change the answer and that this server cannot honour."""
        super().refuse_unsupported()
        if self.best_of is not None and self.best_of > 1:
            raise APIError(
                400,
                "best_of: this server generates one completion per request; send 1 or leave it out",
            )


class EmbeddingRequest(TopLevelBody):
    model: str = Field(min_length=1)
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
