"""Tool calling: the tool-call format a model's template writes, the checks on tool definitions,
and the parser that finds calls in the model's output (Ollama's tools package, in Python).

Checking a request's tool definitions lives in ``tool_checks``."""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

# A tool that no real conversation names, rendered into the template to learn its format.
PROBE_NAME = "probe_tool_fn"
PROBE_CONTENT = "probe assistant text"


# Nine letters and digits: Mistral's templates refuse any other call id.
PROBE_ID = "probecall"
_PROBE_ARGUMENTS = {"probe_arg": "probe value"}


# A tag of "{" means bare JSON: output that starts with an object is tried as a call.
BARE_JSON = "{"
_ID_CHARS = string.ascii_letters + string.digits


# Where a call object's arguments object opens, after its key.
_ARGUMENTS_KEY = re.compile(r'"(?:arguments|parameters)"\s*:\s*(\{)')


def probe_tools() -> list[dict[str, Any]]:
    """The tool list a template is rendered with to learn whether it renders tools at all."""
    return [
        {
            "type": "function",
            "function": {
                "name": PROBE_NAME,
                "description": "probe",
                "parameters": {
                    "type": "object",
                    "properties": {"probe_arg": {"type": "string", "description": "probe"}},
                    "required": ["probe_arg"],
                },
            },
        }
    ]


def probe_conversations(
    call_id: str = PROBE_ID,
) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    """A conversation whose assistant turn is a tool call, and conversations that differ from it
    in that turn, which is text: followed by a user turn, and alone (a template that writes the
    tools at the last user turn, as Mistral's, writes them elsewhere in the first)."""
    call = {
        "id": call_id,
        "type": "function",
        "function": {"index": 0, "name": PROBE_NAME, "arguments": dict(_PROBE_ARGUMENTS)},
    }
    question = {"role": "user", "content": "probe question"}
    with_call: list[dict[str, Any]] = [
        question,
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {
            "role": "tool",
            "content": "probe result",
            "tool_call_id": call_id,
            "tool_name": PROBE_NAME,
            "name": PROBE_NAME,
        },
    ]
    text = {"role": "assistant", "content": PROBE_CONTENT}
    with_text = [question, text, {"role": "user", "content": "probe result"}]
    return with_call, [with_text, [question, text]]


def call_turn(with_call: str, with_texts: list[str]) -> str:
    """The rendering of the probe call's assistant turn onwards: from where the renderings of
    the ``probe_conversations`` part (or the probe text begins), the latest of those places;
    empty when the template does not write the call."""
    cut = -1
    for with_text in with_texts:
        start = with_text.find(PROBE_CONTENT)
        if start < 0:
            continue
        common = 0
        for a, b in zip(with_call, with_text, strict=False):
            if a != b:
                break
            common += 1
        cut = max(cut, min(common, start))
    if cut < 0:
        return ""
    turn = with_call[cut:]
    return turn if PROBE_NAME in turn else ""


def tag_from_renderings(with_call: str, with_texts: list[str]) -> str:
    """The text a template writes before a tool call's JSON, from the renderings of the
    ``probe_conversations``: the assistant turn up to the first ``{``, stripped, as Ollama's
    parseTag cuts its text node; ``BARE_JSON`` when nothing precedes the JSON or the template
    does not write the call."""
    turn = call_turn(with_call, with_texts)
    tag = turn[: turn.find(PROBE_NAME)].replace("\r\n", "\n").partition("{")[0].strip()
    return tag or BARE_JSON


def quote_from_renderings(with_call: str, with_texts: list[str]) -> str:
    """The text a template writes around a string argument when its calls are not JSON
    (FunctionGemma's ``<escape>``), from the renderings of the ``probe_conversations``; empty
    for JSON."""
    turn = call_turn(with_call, with_texts)
    call = turn[turn.find(PROBE_NAME) :]
    key = call.find("probe_arg")
    value = call.find(_PROBE_ARGUMENTS["probe_arg"])
    if key < 0 or value < key:
        return ""
    between = call[key + len("probe_arg") : value].lstrip('"').strip().lstrip(":=").strip()
    return "" if between in ("", '"') else between


