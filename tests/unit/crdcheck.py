"""Offline stand-in for the API server's CRD validation: defaulting, OpenAPI schema and CEL.

It applies the schema's defaults the way the API server does, validates the result with a JSON
Schema validator (draft 4 has OpenAPI 3.0's boolean ``exclusiveMinimum``), and evaluates every
``x-kubernetes-validations`` rule with cel-python. The real API server replays the same table in
tests/cluster/test_crd_replay.py; this proxy catches mistakes without a cluster.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
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


@cache
def _program(rule: str) -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def compile_rule(rule: str) -> None:
    """Raise when ``rule`` is not valid CEL."""
    _program(rule)


def cel_errors(obj: Any, schema: Schema | None = None, path: str = "") -> list[CrdError]:
    """CEL rule failures of an already defaulted object."""
    schema = open_api_schema() if schema is None else schema
    errors = []
    for entry in schema.get("x-kubernetes-validations", []):
        try:
            result = _program(entry["rule"]).evaluate({"self": json_to_cel(obj)})
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
