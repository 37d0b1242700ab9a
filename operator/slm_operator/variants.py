"""``spec.model``: the model to serve, as one source or as a variant per hardware tier.

A LocalModel names its model in one of three ways:

- ``source`` (with ``format``, ``sha256``): one file or folder for every tier, the one-variant
  case; a tier whose runtime cannot serve its format is skipped, as before variants existed;
- ``variants``: a build per tier, each with its own source, format, pin and parameter
  overrides (an OpenVINO ONNX export for the NPU, a GGUF for the GPU and the CPU);
- ``alias``: a name in the operator's model catalog (``aliases.py``), whose variants are used
  unless ``variants`` is given too.

Placement picks the tier first (``place.py``), then the variant that serves it
(``ModelSpec.variant_for``); ``served`` turns the spec into the one-source spec of that variant,
which the render and the status use.

Pure: imports neither kopf nor a Kubernetes client.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator
from pydantic.config import JsonValue
from slm_runtime.config import Device, ModelFormat, ModelParameters
from slm_runtime.sources import ADMISSION_FORMS, SOURCE_PATTERN, infer_format, parse_source

from slm_operator.fields import ApiModel, ObjectName, cel
from slm_operator.names import SHA256_PATTERN

_INFERABLE: Final = "^[^?]*[.]([gG][gG][uU][fF]|[oO][nN][nN][xX])([?].*)?$"
_SUFFIX: Final = {
    ModelFormat.GGUF: "^[^?]*[.][gG][gG][uU][fF]([?].*)?$",
    ModelFormat.ONNX: "^[^?]*[.][oO][nN][nN][xX]([?].*)?$",
}
VARIANT_NAME_PATTERN: Final = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
ALIAS_PATTERN: Final = r"^[a-z0-9]([-a-z0-9._]*[a-z0-9])?$"
IMPLICIT_VARIANT: Final = "source"
"""The name of the one variant a single-``source`` model has (status names no variant)."""


def _source_rules(path: str, *, optional: bool) -> list[JsonValue]:
    """The CEL rules on a source and its format, for ``spec.model`` or a variant (``path``);
    a variant's format must also be the one its source shows (``.gguf``, ``.onnx``, ollama)."""
    guard = "!has(self.source) || " if optional else ""
    rules: list[JsonValue] = [
        cel(
            f"{guard}!self.source.startsWith('http://') || "
            "(has(self.allowInsecure) && self.allowInsecure)",
            f"{path}.source: http:// is only allowed with allowInsecure: true; use https://",
            ".source",
        ),
        *(
            cel(
                f"{guard}!self.source.startsWith('{prefix}') || self.source.matches('{regex}')",
                f"{path}.source must have the form {form}",
                ".source",
            )
            for prefix, regex, form in ADMISSION_FORMS
        ),
        cel(
            f"{guard}has(self.format) || self.source.startsWith('ollama://') || "
            f"(!self.source.startsWith('oci://') && self.source.matches('{_INFERABLE}'))",
            f"{path}.format is needed: the source does not end in .gguf or .onnx "
            "(an oci:// source never shows it); set format to gguf or onnx",
            ".format",
        ),
    ]
    for fmt, suffix in () if optional else _SUFFIX.items():
        other = next(f for f in ModelFormat if f is not fmt)
        implied = (
            f"self.source.matches('{suffix}')"
            if fmt is ModelFormat.ONNX
            else f"(self.source.matches('{suffix}') || self.source.startsWith('ollama://'))"
        )
        shows = "ends in .onnx" if fmt is ModelFormat.ONNX else "ends in .gguf or is ollama://"
        rules.append(
            cel(
                f"{guard}!has(self.format) || self.format != '{other.value}' || !{implied}",
                f"{path}.format: the source {shows}, so it is {fmt.value}, not {other.value}; "
                f"set format to {fmt.value} or name a {other.value} source",
                ".format",
            )
        )
    return rules


