"""Field types the LocalModel API reuses: quantities, label and annotation maps, CEL rules, and
the base of every API model.

Pure: imports neither kopf nor a Kubernetes client.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    StringConstraints,
    WithJsonSchema,
)
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict
from slm_runtime.config import DURATION_PATTERN

from slm_operator.names import K8S_NAME_PATTERN, QUANTITY_PATTERN

# --- reusable field types ---------------------------------------------------------------------


def cel(rule: str, message: str, field_path: str | None = None) -> JsonDict:
    """One ``x-kubernetes-validations`` entry."""
    entry: JsonDict = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def _to_str(value: Any) -> Any:
    """Accept YAML numbers for quantities (``cpu: 2``) the way Kubernetes does."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return str(value)
    return value


_QUANTITY_SUFFIXES: Final = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    **{s: Decimal(1024**i) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"), start=1)},
}
QUANTITY_MAX: Final = Decimal(2**63 - 1)
"""Kubernetes keeps quantities in 64 bits; larger ones cannot be requested."""


def quantity_value(text: str) -> Decimal:
    """The number a quantity stands for: ``500m`` -> 0.5, ``1Ki`` -> 1024, ``2e3`` -> 2000."""
    match = re.fullmatch(QUANTITY_PATTERN, text)
    if match is None:
        raise ValueError(f"{text!r} is not a Kubernetes quantity such as 500m, 2Gi or 4")
    number = text.rstrip("KMGTPEinumk")
    suffix = text[len(number) :]
    try:
        if suffix:
            value = Decimal(number) * _QUANTITY_SUFFIXES[suffix]
        else:
            mantissa, _, exponent = number.replace("E", "e").partition("e")
            value = Decimal(mantissa) * Decimal(10) ** Decimal(exponent or 0)
    except (InvalidOperation, ArithmeticError, KeyError) as exc:
        raise ValueError(f"{text!r} is out of range for a Kubernetes quantity") from exc
    return value


def _check_quantity(text: str) -> str:
    value = quantity_value(text)
    if value < 0:
        raise ValueError(f"{text!r} is negative; a quantity must be 0 or more")
    if value > QUANTITY_MAX:
        raise ValueError(f"{text!r} is too large for a Kubernetes quantity")
    return text


def _check_positive_quantity(text: str) -> str:
    if quantity_value(text) <= 0:
        raise ValueError(f"{text!r} must be more than 0, e.g. 2Gi")
    return text


# The API server's own quantity library (Kubernetes 1.29+) checks what the pattern cannot:
# `string(self)` because an int-or-string field is an int when written as a YAML number.
_QUANTITY_TEXT: Final = "string(self)"
QUANTITY_RULES: Final = (
    cel(f"isQuantity({_QUANTITY_TEXT})", "must parse as a Kubernetes quantity"),
    cel(
        f"!isQuantity({_QUANTITY_TEXT}) || "
        f"quantity({_QUANTITY_TEXT}).compareTo(quantity('0')) >= 0",
        "must be 0 or more",
    ),
    cel(
        f"!isQuantity({_QUANTITY_TEXT}) || "
        f"quantity({_QUANTITY_TEXT}).compareTo(quantity('{QUANTITY_MAX}')) <= 0",
        f"must be at most {QUANTITY_MAX} (Kubernetes keeps quantities in 64 bits)",
    ),
)
POSITIVE_QUANTITY_RULE: Final = cel(
    f"!isQuantity({_QUANTITY_TEXT}) || quantity({_QUANTITY_TEXT}).compareTo(quantity('0')) > 0",
    "must be more than 0, e.g. 2Gi",
)


def _quantity_schema(*rules: JsonDict) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "maxLength": 64,
            "x-kubernetes-int-or-string": True,
            "x-kubernetes-validations": list(rules),
        }
    )


Quantity = Annotated[
    str,
    BeforeValidator(_to_str),
    StringConstraints(pattern=QUANTITY_PATTERN, max_length=64),
    AfterValidator(_check_quantity),
    _quantity_schema(*QUANTITY_RULES),
]
"""A Kubernetes resource quantity (``500m``, ``2Gi``, ``4``): 0 or more, within 64 bits."""
PositiveQuantity = Annotated[
    str,
    BeforeValidator(_to_str),
    StringConstraints(pattern=QUANTITY_PATTERN, max_length=64),
    AfterValidator(_check_quantity),
    AfterValidator(_check_positive_quantity),
    _quantity_schema(*QUANTITY_RULES, POSITIVE_QUANTITY_RULE),
]
"""A quantity that must be more than 0 (a volume size)."""

Duration = Annotated[str, StringConstraints(pattern=DURATION_PATTERN, max_length=32)]
"""A Go-style duration such as ``90s``, ``2m`` or ``1h30m``."""

ObjectName = Annotated[str, StringConstraints(pattern=K8S_NAME_PATTERN, max_length=253)]

_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_SUBDOMAIN = re.compile(K8S_NAME_PATTERN)


