"""Status: phases, the six conditions, transition times, merge patches and the fallback timer."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from slm_operator.api import LocalModel
from slm_operator.conditions import (
    CONDITION_REASONS,
    Condition,
    ConditionType,
    LocalModelStatus,
    Phase,
    Reason,
)
from slm_operator.place import (
    Placement,
    SkippedTier,
    should_step_down,
    step_down_reason,
    unschedulable_for,
)
from slm_operator.status import (
    compute_status,
    failed_status,
    runtime_fallback,
    status_patch,
    transitions,
)
from slm_operator.summary import (
    DeploymentSummary,
    JobSummary,
    ModelInfo,
    ObjectCondition,
    Observation,
    PodSummary,
    RuntimeDevice,
)
from slm_runtime.config import MODEL_CORRUPT_MARKER, Device, PullResult

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
DIGEST = "sha256:" + "ab" * 32
PIN = "cd" * 32
MISMATCH = f"sha256 mismatch for model.gguf: expected sha256:{PIN}, got {DIGEST}"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def localmodel(
    *,
    generation: int = 3,
    status: LocalModelStatus | None = None,
    **spec: Any,
) -> LocalModel:
    """A GGUF LocalModel on gpu -> cpu with 2 replicas; keyword arguments replace spec sections."""
    body: dict[str, Any] = {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "LocalModel",
        "metadata": {"name": "gemma", "namespace": "ai", "generation": generation},
        "spec": {
            "model": {"source": "hf://org/repo/model.gguf"},
            "cache": {"mode": "Volume"},
            "hardware": {"preferred": "gpu", "fallback": ["cpu"], "fallbackAfter": "60s"},
            "serving": {"replicas": 2},
            **spec,
        },
    }
    if status is not None:
        body["status"] = status.model_dump(by_alias=True, exclude_none=True)
    return LocalModel.model_validate(body)


GPU = Placement(device=Device.GPU, option="nvidia-gpu", placed=True, reason=Reason.PLACED)
CPU_FELL_BACK = Placement(
    device=Device.CPU,
    option="cpu",
    placed=True,
    reason=Reason.FELL_BACK,
    skipped=(SkippedTier(Device.GPU, "no schedulable node has free nvidia.com/gpu"),),
)
CPU_NO_CAPACITY = Placement(
    device=Device.CPU,
    option="cpu",
    placed=False,
    reason=Reason.NO_CAPACITY,
    skipped=(
        SkippedTier(Device.GPU, "no schedulable node has free nvidia.com/gpu"),
        SkippedTier(Device.CPU, "no node has 4Gi memory free"),
    ),
)

PULLED = JobSummary(
    name="gemma-pull-1a2b3c4d",
    succeeded=1,
    finished="Complete",
    result=PullResult(digest=DIGEST, size_bytes=253_000_000),
)
PULLING = JobSummary(name="gemma-pull-1a2b3c4d", active=1, progress="37%")
HELD = DeploymentSummary(generation=1, observed_generation=1, spec_replicas=0)
"""The Deployment the operator holds at zero replicas while the first pull runs."""


def deployment(ready: int, desired: int = 2, **fields: Any) -> DeploymentSummary:
    """A settled Deployment with ``ready`` of ``desired`` replicas ready and available."""
    base = DeploymentSummary(
        generation=5,
        observed_generation=5,
        spec_replicas=desired,
        replicas=desired,
        ready_replicas=ready,
        updated_replicas=desired,
        available_replicas=ready,
    )
    return replace(base, **fields)


def running(name: str, *, ready: bool = True, **fields: Any) -> PodSummary:
    """A running runtime pod."""
    return PodSummary(name=name, phase="Running", ready=ready, **fields)


CRASHING = running(
    "gemma-7d9f-abcde",
    ready=False,
    waiting_reason="CrashLoopBackOff",
    waiting_message="back-off 40s restarting failed container",
    container="runtime",
    restart_count=4,
    last_termination_message="failed to load model: out of memory",
)

OUT_OF_MEMORY = replace(
    CRASHING,
    container="server",
    last_termination_message=None,
    out_of_memory="server",
    memory_limit="64Mi",
)

CORRUPT = replace(
    CRASHING,
    last_termination_message=(
        f"refusing to serve the model: /models/model.gguf {MODEL_CORRUPT_MARKER}: its digest is "
        "sha256:abab..., the verified pull recorded sha256:cdcd... in /models/.slm-model.json"
    ),
)


def unschedulable(name: str, seconds: float, message: str = "") -> PodSummary:
    """A pod the scheduler could not place for ``seconds``."""
    return PodSummary(
        name=name,
        unschedulable_since=NOW - timedelta(seconds=seconds),
        scheduler_message=message or "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
    )


READY_STATUS = compute_status(
    localmodel(),
    GPU,
    Observation(deployment=deployment(2), pull_job=PULLED, pods=(running("a"), running("b"))),
    now=NOW - timedelta(hours=1),
)


@dataclass(frozen=True)
class Case:
    """One row of the phase table."""

    lm: LocalModel
    placement: Placement | None
    observation: Observation | None
    phase: Phase
    expected: Mapping[ConditionType, tuple[str, Reason]]
    id: str


CASES: list[Case] = [
    Case(localmodel(), GPU, None, Phase.PENDING, {}, id="nothing-observed"),
    Case(
        localmodel(),
        GPU,
        Observation(pull_job=PULLING),
        Phase.PULLING,
        {
            ConditionType.MODEL_AVAILABLE: ("False", Reason.PULLING),
            ConditionType.PROGRESSING: ("True", Reason.PULLING),
            ConditionType.READY: ("False", Reason.NOT_READY),
        },
        id="pull-job-running",
    ),
    Case(
        localmodel(cache={"mode": "PerPod"}),
        GPU,
        Observation(deployment=deployment(0), pods=(PodSummary(name="p", pulling=True),)),
        Phase.PULLING,
        {ConditionType.MODEL_AVAILABLE: ("False", Reason.PULLING)},
        id="perpod-init-container-pulling",
    ),
    Case(
        localmodel(),
        GPU,
        Observation(pull_job=PULLED),
        Phase.PENDING,
        {
            ConditionType.MODEL_AVAILABLE: ("True", Reason.PULLED),
            ConditionType.AVAILABLE: ("False", Reason.MINIMUM_REPLICAS_UNAVAILABLE),
            ConditionType.PROGRESSING: ("True", Reason.RECONCILING),
        },
        id="pulled-no-deployment-yet",
    ),
    Case(
        localmodel(),
        GPU,
        Observation(deployment=deployment(0), pull_job=PULLED, pods=(running("a", ready=False),)),
        Phase.DEPLOYING,
        {
            ConditionType.PROGRESSING: ("True", Reason.ROLLOUT_IN_PROGRESS),
            ConditionType.DEGRADED: ("False", Reason.AS_EXPECTED),
        },
        id="deploying",
    ),
    Case(
        localmodel(),
        GPU,
        Observation(deployment=deployment(2), pull_job=PULLED, pods=(running("a"), running("b"))),
        Phase.READY,
        {
            ConditionType.READY: ("True", Reason.MODEL_SERVING),
            ConditionType.MODEL_AVAILABLE: ("True", Reason.PULLED),
            ConditionType.PLACED: ("True", Reason.PLACED),
            ConditionType.AVAILABLE: ("True", Reason.MINIMUM_REPLICAS_AVAILABLE),
            ConditionType.PROGRESSING: ("False", Reason.ROLLOUT_COMPLETE),
            ConditionType.DEGRADED: ("False", Reason.AS_EXPECTED),
        },
        id="ready",
    ),
    Case(
        localmodel(),
        CPU_FELL_BACK,
        Observation(deployment=deployment(2), pull_job=PULLED),
        Phase.READY,
        {ConditionType.PLACED: ("True", Reason.FELL_BACK)},
        id="ready-after-fallback",
    ),
    Case(
        localmodel(),
        GPU,
        Observation(deployment=deployment(1), pull_job=PULLED, pods=(running("a"), CRASHING)),
        Phase.DEGRADED,
        {
            ConditionType.DEGRADED: ("True", Reason.CRASH_LOOPING),
            ConditionType.READY: ("False", Reason.NOT_READY),
            ConditionType.AVAILABLE: ("True", Reason.MINIMUM_REPLICAS_AVAILABLE),
        },
        id="crash-loop",
    ),
    Case(
        localmodel(),
        GPU,
        Observation(deployment=deployment(0), pull_job=PULLED, pods=(CORRUPT,)),
        Phase.DEGRADED,
        {
            ConditionType.DEGRADED: ("True", Reason.MODEL_CORRUPT),
            ConditionType.READY: ("False", Reason.NOT_READY),
        },
        id="model-corrupt-on-the-volume",
    ),
    Case(
        localmodel(),
        GPU,
        Observation(deployment=deployment(0), pull_job=PULLED, pods=(OUT_OF_MEMORY,)),
        Phase.DEGRADED,
        {
            ConditionType.DEGRADED: ("True", Reason.OUT_OF_MEMORY),
            ConditionType.READY: ("False", Reason.NOT_READY),
        },
        id="oom-killed",
    ),
    Case(
        localmodel(status=READY_STATUS),
        GPU,
        Observation(deployment=deployment(1), pull_job=PULLED, pods=(running("a"),)),
        Phase.DEGRADED,
        {ConditionType.DEGRADED: ("True", Reason.REPLICAS_UNAVAILABLE)},
        id="was-ready-replica-lost",
    ),
    Case(
        localmodel(status=READY_STATUS),
        GPU,
        Observation(
            deployment=deployment(0, observed_generation=6, generation=6, updated_replicas=0),
            pull_job=PULLED,
        ),
        Phase.DEPLOYING,
        {ConditionType.PROGRESSING: ("True", Reason.ROLLOUT_IN_PROGRESS)},
        id="was-ready-rollout-of-new-template",
    ),
    Case(
        localmodel(status=READY_STATUS, serving={"replicas": 3}),
        GPU,
        Observation(deployment=deployment(2, desired=3), pull_job=PULLED),
        Phase.DEPLOYING,
        {ConditionType.DEGRADED: ("False", Reason.AS_EXPECTED)},
        id="was-ready-scaling-up",
    ),
    Case(
        localmodel(),
        GPU,
        Observation(
            deployment=deployment(
                0,
                replica_failure=ObjectCondition(
                    "True", "FailedCreate", 'pods "gemma-x" is forbidden: violates PodSecurity'
                ),
            ),
            pull_job=PULLED,
        ),
        Phase.DEGRADED,
        {ConditionType.DEGRADED: ("True", Reason.REPLICAS_UNAVAILABLE)},
        id="pods-rejected-by-admission",
    ),
    Case(
        localmodel(),
        CPU_NO_CAPACITY,
        Observation(deployment=deployment(0), pull_job=PULLED, pods=(unschedulable("a", 10),)),
        Phase.DEPLOYING,
        {
            ConditionType.PLACED: ("False", Reason.NO_CAPACITY),
            ConditionType.PROGRESSING: ("True", Reason.WAITING_FOR_CAPACITY),
            ConditionType.DEGRADED: ("False", Reason.AS_EXPECTED),
        },
        id="no-capacity-is-not-failed",
    ),
    Case(
        localmodel(
            autoscaling={"enabled": True, "minReplicas": 0},
            status=LocalModelStatus(phase=Phase.READY),
        ),
        GPU,
        Observation(deployment=deployment(0, desired=0), pull_job=PULLED),
        Phase.SCALED_TO_ZERO,
        {
            ConditionType.AVAILABLE: ("True", Reason.SCALED_TO_ZERO),
            ConditionType.READY: ("False", Reason.SCALED_TO_ZERO),
            ConditionType.PROGRESSING: ("False", Reason.ROLLOUT_COMPLETE),
        },
        id="scaled-to-zero-by-the-gateway",
    ),
    Case(
        localmodel(autoscaling={"enabled": True, "minReplicas": 0}),
        GPU,
        Observation(deployment=HELD, pull_job=PULLING),
        Phase.PULLING,
        {ConditionType.AVAILABLE: ("False", Reason.MINIMUM_REPLICAS_UNAVAILABLE)},
        id="scale-to-zero-model-held-for-its-first-pull-is-pulling",
    ),
    Case(
        localmodel(cache={"mode": "PerPod"}, autoscaling={"enabled": True, "minReplicas": 0}),
        GPU,
        Observation(deployment=deployment(0, desired=0)),
        Phase.SCALED_TO_ZERO,
        {ConditionType.READY: ("False", Reason.SCALED_TO_ZERO)},
        id="per-pod-model-at-zero-pulls-in-its-next-pod",
    ),
    Case(
        localmodel(autoscaling={"enabled": True, "minReplicas": 1}),
        GPU,
        Observation(deployment=deployment(0, desired=0), pull_job=PULLED),
        Phase.DEPLOYING,
        {ConditionType.READY: ("False", Reason.NOT_READY)},
        id="left-at-zero-after-min-replicas-rose-is-deploying",
    ),
    Case(
        localmodel(serving={"replicas": 0}),
        GPU,
        Observation(deployment=deployment(0, desired=0), pull_job=PULLED),
        Phase.SCALED_TO_ZERO,
        {
            ConditionType.AVAILABLE: ("True", Reason.SCALED_TO_ZERO),
            ConditionType.READY: ("False", Reason.SCALED_TO_ZERO),
        },
        id="scaled-to-zero",
    ),
    Case(
        localmodel(),
        GPU,
        Observation(deployment=HELD, pull_job=PULLING),
        Phase.PULLING,
        {
            ConditionType.AVAILABLE: ("False", Reason.MINIMUM_REPLICAS_UNAVAILABLE),
            ConditionType.READY: ("False", Reason.NOT_READY),
        },
        id="held-during-the-first-pull-is-not-scaled-to-zero",
    ),
    Case(
        localmodel(),
        GPU,
        Observation(deployment=HELD, pull_job=PULLED),
        Phase.DEPLOYING,
        {
            ConditionType.AVAILABLE: ("False", Reason.MINIMUM_REPLICAS_UNAVAILABLE),
            ConditionType.READY: ("False", Reason.NOT_READY),
        },
        id="held-after-the-pull-is-deploying",
    ),
    Case(
        localmodel(autoscaling={"enabled": True, "minReplicas": 2, "maxReplicas": 4}),
        GPU,
        Observation(deployment=HELD, pull_job=PULLING),
        Phase.PULLING,
        {ConditionType.AVAILABLE: ("False", Reason.MINIMUM_REPLICAS_UNAVAILABLE)},
        id="held-while-autoscaling-is-not-scaled-to-zero",
    ),
    Case(
        localmodel(),
        GPU,
        Observation(
            pull_job=JobSummary(
                name="gemma-pull-1a2b3c4d",
                failed=1,
                finished="Failed",
                failure_message="GET https://huggingface.co/org/repo: 404 Not Found",
            )
        ),
        Phase.FAILED,
        {
            ConditionType.READY: ("False", Reason.PULL_FAILED),
            ConditionType.MODEL_AVAILABLE: ("False", Reason.PULL_FAILED),
            ConditionType.DEGRADED: ("True", Reason.PULL_FAILED),
        },
        id="pull-job-failed",
    ),
    Case(
        localmodel(model={"source": "hf://org/repo/model.gguf", "sha256": PIN}),
        GPU,
        Observation(
            pull_job=JobSummary(name="j", failed=1, finished="Failed", failure_message=MISMATCH)
        ),
        Phase.FAILED,
        {ConditionType.MODEL_AVAILABLE: ("False", Reason.DIGEST_MISMATCH)},
        id="digest-mismatch",
    ),
    Case(
        localmodel(model={"source": "hf://org/repo/model.gguf", "credentialsSecret": "hf-token"}),
        GPU,
        Observation(missing_secrets=("hf-token",)),
        Phase.FAILED,
        {
            ConditionType.READY: ("False", Reason.SECRET_NOT_FOUND),
            ConditionType.MODEL_AVAILABLE: ("False", Reason.SECRET_NOT_FOUND),
        },
        id="secret-missing",
    ),
]


def _by_type(status: LocalModelStatus) -> dict[ConditionType, Condition]:
    return {c.type: c for c in status.conditions}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_phase_and_conditions(case: Case) -> None:
    status = compute_status(case.lm, case.placement, case.observation, now=NOW)
    assert status.phase is case.phase
    conditions = _by_type(status)
    for kind, (want_status, want_reason) in case.expected.items():
        got = conditions[kind]
        assert (got.status, got.reason) == (want_status, want_reason), got.message


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_conditions_complete_and_valid(case: Case) -> None:
    lm = case.lm
    status = compute_status(lm, case.placement, case.observation, now=NOW)
    assert [c.type for c in status.conditions] == list(ConditionType)
    for condition in status.conditions:
        assert condition.reason in CONDITION_REASONS[condition.type]
        assert condition.message
        assert condition.observed_generation == lm.metadata.generation
        assert RFC3339.match(condition.last_transition_time)
    assert status.observed_generation == lm.metadata.generation
    # What is written must read back through the API model (the CRD's shape).
    dumped = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert LocalModelStatus.model_validate(dumped) == status


def test_status_does_not_depend_on_pod_order() -> None:
    other = replace(CRASHING, name="gemma-7d9f-aaaaa", last_termination_message="exit 137")
    pods = (running("a"), CRASHING, other)
    one = compute_status(localmodel(), GPU, Observation(deployment(1), PULLED, pods), now=NOW)
    two = compute_status(localmodel(), GPU, Observation(deployment(1), PULLED, pods[::-1]), now=NOW)
    assert one == two
    assert "gemma-7d9f-aaaaa" in _by_type(one)[ConditionType.DEGRADED].message


def test_ready_status_fields() -> None:
    status = READY_STATUS
    assert status.backend is Device.GPU
    assert status.fallback_reason is None
    assert status.endpoint == "http://gemma.ai.svc:8080"
    assert status.selector == "app.kubernetes.io/name=slm-runtime,app.kubernetes.io/instance=gemma"
    assert (status.replicas, status.ready_replicas) == (2, 2)
    assert status.model.digest == DIGEST
    assert status.model.size_bytes == 253_000_000
    assert status.model.source == "hf://org/repo/model.gguf"
    assert status.model.progress is None


def test_a_model_held_at_its_image_says_so_and_stays_ready() -> None:
    wait = "runtime image r:2 waits for a rollout slot: ...; serving on r:1 meanwhile"
    observation = Observation(
        deployment=deployment(2), pull_job=PULLED, pods=(running("a"), running("b"))
    )
    status = compute_status(localmodel(), GPU, observation, now=NOW, rollout_wait=wait)
    conditions = _by_type(status)
    assert status.phase is Phase.READY
    assert conditions[ConditionType.READY].status == "True"
    progressing = conditions[ConditionType.PROGRESSING]
    assert (progressing.status, progressing.reason) == ("True", Reason.ROLLOUT_IN_PROGRESS)
    assert progressing.message == f"2/2 replicas ready; {wait}"
    # Something else in progress says that instead.
    rolling = replace(observation, deployment=deployment(1))
    status = compute_status(localmodel(), GPU, rolling, now=NOW, rollout_wait=wait)
    assert wait not in _by_type(status)[ConditionType.PROGRESSING].message


def test_endpoint_and_selector_can_be_given() -> None:
    status = compute_status(
        localmodel(), GPU, None, now=NOW, endpoint="http://x.y.svc:9000", selector="a=b"
    )
    assert (status.endpoint, status.selector) == ("http://x.y.svc:9000", "a=b")


def test_pulling_reports_progress() -> None:
    status = compute_status(localmodel(), GPU, Observation(pull_job=PULLING), now=NOW)
    assert status.model.progress == "37%"
    assert "37%" in _by_type(status)[ConditionType.MODEL_AVAILABLE].message


def test_fallback_sets_backend_and_reason() -> None:
    status = compute_status(localmodel(), CPU_FELL_BACK, None, now=NOW)
    assert status.backend is Device.CPU
    assert status.fallback_reason == "gpu: no schedulable node has free nvidia.com/gpu"
    assert "nvidia.com/gpu" in _by_type(status)[ConditionType.PLACED].message


NO_OPENVINO = "OpenVINO finds no NPU device on this node (it finds: CPU)"
ON_CPU = RuntimeDevice(Device.CPU, fallback=(("gpu", "no CUDA device"),))


def test_backend_is_the_device_the_runtime_serves_on_and_placed_tier_the_placement() -> None:
    pods = (running("a", device=ON_CPU), running("b", device=ON_CPU))
    observation = Observation(deployment=deployment(2), pull_job=PULLED, pods=pods)
    status = compute_status(localmodel(), GPU, observation, now=NOW)
    assert (status.placed_tier, status.backend) == (Device.GPU, Device.CPU)
    placed = _by_type(status)[ConditionType.PLACED]
    assert (placed.status, placed.reason) == ("True", Reason.RUNTIME_FELL_BACK)
    assert placed.message == (
        "on gpu (nvidia-gpu); the runtime in pod a serves on cpu (gpu: no CUDA device)"
    )
    assert status.phase is Phase.READY  # it serves: a slower device is not a failure


def test_backend_is_the_placed_tier_until_a_pod_reports() -> None:
    unreported = Observation(deployment=deployment(2), pull_job=PULLED, pods=(running("a"),))
    status = compute_status(localmodel(), GPU, unreported, now=NOW)
    assert (status.placed_tier, status.backend) == (Device.GPU, Device.GPU)
    assert _by_type(status)[ConditionType.PLACED].reason is Reason.PLACED
    # Once reported, a pod restarting (not asked again yet) does not flip it back.
    reported = Observation(
        deployment=deployment(2), pull_job=PULLED, pods=(running("a", device=ON_CPU),)
    )
    served = compute_status(localmodel(), GPU, reported, now=NOW)
    again = compute_status(localmodel(status=served), GPU, unreported, now=NOW)
    assert again.backend is Device.CPU
    # A new placement is shown as it is until its pods report.
    moved = compute_status(localmodel(status=served), CPU_FELL_BACK, unreported, now=NOW)
    assert (moved.placed_tier, moved.backend) == (Device.CPU, Device.CPU)


def test_pods_on_the_placed_device_are_placed() -> None:
    on_gpu = RuntimeDevice(Device.GPU)
    observation = Observation(deployment(1), PULLED, pods=(running("a", device=on_gpu),))
    status = compute_status(localmodel(), GPU, observation, now=NOW)
    assert status.backend is Device.GPU
    assert _by_type(status)[ConditionType.PLACED].reason is Reason.PLACED


def test_only_the_first_status_with_a_runtime_fallback_gives_an_event() -> None:
    pods = (running("a", device=RuntimeDevice(Device.CPU, (("npu", NO_OPENVINO),))),)
    observation = Observation(deployment=deployment(1), pull_job=PULLED, pods=pods)
    npu = Placement(device=Device.NPU, option="intel-npu", placed=True, reason=Reason.PLACED)
    lm = localmodel(hardware={"preferred": "npu", "fallback": ["cpu"]})
    first = compute_status(lm, npu, observation, now=NOW)
    message = runtime_fallback(lm.status, first)
    assert message is not None
    assert "serves on cpu" in message
    assert NO_OPENVINO in message
    assert runtime_fallback(first, compute_status(lm, npu, observation, now=NOW)) is None
    assert runtime_fallback(None, READY_STATUS) is None


def test_step_down_reason_survives_later_placements() -> None:
    # After a step-down the operator places from the recorded tier, which skips nothing.
    on_cpu = Placement(device=Device.CPU, option="cpu", placed=True, reason=Reason.FELL_BACK)
    stepped = compute_status(localmodel(), on_cpu, None, now=NOW).model_copy(
        update={"fallback_reason": "pods unschedulable on gpu for 61s"}
    )
    again = compute_status(localmodel(status=stepped), on_cpu, None, now=NOW)
    assert again.fallback_reason == "pods unschedulable on gpu for 61s"
    back_on_gpu = compute_status(localmodel(status=stepped), GPU, None, now=NOW)
    assert back_on_gpu.fallback_reason is None


def test_no_capacity_names_every_skipped_tier() -> None:
    status = compute_status(localmodel(), CPU_NO_CAPACITY, None, now=NOW)
    message = _by_type(status)[ConditionType.PLACED].message
    assert "nvidia.com/gpu" in message
    assert "4Gi memory" in message
    assert status.phase is not Phase.FAILED


def test_an_oom_killed_server_names_its_limit_and_the_fields_to_change() -> None:
    obs = Observation(deployment=deployment(0), pull_job=PULLED, pods=(OUT_OF_MEMORY,))
    status = compute_status(localmodel(), GPU, obs, now=NOW)
    message = _by_type(status)[ConditionType.DEGRADED].message
    assert "container server was OOMKilled" in message
    assert "memory limit of 64Mi" in message
    assert "restarted 4 times" in message
    assert "spec.resources.limits.memory" in message
    unlimited = replace(OUT_OF_MEMORY, memory_limit=None)
    obs = Observation(deployment=deployment(0), pull_job=PULLED, pods=(unlimited,))
    message = _by_type(compute_status(localmodel(), GPU, obs, now=NOW))[
        ConditionType.DEGRADED
    ].message
    assert "more than the node's memory" in message


def test_failed_pull_carries_the_jobs_message() -> None:
    job = JobSummary(
        name="gemma-pull-1a2b3c4d",
        failed=1,
        finished="Failed",
        failure_message="GET https://huggingface.co/org/repo: 404 Not Found",
    )
    status = compute_status(localmodel(), GPU, Observation(pull_job=job), now=NOW)
    message = _by_type(status)[ConditionType.READY].message
    assert "gemma-pull-1a2b3c4d" in message
    assert "404 Not Found" in message
    assert "spec.model.source" in message


def test_digest_mismatch_message_passes_through() -> None:
    job = JobSummary(name="j", failed=1, finished="Failed", failure_message=MISMATCH)
    status = compute_status(localmodel(), GPU, Observation(pull_job=job), now=NOW)
    for kind in (ConditionType.READY, ConditionType.MODEL_AVAILABLE, ConditionType.DEGRADED):
        condition = _by_type(status)[kind]
        assert condition.reason is Reason.DIGEST_MISMATCH
        assert MISMATCH in condition.message
        assert "spec.model.sha256" in condition.message


def test_perpod_digest_mismatch_fails() -> None:
    pod = PodSummary(
        name="p",
        waiting_reason="CrashLoopBackOff",
        container="pull",
        restart_count=2,
        last_termination_message=MISMATCH,
    )
    lm = localmodel(cache={"mode": "PerPod"})
    status = compute_status(lm, GPU, Observation(deployment=deployment(0), pods=(pod,)), now=NOW)
    assert status.phase is Phase.FAILED
    assert _by_type(status)[ConditionType.MODEL_AVAILABLE].reason is Reason.DIGEST_MISMATCH


def test_pull_retry_is_still_pulling() -> None:
    job = JobSummary(name="j", active=1, failed=1, failure_message="connection reset by peer")
    status = compute_status(localmodel(), GPU, Observation(pull_job=job), now=NOW)
    assert status.phase is Phase.PULLING
    assert "connection reset" in _by_type(status)[ConditionType.MODEL_AVAILABLE].message


@pytest.mark.parametrize(
    ("reason", "ready_reason"),
    [
        (Reason.INVALID_SPEC, Reason.INVALID_SPEC),
        (Reason.SECRET_NOT_FOUND, Reason.SECRET_NOT_FOUND),
        (Reason.PULL_FAILED, Reason.PULL_FAILED),
        (Reason.DIGEST_MISMATCH, Reason.DIGEST_MISMATCH),
        (Reason.ACCESS_MODE_CONFLICT, Reason.NOT_READY),
    ],
)
def test_error_gives_failed_with_message(reason: Reason, ready_reason: Reason) -> None:
    message = "spec.cache.accessMode: ReadWriteOnce cannot span nodes; use ReadWriteMany"
    status = compute_status(localmodel(), None, None, now=NOW, error=message, error_reason=reason)
    assert status.phase is Phase.FAILED
    ready = _by_type(status)[ConditionType.READY]
    assert (ready.status, ready.reason, ready.message) == ("False", ready_reason, message)
    assert _by_type(status)[ConditionType.PROGRESSING].status == "False"
    assert _by_type(status)[ConditionType.DEGRADED].status == "True"


def test_error_default_reason_is_invalid_spec() -> None:
    status = compute_status(localmodel(), None, None, now=NOW, error="spec.x: bad")
    assert _by_type(status)[ConditionType.READY].reason is Reason.INVALID_SPEC


def test_error_with_a_non_failure_reason_is_rejected() -> None:
    with pytest.raises(ValueError, match="not a failure reason"):
        compute_status(localmodel(), None, None, now=NOW, error="x", error_reason=Reason.PLACED)


def test_failed_without_placement_keeps_what_was_known() -> None:
    status = compute_status(
        localmodel(status=READY_STATUS), None, None, now=NOW, error="spec.x: bad"
    )
    assert status.backend is Device.GPU
    placed = _by_type(status)[ConditionType.PLACED]
    assert (placed.status, placed.reason) == ("True", Reason.PLACED)


def test_unobserved_children_keep_counts_and_availability() -> None:
    lm = localmodel(status=READY_STATUS)
    status = compute_status(lm, GPU, None, now=NOW, error="spec.x: bad")
    assert (status.replicas, status.ready_replicas) == (2, 2)
    available = _by_type(status)[ConditionType.AVAILABLE]
    assert (available.status, available.reason) == ("True", Reason.MINIMUM_REPLICAS_AVAILABLE)
    observed_empty = compute_status(lm, GPU, Observation(), now=NOW, error="spec.x: bad")
    assert (observed_empty.replicas, observed_empty.ready_replicas) == (0, 0)
    assert _by_type(observed_empty)[ConditionType.AVAILABLE].status == "False"


def test_failed_status_for_a_spec_that_does_not_parse() -> None:
    later = NOW + timedelta(minutes=1)
    message = "spec.serving.port: Input should be greater than or equal to 1024"
    status = failed_status(READY_STATUS, generation=4, error=message, now=later)
    assert status.phase is Phase.FAILED
    assert status.observed_generation == 4
    assert (status.backend, status.endpoint, status.model) == (
        READY_STATUS.backend,
        READY_STATUS.endpoint,
        READY_STATUS.model,
    )
    conditions = _by_type(status)
    assert [c.type for c in status.conditions] == list(ConditionType)
    assert all(c.observed_generation == 4 for c in status.conditions)
    ready = conditions[ConditionType.READY]
    assert (ready.status, ready.reason, ready.message) == ("False", Reason.INVALID_SPEC, message)
    assert ready.last_transition_time == "2026-03-01T12:01:00Z"
    placed = conditions[ConditionType.PLACED]
    assert (placed.status, placed.last_transition_time) == ("True", "2026-03-01T11:00:00Z")

    fresh = failed_status(None, generation=1, error=message, now=NOW)
    assert {c.type: c.status for c in fresh.conditions} == {
        ConditionType.READY: "False",
        ConditionType.MODEL_AVAILABLE: "Unknown",
        ConditionType.PLACED: "Unknown",
        ConditionType.AVAILABLE: "Unknown",
        ConditionType.PROGRESSING: "False",
        ConditionType.DEGRADED: "True",
    }
    assert (
        status_patch(status, failed_status(status, generation=4, error=message, now=later)) is None
    )


def test_missing_secret_names_it_and_its_field() -> None:
    lm = localmodel(serving={"replicas": 1, "authSecret": "api-token"})
    status = compute_status(lm, GPU, Observation(missing_secrets=("api-token",)), now=NOW)
    message = _by_type(status)[ConditionType.READY].message
    assert "'api-token'" in message
    assert "spec.serving.authSecret" in message
    assert "namespace ai" in message


def test_service_monitor_crd_absent_is_a_note_not_a_problem() -> None:
    observation = Observation(deployment=deployment(2), pull_job=PULLED, service_monitor_crd=False)
    status = compute_status(localmodel(), GPU, observation, now=NOW)
    assert status.phase is Phase.READY
    degraded = _by_type(status)[ConditionType.DEGRADED]
    assert (degraded.status, degraded.reason) == ("False", Reason.SERVICE_MONITOR_UNSUPPORTED)
    assert "spec.monitoring.serviceMonitor" in degraded.message
    off = localmodel(monitoring={"serviceMonitor": False})
    assert (
        _by_type(compute_status(off, GPU, observation, now=NOW))[ConditionType.DEGRADED].reason
        is Reason.AS_EXPECTED
    )


def test_inference_pool_crd_absent_is_a_note_and_both_missing_crds_are_named() -> None:
    pool = {"inferencePool": {"enabled": True, "endpointPickerRef": {"name": "epp"}}}
    lm = localmodel(serving={"replicas": 2, **pool})
    observation = Observation(deployment=deployment(2), pull_job=PULLED, inference_pool_crd=False)
    status = compute_status(lm, GPU, observation, now=NOW)
    assert status.phase is Phase.READY
    degraded = _by_type(status)[ConditionType.DEGRADED]
    assert (degraded.status, degraded.reason) == ("False", Reason.INFERENCE_POOL_UNSUPPORTED)
    assert "spec.serving.inferencePool.enabled" in degraded.message
    assert "ServiceMonitor" not in degraded.message
    neither = replace(observation, service_monitor_crd=False)
    both = _by_type(compute_status(lm, GPU, neither, now=NOW))[ConditionType.DEGRADED]
    assert both.reason is Reason.SERVICE_MONITOR_UNSUPPORTED
    assert "no ServiceMonitor created" in both.message
    assert "no InferencePool created" in both.message
    off = localmodel(serving={"replicas": 2})
    assert (
        _by_type(compute_status(off, GPU, observation, now=NOW))[ConditionType.DEGRADED].reason
        is Reason.AS_EXPECTED
    )


def test_autoscaling_desired_replicas_come_from_the_deployment() -> None:
    lm = localmodel(autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 4})
    observation = Observation(deployment=deployment(3, desired=3), pull_job=PULLED)
    status = compute_status(lm, GPU, observation, now=NOW)
    assert status.phase is Phase.READY
    assert _by_type(status)[ConditionType.READY].message == "3/3 replicas ready"


def test_held_deployment_is_reported_against_the_replicas_asked_for() -> None:
    status = compute_status(
        localmodel(), GPU, Observation(deployment=HELD, pull_job=PULLING), now=NOW
    )
    available = _by_type(status)[ConditionType.AVAILABLE]
    assert available.message.startswith("0/2 replicas available")
    assert "held at 0 replicas until the model is pulled" in available.message
    assert "scaled to zero" not in _by_type(status)[ConditionType.READY].message


def test_available_only_once_a_replica_is_available() -> None:
    """Available, what ``kubectl wait --for=condition=Available`` reads, turns True with the
    first available replica and not before, through a whole first pull."""
    starting = replace(HELD, spec_replicas=2, generation=2, replicas=1, updated_replicas=1)
    steps = [
        Observation(pull_job=PULLING),
        Observation(deployment=HELD, pull_job=PULLING),
        Observation(deployment=HELD, pull_job=PULLED),
        Observation(deployment=starting, pull_job=PULLED, pods=(running("a", ready=False),)),
        Observation(
            deployment=replace(starting, ready_replicas=1, available_replicas=1),
            pull_job=PULLED,
            pods=(running("a"),),
        ),
    ]
    available = [
        _by_type(compute_status(localmodel(), GPU, obs, now=NOW))[ConditionType.AVAILABLE].status
        for obs in steps
    ]
    assert available == ["False", "False", "False", "False", "True"]


def test_a_first_pull_moves_the_phase_only_forward() -> None:
    """Pending -> Pulling -> Deploying -> Ready: the Deployment still held when the pull Job
    completes is Deploying, not back to Pending."""
    lm = localmodel()
    starting = replace(HELD, spec_replicas=2, generation=2, replicas=2, updated_replicas=2)
    steps = [
        Observation(),
        Observation(deployment=HELD, pull_job=PULLING),
        Observation(deployment=HELD, pull_job=PULLED),
        Observation(deployment=starting, pull_job=PULLED),
        Observation(deployment=deployment(2), pull_job=PULLED, pods=(running("a"), running("b"))),
    ]
    phases = []
    for obs in steps:
        lm = lm.model_copy(update={"status": compute_status(lm, GPU, obs, now=NOW)})
        phases.append(lm.status.phase)
    assert phases == [
        Phase.PENDING,
        Phase.PULLING,
        Phase.DEPLOYING,
        Phase.DEPLOYING,
        Phase.READY,
    ]


def test_model_stays_available_after_the_pull_job_is_cleaned_up() -> None:
    lm = localmodel(status=READY_STATUS)
    status = compute_status(lm, GPU, Observation(deployment=deployment(0)), now=NOW)
    assert _by_type(status)[ConditionType.MODEL_AVAILABLE].status == "True"
    assert status.model.digest == DIGEST


def test_runtime_reported_digest_is_used() -> None:
    lm = localmodel(cache={"mode": "PerPod"})
    observation = Observation(deployment=deployment(2), model=ModelInfo(DIGEST, 42))
    status = compute_status(lm, GPU, observation, now=NOW)
    assert (status.model.digest, status.model.size_bytes) == (DIGEST, 42)


# --- lastTransitionTime -----------------------------------------------------------------------


def test_transition_time_kept_when_only_reason_changes() -> None:
    t0, t1 = NOW, NOW + timedelta(minutes=5)
    first = compute_status(localmodel(), GPU, Observation(), now=t0)
    available = _by_type(first)[ConditionType.MODEL_AVAILABLE]
    assert (available.status, available.reason) == ("False", Reason.PULL_PENDING)

    second = compute_status(localmodel(status=first), GPU, Observation(pull_job=PULLING), now=t1)
    available = _by_type(second)[ConditionType.MODEL_AVAILABLE]
    assert (available.status, available.reason) == ("False", Reason.PULLING)
    assert available.last_transition_time == "2026-03-01T12:00:00Z"


def test_transition_time_moves_when_status_flips() -> None:
    t0, t1 = NOW, NOW + timedelta(minutes=5, microseconds=123)
    first = compute_status(localmodel(), GPU, Observation(pull_job=PULLING), now=t0)
    second = compute_status(localmodel(status=first), GPU, Observation(pull_job=PULLED), now=t1)
    before, after = _by_type(first), _by_type(second)
    assert after[ConditionType.MODEL_AVAILABLE].status == "True"
    assert after[ConditionType.MODEL_AVAILABLE].last_transition_time == "2026-03-01T12:05:00Z"
    # Placed did not change at all: its time stays.
    assert (
        after[ConditionType.PLACED].last_transition_time
        == before[ConditionType.PLACED].last_transition_time
    )


def test_naive_now_is_taken_as_utc() -> None:
    status = compute_status(localmodel(), GPU, None, now=datetime(2026, 3, 1, 8, 30))
    assert status.conditions[0].last_transition_time == "2026-03-01T08:30:00Z"


# --- status_patch -----------------------------------------------------------------------------


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, as the API server applies it."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


def test_patch_is_none_for_identical_status() -> None:
    lm = localmodel(status=READY_STATUS)
    again = compute_status(
        lm,
        GPU,
        Observation(deployment=deployment(2), pull_job=PULLED, pods=(running("a"), running("b"))),
        now=NOW,
    )
    assert again == READY_STATUS
    assert status_patch(READY_STATUS, again) is None
    assert status_patch(lm.status, again) is None
    stored = READY_STATUS.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert status_patch(stored, again) is None


def test_patch_writes_everything_for_an_empty_stored_status() -> None:
    new = compute_status(localmodel(), GPU, None, now=NOW)
    empty: tuple[LocalModelStatus | dict[str, Any] | None, ...] = (None, LocalModelStatus(), {})
    for old in empty:
        patch = status_patch(old, new)
        assert patch is not None
        assert patch["status"]["phase"] == "Pending"
        assert patch["status"]["replicas"] == 0
        assert len(patch["status"]["conditions"]) == len(ConditionType)


def test_patch_is_minimal_camel_case_and_nulls_removed_fields() -> None:
    old = compute_status(localmodel(), CPU_FELL_BACK, Observation(pull_job=PULLING), now=NOW)
    new = compute_status(
        localmodel(status=old), GPU, Observation(pull_job=PULLING), now=NOW + timedelta(1)
    )
    patch = status_patch(old, new)
    assert patch is not None
    body = patch["status"]
    assert body["backend"] == "gpu"
    assert body["fallbackReason"] is None
    assert "model" not in body
    assert "observedGeneration" not in body
    stored = old.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert apply_merge_patch(stored, body) == new.model_dump(
        mode="json", by_alias=True, exclude_none=True
    )


def test_patch_leaves_keys_it_does_not_own() -> None:
    stored = READY_STATUS.model_dump(mode="json", by_alias=True, exclude_none=True)
    stored["kopf"] = {"progress": {}}
    assert status_patch(stored, READY_STATUS) is None


def test_transitions_lists_conditions_whose_status_changed() -> None:
    first = compute_status(localmodel(), GPU, Observation(pull_job=PULLING), now=NOW)
    assert [c.type for c in transitions(None, first)] == list(ConditionType)
    second = compute_status(localmodel(status=first), GPU, Observation(pull_job=PULLED), now=NOW)
    assert [c.type for c in transitions(first, second)] == [ConditionType.MODEL_AVAILABLE]
    assert transitions(second, second) == []


def test_patch_round_trips_every_case() -> None:
    previous: dict[str, Any] = {}
    for case in CASES:
        new = compute_status(case.lm, case.placement, case.observation, now=NOW)
        patch = status_patch(previous, new)
        assert patch is not None
        previous = apply_merge_patch(previous, patch["status"])
        assert previous == new.model_dump(mode="json", by_alias=True, exclude_none=True)


# --- the fallback timer -----------------------------------------------------------------------


def test_unschedulable_for_reports_the_oldest_live_pod() -> None:
    pods = (
        unschedulable("a", 30),
        unschedulable("b", 90),
        replace(unschedulable("c", 500), terminating=True),
        running("d"),
    )
    assert unschedulable_for(Observation(pods=pods), NOW) == 90.0
    assert unschedulable_for(Observation(pods=(running("d"),)), NOW) is None
    assert unschedulable_for(None, NOW) is None


@pytest.mark.parametrize(
    ("placement", "pods", "expected"),
    [
        pytest.param(GPU, (unschedulable("a", 59),), False, id="before-fallbackAfter"),
        pytest.param(GPU, (unschedulable("a", 60),), True, id="at-fallbackAfter"),
        pytest.param(GPU, (unschedulable("a", 600),), True, id="long-after"),
        pytest.param(GPU, (running("a"),), False, id="all-scheduled"),
        pytest.param(
            GPU, (replace(unschedulable("a", 600), terminating=True),), False, id="terminating"
        ),
        pytest.param(CPU_FELL_BACK, (unschedulable("a", 600),), False, id="at-last-tier"),
        pytest.param(None, (unschedulable("a", 600),), False, id="not-placed"),
    ],
)
def test_should_step_down(
    placement: Placement | None, pods: tuple[PodSummary, ...], expected: bool
) -> None:
    spec = localmodel().spec
    assert should_step_down(spec, placement, Observation(pods=pods), NOW) is expected


def test_step_down_reason_names_tier_time_and_scheduler_message() -> None:
    reason = step_down_reason(GPU, Observation(pods=(unschedulable("a", 125),)), NOW)
    assert reason == (
        "pods unschedulable on gpu for 125s: 0/3 nodes are available: "
        "3 Insufficient nvidia.com/gpu."
    )
