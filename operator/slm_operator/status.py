"""Status, pure: a LocalModel, its Placement and an Observation of its children -> LocalModelStatus.

``summary.py`` fills the plain-data observation of a model's children; ``compute_status``
turns it into the phase, the six conditions, backend, endpoint, replicas and model digest;
``status_patch`` gives the merge body to write, or None when nothing changed.

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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from pydantic import BaseModel
from slm_runtime.config import MODEL_CORRUPT_MARKER, Device

from slm_operator.api import LocalModel
from slm_operator.conditions import (
    CONDITION_REASONS,
    Condition,
    ConditionType,
    LocalModelStatus,
    ModelStatus,
    Phase,
    Reason,
)
from slm_operator.place import Placement
from slm_operator.render import endpoint as service_endpoint
from slm_operator.render import selector_string
from slm_operator.spec import CacheMode, LocalModelSpec
from slm_operator.summary import (
    ConditionStatus,
    DeploymentSummary,
    ObjectCondition,
    Observation,
    PodSummary,
    clip,
    live_pods,
)

# --- constants --------------------------------------------------------------------------------

FAILURE_REASONS: Final = frozenset(
    {
        Reason.INVALID_SPEC,
        Reason.SECRET_NOT_FOUND,
        Reason.PULL_FAILED,
        Reason.DIGEST_MISMATCH,
        Reason.ACCESS_MODE_CONFLICT,
        Reason.MODEL_CORRUPT,
    }
)
"""Reasons that make a LocalModel Failed: the spec can never work as written."""

DIGEST_MISMATCH_MARKER: Final = "sha256 mismatch"
"""How the puller's error message starts when the fetched model does not match the pin."""

CRASH_REASONS: Final = frozenset({"CrashLoopBackOff"})
BROKEN_REASONS: Final = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)
"""Waiting reasons that do not resolve by themselves."""

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


@dataclass(frozen=True)
class _Cond:
    status: ConditionStatus
    reason: Reason
    message: str