@dataclass
class JsonScan:
    """A scan of JSON text that can stop and go on: the next position, and whether it stands in
    a string or after a backslash in one."""

    pos: int = 0
    in_string: bool = False
    escaped: bool = False

    def structure(self, text: str, stop: int | None = None) -> Iterator[tuple[int, str]]:
        """The positions and characters of ``text`` from ``pos`` to ``stop`` outside strings
        (the quotes themselves left out); ``pos`` moves past each character read, so a caller
        that stops early goes on from there."""
        end = len(text) if stop is None else stop
        while self.pos < end:
            pos, char = self.pos, text[self.pos]
            self.pos += 1
            if self.escaped:
                self.escaped = False
            elif char == "\\":
                self.escaped = self.in_string
            elif char == '"':
                self.in_string = not self.in_string
            elif not self.in_string:
                yield pos, char


class NoToolsError(Exception):
    """The model's template renders no tools, so the model cannot be offered any."""


@dataclass(frozen=True)
class ToolCall:
    """One call the model made: the tool's name, its arguments, and its place among the calls."""

    name: str
    arguments: dict[str, Any]
    index: int
    raw_arguments: str = ""
    """With ``ToolParser.streams_arguments``: the arguments as the model wrote them."""
    sent: int = 0
    """How much of ``raw_arguments`` ``ToolParser.argument_piece`` handed out before the call
    was complete."""


def new_call_id(short: bool = False) -> str:
    """A tool call id as OpenAI writes them: ``call_`` and 24 random letters and digits; with
    ``short``, nine letters and digits, the only ids Mistral's templates render."""
    if short:
        return "".join(secrets.choice(_ID_CHARS) for _ in range(9))
    return "call_" + "".join(secrets.choice(_ID_CHARS) for _ in range(24))


