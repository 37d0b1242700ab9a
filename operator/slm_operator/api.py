"""LocalModel v1alpha1: the user-facing API as pydantic models; the CRD is generated from them.

Every field carries a description (it becomes the CRD's documentation), a default and bounds.
Cross-field rules are written twice on purpose: as CEL (``x-kubernetes-validations``) so the API
server rejects them at the edge, and as pydantic validators so the operator gives the same answer
with a message that names the field. Pure: imports neither kopf nor a Kubernetes client.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict
from slm_runtime.config import DURATION_PATTERN, Api, Device, ModelFormat, ModelParameters
from slm_runtime.sources import infer_format, parse_source

# --- names ------------------------------------------------------------------------------------

GROUP: Final = "slm.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "LocalModel"
PLURAL: Final = "localmodels"
SINGULAR: Final = "localmodel"
SHORT_NAMES: Final = ("lm", "slm")
CATEGORIES: Final = ("ai",)
CRD_NAME: Final = f"{PLURAL}.{GROUP}"
FIELD_MANAGER: Final = "slm-operator"

LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
APP_NAME: Final = "slm-runtime"
MANAGER_NAME: Final = "slm-operator"
COMPONENT_SERVER: Final = "model-server"
COMPONENT_PULLER: Final = "model-puller"
"""Labels on every child; the Deployment selector is LABEL_NAME + LABEL_INSTANCE (immutable)."""

NAME_MAX_LENGTH: Final = 52
"""LocalModel names are DNS-1035 labels of at most this length, so every child name is valid."""
DNS1035_PATTERN: Final = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"

SHA256_PATTERN: Final = r"^[0-9a-f]{64}$"
SOURCE_SCHEMES: Final = ("hf", "ollama", "oci", "https", "http", "pvc", "file")
SOURCE_PATTERN: Final = r"^(hf|ollama|oci|https|http|pvc|file)://.+$"
_NUMBER = r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
QUANTITY_PATTERN: Final = rf"^(\+|-)?{_NUMBER}(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?[0-9]+))?$"
K8S_NAME_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

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


class _Spec(BaseModel):
    """Base of every API model: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
    )


# --- spec -------------------------------------------------------------------------------------


class CacheMode(StrEnum):
    """How the model gets onto the node before the server starts."""

    VOLUME = "Volume"
    PER_POD = "PerPod"
    IMAGE = "Image"


class AccessMode(StrEnum):
    """PersistentVolume access modes for the model cache."""

    READ_WRITE_ONCE = "ReadWriteOnce"
    READ_WRITE_MANY = "ReadWriteMany"
    READ_ONLY_MANY = "ReadOnlyMany"
    READ_WRITE_ONCE_POD = "ReadWriteOncePod"


class ReclaimPolicy(StrEnum):
    """What happens to the model PVC when the LocalModel is deleted."""

    DELETE = "Delete"
    RETAIN = "Retain"


class PullPolicy(StrEnum):
    """Container image pull policy."""

    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


