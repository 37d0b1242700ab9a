"""Status, pure: a LocalModel, its Placement and an Observation of its children -> LocalModelStatus.

``summary.py`` fills the plain-data observation of a model's children; ``compute_status``
turns it into the phase, the six conditions, backend, endpoint, replicas and model digest;
``status_patch`` gives the merge body to write, or None when nothing changed. Each condition is
read from the children in ``diagnosis.py``; this module assembles them.

Phases, first match wins:

- Failed: the spec can never work as written (an error from parsing or placement, a missing
  Secret, a failed pull Job, a digest mismatch); the Ready condition says what to change.
- Pulling: the pull Job (or the PerPod init container, before any pod is ready) is pulling.
- Pending: no Deployment yet.
- ScaledToZero: zero replicas by choice (``serving.replicas: 0``, or the gateway's scale to zero
  with ``autoscaling.minReplicas: 0``); a Deployment the operator holds at zero while the first
  pull runs is not one.
- Degraded: pods crash-loop or cannot start (image pull, admission, progress deadline), or
  replicas went missing after the model was Ready (a rollout of a new template is Deploying).
- Ready: readyReplicas >= desired replicas and the model is available.
- Deploying: everything else (pods scheduling, loading the model, rolling out).

No capacity on any tier is Placed=False/NoCapacity with Progressing=WaitingForCapacity, never
Failed. ``lastTransitionTime`` changes only when a condition's status changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import BaseModel
from slm_runtime.config import DEVICE_TIERS, Device

from slm_operator.api import LocalModel
from slm_operator.children import endpoint as service_endpoint
from slm_operator.children import selector_string
from slm_operator.conditions import (
    Condition,
    ConditionType,
    LocalModelStatus,
    ModelStatus,
    Phase,
    Reason,
)
from slm_operator.diagnosis import (
    FAILURE_REASONS,
    Cond,
    ModelState,
    available_condition,
    failure_of,
    fell_back_pod,
    fit_reason,
    kept_condition,
    missing_crd_note,
    model_condition,
    model_state,
    placed_condition,
    rollout_conditions,
    stalled_reason,
    zero_message,
)
from slm_operator.place import Placement
from slm_operator.spec import CacheMode, LocalModelSpec
from slm_operator.summary import (
    DeploymentSummary,
    Observation,
    PodSummary,
    clip,
    live_pods,
)

_CONDITION_ORDER: Final = tuple(ConditionType)


# --- small helpers ----------------------------------------------------------------------------


def rfc3339(moment: datetime) -> str:
    """RFC 3339 in UTC with seconds and a Z, as Kubernetes writes times."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def desired_replicas(spec: LocalModelSpec, deployment: DeploymentSummary | None) -> int:
    """Replicas the user asked for: the spec's, or the HPA's (or the gateway's) while
    autoscaling.

    Never a Deployment's zero otherwise: the operator holds the Deployment at zero replicas while
    the first pull runs, and that is not a scale to zero. The HPA never scales below 1, so a zero
    on an autoscaled Deployment is that hold, or, with ``minReplicas: 0``, the gateway's scale to
    zero.
    """
    if not spec.autoscaling.enabled:
        return spec.serving.replicas
    if deployment is not None and deployment.spec_replicas:
        return deployment.spec_replicas
    if spec.autoscaling.scales_to_zero:
        return 0 if deployment is not None and deployment.spec_replicas == 0 else 1
    return spec.autoscaling.min_replicas


# --- compute_status ---------------------------------------------------------------------------


