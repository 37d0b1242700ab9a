"""The Responses API's request (input items, text and reasoning settings, and how the input
becomes the chat messages a template renders) and its answers: the response object, its output
items and the events of a streamed one."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field

from slm_runtime.api.body import RequestBody, TopLevelBody
from slm_runtime.api.openai.protocol import TokenLogprobs
from slm_runtime.api.openai.shared import (
    effort_think,
    offer_tools,
)
from slm_runtime.api.reply import ReplyBody, omitted
from slm_runtime.engines.base import MAX_TOP_LOGPROBS
from slm_runtime.errors import APIError
from slm_runtime.state import RuntimeState
from slm_runtime.tools import ToolParser

MIN_OUTPUT_TOKENS = 16
"""OpenAI refuses a smaller ``max_output_tokens``; clients written for it never send one."""


STATELESS = (
    "this server keeps no responses or conversations (nothing is stored, whatever `store` "
    "says); send the whole conversation as `input` on every request"
)


LOGPROBS = "message.output_text.logprobs"
INCLUDABLE = (LOGPROBS, "reasoning.encrypted_content")
"""What ``include`` may name; reasoning is never encrypted, its text is in the item."""


ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}


# The content part types each role may carry; all of them are text.
TEXT_PARTS = {"user": "input_text", "system": "input_text", "developer": "input_text"}
ASSISTANT_PARTS = ("output_text", "input_text")


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
            raise APIError(400, f"previous_response_id: {STATELESS}")
        if self.conversation is not None:
            raise APIError(400, f"conversation: {STATELESS}")
        if self.background:
            raise APIError(400, f"background: responses run in the foreground only; {STATELESS}")
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
        unknown = [item for item in self.include or () if item not in INCLUDABLE]
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
                thought += thought_of(item)
                continue
            if item.type == "function_call":
                call = call_message(index, item)
                names[item.call_id or ""] = item.name or ""
                if calling is None:
                    calling = {"role": "assistant", "content": "", "tool_calls": []}
                    messages.append(with_thinking(calling, thought))
                    thought = ""
                call["function"]["index"] = len(calling["tool_calls"])
                calling["tool_calls"].append(call)
                continue
            calling = None
            if item.type == "function_call_output":
                messages.append(result_message(index, item, names))
            else:
                message = input_message(index, item)
                if message["role"] == "assistant":
                    message, thought = with_thinking(message, thought), ""
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


def call_message(index: int, item: InputItem) -> dict[str, Any]:
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


def thought_of(item: InputItem) -> str:
    """The text of a ``reasoning`` input item: its reasoning text, else its summary."""
    parts = item.content if isinstance(item.content, list) else []
    text = "".join(p.text or "" for p in parts if p.type == "reasoning_text")
    return text or "".join(p.text or "" for p in item.summary or () if p.type == "summary_text")


def with_thinking(message: dict[str, Any], thought: str) -> dict[str, Any]:
    """The assistant message with the thought before it, under the names Ollama's and Hugging
    Face's templates read."""
    if thought:
        message.update(thinking=thought, reasoning_content=thought)
    return message


def result_message(index: int, item: InputItem, names: dict[str, str]) -> dict[str, Any]:
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


def input_message(index: int, item: InputItem) -> dict[str, str]:
    where = f"input.{index}"
    if item.type != "message":
        if item.type == "item_reference":
            raise APIError(400, f"{where}.type: item_reference: {STATELESS}")
        raise APIError(400, f"{where}.type: {item.type!r} input items are not supported")
    if item.role not in ROLES:
        raise APIError(
            400, f"{where}.role: {item.role!r} is not one of user, system, developer, assistant"
        )
    role = item.role
    if item.content is None:
        raise APIError(400, f"{where}.content: required")
    if isinstance(item.content, str):
        return {"role": ROLES[role], "content": item.content}
    allowed = ASSISTANT_PARTS if role == "assistant" else (TEXT_PARTS[role],)
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
    return {"role": ROLES[role], "content": "".join(texts)}


# The answers.


class OutputText(ReplyBody):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[TokenLogprobs] = Field(default_factory=list)


class ReasoningText(ReplyBody):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class MessageItem(ReplyBody):
    id: str
    type: Literal["message"] = "message"
    status: str
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class ReasoningItem(ReplyBody):
    """The model's thought as the text of a ``reasoning`` item; no summary is made."""

    id: str
    type: Literal["reasoning"] = "reasoning"
    status: str
    summary: list[Any] = Field(default_factory=list)
    content: list[ReasoningText]
    encrypted_content: None = None


class FunctionCallItem(ReplyBody):
    id: str
    type: Literal["function_call"] = "function_call"
    status: str
    call_id: str
    name: str
    arguments: str


OutputItem = MessageItem | ReasoningItem | FunctionCallItem


class FunctionTool(ReplyBody):
    """A function tool of the request, as the response lists it."""

    type: Literal["function"] = "function"
    name: Any
    description: Any
    parameters: Any
    strict: Any


class InputTokensDetails(ReplyBody):
    cached_tokens: int
    cache_write_tokens: int = 0


class OutputTokensDetails(ReplyBody):
    reasoning_tokens: int = 0


class ResponseUsage(ReplyBody):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class ResponseError(ReplyBody):
    code: str
    message: str


class IncompleteDetails(ReplyBody):
    reason: str


class ReasoningSettings(ReplyBody):
    effort: str | None
    summary: str | None


class Response(ReplyBody):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: str
    completed_at: int | None
    error: ResponseError | None
    incomplete_details: IncompleteDetails | None
    instructions: str | None
    max_output_tokens: int | None
    max_tool_calls: int | None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: None = None
    reasoning: ReasoningSettings
    store: bool = False
    temperature: float | None
    text: dict[str, Any]
    tool_choice: str | dict[str, Any]
    tools: list[FunctionTool]
    top_p: float | None
    top_logprobs: int | None
    truncation: str = "disabled"
    usage: ResponseUsage | None
    user: str | None
    metadata: dict[str, str]


class ResponseEvent(ReplyBody):
    """One event of a streamed response, numbered in order; each type carries its own fields."""

    type: str
    response: Response | None = omitted()
    item_id: str | None = omitted()
    output_index: int | None = omitted()
    content_index: int | None = omitted()
    item: OutputItem | None = omitted()
    part: OutputText | ReasoningText | None = omitted()
    delta: str | None = omitted()
    text: str | None = omitted()
    arguments: str | None = omitted()
    logprobs: list[TokenLogprobs] | None = omitted()
    sequence_number: int
