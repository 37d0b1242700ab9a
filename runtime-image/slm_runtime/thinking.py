"""Reasoning output: the markers a model's template writes around its thoughts, what a request's
think setting means, and the parser that splits thoughts from the answer (Ollama's thinking
package, in Python)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from slm_runtime.tools import ToolCall, ToolParser

# A thought no real conversation holds, rendered into the template to learn its markers.
PROBE_THOUGHT = "probe thought text"
PROBE_ANSWER = "probe answer text"

# The levels Ollama's ``think`` takes besides booleans; each one turns thinking on.
THINK_LEVELS = ("high", "medium", "low", "max")
ThinkValue = bool | str | None

# OpenAI's ``reasoning_effort`` as Ollama's OpenAI compatibility maps it to ``think``.
_EFFORT_TO_THINK: dict[str, bool | str] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "max",
    "xhigh": "max",
    "ultra": "max",
}
EFFORTS = tuple(_EFFORT_TO_THINK)


def think_from_effort(effort: str | None) -> ThinkValue:
    """``think`` for an OpenAI ``reasoning_effort``: unset stays unset, ``none`` is off, the
    others are on at the nearest Ollama level; ``ValueError`` for any other value."""
    if effort is None:
        return None
    if effort not in _EFFORT_TO_THINK:
        raise ValueError(
            f"reasoning_effort: {effort!r} is not one of {', '.join(repr(e) for e in EFFORTS)}"
        )
    return _EFFORT_TO_THINK[effort]


def thinks(value: ThinkValue) -> bool:
    """Whether a ``think`` value turns thinking on (any level does)."""
    return value is True or (isinstance(value, str) and value in THINK_LEVELS)


def thought_probe_conversations() -> list[list[dict[str, Any]]]:
    """Conversations whose assistant turn carries the probe thought (under both names
    templates read: Ollama's ``thinking``, Hugging Face's ``reasoning_content``): the turn
    last, and followed by a user turn (a template may write thoughts of one of them only)."""
    question = {"role": "user", "content": "probe question"}
    answer = {
        "role": "assistant",
        "content": PROBE_ANSWER,
        "thinking": PROBE_THOUGHT,
        "reasoning_content": PROBE_THOUGHT,
    }
    follow = {"role": "user", "content": "probe follow-up"}
    return [[question, answer], [question, answer, follow]]


def without_thought(conversation: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation with no thought on any message."""
    return [
        {k: v for k, v in m.items() if k not in ("thinking", "reasoning_content")}
        for m in conversation
    ]


def _common_prefix(a: str, b: str) -> int:
    size = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        size += 1
    return size


def _tag_like(word: str) -> bool:
    return bool(word) and not word[0].isalnum() and not word[-1].isalnum()


def markers_from_renderings(with_thought: str, without: str) -> tuple[str, str] | None:
    """The opening and closing markers around a thought, from a conversation rendered with the
    probe thought and without it: the text the template adds with the thought, before and
    after it, stripped (as Ollama's InferTags takes the text nodes around ``.Thinking``). A
    template that writes the markers whether or not there is a thought (Qwen3's for the last
    turn) adds only the thought: then the words right before and after it are the markers
    when both look like tags. None when the thought is not written or has no markers."""
    at = with_thought.find(PROBE_THOUGHT)
    if at < 0:
        return None
    end = at + len(PROBE_THOUGHT)
    start = min(_common_prefix(with_thought, without), at)
    tail = _common_prefix(with_thought[::-1], without[::-1])
    stop = max(len(with_thought) - tail, end)
    opening = with_thought[start:at].strip()
    closing = with_thought[end:stop].strip()
    if opening and closing:
        return opening, closing
    before = with_thought[:at].split()
    after = with_thought[end:].split()
    opening = opening or (before[-1] if before else "")
    closing = closing or (after[0] if after else "")
    if _tag_like(opening) and _tag_like(closing):
        return opening, closing
    return None


