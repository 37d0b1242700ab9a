"""Tool calls that are valid by construction: the shape of a call as the model's template writes
it, learnt from the renderings of sample calls, and the llama.cpp grammar (GBNF) that holds the
output to calls of the offered tools in that shape, their arguments to each tool's JSON schema."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from typing import Any, TypeGuard

from llama_cpp.llama_grammar import RESERVED_NAMES, BuiltinRule, SchemaConverter

from slm_runtime.tools import BARE_JSON, PROBE_ID, PROBE_NAME, JsonScan, probe_conversations

# The argument the sample call carries (tools.probe_tools), as the template renders its key.
_PROBE_KEY = '"probe_arg"'
_PROBE_ARGUMENTS = {"probe_arg": "probe value"}
# The second sample call's id: nine letters and digits, as Mistral's templates need.
_SECOND_ID = "probecal2"
# The most calls one constrained answer holds when parallel calls are allowed.
MAX_CALLS = 8

# The parts of a call object that are not literal text.
NAME = "name"
ARGUMENTS = "arguments"
CALL_ID = "id"


@dataclass(frozen=True)
class CallShape:
    """A call as the template writes it: ``prefix`` before the first call object, the object as
    literal text and the slots ``NAME``, ``ARGUMENTS`` and ``CALL_ID``, ``separator`` between two
    calls (None when the template writes one call per turn), ``suffix`` after the last."""

    prefix: str
    parts: tuple[str, ...]
    slots: tuple[str, ...]
    separator: str | None
    suffix: str


def two_call_conversation() -> list[dict[str, Any]]:
    """``probe_conversations``' conversation with a second call in the same turn, and its result."""
    with_call, _ = probe_conversations()
    assistant = copy.deepcopy(with_call[1])
    second = copy.deepcopy(assistant["tool_calls"][0])
    second["id"] = _SECOND_ID
    second["function"]["index"] = 1
    assistant["tool_calls"].append(second)
    result = dict(with_call[2], tool_call_id=_SECOND_ID)
    return [with_call[0], assistant, with_call[2], result]


def _enclosing(text: str, at: int) -> int:
    """Where the innermost JSON object holding position ``at`` opens; -1 when none does."""
    stack: list[int] = []
    for pos, char in JsonScan().structure(text, at):
        if char == "{":
            stack.append(pos)
        elif char == "}" and stack:
            stack.pop()
    return stack[-1] if stack else -1


def _closing(text: str, start: int) -> int:
    """Where the JSON object that opens at ``start`` ends (one past its ``}``); -1 if never."""
    depth = 0
    for pos, char in JsonScan(start).structure(text):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return pos + 1
    return -1


def _call_spans(turn: str) -> list[tuple[int, int]]:
    """The call objects in a rendered turn: the innermost object around each sample name."""
    spans: list[tuple[int, int]] = []
    at = turn.find(f'"{PROBE_NAME}"')
    while at >= 0:
        start = _enclosing(turn, at)
        end = _closing(turn, start) if start >= 0 else -1
        if end < 0:
            return []
        spans.append((start, end))
        at = turn.find(f'"{PROBE_NAME}"', end)
    return spans


def _unclosed(text: str) -> list[str]:
    """The brackets ``text`` opens and leaves open, outside JSON strings, innermost last."""
    stack: list[str] = []
    pairs = {"]": "[", "}": "{"}
    for _, char in JsonScan().structure(text):
        if char in "[{":
            stack.append(char)
        elif char in pairs and stack and stack[-1] == pairs[char]:
            stack.pop()
    return stack


def _suffix(tag: str, prefix: str, rest: str) -> str | None:
    """The text after the last call: up to the brackets that close the prefix's, then the
    tag's closing form (``</tool_call>`` for ``<tool_call>``) when the template writes it."""
    need = len(_unclosed(prefix))
    end = 0
    for pos, char in enumerate(rest):
        if need == 0:
            break
        if char in "]}":
            need -= 1
            end = pos + 1
    if need:
        return None
    suffix, after = rest[:end], rest[end:]
    if tag.startswith("<"):
        letter = next((i for i, c in enumerate(tag) if c.isalnum()), -1)
        if letter > 0:
            closing = tag[:letter] + "/" + tag[letter:]
            stripped = after.lstrip()
            if stripped.startswith(closing):
                suffix += after[: len(after) - len(stripped)] + closing
    return suffix


