"""The OpenAI API's request and answer models: chat completions, completions, embeddings and
models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field

from slm_runtime.api.body import RequestBody, TopLevelBody
from slm_runtime.api.reply import ReplyBody, omitted
from slm_runtime.config import MAX_STOP_CHARS, MAX_STOP_SEQUENCES
from slm_runtime.engines.base import (
    MAX_TOP_LOGPROBS,
    Finished,
    TokenChoice,
    TokenLogprob,
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


# The answers.


class Usage(ReplyBody):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails

    @classmethod
    def of(cls, end: Finished) -> Usage:
        return cls(
            prompt_tokens=end.prompt_tokens,
            completion_tokens=end.completion_tokens,
            total_tokens=end.prompt_tokens + end.completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=end.cached_tokens),
        )


class PromptTokensDetails(ReplyBody):
    cached_tokens: int


class TopLogprob(ReplyBody):
    token: str
    logprob: float
    bytes: list[int]

    @classmethod
    def of(cls, choice: TokenChoice) -> TopLogprob:
        return cls(token=choice.token, logprob=choice.logprob, bytes=list(choice.bytes))


class TokenLogprobs(TopLogprob):
    """One generated token, with the most likely tokens of its position."""

    top_logprobs: list[TopLogprob]

    @classmethod
    def entry(cls, entry: TokenLogprob) -> TokenLogprobs:
        chosen = entry.chosen
        return cls(
            token=chosen.token,
            logprob=chosen.logprob,
            bytes=list(chosen.bytes),
            top_logprobs=[TopLogprob.of(c) for c in entry.top],
        )


class ChatLogprobs(ReplyBody):
    """``choices[].logprobs`` of a chat completion (or of one chunk of it)."""

    content: list[TokenLogprobs]
    refusal: None = None

    @classmethod
    def of(cls, entries: Sequence[TokenLogprob]) -> ChatLogprobs:
        return cls(content=[TokenLogprobs.entry(entry) for entry in entries])


class FunctionOut(ReplyBody):
    name: str
    arguments: str


class ToolCallOut(ReplyBody):
    id: str
    type: Literal["function"] = "function"
    function: FunctionOut


class AssistantMessage(ReplyBody):
    role: Literal["assistant"] = "assistant"
    content: str | None
    reasoning_content: str | None = omitted()
    tool_calls: list[ToolCallOut] | None = omitted()


class ChatChoice(ReplyBody):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: ChatLogprobs | None


class ChatCompletion(ReplyBody):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class FunctionDelta(ReplyBody):
    name: str | None = omitted()
    arguments: str


class ToolCallDelta(ReplyBody):
    """A call's id, type and name where it begins; then pieces of its arguments."""

    index: int
    id: str | None = omitted()
    type: Literal["function"] | None = omitted()
    function: FunctionDelta


class ChunkDelta(ReplyBody):
    role: Literal["assistant"] | None = omitted()
    content: str | None = omitted()
    reasoning_content: str | None = omitted()
    tool_calls: list[ToolCallDelta] | None = omitted()


class ChunkChoice(ReplyBody):
    index: int = 0
    delta: ChunkDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(ReplyBody):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = omitted()


class CompletionLogprobs(ReplyBody):
    """``choices[].logprobs`` of a legacy completion: the chosen token always among the
    ``top_logprobs`` of its position, so there are up to ``logprobs`` + 1 of them."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]

    @classmethod
    def of(cls, entries: Sequence[TokenLogprob]) -> CompletionLogprobs:
        top: list[dict[str, float]] = []
        for entry in entries:
            alternatives = {c.token: c.logprob for c in entry.top}
            alternatives.setdefault(entry.chosen.token, entry.chosen.logprob)
            top.append(alternatives)
        return cls(
            tokens=[entry.chosen.token for entry in entries],
            token_logprobs=[entry.chosen.logprob for entry in entries],
            top_logprobs=top,
            text_offset=[entry.offset for entry in entries],
        )


class CompletionChoice(ReplyBody):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str | None


class Completion(ReplyBody):
    """A completion, or one chunk of a streamed one (its usage in a last chunk of its own)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = omitted()


class Embedding(ReplyBody):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(ReplyBody):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(ReplyBody):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class Model(ReplyBody):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(ReplyBody):
    object: Literal["list"] = "list"
    data: list[Model]


class ErrorDetail(ReplyBody):
    message: str
    type: str


class StreamError(ReplyBody):
    """What a stream ends with when generation fails after its first part went out."""

    error: ErrorDetail

    @classmethod
    def internal(cls) -> StreamError:
        return cls(
            error=ErrorDetail(message="internal error while generating", type="server_error")
        )
