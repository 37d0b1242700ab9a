"""The operator's Prometheus metrics: reconciles, errors, duration, writes, models by phase."""

from __future__ import annotations

import threading
from typing import Final

from prometheus_client import Counter, Gauge, Histogram
from slm_runtime.config import Device

from slm_operator.api import Phase

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
LEADER: Final = Gauge(
    "slm_operator_leader", "1 while this replica reconciles (the Lease holder, or standalone)."
)

_lock = threading.Lock()
_models: dict[tuple[str, str], tuple[str, str]] = {}


def observe_model(key: tuple[str, str], phase: Phase, backend: Device | None) -> None:
    """Record a model's current phase and backend for the MODELS gauge."""
    with _lock:
        _models[key] = (phase.value, backend.value if backend else "")
        _refresh()


def forget_model(key: tuple[str, str]) -> None:
    """Remove a deleted model from the MODELS gauge."""
    with _lock:
        _models.pop(key, None)
        _refresh()


def _refresh() -> None:
    counts: dict[tuple[str, str], int] = {}
    for value in _models.values():
        counts[value] = counts.get(value, 0) + 1
    MODELS.clear()
    for (phase, backend), count in counts.items():
        MODELS.labels(phase=phase, backend=backend).set(count)