class _Source(ApiModel):
    """Where one build of the model comes from, and how it is verified."""

    format: ModelFormat | None = Field(
        default=None,
        description="gguf (llama.cpp) or onnx (ONNX Runtime GenAI); inferred from the source "
        "when omitted.",
    )
    sha256: str | None = Field(
        default=None,
        max_length=64,
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

    def _check_source(self, source: str | None, *, same_format: bool = False) -> None:
        if source is None:
            return
        if source.startswith("http://") and not self.allow_insecure:
            raise ValueError("an http:// source needs allowInsecure: true; use https://")
        if not same_format:
            return
        implied = infer_format(parse_source(source, allow_insecure=True))
        if self.format is not None and implied is not None and implied is not self.format:
            raise ValueError(
                f"format: the source is {implied.value}, not {self.format.value}; set format to "
                f"{implied.value} or name a {self.format.value} source"
            )


_SOURCE_DESCRIPTION: Final = (
    "Where the model comes from: hf://ORG/REPO[@REV]/PATH, "
    "ollama://[HOST/][NAMESPACE/]MODEL:TAG, oci://HOST[:PORT]/REPO(:TAG|@sha256:HEX), "
    "https://URL, pvc://CLAIM/PATH (already on a PVC: verify only) or file:///PATH "
    "(inside the runtime image: verify only)."
)


def _format_of(source: str, given: ModelFormat | None, field: str) -> ModelFormat:
    """The format given, else the one the source shows; ``field`` names where to set it."""
    if given is not None:
        return given
    inferred = infer_format(parse_source(source, allow_insecure=True))
    if inferred is None:
        raise ValueError(
            f"cannot infer the model format from source {source!r}; set {field} to gguf or onnx"
        )
    return inferred


def pinned_oci(source: str) -> bool:
    """Whether a source is an OCI image pinned by digest (what cache.mode Image mounts)."""
    return source.startswith("oci://") and "@sha256:" in source


def _checked_source(value: str | None) -> str | None:
    if value is not None:
        parse_source(value, allow_insecure=True)
    return value


class ModelVariant(_Source):
    """One build of the model and the tiers it serves."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": _source_rules("spec.model.variants[]", optional=False)
        }
    )

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=VARIANT_NAME_PATTERN,
        description="The variant's name, shown in status.model.variant, e.g. npu-onnx.",
    )
    tiers: list[Device] = Field(
        min_length=1,
        max_length=len(Device),
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description=f"The hardware tiers ({', '.join(Device)}) this variant serves.",
    )
    source: str = Field(
        min_length=1, max_length=2048, pattern=SOURCE_PATTERN, description=_SOURCE_DESCRIPTION
    )
    parameters: ModelParameters = Field(
        default_factory=ModelParameters,
        description="Parameters that replace spec.parameters' while this variant runs, e.g. a "
        "smaller contextLength on the NPU.",
    )

    _source_parses = field_validator("source")(classmethod(lambda cls, v: _checked_source(v)))

    @field_validator("tiers")
    @classmethod
    def _tiers_distinct(cls, value: list[Device]) -> list[Device]:
        if len(set(value)) != len(value):
            raise ValueError("tiers lists a tier twice; list each tier once")
        return value

    @model_validator(mode="after")
    def _source_and_format(self) -> ModelVariant:
        self._check_source(self.source, same_format=True)
        _format_of(self.source, self.format, "format")
        return self

    def resolved_format(self) -> ModelFormat:
        """The variant's format: the one given, else inferred from its source."""
        return _format_of(self.source, self.format, "the variant's format")


_ONE_VARIANT_PER_TIER: Final = (
    "spec.model.variants: a tier is listed by two variants; list each tier (npu, gpu, cpu) in "
    "one variant's tiers only"
)


class ModelSpec(_Source):
    """Which model to serve and how to verify it: one source, an alias, or variants."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.source) || has(self.alias) || has(self.variants)",
                    "spec.model needs a source, an alias (a name in the operator's model "
                    "catalog) or variants",
                ),
                cel(
                    "!has(self.source) || (!has(self.alias) && !has(self.variants))",
                    "spec.model.source: give a source, or an alias and/or variants, not both",
                    ".source",
                ),
                cel(
                    "has(self.source) || (!has(self.format) && !has(self.sha256) && "
                    "(!has(self.allowInsecure) || !self.allowInsecure))",
                    "spec.model.format, sha256 and allowInsecure describe spec.model.source; "
                    "with variants or an alias, set them on each variant",
                    ".source",
                ),
                cel(
                    "!has(self.variants) || self.variants.all(v, v.tiers.all(t, "
                    "self.variants.filter(w, t in w.tiers).size() == 1))",
                    _ONE_VARIANT_PER_TIER,
                    ".variants",
                ),
                *_source_rules("spec.model", optional=True),
            ]
        }
    )

    source: str | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        pattern=SOURCE_PATTERN,
        description=f"{_SOURCE_DESCRIPTION} Give a source, or an alias and/or variants.",
    )
    alias: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        pattern=ALIAS_PATTERN,
        description="A model in the operator's catalog (chart value `models`, listed by `slmctl "
        "catalog`), e.g. phi-4-mini: its variants are served unless variants is given.",
    )
    variants: list[ModelVariant] | None = Field(
        default=None,
        min_length=1,
        max_length=len(Device),
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        description="A build of the model per hardware tier; each tier in spec.hardware needs "
        "one. The pods pull and serve the variant of the tier they are placed on. "
        "credentialsSecret applies to a variant that sets none.",
    )

    _source_parses = field_validator("source")(classmethod(lambda cls, v: _checked_source(v)))
    _origin: str = PrivateAttr(default="spec.model")
    """Where this spec's source was written: spec.model, or a variant (``served``)."""
    _from_catalog: bool = PrivateAttr(default=False)
    """Whether ``variants`` came from the model catalog (``with_variants``)."""

    @model_validator(mode="after")
    def _one_form(self) -> ModelSpec:
        if self.source is None and self.alias is None and not self.variants:
            raise ValueError(
                "needs a source, an alias (a name in the operator's model catalog) or variants"
            )
        if self.source is not None and (self.alias is not None or self.variants):
            raise ValueError("source: give a source, or an alias and/or variants, not both")
        if self.source is None and (
            self.format is not None or self.sha256 is not None or self.allow_insecure
        ):
            raise ValueError(
                "source: format, sha256 and allowInsecure describe spec.model.source; with "
                "variants or an alias, set them on each variant"
            )
        problem = variant_list_problem(self.variants or [])
        if problem is not None:
            raise ValueError(f"variants: {problem}")
        self._check_source(self.source)
        return self

    @property
    def served_source(self) -> str:
        """The source of the single-source form: every spec the pods run has one (``served``)."""
        if self.source is None:
            raise ValueError("spec.model has variants: serve one of them (LocalModel.serving)")
        return self.source

    def resolved_format(self) -> ModelFormat:
        """The format of the single-source form (``served`` specs have one)."""
        return _format_of(self.source or "", self.format, "spec.model.format")

    def field(self, name: str) -> str:
        """How a message names this model's field ``name`` (``sha256``, ``source``, ...): under
        ``spec.model``, or the variant a served spec came from."""
        if self._origin.startswith("spec."):
            return f"{self._origin}.{name}"
        return f"{name} of {self._origin}"

    def served_variants(self) -> list[ModelVariant]:
        """The variants to place: the explicit ones, else the one ``source`` serving every
        tier. Empty for an alias not yet looked up in the catalog (``with_variants``)."""
        if self.variants:
            return [
                v
                if v.credentials_secret or not self.credentials_secret
                else v.model_copy(update={"credentials_secret": self.credentials_secret})
                for v in self.variants
            ]
        if self.source is None:
            return []
        # Not validated: the single-source form keeps its own (older) rules.
        return [
            ModelVariant.model_construct(
                name=IMPLICIT_VARIANT,
                tiers=list(Device),
                source=self.source,
                format=self.format,
                sha256=self.sha256,
                credentials_secret=self.credentials_secret,
                allow_insecure=self.allow_insecure,
            )
        ]

    def variant_for(self, device: Device) -> ModelVariant | None:
        """The variant that serves ``device``, if any."""
        return next((v for v in self.served_variants() if device in v.tiers), None)

    def with_variants(self, variants: Sequence[ModelVariant]) -> ModelSpec:
        """This spec with an alias's variants (the catalog's), kept while none are given."""
        if self.variants or self.source is not None:
            return self
        resolved = self.model_copy(update={"variants": list(variants)})
        resolved._from_catalog = True
        return resolved


def variant_list_problem(variants: Sequence[ModelVariant]) -> str | None:
    """Why a list of variants (a LocalModel's, or a catalog entry's) cannot be placed: two of
    one name, or a tier listed by two; None when it can."""
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        return "two variants have the same name; name each once"
    tiers = [t for v in variants for t in v.tiers]
    if len(set(tiers)) != len(tiers):
        return _ONE_VARIANT_PER_TIER.removeprefix("spec.model.variants: ")
    return None


def missing_tiers(model: ModelSpec, tiers: Sequence[Device]) -> list[Device]:
    """The tiers of ``[preferred, *fallback]`` no variant serves (none for one source)."""
    return [t for t in tiers if model.variant_for(t) is None]


def served(model: ModelSpec, variant: ModelVariant) -> ModelSpec:
    """The one-source spec of ``variant``: what the pull, the pods and the status use."""
    spec = ModelSpec(
        source=variant.source,
        format=variant.format,
        sha256=variant.sha256,
        credentials_secret=variant.credentials_secret or model.credentials_secret,
        allow_insecure=variant.allow_insecure,
    )
    if model._from_catalog:
        spec._origin = f"variant {variant.name} of the model catalog's {model.alias}"
    else:
        spec._origin = f"spec.model.variants[{variant.name}]"
    return spec


def merged_parameters(base: ModelParameters, variant: ModelVariant) -> ModelParameters:
    """``base`` with the fields the variant sets replaced by its values."""
    overrides = variant.parameters.model_dump(exclude_unset=True)
    if not overrides:
        return base
    return ModelParameters.model_validate({**base.model_dump(exclude_unset=True), **overrides})
