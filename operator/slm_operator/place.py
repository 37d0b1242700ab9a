"""Placement, pure: LocalModel spec + node inventory + accelerator catalog -> Placement.

The first tier in ``[preferred, *fallback]`` for which some Ready, schedulable node has free
allocatable capacity (and whose runtime serves the model's format) wins; every skipped tier is
named in the reason. When nothing fits, the last tier is placed anyway with ``placed=False`` so a
cluster autoscaler can react. Affinity and topology spread are left to the scheduler.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from slm_runtime.config import Device, ModelFormat

from slm_operator.api import LocalModelSpec, Reason
from slm_operator.settings import AcceleratorCatalog, AcceleratorOption

STEPPED_DOWN: Final = "pods stayed unschedulable for longer than fallbackAfter ({after})"
"""Reason for tiers above the one the operator stepped down to."""
NOT_IN_CATALOG: Final = "not in the accelerator catalog"
FORMAT_NOT_SERVED: Final = "format {format} is not served on {device}"

_BLOCKING_EFFECTS: Final = frozenset({"NoSchedule", "NoExecute"})
_GIB: Final = 1024**3
_MIB: Final = 1024**2


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
    openvino_device: str | None = None
    """The catalog option's OpenVINO device_type (RuntimeConfig.openvinoDevice), if it sets one."""
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


class NoServableTier(ValueError):  # noqa: N818 - reads as the condition it reports
    """No tier in ``[preferred, *fallback]`` can serve the model's format; the spec never works."""


def place(
    spec: LocalModelSpec,
    nodes: Sequence[NodeInfo],
    catalog: AcceleratorCatalog,
    *,
    start_at: Device | None = None,
    pod_requests: Mapping[str, float] | None = None,
) -> Placement:
    """The first tier with room for one pod, else the last servable tier with ``placed=False``.

    With no room anywhere, the pods wait on the last tier's first option that some node offers
    (any option when none does), so they queue for hardware the cluster has.

    ``start_at`` is the tier the operator stepped down to after ``fallbackAfter``: the tiers above
    it are skipped. It is ignored when ``spec.hardware`` no longer lists it. ``pod_requests``
    (cpu in cores, memory in bytes, ...) must also be free on the node.
    """
    model_format = spec.model.resolved_format()
    tiers = spec.hardware.tiers()
    servable = {
        device: options
        for device in tiers
        if (options := servable_options(catalog, device, model_format))
    }
    if not servable:
        raise NoServableTier(_no_servable_message(tiers, catalog, model_format))

    selector = spec.scheduling.node_selector
    start = tiers.index(start_at) if start_at in tiers else 0
    skipped: list[SkippedTier] = []
    for index, device in enumerate(tiers):
        if index < start:
            reason = STEPPED_DOWN.format(after=spec.hardware.fallback_after)
            skipped.append(SkippedTier(device, reason))
            continue
        if device not in servable:
            skipped.append(SkippedTier(device, _unservable_reason(catalog, device, model_format)))
            continue
        misses = []
        for option in servable[device]:
            miss = option_misfit(
                option,
                nodes,
                node_selector={**option.node_selector, **selector},
                tolerations=[*option.tolerations, *spec.scheduling.tolerations],
                pod_requests=pod_requests or {},
            )
            if miss is None:
                preferred = device is spec.hardware.preferred
                return _placement(
                    spec,
                    device,
                    option,
                    tiers,
                    servable,
                    placed=True,
                    reason=Reason.PLACED if preferred else Reason.FELL_BACK,
                    skipped=skipped,
                )
            misses.append(miss)
        skipped.append(SkippedTier(device, _join_misses(misses)))

    last = next(device for device in reversed(tiers) if device in servable)
    return _placement(
        spec,
        last,
        _waiting_option(servable[last], nodes),
        tiers,
        servable,
        placed=False,
        reason=Reason.NO_CAPACITY,
        skipped=skipped,
    )


