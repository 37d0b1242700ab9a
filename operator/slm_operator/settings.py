"""Operator settings and the accelerator catalog: what each tier needs and which runtime it runs.

Both come from the environment or Helm values (the catalog as a mounted YAML file).
"""

from __future__ import annotations

import os
import socket
from typing import Annotated, Any, Final

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from slm_runtime.config import OPENVINO_NPU, Device, ModelFormat, RuntimeConfig

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


NETWORK_POLICY_PEER_KEYS: Final = frozenset({"podSelector", "namespaceSelector", "ipBlock"})

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


def default_catalog() -> AcceleratorCatalog:
    """Intel NPUs (ONNX only), NVIDIA GPUs, and CPU: the devices the project's images drive.

    AMD NPUs (VitisAI) and GPUs (ROCm) have no entry: neither image carries an engine that uses
    them, so a pod placed there would hold the device and run on its CPU.
    """
    return AcceleratorCatalog(
        tiers=[
            Tier(
                device=Device.NPU,
                options=[
                    AcceleratorOption(
                        name="intel-npu",
                        resource="intel.com/npu",
                        formats=[ModelFormat.ONNX],
                        openvino_device=OPENVINO_NPU,
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
                ],
            ),
            Tier(device=Device.CPU, options=[AcceleratorOption(name="cpu")]),
        ]
    )


class OperatorSettings(BaseSettings):
    """How the operator runs; every field can be set by an ``SLM_OPERATOR_*`` variable."""

    model_config = SettingsConfigDict(env_prefix="SLM_OPERATOR_", extra="ignore")

    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Namespaces to watch (comma separated in the environment); empty = all.",
    )
    catalog_file: str | None = Field(
        default=None, description="YAML file holding the accelerator catalog (Helm mounts it)."
    )
    cluster_domain: str = Field(default="cluster.local")
    metrics_port: int = Field(default=9090, ge=1, le=65535)
    health_port: int = Field(default=8081, ge=1, le=65535)
    resync_seconds: float = Field(
        default=300.0, ge=60.0, description="Periodic re-observation; drift is caught by watches."
    )
    runtime_image: str | None = Field(
        default=None, description="Overrides every catalog option's runtime image."
    )
    max_image_rollouts: int = Field(
        default=2,
        ge=1,
        description="How many models restart at a time to move to a new runtime image (an "
        "operator upgrade, runtime_image); the others keep theirs until one of those is done.",
    )
    allow_custom_images: bool = Field(
        default=False,
        description="Let LocalModels run a spec.runtime.image outside the catalog; off, such a "
        "model is Failed with a message naming this setting.",
    )
    token_realm_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts (comma separated in the environment), besides a registry's own, whose "
        "token service the puller may send source credentials to, e.g. auth.docker.io.",
    )
    metrics_from: list[dict[str, Any]] = Field(
        default_factory=list,
        description="NetworkPolicyPeers (JSON in the environment) admitted to a model's port when "
        "its NetworkPolicy is on, so Prometheus can still scrape /metrics.",
    )
    leader_election: bool = Field(
        default=False,
        description="Run active/standby: only the holder of the Lease reconciles; others wait.",
    )
    lease_name: str = Field(default="slm-operator", description="The leader election Lease.")
    lease_namespace: str = Field(
        default="default", description="Namespace of the Lease (the operator's own, in a pod)."
    )
    identity: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        description="This replica's name in the Lease (the pod name, in a pod).",
    )
    lease_seconds: int = Field(
        default=15, ge=3, description="A standby takes over this long after the last renewal."
    )

    @field_validator("metrics_from")
    @classmethod
    def _peers(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for peer in value:
            unknown = set(peer) - NETWORK_POLICY_PEER_KEYS
            if not peer or unknown:
                raise ValueError(
                    f"{peer!r} is not a NetworkPolicyPeer: give one or more of "
                    f"{', '.join(sorted(NETWORK_POLICY_PEER_KEYS))}"
                )
        return value

    @field_validator("namespaces", "token_realm_hosts", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [n.strip() for n in value.split(",") if n.strip()]
        return value

    def load_catalog(self) -> AcceleratorCatalog:
        """The catalog from ``catalog_file``, else the defaults; the image override applied."""
        if self.catalog_file:
            with open(self.catalog_file, encoding="utf-8") as handle:
                catalog = AcceleratorCatalog.model_validate(yaml.safe_load(handle))
        else:
            catalog = default_catalog()
        if self.runtime_image:
            for tier in catalog.tiers:
                for option in tier.options:
                    option.image = self.runtime_image
        return catalog
