"""Placement, pure: LocalModel spec + node inventory + accelerator catalog -> Placement.

The first tier in ``[preferred, *fallback]`` for which some Ready, schedulable node has free
allocatable capacity (and whose runtime serves the model's format) wins; every skipped tier is
named in the reason. When nothing fits, the last tier is placed anyway with ``placed=False`` so a
cluster autoscaler can react.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from slm_runtime.config import Device

from slm_operator.api import Reason


@dataclass(frozen=True)
class NodeInfo:
    """What placement needs to know about one node (filled by observe.py)."""

    name: str
    ready: bool = True
    unschedulable: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict[str, Any]] = field(default_factory=list)
    allocatable: dict[str, float] = field(default_factory=dict)
    """Allocatable resources as numbers (cpu in cores, memory in bytes, devices in units)."""
    requested: dict[str, float] = field(default_factory=dict)
    """The sum of requests of the non-terminated pods bound to the node."""

    def free(self, resource: str) -> float:
        """Allocatable minus requested."""
        return self.allocatable.get(resource, 0.0) - self.requested.get(resource, 0.0)


@dataclass(frozen=True)
class SkippedTier:
    """A tier that was not chosen, and why (shown in status.fallbackReason)."""

    device: Device
    reason: str


@dataclass(frozen=True)
class Placement:
    """Where and how the runtime pods run."""

    device: Device
    """The tier placed (status.backend)."""
    option: str
    """The catalog option's name, e.g. nvidia-gpu."""
    placed: bool
    """False when no tier had capacity and the last tier was placed anyway."""
    reason: Reason
    """Reason.PLACED (preferred tier), Reason.FELL_BACK or Reason.NO_CAPACITY."""
    skipped: tuple[SkippedTier, ...] = ()
    image: str = ""
    resources: dict[str, str] = field(default_factory=dict)
    """Accelerator requests = limits, e.g. {"nvidia.com/gpu": "1"}; empty on CPU."""
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    runtime_class_name: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    devices: tuple[Device, ...] = (Device.CPU,)
    """Device order the runtime tries inside the pod: the placed tier, then lower ones."""

    @property
    def accelerated(self) -> bool:
        """True on NPU and GPU tiers (rollouts use maxSurge 0 there)."""
        return self.device is not Device.CPU

    @property
    def fallback_reason(self) -> str | None:
        """Human-readable reason the preferred tier(s) were skipped, or None."""
        if not self.skipped:
            return None
        return "; ".join(f"{s.device.value}: {s.reason}" for s in self.skipped)
