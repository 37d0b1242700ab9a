"""Offline stand-in for the API server's CRD validation: defaulting, OpenAPI schema and CEL.

It applies the schema's defaults the way the API server does, validates the result with a JSON
Schema validator (draft 4 has OpenAPI 3.0's boolean ``exclusiveMinimum``), and evaluates every
``x-kubernetes-validations`` rule with cel-python. cel-python has the CEL standard library only, so
the Kubernetes libraries the rules use (``isQuantity``/``quantity`` and ``format.qualifiedName()``)
are written here after k8s.io/apimachinery's ParseQuantity and IsQualifiedName, and property names
are escaped as the API server escapes them (``ephemeral-storage`` -> ``ephemeral__dash__storage``).
The real API server replays the same table in tests/cluster/test_crd_replay.py; this proxy catches
mistakes without a cluster.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import MAX_EMAX, MIN_EMIN, ROUND_UP, Context, Decimal, localcontext
from functools import cache
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml
from celpy.adapter import json_to_cel

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "slm.dev_localmodels.yaml"

Schema = dict[str, Any]


@dataclass(frozen=True)
class CrdError:
    """One rejection: the field path as the API server writes it and the message."""

    path: str
    message: str

    def names(self, field: str) -> bool:
        """True when this error points at ``field`` (or inside it) or its message names it."""
        return (
            self.path == field
            or self.path.startswith((f"{field}.", f"{field}["))
            or (field in self.message)
        )


def load_crd() -> dict[str, Any]:
    """The committed CRD."""
    crd: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text(encoding="utf-8"))
    return crd


@cache
def open_api_schema() -> Schema:
    """The served version's openAPIV3Schema."""
    (version,) = load_crd()["spec"]["versions"]
    schema: Schema = version["schema"]["openAPIV3Schema"]
    return schema


