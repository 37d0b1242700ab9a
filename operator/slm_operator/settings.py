"""Operator settings, from the environment or Helm values; the accelerator catalog (catalog.py)
and the model catalog (aliases.py) are read here from the YAML files the chart mounts."""

from __future__ import annotations

import os
import socket
from typing import Annotated, Any, Final

import yaml
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from slm_operator.aliases import ModelCatalog, default_models
from slm_operator.catalog import AcceleratorCatalog, default_catalog

NETWORK_POLICY_PEER_KEYS: Final = frozenset({"podSelector", "namespaceSelector", "ipBlock"})


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
    models_file: str | None = Field(
        default=None,
        description="YAML file holding the model catalog, the aliases spec.model.alias names "
        "(Helm mounts it).",
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

    def load_models(self) -> ModelCatalog:
        """The model catalog from ``models_file``, else the built-in one."""
        if not self.models_file:
            return default_models()
        with open(self.models_file, encoding="utf-8") as handle:
            return ModelCatalog.model_validate(yaml.safe_load(handle) or {})

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