@dataclass(frozen=True)
class _Model:
    """Where the model stands: available, pulling, waiting or failed."""

    state: Literal["available", "pulling", "pending", "failed"]
    reason: Reason
    message: str
    progress: str | None = None
    digest: str | None = None
    size_bytes: int | None = None


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

    failure = _failure(lm, obs, error, error_reason)
    model = _model_state(lm, obs, live, ready)
    if (
        desired == 0
        and spec.autoscaling.scales_to_zero
        and spec.cache.mode is CacheMode.VOLUME
        and model.state != "available"
    ):
        desired = 1  # the hold until the volume is filled, not the gateway's zero
    if failure is None and model.state == "failed":
        failure = (model.reason, model.message)

    conds: dict[ConditionType, _Cond] = {}
    fell_back = _runtime_fallback(placement, live)
    conds[ConditionType.PLACED] = _placed(placement, previous.get(ConditionType.PLACED), fell_back)
    conds[ConditionType.MODEL_AVAILABLE] = _model_condition(model, failure)
    conds[ConditionType.AVAILABLE] = _available(deployment, desired)
    if observation is None and ConditionType.AVAILABLE in previous:
        conds[ConditionType.AVAILABLE] = _kept(previous[ConditionType.AVAILABLE])
    progress_cond, degraded_cond = _rollout(lm, placement, obs, live, desired, model)
    if rollout_wait and progress_cond.reason is Reason.ROLLOUT_COMPLETE:
        progress_cond = _Cond(
            "True",
            Reason.ROLLOUT_IN_PROGRESS,
            clip(f"{progress_cond.message}; {rollout_wait}"),
        )

    if failure is not None:
        reason, message = failure
        phase = Phase.FAILED
        conds[ConditionType.READY] = _Cond("False", _fit(ConditionType.READY, reason), message)
        conds[ConditionType.PROGRESSING] = _Cond("False", _stalled_reason(reason), message)
        conds[ConditionType.DEGRADED] = _Cond("True", _fit(ConditionType.DEGRADED, reason), message)
    else:
        phase = _phase(model, deployment, desired, degraded_cond)
        conds[ConditionType.PROGRESSING] = progress_cond
        conds[ConditionType.DEGRADED] = degraded_cond
        conds[ConditionType.READY] = _ready(spec, phase, model, deployment, desired, progress_cond)
    if conds[ConditionType.DEGRADED].status == "False":
        conds[ConditionType.DEGRADED] = _missing_crd_note(spec, obs, conds[ConditionType.DEGRADED])

    generation = lm.metadata.generation
    seen = observation is not None
    placed = placement.device if placement else _placed_tier(old)
    return LocalModelStatus(
        phase=phase,
        backend=_serving_device(live, placed, old),
        placed_tier=placed,
        fallback_reason=_fallback_reason(spec, placement, old),
        model=_model_status(lm, model),
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


_TIER_ORDER: Final = (Device.NPU, Device.GPU, Device.CPU)


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


def _runtime_fallback(placement: Placement | None, live: list[PodSummary]) -> PodSummary | None:
    """The first ready pod whose runtime serves on another device than the placed tier."""
    if placement is None:
        return None
    return next(
        (
            p
            for p in live
            if p.ready and p.device is not None and p.device.device is not placement.device
        ),
        None,
    )


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
        ConditionType.PLACED: _Cond("Unknown", Reason.PLACED, "placement not evaluated"),
        ConditionType.MODEL_AVAILABLE: _Cond(
            "Unknown", Reason.PULL_PENDING, "not pulled: the spec cannot be served"
        ),
        ConditionType.AVAILABLE: _Cond(
            "Unknown", Reason.MINIMUM_REPLICAS_UNAVAILABLE, "not observed"
        ),
    }
    conds = {
        kind: _kept(previous[kind]) if kind in previous else cond for kind, cond in unknown.items()
    }
    conds[ConditionType.READY] = _Cond("False", _fit(ConditionType.READY, error_reason), message)
    conds[ConditionType.PROGRESSING] = _Cond("False", _stalled_reason(error_reason), message)
    conds[ConditionType.DEGRADED] = _Cond(
        "True", _fit(ConditionType.DEGRADED, error_reason), message
    )
    return old.model_copy(
        update={
            "phase": Phase.FAILED,
            "observed_generation": generation,
            "conditions": _conditions(conds, previous, generation, now),
        }
    )


def _kept(condition: Condition) -> _Cond:
    return _Cond(condition.status, condition.reason, condition.message)


def _conditions(
    conds: Mapping[ConditionType, _Cond],
    previous: Mapping[ConditionType, Condition],
    generation: int,
    now: datetime,
) -> list[Condition]:
    return [
        _condition(kind, conds[kind], previous.get(kind), generation, now)
        for kind in _CONDITION_ORDER
    ]


def _failure(
    lm: LocalModel, obs: Observation, error: str | None, error_reason: Reason | None
) -> tuple[Reason, str] | None:
    if error is not None:
        reason = error_reason or Reason.INVALID_SPEC
        if reason not in FAILURE_REASONS:
            raise ValueError(f"{reason.value} is not a failure reason")
        return reason, clip(error)
    if obs.missing_secrets:
        return Reason.SECRET_NOT_FOUND, _secrets_message(lm, obs.missing_secrets)
    return None


def _secrets_message(lm: LocalModel, missing: tuple[str, ...]) -> str:
    fields: dict[str, str] = {}
    if lm.spec.model.credentials_secret:
        fields[lm.spec.model.credentials_secret] = "spec.model.credentialsSecret"
    if lm.spec.serving.auth_secret:
        fields[lm.spec.serving.auth_secret] = "spec.serving.authSecret"
    for ref in lm.spec.runtime.image_pull_secrets:
        fields.setdefault(ref.name, "spec.runtime.imagePullSecrets")
    parts = []
    for name in sorted(set(missing)):
        where = f" (referenced by {fields[name]})" if name in fields else ""
        parts.append(f"Secret {name!r}{where}")
    return clip(
        f"{', '.join(parts)} not found in namespace {lm.metadata.namespace}; "
        "create it or change the reference"
    )