def _check_key(key: str) -> None:
    prefix, slash, name = key.rpartition("/")
    if slash and not (len(prefix) <= 253 and _SUBDOMAIN.fullmatch(prefix)):
        raise ValueError(f"key {key!r}: the prefix before '/' must be a DNS subdomain")
    if not (len(name) <= 63 and _QUALIFIED_NAME.fullmatch(name)):
        raise ValueError(
            f"key {key!r}: the name must be 1-63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    """The API server's label syntax, so a bad label fails the LocalModel, not its children."""
    _check_size(labels)
    for key, value in labels.items():
        _check_key(key)
        if not (len(value) <= 63 and _LABEL_VALUE.fullmatch(value)):
            raise ValueError(
                f"value {value!r} of {key!r}: at most 63 letters, digits, '-', '_' or '.', "
                "starting and ending with a letter or digit"
            )
    return labels


def _check_annotations(annotations: dict[str, str]) -> dict[str, str]:
    _check_size(annotations)
    for key in annotations:
        _check_key(key)
    return annotations


def _check_size(entries: dict[str, str]) -> None:
    if len(entries) > MAP_MAX_ENTRIES:
        raise ValueError(f"{len(entries)} entries; at most {MAP_MAX_ENTRIES}")


MAP_MAX_ENTRIES: Final = 64
"""Most labels, annotations or node selector entries; bounds the cost of the CEL key rule."""
LABEL_VALUE_PATTERN: Final = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
KEYS_RULE: Final = cel(
    "self.all(k, !format.qualifiedName().validate(k).hasValue())",
    "every key must be a qualified name: an optional DNS subdomain prefix and '/', then 1-63 "
    "letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
)
"""Label and annotation keys, checked by the API server's format library (Kubernetes 1.32+)."""

Labels = Annotated[
    dict[str, str],
    AfterValidator(_check_labels),
    WithJsonSchema(
        {
            "type": "object",
            "additionalProperties": {
                "type": "string",
                "maxLength": 63,
                "pattern": LABEL_VALUE_PATTERN,
            },
            "maxProperties": MAP_MAX_ENTRIES,
            "x-kubernetes-validations": [KEYS_RULE],
        }
    ),
]
"""Kubernetes labels (also node selectors): qualified-name keys, values of at most 63 chars."""
Annotations = Annotated[
    dict[str, str],
    AfterValidator(_check_annotations),
    WithJsonSchema(
        {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "maxProperties": MAP_MAX_ENTRIES,
            "x-kubernetes-validations": [KEYS_RULE],
        }
    ),
]

# Raw Kubernetes structures passed through to the pod (tolerations, affinity, ...). They are
# validated by the API server when the Deployment is applied, so the CRD keeps their fields.
RawObject = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]

_SPREAD_REQUIRED: Final = ("maxSkew", "topologyKey", "whenUnsatisfiable")
_WHEN_UNSATISFIABLE: Final = ("DoNotSchedule", "ScheduleAnyway")


def _check_spread_constraint(value: dict[str, Any]) -> dict[str, Any]:
    """The fields Kubernetes requires of a TopologySpreadConstraint (the rest passes as is)."""
    missing = [key for key in _SPREAD_REQUIRED if key not in value]
    if missing:
        raise ValueError(f"a topology spread constraint needs {', '.join(missing)}")
    skew = value["maxSkew"]
    if not isinstance(skew, int) or isinstance(skew, bool) or not 1 <= skew <= 2**31 - 1:
        raise ValueError(f"maxSkew must be a whole number of at least 1, not {skew!r}")
    if not isinstance(value["topologyKey"], str) or not value["topologyKey"]:
        raise ValueError("topologyKey must name a node label, such as kubernetes.io/hostname")
    if value["whenUnsatisfiable"] not in _WHEN_UNSATISFIABLE:
        raise ValueError(f"whenUnsatisfiable must be one of {', '.join(_WHEN_UNSATISFIABLE)}")
    return value


SpreadConstraint = Annotated[
    dict[str, Any],
    AfterValidator(_check_spread_constraint),
    WithJsonSchema(
        {
            "type": "object",
            "required": list(_SPREAD_REQUIRED),
            "properties": {
                "maxSkew": {
                    "type": "integer",
                    "format": "int32",
                    "minimum": 1,
                    "description": "Most the pod counts of two topology domains may differ by.",
                },
                "topologyKey": {
                    "type": "string",
                    "minLength": 1,
                    "description": "Node label whose values are the domains, e.g. "
                    "topology.kubernetes.io/zone.",
                },
                "whenUnsatisfiable": {
                    "type": "string",
                    "enum": list(_WHEN_UNSATISFIABLE),
                    "description": "DoNotSchedule holds a pod back; ScheduleAnyway only "
                    "prefers the spread.",
                },
            },
            "x-kubernetes-preserve-unknown-fields": True,
        }
    ),
]
"""A Kubernetes TopologySpreadConstraint: its required fields checked, the others as is."""


class ApiModel(BaseModel):
    """Base of every API model: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
    )
