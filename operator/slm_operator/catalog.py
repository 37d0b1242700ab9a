"""The accelerator catalog, pure: what each tier needs, which runtime image drives it, and which
images a LocalModel may name.

``settings.py`` reads it from the environment (a YAML file the chart mounts); nothing here reads
the environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel
from slm_runtime.config import DEVICE_TIERS, OPENVINO_NPU, Device, ModelFormat, RuntimeConfig

DEFAULT_IMAGE: Final = "ghcr.io/slm-operator/slm-runtime:0.1.0"
DEFAULT_CUDA_IMAGE: Final = "ghcr.io/slm-operator/slm-runtime:0.1.0-cuda"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


class AcceleratorOption(_Model):
    """One way to run a tier: a device-plugin resource and the runtime that drives it."""

    name: str = Field(min_length=1, description="Short name, e.g. intel-npu, nvidia-gpu, cpu.")
    resource: str | None = Field(
        default=None,
        description="Extended resource requested per pod (intel.com/npu, nvidia.com/gpu); "
        "None for the CPU tier.",
    )
    count: int = Field(default=1, ge=1, description="Units of the resource per pod.")
    formats: list[ModelFormat] = Field(
        default_factory=lambda: [ModelFormat.GGUF, ModelFormat.ONNX],
        description="Model formats this option's runtime can serve.",
    )
    image: str = Field(default=DEFAULT_IMAGE, description="Runtime image for this option.")
    runtime_class_name: str | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    openvino_device: str | None = Field(
        default=None,
        description="The OpenVINO device_type an ONNX model loads with on an npu tier "
        "(RuntimeConfig.openvinoDevice: NPU, NPU.<n>, or HETERO:NPU,<GPU|CPU>...); the runtime's "
        "default (NPU) when unset.",
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Extra environment for the model server container.",
    )

    @field_validator("openvino_device")
    @classmethod
    def _openvino_device(cls, value: str | None) -> str | None:
        # RuntimeConfig owns the rule; checked here too, so a bad catalog stops the operator at
        # start instead of failing every render.
        RuntimeConfig.model_validate(
            {"modelName": "m", "format": "onnx", "modelPath": "/m", "openvinoDevice": value}
        )
        return value


class Tier(_Model):
    """A hardware tier and the options that can serve it, tried in order."""

    device: Device
    options: list[AcceleratorOption] = Field(min_length=1)


class AcceleratorCatalog(_Model):
    """Every tier the operator knows how to place."""

    tiers: list[Tier]

    def tier(self, device: Device) -> Tier | None:
        """The catalog entry for a device, if any."""
        return next((t for t in self.tiers if t.device is device), None)

    def images(self) -> list[str]:
        """Every runtime image the catalog names, each once, in catalog order."""
        return list(dict.fromkeys(o.image for t in self.tiers for o in t.options))


ALLOW_CUSTOM_IMAGES_SETTING: Final = (
    "runtime.allowCustomImages=true (SLM_OPERATOR_ALLOW_CUSTOM_IMAGES=true)"
)
"""How a cluster admin lets LocalModels run images outside the catalog: the chart value and the
operator's variable."""


def runtime_image_refusal(
    image: str | None, catalog: AcceleratorCatalog, *, allow_custom: bool
) -> str | None:
    """Why ``spec.runtime.image`` may not run, or None.

    A LocalModel's pods run its image with the model's source credentials (the pull container)
    and its API token: an image outside the operator's catalog would let anyone allowed to
    create a LocalModel run code of their choice with both. So only the catalog's images are
    accepted unless the operator was installed to allow any.
    """
    if not image or allow_custom or image in catalog.images():
        return None
    return (
        f"spec.runtime.image: {image} is not one of the operator's runtime images "
        f"({', '.join(catalog.images())}); remove spec.runtime.image to use the catalog's, "
        f"or have the operator installed with {ALLOW_CUSTOM_IMAGES_SETTING}"
    )


_DEFAULT_OPTIONS: Final[Mapping[Device, Mapping[str, Any]]] = {
    Device.NPU: {"name": "intel-npu", "openvino_device": OPENVINO_NPU},
    Device.GPU: {
        "name": "nvidia-gpu",
        "image": DEFAULT_CUDA_IMAGE,
        "runtime_class_name": "nvidia",
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
    Device.CPU: {"name": "cpu"},
}
"""What the default catalog adds to each row of ``DEVICE_TIERS``: its name, image and scheduling."""


def default_catalog() -> AcceleratorCatalog:
    """Intel NPUs (ONNX only), NVIDIA GPUs, and CPU: the devices the project's images drive, one
    option per row of ``DEVICE_TIERS`` (its resource and the formats the engines run there).

    AMD NPUs (VitisAI) and GPUs (ROCm) have no entry: neither image carries an engine that uses
    them, so a pod placed there would hold the device and run on its CPU.
    """
    return AcceleratorCatalog(
        tiers=[
            Tier(
                device=tier.device,
                options=[
                    AcceleratorOption(
                        resource=tier.resource,
                        formats=list(tier.formats),
                        **_DEFAULT_OPTIONS[tier.device],
                    )
                ],
            )
            for tier in DEVICE_TIERS
        ]
    )
