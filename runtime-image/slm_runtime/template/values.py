"""Go values as templates see them (truth, order, kinds), and fmt and encoding/json as far as
templates reach them."""

from __future__ import annotations

import decimal
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


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
