"""``status``: phases, conditions and their reasons, the vocabulary status.py writes.

Pure: imports neither kopf nor a Kubernetes client.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final, Literal

from pydantic import (
    Field,
    model_validator,
)
from slm_runtime.config import Device, ModelFormat

from slm_operator.fields import ApiModel

# --- status -----------------------------------------------------------------------------------


class Phase(StrEnum):
    """The one-word summary shown by ``kubectl get lm``."""

    PENDING = "Pending"
    PULLING = "Pulling"
    DEPLOYING = "Deploying"
    READY = "Ready"
    DEGRADED = "Degraded"
    SCALED_TO_ZERO = "ScaledToZero"
    FAILED = "Failed"


class ConditionType(StrEnum):
    """The closed set of condition types."""

    READY = "Ready"
    MODEL_AVAILABLE = "ModelAvailable"
    PLACED = "Placed"
    AVAILABLE = "Available"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"


class Reason(StrEnum):
    """The closed set of condition reasons (CamelCase, as Kubernetes conventions ask)."""

    # Ready
    MODEL_SERVING = "ModelServing"
    NOT_READY = "NotReady"
    INVALID_SPEC = "InvalidSpec"
    SECRET_NOT_FOUND = "SecretNotFound"
    # ModelAvailable
    PULL_PENDING = "PullPending"
    PULLING = "Pulling"
    PULLED = "Pulled"
    PULL_FAILED = "PullFailed"
    DIGEST_MISMATCH = "DigestMismatch"
    ACCESS_MODE_CONFLICT = "AccessModeConflict"
    # Placed
    PLACED = "Placed"
    FELL_BACK = "FellBack"
    RUNTIME_FELL_BACK = "RuntimeFellBack"
    NO_CAPACITY = "NoCapacity"
    # Available
    MINIMUM_REPLICAS_AVAILABLE = "MinimumReplicasAvailable"
    MINIMUM_REPLICAS_UNAVAILABLE = "MinimumReplicasUnavailable"
    SCALED_TO_ZERO = "ScaledToZero"
    # Progressing
    RECONCILING = "Reconciling"
    ROLLOUT_IN_PROGRESS = "RolloutInProgress"
    ROLLOUT_COMPLETE = "RolloutComplete"
    WAITING_FOR_CAPACITY = "WaitingForCapacity"
    # Degraded
    AS_EXPECTED = "AsExpected"
    REPLICAS_UNAVAILABLE = "ReplicasUnavailable"
    CRASH_LOOPING = "CrashLooping"
    OUT_OF_MEMORY = "OutOfMemory"
    MODEL_CORRUPT = "ModelCorrupt"
    SERVICE_MONITOR_UNSUPPORTED = "ServiceMonitorUnsupported"
    INFERENCE_POOL_UNSUPPORTED = "InferencePoolUnsupported"


CONDITION_REASONS: Final[Mapping[ConditionType, frozenset[Reason]]] = {
    ConditionType.READY: frozenset(
        {
            Reason.MODEL_SERVING,
            Reason.NOT_READY,
            Reason.SCALED_TO_ZERO,
            Reason.INVALID_SPEC,
            Reason.SECRET_NOT_FOUND,
            Reason.PULL_FAILED,
            Reason.DIGEST_MISMATCH,
        }
    ),
    ConditionType.MODEL_AVAILABLE: frozenset(
        {
            Reason.PULL_PENDING,
            Reason.PULLING,
            Reason.PULLED,
            Reason.PULL_FAILED,
            Reason.DIGEST_MISMATCH,
            Reason.ACCESS_MODE_CONFLICT,
            Reason.MODEL_CORRUPT,
            Reason.SECRET_NOT_FOUND,
        }
    ),
    ConditionType.PLACED: frozenset(
        {Reason.PLACED, Reason.FELL_BACK, Reason.NO_CAPACITY, Reason.RUNTIME_FELL_BACK}
    ),
    ConditionType.AVAILABLE: frozenset(
        {
            Reason.MINIMUM_REPLICAS_AVAILABLE,
            Reason.MINIMUM_REPLICAS_UNAVAILABLE,
            Reason.SCALED_TO_ZERO,
        }
    ),
    ConditionType.PROGRESSING: frozenset(
        {
            Reason.RECONCILING,
            Reason.PULLING,
            Reason.ROLLOUT_IN_PROGRESS,
            Reason.ROLLOUT_COMPLETE,
            Reason.WAITING_FOR_CAPACITY,
            Reason.INVALID_SPEC,
        }
    ),
    ConditionType.DEGRADED: frozenset(
        {
            Reason.AS_EXPECTED,
            Reason.REPLICAS_UNAVAILABLE,
            Reason.CRASH_LOOPING,
            Reason.OUT_OF_MEMORY,
            Reason.MODEL_CORRUPT,
            Reason.SERVICE_MONITOR_UNSUPPORTED,
            Reason.INFERENCE_POOL_UNSUPPORTED,
            Reason.INVALID_SPEC,
            Reason.SECRET_NOT_FOUND,
            Reason.PULL_FAILED,
            Reason.DIGEST_MISMATCH,
            Reason.ACCESS_MODE_CONFLICT,
        }
    ),
}
"""Which reasons each condition type may carry; status.py never writes any other pair."""


class Condition(ApiModel):
    """A metav1.Condition."""

    type: ConditionType = Field(description="Which aspect the condition reports.")
    status: Literal["True", "False", "Unknown"] = Field(description="Whether it holds.")
    reason: Reason = Field(
        description="Why, in one CamelCase word from the closed set (see the Conditions table)."
    )
    message: str = Field(
        default="", max_length=32768, description="What is wrong and what to change, for people."
    )
    last_transition_time: str = Field(description="RFC 3339 time the status last changed.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation of the spec this was computed from."
    )

    @model_validator(mode="after")
    def _reason_belongs(self) -> Condition:
        if self.reason not in CONDITION_REASONS[self.type]:
            raise ValueError(f"reason {self.reason.value} is not defined for {self.type.value}")
        return self


class ModelStatus(ApiModel):
    """What is being served."""

    digest: str | None = Field(default=None, description="sha256:<hex> of what is served.")
    size_bytes: int | None = Field(
        default=None, ge=0, description="Size of the model file (or folder) in bytes."
    )
    progress: str | None = Field(default=None, description="Pull progress, e.g. 37%.")
    source: str | None = Field(
        default=None,
        description="The source this status describes: spec.model.source, or the source of the "
        "variant in use.",
    )
    format: ModelFormat | None = Field(default=None, description="The served model's format.")
    variant: str | None = Field(
        default=None,
        description="The spec.model.variants (or alias) variant in use: the one serving the "
        "placed tier. Unset for a single-source model.",
    )


class LocalModelStatus(ApiModel):
    """The observed state of a LocalModel, written by the operator only."""

    phase: Phase = Field(
        default=Phase.PENDING,
        description="One-word summary: Pending, Pulling, Deploying, Ready, Degraded, "
        "ScaledToZero or Failed.",
    )
    backend: Device | None = Field(
        default=None,
        description="The device the runtime serves on, as its ready pods report it (the placed "
        "tier until one has).",
    )
    placed_tier: Device | None = Field(
        default=None, description="The hardware tier the operator placed the pods on."
    )
    fallback_reason: str | None = Field(
        default=None, description="Why the preferred tier(s) were skipped."
    )
    model: ModelStatus = Field(default_factory=ModelStatus)
    replicas: int = Field(default=0, ge=0, description="Pods of the Deployment (scale).")
    ready_replicas: int = Field(default=0, ge=0, description="Pods answering requests.")
    selector: str | None = Field(default=None, description="Pod label selector (scale).")
    endpoint: str | None = Field(default=None, description="In-cluster URL of the API.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation this status was computed from."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        description="One condition per type: Ready, ModelAvailable, Placed, Available, "
        "Progressing, Degraded.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