def _held_back(text: str, marker: str) -> int:
    """How many characters at the end of ``text`` may be the start of ``marker``."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0


_LOOKING, _OPENED, _THINKING, _CLOSED, _DONE = range(5)


@dataclass
class ThinkingParser:
    """Splits streamed model output into thinking and content, as Ollama's thinking.Parser
    does: output that starts (after white space) with the opening marker thinks until the
    closing marker; white space right after either marker is dropped; output that starts with
    anything else has no thought. ``inside`` starts in the thought, for a prompt that ends
    with the opening marker. Only leading white space and text that may be the start of a
    marker are held back between pieces, so each piece is searched once, together with at most
    a marker's length of text before it."""

    opening: str
    closing: str
    inside: bool = False
    _buffer: str = ""
    _state: int = _LOOKING

    def __post_init__(self) -> None:
        if self.inside:
            self._state = _OPENED

    def add(self, text: str) -> tuple[str, str]:
        """The thinking and the content released by this piece of output."""
        buffer = self._buffer + text
        self._buffer = ""
        thinking = ""
        if self._state == _LOOKING:
            trimmed = buffer.lstrip()
            if trimmed.startswith(self.opening):
                buffer = trimmed[len(self.opening) :]
                self._state = _OPENED
            elif not trimmed or self.opening.startswith(trimmed):
                self._buffer = buffer
                return "", ""
            else:
                self._state = _DONE
                return "", buffer
        if self._state == _OPENED:
            buffer = buffer.lstrip()
            if not buffer:
                return "", ""
            self._state = _THINKING
        if self._state == _THINKING:
            at = buffer.find(self.closing)
            if at < 0:
                keep = _held_back(buffer, self.closing)
                self._buffer = buffer[len(buffer) - keep :]
                return buffer[: len(buffer) - keep], ""
            thinking, buffer = buffer[:at], buffer[at + len(self.closing) :]
            self._state = _CLOSED
        if self._state == _CLOSED:
            buffer = buffer.lstrip()
            if not buffer:
                return thinking, ""
            self._state = _DONE
        return thinking, buffer

    def finish(self) -> tuple[str, str]:
        """What was held back once the output ended: a thought with no closing marker is all
        thinking; output that never got past white space or part of the opening marker is
        content."""
        rest, self._buffer = self._buffer, ""
        if self._state == _THINKING:
            return rest, ""
        if self._state == _LOOKING:
            return "", rest
        return "", ""


@dataclass
class Piece:
    """What one piece of output holds: thinking, content and the tool calls completed."""

    thinking: str = ""
    content: str = ""
    calls: list[ToolCall] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.thinking or self.content or self.calls)


@dataclass
class ReplyParser:
    """Thinking first, then tool calls in the content after the thought: the model's output
    split into what each API returns. Either parser may be absent."""

    thinking: ThinkingParser | None = None
    tools: ToolParser | None = None

    @property
    def short_ids(self) -> bool:
        """Whether the template renders only short tool call ids (see ``ToolParser``)."""
        return self.tools is not None and self.tools.short_ids

    def argument_piece(self) -> tuple[int, str, str] | None:
        """The part of a call's arguments written since the last piece (see ``ToolParser``)."""
        return self.tools.argument_piece() if self.tools is not None else None

    def add(self, text: str) -> Piece:
        """The thinking, content and calls released by this piece of output."""
        thought, content = self.thinking.add(text) if self.thinking else ("", text)
        return self._content(thought, content)

    def finish(self) -> Piece:
        """What was held back once the output ended."""
        thought, content = self.thinking.finish() if self.thinking else ("", "")
        piece = self._content(thought, content)
        if self.tools is not None:
            piece.content += self.tools.finish()
        return piece

    def parse(self, text: str) -> Piece:
        """A whole output split."""
        first, rest = self.add(text), self.finish()
        return Piece(
            first.thinking + rest.thinking, first.content + rest.content, first.calls + rest.calls
        )

    def _content(self, thought: str, content: str) -> Piece:
        if self.tools is None or not content:
            return Piece(thought, content)
        calls, content = self.tools.add(content)
        return Piece(thought, content, calls)


class NoThinkingError(Exception):
    """The request turns thinking on for a model whose template renders no thoughts."""


def request_think(value: ThinkValue, model_thinks: bool) -> bool | None:
    """What a request's ``think`` means for the template, as Ollama decides it: a model that
    thinks does unless ``think`` is off; one that does not is refused (``NoThinkingError``)
    when ``think`` is on, and an unset value stays unset."""
    if model_thinks:
        return True if value is None else thinks(value)
    if thinks(value):
        raise NoThinkingError
    return None if value is None else False


def unconstrained(think: bool | None, json_output: bool) -> bool | None:
    """``think`` for output held to JSON from its first token (a JSON ``format``): off, since
    no thought can come before the JSON; Ollama instead thinks unconstrained and holds only
    the answer to the format."""
    return False if json_output and think else think
