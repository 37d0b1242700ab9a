"""Sizing: Kubernetes quantities and the server container's requests and limits."""

from __future__ import annotations

from typing import Any

import pytest
from slm_operator.api import parse_localmodel
from slm_operator.sizing import (
    DEFAULT_CONTEXT_LENGTH,
    KV_CACHE_BYTES_PER_TOKEN,
    MIB,
    RUNTIME_OVERHEAD_BYTES,
    format_mebibytes,
    kv_cache_bytes,
    memory_estimate,
    parse_quantity,
    pod_resources,
)
from slm_operator.spec import LocalModelSpec
from slm_runtime.config import ModelFormat

pytestmark = pytest.mark.unit

GEMMA_BYTES = 253_115_616
"""Size of the Gemma 3 270M Q4_K_M GGUF."""

KIB = 1024
GGUF = "hf://org/repo/model.gguf"
ONNX = "hf://org/repo/phi-4-mini-onnx"


def make_spec(source: str = GGUF, **spec: Any) -> LocalModelSpec:
    """A LocalModelSpec from a dict, through the same parser the operator uses."""
    model = {"source": source} | ({"format": "onnx"} if source == ONNX else {})
    body = {"metadata": {"name": "m"}, "spec": {"model": model, **spec}}
    return parse_localmodel(body).spec


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", 1.0),
        ("0", 0.0),
        ("500m", 0.5),
        ("250m", 0.25),
        ("1.5", 1.5),
        (".5", 0.5),
        ("2k", 2000.0),
        ("1Ki", 1024.0),
        ("128Mi", 128 * MIB),
        ("2Gi", 2 * 1024**3),
        ("1Ti", 1024**4),
        ("1G", 1e9),
        ("100n", 100e-9),
        ("5u", 5e-6),
        ("1e3", 1000.0),
        ("1.5E2", 150.0),
        ("12e-1", 1.2),
        ("+3", 3.0),
        (" 4 ", 4.0),
        (2, 2.0),
        (0.5, 0.5),
    ],
)
def test_parse_quantity(text: str | int | float, expected: float) -> None:
    assert parse_quantity(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "Gi", "1GB", "1gi", "one", "1 Gi", "1.2.3", "--1", "0x10"])
def test_parse_quantity_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="is not a Kubernetes quantity"):
        parse_quantity(text)


def test_parse_quantity_rejects_bool() -> None:
    with pytest.raises(ValueError, match="is not a Kubernetes quantity"):
        parse_quantity(True)


@pytest.mark.parametrize(
    ("size", "expected"),
    [(1, "1Mi"), (MIB, "1Mi"), (MIB + 1, "2Mi"), (1.5 * MIB, "2Mi"), (0, "1Mi"), (3 * MIB, "3Mi")],
)
def test_format_mebibytes_rounds_up(size: float, expected: str) -> None:
    assert format_mebibytes(size) == expected


def test_defaults_derive_memory_from_model_and_kv_cache() -> None:
    spec = make_spec()
    # Four parallel sequences plus llama.cpp's embedding context, 128 KiB per token each.
    kv = DEFAULT_CONTEXT_LENGTH * (4 + 1) * 128 * KIB
    expected_bytes = GEMMA_BYTES + kv + RUNTIME_OVERHEAD_BYTES
    expected = f"{-(-expected_bytes // MIB)}Mi"

    resources = pod_resources(spec, GEMMA_BYTES)

    assert resources == {
        "requests": {"cpu": "1", "memory": expected},
        "limits": {"memory": expected},
    }
    assert expected == "3314Mi"
    assert parse_quantity(expected) >= expected_bytes


