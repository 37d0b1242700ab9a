"""Ollama's TEMPLATE language: the subset of Go's text/template it uses, with Ollama's data."""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import inspect
import json
import math
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Template", "TemplateError", "parse_template", "render_template"]


class TemplateError(ValueError):
    """A TEMPLATE that cannot be parsed or executed; the message says where and what is wrong."""


# ---------------------------------------------------------------------------------------------
# Go values. Strings, bools, ints, floats, lists and dicts stand for themselves; None is a nil
# interface. The classes below carry what Go knows from a value's type: struct fields and
# their JSON tags, and a String method that decides how the value prints.


@dataclass(frozen=True)
class _StructType:
    name: str
    fields: tuple[tuple[str, str, bool], ...]  # Go name, JSON name, omitempty


class _Struct:
    """A Go struct value; `pointer` marks a *T, which only error messages show."""

    __slots__ = ("pointer", "type", "values")

    def __init__(self, type_: _StructType, values: dict[str, Any], *, pointer: bool = False):
        self.type = type_
        self.values = values
        self.pointer = pointer


class _JSONStringMap(dict[str, Any]):
    """A Go map whose String method prints it as JSON (Ollama's templateArgs/Properties)."""


class _JSONStringList(list[Any]):
    """A Go slice whose String method prints it as JSON (Ollama's templateTools)."""


class _NilList(list[Any]):
    """A nil Go slice: prints as [] but marshals as JSON null."""


class _NilJSONStringList(_JSONStringList):
    """A nil templateTools: prints and marshals as null."""


class _NilJSONStringMap(_JSONStringMap):
    """A nil templateProperties: prints as {} but marshals as null."""


class _PropertyType(list[str]):
    """api.PropertyType: one JSON Schema type name, or several."""


class _OrderedMap(dict[str, Any]):
    """A map that keeps insertion order when marshalled (api.ToolPropertiesMap)."""


def _struct_type(name: str, *fields: str) -> _StructType:
    """Build a struct type from 'GoName[:json[,omitempty]]' field specs."""
    out = []
    for spec in fields:
        go_name, _, tag = spec.partition(":")
        json_name, _, opt = tag.partition(",")
        out.append((go_name, json_name or go_name, opt == "omitempty"))
    return _StructType(name, tuple(out))


_MESSAGE = _struct_type(
    "template.templateMessage",
    "Role",
    "Content",
    "Thinking",
    "Images",
    "ToolCalls",
    "ToolName",
    "ToolCallID",
)
_TOOL_CALL = _struct_type("template.templateToolCall", "ID", "Function")
_TOOL_CALL_FUNCTION = _struct_type(
    "template.templateToolCallFunction", "Index", "Name", "Arguments"
)
_TOOL = _struct_type(
    "template.templateTool", "Type:type", "Items:items,omitempty", "Function:function"
)
_TOOL_FUNCTION = _struct_type(
    "template.templateToolFunction",
    "Name:name",
    "Description:description",
    "Parameters:parameters",
)
_TOOL_PARAMETERS = _struct_type(
    "template.templateToolFunctionParameters",
    "Type:type",
    "Defs:$defs,omitempty",
    "Items:items,omitempty",
    "Required:required,omitempty",
    "Properties:properties",
)
_TOOL_PROPERTY = _struct_type(
    "api.ToolProperty",
    "AnyOf:anyOf,omitempty",
    "Type:type,omitempty",
    "Items:items,omitempty",
    "Description:description,omitempty",
    "Enum:enum,omitempty",
    "Properties:properties,omitempty",
)

_TS_TYPES = {
    "string": "string",
    "number": "number",
    "integer": "number",
    "boolean": "boolean",
    "array": "any[]",
    "object": "Record<string, any>",
    "null": "null",
}


def _to_typescript_type(v: Any) -> str:
    """api.ToolProperty.ToTypeScriptType: the property's type spelled in TypeScript."""
    if not isinstance(v, _Struct) or v.type is not _TOOL_PROPERTY:
        return "any"
    any_of = v.values["AnyOf"]
    if any_of:
        return " | ".join(_to_typescript_type(p) for p in any_of)
    types = v.values["Type"]
    if not types:
        return "any"
    return " | ".join(_TS_TYPES.get(t, "any") for t in types)


# ---------------------------------------------------------------------------------------------
# fmt and encoding/json, as far as templates reach them.


def _shortest_digits(f: float) -> tuple[str, int]:
    """The shortest decimal digits of f and the position of the decimal point (strconv)."""
    _, digits, exp = decimal.Decimal(repr(f)).normalize().as_tuple()
    return "".join(map(str, digits)), len(digits) + int(exp)


def _format_exp(digits: str, dp: int, sign: str) -> str:
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    exp = dp - 1
    return f"{sign}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"


def _format_fixed(digits: str, dp: int, sign: str) -> str:
    if dp <= 0:
        return f"{sign}0.{'0' * -dp}{digits}"
    if dp >= len(digits):
        return sign + digits + "0" * (dp - len(digits))
    return f"{sign}{digits[:dp]}.{digits[dp:]}"


def _go_float(f: float, *, json_style: bool = False) -> str:
    """strconv.FormatFloat(f, 'g', -1, 64), or the form encoding/json writes."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    sign = "-" if math.copysign(1.0, f) < 0 else ""
    if f == 0:
        return sign + "0"
    digits, dp = _shortest_digits(abs(f))
    if json_style:
        if abs(f) < 1e-6 or abs(f) >= 1e21:
            return _format_exp(digits, dp, sign).replace("e-0", "e-").replace("e+0", "e+")
        return _format_fixed(digits, dp, sign)
    # %v and shortest %g switch to an exponent below 1e-4 and from 1e6 on.
    if dp - 1 < -4 or dp - 1 >= 6:
        return _format_exp(digits, dp, sign)
    return _format_fixed(digits, dp, sign)


def _fmt_v(v: Any, depth: int = 0) -> str:
    """fmt's %v."""
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _go_float(v)
    if isinstance(v, str):
        return v
    if isinstance(v, _JSONStringMap):
        return _go_json(v) if v else "{}"
    if isinstance(v, _NilJSONStringList):
        return "null"
    if isinstance(v, _JSONStringList):
        return _go_json(v)
    if isinstance(v, _PropertyType):
        if len(v) == 1:
            return v[0]
        return "" if not v else "[" + " ".join(v) + "]"
    if isinstance(v, _Struct):
        body = "{" + " ".join(_fmt_v(x, depth + 1) for x in v.values.values()) + "}"
        return "&" + body if v.pointer and depth == 0 else body
    if isinstance(v, list):
        return "[" + " ".join(_fmt_v(x, depth + 1) for x in v) + "]"
    if isinstance(v, dict):
        items = (f"{_fmt_v(k, depth + 1)}:{_fmt_v(v[k], depth + 1)}" for k in _sorted_keys(v))
        return "map[" + " ".join(items) + "]"
    return str(v)


