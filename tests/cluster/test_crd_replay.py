"""The API server enforces the LocalModel CRD: every invalid spec marked `crd` is rejected, naming
the field, and the table's valid edges are admitted (no rule is stricter than its field)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

from .conftest import ROOT, Kubectl

TABLE = ROOT / "tests" / "data" / "invalid-specs.yaml"


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply a JSON merge patch (RFC 7386)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _table() -> dict[str, Any]:
    if not TABLE.exists() or not list((ROOT / "crds").glob("*.yaml")):
        return {"base": None, "cases": [], "valid": {}}
    table: dict[str, Any] = yaml.safe_load(TABLE.read_text())
    return table


TABLE_DATA = _table()
CRD_CASES = [c for c in TABLE_DATA["cases"] if c.get("crd")]
pytestmark = pytest.mark.skipif(TABLE_DATA["base"] is None, reason="crds/ not generated yet")


def _create(kubectl: Kubectl, obj: dict[str, Any]) -> tuple[int, str]:
    result = kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(obj), check=False)
    return result.returncode, result.stderr


def test_valid_base_is_accepted(crds: list[str], kubectl: Kubectl) -> None:
    code, stderr = _create(kubectl, TABLE_DATA["base"])
    assert code == 0, stderr


def test_table_has_crd_cases() -> None:
    assert CRD_CASES, f"{TABLE} marks no case with crd: true"


@pytest.mark.parametrize("case", CRD_CASES, ids=[c["name"] for c in CRD_CASES])
def test_invalid_spec_is_rejected_naming_the_field(
    crds: list[str], kubectl: Kubectl, case: dict[str, Any]
) -> None:
    obj = merge_patch(TABLE_DATA["base"], case["patch"])
    code, stderr = _create(kubectl, obj)
    assert code != 0, f"{case['name']}: the API server accepted {json.dumps(obj['spec'])}"
    assert case["field"] in stderr, f"{case['name']}: {stderr}"


@pytest.mark.parametrize("name", sorted(TABLE_DATA["valid"]))
def test_valid_edge_is_accepted(crds: list[str], kubectl: Kubectl, name: str) -> None:
    obj = merge_patch(TABLE_DATA["base"], TABLE_DATA["valid"][name])
    code, stderr = _create(kubectl, obj)
    assert code == 0, f"{name}: {stderr}"


def test_merge_patch_follows_rfc7386() -> None:
    base = {"a": {"b": 1, "c": [1]}, "d": 2}
    assert merge_patch(base, {"a": {"b": None, "c": [2]}, "e": {"f": 3}}) == {
        "a": {"c": [2]},
        "d": 2,
        "e": {"f": 3},
    }
    assert base == {"a": {"b": 1, "c": [1]}, "d": 2}