# The structure of each source form, as CEL regexes the API server checks at admission. They are
# looser than the parser (slm_runtime.sources), never stricter: names, hosts, ports and
# percent-escapes are left to it, and the operator reports what it refuses as Failed.
# Character classes ([.], [?]) instead of backslashes keep the rules readable in YAML.
_NAME = "[A-Za-z0-9._-]+"
_LOWER_NAME = "[a-z0-9]([a-z0-9._-]*[a-z0-9])?"
_PATH_PART = "([^/.][^/]*|[.][^/.][^/]*|[.][.][^/]+)"
"""One path component that is not empty, '.' or '..'."""
_TAG = "[A-Za-z0-9_][A-Za-z0-9._-]*"
_DIGEST = "@sha256:[0-9a-f]{64}"
SOURCE_FORMS: Final = (
    (
        "hf://",
        f"^hf://{_NAME}/{_NAME}(@{_NAME})?(/{_PATH_PART})+$",
        "hf://ORG/REPO[@REVISION]/PATH, the path naming a file or folder in the repo",
    ),
    (
        "ollama://",
        f"^ollama://(([^/]+/)?{_LOWER_NAME}/)?{_LOWER_NAME}(:{_TAG})?$",
        "ollama://[[HOST[:PORT]/]NAMESPACE/]MODEL[:TAG]; a host needs a namespace after it",
    ),
    (
        "oci://",
        f"^oci://[^/@]+/([^/@]+/)*[^/:@]+(:{_TAG}({_DIGEST})?|{_DIGEST})$",
        "oci://HOST[:PORT]/REPO with a :TAG or an @sha256:HEX digest",
    ),
    (
        "http",
        "^https?://[^/@#]+/[^?#]*[^/?#]([?][^#]*)?$",
        "https://HOST[:PORT]/PATH naming a file, with no user:password@ (use "
        "credentialsSecret) and no #fragment",
    ),
    (
        "pvc://",
        f"^pvc://[a-z0-9]([a-z0-9.-]*[a-z0-9])?(/{_PATH_PART})+$",
        "pvc://CLAIM/PATH, the path relative to the claim's root",
    ),
    (
        "file://",
        f"^file://(/{_PATH_PART})+$",
        "file:///PATH, an absolute path with an empty host",
    ),
)
"""(prefix, regex, form): a source that starts with prefix must match regex."""
_INFERABLE = "^[^?]*[.]([gG][gG][uU][fF]|[oO][nN][nN][xX])([?].*)?$"


