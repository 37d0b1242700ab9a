"""Turns chat messages or a generate prompt into the text the model reads (Modelfile semantics)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from jinja2 import TemplateError as JinjaTemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from slm_runtime.constrained import CallShape, shape_from_renderings, two_call_conversation
from slm_runtime.engines.base import EngineError
from slm_runtime.template import TemplateError, render_template
from slm_runtime.thinking import (
    ReplyParser,
    ThinkingParser,
    markers_from_renderings,
    thought_probe_conversations,
    without_thought,
)
from slm_runtime.tools import (
    BARE_JSON,
    PROBE_NAME,
    NoToolsError,
    ToolParser,
    call_turn,
    new_call_id,
    probe_conversations,
    probe_tools,
    quote_from_renderings,
    tag_from_renderings,
)

log = logging.getLogger(__name__)


class PromptError(EngineError):
    """The prompt could not be rendered; the message says why."""


def _raise(message: str) -> None:
    raise PromptError(f"the model's chat template refused the request: {message}")


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """``tojson`` as Hugging Face chat templates expect it: plain JSON text in the given order,
    not Jinja's HTML-escaped markup with sorted keys (which turns the text it is added to into
    escaped markup too)."""
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now(UTC).strftime(fmt)


def _without_call_index(message: dict[str, Any]) -> dict[str, Any]:
    """The message with its tool calls' ``function.index`` left out: Ollama's templates read it
    (``.Function.Index``), but Hugging Face's write ``function|tojson`` whole, and there the
    OpenAI and Hugging Face shape of a call has no index."""
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        return message
    out = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and "index" in function:
            call = {**call, "function": {k: v for k, v in function.items() if k != "index"}}
        out.append(call)
    return {**message, "tool_calls": out}


class PromptBuilder:
    """Renders prompts with the configured Go template, else the model's own Jinja template."""

    def __init__(
        self,
        *,
        template: str | None,
        system: str | None,
        model_template: str | None,
        bos_token: str,
        eos_token: str,
    ) -> None:
        self.template = template
        self.system = system
        self._bos = bos_token
        self._eos = eos_token
        self._jinja = None
        self._tool_tag: str | None = None
        self._tool_quote = ""
        self._short_ids = False
        self._call_shape: CallShape | None = None
        self._tool_tag_known = False
        self._thinking: tuple[str, str] | None = None
        self._thinking_known = False
        if template is None and model_template:
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals.update(raise_exception=_raise, strftime_now=_strftime_now)
            env.filters["tojson"] = _tojson
            self._jinja = env.from_string(model_template)

    @property
    def has_template(self) -> bool:
        """Whether chat requests can be rendered at all."""
        return self.template is not None or self._jinja is not None

    def tool_tag(self) -> str | None:
        """The text the template writes before a tool call's JSON (``{`` for bare JSON), found
        by rendering a sample call; None when the template does not render tools at all."""
        if not self._tool_tag_known:
            self._probe_tool_format()
            self._tool_tag_known = True
        return self._tool_tag

    def tool_parser(self, names: list[str]) -> ToolParser:
        """A parser for calls of the named tools in the format the template writes;
        ``NoToolsError`` when the template renders no tools."""
        tag = self.tool_tag()
        if tag is None:
            raise NoToolsError("the template renders no tools")
        return ToolParser(tag, names, self._tool_quote, self._short_ids)

    def call_shape(self) -> CallShape | None:
        """How the template writes calls, for a grammar that constrains output to them; None
        when it renders no tools or writes calls that are not JSON objects."""
        self.tool_tag()
        return self._call_shape

    def _probe_tool_format(self) -> None:
        question = [{"role": "user", "content": "probe question"}]
        with_call, with_texts = probe_conversations()
        try:
            if PROBE_NAME not in self.chat(question, tools=probe_tools()):
                log.debug("the template does not render tools: the probe tool is not written")
                return
            call = self.chat(with_call, tools=probe_tools())
        except Exception as exc:  # any failure of the template means it renders no tools
            log.debug("the template does not render tools: a probe render failed: %r", exc)
            return
        texts = []
        for conversation in with_texts:
            try:
                texts.append(self.chat(conversation, tools=probe_tools()))
            except Exception as exc:
                log.debug("a probe render without a call failed: %r", exc)
        self._tool_tag = tag_from_renderings(call, texts)
        self._tool_quote = quote_from_renderings(call, texts)
        if not self._tool_quote:
            self._call_shape = self._probe_call_shape(call, texts)
        openai_ids, _ = probe_conversations(new_call_id())
        try:
            self.chat(openai_ids, tools=probe_tools())
        except Exception as exc:
            log.debug("the template refuses OpenAI-style call ids, calls get short ids: %s", exc)
            self._short_ids = True

    def _probe_call_shape(self, call: str, texts: list[str]) -> CallShape | None:
        try:
            two: str | None = self.chat(two_call_conversation(), tools=probe_tools())
        except Exception as exc:  # a template may refuse two calls in one turn
            log.debug("the template does not render two calls in a turn: %r", exc)
            two = None
        shape = shape_from_renderings(
            self._tool_tag or BARE_JSON,
            call_turn(call, texts),
            call_turn(two, texts) if two is not None else None,
        )
        log.debug("the template writes tool calls as %r", shape)
        return shape

    def thinking_markers(self) -> tuple[str, str] | None:
        """The markers the template writes around a thought (``<think>``, ``</think>``), found
        by rendering a sample thought; None when the template renders no thoughts, so the
        model does not think."""
        if not self._thinking_known:
            self._thinking = self._probe_thinking()
            self._thinking_known = True
        return self._thinking

    def thinking_parser(self, prompt: str) -> ThinkingParser | None:
        """A parser of the thoughts in the output that follows ``prompt``, which starts in the
        thought when the prompt ends with the opening marker; None for a model that does not
        think."""
        markers = self.thinking_markers()
        if markers is None:
            return None
        opening, closing = markers
        return ThinkingParser(opening, closing, inside=prompt.rstrip().endswith(opening))

    def reply_parser(
        self, prompt: str, think: bool | None, tools: ToolParser | None
    ) -> ReplyParser | None:
        """The parser of the output that follows ``prompt``: its thought when the model thinks
        (``think``), then the ``tools``' calls; None when there is nothing to parse."""
        thinking = self.thinking_parser(prompt) if think else None
        if thinking is None and tools is None:
            return None
        return ReplyParser(thinking, tools)

    def _probe_thinking(self) -> tuple[str, str] | None:
        for conversation in thought_probe_conversations():
            try:
                with_thought = self.chat(conversation, think=True)
                without = self.chat(without_thought(conversation), think=True)
            except Exception as exc:  # any failure of the template means it renders no thoughts
                log.debug("a thinking probe render failed: %r", exc)
                continue
            markers = markers_from_renderings(with_thought, without)
            if markers is not None:
                return markers
        log.debug("the template renders no thoughts")
        return None

    def _with_system(
        self, messages: list[dict[str, Any]], system: str | None
    ) -> list[dict[str, Any]]:
        if any(m.get("role") == "system" for m in messages):
            return messages
        system = system if system is not None else self.system
        return [{"role": "system", "content": system}, *messages] if system else messages

    def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        think: bool | None = None,
    ) -> str:
        """The prompt for a conversation; SYSTEM applies when no system message is given."""
        if self.template is not None:
            return self._go(self.template, messages, self.system, None, tools, think)
        messages = [_without_call_index(m) for m in messages]
        return self._jinja_render(self._with_system(messages, None), tools=tools, think=think)

    def generate(
        self,
        prompt: str,
        *,
        system: str | None = None,
        template: str | None = None,
        raw: bool = False,
        think: bool | None = None,
    ) -> str:
        """The prompt for ``/api/generate``: ``raw`` skips templating, ``template`` overrides it."""
        if raw:
            return prompt
        system_text = system if system is not None else self.system
        template = template if template is not None else self.template
        if template is not None:
            return self._go(template, [], system_text, prompt, None, think)
        if self._jinja is None:
            return f"{system_text}\n\n{prompt}" if system_text else prompt
        messages = self._with_system([{"role": "user", "content": prompt}], system)
        return self._jinja_render(messages, tools=None, think=think)

    def _jinja_render(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None,
        think: bool | None,
    ) -> str:
        if self._jinja is None:
            raise PromptError(
                "the model has no chat template; set a template in the LocalModel "
                "or use /api/generate with raw=true"
            )
        try:
            text = self._jinja.render(
                messages=messages,
                tools=tools,
                add_generation_prompt=True,
                bos_token=self._bos,
                eos_token=self._eos,
                enable_thinking=think,
            )
        except (JinjaTemplateError, TypeError, ValueError) as exc:
            # TypeError and ValueError: a filter given what it cannot take (``tojson`` of an
            # undefined value), which is the request's doing as much as the template's.
            raise PromptError(f"the model's chat template failed: {exc}") from exc
        # The tokenizer adds BOS itself; a template that writes it too would double it.
        if self._bos and text.startswith(self._bos):
            text = text[len(self._bos) :]
        return text

    @staticmethod
    def _go(
        template: str,
        messages: list[dict[str, Any]],
        system: str | None,
        prompt: str | None,
        tools: list[dict[str, Any]] | None,
        think: bool | None,
    ) -> str:
        try:
            return render_template(
                template,
                messages=messages,
                system=system,
                prompt=prompt,
                tools=tools,
                think=think,
            )
        except TemplateError as exc:
            raise PromptError(f"the template failed: {exc}") from exc