def _pull_failure(message: str, what: str) -> tuple[Reason, str]:
    if DIGEST_MISMATCH_MARKER in message.lower():
        return Reason.DIGEST_MISMATCH, clip(
            f"{what}: {message}; if the new content is expected, update spec.model.sha256"
        )
    return Reason.PULL_FAILED, clip(
        f"{what}: {message}; check spec.model.source and spec.model.credentialsSecret"
    )


def _model_state(lm: LocalModel, obs: Observation, live: list[PodSummary], ready: int) -> _Model:
    spec = lm.spec
    pin = f"sha256:{spec.model.sha256}" if spec.model.sha256 else None
    job = obs.pull_job
    info = obs.model

    # A pod that failed its pull (PerPod init container) with a digest mismatch never recovers.
    for pod in live:
        text = pod.last_termination_message or ""
        if DIGEST_MISMATCH_MARKER in text.lower():
            reason, message = _pull_failure(text, f"pod {pod.name}")
            return _Model("failed", reason, message)

    if spec.cache.mode is CacheMode.VOLUME and job is not None:
        if job.finished == "Failed":
            text = job.failure_message or "the pull Job failed"
            reason, message = _pull_failure(text, f"pull Job {job.name}")
            return _Model("failed", reason, message)
        if job.succeeded > 0 or job.finished == "Complete":
            result = job.result
            return _available_model(
                result.digest if result else (info.digest if info else pin),
                result.size_bytes if result else (info.size_bytes if info else None),
            )
        retry = f"; attempt {job.failed} failed: {job.failure_message}" if job.failed else ""
        shown = f" ({job.progress})" if job.progress else ""
        return _Model(
            "pulling",
            Reason.PULLING,
            clip(f"pull Job {job.name} is pulling {spec.model.source}{shown}{retry}"),
            progress=job.progress,
        )

    if ready > 0 or info is not None:
        return _available_model(info.digest if info else pin, info.size_bytes if info else None)

    old_model = lm.status.model
    previous = {c.type: c for c in lm.status.conditions}.get(ConditionType.MODEL_AVAILABLE)
    if (
        spec.cache.mode is CacheMode.VOLUME
        and job is None
        and previous is not None
        and previous.status == "True"
        and old_model.source == spec.model.source
    ):
        # The finished pull Job was cleaned up; the volume still holds the model.
        return _available_model(old_model.digest, old_model.size_bytes)

    if any(p.pulling for p in live):
        return _Model(
            "pulling", Reason.PULLING, clip(f"init container is pulling {spec.model.source}")
        )
    waiting = {
        CacheMode.VOLUME: "waiting for the pull Job",
        CacheMode.PER_POD: "waiting for a pod to pull the model",
        CacheMode.IMAGE: "waiting for a pod to mount the model image",
    }[spec.cache.mode]
    return _Model("pending", Reason.PULL_PENDING, waiting)


def _available_model(digest: str | None, size: int | None) -> _Model:
    detail = digest or "digest not reported yet"
    if size is not None:
        detail += f", {size} bytes"
    return _Model(
        "available", Reason.PULLED, f"model available ({detail})", digest=digest, size_bytes=size
    )


def _model_condition(model: _Model, failure: tuple[Reason, str] | None) -> _Cond:
    if model.state == "available":
        return _Cond("True", Reason.PULLED, model.message)
    if failure is not None and model.state != "failed":
        reason, message = failure
        if reason in CONDITION_REASONS[ConditionType.MODEL_AVAILABLE]:
            return _Cond("False", reason, message)
        return _Cond("Unknown", Reason.PULL_PENDING, "not pulled: the spec cannot be served")
    return _Cond("False", model.reason, model.message)


