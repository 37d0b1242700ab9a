"""The model catalog, pure: named models (aliases) and their variants per hardware tier.

A LocalModel with ``spec.model.alias: phi-4-mini`` serves the catalog's variants for that name.
The chart's ``models`` value holds the catalog (``chartgen`` writes the built-in entries there);
the chart renders it into the operator's ConfigMap, ``settings.py`` reads it, and ``slmctl
catalog`` lists it.

Pure: imports neither kopf nor a Kubernetes client.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from pydantic import Field, RootModel, field_validator
from slm_runtime.config import Device

from slm_operator.api import InvalidSpecError, LocalModel
from slm_operator.fields import ApiModel
from slm_operator.spec import CacheMode
from slm_operator.variants import ALIAS_PATTERN, ModelVariant, pinned_oci, variant_list_problem

UNPINNED: Final = "Not pinned: no sha256 was computed from these files."


class CatalogModel(ApiModel):
    """One named model: what it is, and a build per tier."""

    description: str = Field(min_length=1, description="What the model is, for slmctl catalog.")
    variants: list[ModelVariant] = Field(min_length=1, max_length=len(Device))

    @field_validator("variants")
    @classmethod
    def _one_per_tier(cls, value: list[ModelVariant]) -> list[ModelVariant]:
        problem = variant_list_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    def tiers(self) -> list[Device]:
        """The tiers some variant serves, in the device table's order."""
        served = {t for v in self.variants for t in v.tiers}
        return [d for d in Device if d in served]

    def pinned(self) -> bool:
        """Whether every variant carries a sha256 pin."""
        return all(v.sha256 for v in self.variants)


class ModelCatalog(RootModel[dict[str, CatalogModel]]):
    """Every alias the operator knows, by name."""

    @field_validator("root")
    @classmethod
    def _names(cls, value: dict[str, CatalogModel]) -> dict[str, CatalogModel]:
        for name in value:
            if not re.fullmatch(ALIAS_PATTERN, name) or len(name) > 63:
                raise ValueError(
                    f"model catalog alias {name!r}: use lowercase letters, digits, '.', '_' and "
                    "'-', at most 63 characters"
                )
        return value

    def get(self, alias: str) -> CatalogModel | None:
        """The entry for ``alias``, if any."""
        return self.root.get(alias)

    def names(self) -> list[str]:
        """The aliases, sorted."""
        return sorted(self.root)


def unknown_alias(alias: str, catalog: ModelCatalog) -> str:
    """The Failed message for an alias the catalog lacks."""
    known = ", ".join(catalog.names()) or "none"
    return (
        f"spec.model.alias: {alias} is not in the operator's model catalog (it has: {known}); "
        "use one of those, give spec.model.variants or spec.model.source, or add the model to "
        "the chart's models value"
    )


def with_alias(lm: LocalModel, catalog: ModelCatalog) -> LocalModel:
    """``lm`` with its alias's variants from the catalog (an explicit list wins).

    Raises ``InvalidSpecError`` naming ``spec.model.alias`` when the catalog lacks the alias
    (no webhook sees the catalog, so the API server admits it), or ``spec.cache.mode`` when Image
    mode meets variants that are not pinned OCI images.
    """
    model = lm.spec.model
    if model.alias is None or model.variants:
        return lm
    entry = catalog.get(model.alias)
    if entry is None:
        raise InvalidSpecError(unknown_alias(model.alias, catalog))
    if lm.spec.cache.mode is CacheMode.IMAGE and not all(
        pinned_oci(v.source) for v in entry.variants
    ):
        raise InvalidSpecError(
            f"spec.cache.mode: Image needs oci:// sources pinned by digest, and the catalog's "
            f"{model.alias} has others; use cache.mode Volume or give spec.model.variants"
        )
    spec = lm.spec.model_copy(update={"model": model.with_variants(entry.variants)})
    return lm.model_copy(update={"spec": spec})


_PHI4_ONNX: Final = (
    "hf://microsoft/Phi-4-mini-instruct-onnx/cpu_and_mobile/cpu-int4-rtn-block-32-acc-level-4"
)

_DEFAULT_MODELS: Final[Mapping[str, Mapping[str, object]]] = {
    "phi-4-mini": {
        "description": "Microsoft Phi-4-mini-instruct (3.8B). npu: the int4 ONNX Runtime GenAI "
        "export, run by the OpenVINO execution provider, with a 4096-token context; gpu and cpu: "
        f"the Q4_K_M GGUF. {UNPINNED}",
        "variants": [
            {
                "name": "npu-onnx-int4",
                "tiers": ["npu"],
                "source": _PHI4_ONNX,
                "format": "onnx",
                "parameters": {"contextLength": 4096},
            },
            {
                "name": "gguf-q4-k-m",
                "tiers": ["gpu", "cpu"],
                "source": "hf://unsloth/Phi-4-mini-instruct-GGUF/Phi-4-mini-instruct-Q4_K_M.gguf",
            },
        ],
    },
    "qwen2.5-0.5b": {
        "description": f"Qwen2.5-0.5B-Instruct, the Q4_K_M GGUF from Qwen. {UNPINNED}",
        "variants": [
            {
                "name": "gguf-q4-k-m",
                "tiers": ["gpu", "cpu"],
                "source": "hf://Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf",
            }
        ],
    },
    "smollm2-135m": {
        "description": f"SmolLM2-135M-Instruct, the Q4_K_M GGUF. {UNPINNED}",
        "variants": [
            {
                "name": "gguf-q4-k-m",
                "tiers": ["gpu", "cpu"],
                "source": "hf://bartowski/SmolLM2-135M-Instruct-GGUF/"
                "SmolLM2-135M-Instruct-Q4_K_M.gguf",
            }
        ],
    },
    "gemma-3-270m": {
        "description": f"Gemma 3 270M instruction-tuned, the Q4_K_M GGUF. {UNPINNED}",
        "variants": [
            {
                "name": "gguf-q4-k-m",
                "tiers": ["gpu", "cpu"],
                "source": "hf://unsloth/gemma-3-270m-it-GGUF/gemma-3-270m-it-Q4_K_M.gguf",
            }
        ],
    },
}
"""Public sources of each entry: the repositories' file listings on Hugging Face."""


def default_models() -> ModelCatalog:
    """The built-in model catalog (the chart's default ``models`` value)."""
    return ModelCatalog.model_validate(_DEFAULT_MODELS)
