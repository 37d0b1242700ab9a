"""Operator settings: the accelerator catalog, what each tier needs and which runtime it runs.

The catalog is set through the environment or Helm values. Pure data and defaults; no I/O.
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from slm_runtime.config import Device, ModelFormat

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
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Runtime device flags, e.g. the OpenVINO device type.",
    )


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


def default_catalog() -> AcceleratorCatalog:
    """Intel and AMD NPUs (ONNX only), NVIDIA and AMD GPUs, and CPU."""
    return AcceleratorCatalog(
        tiers=[
            Tier(
                device=Device.NPU,
                options=[
                    AcceleratorOption(
                        name="intel-npu",
                        resource="intel.com/npu",
                        formats=[ModelFormat.ONNX],
                        env={"SLM_OPENVINO_DEVICE": "NPU"},
                    ),
                    AcceleratorOption(
                        name="amd-npu",
                        resource="amd.com/xdna",
                        formats=[ModelFormat.ONNX],
                    ),
                ],
            ),
            Tier(
                device=Device.GPU,
                options=[
                    AcceleratorOption(
                        name="nvidia-gpu",
                        resource="nvidia.com/gpu",
                        image=DEFAULT_CUDA_IMAGE,
                        runtime_class_name="nvidia",
                        tolerations=[
                            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                        ],
                    ),
                    AcceleratorOption(
                        name="amd-gpu",
                        resource="amd.com/gpu",
                        formats=[ModelFormat.GGUF],
                        tolerations=[
                            {"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                        ],
                    ),
                ],
            ),
            Tier(device=Device.CPU, options=[AcceleratorOption(name="cpu")]),
        ]
    )