def compute_status(
    lm: LocalModel,
    placement: Placement | None,
    observation: Observation | None,
    *,
    now: datetime,
    error: str | None = None,
    error_reason: Reason | None = None,
    endpoint: str | None = None,
    selector: str | None = None,
    rollout_wait: str | None = None,
) -> LocalModelStatus:
    """The status to store for ``lm``; ``lm.status`` is the previous one.

    ``error`` (with ``error_reason``, InvalidSpec by default) marks a spec that can never work:
    phase Failed with that message. Otherwise the phase follows the observation. An
    ``observation`` of None means the children were not read: replica counts and the Available
    condition are carried over from the previous status. ``endpoint`` and ``selector`` default to
    what ``render`` derives for the default cluster domain. ``rollout_wait`` says why the pods
    keep an older runtime image for now (the image rollout budget): Progressing tells it while
    nothing else is in progress.
    """
    old = lm.status
    obs = observation or Observation()
    spec = lm.spec
    deployment = obs.deployment
    desired = desired_replicas(spec, deployment)
    ready = deployment.ready_replicas if deployment else 0
    live = live_pods(obs)
    previous = {c.type: c for c in old.conditions}

    failure = failure_of(lm, obs, error, error_reason)
    model = model_state(lm, obs, live, ready)
    if (
        desired == 0
        and spec.autoscaling.scales_to_zero
        and spec.cache.mode is CacheMode.VOLUME
        and model.state != "available"
    ):
        desired = 1  # the hold until the volume is filled, not the gateway's zero
    if failure is None and model.state == "failed":
        failure = (model.reason, model.message)

    conds: dict[ConditionType, Cond] = {}
    fell_back = fell_back_pod(placement, live)
    conds[ConditionType.PLACED] = placed_condition(
        placement, previous.get(ConditionType.PLACED), fell_back
    )
    conds[ConditionType.MODEL_AVAILABLE] = model_condition(model, failure)
    conds[ConditionType.AVAILABLE] = available_condition(deployment, desired)
    if observation is None and ConditionType.AVAILABLE in previous:
        conds[ConditionType.AVAILABLE] = kept_condition(previous[ConditionType.AVAILABLE])
    progress_cond, degraded_cond = rollout_conditions(lm, placement, obs, live, desired, model)
    if rollout_wait and progress_cond.reason is Reason.ROLLOUT_COMPLETE:
        progress_cond = Cond(
            "True",
            Reason.ROLLOUT_IN_PROGRESS,
            clip(f"{progress_cond.message}; {rollout_wait}"),
        )

    if failure is not None:
        reason, message = failure
        phase = Phase.FAILED
        conds[ConditionType.READY] = Cond("False", fit_reason(ConditionType.READY, reason), message)
        conds[ConditionType.PROGRESSING] = Cond("False", stalled_reason(reason), message)
        conds[ConditionType.DEGRADED] = Cond(
            "True", fit_reason(ConditionType.DEGRADED, reason), message
        )
    else:
        phase = _phase(model, deployment, desired, degraded_cond)
        conds[ConditionType.PROGRESSING] = progress_cond
        conds[ConditionType.DEGRADED] = degraded_cond
        conds[ConditionType.READY] = _ready(spec, phase, model, deployment, desired, progress_cond)
    if conds[ConditionType.DEGRADED].status == "False":
        conds[ConditionType.DEGRADED] = missing_crd_note(spec, obs, conds[ConditionType.DEGRADED])

    generation = lm.metadata.generation
    seen = observation is not None
    placed = placement.device if placement else _placed_tier(old)
    return LocalModelStatus(
        phase=phase,
        backend=_serving_device(live, placed, old),
        placed_tier=placed,
        fallback_reason=_fallback_reason(spec, placement, old),
        model=_model_status(lm, model, placement),
        replicas=(deployment.replicas if deployment else 0) if seen else old.replicas,
        ready_replicas=ready if seen else old.ready_replicas,
        selector=selector or selector_string(lm),
        endpoint=endpoint or service_endpoint(lm),
        observed_generation=generation,
        conditions=_conditions(conds, previous, generation, now),
    )


def _fallback_reason(
    spec: LocalModelSpec, placement: Placement | None, old: LocalModelStatus
) -> str | None:
    """Placement's reason; else, below the preferred tier, the one recorded when stepping down."""
    if placement is None:
        return old.fallback_reason
    if placement.fallback_reason is not None:
        return placement.fallback_reason
    if placement.device is not spec.hardware.preferred and _placed_tier(old) is placement.device:
        return old.fallback_reason
    return None


def _placed_tier(old: LocalModelStatus) -> Device | None:
    """The tier a stored status was placed on (a status written before ``placedTier`` existed
    carried it in ``backend``)."""
    return old.placed_tier if old.placed_tier is not None else old.backend


_TIER_ORDER: Final = tuple(tier.device for tier in DEVICE_TIERS)


