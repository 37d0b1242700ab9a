"""Summaries, pure: live Kubernetes objects (from the watch caches) -> the plain data that
placement and status read.

Nothing here calls the API: the operator's watches keep the objects current, and these functions
only translate them. Nodes become ``NodeInfo``, a model's children an ``Observation``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final, Literal

from pydantic import ValidationError
from slm_runtime.config import Device, PullResult

from slm_operator.sizing import parse_quantity

# --- the summaries: plain data that placement and status read --------------------------------

ConditionStatus = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class ObjectCondition:
    """One condition of a child object (a Deployment's Progressing, Available, ReplicaFailure)."""

    status: ConditionStatus
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class DeploymentSummary:
    """The runtime Deployment as observed; ``Observation.deployment`` is None when it is absent."""

    generation: int = 0
    observed_generation: int = 0
    spec_replicas: int | None = None
    """``spec.replicas`` (set by the HPA while autoscaling); None when the field is unset."""
    replicas: int = 0
    ready_replicas: int = 0
    updated_replicas: int = 0
    available_replicas: int = 0
    progressing: ObjectCondition | None = None
    available: ObjectCondition | None = None
    replica_failure: ObjectCondition | None = None
    """The ReplicaFailure condition, e.g. pods rejected by admission (Pod Security, quota)."""


@dataclass(frozen=True)
class JobSummary:
    """The pull Job as observed; ``Observation.pull_job`` is None when it is absent."""

    name: str = ""
    active: int = 0
    succeeded: int = 0
    failed: int = 0
    finished: Literal["Complete", "Failed"] | None = None
    """The Job's terminal condition (Complete or Failed with status True), if any."""
    result: PullResult | None = None
    """The pull container's termination message parsed as PullResult (on success)."""
    failure_message: str | None = None
    """The failed pull container's termination message, else the Job's Failed condition message."""
    progress: str | None = None
    """Pull progress text such as ``37%``, when known."""


@dataclass(frozen=True)
class RuntimeDevice:
    """The device a runtime pod serves on, as its /readyz answer says, and why it left the ones
    before it (device -> the engine's error)."""

    device: Device
    fallback: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class PodSummary:
    """One runtime pod as observed.

    ``waiting_*`` and ``container`` describe the first container (init containers included) that
    waits for a reason other than ContainerCreating or PodInitializing.
    """

    name: str
    phase: str = "Pending"
    ready: bool = False
    waiting_reason: str | None = None
    waiting_message: str | None = None
    container: str | None = None
    last_termination_message: str | None = None
    """The message of the last terminated state of a container that restarted or failed."""
    out_of_memory: str | None = None
    """A container the kernel killed for going over its memory limit (OOMKilled), last time it
    ended."""
    memory_limit: str | None = None
    """That container's memory limit, as its pod spec has it (None: no limit)."""
    restart_count: int = 0
    unschedulable_since: datetime | None = None
    """lastTransitionTime of ``PodScheduled=False, reason=Unschedulable``."""
    scheduler_message: str | None = None
    pulling: bool = False
    """The pull init container is running (PerPod cache mode)."""
    terminating: bool = False
    device: RuntimeDevice | None = None
    """What the ready pod's runtime reported it serves on; None until it has been read."""


@dataclass(frozen=True)
class ModelInfo:
    """What the runtime reports it serves (from /api/show or the puller's metadata file)."""

    digest: str
    size_bytes: int | None = None


@dataclass(frozen=True)
class Observation:
    """Everything status needs to know about a LocalModel's children, as plain data."""

    deployment: DeploymentSummary | None = None
    pull_job: JobSummary | None = None
    pods: tuple[PodSummary, ...] = ()
    service_monitor_crd: bool = True
    """Whether the monitoring.coreos.com ServiceMonitor CRD is installed."""
    inference_pool_crd: bool = True
    """Whether the inference.networking.k8s.io InferencePool CRD is installed."""
    missing_secrets: tuple[str, ...] = ()
    """Names of referenced Secrets that do not exist in the namespace."""
    model: ModelInfo | None = None
    pull_jobs: tuple[PullJobSeen, ...] = ()
    """Every pull Job of the model; ``for_pull_job`` makes one of them ``pull_job``."""
    pod_missing_secrets: tuple[str, ...] = ()
    """The missing Secrets that the runtime pods name (the pull Job's pods name their own)."""
    pod_model: ModelInfo | None = None
    """What the runtime pods' own init containers pulled (PerPod cache)."""

    def for_pull_job(self, name: str | None) -> Observation:
        """The observation with ``name`` as the pull Job that the spec renders now (None: it
        renders none): the Job, its pods' missing Secrets, and what it pulled."""
        seen = next((j for j in self.pull_jobs if j.job.name == name), None) if name else None
        if seen is None:
            return replace(
                self,
                pull_job=None,
                missing_secrets=self.pod_missing_secrets,
                model=self.pod_model,
            )
        missing = sorted({*self.pod_missing_secrets, *seen.missing_secrets})
        return replace(
            self,
            pull_job=seen.job,
            missing_secrets=tuple(missing),
            model=model_info(seen.job.result) if seen.job.result else None,
        )

    def with_applied(
        self, deployment: DeploymentSummary | None, pull_job: PullJobSeen | None
    ) -> Observation:
        """The observation after an apply: the API server's answers for the Deployment and the
        pull Job (None: not applied), the pull progress read before kept."""
        obs = self
        if deployment is not None:
            obs = replace(obs, deployment=deployment)
        if pull_job is not None:
            before = self.pull_job
            kept = before.progress if before and before.name == pull_job.job.name else None
            job = replace(pull_job.job, progress=kept)
            others = tuple(j for j in obs.pull_jobs if j.job.name != job.name)
            obs = replace(obs, pull_jobs=(*others, replace(pull_job, job=job)))
            obs = obs.for_pull_job(job.name)
        return obs


@dataclass(frozen=True)
class PullJobSeen:
    """One pull Job of the model, and the Secrets its pods found missing."""

    job: JobSummary
    missing_secrets: tuple[str, ...] = ()


@dataclass(frozen=True)
class NodeInfo:
    """What placement needs to know about one node (filled by ``node_info``)."""

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


MAX_MESSAGE: Final = 1024
"""Longest message status and Events carry; longer ones are cut with an ellipsis."""


def clip(text: str) -> str:
    """One line of at most ``MAX_MESSAGE`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def live_pods(observation: Observation) -> list[PodSummary]:
    """The runtime pods not being deleted, by name (so the pod a message names does not depend
    on the order pods were listed in)."""
    return sorted((p for p in observation.pods if not p.terminating), key=lambda p: p.name)


log = logging.getLogger(__name__)

_BENIGN_WAITING: Final = frozenset({"ContainerCreating", "PodInitializing"})
PULL_CONTAINER: Final = "pull"
_MISSING_SECRET = re.compile(r'secrets? "([^"]+)" not found')

Obj = Mapping[str, Any]


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _condition(obj: Obj, kind: str) -> ObjectCondition | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return ObjectCondition(
                status=cond.get("status", "Unknown"),
                reason=cond.get("reason", ""),
                message=cond.get("message", ""),
            )
    return None


def deployment_summary(obj: Obj) -> DeploymentSummary:
    """A Deployment's replica counts and conditions."""
    status = obj.get("status") or {}
    spec = obj.get("spec") or {}
    return DeploymentSummary(
        generation=obj["metadata"].get("generation", 0),
        observed_generation=status.get("observedGeneration", 0),
        spec_replicas=spec.get("replicas"),
        replicas=status.get("replicas", 0),
        ready_replicas=status.get("readyReplicas", 0),
        updated_replicas=status.get("updatedReplicas", 0),
        available_replicas=status.get("availableReplicas", 0),
        progressing=_condition(obj, "Progressing"),
        available=_condition(obj, "Available"),
        replica_failure=_condition(obj, "ReplicaFailure"),
    )


def _termination_messages(pod: Obj) -> list[tuple[str, str | None]]:
    """(exit-state, message) of every terminated container of a pod."""
    status = pod.get("status") or {}
    found = []
    for cs in [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]:
        for state_key in ("state", "lastState"):
            terminated = (cs.get(state_key) or {}).get("terminated")
            if terminated:
                ok = "ok" if terminated.get("exitCode") == 0 else "failed"
                found.append((ok, terminated.get("message")))
    return found


def parse_pull_result(message: str | None) -> PullResult | None:
    """The puller's termination message as a PullResult, if it is one."""
    if not message:
        return None
    try:
        return PullResult.model_validate(json.loads(message))
    except (ValueError, ValidationError):
        return None


def job_summary(obj: Obj, pods: Iterable[Obj]) -> JobSummary:
    """The pull Job, with its pod's termination message read as the pull result."""
    status = obj.get("status") or {}
    finished = None
    for kind in ("Complete", "Failed"):
        cond = _condition(obj, kind)
        if cond and cond.status == "True":
            finished = kind
    result = None
    failure = None
    for pod in pods:
        for state, message in _termination_messages(pod):
            if state == "ok" and result is None:
                result = parse_pull_result(message)
            elif state == "failed" and message:
                failure = message.strip()
    if finished == "Failed" and not failure:
        failed = _condition(obj, "Failed")
        failure = failed.message if failed else "the pull Job failed"
    return JobSummary(
        name=obj["metadata"]["name"],
        active=status.get("active", 0),
        succeeded=status.get("succeeded", 0),
        failed=status.get("failed", 0),
        finished=finished,  # type: ignore[arg-type]
        result=result,
        failure_message=failure,
    )


def _memory_limit(spec: Obj, container: str) -> str | None:
    """A container's memory limit from a pod spec (init containers included)."""
    for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        if c.get("name") == container:
            limit = ((c.get("resources") or {}).get("limits") or {}).get("memory")
            return str(limit) if limit is not None else None
    return None


def pod_summary(obj: Obj, template: Obj | None = None) -> PodSummary:
    """A runtime pod's phase, readiness, waiting reason and scheduling state."""
    status = obj.get("status") or {}
    meta = obj["metadata"]
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    unschedulable_since = None
    scheduler_message = None
    for cond in status.get("conditions") or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            unschedulable_since = _time(cond.get("lastTransitionTime"))
            scheduler_message = cond.get("message")
    waiting_reason = waiting_message = container = out_of_memory = reported_limit = None
    restarts = 0
    pulling = False
    last_message = None
    containers = status.get("containerStatuses") or []
    statuses = [*(status.get("initContainerStatuses") or []), *containers]
    for cs in statuses:
        restarts += cs.get("restartCount", 0)
        state = cs.get("state") or {}
        if cs.get("name") == PULL_CONTAINER and "running" in state:
            pulling = True
        waiting = state.get("waiting")
        if waiting and waiting.get("reason") not in _BENIGN_WAITING and waiting_reason is None:
            waiting_reason = waiting.get("reason")
            waiting_message = waiting.get("message")
            container = cs.get("name")
        terminated = (cs.get("lastState") or {}).get("terminated") or state.get("terminated")
        if terminated and terminated.get("exitCode") not in (0, None) and terminated.get("message"):
            last_message = terminated["message"].strip()
        # The server's own kill: an init container's (the PerPod pull) stays in its lastState
        # after it completed, and no spec field sizes it.
        if (
            cs in containers
            and terminated
            and terminated.get("reason") == "OOMKilled"
            and out_of_memory is None
        ):
            out_of_memory = cs.get("name")
            # What the kubelet applied to this container (status.containerStatuses[].resources),
            # which a later template change does not rewrite.
            reported_limit = ((cs.get("resources") or {}).get("limits") or {}).get("memory")
    return PodSummary(
        name=meta["name"],
        phase=status.get("phase", "Pending"),
        ready=ready,
        waiting_reason=waiting_reason,
        waiting_message=waiting_message,
        container=container,
        last_termination_message=last_message,
        out_of_memory=out_of_memory,
        # The caches keep pods without their spec: the Deployment's pod template says the same,
        # unless it changed since the pod started.
        memory_limit=(
            str(reported_limit)
            if reported_limit is not None
            else _memory_limit(obj.get("spec") or template or {}, out_of_memory)
        )
        if out_of_memory
        else None,
        restart_count=restarts,
        unschedulable_since=unschedulable_since,
        scheduler_message=scheduler_message,
        pulling=pulling,
        terminating=bool(meta.get("deletionTimestamp")),
    )


def observation(
    *,
    deployment: Obj | None,
    pull_jobs: Iterable[tuple[Obj, Iterable[Obj]]] = (),
    runtime_pods: Iterable[Obj],
    service_monitor_crd: bool,
    inference_pool_crd: bool,
    devices: Mapping[str, RuntimeDevice] | None = None,
    progress: Mapping[str, str] | None = None,
) -> Observation:
    """Everything status needs about one LocalModel's children: the Deployment, every pull Job
    with its pods, the runtime pods. ``for_pull_job`` then names the Job the spec renders now.

    A Secret the pods reference but that does not exist shows up as the kubelet's
    CreateContainerConfigError; reading it from pod status spares the operator any access to
    Secrets. ``devices`` holds what runtime pods (by name) reported they serve on, ``progress``
    what a running pull printed last (by Job name).
    """
    runtime_pods = list(runtime_pods)
    template = (((deployment or {}).get("spec") or {}).get("template") or {}).get("spec")
    devices = devices or {}
    progress = progress or {}
    pods = tuple(
        replace(summary, device=devices.get(summary.name))
        for summary in (pod_summary(p, template) for p in runtime_pods)
    )
    jobs = []
    for job, job_pods in pull_jobs:
        seen = pull_job_seen(job, job_pods)
        jobs.append(replace(seen, job=replace(seen.job, progress=progress.get(seen.job.name))))
    pulled = _init_pull_result(runtime_pods)
    return Observation(
        deployment=deployment_summary(deployment) if deployment else None,
        pods=pods,
        service_monitor_crd=service_monitor_crd,
        inference_pool_crd=inference_pool_crd,
        pull_jobs=tuple(jobs),
        pod_missing_secrets=_missing_secrets(pods),
        pod_model=model_info(pulled) if pulled else None,
    ).for_pull_job(None)


def pull_job_seen(job: Obj, pods: Iterable[Obj]) -> PullJobSeen:
    """A pull Job summarised with its pods."""
    pods = list(pods)
    return PullJobSeen(job_summary(job, pods), _missing_secrets(pod_summary(p) for p in pods))


def _missing_secrets(pods: Iterable[PodSummary]) -> tuple[str, ...]:
    return tuple(
        sorted(
            {
                name
                for pod in pods
                if pod.waiting_reason == "CreateContainerConfigError" and pod.waiting_message
                for name in _MISSING_SECRET.findall(pod.waiting_message)
            }
        )
    )


def _init_pull_result(pods: Iterable[Obj]) -> PullResult | None:
    """The pull result a runtime pod's init container reported (PerPod, verify-only sources)."""
    for pod in pods:
        for state, message in _termination_messages(pod):
            result = parse_pull_result(message) if state == "ok" else None
            if result is not None:
                return result
    return None


def _quantities(values: Mapping[str, Any]) -> dict[str, float]:
    parsed = {}
    for name, value in values.items():
        try:
            parsed[name] = parse_quantity(str(value))
        except ValueError:
            log.warning("ignoring unparseable quantity %s=%r", name, value)
    return parsed


def node_info(obj: Obj) -> NodeInfo:
    """A Node as placement sees it: readiness, labels, taints and allocatable resources."""
    status = obj.get("status") or {}
    spec = obj.get("spec") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    return NodeInfo(
        name=obj["metadata"]["name"],
        ready=ready,
        unschedulable=bool(spec.get("unschedulable")),
        labels=dict(obj["metadata"].get("labels") or {}),
        taints=list(spec.get("taints") or []),
        allocatable=_quantities(status.get("allocatable") or {}),
    )


def pull_progress(log_tail: str) -> str | None:
    """The latest ``percent`` from the puller's JSON progress lines, as ``37%``."""
    for line in reversed(log_tail.splitlines()):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and isinstance(event.get("percent"), int | float):
            return f"{event['percent']:.0f}%"
    return None


def model_info(pull: PullResult | None) -> ModelInfo | None:
    """The served model's digest and size from a pull result."""
    if pull is None:
        return None
    return ModelInfo(digest=pull.digest, size_bytes=pull.size_bytes)


def runtime_device(answer: object) -> RuntimeDevice | None:
    """The device a runtime's /readyz answer names, with the devices it left and why; None
    when the answer says no device the operator knows."""
    if not isinstance(answer, Mapping):
        return None
    try:
        device = Device(str(answer.get("device")))
    except ValueError:
        return None
    fallback = answer.get("fallback")
    left = (
        tuple((str(name), str(error)) for name, error in fallback.items())
        if isinstance(fallback, Mapping)
        else ()
    )
    return RuntimeDevice(device=device, fallback=left)