def servable_options(
    catalog: AcceleratorCatalog, device: Device, model_format: ModelFormat
) -> list[AcceleratorOption]:
    """The catalog's options for a tier whose runtime serves the format, in catalog order."""
    tier = catalog.tier(device)
    if tier is None:
        return []
    return [option for option in tier.options if model_format in option.formats]


def _waiting_option(
    options: Sequence[AcceleratorOption], nodes: Sequence[NodeInfo]
) -> AcceleratorOption:
    """The option to wait on: the first whose resource some node offers, else the first."""
    for option in options:
        if option.resource is None or any(
            n.allocatable.get(option.resource, 0.0) > 0 for n in nodes
        ):
            return option
    return options[0]


def option_misfit(
    option: AcceleratorOption,
    nodes: Iterable[NodeInfo],
    *,
    node_selector: Mapping[str, str],
    tolerations: Sequence[Mapping[str, Any]],
    pod_requests: Mapping[str, float],
) -> str | None:
    """None when some node can take one pod of this option, else why none can."""
    resource = option.resource
    offering = f" offering {resource}" if resource else ""
    candidates = [n for n in nodes if resource is None or n.allocatable.get(resource, 0.0) > 0]
    if resource is not None and not candidates:
        return f"no node offers {resource}"

    candidates = [n for n in candidates if n.ready and not n.unschedulable]
    if not candidates:
        return f"no Ready, schedulable node{offering}"

    candidates = [n for n in candidates if node_matches(n, node_selector)]
    if not candidates:
        return f"no Ready node{offering} matches nodeSelector {_labels(node_selector)}"

    blocking = sorted({_taint(t) for n in candidates for t in untolerated_taints(n, tolerations)})
    candidates = [n for n in candidates if not untolerated_taints(n, tolerations)]
    if not candidates:
        return (
            f"every Ready node{offering} has a taint the pods do not tolerate "
            f"({', '.join(blocking)})"
        )

    with_free = ""
    if resource is not None:
        candidates = [n for n in candidates if n.free(resource) >= option.count]
        with_free = (
            f" with free {resource}"
            if option.count == 1
            else f" with {option.count} free {resource}"
        )
        if not candidates:
            return f"no Ready node{with_free}"

    needed = {name: amount for name, amount in pod_requests.items() if amount > 0}
    short: set[str] = set()
    for node in candidates:
        lacking = {name for name, amount in needed.items() if node.free(name) < amount}
        if not lacking:
            return None
        short |= lacking
    need = ", ".join(f"{_amount(name, needed[name])} {name}" for name in sorted(short))
    return f"no Ready node{with_free} has {need} free"


def node_matches(node: NodeInfo, node_selector: Mapping[str, str]) -> bool:
    """True when the node carries every label of the selector."""
    return all(node.labels.get(key) == value for key, value in node_selector.items())