def _json_string(s: str) -> str:
    out = ['"']
    for ch in s:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in "\b\f\n\r\t":
            out.append({"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch])
        elif code < 0x20 or ch in "<>&\u2028\u2029":
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\ufffd")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _omit_empty(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, bool):
        return not v
    if isinstance(v, (int, float)):
        return v == 0
    return isinstance(v, (str, list, dict)) and len(v) == 0


def _go_json(v: Any) -> str:
    """encoding/json.Marshal, with Go's key order, HTML escaping and number forms."""
    if v is None or isinstance(v, (_NilList, _NilJSONStringList, _NilJSONStringMap)):
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            raise TemplateError(f"json: unsupported value: {_go_float(v)}")
        return _go_float(v, json_style=True)
    if isinstance(v, str):
        return _json_string(v)
    if isinstance(v, _PropertyType):
        return _json_string(v[0]) if len(v) == 1 else _go_json(list(v) or None)
    if isinstance(v, _Struct):
        parts = []
        for go_name, json_name, omitempty in v.type.fields:
            x = v.values[go_name]
            if omitempty and _omit_empty(x):
                continue
            parts.append(f"{_json_string(json_name)}:{_go_json(x)}")
        return "{" + ",".join(parts) + "}"
    if isinstance(v, list):
        return "[" + ",".join(_go_json(x) for x in v) + "]"
    if isinstance(v, dict):
        keys = list(v) if isinstance(v, _OrderedMap) else sorted(v)
        return "{" + ",".join(f"{_json_string(str(k))}:{_go_json(v[k])}" for k in keys) + "}"
    raise TemplateError(f"json: unsupported type {type(v).__name__}")


def _type_name(v: Any) -> str:
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, str):
        return "string"
    if isinstance(v, _Struct):
        return ("*" if v.pointer else "") + v.type.name
    if isinstance(v, _PropertyType):
        return "api.PropertyType"
    if isinstance(v, _JSONStringList):
        return "template.templateTools"
    if isinstance(v, _JSONStringMap):
        return "map[string]interface {}"
    if isinstance(v, list):
        return "[]interface {}"
    if isinstance(v, dict):
        return "map[string]interface {}"
    return type(v).__name__


_MAX_WIDTH = 4096


def _sprintf(fmt: str, args: Sequence[Any]) -> str:
    """fmt.Sprintf for the verbs templates use: %v %s %d %q %t %f %g %e %x %X %c %%."""
    out: list[str] = []
    i, argi, n = 0, 0, len(fmt)
    while i < n:
        ch = fmt[i]
        if ch != "%":
            out.append(ch)
            i += 1
            continue
        i += 1
        flags = ""
        while i < n and fmt[i] in "-+# 0":
            flags += fmt[i]
            i += 1
        width = ""
        while i < n and fmt[i].isdigit():
            width += fmt[i]
            i += 1
        prec: int | None = None
        if i < n and fmt[i] == ".":
            i += 1
            p = ""
            while i < n and fmt[i].isdigit():
                p += fmt[i]
                i += 1
            prec = int(p or "0")
            if prec > _MAX_WIDTH:
                raise TemplateError(f"printf precision {prec} is larger than {_MAX_WIDTH}")
        if i >= n:
            out.append("%!(NOVERB)")
            break
        verb = fmt[i]
        i += 1
        if verb == "%":
            out.append("%")
            continue
        if argi >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        arg = args[argi]
        argi += 1
        out.append(_pad(_format_verb(verb, arg, prec, flags), width, flags))
    if argi < len(args):
        extra = ", ".join(
            "<nil>" if a is None else f"{_type_name(a)}={_fmt_v(a)}" for a in args[argi:]
        )
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _pad(s: str, width: str, flags: str) -> str:
    if not width:
        return s
    w = int(width)
    if w > _MAX_WIDTH:
        raise TemplateError(f"printf width {w} is larger than {_MAX_WIDTH}")
    if "-" in flags:
        return s.ljust(w)
    if "0" in flags and (s[:1].isdigit() or s[:1] in ("+", "-")):
        sign = s[0] if s[:1] in "+-" else ""
        return sign + s[len(sign) :].rjust(w - len(sign), "0")
    return s.rjust(w)


def _format_verb(verb: str, arg: Any, prec: int | None, flags: str) -> str:
    numeric = isinstance(arg, (int, float)) and not isinstance(arg, bool)
    if verb in "vs":
        s = _fmt_v(arg)
        if verb == "s" and (numeric or isinstance(arg, bool)):
            s = f"%!s({_type_name(arg)}={s})"
        return s[:prec] if prec is not None and isinstance(arg, str) else s
    if verb == "q" and isinstance(arg, str):
        return json.dumps(arg, ensure_ascii=False)
    if verb == "q" and isinstance(arg, int) and not isinstance(arg, bool):
        return "'" + chr(arg) + "'"
    if verb == "t" and isinstance(arg, bool):
        return "true" if arg else "false"
    if verb == "d" and isinstance(arg, int) and not isinstance(arg, bool):
        return ("+" if "+" in flags and arg >= 0 else "") + str(arg)
    if verb in "xX" and isinstance(arg, (int, str)) and not isinstance(arg, bool):
        s = format(arg, "x") if isinstance(arg, int) else arg.encode().hex()
        return s.upper() if verb == "X" else s
    if verb == "c" and isinstance(arg, int) and not isinstance(arg, bool):
        return chr(arg)
    if verb in "feEgG" and isinstance(arg, float):
        if verb in "gG" and prec is None:
            s = _go_float(float(arg))
            return s.upper() if verb == "G" else s
        p = 6 if prec is None else prec
        s = format(float(arg), f"{'+' if '+' in flags else ''}.{p}{verb}")
        return s
    return f"%!{verb}({_type_name(arg)}={_fmt_v(arg)})"


# ---------------------------------------------------------------------------------------------
# Lexer.

_SPACE = " \t\r\n"
_KEYWORDS = frozenset(
    {"block", "break", "continue", "define", "else", "end", "if", "range", "template", "with"}
)


@dataclass(frozen=True)
class _Tok:
    kind: str  # text left right space field var dot ident keyword string rawstring char
    #            number bool nil ( ) | := = , eof
    val: str
    pos: int


def _line_col(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return f"line {line}, column {col}"


class _Lexer:
    def __init__(self, text: str):
        self.text = text
        self.toks: list[_Tok] = []

    def err(self, pos: int, msg: str) -> TemplateError:
        return TemplateError(f"template: {_line_col(self.text, pos)}: {msg}")

    def run(self) -> list[_Tok]:
        text, pos, n = self.text, 0, len(self.text)
        trim_next = False
        while pos <= n:
            start = text.find("{{", pos)
            end = n if start < 0 else start
            chunk = text[pos:end]
            if trim_next:
                chunk = chunk.lstrip(_SPACE)
            left_trim = (
                start >= 0
                and text.startswith("-", start + 2)
                and (start + 3 < n and text[start + 3] in _SPACE)
            )
            if left_trim:
                chunk = chunk.rstrip(_SPACE)
            if chunk:
                self.toks.append(_Tok("text", chunk, pos))
            if start < 0:
                break
            pos = start + 2 + (2 if left_trim else 0)
            pos, trim_next = self.action(start, pos)
        self.toks.append(_Tok("eof", "", n))
        return self.toks

    def right_delim(self, pos: int) -> tuple[bool, bool, int]:
        """Whether a closing delimiter starts at pos: (found, trims, position after it)."""
        text = self.text
        if text.startswith("}}", pos):
            return True, False, pos + 2
        if text[pos : pos + 1] in tuple(_SPACE) and text.startswith("-}}", pos + 1):
            return True, True, pos + 4
        return False, False, pos

    def action(self, start: int, pos: int) -> tuple[int, bool]:
        text, n = self.text, len(self.text)
        if text.startswith("/*", pos):
            close = text.find("*/", pos + 2)
            if close < 0:
                raise self.err(start, "unclosed comment")
            found, trims, after = self.right_delim(close + 2)
            if not found:
                raise self.err(start, "comment ends before closing delimiter")
            return after, trims
        self.toks.append(_Tok("left", "{{", start))
        depth = 0
        while True:
            if pos >= n:
                raise self.err(start, "unclosed action")
            found, trims, after = self.right_delim(pos)
            if found:
                if depth:
                    raise self.err(start, "unclosed left paren")
                self.toks.append(_Tok("right", "}}", pos))
                return after, trims
            ch = text[pos]
            if ch in _SPACE:
                end = pos
                while end < n and text[end] in _SPACE and not self.right_delim(end)[0]:
                    end += 1
                self.toks.append(_Tok("space", text[pos:end], pos))
                pos = end
            elif ch == "(":
                depth += 1
                self.toks.append(_Tok("(", ch, pos))
                pos += 1
            elif ch == ")":
                depth -= 1
                if depth < 0:
                    raise self.err(pos, "unexpected right paren")
                self.toks.append(_Tok(")", ch, pos))
                pos += 1
            elif ch == "|":
                self.toks.append(_Tok("|", ch, pos))
                pos += 1
            elif ch == ",":
                self.toks.append(_Tok(",", ch, pos))
                pos += 1
            elif text.startswith(":=", pos):
                self.toks.append(_Tok(":=", ":=", pos))
                pos += 2
            elif ch == "=":
                self.toks.append(_Tok("=", ch, pos))
                pos += 1
            elif ch == '"':
                pos = self.quoted(pos, '"', "string")
            elif ch == "`":
                close = text.find("`", pos + 1)
                if close < 0:
                    raise self.err(pos, "unterminated raw quoted string")
                self.toks.append(_Tok("rawstring", text[pos + 1 : close], pos))
                pos = close + 1
            elif ch == "'":
                pos = self.quoted(pos, "'", "char")
            elif ch == "$":
                end = self.word_end(pos + 1)
                self.toks.append(_Tok("var", text[pos:end], pos))
                pos = end
            elif ch == ".":
                if pos + 1 < n and text[pos + 1].isdigit():
                    pos = self.number(pos)
                    continue
                end = self.word_end(pos + 1)
                kind = "field" if end > pos + 1 else "dot"
                self.toks.append(_Tok(kind, text[pos:end], pos))
                pos = end
            elif ch.isdigit() or (ch in "+-" and pos + 1 < n and text[pos + 1].isdigit()):
                pos = self.number(pos)
            elif ch.isalpha() or ch == "_":
                end = self.word_end(pos)
                word = text[pos:end]
                if word in _KEYWORDS:
                    kind = "keyword"
                elif word in ("true", "false"):
                    kind = "bool"
                elif word == "nil":
                    kind = "nil"
                else:
                    kind = "ident"
                self.toks.append(_Tok(kind, word, pos))
                pos = end
            else:
                raise self.err(pos, f"unexpected {ch!r} in command")

    def word_end(self, pos: int) -> int:
        text, n = self.text, len(self.text)
        while pos < n and (text[pos].isalnum() or text[pos] == "_"):
            pos += 1
        return pos

    def number(self, pos: int) -> int:
        text, n = self.text, len(self.text)
        end = pos + 1
        while end < n and (
            text[end].isalnum()
            or text[end] in "._"
            or (text[end] in "+-" and text[end - 1] in "eEpP")
        ):
            end += 1
        self.toks.append(_Tok("number", text[pos:end], pos))
        return end

    def quoted(self, pos: int, quote: str, kind: str) -> int:
        text, n = self.text, len(self.text)
        end = pos + 1
        while True:
            if end >= n or text[end] == "\n":
                what = "string" if kind == "string" else "character"
                raise self.err(pos, f"unterminated quoted {what}")
            if text[end] == "\\":
                end += 2
                continue
            if text[end] == quote:
                break
            end += 1
        self.toks.append(_Tok(kind, text[pos : end + 1], pos))
        return end + 1


def _unquote(lit: str) -> str:
    """Go's strconv.Unquote for double-quoted strings and character literals."""
    body = lit[1:-1]
    out: list[str] = []
    i = 0
    simple = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        esc = body[i + 1]
        if esc in simple:
            out.append(simple[esc])
            i += 2
        elif esc in "\\'\"":
            out.append(esc)
            i += 2
        elif esc in "xuU":
            size = {"x": 2, "u": 4, "U": 8}[esc]
            out.append(chr(int(body[i + 2 : i + 2 + size], 16)))
            i += 2 + size
        elif esc in "01234567":
            out.append(chr(int(body[i + 1 : i + 4], 8)))
            i += 4
        else:
            raise ValueError(f"unknown escape \\{esc}")
    return "".join(out)


def _parse_number(lit: str) -> int | float:
    text = lit.replace("_", "")
    try:
        return int(text, 0)
    except ValueError:
        pass
    if text.lower().startswith(("0x", "-0x", "+0x")):
        return float.fromhex(text)
    return float(text)


# ---------------------------------------------------------------------------------------------
# Parse tree.


class _LoopControlError(Exception):
    """Unwinds a {{break}} or {{continue}} to its {{range}}."""


class _BreakLoopError(_LoopControlError):
    pass


class _ContinueLoopError(_LoopControlError):
    pass


@dataclass
class _Node:
    pos: int


@dataclass
class _Text(_Node):
    text: str


@dataclass
class _Field(_Node):
    names: list[str]


@dataclass
class _Variable(_Node):
    names: list[str]  # first is "$" or "$name"


@dataclass
class _Dot(_Node):
    pass


@dataclass
class _Literal(_Node):
    value: Any


@dataclass
class _Function(_Node):
    name: str


@dataclass
class _Chain(_Node):
    node: _Node
    names: list[str]


@dataclass
class _Command(_Node):
    args: list[_Node]


@dataclass
class _Pipe(_Node):
    decl: list[str]
    assign: bool
    cmds: list[_Command]


@dataclass
class _Action(_Node):
    pipe: _Pipe


@dataclass
class _List(_Node):
    nodes: list[_Node] = field(default_factory=list)


@dataclass
class _Branch(_Node):
    kind: str  # if, with, range
    pipe: _Pipe
    body: _List
    else_body: _List | None


@dataclass
class _LoopControl(_Node):
    kind: str  # break, continue


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = _Lexer(text).run()
        self.i = 0
        self.vars: list[str] = ["$"]
        self.range_depth = 0

    def err(self, pos: int, msg: str) -> TemplateError:
        return TemplateError(f"template: {_line_col(self.text, pos)}: {msg}")

    def peek(self, skip_space: bool = True) -> _Tok:
        j = self.i
        while skip_space and self.toks[j].kind == "space":
            j += 1
        return self.toks[j]

    def next(self, skip_space: bool = True) -> _Tok:
        while skip_space and self.toks[self.i].kind == "space":
            self.i += 1
        tok = self.toks[self.i]
        if tok.kind != "eof":
            self.i += 1
        return tok

    def expect(self, kind: str, context: str) -> _Tok:
        tok = self.next()
        if tok.kind != kind:
            raise self.err(tok.pos, f"unexpected {self.describe(tok)} in {context}")
        return tok

    @staticmethod
    def describe(tok: _Tok) -> str:
        if tok.kind == "eof":
            return "EOF"
        if tok.kind == "right":
            return '"}}"'
        return f"{tok.val!r}"

    def parse(self) -> _List:
        root, _ = self.item_list(top=True)
        return root

    def item_list(self, top: bool = False) -> tuple[_List, _Tok]:
        """Items up to EOF (top) or up to an {{end}} / {{else}}; returns that last token."""
        lst = _List(self.toks[self.i].pos)
        while True:
            tok = self.next(skip_space=False)
            if tok.kind == "eof":
                if top:
                    return lst, tok
                raise self.err(tok.pos, "unexpected EOF: missing {{end}}")
            if tok.kind == "text":
                lst.nodes.append(_Text(tok.pos, tok.val))
                continue
            # tok is "left"
            kw = self.peek()
            if kw.kind == "keyword" and kw.val in ("end", "else"):
                self.next()
                if top:
                    raise self.err(kw.pos, f"unexpected {{{{{kw.val}}}}}")
                return lst, kw
            lst.nodes.append(self.action(tok))

    def action(self, left: _Tok) -> _Node:
        kw = self.peek()
        if kw.kind == "keyword":
            self.next()
            if kw.val in ("if", "with", "range"):
                return self.control(kw)
            if kw.val in ("break", "continue"):
                if self.range_depth == 0:
                    raise self.err(kw.pos, f"{{{{{kw.val}}}}} outside {{{{range}}}}")
                self.expect("right", kw.val)
                return _LoopControl(kw.pos, kw.val)
            raise self.err(
                kw.pos,
                f"{{{{{kw.val}}}}} is not supported: Ollama templates cannot define or "
                "include named templates",
            )
        return _Action(left.pos, self.pipeline("command", "right"))

    def control(self, kw: _Tok) -> _Branch:
        mark = len(self.vars)
        pipe = self.pipeline(kw.val, "right")
        if not pipe.cmds:
            raise self.err(kw.pos, f"missing value for {kw.val}")
        if kw.val == "range":
            self.range_depth += 1
        body, end = self.item_list()
        if kw.val == "range":
            self.range_depth -= 1
        else_body: _List | None = None
        if end.val == "else":
            nxt = self.peek()
            if kw.val != "range" and nxt.kind == "keyword" and nxt.val == kw.val:
                # {{else if ...}} / {{else with ...}}: a nested branch that shares the {{end}}.
                self.next()
                else_body = _List(nxt.pos, [self.control(nxt)])
            else:
                self.expect("right", "else")
                else_body, end2 = self.item_list()
                if end2.val != "end":
                    raise self.err(end2.pos, f"expected end; found {{{{{end2.val}}}}}")
                self.expect("right", "end")
        else:
            self.expect("right", "end")
        del self.vars[mark:]
        return _Branch(kw.pos, kw.val, pipe, body, else_body)

    def pipeline(self, context: str, end: str) -> _Pipe:
        start = self.peek()
        decl: list[str] = []
        assign = False
        # Declarations: "$x :=", "$x =", and for range "$i, $x :=".
        if start.kind == "var":
            save = self.i
            names = [self.next().val]
            after = self.peek()
            if after.kind == "," and context == "range":
                self.next()
                second = self.next()
                if second.kind != "var":
                    raise self.err(
                        second.pos,
                        f"range can only initialize variables, not {self.describe(second)}",
                    )
                names.append(second.val)
                after = self.peek()
                if after.kind not in (":=", "="):
                    raise self.err(after.pos, "range variables must be followed by := or =")
            if after.kind in (":=", "="):
                self.next()
                assign = after.kind == "="
                for name in names:
                    if assign:
                        if name not in self.vars:
                            raise self.err(start.pos, f'undefined variable "{name}"')
                    else:
                        self.vars.append(name)
                decl = names
            else:
                self.i = save
        cmds: list[_Command] = []
        while True:
            tok = self.peek()
            if tok.kind == end:
                self.next()
                break
            if tok.kind in ("eof", "right", ")"):
                raise self.err(tok.pos, f"unexpected {self.describe(tok)} in {context}")
            cmds.append(self.command(context, end))
            sep = self.peek()
            if sep.kind == "|":
                self.next()
                if self.peek().kind in (end, "|"):
                    raise self.err(sep.pos, "missing command after '|'")
        if not cmds:
            raise self.err(start.pos, f"missing value for {context}")
        for cmd in cmds[1:]:
            first = cmd.args[0]
            if isinstance(first, (_Literal, _Dot)):
                raise self.err(first.pos, "non executable command in pipeline stage 2")
        return _Pipe(start.pos, decl, assign, cmds)

    def command(self, context: str, end: str) -> _Command:
        args: list[_Node] = []
        pos = self.peek().pos
        while True:
            tok = self.peek()
            if tok.kind in (end, "|", "eof", "right", ")"):
                break
            if args and self.toks[self.i].kind != "space":
                raise self.err(tok.pos, f"missing space before {self.describe(tok)}")
            args.append(self.operand(context))
        if not args:
            raise self.err(pos, "empty command")
        first = args[0]
        if len(args) > 1 and isinstance(first, (_Literal, _Dot)):
            raise self.err(first.pos, f"can't give argument to non-function {self.source(first)}")
        return _Command(pos, args)

    def source(self, node: _Node) -> str:
        if isinstance(node, _Dot):
            return "."
        if isinstance(node, _Literal):
            return _fmt_v(node.value) if node.value is not None else "nil"
        return type(node).__name__

    def operand(self, context: str) -> _Node:
        node = self.term(context)
        names: list[str] = []
        while self.toks[self.i].kind == "field":
            names.extend(self.toks[self.i].val[1:].split("."))
            self.i += 1
        if not names:
            return node
        if isinstance(node, _Field):
            return _Field(node.pos, node.names + names)
        if isinstance(node, _Variable):
            return _Variable(node.pos, node.names + names)
        if isinstance(node, (_Literal, _Dot)):
            raise self.err(node.pos, f"unexpected . after term {self.source(node)!r}")
        return _Chain(node.pos, node, names)

    def term(self, context: str) -> _Node:
        tok = self.next()
        kind = tok.kind
        if kind == "ident":
            if tok.val not in _FUNC_TABLE:
                raise self.err(tok.pos, f'function "{tok.val}" not defined')
            return _Function(tok.pos, tok.val)
        if kind == "dot":
            return _Dot(tok.pos)
        if kind == "nil":
            return _Literal(tok.pos, None)
        if kind == "var":
            if tok.val not in self.vars:
                raise self.err(tok.pos, f'undefined variable "{tok.val}"')
            return _Variable(tok.pos, [tok.val])
        if kind == "field":
            return _Field(tok.pos, tok.val[1:].split("."))
        if kind == "bool":
            return _Literal(tok.pos, tok.val == "true")
        if kind == "number":
            try:
                return _Literal(tok.pos, _parse_number(tok.val))
            except ValueError:
                raise self.err(tok.pos, f"bad number syntax: {tok.val!r}") from None
        if kind == "string":
            try:
                return _Literal(tok.pos, _unquote(tok.val))
            except (ValueError, IndexError) as e:
                raise self.err(tok.pos, f"bad string {tok.val}: {e}") from None
        if kind == "rawstring":
            return _Literal(tok.pos, tok.val)
        if kind == "char":
            try:
                text = _unquote(tok.val)
            except (ValueError, IndexError):
                text = ""
            if len(text) != 1:
                raise self.err(tok.pos, f"malformed character constant: {tok.val}")
            return _Literal(tok.pos, ord(text))
        if kind == "(":
            return self.pipeline("parenthesized pipeline", ")")
        raise self.err(tok.pos, f"unexpected {self.describe(tok)} in {context}")


# ---------------------------------------------------------------------------------------------
# Execution.


def _truth(v: Any) -> bool:
    if v is None:
        return False
    if isinstance(v, _Struct):
        return True
    if isinstance(v, (bool, int, float, str, list, dict)):
        return bool(v)
    return True


def _sorted_keys(d: dict[Any, Any]) -> list[Any]:
    try:
        return sorted(d)
    except TypeError:
        return list(d)


def _basic_kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    return "other"


# Bounds on one rendering, so that a template sent with a request cannot hold a worker: real
# chat templates over long conversations stay far below both.
MAX_STEPS = 1_000_000
MAX_OUTPUT_CHARS = 16 * 1024 * 1024


class _Exec:
    def __init__(self, text: str, data: dict[str, Any]):
        self.text = text
        self.vars: list[tuple[str, Any]] = [("$", data)]
        self.out: list[str] = []
        self.size = 0
        self.steps = 0

    def err(self, node: _Node, msg: str) -> TemplateError:
        return TemplateError(f"template: {_line_col(self.text, node.pos)}: executing: {msg}")

    def write(self, node: _Node, text: str) -> None:
        self.size += len(text)
        if self.size > MAX_OUTPUT_CHARS:
            raise self.err(node, f"output exceeds {MAX_OUTPUT_CHARS} characters")
        self.out.append(text)

    def walk(self, dot: Any, node: _Node) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise self.err(node, f"rendering takes more than {MAX_STEPS} steps")
        if isinstance(node, _Text):
            self.write(node, node.text)
        elif isinstance(node, _Action):
            val = self.pipeline(dot, node.pipe)
            if not node.pipe.decl:
                self.write(node, self.print_value(node, val))
        elif isinstance(node, _List):
            for child in node.nodes:
                self.walk(dot, child)
        elif isinstance(node, _Branch):
            mark = len(self.vars)
            try:
                if node.kind == "range":
                    self.walk_range(dot, node)
                else:
                    val = self.pipeline(dot, node.pipe)
                    if _truth(val):
                        self.walk(val if node.kind == "with" else dot, node.body)
                    elif node.else_body is not None:
                        self.walk(dot, node.else_body)
            finally:
                del self.vars[mark:]
        elif isinstance(node, _LoopControl):
            raise _BreakLoopError if node.kind == "break" else _ContinueLoopError
        else:  # pragma: no cover - the parser makes no other nodes
            raise self.err(node, f"unknown node {type(node).__name__}")

    def walk_range(self, dot: Any, node: _Branch) -> None:
        pipe = node.pipe
        val = self.pipeline(dot, _Pipe(pipe.pos, [], False, pipe.cmds))
        items: Iterable[tuple[Any, Any]]
        if val is None:
            items = ()
        elif isinstance(val, dict):
            items = [(k, val[k]) for k in _sorted_keys(val)]
        elif isinstance(val, list):
            items = list(enumerate(val))
        elif isinstance(val, int) and not isinstance(val, bool):
            if len(pipe.decl) > 1:
                raise self.err(node, f"can't use {val} to iterate over more than one variable")
            items = ((i, i) for i in range(val))
        else:
            raise self.err(node, f"range can't iterate over {_fmt_v(val)}")
        empty = True
        for key, elem in items:
            empty = False
            mark = len(self.vars)
            if len(pipe.decl) == 1:
                self.set_or_push(pipe, pipe.decl[0], elem)
            elif len(pipe.decl) == 2:
                self.set_or_push(pipe, pipe.decl[0], key)
                self.set_or_push(pipe, pipe.decl[1], elem)
            try:
                self.walk(elem, node.body)
            except _ContinueLoopError:
                pass
            except _BreakLoopError:
                break
            finally:
                del self.vars[mark:]
        if empty and node.else_body is not None:
            self.walk(dot, node.else_body)

    def set_or_push(self, pipe: _Pipe, name: str, value: Any) -> None:
        if pipe.assign:
            self.set_var(pipe, name, value)
        else:
            self.vars.append((name, value))

    def set_var(self, node: _Node, name: str, value: Any) -> None:
        for i in range(len(self.vars) - 1, -1, -1):
            if self.vars[i][0] == name:
                self.vars[i] = (name, value)
                return
        raise self.err(node, f"undefined variable: {name}")

    def var(self, node: _Node, name: str) -> Any:
        for n, v in reversed(self.vars):
            if n == name:
                return v
        raise self.err(node, f"undefined variable: {name}")

    def print_value(self, node: _Node, val: Any) -> str:
        if val is None:
            return "<no value>"
        if isinstance(val, _Struct):
            return _fmt_v(val, depth=1)  # an action prints what a pointer points to
        return _fmt_v(val)

    def pipeline(self, dot: Any, pipe: _Pipe) -> Any:
        val: Any = None
        first = True
        for cmd in pipe.cmds:
            val = self.command(dot, cmd, val, has_final=not first)
            first = False
        if pipe.decl:
            if pipe.assign:
                self.set_var(pipe, pipe.decl[0], val)
            else:
                self.vars.append((pipe.decl[0], val))
        return val

    def command(self, dot: Any, cmd: _Command, final: Any, *, has_final: bool) -> Any:
        first = cmd.args[0]
        if isinstance(first, _Function):
            return self.call(dot, first, cmd.args[1:], final, has_final=has_final)
        if isinstance(first, _Literal) and first.value is None:
            raise self.err(first, "nil is not a command")
        if len(cmd.args) > 1 or has_final:
            if isinstance(first, (_Field, _Variable, _Chain)):
                names = first.names
                raise self.err(
                    first,
                    f"{names[-1] if names else 'value'} has arguments but is not a function",
                )
            raise self.err(first, "can't give argument to non-function")
        return self.arg(dot, first)

    def arg(self, dot: Any, node: _Node) -> Any:
        if isinstance(node, _Dot):
            return dot
        if isinstance(node, _Literal):
            return node.value
        if isinstance(node, _Field):
            return self.fields(node, dot, node.names)
        if isinstance(node, _Variable):
            return self.fields(node, self.var(node, node.names[0]), node.names[1:])
        if isinstance(node, _Chain):
            return self.fields(node, self.arg(dot, node.node), node.names)
        if isinstance(node, _Pipe):
            return self.pipeline(dot, node)
        if isinstance(node, _Function):
            return self.call(dot, node, [], None, has_final=False)
        raise self.err(node, f"can't evaluate {type(node).__name__}")  # pragma: no cover

    def fields(self, node: _Node, val: Any, names: list[str]) -> Any:
        for name in names:
            val = self.field(node, val, name)
        return val

    def field(self, node: _Node, val: Any, name: str) -> Any:
        if isinstance(val, _Struct):
            if name in val.values:
                return val.values[name]
            if name == "ToTypeScriptType" and val.type is _TOOL_PROPERTY:
                return _to_typescript_type(val)
            raise self.err(node, f"can't evaluate field {name} in type {_type_name(val)}")
        if isinstance(val, (_JSONStringMap, _JSONStringList, _PropertyType)) and name == "String":
            return _fmt_v(val)
        if isinstance(val, dict):
            return val.get(name)
        if val is None:
            raise self.err(node, f"nil pointer evaluating interface {{}}.{name}")
        raise self.err(node, f"can't evaluate field {name} in type {_type_name(val)}")

    def call(
        self, dot: Any, fn: _Function, arg_nodes: list[_Node], final: Any, *, has_final: bool
    ) -> Any:
        name = fn.name
        if name in ("and", "or"):
            nodes = list(arg_nodes)
            if not nodes and not has_final:
                raise self.err(fn, f"wrong number of args for {name}: want at least 1 got 0")
            val: Any = None
            count = len(nodes) + (1 if has_final else 0)
            for i in range(count):
                val = self.arg(dot, nodes[i]) if i < len(nodes) else final
                if _truth(val) == (name == "or"):
                    return val
            return val
        args = [self.arg(dot, a) for a in arg_nodes]
        if has_final:
            args.append(final)
        func = _FUNC_TABLE[name]
        least, most = _ARITY[name]
        if not least <= len(args) <= most:
            raise self.err(fn, f"wrong number of args for {name}: got {len(args)}")
        try:
            return func(*args)
        except TemplateError as e:
            raise self.err(fn, f"error calling {name}: {e}") from None


def _eq(a: Any, *others: Any) -> bool:
    if not others:
        raise TemplateError("missing argument for comparison")
    for b in others:
        if a is None or b is None:
            if a is None and b is None:
                return True
            continue
        ka, kb = _basic_kind(a), _basic_kind(b)
        if ka != kb:
            raise TemplateError(
                f"incompatible types for comparison: {_type_name(a)} and {_type_name(b)}"
            )
        if ka == "other":
            if isinstance(a, (list, dict)) or isinstance(b, (list, dict)):
                raise TemplateError(f"non-comparable type {_fmt_v(a)}: {_type_name(a)}")
            if a is b or (
                isinstance(a, _Struct) and isinstance(b, _Struct) and a.values == b.values
            ):
                return True
            continue
        if a == b:
            return True
    return False


def _ne(a: Any, b: Any) -> bool:
    return not _eq(a, b)


def _ordered(a: Any, b: Any) -> tuple[Any, Any]:
    ka, kb = _basic_kind(a), _basic_kind(b)
    if ka in ("bool", "other") or kb in ("bool", "other"):
        bad = a if ka in ("bool", "other") else b
        raise TemplateError(f"invalid type for comparison: {_type_name(bad)}")
    if ka != kb:
        raise TemplateError(
            f"incompatible types for comparison: {_type_name(a)} and {_type_name(b)}"
        )
    return a, b


def _lt(a: Any, b: Any) -> bool:
    x, y = _ordered(a, b)
    return bool(x < y)


def _le(a: Any, b: Any) -> bool:
    x, y = _ordered(a, b)
    return bool(x <= y)


def _gt(a: Any, b: Any) -> bool:
    x, y = _ordered(a, b)
    return bool(x > y)


def _ge(a: Any, b: Any) -> bool:
    x, y = _ordered(a, b)
    return bool(x >= y)


def _not(a: Any) -> bool:
    return not _truth(a)


def _len(a: Any) -> int:
    if isinstance(a, str):
        return len(a.encode())
    if isinstance(a, (list, dict)):
        return len(a)
    raise TemplateError(f"len of type {_type_name(a)}")


def _int_arg(v: Any, what: str) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    raise TemplateError(f"cannot {what} with index of type {_type_name(v)}")


def _index(item: Any, *indexes: Any) -> Any:
    if item is None:
        raise TemplateError("index of untyped nil")
    for ix in indexes:
        if item is None:
            raise TemplateError("index of nil pointer")
        if isinstance(item, dict):
            if not isinstance(ix, str) and ix is not None:
                raise TemplateError(f"value has type {_type_name(ix)}; should be string")
            item = item.get(ix)
        elif isinstance(item, (list, str)):
            seq: list[Any] | bytes = item if isinstance(item, list) else item.encode()
            i = _int_arg(ix, "index slice/array")
            if not 0 <= i < len(seq):
                raise TemplateError(f"index out of range: {i}")
            item = seq[i]
        else:
            raise TemplateError(f"can't index item of type {_type_name(item)}")
    return item


def _slice(item: Any, *indexes: Any) -> Any:
    if len(indexes) > 3:
        raise TemplateError(f"too many slice indexes: {len(indexes)}")
    if not isinstance(item, (list, str)):
        raise TemplateError(f"can't slice item of type {_type_name(item)}")
    if isinstance(item, str) and len(indexes) == 3:
        raise TemplateError("cannot 3-index slice a string")
    seq: list[Any] | bytes = item if isinstance(item, list) else item.encode()
    idx = [_int_arg(i, "slice") for i in indexes]
    cap = len(seq)
    bounds = [0, len(seq), cap][: max(len(idx), 2)]
    bounds[: len(idx)] = idx
    for b in bounds:
        if not 0 <= b <= cap:
            raise TemplateError(f"index out of range: {b}")
    if len(bounds) >= 2 and bounds[0] > bounds[1]:
        raise TemplateError(f"invalid slice index: {bounds[0]} > {bounds[1]}")
    part = seq[bounds[0] : bounds[1]]
    if isinstance(part, bytes):
        return part.decode(errors="replace")
    return list(part)


def _sprint(*args: Any) -> str:
    out: list[str] = []
    for i, a in enumerate(args):
        if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(_fmt_v(a))
    return "".join(out)


def _sprintln(*args: Any) -> str:
    return " ".join(_fmt_v(a) for a in args) + "\n"


def _printf(fmt: Any, *args: Any) -> str:
    if not isinstance(fmt, str):
        raise TemplateError(f"printf format must be a string, not {_type_name(fmt)}")
    return _sprintf(fmt, args)


def _eval_args(args: Sequence[Any]) -> str:
    """The text that html, js and urlquery escape: their operands as an action prints them."""
    if len(args) == 1 and isinstance(args[0], str):
        return args[0]
    printable = [
        "<no value>" if a is None else _Struct(a.type, a.values) if isinstance(a, _Struct) else a
        for a in args
    ]
    return _sprint(*printable)


_JS_ESCAPES = {
    "\\": "\\\\",
    "'": "\\'",
    '"': '\\"',
    "<": "\\u003C",
    ">": "\\u003E",
    "&": "\\u0026",
    "=": "\\u003D",
    "\n": "\\u000A",
    "\r": "\\u000D",
    "\t": "\\u0009",
    "`": "\\u0060",
}


def _html(*args: Any) -> str:
    s = _eval_args(args)
    for a, b in (("&", "&amp;"), ("'", "&#39;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&#34;")):
        s = s.replace(a, b)
    return s.replace("\0", "\ufffd")


def _js(*args: Any) -> str:
    s = _eval_args(args)
    return "".join(_JS_ESCAPES.get(c, c if ord(c) >= 0x20 else f"\\u{ord(c):04X}") for c in s)


def _urlquery(*args: Any) -> str:
    return urllib.parse.quote_plus(_eval_args(args))


def _json_func(v: Any) -> str:
    try:
        return _go_json(v)
    except TemplateError:
        return ""


def _current_date(*_args: Any) -> str:
    return dt.date.today().isoformat()


def _yesterday_date(*_args: Any) -> str:
    return (dt.date.today() - dt.timedelta(days=1)).isoformat()


def _and(*args: Any) -> Any:
    return next((a for a in args if not _truth(a)), args[-1])


def _or(*args: Any) -> Any:
    return next((a for a in args if _truth(a)), args[-1])


_FUNC_TABLE: dict[str, Callable[..., Any]] = {
    "and": _and,  # the executor short-circuits and/or itself; these entries name them
    "or": _or,
    "eq": _eq,
    "ne": _ne,
    "lt": _lt,
    "le": _le,
    "gt": _gt,
    "ge": _ge,
    "not": _not,
    "len": _len,
    "index": _index,
    "slice": _slice,
    "print": _sprint,
    "println": _sprintln,
    "printf": _printf,
    "html": _html,
    "js": _js,
    "urlquery": _urlquery,
    "json": _json_func,
    "currentDate": _current_date,
    "yesterdayDate": _yesterday_date,
    "toTypeScriptType": _to_typescript_type,
}


def _arity(func: Callable[..., Any]) -> tuple[int | float, int | float]:
    params = inspect.signature(func).parameters.values()
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return sum(
            p.default is p.empty and p.kind is not p.VAR_POSITIONAL for p in params
        ), math.inf
    return sum(p.default is p.empty for p in params), len(params)


_ARITY = {name: _arity(func) for name, func in _FUNC_TABLE.items()}


# ---------------------------------------------------------------------------------------------
# Ollama's data model and execution rules (template/template.go).


def _identifiers(node: _Node) -> Iterator[str]:
    """The field and variable names a template mentions, as Ollama's Vars() collects them."""
    if isinstance(node, _List):
        for child in node.nodes:
            yield from _identifiers(child)
    elif isinstance(node, _Action):
        yield from _identifiers(node.pipe)
    elif isinstance(node, _Branch):
        yield from _identifiers(node.pipe)
        yield from _identifiers(node.body)
        if node.else_body is not None:
            yield from _identifiers(node.else_body)
    elif isinstance(node, _Pipe):
        for cmd in node.cmds:
            for arg in cmd.args:
                yield from _identifiers(arg)
    elif isinstance(node, (_Field, _Variable)):
        yield from node.names


def _cut_after_response(root: _List) -> _List:
    """A copy of the tree with everything after the first {{ .Response }} removed.

    This is how Ollama renders the last turn of a legacy (.Prompt/.Response) template: the
    text up to the response slot is the prompt the model continues.
    """
    cut = False

    def walk_list(lst: _List) -> _List | None:
        if cut:
            return None
        return _List(lst.pos, [n for n in (walk(c) for c in lst.nodes) if n is not None])

    def walk_pipe(pipe: _Pipe) -> _Pipe | None:
        if cut:
            return None
        cmds = []
        for cmd in pipe.cmds:
            args = [n for n in (walk(a) for a in cmd.args) if n is not None]
            if not args:
                return None
            cmds.append(_Command(cmd.pos, args))
        return _Pipe(pipe.pos, pipe.decl, pipe.assign, cmds)

    def walk(node: _Node) -> _Node | None:
        nonlocal cut
        if isinstance(node, _Field) and "Response" in node.names:
            cut = True
            return node
        if cut:
            return None
        if isinstance(node, _Branch):
            body = walk_list(node.body) or _List(node.pos)
            else_body = walk_list(node.else_body) if node.else_body is not None else None
            return _Branch(node.pos, node.kind, node.pipe, body, else_body)
        if isinstance(node, _Action):
            pipe = walk_pipe(node.pipe)
            return None if pipe is None else _Action(node.pos, pipe)
        return node

    return walk_list(root) or _List(root.pos)


def _go_number(v: Any) -> Any:
    """A JSON value as Go decodes it into `any`: numbers become float64."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, dict):
        return {str(k): _go_number(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_go_number(x) for x in v]
    return v


def _tool_property(p: Any) -> _Struct:
    if not isinstance(p, dict):
        p = {}
    raw_type = p.get("type")
    if isinstance(raw_type, str):
        types = _PropertyType([raw_type])
    elif isinstance(raw_type, list):
        types = _PropertyType(str(t) for t in raw_type)
    else:
        types = _PropertyType()
    nested = p.get("properties")
    return _Struct(
        _TOOL_PROPERTY,
        {
            "AnyOf": [_tool_property(x) for x in p.get("anyOf") or []],
            "Type": types,
            "Items": _go_number(p.get("items")),
            "Description": str(p.get("description") or ""),
            "Enum": _go_number(list(p.get("enum") or [])),
            "Properties": _OrderedMap({k: _tool_property(v) for k, v in nested.items()})
            if isinstance(nested, dict)
            else None,
        },
    )


def _tools_value(tools: list[dict[str, Any]] | None) -> _JSONStringList:
    if tools is None:
        return _NilJSONStringList()
    out = _JSONStringList()
    for tool in tools:
        fn = tool.get("function") or {}
        params = fn.get("parameters") or {}
        props = params.get("properties")
        out.append(
            _Struct(
                _TOOL,
                {
                    "Type": str(tool.get("type") or ""),
                    "Items": _go_number(tool.get("items")),
                    "Function": _Struct(
                        _TOOL_FUNCTION,
                        {
                            "Name": str(fn.get("name") or ""),
                            "Description": str(fn.get("description") or ""),
                            "Parameters": _Struct(
                                _TOOL_PARAMETERS,
                                {
                                    "Type": str(params.get("type") or ""),
                                    "Defs": _go_number(params.get("$defs")),
                                    "Items": _go_number(params.get("items")),
                                    "Required": [str(r) for r in params.get("required") or []],
                                    "Properties": _JSONStringMap(
                                        {k: _tool_property(v) for k, v in props.items()}
                                    )
                                    if isinstance(props, dict)
                                    else _NilJSONStringMap(),
                                },
                            ),
                        },
                    ),
                },
            )
        )
    return out


def _tool_call_value(call: dict[str, Any]) -> _Struct:
    fn = call.get("function") or {}
    args = fn.get("arguments")
    if isinstance(args, str):  # OpenAI sends the arguments as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            raise TemplateError(f"tool call arguments are not valid JSON: {e}") from None
    if args is not None and not isinstance(args, dict):
        raise TemplateError("tool call arguments must be a JSON object")
    index = fn.get("index", 0)
    return _Struct(
        _TOOL_CALL,
        {
            "ID": str(call.get("id") or ""),
            "Function": _Struct(
                _TOOL_CALL_FUNCTION,
                {
                    "Index": int(index) if isinstance(index, int) else 0,
                    "Name": str(fn.get("name") or ""),
                    "Arguments": _JSONStringMap(_go_number(args or {})),
                },
            ),
        },
    )


def _message_value(m: dict[str, Any]) -> _Struct:
    return _Struct(
        _MESSAGE,
        {
            "Role": m["role"],
            "Content": m["content"],
            "Thinking": str(m.get("thinking") or ""),
            "Images": list(m.get("images") or []) or _NilList(),
            "ToolCalls": [_tool_call_value(c) for c in m.get("tool_calls") or []] or _NilList(),
            "ToolName": str(m.get("tool_name") or ""),
            "ToolCallID": str(m.get("tool_call_id") or ""),
        },
        pointer=True,
    )


def _collate(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Merge consecutive messages of one role (except tool results); gather the system text."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for m in messages:
        if m["role"] == "system":
            system.append(m["content"])
        if out and out[-1]["role"] == m["role"] and m["role"] != "tool":
            out[-1] = {**out[-1], "content": out[-1]["content"] + "\n\n" + m["content"]}
        else:
            out.append(m)
    return "\n\n".join(system), out


def _normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise TemplateError(f"messages[{i}] must be an object with role and content")
        role = m.get("role")
        if not isinstance(role, str) or not role:
            raise TemplateError(f"messages[{i}].role must be a non-empty string")
        content = m.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise TemplateError(f"messages[{i}].content must be a string")
        out.append({**m, "role": role.lower(), "content": content})
    return out


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