@dataclass
class ToolParser:
    """Splits streamed model output into content and tool calls, as Ollama's tools.Parser does:
    text before the tag is content; after the tag, each complete JSON object that names one of
    the tools (or holds its arguments) is a call. With the bare-JSON tag only output that starts
    with ``{`` is tried. Unlike Ollama, output that held a tag but no call is content at the end
    (``finish``), so that text which is not a tool call stays content. ``short_ids`` says the
    template renders only nine-character call ids (see ``new_call_id``). The scans keep their
    place between pieces, so each character of the output is read once."""

    tag: str
    names: list[str]
    quote: str = ""
    short_ids: bool = False
    streams_arguments: bool = False
    """Hand out a call's arguments while the model writes them (``argument_piece``): only for
    output a grammar holds to calls, which is sure to end as one."""
    _buffer: str = ""
    _state: str = "looking"
    _count: int = 0
    # Characters read by the scans of the buffer, for the tests.
    _scanned: int = 0
    # The tool found in the buffer and where its name ends, and how far it was searched.
    _tool: tuple[str, int] | None = None
    _searched: int = 0
    # The scan for the first JSON object: where it stands, the open object, brace depth,
    # string state, and the object with where it ends once it is complete.
    _pos: int = 0
    _start: int = -1
    _depth: int = 0
    _in_string: bool = False
    _escaped: bool = False
    _object: tuple[dict[str, Any], int] | None = None
    # The scan for the tag's closing bracket: where it stands and the depth.
    _close_pos: int = 0
    _close_depth: int = 0
    # The arguments of the call being written (``streams_arguments``): where the object opens
    # and ends in the buffer, how far it was handed out, and its scan.
    _arg_start: int = -1
    _arg_end: int = -1
    _arg_sent: int = 0
    _arg_scan: JsonScan = field(default_factory=JsonScan)
    _arg_depth: int = 0

    def argument_piece(self) -> tuple[int, str, str] | None:
        """The index and name of the call being written and the part of its arguments written
        since the last piece; None when there is nothing new (or ``streams_arguments`` is off,
        or the output is in a notation that is not JSON)."""
        if not self.streams_arguments or self.quote or self._state != "calling":
            return None
        if self._tool is None or self._start < 0:
            return None
        if self._arg_start < 0:
            found = _ARGUMENTS_KEY.search(self._buffer, self._start)
            if found is None:
                return None
            self._arg_start = self._arg_sent = found.start(1)
            self._arg_scan = JsonScan(found.start(1))
        self._scan_arguments()
        end = self._arg_end if self._arg_end >= 0 else len(self._buffer)
        piece = self._buffer[self._arg_sent : end]
        if not piece:
            return None
        self._arg_sent = end
        return self._count, self._tool[0], piece

    def _scan_arguments(self) -> None:
        """Moves the scan of the arguments object to the end of the buffer or of the object."""
        scan = self._arg_scan
        before = scan.pos
        if self._arg_end < 0:
            for pos, char in scan.structure(self._buffer):
                if char == "{":
                    self._arg_depth += 1
                elif char == "}":
                    self._arg_depth -= 1
                    if self._arg_depth == 0:
                        self._arg_end = pos + 1
                        break
        self._scanned += scan.pos - before

    def add(self, text: str) -> tuple[list[ToolCall], str]:
        """The calls completed and the content released by this piece of output."""
        if self._state == "done":
            return [], text
        self._buffer += text
        content = ""
        if self._state == "looking":
            at, found = self._find_tag()
            if at < 0:
                content, self._buffer = self._buffer, ""
            else:
                content, self._buffer = self._buffer[:at], self._buffer[at:]
            if self.tag in ("{", "[") and content.strip():
                self._state = "done"
                content, self._buffer = content + self._buffer, ""
                return [], content
            if not found:
                return [], content
            self._state = "calling"
        calls: list[ToolCall] = []
        while (call := self._next_call()) is not None:
            calls.append(call)
        if self._closed():
            self._state = "done"
            content, self._buffer = self._buffer, ""
        return calls, content

    def finish(self) -> str:
        """Content still held back once the output ended: all of it when no call was found."""
        rest, self._buffer = self._buffer, ""
        return "" if self._count else rest

    def parse(self, text: str) -> tuple[list[ToolCall], str]:
        """The calls in a whole output and its content."""
        calls, content = self.add(text)
        return calls, content + self.finish()

    @property
    def found(self) -> int:
        """How many calls have been parsed so far."""
        return self._count

    def _find_tag(self) -> tuple[int, bool]:
        at = self._buffer.find(self.tag)
        if at >= 0:
            return at, True
        for size in range(min(len(self._buffer), len(self.tag)), 0, -1):
            if self._buffer.endswith(self.tag[:size]):
                return len(self._buffer) - size, False
        return -1, False

    def _next_call(self) -> ToolCall | None:
        name, end = self._find_tool()
        if name is None:
            return None
        found = self._scan_object()
        if found is None:
            return None
        data, at = found
        arguments, hit = _arguments_in(name, data)
        if not hit:
            arguments = data
        raw, sent = "", 0
        if self._arg_start >= 0:
            self._scan_arguments()
            if self._arg_end >= 0:
                raw = self._buffer[self._arg_start : self._arg_end]
                sent = self._arg_sent - self._arg_start
        call = ToolCall(name, arguments if arguments is not None else {}, self._count, raw, sent)
        self._count += 1
        self._arg_start = self._arg_end = -1
        self._arg_sent = self._arg_depth = 0
        self._arg_scan = JsonScan()
        self._buffer = self._buffer[max(end, at) :]
        self._tool, self._searched = None, 0
        self._pos, self._start, self._depth = 0, -1, 0
        self._in_string = self._escaped = False
        self._object = None
        self._close_pos = self._close_depth = 0
        return call

    def _find_tool(self) -> tuple[str | None, int]:
        """The tool named first (the longest at one place) in the buffer and where its name
        ends; none while the buffer ends in what may still grow into a longer name. Once found
        it stays found: the text before the buffer's end does not change."""
        buffer = self._buffer
        if not buffer:
            return None, 0
        longest = max((len(n) for n in self.names), default=0)
        for size in range(1, min(len(buffer), longest) + 1):
            tail = buffer[-size:]
            if any(len(tail) < len(n) and n.startswith(tail) for n in self.names):
                return None, 0
        if self._tool is None:
            # No name was whole in the part already searched: one found now ends past it.
            offset = max(0, self._searched - longest)
            self._searched = len(buffer)
            found: str | None = None
            start = end = -1
            for name in self.names:
                at = buffer.find(name, offset)
                if at < 0:
                    continue
                if found is not None and (at > start or (at == start and len(name) <= len(found))):
                    continue
                found, start, end = name, at, at + len(name)
            if found is not None:
                self._tool = (found, end)
        return self._tool if self._tool is not None else (None, 0)

    def _scan_object(self) -> tuple[dict[str, Any], int] | None:
        """The first complete JSON object in the buffer and where it ends; an object that does
        not parse is skipped. With a ``quote``, an object in the template's own notation is read
        too. The scan goes on from where the last one stopped."""
        if self._object is not None:
            return self._object
        buffer = self._buffer
        pos, start, depth = self._pos, self._start, self._depth
        in_string, escaped = self._in_string, self._escaped
        while pos < len(buffer):
            char = buffer[pos]
            pos += 1
            if escaped:
                escaped = False
                continue
            if char == "\\":
                escaped = True
                continue
            if char == '"':
                in_string = not in_string
                continue
            if in_string:
                continue
            if char == "{":
                if depth == 0:
                    start = pos - 1
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0 and start != -1:
                    data = _decode_object(buffer[start:pos], self.quote)
                    if isinstance(data, dict):
                        self._object = (data, pos)
                        break
                    start = -1
                    continue
                depth = max(depth, 0)
        self._scanned += pos - self._pos
        self._pos, self._start, self._depth = pos, start, depth
        self._in_string, self._escaped = in_string, escaped
        return self._object

    def _closed(self) -> bool:
        """Whether the buffer holds the bracket that closes the tag's (for ``{`` and ``[``)."""
        pairs = {"{": ("{", "}"), "[": ("[", "]")}
        if self.tag not in pairs:
            return False
        opening, closing = pairs[self.tag]
        buffer = self._buffer
        depth = self._close_depth
        for pos in range(self._close_pos, len(buffer)):
            char = buffer[pos]
            if char == opening:
                depth += 1
            elif char == closing:
                depth -= 1
                if depth == 0:
                    self._scanned += pos + 1 - self._close_pos
                    return True
        self._scanned += len(buffer) - self._close_pos
        self._close_pos, self._close_depth = len(buffer), depth
        return False

    def __post_init__(self) -> None:
        if not self.tag:
            self.tag = BARE_JSON