def _serving_device(
    live: list[PodSummary], placed: Device | None, old: LocalModelStatus
) -> Device | None:
    """The device the ready pods' runtimes serve on (the lowest, when they differ); before any
    has said, what the last status said for the same placed tier, else the placed tier."""
    reported = {p.device.device for p in live if p.ready and p.device is not None}
    if reported:
        return max(reported, key=_TIER_ORDER.index)
    if old.backend is not None and _placed_tier(old) is placed:
        return old.backend
    return placed


def failed_status(
    old: LocalModelStatus | None,
    *,
    generation: int,
    error: str,
    now: datetime,
    error_reason: Reason = Reason.INVALID_SPEC,
) -> LocalModelStatus:
    """Status for a LocalModel whose spec does not even parse: Failed with ``error``.

    What was known before (backend, endpoint, model, replicas and the Placed, ModelAvailable and
    Available conditions) is kept: the children are left as they were.
    """
    if error_reason not in FAILURE_REASONS:
        raise ValueError(f"{error_reason.value} is not a failure reason")
    old = old or LocalModelStatus()
    previous = {c.type: c for c in old.conditions}
    message = clip(error)
    unknown = {
        ConditionType.PLACED: Cond("Unknown", Reason.PLACED, "placement not evaluated"),
        ConditionType.MODEL_AVAILABLE: Cond(
            "Unknown", Reason.PULL_PENDING, "not pulled: the spec cannot be served"
        ),
        ConditionType.AVAILABLE: Cond(
            "Unknown", Reason.MINIMUM_REPLICAS_UNAVAILABLE, "not observed"
        ),
    }
    conds = {
        kind: kept_condition(previous[kind]) if kind in previous else cond
        for kind, cond in unknown.items()
    }
    conds[ConditionType.READY] = Cond(
        "False", fit_reason(ConditionType.READY, error_reason), message
    )
    conds[ConditionType.PROGRESSING] = Cond("False", stalled_reason(error_reason), message)
    conds[ConditionType.DEGRADED] = Cond(
        "True", fit_reason(ConditionType.DEGRADED, error_reason), message
    )
    return old.model_copy(
        update={
            "phase": Phase.FAILED,
            "observed_generation": generation,
            "conditions": _conditions(conds, previous, generation, now),
        }
    )


def _conditions(
    conds: Mapping[ConditionType, Cond],
    previous: Mapping[ConditionType, Condition],
    generation: int,
    now: datetime,
) -> list[Condition]:
    return [
        _condition(kind, conds[kind], previous.get(kind), generation, now)
        for kind in _CONDITION_ORDER
    ]


def _phase(
    model: ModelState, deployment: DeploymentSummary | None, desired: int, degraded: Cond
) -> Phase:
    ready = deployment.ready_replicas if deployment else 0
    if model.state == "pulling":
        return Phase.PULLING
    if deployment is not None and desired == 0:
        # Zero by choice (the spec's, or the gateway's for minReplicas 0). A PerPod or Image
        # model's pull happens in its next pod, so it need not be pulled to be at rest.
        return Phase.SCALED_TO_ZERO
    if deployment is None or desired == 0:
        return Phase.PENDING
    if degraded.status == "True":
        return Phase.DEGRADED
    if ready >= desired and model.state == "available":
        return Phase.READY
    return Phase.DEPLOYING


def _ready(
    spec: LocalModelSpec,
    phase: Phase,
    model: ModelState,
    deployment: DeploymentSummary | None,
    desired: int,
    progressing: Cond,
) -> Cond:
    if phase is Phase.READY:
        ready = deployment.ready_replicas if deployment else 0
        return Cond("True", Reason.MODEL_SERVING, f"{ready}/{desired} replicas ready")
    if phase is Phase.SCALED_TO_ZERO:
        return Cond("False", Reason.SCALED_TO_ZERO, zero_message(spec))
    if deployment is not None and desired == 0:
        return Cond("False", Reason.NOT_READY, "scaled to zero replicas")
    if phase is Phase.PENDING and model.state != "available":
        return Cond("False", Reason.NOT_READY, model.message)
    return Cond("False", Reason.NOT_READY, progressing.message)