class ModelSpec(_Spec):
    """Which model to serve and how to verify it."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!self.source.startsWith('http://') || "
                    "(has(self.allowInsecure) && self.allowInsecure)",
                    "spec.model.source: http:// is only allowed with allowInsecure: true; "
                    "use https://",
                    ".source",
                ),
                *(
                    cel(
                        f"!self.source.startsWith('{prefix}') || self.source.matches('{regex}')",
                        f"spec.model.source must have the form {form}",
                        ".source",
                    )
                    for prefix, regex, form in SOURCE_FORMS
                ),
                cel(
                    "has(self.format) || self.source.startsWith('ollama://') || "
                    f"(!self.source.startsWith('oci://') && self.source.matches('{_INFERABLE}'))",
                    "spec.model.format is needed: the source does not end in .gguf or .onnx "
                    "(an oci:// source never shows it); set format to gguf or onnx",
                    ".format",
                ),
            ]
        }
    )

    source: str = Field(
        min_length=1,
        max_length=2048,
        pattern=SOURCE_PATTERN,
        description="Where the model comes from: hf://ORG/REPO[@REV]/PATH, "
        "ollama://[HOST/][NAMESPACE/]MODEL:TAG, oci://HOST[:PORT]/REPO(:TAG|@sha256:HEX), "
        "https://URL, pvc://CLAIM/PATH (already on a PVC: verify only) or file:///PATH "
        "(inside the runtime image: verify only).",
    )
    format: ModelFormat | None = Field(
        default=None,
        description="gguf (llama.cpp) or onnx (ONNX Runtime GenAI); inferred from the source "
        "when omitted.",
    )
    sha256: str | None = Field(
        default=None,
        pattern=SHA256_PATTERN,
        description="Integrity pin, 64 lowercase hex: the file's digest, or for a folder model "
        "the digest of its manifest (the sorted `sha256sum` lines of its files). A mismatch "
        "fails the pull.",
    )
    credentials_secret: ObjectName | None = Field(
        default=None,
        description="Secret in the same namespace with key `token` (hf, https bearer, oci "
        "bearer) or `username`/`password` (oci basic). Exposed to the pull container only.",
    )
    allow_insecure: bool = Field(
        default=False, description="Allow a plain http:// source (integrity still verified)."
    )

    @field_validator("source")
    @classmethod
    def _source_parses(cls, value: str) -> str:
        parse_source(value, allow_insecure=True)
        return value

    @model_validator(mode="after")
    def _insecure_needs_opt_in(self) -> ModelSpec:
        if self.source.startswith("http://") and not self.allow_insecure:
            raise ValueError("an http:// source needs allowInsecure: true; use https://")
        return self

    def resolved_format(self) -> ModelFormat:
        """The model format: the one given, else inferred from the source."""
        if self.format is not None:
            return self.format
        inferred = infer_format(parse_source(self.source, allow_insecure=True))
        if inferred is None:
            raise ValueError(
                f"cannot infer the model format from source {self.source!r}; "
                "set spec.model.format to gguf or onnx"
            )
        return inferred


class CacheSpec(_Spec):
    """How the model is pre-pulled so it is on the node before the server starts."""

    mode: CacheMode = Field(
        default=CacheMode.VOLUME,
        description="Volume: a PVC filled once by a pull Job and mounted read-only. PerPod: an "
        "init container pulls into an emptyDir. Image: an OCI image volume (source must be "
        "oci://...@sha256:...).",
    )
    size: PositiveQuantity = Field(
        default="5Gi", description="PVC size (Volume) or emptyDir size limit (PerPod)."
    )
    storage_class_name: str | None = Field(
        default=None,
        max_length=253,
        description="StorageClass of the PVC; unset uses the cluster default, empty string "
        "binds only to PVs without a class.",
    )
    access_mode: AccessMode = Field(
        default=AccessMode.READ_WRITE_ONCE,
        description="PVC access mode; use ReadWriteMany or ReadOnlyMany when replicas span nodes.",
    )
    reclaim_policy: ReclaimPolicy = Field(
        default=ReclaimPolicy.DELETE,
        description="Delete: the PVC goes with the LocalModel. Retain: the PVC is kept (no "
        "owner reference) and reused by a LocalModel with the same source and digest.",
    )


class HardwareSpec(_Spec):
    """Hardware preference and fallback, NPU -> GPU -> CPU."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.fallback) || !has(self.preferred) || "
                    "!self.fallback.exists(t, t == self.preferred)",
                    "spec.hardware.fallback must not repeat spec.hardware.preferred",
                    ".fallback",
                )
            ]
        }
    )

    preferred: Device = Field(default=Device.NPU, description="The tier to try first.")
    fallback: list[Device] = Field(
        default_factory=list,
        max_length=2,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Tiers tried in order when the preferred one cannot be placed; when omitted, "
        "the tiers below preferred in npu, gpu, cpu order. [] means no fallback.",
    )
    fallback_after: Duration = Field(
        default="120s",
        description="How long pods may stay unschedulable before stepping down a tier.",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_fallback(cls, data: Any) -> Any:
        # Not a schema default: a fixed [gpu, cpu] would repeat `preferred: gpu`.
        if isinstance(data, dict) and "fallback" not in data:
            try:
                preferred = Device(data.get("preferred", Device.NPU))
            except ValueError:
                return data  # the field validator names the bad tier
            order = list(Device)
            return {**data, "fallback": order[order.index(preferred) + 1 :]}
        return data

    @model_validator(mode="after")
    def _fallback_distinct(self) -> HardwareSpec:
        if self.preferred in self.fallback:
            raise ValueError(
                f"fallback must not repeat preferred ({self.preferred.value}); "
                f"remove it from spec.hardware.fallback"
            )
        if len(set(self.fallback)) != len(self.fallback):
            raise ValueError("fallback lists a tier twice; list each tier once")
        return self

    def tiers(self) -> list[Device]:
        """The tiers to try, in order."""
        return [self.preferred, *self.fallback]


class NetworkPolicySpec(_Spec):
    """Optional NetworkPolicy in front of the model server."""

    enabled: bool = Field(default=False, description="Create a NetworkPolicy for the pods.")
    allow_from: list[RawObject] = Field(
        default_factory=list,
        max_length=32,
        description="NetworkPolicyPeer list allowed to reach the API port; empty allows the "
        "namespace only. The metrics port stays reachable.",
    )


class FailureMode(StrEnum):
    """What a gateway does with a request when the endpoint picker does not answer."""

    FAIL_CLOSE = "FailClose"
    FAIL_OPEN = "FailOpen"


class EndpointPickerRef(_Spec):
    """The endpoint picker a gateway asks which pod of the pool takes each request."""

    name: str = Field(
        pattern=DNS1035_PATTERN,
        max_length=63,
        description="Service of the endpoint picker, in the LocalModel's namespace (deployed by "
        "you; the operator ships none).",
    )
    port: int = Field(default=9002, ge=1, le=65535, description="Its ext-proc (gRPC) port.")
    failure_mode: FailureMode = Field(
        default=FailureMode.FAIL_CLOSE,
        description="FailClose refuses a request the picker does not place; FailOpen sends it "
        "to any pod of the pool.",
    )


class InferencePoolSpec(_Spec):
    """An InferencePool (Gateway API Inference Extension) over the model's pods."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.enabled) || !self.enabled || has(self.endpointPickerRef)",
                    "spec.serving.inferencePool.enabled needs endpointPickerRef: name the "
                    "Service of the endpoint picker your gateway uses",
                    ".endpointPickerRef",
                )
            ]
        }
    )

    enabled: bool = Field(
        default=False,
        description="Create an InferencePool (inference.networking.k8s.io/v1) when its CRD exists.",
    )
    endpoint_picker_ref: EndpointPickerRef | None = Field(
        default=None, description="The pool's endpoint picker; required when enabled."
    )

    @model_validator(mode="after")
    def _enabled_needs_picker(self) -> InferencePoolSpec:
        if self.enabled and self.endpoint_picker_ref is None:
            raise ValueError(
                "inferencePool.enabled needs endpointPickerRef: name the Service of the "
                "endpoint picker your gateway uses"
            )
        return self


class ServingSpec(_Spec):
    """How the model is served."""

    replicas: int = Field(
        default=1, ge=0, le=1000, description="Pods; ignored while autoscaling is enabled."
    )
    port: int = Field(default=8080, ge=1024, le=65535, description="API port (non-root).")
    parallel: int = Field(default=4, ge=1, le=64, description="Concurrent sequences per replica.")
    apis: list[Api] = Field(
        default_factory=lambda: [Api.OLLAMA, Api.OPENAI],
        min_length=1,
        max_length=2,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="API families to serve.",
    )
    auth_secret: ObjectName | None = Field(
        default=None,
        description="Secret with key `token`; API requests without `Authorization: Bearer "
        "<token>` get 401. Health and metrics stay open.",
    )
    network_policy: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec)
    inference_pool: InferencePoolSpec = Field(default_factory=InferencePoolSpec)

    @field_validator("apis")
    @classmethod
    def _apis_distinct(cls, value: list[Api]) -> list[Api]:
        if len(set(value)) != len(value):
            raise ValueError("apis lists an API twice; list each once")
        return value


class ResourceList(_Spec):
    """cpu and memory quantities."""

    cpu: Quantity | None = Field(default=None, description="CPU cores, e.g. 500m or 4.")
    memory: Quantity | None = Field(default=None, description="Memory, e.g. 4Gi.")
    ephemeral_storage: Quantity | None = Field(
        default=None, alias="ephemeral-storage", description="Local scratch disk, e.g. 1Gi."
    )


def _request_within_limit(name: str) -> JsonDict:
    """CEL: requests.NAME <= limits.NAME where both are set (names escaped as Kubernetes does)."""
    field = name.replace("-", "__dash__")
    request, limit = f"self.requests.{field}", f"self.limits.{field}"
    path = f".requests.{name}" if field == name else f".requests['{name}']"
    return cel(
        f"!has(self.requests) || !has(self.limits) || !has({request}) || !has({limit}) || "
        f"!isQuantity(string({request})) || "
        f"!isQuantity(string({limit})) || "
        f"quantity(string({request})).compareTo(quantity(string({limit}))) <= 0",
        f"requests.{name} must be at most limits.{name}; raise the limit or lower the request",
        path,
    )


class ResourcesSpec(_Spec):
    """Container requests and limits; derived from the model when empty."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _request_within_limit(name) for name in ("cpu", "memory", "ephemeral-storage")
            ]
        }
    )

    requests: ResourceList = Field(
        default_factory=ResourceList,
        description="Requests of the model server container. Where neither a request nor a "
        "limit sets it, cpu is parameters.numThread cores (else 1) and memory is the model size "
        "+ KV cache (contextLength x parallel) + runtime overhead.",
    )
    limits: ResourceList = Field(
        default_factory=ResourceList,
        description="Limits of the model server container. A derived memory request is also "
        "the memory limit; cpu has no limit unless set, so generation can use idle cores.",
    )

    @model_validator(mode="after")
    def _requests_within_limits(self) -> ResourcesSpec:
        requests = self.requests.model_dump(by_alias=True, exclude_none=True)
        for name, limit in self.limits.model_dump(by_alias=True, exclude_none=True).items():
            request = requests.get(name)
            if request is not None and quantity_value(request) > quantity_value(limit):
                raise ValueError(
                    f"requests.{name} ({request}) is above limits.{name} ({limit}); "
                    "raise the limit or lower the request"
                )
        return self