def _child_path(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def apply_defaults(schema: Schema, value: Any) -> Any:
    """A copy of ``value`` with absent fields defaulted, outside in, as the API server does."""
    value = copy.deepcopy(value)
    _default_in_place(schema, value)
    return value


def _default_in_place(schema: Schema, value: Any) -> None:
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for name, child in properties.items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
        for name, item in value.items():
            child = properties.get(name)
            if child is None and isinstance(schema.get("additionalProperties"), dict):
                child = schema["additionalProperties"]
            if child is not None:
                _default_in_place(child, item)
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            _default_in_place(schema["items"], item)


def to_json_schema(schema: Schema, *, strict: bool) -> Schema:
    """A draft-4 JSON Schema that accepts what the OpenAPI schema accepts.

    ``strict`` rejects unknown fields, as the API server does under fieldValidation=Strict.
    """
    out: Schema = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {k: to_json_schema(v, strict=strict) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = to_json_schema(value, strict=strict)
        elif key in ("description", "default") or key.startswith("x-kubernetes-"):
            continue
        elif key != "nullable":
            out[key] = value
    if schema.get("nullable"):
        out["type"] = [schema["type"], "null"]
    if schema.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    if (
        strict
        and schema.get("type") == "object"
        and "properties" in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out.setdefault("additionalProperties", False)
    return out


def _api_path(parts: Iterator[str | int]) -> str:
    path = ""
    for part in parts:
        path = _child_path(path, part)
    return path


def schema_errors(obj: Any, *, strict: bool = True) -> list[CrdError]:
    """OpenAPI schema violations of an already defaulted object."""
    validator = jsonschema.Draft4Validator(to_json_schema(open_api_schema(), strict=strict))
    errors = []
    for error in validator.iter_errors(obj):
        at = _api_path(iter(error.absolute_path))
        if error.validator == "required":
            # The API server names the missing field: `spec.model: Required value`.
            names = [n for n in error.validator_value if n not in error.instance]
        elif error.validator == "additionalProperties":
            # ... and each unknown one: `unknown field "spec.model.revision"`.
            known = error.schema.get("properties", {})
            names = [n for n in error.instance if n not in known]
        else:
            errors.append(CrdError(at, error.message))
            continue
        errors += [CrdError(_child_path(at, n), error.message) for n in names]
    return errors + _duplicate_keys(obj, open_api_schema(), "")


def _duplicate_keys(value: Any, schema: Schema, path: str) -> list[CrdError]:
    """Items of an ``x-kubernetes-list-type: map`` list that repeat its keys (the API server's
    `Duplicate value`), at any depth."""
    errors: list[CrdError] = []
    if isinstance(value, dict):
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            sub = schema.get("properties", {}).get(key)
            if sub is None and isinstance(extra, dict):
                sub = extra
            if sub:
                errors += _duplicate_keys(item, sub, _child_path(path, key))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        keys = schema.get("x-kubernetes-list-map-keys") or []
        seen: set[tuple[Any, ...]] = set()
        for index, item in enumerate(value):
            at = _child_path(path, index)
            if schema.get("x-kubernetes-list-type") == "map" and isinstance(item, dict):
                key = tuple(item.get(k) for k in keys)
                if key in seen:
                    value = dict(zip(keys, key, strict=True))
                    errors.append(CrdError(at, f"Duplicate value: {value}"))
                seen.add(key)
            errors += _duplicate_keys(item, schema["items"], at)
    return errors


@dataclass(frozen=True)
class Rule:
    """An ``x-kubernetes-validations`` entry and the schema path it sits on."""

    path: str
    rule: str
    message: str
    field_path: str | None

    @property
    def reported_path(self) -> str:
        """Where the API server reports a failure: the node, or its fieldPath inside it."""
        return self.path + (self.field_path or "")


def cel_rules(schema: Schema | None = None, path: str = "") -> list[Rule]:
    """Every CEL rule in the schema with its path (``[*]`` for list items, ``{*}`` for maps)."""
    schema = open_api_schema() if schema is None else schema
    rules = [
        Rule(path, r["rule"], r["message"], r.get("fieldPath"))
        for r in schema.get("x-kubernetes-validations", [])
    ]
    for name, child in schema.get("properties", {}).items():
        rules += cel_rules(child, _child_path(path, name))
    if isinstance(schema.get("items"), dict):
        rules += cel_rules(schema["items"], f"{path}[*]")
    if isinstance(schema.get("additionalProperties"), dict):
        rules += cel_rules(schema["additionalProperties"], f"{path}{{*}}")
    return rules


# --- the Kubernetes CEL libraries (k8s.io/apiserver/pkg/cel/library) ---------------------------

_K8S_QUANTITY = re.compile(
    r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?"
)
_DECIMAL_SUFFIX = {
    "n": -9,
    "u": -6,
    "m": -3,
    "": 0,
    "k": 3,
    "M": 6,
    "G": 9,
    "T": 12,
    "P": 15,
    "E": 18,
}
_BINARY_SUFFIX = {s: 1024**i for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"), start=1)}
_INT64_MAX = Decimal(2**63 - 1)


def k8s_quantity(text: str) -> Decimal | None:
    """resource.ParseQuantity's value, or None where it fails: a binary-suffixed value above
    2^63-1 is capped there, and everything is rounded away from zero to nano units."""
    match = _K8S_QUANTITY.fullmatch(text)
    if match is None:
        return None
    number, suffix = match.group(1), match.group(2) or ""
    with localcontext(Context(prec=200, Emax=MAX_EMAX, Emin=MIN_EMIN)):
        if suffix in _BINARY_SUFFIX:
            value = min(abs(Decimal(number)) * _BINARY_SUFFIX[suffix], _INT64_MAX)
        elif suffix in _DECIMAL_SUFFIX:
            value = abs(Decimal(number)).scaleb(_DECIMAL_SUFFIX[suffix])
        elif abs(int(suffix[1:])) < 2**31:  # the exponent is parsed as an int32
            value = abs(Decimal(number)).scaleb(int(suffix[1:]))
        else:
            return None
        value = value.scaleb(9).to_integral_value(rounding=ROUND_UP).scaleb(-9)
        return -value if number.startswith("-") else value


@dataclass(frozen=True)
class _Quantity:
    value: Decimal


def _is_quantity(text: Any) -> celpy.celtypes.BoolType:
    return celpy.celtypes.BoolType(isinstance(text, str) and k8s_quantity(text) is not None)


def _quantity(text: Any) -> _Quantity | celpy.CELEvalError:
    value = k8s_quantity(text) if isinstance(text, str) else None
    if value is None:
        return celpy.CELEvalError(f"quantity: {text!r} is not a quantity")
    return _Quantity(value)


def _compare_to(q: _Quantity, other: _Quantity) -> celpy.celtypes.IntType:
    return celpy.celtypes.IntType((q.value > other.value) - (q.value < other.value))


_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME_PART = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


def qualified_name_errors(key: str) -> list[str]:
    """validation.IsQualifiedName: ``[prefix/]name``, prefix a DNS subdomain, name <= 63."""
    parts = key.split("/")
    if len(parts) > 2:
        return ["a qualified name must consist of an optional prefix and a name"]
    name, errors = parts[-1], []
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            errors.append("prefix part must be non-empty")
        elif len(prefix) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(prefix):
            errors.append("prefix part must be a DNS-1123 subdomain")
    if not name:
        errors.append("name part must be non-empty")
    elif len(name) > 63 or not _QUALIFIED_NAME_PART.fullmatch(name):
        errors.append("name part must be a qualified name of at most 63 characters")
    return errors


@dataclass(frozen=True)
class _Format:
    check: Callable[[str], list[str]]


@dataclass(frozen=True)
class _Optional:
    errors: list[str]


_FORMAT_LIBRARY = object()
"""What the identifier ``format`` stands for: ``format.NAME()`` is a call on it."""

# Only what a v1.36 API server compiles in CRD rules: it refuses quantity(...).sign(), for one,
# although the CEL documentation lists it, so a rule using it fails here too.
K8S_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "isQuantity": _is_quantity,
    "quantity": _quantity,
    "compareTo": _compare_to,
    "qualifiedName": lambda library: _Format(qualified_name_errors),
    "validate": lambda fmt, text: _Optional(fmt.check(str(text))),
    "hasValue": lambda optional: celpy.celtypes.BoolType(bool(optional.errors)),
}


_RESERVED = frozenset(
    [
        "true",
        "false",
        "null",
        "in",
        "as",
        "break",
        "const",
        "continue",
        "else",
        "for",
        "function",
        "if",
        "import",
        "let",
        "loop",
        "package",
        "namespace",
        "return",
        "var",
        "void",
        "while",
    ]
)


def escape_name(name: str) -> str:
    """A property name as CEL rules see it (k8s.io/apiserver/pkg/cel escaping)."""
    if name in _RESERVED:
        return f"__{name}__"
    escaped = name.replace("__", "__underscores__")
    for char, word in ((".", "dot"), ("-", "dash"), ("/", "slash")):
        escaped = escaped.replace(char, f"__{word}__")
    return escaped


def _escaped(schema: Schema, value: Any) -> Any:
    """``value`` with object property names (not map keys) escaped."""
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        out = {}
        for name, item in value.items():
            if name in properties:
                out[escape_name(name)] = _escaped(properties[name], item)
            else:
                out[name] = _escaped(extra, item) if isinstance(extra, dict) else item
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_escaped(schema["items"], item) for item in value]
    return value


@cache
def _program(rule: str) -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(rule), functions=K8S_FUNCTIONS)


def compile_rule(rule: str) -> None:
    """Raise when ``rule`` is not valid CEL."""
    _program(rule)


def cel_errors(obj: Any, schema: Schema | None = None, path: str = "") -> list[CrdError]:
    """CEL rule failures of an already defaulted object."""
    schema = open_api_schema() if schema is None else schema
    errors = []
    for entry in schema.get("x-kubernetes-validations", []):
        try:
            activation = {"self": json_to_cel(_escaped(schema, obj)), "format": _FORMAT_LIBRARY}
            result = _program(entry["rule"]).evaluate(activation)
        except celpy.CELEvalError as exc:
            # The API server rejects on evaluation errors too (e.g. "no such key").
            errors.append(CrdError(path, f"{exc.args[0]} evaluating rule: {entry['message']}"))
            continue
        if not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
            errors.append(CrdError(path + entry.get("fieldPath", ""), entry["message"]))
    if isinstance(obj, dict):
        for name, value in obj.items():
            child = schema.get("properties", {}).get(name)
            if child is None and isinstance(schema.get("additionalProperties"), dict):
                child = schema["additionalProperties"]
            if child is not None:
                errors += cel_errors(value, child, _child_path(path, name))
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(obj):
            errors += cel_errors(item, schema["items"], _child_path(path, index))
    return errors


def crd_errors(obj: Any, *, strict: bool = True) -> list[CrdError]:
    """Everything the API server would reject in ``obj``: schema first, then CEL."""
    defaulted = apply_defaults(open_api_schema(), obj)
    return schema_errors(defaulted, strict=strict) or cel_errors(defaulted)


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply a JSON merge patch (RFC 7386)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out
