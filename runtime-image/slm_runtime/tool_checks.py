"""A request's tool definitions checked before anything runs: names, and parameters that are a
JSON Schema the runtime can compile (no remote references, bounded depth)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urldefrag, urljoin

from jsonschema import Draft202012Validator, SchemaError
from jsonschema.validators import validator_for
from referencing.jsonschema import DRAFT202012, specification_with

_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


# The most levels of schemas a tool's parameters nest: the metaschema check, the reference walk
# and the grammar converter recurse once or more per level.
MAX_SCHEMA_DEPTH = 32


def _at(path: str, where: Iterable[str | int]) -> str:
    """A path inside a tool's parameters, as the error messages write it."""
    for part in where:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _metaschema_problem(schema: dict[str, Any], path: str) -> str | None:
    """Why a JSON Schema does not validate against its metaschema (the one its ``$schema``
    names, else draft 2020-12), at which keyword, or None."""
    validator = Draft202012Validator
    # A `$schema` that is not a string is refused by draft 2020-12's own metaschema.
    if isinstance(schema.get("$schema", ""), str):
        validator = validator_for(schema, default=Draft202012Validator)
    try:
        # No format checks: they compile `pattern` with Python's re, which refuses valid
        # ECMA-262 patterns (`\p{L}`, `(?<name>...)`).
        validator.check_schema(schema, format_checker=None)
    except SchemaError as error:
        message, shown = error.message, repr(error.instance)
        # The message starts with the offending value, which may be a large object.
        if len(shown) > 60 and message.startswith(shown):
            message = shown[:57] + "..." + message[len(shown) :]
        return f"{_at(path, error.absolute_path)}: {message}"
    return None


def _remote_reference(schema: dict[str, Any], path: str) -> str | None:
    """Why a JSON Schema refers outside itself (a ``$ref`` the server would have to fetch),
    or None: a reference must be a fragment (``#/$defs/...``) or name a ``$id`` inside it."""
    spec = specification_with(str(schema.get("$schema", "")), default=DRAFT202012)
    ids: set[str] = set()
    refs: list[tuple[str, str, str]] = []

    def walk(node: Any, base: str, where: list[str | int], parent: Any) -> None:
        if not isinstance(node, dict):
            return
        if parent is not None:
            where = where + _key_of(parent, node)
        ident = spec.id_of(node)
        if ident:
            base = urljoin(base, ident)
            ids.add(urldefrag(base).url)
        for key in ("$ref", "$dynamicRef"):
            if isinstance(node.get(key), str):
                refs.append((node[key], base, _at(path, [*where, key])))
        for sub in spec.subresources_of(node):
            walk(sub, base, where, node)

    walk(schema, "", [], None)
    for ref, base, at in refs:
        if not ref.startswith("#") and urldefrag(urljoin(base, ref)).url not in ids:
            return f"{at}: {ref!r} is outside the schema; references are not fetched"
    return None


def _key_of(parent: dict[str, Any], child: Any) -> list[str | int]:
    """The keys that lead from a schema to one of its subschemas (``properties.city``)."""
    for key, value in parent.items():
        if value is child:
            return [key]
        members: Iterable[tuple[str | int, Any]] = ()
        if isinstance(value, dict):
            members = value.items()
        elif isinstance(value, list):
            members = enumerate(value)
        for member, item in members:
            if item is child:
                return [key, member]
    return []


def _schema_depth(schema: dict[str, Any], most: int) -> int:
    """How many levels of schemas ``schema`` nests, counting up to ``most + 1``; a keyword whose
    value has the wrong shape holds no subschemas here (the metaschema check refuses it)."""
    spec = specification_with(str(schema.get("$schema", "")), default=DRAFT202012)
    deepest = 0
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack and deepest <= most:
        node, level = stack.pop()
        if not isinstance(node, dict):
            continue
        deepest = max(deepest, level)
        subschemas: list[Any] = []
        # The subschemas found before a keyword of the wrong shape stay in the list.
        with contextlib.suppress(AttributeError, TypeError):
            subschemas.extend(spec.subresources_of(node))
        stack.extend((sub, level + 1) for sub in subschemas)
    return deepest


def _parameters_problem(parameters: Any, path: str) -> str | None:
    """Why a tool's ``parameters`` are refused: nested too deep, not a valid JSON Schema, not an
    object schema at the top, or referring to schemas that would have to be fetched; or None."""
    if not isinstance(parameters, dict):
        return f"{path} must be an object schema, such as {{'type': 'object', 'properties': ...}}"
    too_deep = f"{path} nest deeper than {MAX_SCHEMA_DEPTH} levels"
    if _schema_depth(parameters, MAX_SCHEMA_DEPTH) > MAX_SCHEMA_DEPTH:
        return too_deep
    try:
        problem = _metaschema_problem(parameters, path)
        if problem:
            return f"{problem} (the parameters are not a valid JSON Schema)"
        if parameters.get("type", "object") != "object":
            return f"{path}.type must be 'object': a function takes an object of named arguments"
        return _remote_reference(parameters, path)
    except RecursionError:
        return too_deep


def check_tools(tools: list[dict[str, Any]], where: str = "tools") -> list[str]:
    """The tools' names, after checking each is a function with a valid name and parameters
    that are a valid JSON Schema of an object; ``ValueError`` says what is wrong."""
    names: list[str] = []
    for i, tool in enumerate(tools):
        at = f"{where}[{i}]"
        kind = tool.get("type", "function")
        if kind != "function":
            raise ValueError(f"{at}.type: {kind!r} is not supported; only function tools are")
        function = tool.get("function")
        if not isinstance(function, dict):
            raise ValueError(f"{at}.function must be an object")
        name = function.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(
                f"{at}.function.name must be 1 to 64 letters, digits, underscores or dashes"
            )
        if name in names:
            raise ValueError(f"{at}.function.name: {name!r} is named twice")
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise ValueError(f"{at}.function.description must be a string")
        parameters = function.get("parameters")
        if parameters is not None:
            problem = _parameters_problem(parameters, f"{at}.function.parameters")
            if problem:
                raise ValueError(problem)
        names.append(name)
    return names