class SchedulingSpec(_Spec):
    """Where pods may run, on top of what the hardware tier requires."""

    node_selector: Labels = Field(default_factory=dict, description="Extra node labels.")
    tolerations: list[RawObject] = Field(
        default_factory=list,
        max_length=64,
        description="Kubernetes Toleration list, added to the hardware tier's own tolerations.",
    )
    affinity: RawObject = Field(
        default_factory=dict,
        description="Kubernetes Affinity (nodeAffinity, podAffinity, podAntiAffinity) for the "
        "pods, as is.",
    )
    topology_spread_constraints: list[SpreadConstraint] = Field(
        default_factory=list,
        max_length=16,
        description="Kubernetes TopologySpreadConstraint list for the model server pods, as is.",
    )
    priority_class_name: str | None = Field(
        default=None, max_length=253, description="PriorityClass of the pods."
    )
    pod_labels: Labels = Field(default_factory=dict, description="Extra labels on the pods.")
    pod_annotations: Annotations = Field(
        default_factory=dict, description="Extra annotations on the pods."
    )


class MonitoringSpec(_Spec):
    """Prometheus scraping."""

    service_monitor: bool = Field(
        default=True,
        description="Create a ServiceMonitor when the monitoring.coreos.com CRD exists.",
    )
    interval: Duration = Field(default="30s", description="Scrape interval.")
    labels: Labels = Field(default_factory=dict, description="Extra labels on the ServiceMonitor.")