def _placed(
    placement: Placement | None, previous: Condition | None, fell_back: PodSummary | None
) -> _Cond:
    if placement is None:
        if previous is not None:
            return _kept(previous)
        return _Cond("Unknown", Reason.PLACED, "placement not evaluated")
    where = f"{placement.device.value} ({placement.option})"
    if fell_back is not None and fell_back.device is not None and placement.placed:
        why = "; ".join(f"{device}: {error}" for device, error in fell_back.device.fallback)
        skipped = (
            f"; skipped {placement.fallback_reason}" if placement.reason is Reason.FELL_BACK else ""
        )
        return _Cond(
            "True",
            Reason.RUNTIME_FELL_BACK,
            clip(
                f"on {where}{skipped}; the runtime in pod {fell_back.name} serves on "
                f"{fell_back.device.device.value}" + (f" ({why})" if why else "")
            ),
        )
    if not placement.placed:
        skipped = placement.fallback_reason or "no tier has capacity"
        return _Cond(
            "False",
            Reason.NO_CAPACITY,
            clip(
                f"no tier has capacity ({skipped}); placed on {where} anyway so a cluster "
                "autoscaler can add a node"
            ),
        )
    if placement.reason is Reason.FELL_BACK:
        return _Cond(
            "True", Reason.FELL_BACK, clip(f"on {where}; skipped {placement.fallback_reason}")
        )
    return _Cond("True", Reason.PLACED, f"on {where}")


def _available(deployment: DeploymentSummary | None, desired: int) -> _Cond:
    if deployment is None:
        return _Cond("False", Reason.MINIMUM_REPLICAS_UNAVAILABLE, "Deployment not created yet")
    if desired == 0:
        return _Cond("True", Reason.SCALED_TO_ZERO, "scaled to zero replicas")
    counts = f"{deployment.available_replicas}/{desired} replicas available"
    if deployment.available_replicas > 0:
        return _Cond("True", Reason.MINIMUM_REPLICAS_AVAILABLE, counts)
    if deployment.spec_replicas == 0:
        counts += "; the Deployment is held at 0 replicas until the model is pulled"
    return _Cond("False", Reason.MINIMUM_REPLICAS_UNAVAILABLE, counts)


