"""What a model's children say, condition by condition, pure: where the model stands (pulled,
pulling, failed), its placement, its availability, its rollout and what is wrong with a pod.
``status.compute_status`` assembles these into the conditions and the phase."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from slm_runtime.config import MODEL_CORRUPT_MARKER

from slm_operator.api import LocalModel
from slm_operator.conditions import (
    CONDITION_REASONS,
    Condition,
    ConditionType,
    Phase,
    Reason,
)
from slm_operator.place import Placement
from slm_operator.spec import CacheMode, LocalModelSpec
from slm_operator.summary import (
    ConditionStatus,
    DeploymentSummary,
    ObjectCondition,
    Observation,
    PodSummary,
    clip,
)
from slm_operator.variants import ModelSpec

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


@dataclass(frozen=True)
class Cond:
    status: ConditionStatus
    reason: Reason
    message: str


@dataclass(frozen=True)
class ModelState:
    """Where the model stands: available, pulling, waiting or failed."""

    state: Literal["available", "pulling", "pending", "failed"]
    reason: Reason
    message: str
    progress: str | None = None
    digest: str | None = None
    size_bytes: int | None = None


def fell_back_pod(placement: Placement | None, live: list[PodSummary]) -> PodSummary | None:
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


def kept_condition(condition: Condition) -> Cond:
    return Cond(condition.status, condition.reason, condition.message)


def failure_of(
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
        fields[lm.spec.model.credentials_secret] = lm.spec.model.field("credentialsSecret")
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


def _pull_failure(model: ModelSpec, message: str, what: str) -> tuple[Reason, str]:
    if DIGEST_MISMATCH_MARKER in message.lower():
        return Reason.DIGEST_MISMATCH, clip(
            f"{what}: {message}; if the new content is expected, update {model.field('sha256')}"
        )
    return Reason.PULL_FAILED, clip(
        f"{what}: {message}; check {model.field('source')} and {model.field('credentialsSecret')}"
    )


def model_state(lm: LocalModel, obs: Observation, live: list[PodSummary], ready: int) -> ModelState:
    spec = lm.spec
    pin = f"sha256:{spec.model.sha256}" if spec.model.sha256 else None
    job = obs.pull_job
    info = obs.model

    # A pod that failed its pull (PerPod init container) with a digest mismatch never recovers.
    for pod in live:
        text = pod.last_termination_message or ""
        if DIGEST_MISMATCH_MARKER in text.lower():
            reason, message = _pull_failure(spec.model, text, f"pod {pod.name}")
            return ModelState("failed", reason, message)

    if spec.cache.mode is CacheMode.VOLUME and job is not None:
        if job.finished == "Failed":
            text = job.failure_message or "the pull Job failed"
            reason, message = _pull_failure(spec.model, text, f"pull Job {job.name}")
            return ModelState("failed", reason, message)
        if job.succeeded > 0 or job.finished == "Complete":
            result = job.result
            return _available_model(
                result.digest if result else (info.digest if info else pin),
                result.size_bytes if result else (info.size_bytes if info else None),
            )
        retry = f"; attempt {job.failed} failed: {job.failure_message}" if job.failed else ""
        shown = f" ({job.progress})" if job.progress else ""
        return ModelState(
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
        return ModelState(
            "pulling", Reason.PULLING, clip(f"init container is pulling {spec.model.source}")
        )
    waiting = {
        CacheMode.VOLUME: "waiting for the pull Job",
        CacheMode.PER_POD: "waiting for a pod to pull the model",
        CacheMode.IMAGE: "waiting for a pod to mount the model image",
    }[spec.cache.mode]
    return ModelState("pending", Reason.PULL_PENDING, waiting)


def _available_model(digest: str | None, size: int | None) -> ModelState:
    detail = digest or "digest not reported yet"
    if size is not None:
        detail += f", {size} bytes"
    return ModelState(
        "available", Reason.PULLED, f"model available ({detail})", digest=digest, size_bytes=size
    )


def model_condition(model: ModelState, failure: tuple[Reason, str] | None) -> Cond:
    if model.state == "available":
        return Cond("True", Reason.PULLED, model.message)
    if failure is not None and model.state != "failed":
        reason, message = failure
        if reason in CONDITION_REASONS[ConditionType.MODEL_AVAILABLE]:
            return Cond("False", reason, message)
        return Cond("Unknown", Reason.PULL_PENDING, "not pulled: the spec cannot be served")
    return Cond("False", model.reason, model.message)


def placed_condition(
    placement: Placement | None, previous: Condition | None, fell_back: PodSummary | None
) -> Cond:
    if placement is None:
        if previous is not None:
            return kept_condition(previous)
        return Cond("Unknown", Reason.PLACED, "placement not evaluated")
    where = f"{placement.device.value} ({placement.option})"
    if fell_back is not None and fell_back.device is not None and placement.placed:
        why = "; ".join(f"{device}: {error}" for device, error in fell_back.device.fallback)
        skipped = (
            f"; skipped {placement.fallback_reason}" if placement.reason is Reason.FELL_BACK else ""
        )
        return Cond(
            "True",
            Reason.RUNTIME_FELL_BACK,
            clip(
                f"on {where}{skipped}; the runtime in pod {fell_back.name} serves on "
                f"{fell_back.device.device.value}" + (f" ({why})" if why else "")
            ),
        )
    if not placement.placed:
        skipped = placement.fallback_reason or "no tier has capacity"
        return Cond(
            "False",
            Reason.NO_CAPACITY,
            clip(
                f"no tier has capacity ({skipped}); placed on {where} anyway so a cluster "
                "autoscaler can add a node"
            ),
        )
    if placement.reason is Reason.FELL_BACK:
        return Cond(
            "True", Reason.FELL_BACK, clip(f"on {where}; skipped {placement.fallback_reason}")
        )
    return Cond("True", Reason.PLACED, f"on {where}")


def available_condition(deployment: DeploymentSummary | None, desired: int) -> Cond:
    if deployment is None:
        return Cond("False", Reason.MINIMUM_REPLICAS_UNAVAILABLE, "Deployment not created yet")
    if desired == 0:
        return Cond("True", Reason.SCALED_TO_ZERO, "scaled to zero replicas")
    counts = f"{deployment.available_replicas}/{desired} replicas available"
    if deployment.available_replicas > 0:
        return Cond("True", Reason.MINIMUM_REPLICAS_AVAILABLE, counts)
    if deployment.spec_replicas == 0:
        counts += "; the Deployment is held at 0 replicas until the model is pulled"
    return Cond("False", Reason.MINIMUM_REPLICAS_UNAVAILABLE, counts)


def rollout_conditions(
    lm: LocalModel,
    placement: Placement | None,
    obs: Observation,
    live: list[PodSummary],
    desired: int,
    model: ModelState,
) -> tuple[Cond, Cond]:
    """Progressing and Degraded, from the Deployment and its pods."""
    deployment = obs.deployment
    old = lm.status
    ready = deployment.ready_replicas if deployment else 0
    counts = f"{ready}/{desired} replicas ready"

    # Degraded: something is wrong that does not fix itself.
    degraded = Cond("False", Reason.AS_EXPECTED, "no problems observed")
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
        degraded = Cond("True", Reason.MODEL_CORRUPT, clip(f"{counts}; {problem}"))
    elif out_of_memory:
        degraded = Cond(
            "True", Reason.OUT_OF_MEMORY, clip(f"{counts}; {_out_of_memory(out_of_memory[0])}")
        )
    elif crashing:
        degraded = Cond(
            "True", Reason.CRASH_LOOPING, clip(f"{counts}; {_pod_problem(crashing[0])}")
        )
    elif broken:
        degraded = Cond(
            "True", Reason.REPLICAS_UNAVAILABLE, clip(f"{counts}; {_pod_problem(broken[0])}")
        )
    elif deployment is not None and _is_true(deployment.replica_failure):
        message = deployment.replica_failure.message if deployment.replica_failure else ""
        degraded = Cond("True", Reason.REPLICAS_UNAVAILABLE, clip(f"{counts}; {message}"))
    elif (
        deployment is not None
        and deployment.progressing is not None
        and deployment.progressing.status == "False"
    ):
        degraded = Cond(
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
        degraded = Cond(
            "True", Reason.REPLICAS_UNAVAILABLE, clip(f"{counts}{_unschedulable_note(live)}")
        )

    # Progressing: what the operator and the cluster are working on.
    unschedulable = [p for p in live if p.unschedulable_since is not None]
    if model.state == "pulling":
        progressing = Cond("True", Reason.PULLING, model.message)
    elif deployment is None:
        progressing = Cond("True", Reason.RECONCILING, _pending_message(model))
    elif unschedulable or (placement is not None and not placement.placed and ready < desired):
        detail = _unschedulable_note(live) or "; no node has capacity for the pods"
        progressing = Cond("True", Reason.WAITING_FOR_CAPACITY, clip(f"{counts}{detail}"))
    elif deployment.progressing is not None and deployment.progressing.status == "False":
        progressing = Cond(
            "False",
            Reason.ROLLOUT_IN_PROGRESS,
            clip(f"{counts}; {deployment.progressing.message}"),
        )
    elif rolling or ready < desired:
        progressing = Cond("True", Reason.ROLLOUT_IN_PROGRESS, counts)
    else:
        progressing = Cond("False", Reason.ROLLOUT_COMPLETE, counts)
    return progressing, degraded


def _pending_message(model: ModelState) -> str:
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


def zero_message(spec: LocalModelSpec) -> str:
    if spec.autoscaling.scales_to_zero:
        return (
            f"scaled to zero replicas after {spec.autoscaling.scale_to_zero_after} without "
            "requests; the gateway scales it to 1 on the next request it receives"
        )
    return "scaled to zero replicas: spec.serving.replicas is 0; set it (or kubectl scale lm) to 1"


def missing_crd_note(spec: LocalModelSpec, obs: Observation, degraded: Cond) -> Cond:
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
    return Cond("False", notes[0][0], "; ".join(message for _, message in notes))


def fit_reason(kind: ConditionType, reason: Reason) -> Reason:
    """``reason`` when the condition type allows it, else the type's generic not-ready reason."""
    if reason in CONDITION_REASONS[kind]:
        return reason
    return {
        ConditionType.READY: Reason.NOT_READY,
        ConditionType.DEGRADED: Reason.REPLICAS_UNAVAILABLE,
    }[kind]


def stalled_reason(reason: Reason) -> Reason:
    """The Progressing reason for a Failed LocalModel: the step it is stuck at."""
    if reason is Reason.INVALID_SPEC:
        return Reason.INVALID_SPEC
    if reason in {Reason.PULL_FAILED, Reason.DIGEST_MISMATCH, Reason.ACCESS_MODE_CONFLICT}:
        return Reason.PULLING
    return Reason.RECONCILING