class AutoscalingSpec(_Spec):
    """HorizontalPodAutoscaler; when enabled it owns the replica count."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    # has(): the API server also checks the `{}` default, before its defaults.
                    "!has(self.minReplicas) || !has(self.maxReplicas) || "
                    "self.minReplicas <= self.maxReplicas",
                    "spec.autoscaling.minReplicas must be <= maxReplicas",
                    ".minReplicas",
                ),
                cel(
                    "!has(self.minReplicas) || self.minReplicas > 0 || "
                    "(has(self.enabled) && self.enabled)",
                    "spec.autoscaling.minReplicas 0 (scale to zero) needs "
                    "spec.autoscaling.enabled: true",
                    ".minReplicas",
                ),
            ]
        }
    )

    enabled: bool = Field(default=False, description="Create an HPA for the Deployment.")
    min_replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Fewest replicas; at most maxReplicas. 0 lets the model go to zero replicas "
        "after scaleToZeroAfter without a request through the gateway, which holds the next "
        "request while it scales the model back to 1 (the HPA keeps at least 1 while it runs).",
    )
    scale_to_zero_after: Duration = Field(
        default="15m",
        description="With minReplicas 0: how long a model may go without a request before the "
        "gateway scales it to zero.",
    )
    max_replicas: int = Field(default=4, ge=1, le=1000, description="Most replicas the HPA adds.")
    target_cpu_utilization: int | None = Field(
        default=80,
        ge=1,
        le=100,
        description="Average CPU utilisation (percent of requests) to keep; works out of the box. "
        "null drops the CPU metric.",
    )
    target_inflight_requests: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="Average in-flight requests per pod (metric slm_runtime_requests_in_flight); "
        "needs a custom-metrics adapter such as prometheus-adapter.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"minReplicas ({self.min_replicas}) must be <= maxReplicas ({self.max_replicas})"
            )
        if self.min_replicas == 0 and not self.enabled:
            raise ValueError(
                "spec.autoscaling.minReplicas 0 (scale to zero) needs spec.autoscaling.enabled: "
                "true"
            )
        return self

    @property
    def scales_to_zero(self) -> bool:
        """Whether the gateway may take the model to zero replicas."""
        return self.enabled and self.min_replicas == 0


class LocalObjectReference(_Spec):
    """A reference to an object in the same namespace."""

    name: ObjectName = Field(description="Name of the object.")


class RuntimeSpec(_Spec):
    """The runtime image; the accelerator catalog's per-tier image unless overridden."""

    image: str | None = Field(
        default=None,
        max_length=1024,
        description="Overrides the catalog's image for every tier. It must be one of the "
        "catalog's runtime images unless the operator is installed with "
        "runtime.allowCustomImages: true.",
    )
    image_pull_policy: PullPolicy = Field(
        default=PullPolicy.IF_NOT_PRESENT, description="Pull policy of the runtime image."
    )
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list,
        max_length=16,
        description="Secrets (type kubernetes.io/dockerconfigjson) for pulling the runtime image.",
    )