def _json_map(obj: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = obj.get(key)
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None
    return None


def _arguments_in(name: str, obj: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """The arguments an object holds for the tool, as Ollama's findObject looks for them."""
    if "name" in obj:
        for key in ("arguments", "parameters"):
            found = _json_map(obj, key)
            if found is not None:
                return found, True
        return None, True
    found = _json_map(obj, name)
    if found is not None:
        return found, True
    for value in obj.values():
        children = value if isinstance(value, list) else [value]
        for child in children:
            if isinstance(child, dict):
                args, hit = _arguments_in(name, child)
                if hit:
                    return args, True
    return None, False


def _decode_quoted(text: str, quote: str) -> Any:
    """An object written with bare keys and strings between ``quote`` marks (FunctionGemma's
    ``{city:<escape>Paris<escape>,days:3}``) as JSON; None when it is not one."""
    strings: list[str] = []

    def hold(match: re.Match[str]) -> str:
        strings.append(match.group(1))
        return f"\x00{len(strings) - 1}\x00"

    held = re.sub(re.escape(quote) + "(.*?)" + re.escape(quote), hold, text, flags=re.DOTALL)
    keyed = re.sub(r"([{,]\s*)([A-Za-z_][\w.-]*)\s*:", r'\1"\2":', held)
    restored = re.sub(r"\x00(\d+)\x00", lambda m: json.dumps(strings[int(m.group(1))]), keyed)
    try:
        return json.loads(restored)
    except ValueError:
        return None


def _decode_object(text: str, quote: str) -> Any:
    """A complete object's text as JSON, or in the template's own notation with a ``quote``;
    None when it is neither."""
    try:
        return json.loads(text)
    except ValueError:
        return _decode_quoted(text, quote) if quote else None