@pytest.mark.parametrize(
    ("source", "parameters", "serving", "expected"),
    [
        (GGUF, {}, {}, 4096 * 5 * 128 * KIB),
        (GGUF, {"contextLength": 2048}, {"parallel": 1}, 2048 * 2 * 128 * KIB),
        (GGUF, {"contextLength": 8192}, {"parallel": 2}, 8192 * 3 * 128 * KIB),
        (ONNX, {}, {}, 4096 * 4 * 256 * KIB),
        (ONNX, {"contextLength": 1024}, {"parallel": 1}, 1024 * 1 * 256 * KIB),
    ],
)
def test_kv_cache_covers_every_sequence_the_runtime_allocates(
    source: str, parameters: dict[str, Any], serving: dict[str, Any], expected: int
) -> None:
    spec = make_spec(source, parameters=parameters, serving=serving)
    assert kv_cache_bytes(spec) == expected
    assert memory_estimate(spec, GEMMA_BYTES) == GEMMA_BYTES + expected + RUNTIME_OVERHEAD_BYTES


def test_kv_bound_holds_for_phi4_mini() -> None:
    # Phi-4-mini: 32 layers, 8 KV heads of 128 dims; K and V in f16 (GGUF) or f32 (ONNX on CPU).
    per_token_f16 = 2 * 32 * 8 * 128 * 2
    assert KV_CACHE_BYTES_PER_TOKEN[ModelFormat.GGUF] >= per_token_f16
    assert KV_CACHE_BYTES_PER_TOKEN[ModelFormat.ONNX] >= 2 * per_token_f16


def test_empty_resources_are_never_best_effort() -> None:
    resources = pod_resources(make_spec(resources={}), None)
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert parse_quantity(resources["requests"]["memory"]) > 0
    assert parse_quantity(resources["requests"]["cpu"]) > 0


def test_memory_limit_equals_request_and_no_cpu_limit() -> None:
    resources = pod_resources(make_spec(), GEMMA_BYTES)
    assert resources["limits"]["memory"] == resources["requests"]["memory"]
    assert "cpu" not in resources["limits"]


def test_unknown_model_size_is_bounded_by_the_cache_size() -> None:
    spec = make_spec(cache={"size": "3Gi"})
    assert memory_estimate(spec, None) == memory_estimate(spec, 3 * 1024**3)
    assert memory_estimate(spec, None) > memory_estimate(spec, GEMMA_BYTES)


def test_num_thread_sets_the_cpu_request() -> None:
    resources = pod_resources(make_spec(parameters={"numThread": 6}), GEMMA_BYTES)
    assert resources["requests"]["cpu"] == "6"
    assert "cpu" not in resources["limits"]


def test_user_resources_win() -> None:
    spec = make_spec(
        resources={
            "requests": {"cpu": "500m", "memory": "1Gi", "ephemeral-storage": "1Gi"},
            "limits": {"cpu": 2, "memory": "2Gi"},
        }
    )
    assert pod_resources(spec, GEMMA_BYTES) == {
        "requests": {"cpu": "500m", "ephemeral-storage": "1Gi", "memory": "1Gi"},
        "limits": {"cpu": "2", "memory": "2Gi"},
    }


def test_user_memory_request_alone_gets_no_derived_limit() -> None:
    resources = pod_resources(make_spec(resources={"requests": {"memory": "3Gi"}}), GEMMA_BYTES)
    assert resources["requests"]["memory"] == "3Gi"
    assert "memory" not in resources["limits"]
    assert resources["requests"]["cpu"] == "1"


def test_user_limit_alone_is_left_for_kubernetes_to_copy_into_the_request() -> None:
    # Kubernetes defaults a missing request to the limit; a derived request could exceed it.
    resources = pod_resources(
        make_spec(resources={"limits": {"memory": "1Gi", "cpu": "3"}}), GEMMA_BYTES
    )
    assert resources == {"requests": {}, "limits": {"cpu": "3", "memory": "1Gi"}}


def test_cpu_only_spec_still_derives_memory() -> None:
    resources = pod_resources(make_spec(resources={"requests": {"cpu": "2"}}), GEMMA_BYTES)
    assert resources["requests"]["cpu"] == "2"
    assert resources["requests"]["memory"] == resources["limits"]["memory"]


def test_resources_are_deterministic() -> None:
    spec = make_spec(parameters={"numThread": 4})
    assert pod_resources(spec, GEMMA_BYTES) == pod_resources(spec, GEMMA_BYTES)
    assert list(pod_resources(spec, GEMMA_BYTES)["requests"]) == ["cpu", "memory"]
