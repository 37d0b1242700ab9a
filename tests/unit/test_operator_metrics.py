"""The operator's per-model status gauge: one series per LocalModel, its phase and Ready reason."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from prometheus_client import generate_latest
from slm_operator import metrics
from slm_operator.api import LocalModelStatus, Phase, Reason
from slm_operator.status import failed_status

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def series(name: str) -> list[str]:
    text = generate_latest().decode()
    return sorted(line for line in text.splitlines() if line.startswith(f"{name}{{"))


def test_a_model_has_one_status_series_that_follows_it() -> None:
    key = ("team-a", "gemma")
    metrics.observe_model(key, LocalModelStatus(phase=Phase.PENDING))
    assert series("slm_operator_model_status") == [
        'slm_operator_model_status{localmodel="gemma",namespace="team-a",phase="Pending",'
        'reason=""} 1.0'
    ]
    failed = failed_status(
        None, generation=1, error="sha256 mismatch", now=NOW, error_reason=Reason.DIGEST_MISMATCH
    )
    metrics.observe_model(key, failed)
    assert series("slm_operator_model_status") == [
        'slm_operator_model_status{localmodel="gemma",namespace="team-a",phase="Failed",'
        'reason="DigestMismatch"} 1.0'
    ]
    other = ("team-b", "gemma")
    metrics.observe_model(other, LocalModelStatus(phase=Phase.PULLING))
    metrics.forget_model(key)
    assert series("slm_operator_model_status") == [
        'slm_operator_model_status{localmodel="gemma",namespace="team-b",phase="Pulling",'
        'reason=""} 1.0'
    ]
    metrics.forget_model(other)
    assert series("slm_operator_model_status") == []
    assert series("slm_operator_models") == []