def _object_parts(call: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """A call object split into literal text around its name, arguments and id; None when its
    arguments are not the sample's as a JSON object."""
    key = call.find(_PROBE_KEY)
    args_start = _enclosing(call, key) if key >= 0 else -1
    args_end = _closing(call, args_start) if args_start > 0 else -1
    if args_end < 0:
        return None
    try:
        if json.loads(call[args_start:args_end]) != _PROBE_ARGUMENTS:
            return None
    except ValueError:
        return None
    name = call.find(f'"{PROBE_NAME}"') + 1
    places = [(name, name + len(PROBE_NAME), NAME), (args_start, args_end, ARGUMENTS)]
    ident = call.find(f'"{PROBE_ID}"')
    if ident >= 0:
        places.append((ident + 1, ident + 1 + len(PROBE_ID), CALL_ID))
    places.sort()
    parts: list[str] = []
    slots: list[str] = []
    pos = 0
    for start, end, slot in places:
        if start < pos:
            return None
        parts.append(call[pos:start])
        slots.append(slot)
        pos = end
    parts.append(call[pos:])
    return tuple(parts), tuple(slots)


def shape_from_renderings(tag: str, one: str, two: str | None) -> CallShape | None:
    """The call shape from the assistant turns (as ``tools.call_turn`` cuts them) of the sample
    conversation with one call and, when the template renders it, with two; None when the
    template's calls are not JSON objects holding the name and the arguments as JSON."""
    spans = _call_spans(one)
    if len(spans) != 1:
        return None
    start, end = spans[0]
    prefix = one[:start]
    if tag != BARE_JSON and tag not in prefix:
        return None
    split = _object_parts(one[start:end])
    suffix = _suffix(tag, prefix, one[end:])
    if split is None or suffix is None:
        return None
    separator = None
    pair = _call_spans(two) if two is not None else []
    if two is not None and len(pair) == 2 and two[: pair[0][0]] == prefix:
        separator = two[pair[0][1] : pair[1][0]]
    parts, slots = split
    return CallShape(prefix, parts, slots, separator, suffix)


def _literal(text: str) -> str:
    """``text`` as a GBNF string literal."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\r":
            out.append("\\r")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) < 0x20:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


# A JSON string's character: llama-cpp-python's own rule lets control characters through, which
# JSON strings may not hold unescaped.
_CHAR = BuiltinRule(r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})', [])
# The most digits an integer has, as in llama-cpp-python's own integer rule.
_DIGITS = 16


def _same_length(low: str, high: str) -> str:
    """GBNF for the digit strings from ``low`` to ``high``, both of one length."""
    size = len(low)
    if low == "0" * size and high == "9" * size:
        return f"[0-9]{{{size}}}" if size > 1 else "[0-9]"
    if size == 1:
        return f'"{low}"' if low == high else f"[{low}-{high}]"
    if low[0] == high[0]:
        return f'"{low[0]}" ' + _same_length(low[1:], high[1:])
    first, last = int(low[0]), int(high[0])
    parts = [f'"{low[0]}" ' + _same_length(low[1:], "9" * (size - 1))]
    if last - first > 1:
        middle = f"{first + 1}" if last - first == 2 else f"{first + 1}-{last - 1}"
        parts.append(f"[{middle}] " + _same_length("0" * (size - 1), "9" * (size - 1)))
    parts.append(f'"{high[0]}" ' + _same_length("0" * (size - 1), high[1:]))
    return "(" + " | ".join(parts) + ")"


def _natural_range(low: int, high: int) -> list[str]:
    """GBNF alternatives for the integers from ``low`` to ``high`` (0 <= low <= high), written
    without leading zeros."""
    parts = []
    for size in range(len(str(low)), len(str(high)) + 1):
        start = max(low, 10 ** (size - 1) if size > 1 else 0)
        end = min(high, 10**size - 1)
        if start <= end:
            parts.append(_same_length(str(start), str(end)))
    return parts


def integer_range(low: int | None, high: int | None) -> str:
    """GBNF for the integers from ``low`` to ``high`` (None: unbounded, up to 16 digits);
    ValueError when no integer lies between them."""
    biggest = 10**_DIGITS - 1
    first = -biggest if low is None else low
    last = biggest if high is None else high
    if first > last:
        if high is None:
            raise ValueError(f"no integer of up to {_DIGITS} digits is at least {low}")
        if low is None:
            raise ValueError(f"no integer of up to {_DIGITS} digits is at most {high}")
        raise ValueError(f"no integer lies between {low} and {high}")
    parts = []
    if first < 0:
        negative = _natural_range(max(-last, 1), -first)
        parts.append('"-" ' + (negative[0] if len(negative) == 1 else f"({' | '.join(negative)})"))
    if last >= 0:
        parts.extend(_natural_range(max(first, 0), last))
    return parts[0] if len(parts) == 1 else "(" + " | ".join(parts) + ")"


def _number(value: Any) -> TypeGuard[int | float]:
    """Whether a JSON value is a number (a bool is not, though Python's bool is an int)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _integer_bounds(schema: dict[str, Any]) -> tuple[int | None, int | None]:
    """The least and greatest integer an integer schema allows (None: unbounded): ``minimum``,
    ``maximum``, and ``exclusiveMinimum``/``exclusiveMaximum`` as numbers or, as draft 4 writes
    them, as flags that make ``minimum``/``maximum`` strict."""
    lows, highs = [], []
    minimum, maximum = schema.get("minimum"), schema.get("maximum")
    above, below = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if _number(minimum):
        lows.append(math.floor(minimum) + 1 if above is True else math.ceil(minimum))
    if _number(above):
        lows.append(math.floor(above) + 1)
    if _number(maximum):
        highs.append(math.ceil(maximum) - 1 if below is True else math.floor(maximum))
    if _number(below):
        highs.append(math.ceil(below) - 1)
    return max(lows, default=None), min(highs, default=None)


# The bounds of an integer, which llama-cpp-python's converter does not keep.
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
# Keywords the converter writes an integer's rule from before it looks at the type.
_BEFORE_TYPE = ("$ref", "anyOf", "oneOf", "const", "enum")


class _Converter(SchemaConverter):
    """llama-cpp-python's JSON schema converter with JSON's string characters and with the
    bounds of integers (``minimum``, ``maximum`` and their exclusive forms) kept."""

    def __init__(self) -> None:
        super().__init__(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)  # type: ignore[no-untyped-call]

    def _add_primitive(self, name: str, rule: Any) -> Any:
        return super()._add_primitive(name, _CHAR if name == "char" else rule)

    def visit(self, schema: Any, name: str) -> Any:
        if not (
            isinstance(schema, dict)
            and schema.get("type") == "integer"
            and not any(key in schema for key in _BEFORE_TYPE)
            and any(_number(schema.get(bound)) for bound in _BOUNDS)
        ):
            return super().visit(schema, name)  # type: ignore[no-untyped-call]
        rule = name + "-" if name in RESERVED_NAMES else name or "root"
        return self._add_rule(rule, integer_range(*_integer_bounds(schema)) + " space")  # type: ignore[no-untyped-call]


def call_grammar(shape: CallShape, tools: list[dict[str, Any]], parallel: bool) -> str:
    """The GBNF grammar of an answer that is calls of ``tools`` (OpenAI function tools, already
    checked) in ``shape``: one call, or up to ``MAX_CALLS`` with ``parallel`` where the template
    writes several; each call's arguments match its tool's ``parameters``. ValueError names a
    tool whose schema llama.cpp's converter cannot turn into a grammar."""
    converter = _Converter()
    calls = []
    for i, tool in enumerate(tools):
        function = tool["function"]
        schema = function.get("parameters") or {"type": "object"}
        try:
            resolved = converter.resolve_refs(copy.deepcopy(schema), f"tool-{i}")
            arguments = converter.visit(resolved, f"tool-{i}-arguments")
        except Exception as exc:
            raise ValueError(
                f"tools[{i}].function.parameters: the schema cannot constrain generation: {exc}"
            ) from None
        pieces = []
        for part, slot in zip(shape.parts, (*shape.slots, None), strict=True):
            if part:
                pieces.append(_literal(part))
            if slot == NAME:
                pieces.append(_literal(function["name"]))
            elif slot == ARGUMENTS:
                pieces.append(arguments)
            elif slot == CALL_ID:
                pieces.append("[a-zA-Z0-9]{9}")
        calls.append(f"tool-{i}-call ::= " + " ".join(pieces))
    prefix = _literal(shape.prefix) if shape.prefix else ""
    suffix = _literal(shape.suffix) if shape.suffix else ""
    body = "call"
    if parallel and shape.separator is not None:
        separator = f"{_literal(shape.separator)} " if shape.separator else ""
        body = f"call ({separator}call){{0,{MAX_CALLS - 1}}}"
    rules = [
        "root ::= " + " ".join(p for p in (prefix, body, suffix) if p),
        "call ::= " + " | ".join(f"tool-{i}-call" for i in range(len(tools))),
        *calls,
    ]
    return "\n".join(rules) + "\n" + str(converter.format_grammar())  # type: ignore[no-untyped-call]
