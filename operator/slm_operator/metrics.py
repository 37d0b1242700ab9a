"""The operator's Prometheus metrics: reconciles, errors, duration, writes, models by phase, and
each model's phase and Ready reason (what the chart's PrometheusRule alerts on)."""

from __future__ import annotations

import threading
from typing import Final

from prometheus_client import Counter, Gauge, Histogram

from slm_operator.conditions import ConditionType, LocalModelStatus

RECONCILES: Final = Counter(
    "slm_operator_reconciles_total", "Reconciles run, by what caused them.", ["cause"]
)
RECONCILE_ERRORS: Final = Counter(
    "slm_operator_reconcile_errors_total", "Reconciles that raised an unexpected error."
)
RECONCILE_SECONDS: Final = Histogram(
    "slm_operator_reconcile_duration_seconds",
    "Time spent in one reconcile.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
WRITES: Final = Counter(
    "slm_operator_writes_total", "Mutating API requests sent (applies, deletes, status patches)."
)
FALLBACKS: Final = Counter(
    "slm_operator_fallbacks_total", "Times a LocalModel stepped down a hardware tier."
)
MODELS: Final = Gauge(
    "slm_operator_models", "Managed LocalModels by phase and backend.", ["phase", "backend"]
)
MODEL_STATUS: Final = Gauge(
    "slm_operator_model_status",
    "1 for each LocalModel, labelled with its phase and its Ready condition's reason.",
    ["namespace", "localmodel", "phase", "reason"],
)
LEADER: Final = Gauge(
    "slm_operator_leader", "1 while this replica reconciles (the Lease holder, or standalone)."
)

_lock = threading.Lock()
_models: dict[tuple[str, str], tuple[str, str]] = {}
_statuses: dict[tuple[str, str], tuple[str, str]] = {}


def observe_model(key: tuple[str, str], status: LocalModelStatus) -> None:
    """Record a model's current phase, backend and Ready reason (``ScaledToZero`` for a model
    scaled to zero on purpose, which is not Ready and not stuck either)."""
    reasons = {c.type: c.reason for c in status.conditions}
    reason = reasons[ConditionType.READY].value if ConditionType.READY in reasons else ""
    with _lock:
        _models[key] = (status.phase.value, status.backend.value if status.backend else "")
        _refresh()
        _set_status(key, (status.phase.value, reason))


def forget_model(key: tuple[str, str]) -> None:
    """Remove a deleted model from the gauges."""
    with _lock:
        _models.pop(key, None)
        _refresh()
        _set_status(key, None)


def retain_models(keys: set[tuple[str, str]]) -> None:
    """Forget every model but ``keys`` (the ones that exist): a reconcile that ended after its
    model's deletion was handled may have recorded it again."""
    with _lock:
        for key in set(_models) - keys:
            _models.pop(key, None)
            _set_status(key, None)
        _refresh()


def _set_status(key: tuple[str, str], value: tuple[str, str] | None) -> None:
    previous = _statuses.pop(key, None)
    if previous is not None and previous != value:
        MODEL_STATUS.remove(*key, *previous)
    if value is not None:
        _statuses[key] = value
        MODEL_STATUS.labels(*key, *value).set(1)


def _refresh() -> None:
    counts: dict[tuple[str, str], int] = {}
    for value in _models.values():
        counts[value] = counts.get(value, 0) + 1
    MODELS.clear()
    for (phase, backend), count in counts.items():
        MODELS.labels(phase=phase, backend=backend).set(count)
