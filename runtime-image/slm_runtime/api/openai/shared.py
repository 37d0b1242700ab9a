"""What chat completions and the Responses API share: thinking from a reasoning effort, and
offering tools with their grammar."""

from __future__ import annotations

from typing import Any

from slm_runtime.api.openai.protocol import (
    ChatCompletionRequest,
    NamedToolChoice,
)
from slm_runtime.config import ModelFormat
from slm_runtime.constrained import call_grammar
from slm_runtime.errors import APIError
from slm_runtime.state import RuntimeState
from slm_runtime.thinking import (
    NoThinkingError,
    request_think,
    think_from_effort,
)
from slm_runtime.tool_checks import check_tools
from slm_runtime.tools import NoToolsError, ToolParser


def effort_think(
    effort: str | None, default: bool | None, state: RuntimeState, field: str, refusal: str
) -> bool | None:
    """Whether the model thinks, from an OpenAI reasoning effort (``none`` off, any other
    effort on), else ``default``, else on for a model whose template renders thoughts. A bad
    effort is a 400 naming ``field``; thinking asked of a model that does not think is a 400
    saying ``refusal``. Chat completions and the Responses API share it."""
    try:
        value = think_from_effort(effort)
    except ValueError as exc:
        raise APIError(400, str(exc).replace("reasoning_effort", field)) from None
    if value is None:
        value = default
    try:
        return request_think(value, state.prompts.thinking_markers() is not None)
    except NoThinkingError:
        raise APIError(400, refusal) from None


def offered_tools(
    body: ChatCompletionRequest, state: RuntimeState
) -> tuple[list[dict[str, Any]], ToolParser | None]:
    """The tools the template offers the model, after checking them and ``tool_choice`` (none
    for ``none``, only the named one for a named function), and the parser of their calls."""
    if body.functions is not None or body.function_call is not None:
        raise APIError(
            400, "functions and function_call are not supported; use tools and tool_choice"
        )
    choice = body.tool_choice
    named = choice.function.name if isinstance(choice, NamedToolChoice) else None
    return offer_tools(
        state,
        body.model,
        body.tools,
        None if isinstance(choice, NamedToolChoice) else choice,
        named,
    )


def offer_tools(
    state: RuntimeState,
    model: str,
    tools: list[dict[str, Any]] | None,
    choice: str | None,
    named: str | None,
    named_field: str = "tool_choice.function.name",
) -> tuple[list[dict[str, Any]], ToolParser | None]:
    """The chat ``tools`` the template offers the model, after checking them and the tool
    choice (``choice`` none, auto or required, or the ``named`` function alone), and the parser
    of their calls; none for ``none``."""
    if not tools:
        if choice is not None or named is not None:
            raise APIError(400, "tool_choice is only allowed when tools are given")
        return [], None
    try:
        names = check_tools(tools)
    except ValueError as exc:
        raise APIError(400, str(exc)) from None
    if choice == "none":
        return [], None
    offered = tools
    if named is not None:
        if named not in names:
            raise APIError(400, f"{named_field}: {named!r} is not one of the tools")
        offered = [tools[names.index(named)]]
        names = [named]
    try:
        return offered, state.prompts.tool_parser(names)
    except NoToolsError:
        raise APIError(400, f"{model} does not support tools (its template renders none)") from None


def call_constraint(
    state: RuntimeState,
    offered: list[dict[str, Any]],
    choice: str | None,
    named: str | None,
    parallel: bool,
    other: str | None,
) -> str | None:
    """The grammar that holds the answer to calls of the ``offered`` tools, their arguments to
    the tools' schemas, for ``required`` or a ``named`` function on a GGUF model whose template
    writes calls as JSON objects; None otherwise, where the output is only parsed (as for
    ``auto``). Such a grammar cannot share the answer with ``other``, the constraint the request
    asks for itself (a grammar or a JSON format): 400."""
    if not offered or (choice != "required" and named is None):
        return None
    if state.engine.format is not ModelFormat.GGUF:
        return None
    shape = state.prompts.call_shape()
    if shape is None:
        return None
    if other is not None:
        raise APIError(
            400,
            "tool_choice required or a named function constrains the answer to tool calls; "
            f"it cannot be combined with {other}",
        )
    try:
        return call_grammar(shape, offered, parallel)
    except ValueError as exc:
        raise APIError(400, str(exc)) from None
