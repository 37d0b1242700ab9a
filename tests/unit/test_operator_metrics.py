"""The operator's per-model status gauge: one series per LocalModel, its phase and Ready reason."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from prometheus_client import generate_latest
from slm_operator import metrics
from slm_operator.conditions import LocalModelStatus, Phase, Reason
from slm_operator.status import failed_status

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def series(name: str) -> list[str]:
    text = generate_latest().decode()
    return sorted(line for line in text.splitlines() if line.startswith(f"{name}{{"))


def status_line(namespace: str, model: str, phase: str, reason: str) -> str:
    """A model's status series as the exposition format writes it."""
    labels = f'localmodel="{model}",namespace="{namespace}",phase="{phase}",reason="{reason}"'
    return f"slm_operator_model_status{{{labels}}} 1.0"


def test_a_model_has_one_status_series_that_follows_it() -> None:
    key = ("team-a", "gemma")
    metrics.observe_model(key, LocalModelStatus(phase=Phase.PENDING))
    assert series("slm_operator_model_status") == [status_line("team-a", "gemma", "Pending", "")]
    failed = failed_status(
        None, generation=1, error="sha256 mismatch", now=NOW, error_reason=Reason.DIGEST_MISMATCH
    )
    metrics.observe_model(key, failed)
    assert series("slm_operator_model_status") == [
        status_line("team-a", "gemma", "Failed", "DigestMismatch")
    ]
    other = ("team-b", "gemma")
    metrics.observe_model(other, LocalModelStatus(phase=Phase.PULLING))
    metrics.forget_model(key)
    assert series("slm_operator_model_status") == [status_line("team-b", "gemma", "Pulling", "")]
    metrics.forget_model(other)
    assert series("slm_operator_model_status") == []
    assert series("slm_operator_models") == []


def test_a_model_scaled_to_zero_is_told_apart_from_a_stuck_one() -> None:
    from slm_operator.conditions import Condition, ConditionType

    def condition(kind: ConditionType, reason: Reason) -> Condition:
        return Condition(
            type=kind, status="False", reason=reason, last_transition_time="2026-01-01T00:00:00Z"
        )

    key = ("team-a", "idle")
    idle = LocalModelStatus(
        phase=Phase.SCALED_TO_ZERO,
        conditions=[
            condition(ConditionType.READY, Reason.SCALED_TO_ZERO),
            condition(ConditionType.AVAILABLE, Reason.SCALED_TO_ZERO),
        ],
    )
    metrics.observe_model(key, idle)
    assert series("slm_operator_model_status") == [
        status_line("team-a", "idle", "ScaledToZero", "ScaledToZero")
    ]
    # Scaled to zero and Failed: the failure is what counts.
    failed = failed_status(
        idle, generation=2, error="sha256 mismatch", now=NOW, error_reason=Reason.DIGEST_MISMATCH
    )
    metrics.observe_model(key, failed)
    assert series("slm_operator_model_status") == [
        status_line("team-a", "idle", "Failed", "DigestMismatch")
    ]
    metrics.forget_model(key)


def test_models_that_no_longer_exist_are_dropped() -> None:
    for name in ("kept", "gone"):
        metrics.observe_model(("ns", name), LocalModelStatus(phase=Phase.READY))
    metrics.retain_models({("ns", "kept")})
    assert [line.split("localmodel=")[1].split(",")[0] for line in
            series("slm_operator_model_status")] == ['"kept"']  # fmt: skip
    metrics.retain_models(set())
    assert series("slm_operator_model_status") == []
