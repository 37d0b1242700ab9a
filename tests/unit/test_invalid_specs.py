"""The invalid-spec table: every case is rejected with a message naming the field.

The operator's models reject all of them; the CRD (checked offline here: defaults, OpenAPI schema
and CEL rules evaluated with cel-python) rejects exactly those marked ``crd: true``. The cluster
suite replays the same table against a real API server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from crdcheck import (
    apply_defaults,
    cel_errors,
    crd_errors,
    merge_patch,
    open_api_schema,
    schema_errors,
)
from slm_operator import refdoc
from slm_operator.api import InvalidSpecError, parse_localmodel

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
TABLE: dict[str, Any] = yaml.safe_load((ROOT / "tests" / "data" / "invalid-specs.yaml").read_text())
BASE: dict[str, Any] = TABLE["base"]
CASES: list[dict[str, Any]] = TABLE["cases"]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def _obj(patch: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = merge_patch(BASE, patch)
    return result


def names_field(message: str, field: str) -> bool:
    """True when one line of the message names ``field``.

    Either literally, or as ``PARENT: ... REST ...`` where PARENT.REST is the field: a check
    across fields reports on the object that holds them (``spec.autoscaling: minReplicas ...``).
    """
    for line in message.split("; "):
        if field in line:
            return True
        location, _, text = line.partition(": ")
        if field.startswith(f"{location}.") and field.removeprefix(f"{location}.") in text:
            return True
    return False


VALID_EDGES: dict[str, dict[str, Any]] = {
    "name-of-52-characters": {"metadata": {"name": "m" + "-x" * 25 + "9"}},
    "gpu-without-fallback-list": {"spec": {"hardware": {"preferred": "gpu", "fallback": None}}},
    "cpu-only": {"spec": {"hardware": {"preferred": "cpu", "fallback": []}}},
    "npu-with-defaults": {"spec": {"hardware": None}},
    "http-with-allow-insecure": {
        "spec": {"model": {"source": "http://10.0.0.5:8000/gemma.gguf", "allowInsecure": True}}
    },
    "image-mode-by-digest": {
        "spec": {
            "model": {
                "source": "oci://registry.local:5000/acme/gemma@sha256:" + "a" * 64,
                "format": "gguf",
            },
            "cache": {"mode": "Image"},
            "hardware": {"preferred": "cpu", "fallback": []},
        }
    },
    "ollama-with-host-and-tag": {
        "spec": {"model": {"source": "ollama://registry.example.com/acme/qwen2.5:0.5b-q4"}}
    },
    "onnx-folder-on-npu": {
        "spec": {
            "model": {
                "source": "hf://microsoft/Phi-4-mini-instruct-onnx/cpu-int4",
                "format": "onnx",
            },
            "hardware": {"preferred": "npu", "fallback": ["gpu", "cpu"]},
        }
    },
    "integer-quantities": {"spec": {"resources": {"requests": {"cpu": 2, "memory": "4Gi"}}}},
    "boundary-values": {
        "spec": {
            "parameters": {"temperature": 0, "topP": 1, "topK": 0, "numPredict": -1},
            "serving": {"replicas": 0, "port": 1024, "parallel": 64},
            "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 3},
        }
    },
    "raw-scheduling-objects": {
        "spec": {
            "scheduling": {
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                "affinity": {"nodeAffinity": {}},
                "nodeSelector": {"pool": "inference"},
            }
        }
    },
}


def test_table_is_large_and_well_formed() -> None:
    assert len(CASES) >= 25
    names = [case["name"] for case in CASES]
    assert len(set(names)) == len(names), "case names must be unique"
    for case in CASES:
        assert set(case) <= {"name", "crd", "strict", "field", "patch"}, case["name"]
        assert isinstance(case["crd"], bool), case["name"]
        assert case.get("strict") is None or case["crd"], f"{case['name']}: strict needs crd"
    assert any(not case["crd"] for case in CASES)


def test_base_is_valid() -> None:
    parse_localmodel(BASE)
    assert crd_errors(BASE) == []


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_models_reject_naming_the_field(case: dict[str, Any]) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        parse_localmodel(_obj(case["patch"]))
    assert names_field(str(caught.value), case["field"]), str(caught.value)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_crd_rejects_exactly_the_crd_cases(case: dict[str, Any]) -> None:
    errors = crd_errors(_obj(case["patch"]))
    if not case["crd"]:
        assert errors == [], f"marked crd: false but the CRD rejects it: {errors}"
        return
    assert any(e.names(case["field"]) for e in errors), f"no error names {case['field']}: {errors}"
    if case.get("strict"):
        assert crd_errors(_obj(case["patch"]), strict=False) == [], (
            "marked strict but rejected without strict field validation"
        )


CROSS_FIELD_CASES = (
    "name-too-long",
    "name-starts-with-digit",
    "http-without-allow-insecure",
    "image-mode-without-digest",
    "fallback-repeats-preferred",
    "min-replicas-above-max",
)


@pytest.mark.parametrize("name", CROSS_FIELD_CASES)
def test_cross_field_cases_are_caught_by_cel_alone(name: str) -> None:
    """The schema passes these; a CEL rule rejects them and reports the field."""
    (case,) = [c for c in CASES if c["name"] == name]
    defaulted = apply_defaults(open_api_schema(), _obj(case["patch"]))
    assert schema_errors(defaulted) == []
    assert any(e.names(case["field"]) for e in cel_errors(defaulted))


@pytest.mark.parametrize("name", sorted(VALID_EDGES))
def test_valid_edge_specs_pass_both(name: str) -> None:
    obj = _obj(VALID_EDGES[name])
    parse_localmodel(obj)
    assert crd_errors(obj) == []


@pytest.mark.parametrize("name", sorted(TABLE["valid"]))
def test_valid_table_specs_pass_both(name: str) -> None:
    """The table's `valid` edges, which the cluster suite also sends to the API server."""
    obj = _obj(TABLE["valid"][name])
    parse_localmodel(obj)
    assert crd_errors(obj) == []