def untolerated_taints(
    node: NodeInfo, tolerations: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The node's NoSchedule/NoExecute taints that none of the tolerations tolerates."""
    return [
        taint
        for taint in node.taints
        if taint.get("effect") in _BLOCKING_EFFECTS
        and not any(tolerates(toleration, taint) for toleration in tolerations)
    ]


def tolerates(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    """Kubernetes' toleration matching: effect, then key with Exists or key and value with Equal."""
    effect = toleration.get("effect") or ""
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key") or ""
    if (toleration.get("operator") or "Equal") == "Exists":
        return not key or key == taint.get("key")
    return key == taint.get("key") and (toleration.get("value") or "") == (taint.get("value") or "")


def _placement(
    spec: LocalModelSpec,
    device: Device,
    option: AcceleratorOption,
    tiers: Sequence[Device],
    servable: Mapping[Device, list[AcceleratorOption]],
    *,
    placed: bool,
    reason: Reason,
    skipped: Sequence[SkippedTier],
) -> Placement:
    tolerations: list[dict[str, Any]] = []
    for toleration in [*option.tolerations, *spec.scheduling.tolerations]:
        if dict(toleration) not in tolerations:
            tolerations.append(dict(toleration))
    return Placement(
        device=device,
        option=option.name,
        placed=placed,
        reason=reason,
        skipped=tuple(skipped),
        image=spec.runtime.image or option.image,
        resources={option.resource: str(option.count)} if option.resource else {},
        node_selector={**option.node_selector, **spec.scheduling.node_selector},
        tolerations=tuple(tolerations),
        runtime_class_name=option.runtime_class_name,
        env=dict(option.env),
        openvino_device=option.openvino_device,
        devices=device_order(device, tiers, servable),
    )


def device_order(
    device: Device, tiers: Sequence[Device], servable: Iterable[Device]
) -> tuple[Device, ...]:
    """In-pod fallback: the placed tier, the lower servable tiers, and cpu last when listed.

    Nothing follows cpu: the pod's own cores never fail to open.
    """
    if device is Device.CPU:
        return (Device.CPU,)
    usable = set(servable)
    lower = tiers[tiers.index(device) + 1 :]
    order: list[Device] = [device, *(d for d in lower if d in usable and d is not Device.CPU)]
    if Device.CPU in usable:
        order.append(Device.CPU)
    return tuple(order)


def _unservable_reason(
    catalog: AcceleratorCatalog, device: Device, model_format: ModelFormat
) -> str:
    if catalog.tier(device) is None:
        return NOT_IN_CATALOG
    return FORMAT_NOT_SERVED.format(format=model_format.value, device=device.value)


def _no_servable_message(
    tiers: Sequence[Device], catalog: AcceleratorCatalog, model_format: ModelFormat
) -> str:
    listed = ", ".join(d.value for d in tiers)
    why = "; ".join(f"{d.value}: {_unservable_reason(catalog, d, model_format)}" for d in tiers)
    capable = [
        t.device.value
        for t in catalog.tiers
        if t.device not in tiers and servable_options(catalog, t.device, model_format)
    ]
    others = [
        f.value
        for f in ModelFormat
        if f is not model_format and any(servable_options(catalog, d, f) for d in tiers)
    ]
    fixes = []
    if capable:
        fixes.append(f"add {' or '.join(capable)} to spec.hardware.fallback")
    if others:
        fixes.append(f"serve the model in {' or '.join(others)} format")
    if not fixes:
        fixes.append(f"add an option serving {model_format.value} to the accelerator catalog")
    return (
        f"no tier in [{listed}] can serve {model_format.value} models ({why}); "
        f"{', or '.join(fixes)}"
    )


def _join_misses(misses: Sequence[str]) -> str:
    """One tier's reason from its options' reasons, merging the options no node offers."""
    prefix = "no node offers "
    absent = [m.removeprefix(prefix) for m in misses if m.startswith(prefix)]
    parts: list[str] = []
    for miss in misses:
        if not miss.startswith(prefix):
            parts.append(miss)
        elif miss.removeprefix(prefix) == absent[0]:
            parts.append(prefix + " or ".join(absent))
    return ", ".join(parts)


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def _taint(taint: Mapping[str, Any]) -> str:
    value = taint.get("value")
    key = f"{taint.get('key', '')}={value}" if value else str(taint.get("key", ""))
    return f"{key}:{taint.get('effect', '')}"


def _amount(resource: str, amount: float) -> str:
    """A readable quantity for a message: 2.5Gi memory, 500m cpu."""
    if resource == "cpu":
        return f"{amount:g}" if amount == int(amount) else f"{round(amount * 1000)}m"
    if resource in {"memory", "ephemeral-storage"} or resource.startswith("hugepages-"):
        if amount >= _GIB:
            return f"{amount / _GIB:.1f}".removesuffix(".0") + "Gi"
        return f"{-(-amount // _MIB):.0f}Mi"
    return f"{amount:g}"
