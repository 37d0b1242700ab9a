"""The functions a template may call: Go's builtins and Ollama's additions."""

from __future__ import annotations

import datetime as dt
import inspect
import math
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

from slm_runtime.template.values import (
    TemplateError,
    _basic_kind,
    _fmt_v,
    _go_json,
    _sprintf,
    _Struct,
    _to_typescript_type,
    _truth,
    _type_name,
)


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