def test_omitted_fallback_is_the_tiers_below_preferred() -> None:
    obj = _obj(VALID_EDGES["gpu-without-fallback-list"])
    assert [t.value for t in parse_localmodel(obj).spec.hardware.tiers()] == ["gpu", "cpu"]
    assert [t.value for t in parse_localmodel(BASE).spec.hardware.tiers()] == ["gpu", "cpu"]
    obj = _obj(VALID_EDGES["npu-with-defaults"])
    assert [t.value for t in parse_localmodel(obj).spec.hardware.tiers()] == ["npu", "gpu", "cpu"]


@pytest.mark.skipif(not EXAMPLES, reason="examples/ has no LocalModel yet")
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_pass_both(path: Path) -> None:
    models = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "LocalModel"]
    assert models, f"{path.name} holds no LocalModel"
    for doc in models:
        parse_localmodel(doc)
        assert crd_errors(doc) == []


@pytest.mark.parametrize(
    ("message", "field", "expected"),
    [
        ("spec.model.sha256: String should match", "spec.model.sha256", True),
        ("spec.autoscaling: minReplicas (5) must be <= 2", "spec.autoscaling.minReplicas", True),
        ("spec: cache.mode Image needs an oci:// source", "spec.cache.mode", True),
        ("spec.model: an http:// source needs allowInsecure", "spec.model.source", True),
        ("spec.model: an http:// source needs allowInsecure", "spec.model.format", False),
        ("spec.serving: parallel must be 1", "spec.hardware.parallel", False),
        ("a; spec.serving.port: too low", "spec.serving.port", True),
    ],
)
def test_names_field(message: str, field: str, expected: bool) -> None:
    assert names_field(message, field) is expected


def test_what_the_crd_admits_is_documented_as_checked_by_the_operator() -> None:
    """Every case the API server admits falls under a row of the reference's operator-only list."""
    reference = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    assert "## Checked by the operator only" in reference
    grammar = refdoc.OPERATOR_ONLY[0][0]
    assert "`spec.model.source`" in grammar
    assert {case["field"] for case in CASES if not case["crd"]} == {"spec.model.source"}