class LocalModelSpec(_Spec):
    """The desired state of a LocalModel."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.cache.mode != 'Image' || (self.model.source.startsWith('oci://') "
                    "&& self.model.source.contains('@sha256:'))",
                    "spec.cache.mode Image needs an oci:// source pinned by digest "
                    "(oci://HOST/REPO@sha256:HEX)",
                    ".cache.mode",
                )
            ]
        }
    )

    model: ModelSpec
    cache: CacheSpec = Field(default_factory=CacheSpec)
    hardware: HardwareSpec = Field(default_factory=HardwareSpec)
    parameters: ModelParameters = Field(
        default_factory=ModelParameters,
        description="Ollama Modelfile PARAMETERs; defaults for every request.",
    )
    system: str | None = Field(
        default=None, max_length=65536, description="Modelfile SYSTEM message."
    )
    template: str | None = Field(
        default=None,
        max_length=65536,
        description="Modelfile TEMPLATE in Ollama's Go-template form; the model's own chat "
        "template when omitted.",
    )
    serving: ServingSpec = Field(default_factory=ServingSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec)
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)

    @model_validator(mode="after")
    def _image_mode_needs_digest(self) -> LocalModelSpec:
        if self.cache.mode is CacheMode.IMAGE and not (
            self.model.source.startswith("oci://") and "@sha256:" in self.model.source
        ):
            raise ValueError(
                "cache.mode Image needs an oci:// source pinned by digest "
                "(oci://HOST/REPO@sha256:HEX)"
            )
        return self


# --- status -----------------------------------------------------------------------------------


class Phase(StrEnum):
    """The one-word summary shown by ``kubectl get lm``."""

    PENDING = "Pending"
    PULLING = "Pulling"
    DEPLOYING = "Deploying"
    READY = "Ready"
    DEGRADED = "Degraded"
    SCALED_TO_ZERO = "ScaledToZero"
    FAILED = "Failed"


class ConditionType(StrEnum):
    """The closed set of condition types."""

    READY = "Ready"
    MODEL_AVAILABLE = "ModelAvailable"
    PLACED = "Placed"
    AVAILABLE = "Available"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"


class Reason(StrEnum):
    """The closed set of condition reasons (CamelCase, as Kubernetes conventions ask)."""

    # Ready
    MODEL_SERVING = "ModelServing"
    NOT_READY = "NotReady"
    INVALID_SPEC = "InvalidSpec"
    SECRET_NOT_FOUND = "SecretNotFound"
    # ModelAvailable
    PULL_PENDING = "PullPending"
    PULLING = "Pulling"
    PULLED = "Pulled"
    PULL_FAILED = "PullFailed"
    DIGEST_MISMATCH = "DigestMismatch"
    ACCESS_MODE_CONFLICT = "AccessModeConflict"
    # Placed
    PLACED = "Placed"
    FELL_BACK = "FellBack"
    RUNTIME_FELL_BACK = "RuntimeFellBack"
    NO_CAPACITY = "NoCapacity"
    # Available
    MINIMUM_REPLICAS_AVAILABLE = "MinimumReplicasAvailable"
    MINIMUM_REPLICAS_UNAVAILABLE = "MinimumReplicasUnavailable"
    SCALED_TO_ZERO = "ScaledToZero"
    # Progressing
    RECONCILING = "Reconciling"
    ROLLOUT_IN_PROGRESS = "RolloutInProgress"
    ROLLOUT_COMPLETE = "RolloutComplete"
    WAITING_FOR_CAPACITY = "WaitingForCapacity"
    # Degraded
    AS_EXPECTED = "AsExpected"
    REPLICAS_UNAVAILABLE = "ReplicasUnavailable"
    CRASH_LOOPING = "CrashLooping"
    OUT_OF_MEMORY = "OutOfMemory"
    MODEL_CORRUPT = "ModelCorrupt"
    SERVICE_MONITOR_UNSUPPORTED = "ServiceMonitorUnsupported"
    INFERENCE_POOL_UNSUPPORTED = "InferencePoolUnsupported"


CONDITION_REASONS: Final[Mapping[ConditionType, frozenset[Reason]]] = {
    ConditionType.READY: frozenset(
        {
            Reason.MODEL_SERVING,
            Reason.NOT_READY,
            Reason.SCALED_TO_ZERO,
            Reason.INVALID_SPEC,
            Reason.SECRET_NOT_FOUND,
            Reason.PULL_FAILED,
            Reason.DIGEST_MISMATCH,
        }
    ),
    ConditionType.MODEL_AVAILABLE: frozenset(
        {
            Reason.PULL_PENDING,
            Reason.PULLING,
            Reason.PULLED,
            Reason.PULL_FAILED,
            Reason.DIGEST_MISMATCH,
            Reason.ACCESS_MODE_CONFLICT,
            Reason.MODEL_CORRUPT,
            Reason.SECRET_NOT_FOUND,
        }
    ),
    ConditionType.PLACED: frozenset(
        {Reason.PLACED, Reason.FELL_BACK, Reason.NO_CAPACITY, Reason.RUNTIME_FELL_BACK}
    ),
    ConditionType.AVAILABLE: frozenset(
        {
            Reason.MINIMUM_REPLICAS_AVAILABLE,
            Reason.MINIMUM_REPLICAS_UNAVAILABLE,
            Reason.SCALED_TO_ZERO,
        }
    ),
    ConditionType.PROGRESSING: frozenset(
        {
            Reason.RECONCILING,
            Reason.PULLING,
            Reason.ROLLOUT_IN_PROGRESS,
            Reason.ROLLOUT_COMPLETE,
            Reason.WAITING_FOR_CAPACITY,
            Reason.INVALID_SPEC,
        }
    ),
    ConditionType.DEGRADED: frozenset(
        {
            Reason.AS_EXPECTED,
            Reason.REPLICAS_UNAVAILABLE,
            Reason.CRASH_LOOPING,
            Reason.OUT_OF_MEMORY,
            Reason.MODEL_CORRUPT,
            Reason.SERVICE_MONITOR_UNSUPPORTED,
            Reason.INFERENCE_POOL_UNSUPPORTED,
            Reason.INVALID_SPEC,
            Reason.SECRET_NOT_FOUND,
            Reason.PULL_FAILED,
            Reason.DIGEST_MISMATCH,
            Reason.ACCESS_MODE_CONFLICT,
        }
    ),
}
"""Which reasons each condition type may carry; status.py never writes any other pair."""


class Condition(_Spec):
    """A metav1.Condition."""

    type: ConditionType = Field(description="Which aspect the condition reports.")
    status: Literal["True", "False", "Unknown"] = Field(description="Whether it holds.")
    reason: Reason = Field(
        description="Why, in one CamelCase word from the closed set (see the Conditions table)."
    )
    message: str = Field(
        default="", max_length=32768, description="What is wrong and what to change, for people."
    )
    last_transition_time: str = Field(description="RFC 3339 time the status last changed.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation of the spec this was computed from."
    )

    @model_validator(mode="after")
    def _reason_belongs(self) -> Condition:
        if self.reason not in CONDITION_REASONS[self.type]:
            raise ValueError(f"reason {self.reason.value} is not defined for {self.type.value}")
        return self


class ModelStatus(_Spec):
    """What is being served."""

    digest: str | None = Field(default=None, description="sha256:<hex> of what is served.")
    size_bytes: int | None = Field(
        default=None, ge=0, description="Size of the model file (or folder) in bytes."
    )
    progress: str | None = Field(default=None, description="Pull progress, e.g. 37%.")
    source: str | None = Field(
        default=None, description="The spec.model.source this status describes."
    )


class LocalModelStatus(_Spec):
    """The observed state of a LocalModel, written by the operator only."""

    phase: Phase = Field(
        default=Phase.PENDING,
        description="One-word summary: Pending, Pulling, Deploying, Ready, Degraded, "
        "ScaledToZero or Failed.",
    )
    backend: Device | None = Field(
        default=None,
        description="The device the runtime serves on, as its ready pods report it (the placed "
        "tier until one has).",
    )
    placed_tier: Device | None = Field(
        default=None, description="The hardware tier the operator placed the pods on."
    )
    fallback_reason: str | None = Field(
        default=None, description="Why the preferred tier(s) were skipped."
    )
    model: ModelStatus = Field(default_factory=ModelStatus)
    replicas: int = Field(default=0, ge=0, description="Pods of the Deployment (scale).")
    ready_replicas: int = Field(default=0, ge=0, description="Pods answering requests.")
    selector: str | None = Field(default=None, description="Pod label selector (scale).")
    endpoint: str | None = Field(default=None, description="In-cluster URL of the API.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation this status was computed from."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        description="One condition per type: Ready, ModelAvailable, Placed, Available, "
        "Progressing, Degraded.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )


# --- the whole object -------------------------------------------------------------------------


class ObjectMeta(BaseModel):
    """The parts of metadata the operator reads; everything else is kept as is."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = Field(pattern=DNS1035_PATTERN, max_length=NAME_MAX_LENGTH)
    namespace: str = "default"
    uid: str = ""
    generation: int = 0
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class LocalModel(BaseModel):
    """A LocalModel as read from the API server."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    api_version: Literal["slm.dev/v1alpha1"] = Field(default="slm.dev/v1alpha1", alias="apiVersion")
    kind: Literal["LocalModel"] = KIND
    metadata: ObjectMeta
    spec: LocalModelSpec
    status: LocalModelStatus = Field(default_factory=LocalModelStatus)


NAME_RULE: Final = cel(
    f"self.metadata.name.size() <= {NAME_MAX_LENGTH} && "
    f"self.metadata.name.matches('{DNS1035_PATTERN}')",
    f"metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting with "
    f"a letter) of at most {NAME_MAX_LENGTH} characters",
)
"""The CEL rule on the object root that keeps every child name valid."""


class InvalidSpecError(ValueError):
    """A LocalModel the operator cannot serve; the message names the field and what to change."""


def format_validation_error(error: ValidationError, prefix: str = "") -> str:
    """One line per problem: ``spec.model.sha256: String should match pattern ...``."""
    lines = []
    for item in error.errors(include_url=False):
        loc = ".".join(str(part) for part in item["loc"] if part != "__root__")
        path = ".".join(p for p in (prefix, loc) if p)
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {message}" if path else message)
    return "; ".join(lines)


def parse_localmodel(body: Mapping[str, Any]) -> LocalModel:
    """Validate a LocalModel body; raise InvalidSpecError with field-naming messages."""
    try:
        model = LocalModel.model_validate(dict(body))
        model.spec.model.resolved_format()
    except ValidationError as exc:
        raise InvalidSpecError(format_validation_error(exc)) from exc
    except ValueError as exc:
        raise InvalidSpecError(f"spec.model.format: {exc}") from exc
    return model
