"""Ollama's TEMPLATE language: the subset of Go's text/template it uses, with Ollama's data.

The package: ``values`` (Go values, fmt, encoding/json), ``lexer``, ``parser``, ``functions``,
``executor`` and ``ollama`` (Ollama's data model); ``Template`` and ``render_template`` are its
API.
"""

from __future__ import annotations

import functools
from typing import Any

from slm_runtime.template.executor import _Exec
from slm_runtime.template.ollama import (
    _collate,
    _cut_after_response,
    _identifiers,
    _message_value,
    _normalize_messages,
    _tools_value,
)
from slm_runtime.template.parser import (
    _Action,
    _Command,
    _Field,
    _List,
    _LoopControlError,
    _Parser,
    _Pipe,
)
from slm_runtime.template.values import TemplateError, _NilList

__all__ = ["Template", "TemplateError", "parse_template", "render_template"]


class Template:
    """A parsed TEMPLATE, ready to render any number of requests."""

    def __init__(self, text: str):
        self.text = text
        try:
            root = _Parser(text).parse()
        except RecursionError:
            raise TemplateError("template: nested too deeply") from None
        names = {n.lower() for n in _identifiers(root)}
        self.uses_messages = "messages" in names
        if not self.uses_messages and "response" not in names:
            # Ollama appends {{ .Response }} to templates that have no slot for the answer.
            end = len(text)
            response = _Command(end, [_Field(end, ["Response"])])
            root.nodes.append(_Action(end, _Pipe(end, [], False, [response])))
        self.root = root
        self._last_turn = _cut_after_response(root) if not self.uses_messages else root

    def __repr__(self) -> str:
        return f"Template({self.text!r})"

    def render(
        self,
        *,
        messages: list[dict[str, Any]],
        system: str | None = None,
        prompt: str | None = None,
        response: str = "",
        tools: list[dict[str, Any]] | None = None,
        think: bool | None = None,
    ) -> str:
        """Render a conversation the way Ollama does; see `render_template`."""
        msgs = _normalize_messages(messages)
        if system and (not msgs or msgs[0]["role"] != "system"):
            msgs.insert(0, {"role": "system", "content": system})
        if prompt is not None:
            msgs.append({"role": "user", "content": prompt})
        if response:
            msgs.append({"role": "assistant", "content": response})
        think_values = {"Think": bool(think), "ThinkLevel": "", "IsThinkSet": think is not None}
        sys_text, collated = _collate(msgs)
        if self.uses_messages:
            data = {
                "System": sys_text,
                "Messages": [_message_value(m) for m in collated] or _NilList(),
                "Tools": _tools_value(tools),
                "Response": "",
                **think_values,
            }
            return self._execute(self.root, data)
        return self._render_legacy(collated, think_values)

    def _render_legacy(self, messages: list[dict[str, Any]], extra: dict[str, Any]) -> str:
        """One rendering per turn for templates that know only .System/.Prompt/.Response."""
        parts: list[str] = []
        turn = {"System": "", "Prompt": "", "Response": ""}

        def flush() -> None:
            parts.append(self._execute(self.root, {**turn, **extra}))
            turn.update(System="", Prompt="", Response="")

        for m in messages:
            role = m["role"]
            if role == "system":
                if turn["Prompt"] or turn["Response"]:
                    flush()
                turn["System"] = m["content"]
            elif role == "user":
                if turn["Response"]:
                    flush()
                turn["Prompt"] = m["content"]
            elif role == "assistant":
                turn["Response"] = m["content"]
        parts.append(self._execute(self._last_turn, {**turn, **extra}))
        return "".join(parts)

    def _execute(self, root: _List, data: dict[str, Any]) -> str:
        ex = _Exec(self.text, data)
        try:
            ex.walk(data, root)
        except _LoopControlError:  # pragma: no cover - the parser confines them to range
            raise TemplateError("template: break or continue outside range") from None
        except RecursionError:
            raise TemplateError("template: nested too deeply") from None
        return "".join(ex.out)


@functools.lru_cache(maxsize=64)
def parse_template(text: str) -> Template:
    """Parse a TEMPLATE once (cached); raises TemplateError with the position of a mistake."""
    return Template(text)


def render_template(
    template: str,
    *,
    messages: list[dict[str, Any]],
    system: str | None = None,
    prompt: str | None = None,
    response: str = "",
    tools: list[dict[str, Any]] | None = None,
    think: bool | None = None,
) -> str:
    """Render a prompt from an Ollama TEMPLATE.

    `messages` are Ollama chat messages (role, content, and optionally thinking, tool_calls,
    tool_name, tool_call_id, images). `system` is the default system prompt, used when the
    messages do not start with a system message. `prompt` is appended as a user message
    (/api/generate), `response` as a partial assistant message the model continues. `tools`
    are tool definitions; `think` sets .Think (None leaves .IsThinkSet false).
    """
    return parse_template(template).render(
        messages=messages, system=system, prompt=prompt, response=response, tools=tools, think=think
    )
