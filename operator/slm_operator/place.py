"""Placement, pure: LocalModel spec + node inventory + accelerator catalog -> Placement.

The first tier in ``[preferred, *fallback]`` for which some Ready, schedulable node has free
allocatable capacity (and whose runtime serves the model's format) wins; every skipped tier is
named in the reason. When nothing fits, the last tier is placed anyway with ``placed=False`` so a
cluster autoscaler can react. Affinity and topology spread are left to the scheduler.

``decide`` is the reconcile's placement step: ``place``, kept on a tier the model stepped down
to, and the step down itself once pods have been unschedulable for ``fallbackAfter``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final

from slm_runtime.config import Device, ModelFormat, parse_duration

from slm_operator.catalog import AcceleratorCatalog, AcceleratorOption
from slm_operator.conditions import Reason
from slm_operator.spec import LocalModelSpec
from slm_operator.summary import NodeInfo, Observation, clip, live_pods
from slm_operator.variants import ModelVariant

Object = dict[str, Any]
PodRequests = Mapping[str, float] | Callable[[Device], Mapping[str, float]]

STEPPED_DOWN: Final = "pods stayed unschedulable for longer than fallbackAfter ({after})"
"""Reason for tiers above the one the operator stepped down to."""
NOT_IN_CATALOG: Final = "not in the accelerator catalog"
NO_VARIANT: Final = "no variant of the model serves it"
FORMAT_NOT_SERVED: Final = "format {format} is not served on {device}"

_BLOCKING_EFFECTS: Final = frozenset({"NoSchedule", "NoExecute"})
_GIB: Final = 1024**3
_MIB: Final = 1024**2


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
    """Device order the runtime tries inside the pod: the placed tier, then the lower ones the
    same variant serves."""
    variant: ModelVariant | None = None
    """The build of the model the placed tier runs (``spec.model.variant_for(device)``)."""

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
    pod_requests: PodRequests | None = None,
) -> Placement:
    """The first tier with room for one pod, else the last servable tier with ``placed=False``.

    With no room anywhere, the pods wait on the last tier's first option that some node offers
    (any option when none does), so they queue for hardware the cluster has.

    ``start_at`` is the tier the operator stepped down to after ``fallbackAfter``: the tiers above
    it are skipped. It is ignored when ``spec.hardware`` no longer lists it. ``pod_requests``
    (cpu in cores, memory in bytes, ...; or a function of the tier, as each tier's variant
    sizes its pods) must also be free on the node.

    Each tier runs the variant of ``spec.model`` that serves it (``Placement.variant``); a tier
    no variant serves, or whose runtime cannot serve its variant's format, is skipped.
    """
    tiers = spec.hardware.tiers()
    variants = {device: spec.model.variant_for(device) for device in tiers}
    servable = {
        device: options
        for device, variant in variants.items()
        if variant is not None
        and (options := servable_options(catalog, device, variant.resolved_format()))
    }
    if not servable:
        raise NoServableTier(_no_servable_message(spec, tiers, catalog))
    requests_for = pod_requests if callable(pod_requests) else lambda _: pod_requests or {}

    selector = spec.scheduling.node_selector
    start = tiers.index(start_at) if start_at in tiers else 0
    skipped: list[SkippedTier] = []
    for index, device in enumerate(tiers):
        if index < start:
            reason = STEPPED_DOWN.format(after=spec.hardware.fallback_after)
            skipped.append(SkippedTier(device, reason))
            continue
        if device not in servable:
            skipped.append(SkippedTier(device, _unservable_reason(catalog, device, variants)))
            continue
        misses = []
        for option in servable[device]:
            miss = option_misfit(
                option,
                nodes,
                node_selector={**option.node_selector, **selector},
                tolerations=[*option.tolerations, *spec.scheduling.tolerations],
                pod_requests=requests_for(device),
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


# --- decide: the tier, with the step down after fallbackAfter ---------------------------------

TIER_ANNOTATION: Final = "slm.dev/tier"
"""On the Deployment: the tier it was placed on, kept while ``spec.hardware`` is unchanged."""
HARDWARE_ANNOTATION: Final = "slm.dev/hardware"
"""On the Deployment: a digest of ``spec.hardware`` when it was placed (``hardware_hash``)."""


@dataclass(frozen=True)
class Decision:
    """Where the model runs, and what the pass does about time."""

    placement: Placement
    stepped_down: str | None = None
    """Why this pass leaves the tier the pods were waiting on (status.fallbackReason, Event)."""
    decide_again_in: float | None = None
    """Seconds until the pods will have waited ``fallbackAfter``: decide again then."""


def decide(
    spec: LocalModelSpec,
    nodes: Sequence[NodeInfo],
    catalog: AcceleratorCatalog,
    recorded: Device | None,
    observation: Observation,
    now: datetime,
    *,
    pod_requests: PodRequests | None = None,
) -> Decision:
    """The placement for this pass: the natural one (``place``), or the tier the model already
    stepped down to (``recorded``, from its Deployment), or the next tier down when its pods
    have been unschedulable for ``fallbackAfter``.

    Raises ``NoServableTier`` when no tier listed can serve the model.
    """
    natural = place(spec, nodes, catalog, pod_requests=pod_requests)
    tiers = spec.hardware.tiers()

    def from_tier(tier: Device) -> Placement:
        return place(spec, nodes, catalog, start_at=tier, pod_requests=pod_requests)

    placement = _keep_step_down(natural, recorded, from_tier, tiers)
    stepped = None
    if should_step_down(spec, placement, observation, now):
        stepped = step_down_reason(placement, observation, now)
        placement = _keep_step_down(natural, next_tier(spec, placement), from_tier, tiers)
    return Decision(placement, stepped, _decide_again_in(spec, placement, observation, now))


def _decide_again_in(
    spec: LocalModelSpec, placement: Placement, observation: Observation, now: datetime
) -> float | None:
    """When unschedulable pods will have waited ``fallbackAfter`` (and a tier is left below)."""
    waited = unschedulable_for(observation, now)
    if waited is None or next_tier(spec, placement) is None:
        return None
    remaining = parse_duration(spec.hardware.fallback_after) - waited
    return max(1.0, remaining + 0.5)


def _keep_step_down(
    natural: Placement,
    tier: Device | None,
    place_from: Callable[[Device], Placement],
    tiers: list[Device],
) -> Placement:
    """The placement from a stepped-down ``tier`` when it is below the natural choice.

    Tiers the natural placement skipped anyway keep their own reason (a format the tier cannot
    serve, no capacity); only the ones left because pods stayed unschedulable say so.
    """
    if tier is None or tier not in tiers or natural.device not in tiers:
        return natural
    if tiers.index(tier) <= tiers.index(natural.device):
        return natural
    stepped = place_from(tier)
    own = {s.device: s for s in natural.skipped}
    skipped = tuple(own.get(s.device, s) for s in stepped.skipped)
    return replace(stepped, skipped=skipped)


def hardware_hash(spec: LocalModelSpec) -> str:
    """A short digest of spec.hardware: a recorded tier is kept only while it is unchanged."""
    text = spec.hardware.model_dump_json(by_alias=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def recorded_tier(spec: LocalModelSpec, deployment: Mapping[str, Any] | None) -> Device | None:
    """The tier the Deployment was placed on, while spec.hardware is unchanged."""
    annotations = (deployment or {}).get("metadata", {}).get("annotations") or {}
    if annotations.get(HARDWARE_ANNOTATION) != hardware_hash(spec):
        return None
    tier = annotations.get(TIER_ANNOTATION)
    return Device(tier) if tier in {d.value for d in Device} else None


def record_tier(deployment: Object, spec: LocalModelSpec, placement: Placement) -> None:
    """Note on a rendered Deployment the tier it is placed on (read back by ``recorded_tier``)."""
    annotations = deployment["metadata"].setdefault("annotations", {})
    annotations[TIER_ANNOTATION] = placement.device.value
    annotations[HARDWARE_ANNOTATION] = hardware_hash(spec)


def unschedulable_for(observation: Observation | None, now: datetime) -> float | None:
    """Seconds the longest-unschedulable live pod has been so, or None when none is."""
    if observation is None:
        return None
    since = [p.unschedulable_since for p in live_pods(observation) if p.unschedulable_since]
    if not since:
        return None
    oldest = min(_aware(s) for s in since)
    return max(0.0, (_aware(now) - oldest).total_seconds())


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def next_tier(spec: LocalModelSpec, placement: Placement) -> Device | None:
    """The tier after the placed one in ``[preferred, *fallback]``, or None at the last."""
    tiers = spec.hardware.tiers()
    if placement.device not in tiers:
        return None
    index = tiers.index(placement.device)
    return tiers[index + 1] if index + 1 < len(tiers) else None


def should_step_down(
    spec: LocalModelSpec,
    placement: Placement | None,
    observation: Observation | None,
    now: datetime,
) -> bool:
    """True when pods stayed unschedulable for ``fallbackAfter`` and a lower tier is left."""
    if placement is None or next_tier(spec, placement) is None:
        return False
    waited = unschedulable_for(observation, now)
    return waited is not None and waited >= parse_duration(spec.hardware.fallback_after)


def step_down_reason(placement: Placement, observation: Observation, now: datetime) -> str:
    """Why the operator leaves the placed tier, for status.fallbackReason and the Event."""
    waited = unschedulable_for(observation, now) or 0.0
    messages = [p.scheduler_message for p in live_pods(observation) if p.scheduler_message]
    detail = f": {messages[0]}" if messages else ""
    return clip(f"pods unschedulable on {placement.device.value} for {waited:.0f}s{detail}")


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
    variant = spec.model.variant_for(device)
    usable = [d for d in servable if spec.model.variant_for(d) == variant]
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
        devices=device_order(device, tiers, usable),
        variant=variant if spec.model.variants else None,
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
    catalog: AcceleratorCatalog, device: Device, variants: Mapping[Device, ModelVariant | None]
) -> str:
    variant = variants.get(device)
    if variant is None:
        return NO_VARIANT
    if catalog.tier(device) is None:
        return NOT_IN_CATALOG
    return FORMAT_NOT_SERVED.format(format=variant.resolved_format().value, device=device.value)


def _no_servable_message(
    spec: LocalModelSpec, tiers: Sequence[Device], catalog: AcceleratorCatalog
) -> str:
    listed = ", ".join(d.value for d in tiers)
    variants = {d: spec.model.variant_for(d) for d in Device}
    why = "; ".join(f"{d.value}: {_unservable_reason(catalog, d, variants)}" for d in tiers)
    if spec.model.variants:
        return (
            f"no tier in [{listed}] can serve its variant ({why}); give each tier a variant in a "
            "format its runtime serves, or list tiers in spec.hardware that can serve yours"
        )
    model_format = spec.model.resolved_format()
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