def _rollout(
    lm: LocalModel,
    placement: Placement | None,
    obs: Observation,
    live: list[PodSummary],
    desired: int,
    model: _Model,
) -> tuple[_Cond, _Cond]:
    """Progressing and Degraded, from the Deployment and its pods."""
    deployment = obs.deployment
    old = lm.status
    ready = deployment.ready_replicas if deployment else 0
    counts = f"{ready}/{desired} replicas ready"

    # Degraded: something is wrong that does not fix itself.
    degraded = _Cond("False", Reason.AS_EXPECTED, "no problems observed")
    crashing = [p for p in live if not p.ready and (p.restart_count > 0 or _crash(p))]
    broken = [p for p in live if p.waiting_reason in BROKEN_REASONS]
    rolling = deployment is not None and (
        deployment.observed_generation < deployment.generation
        or deployment.updated_replicas < desired
    )
    corrupt = [p for p in crashing if MODEL_CORRUPT_MARKER in (p.last_termination_message or "")]
    out_of_memory = [p for p in crashing if p.out_of_memory]
    if corrupt:
        problem = _pod_problem(corrupt[0])
        degraded = _Cond("True", Reason.MODEL_CORRUPT, clip(f"{counts}; {problem}"))
    elif out_of_memory:
        degraded = _Cond(
            "True", Reason.OUT_OF_MEMORY, clip(f"{counts}; {_out_of_memory(out_of_memory[0])}")
        )
    elif crashing:
        degraded = _Cond(
            "True", Reason.CRASH_LOOPING, clip(f"{counts}; {_pod_problem(crashing[0])}")
        )
    elif broken:
        degraded = _Cond(
            "True", Reason.REPLICAS_UNAVAILABLE, clip(f"{counts}; {_pod_problem(broken[0])}")
        )
    elif deployment is not None and _is_true(deployment.replica_failure):
        message = deployment.replica_failure.message if deployment.replica_failure else ""
        degraded = _Cond("True", Reason.REPLICAS_UNAVAILABLE, clip(f"{counts}; {message}"))
    elif (
        deployment is not None
        and deployment.progressing is not None
        and deployment.progressing.status == "False"
    ):
        degraded = _Cond(
            "True",
            Reason.REPLICAS_UNAVAILABLE,
            clip(f"{counts}; {deployment.progressing.message}"),
        )
    elif (
        deployment is not None
        and ready < desired
        and not rolling
        and (
            (old.phase is Phase.READY and ready < old.ready_replicas) or old.phase is Phase.DEGRADED
        )
    ):
        degraded = _Cond(
            "True", Reason.REPLICAS_UNAVAILABLE, clip(f"{counts}{_unschedulable_note(live)}")
        )

    # Progressing: what the operator and the cluster are working on.
    unschedulable = [p for p in live if p.unschedulable_since is not None]
    if model.state == "pulling":
        progressing = _Cond("True", Reason.PULLING, model.message)
    elif deployment is None:
        progressing = _Cond("True", Reason.RECONCILING, _pending_message(model))
    elif unschedulable or (placement is not None and not placement.placed and ready < desired):
        detail = _unschedulable_note(live) or "; no node has capacity for the pods"
        progressing = _Cond("True", Reason.WAITING_FOR_CAPACITY, clip(f"{counts}{detail}"))
    elif deployment.progressing is not None and deployment.progressing.status == "False":
        progressing = _Cond(
            "False",
            Reason.ROLLOUT_IN_PROGRESS,
            clip(f"{counts}; {deployment.progressing.message}"),
        )
    elif rolling or ready < desired:
        progressing = _Cond("True", Reason.ROLLOUT_IN_PROGRESS, counts)
    else:
        progressing = _Cond("False", Reason.ROLLOUT_COMPLETE, counts)
    return progressing, degraded


def _pending_message(model: _Model) -> str:
    if model.state == "available":
        return "creating the Deployment"
    return model.message


def _crash(pod: PodSummary) -> bool:
    return pod.waiting_reason in CRASH_REASONS


def _is_true(condition: ObjectCondition | None) -> bool:
    return condition is not None and condition.status == "True"


def _pod_problem(pod: PodSummary) -> str:
    where = f"pod {pod.name}" + (f" container {pod.container}" if pod.container else "")
    details = []
    if pod.waiting_reason:
        waiting = f" ({pod.waiting_message})" if pod.waiting_message else ""
        details.append(pod.waiting_reason + waiting)
    if pod.restart_count:
        details.append(f"restarted {pod.restart_count} times")
    if pod.last_termination_message:
        details.append(f"last exit: {pod.last_termination_message}")
    return f"{where}: {', '.join(details)}" if details else where


def _out_of_memory(pod: PodSummary) -> str:
    limit = f"its memory limit of {pod.memory_limit}" if pod.memory_limit else "the node's memory"
    restarts = f", restarted {pod.restart_count} times" if pod.restart_count else ""
    return (
        f"pod {pod.name} container {pod.out_of_memory} was OOMKilled: the model needs more than "
        f"{limit}{restarts}; raise spec.resources.limits.memory (and requests.memory), or lower "
        "parameters.contextLength or serving.parallel"
    )


def _unschedulable_note(live: list[PodSummary]) -> str:
    pods = [p for p in live if p.unschedulable_since is not None]
    if not pods:
        return ""
    message = pods[0].scheduler_message or "no reason given"
    return f"; {len(pods)} pod(s) unschedulable: {message}"


