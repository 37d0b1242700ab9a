"""The soak benchmark's analysis: windows, percentiles and the verdicts on leaks and drift."""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.unit

SOAK_PATH = Path(__file__).resolve().parents[2] / "bench" / "soak.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("soak_bench", SOAK_PATH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


soak = _load()
MINUTE = 60.0
EDGES = soak.window_edges(6 * MINUTE, 6)


def _run(
    rss_mib: Sequence[float] = (400,) * 6,
    threads: Sequence[int] = (20,) * 6,
    fds: Sequence[int] = (30,) * 6,
    latency_s: Sequence[float] = (0.5,) * 6,
    light_s: Sequence[float] = (0.005,) * 6,
    errors: Sequence[int] = (0,) * 6,
) -> list[Any]:
    """Six one-minute windows with the given per-window values; returns their summaries."""
    requests, samples = [], []
    for w, (lo, _) in enumerate(EDGES):
        for i in range(50):
            t = lo + i
            requests.append(soak.Request(t, "gen", soak.Kind.GENERATION, latency_s[w], ttft=0.05))
            requests.append(soak.Request(t + 0.5, "light", soak.Kind.LIGHT, light_s[w]))
        for i in range(errors[w]):
            requests.append(soak.Request(lo + i, "gen", soak.Kind.GENERATION, 1.0, error="500"))
        for i in range(12):
            samples.append(
                soak.Sample(lo + 5 * i, int(rss_mib[w] * 1024), threads[w], fds[w] - (i % 2))
            )
    return list(soak.summarize(requests, samples, EDGES))


def _verdicts(windows: list[Any]) -> dict[str, bool]:
    return {v.name: v.ok for v in soak.judge(windows, soak.Thresholds())}


def test_percentile_interpolates_and_is_nan_when_empty() -> None:
    assert soak.percentile([1, 2, 3, 4], 50) == 2.5
    assert soak.percentile([10], 99) == 10
    assert soak.percentile(list(range(101)), 99) == 99
    assert math.isnan(soak.percentile([], 50))


def test_windows_cover_the_run_without_gaps() -> None:
    edges = soak.window_edges(30 * MINUTE, 6)
    assert edges[0] == (0, 5 * MINUTE)
    assert edges[-1][1] == 30 * MINUTE
    assert all(a[1] == b[0] for a, b in itertools.pairwise(edges))
    with pytest.raises(ValueError, match="positive duration"):
        soak.window_edges(0, 6)


def test_summary_counts_requests_errors_and_the_process_at_window_end() -> None:
    windows = _run(rss_mib=(400, 401, 402, 403, 404, 405), errors=(0, 0, 3, 0, 0, 0))
    assert [w.requests for w in windows] == [100, 100, 103, 100, 100, 100]
    assert [w.errors for w in windows] == [0, 0, 3, 0, 0, 0]
    assert [w.generations for w in windows] == [50] * 6
    assert windows[0].p50 == pytest.approx(500)
    assert windows[0].ttft_p50 == pytest.approx(50)
    assert windows[0].light_p99 == pytest.approx(5)
    assert windows[5].rss_mib == pytest.approx(405)
    assert (windows[0].fds, windows[0].fds_max) == (29, 30)


def test_a_flat_run_passes_every_verdict() -> None:
    assert _verdicts(_run()) == {
        "RSS bounded": True,
        "threads not growing": True,
        "fds not growing": True,
        "latency stable": True,
        "zero errors": True,
    }


def test_growing_rss_fails_and_small_noise_passes() -> None:
    assert not _verdicts(_run(rss_mib=(400, 420, 440, 460, 480, 500)))["RSS bounded"]
    assert _verdicts(_run(rss_mib=(400, 405, 398, 410, 404, 412)))["RSS bounded"]


def test_leaking_fds_or_threads_fail() -> None:
    verdicts = _verdicts(_run(fds=(30, 34, 38, 42, 46, 50), threads=(20, 21, 22, 23, 24, 25)))
    assert not verdicts["fds not growing"]
    assert not verdicts["threads not growing"]
    assert verdicts["RSS bounded"]


def test_fds_within_the_allowance_pass() -> None:
    assert _verdicts(_run(fds=(30, 36, 31, 38, 33, 35)))["fds not growing"]


def test_latency_drift_fails() -> None:
    assert not _verdicts(_run(latency_s=(0.5, 0.6, 0.7, 0.8, 0.9, 1.0)))["latency stable"]
    assert not _verdicts(_run(light_s=(0.005,) * 5 + (0.2,)))["latency stable"]
    assert _verdicts(_run(latency_s=(0.5, 0.55, 0.6, 0.5, 0.45, 0.6)))["latency stable"]


def test_any_error_fails() -> None:
    assert not _verdicts(_run(errors=(0, 0, 0, 0, 0, 1)))["zero errors"]


def test_a_window_without_samples_fails_instead_of_passing() -> None:
    windows = _run()
    windows[-1] = dataclasses.replace(windows[-1], rss_mib=math.nan)
    assert not _verdicts(windows)["RSS bounded"]


def test_the_section_replaces_its_markers_and_keeps_the_others() -> None:
    doc = "# Benchmarks\n\n<!-- a:start -->\nA\n<!-- a:end -->\n"
    first = soak.write_section(doc, f"{soak.START}\nold\n{soak.END}")
    assert first.startswith(doc.rstrip())
    second = soak.write_section(first, f"{soak.START}\nnew\n{soak.END}")
    assert "old" not in second
    assert second.count(soak.START) == 1
    assert "<!-- a:start -->\nA\n<!-- a:end -->" in second


def test_slots_held_after_the_load_fail() -> None:
    metrics = "# HELP x\nslm_runtime_requests_in_flight 1.0\nslm_runtime_requests_queued 0.0\n"
    in_flight = soak.gauge(metrics, "slm_runtime_requests_in_flight")
    queued = soak.gauge(metrics, "slm_runtime_requests_queued")
    assert not soak.judge_idle(in_flight, queued, 30.0).ok
    assert soak.judge_idle(0.0, 0.0, 0.1).ok
    assert math.isnan(soak.gauge(metrics, "slm_runtime_absent"))
    assert not soak.judge_idle(math.nan, 0.0, 30.0).ok


def test_too_few_generations_to_compare_fail() -> None:
    windows = _run()
    windows[-1] = dataclasses.replace(windows[-1], generations=3)
    verdict = {v.name: v for v in soak.judge(windows, soak.Thresholds())}["latency stable"]
    assert not verdict.ok
    assert "too few" in verdict.detail