def _condition(
    kind: ConditionType,
    cond: Cond,
    previous: Condition | None,
    generation: int,
    now: datetime,
) -> Condition:
    """A full condition; lastTransitionTime is kept while the status does not change."""
    if previous is not None and previous.status == cond.status:
        since = previous.last_transition_time
    else:
        since = rfc3339(now)
    return Condition(
        type=kind,
        status=cond.status,
        reason=cond.reason,
        message=cond.message,
        last_transition_time=since,
        observed_generation=generation,
    )


def _model_status(lm: LocalModel, model: ModelState, placement: Placement | None) -> ModelStatus:
    old = lm.status.model
    source = lm.spec.model.source
    same_source = old.source == source
    digest = model.digest or (old.digest if same_source else None)
    size = model.size_bytes
    if size is None and same_source and digest == old.digest:
        size = old.size_bytes
    if placement is not None:
        variant = placement.variant.name if placement.variant is not None else None
    else:
        variant = old.variant if same_source else None
    return ModelStatus(
        digest=digest,
        size_bytes=size,
        progress=model.progress if model.state == "pulling" else None,
        source=source,
        format=lm.spec.model.resolved_format() if source is not None else None,
        variant=variant,
    )


# --- writing status ---------------------------------------------------------------------------


def status_patch(
    old: LocalModelStatus | Mapping[str, Any] | None, new: LocalModelStatus
) -> dict[str, Any] | None:
    """The JSON merge patch body ``{"status": {...}}`` that turns ``old`` into ``new``.

    None when nothing changed, so an unchanged status is never written. ``old`` is what is
    stored: a LocalModelStatus parsed from the object (only the fields it sets count) or the raw
    ``status`` mapping. Removed fields are sent as null; lists (conditions) are sent whole.
    """
    if old is None:
        stored: dict[str, Any] = {}
    elif isinstance(old, LocalModelStatus):
        stored = old.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True)
    else:
        stored = dict(old)
    wanted = new.model_dump(mode="json", by_alias=True, exclude_none=True)
    delta = _merge_diff(stored, wanted, _STATUS_FIELDS)
    return {"status": delta} if delta else None


def _aliases(model: type[BaseModel]) -> frozenset[str]:
    return frozenset(f.alias or name for name, f in model.model_fields.items())


_STATUS_FIELDS: Final = _aliases(LocalModelStatus) | _aliases(ModelStatus)
"""Only fields of the status model are ever removed; keys written by others stay."""


def _merge_diff(
    old: Mapping[str, Any], new: Mapping[str, Any], owned: frozenset[str]
) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        if old[key] is not None and key in owned:
            delta[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            inner = _merge_diff(before, value, owned)
            if inner:
                delta[key] = inner
        elif before != value:
            delta[key] = value
    return delta


def transitions(old: LocalModelStatus | None, new: LocalModelStatus) -> list[Condition]:
    """Conditions of ``new`` whose status differs from ``old`` (for Events after the write)."""
    before = {c.type: c.status for c in old.conditions} if old else {}
    return [c for c in new.conditions if before.get(c.type) != c.status]


def runtime_fallback(old: LocalModelStatus | None, new: LocalModelStatus) -> str | None:
    """The Placed message when ``new`` is the first status saying that a runtime left the placed
    tier inside its pod (for the Event after the write), else None."""

    def fell_back(status: LocalModelStatus | None) -> Condition | None:
        placed = next(
            (c for c in (status.conditions if status else []) if c.type is ConditionType.PLACED),
            None,
        )
        return placed if placed and placed.reason is Reason.RUNTIME_FELL_BACK else None

    now = fell_back(new)
    return now.message if now is not None and fell_back(old) is None else None


VARIANT_SELECTED: Final = "VariantSelected"
"""The reason of the Event that says which variant a model serves, and why."""


def variant_choice(
    old: LocalModelStatus | None, new: LocalModelStatus, placement: Placement
) -> str | None:
    """The Event message when ``new`` names another variant than ``old`` (the first, or a
    switch after a step down), else None."""
    model = new.model
    if model.variant is None or (old is not None and old.model.variant == model.variant):
        return None
    fmt = f"{model.format.value} " if model.format is not None else ""
    tier = placement.device.value
    if placement.reason is Reason.PLACED:
        why = f"{tier} is the preferred tier and has room"
    else:
        why = new.fallback_reason or placement.reason.value
    return clip(f"serving variant {model.variant} ({fmt}{model.source}) on {tier}: {why}")