def _phase(
    model: _Model, deployment: DeploymentSummary | None, desired: int, degraded: _Cond
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
    model: _Model,
    deployment: DeploymentSummary | None,
    desired: int,
    progressing: _Cond,
) -> _Cond:
    if phase is Phase.READY:
        ready = deployment.ready_replicas if deployment else 0
        return _Cond("True", Reason.MODEL_SERVING, f"{ready}/{desired} replicas ready")
    if phase is Phase.SCALED_TO_ZERO:
        return _Cond("False", Reason.SCALED_TO_ZERO, _zero_message(spec))
    if deployment is not None and desired == 0:
        return _Cond("False", Reason.NOT_READY, "scaled to zero replicas")
    if phase is Phase.PENDING and model.state != "available":
        return _Cond("False", Reason.NOT_READY, model.message)
    return _Cond("False", Reason.NOT_READY, progressing.message)


def _zero_message(spec: LocalModelSpec) -> str:
    if spec.autoscaling.scales_to_zero:
        return (
            f"scaled to zero replicas after {spec.autoscaling.scale_to_zero_after} without "
            "requests; the gateway scales it to 1 on the next request it receives"
        )
    return "scaled to zero replicas: spec.serving.replicas is 0; set it (or kubectl scale lm) to 1"


def _missing_crd_note(spec: LocalModelSpec, obs: Observation, degraded: _Cond) -> _Cond:
    """A note on a healthy model: a child the spec asks for is not made, its CRD is missing."""
    notes: list[tuple[Reason, str]] = []
    if spec.monitoring.service_monitor and not obs.service_monitor_crd:
        notes.append(
            (
                Reason.SERVICE_MONITOR_UNSUPPORTED,
                "no ServiceMonitor created: the monitoring.coreos.com CRD is not installed; "
                "install the Prometheus Operator CRDs or set spec.monitoring.serviceMonitor: false",
            )
        )
    if spec.serving.inference_pool.enabled and not obs.inference_pool_crd:
        notes.append(
            (
                Reason.INFERENCE_POOL_UNSUPPORTED,
                "no InferencePool created: the inference.networking.k8s.io CRD is not installed; "
                "install the Gateway API Inference Extension CRDs or set "
                "spec.serving.inferencePool.enabled: false",
            )
        )
    if not notes:
        return degraded
    return _Cond("False", notes[0][0], "; ".join(message for _, message in notes))


def _fit(kind: ConditionType, reason: Reason) -> Reason:
    """``reason`` when the condition type allows it, else the type's generic not-ready reason."""
    if reason in CONDITION_REASONS[kind]:
        return reason
    return {
        ConditionType.READY: Reason.NOT_READY,
        ConditionType.DEGRADED: Reason.REPLICAS_UNAVAILABLE,
    }[kind]


def _stalled_reason(reason: Reason) -> Reason:
    """The Progressing reason for a Failed LocalModel: the step it is stuck at."""
    if reason is Reason.INVALID_SPEC:
        return Reason.INVALID_SPEC
    if reason in {Reason.PULL_FAILED, Reason.DIGEST_MISMATCH, Reason.ACCESS_MODE_CONFLICT}:
        return Reason.PULLING
    return Reason.RECONCILING


def _condition(
    kind: ConditionType,
    cond: _Cond,
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


def _model_status(lm: LocalModel, model: _Model) -> ModelStatus:
    old = lm.status.model
    same_source = old.source == lm.spec.model.source
    digest = model.digest or (old.digest if same_source else None)
    size = model.size_bytes
    if size is None and same_source and digest == old.digest:
        size = old.size_bytes
    return ModelStatus(
        digest=digest,
        size_bytes=size,
        progress=model.progress if model.state == "pulling" else None,
        source=lm.spec.model.source,
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
