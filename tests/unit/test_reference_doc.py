"""docs/reference.md: current, complete, and faithful to the CRD the API server validates with."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from slm_operator import api, conditions, refdoc

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "reference.md"
CRD = ROOT / "crds" / "slm.dev_localmodels.yaml"


def _field_paths(node: dict[str, Any], path: str) -> Iterator[str]:
    """Every field below ``node`` as the reference names it (``status.conditions[].reason``)."""
    for name, child in node.get("properties", {}).items():
        yield f"{path}.{name}"
        yield from _field_paths(child, f"{path}.{name}")
        yield from _field_paths(child.get("items", {}), f"{path}.{name}[]")


def _committed_crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text(encoding="utf-8"))
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_committed_reference_is_current() -> None:
    assert REFERENCE.read_text(encoding="utf-8") == refdoc.render_reference(), (
        "docs/reference.md is stale: run `make reference` and commit it"
    )


def test_check_mode_reports_a_stale_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "reference.md"
    assert refdoc.main(["--check", "--output", str(out)]) == 1
    assert refdoc.main(["--output", str(out)]) == 0
    assert refdoc.main(["--check", "--output", str(out)]) == 0
    out.write_text(out.read_text().replace("`spec.model.sha256`", "`spec.model.digest`"))
    capsys.readouterr()
    assert refdoc.main(["--check", "--output", str(out)]) == 1
    assert "+| `spec.model.sha256`" in capsys.readouterr().out


def test_every_field_of_the_committed_crd_has_a_row() -> None:
    text = refdoc.render_reference()
    schema = _committed_crd_schema()
    paths = [p for top in ("spec", "status") for p in _field_paths(schema["properties"][top], top)]
    assert len(paths) > 80
    missing = [p for p in paths if f"| `{p}` |" not in text]
    assert not missing, f"fields without a row in the reference: {missing}"


def test_every_field_has_a_description() -> None:
    assert refdoc.undocumented_fields() == [], (
        "add a Field(description=...) in api.py (or slm_runtime/config.py), then `make crds`"
    )


def test_rows_show_type_default_and_constraints() -> None:
    text = refdoc.render_reference()
    rows = {line.split(" | ")[0].strip("| `"): line for line in text.splitlines()}
    assert "| string | `Volume` | one of `Volume`, `PerPod`, `Image` |" in rows["spec.cache.mode"]
    assert "| int or string | `5Gi` | length ≤ 64; Kubernetes quantity" in rows["spec.cache.size"]
    assert "must be more than 0" in rows["spec.cache.size"]
    assert "entries ≤ 64; each length ≤ 63, label value" in rows["spec.scheduling.podLabels"]
    assert (
        "| []string | `[ollama, openai]` | items 1 to 2; no duplicates"
        in (rows["spec.serving.apis"])
    )
    assert "| number | - | > 0.0; ≤ 1.0 |" in rows["spec.parameters.topP"]
    assert "| string | - | length 1 to 2048; scheme `hf`" in rows["spec.model.source"]
    assert "required; length 1 to 2048; scheme `hf`" in rows["spec.model.variants[].source"]
    assert "64 lowercase hex characters" in rows["spec.model.sha256"]
    assert "| `80` | 1 to 100; `null` allowed |" in rows["spec.autoscaling.targetCpuUtilization"]
    assert "[object](#specserving)" in rows["spec.serving"]
    assert "| map[string]string |" in rows["spec.scheduling.nodeSelector"]


def test_every_object_row_links_to_a_section_of_the_page() -> None:
    text = refdoc.render_reference()
    headings = {
        refdoc.anchor(line.lstrip("# ")) for line in text.splitlines() if line.startswith("#")
    }
    links = [part.split(")")[0] for part in text.split("](#")[1:]]
    assert links
    assert set(links) <= headings


def test_cel_rules_and_the_name_rule_are_listed() -> None:
    text = refdoc.render_reference()
    assert "spec.hardware.fallback must not repeat spec.hardware.preferred" in text
    assert "spec.autoscaling.minReplicas must be <= maxReplicas" in text
    assert "`" + str(api.NAME_RULE["message"]).replace("metadata.name", "metadata.name`", 1) in text


def test_every_condition_type_reason_and_phase_is_in_the_reference() -> None:
    text = refdoc.render_reference()
    for kind in conditions.ConditionType:
        assert f"| `{kind.value}` |" in text
    for reason in conditions.Reason:
        assert f"[`{reason.value}`](troubleshooting.md#{reason.value.lower()})" in text
    for phase in conditions.Phase:
        assert f"[`{phase.value}`](troubleshooting.md#phase-{phase.value.lower()})" in text


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "integer", "minimum": 0, "maximum": 9}, ["0 to 9"]),
        ({"type": "number", "minimum": 0, "exclusiveMinimum": True}, ["> 0"]),
        ({"type": "string", "maxLength": 5}, ["length ≤ 5"]),
        ({"type": "string", "pattern": "^a+$"}, ["matches `^a+$`"]),
        ({"type": "string", "enum": ["A", "B"]}, ["one of `A`, `B`"]),
        (
            {"type": "array", "items": {"type": "string", "minLength": 1}},
            ["each length ≥ 1"],
        ),
        ({"type": "object", "x-kubernetes-preserve-unknown-fields": True}, []),
    ],
)
def test_constraints(schema: dict[str, Any], expected: list[str]) -> None:
    assert refdoc.constraints(schema) == expected


@pytest.mark.parametrize(
    ("heading", "expected"),
    [
        ("`spec.model`", "specmodel"),
        ("Phase `Pulling`", "phase-pulling"),
        ("401 Unauthorized", "401-unauthorized"),
    ],
)
def test_anchor_matches_github(heading: str, expected: str) -> None:
    assert refdoc.anchor(heading) == expected
