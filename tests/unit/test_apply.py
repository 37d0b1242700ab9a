"""Deciding when a child must be written: missing, re-rendered, or drifted; never a no-op."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from slm_operator.controller.apply import (
    APPLIED_HASH_ANNOTATION,
    apply_reason,
    first_difference,
    is_subset,
    needs_apply,
    with_hash,
)

pytestmark = pytest.mark.unit


def _deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "m", "namespace": "ns", "labels": {"a": "b"}},
        "spec": {
            "replicas": 2,
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "server",
                            "resources": {"requests": {"memory": "1024Mi", "cpu": "1"}},
                        }
                    ]
                }
            },
        },
    }


def _live(desired: dict[str, Any]) -> dict[str, Any]:
    """What the API server returns: defaults added, quantities normalised."""
    live = copy.deepcopy(desired)
    live["metadata"]["resourceVersion"] = "7"
    live["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "1"
    container = live["spec"]["template"]["spec"]["containers"][0]
    container["resources"]["requests"] = {"memory": "1Gi", "cpu": "1"}
    container["terminationMessagePolicy"] = "File"
    live["spec"]["strategy"] = {"type": "RollingUpdate"}
    live["status"] = {"readyReplicas": 2}
    return live


def test_missing_child_is_applied() -> None:
    assert needs_apply(with_hash(_deployment()), None)


def test_live_copy_with_defaults_and_normalised_quantities_is_not_rewritten() -> None:
    desired = with_hash(_deployment())
    assert not needs_apply(desired, _live(desired))


def test_rerender_changes_hash_and_is_applied() -> None:
    live = _live(with_hash(_deployment()))
    changed = _deployment()
    changed["spec"]["replicas"] = 3
    assert needs_apply(with_hash(changed), live)


def test_removed_field_is_applied_even_though_live_is_a_superset() -> None:
    before = _deployment()
    before["spec"]["template"]["spec"]["tolerations"] = [{"key": "x", "operator": "Exists"}]
    live = _live(with_hash(before))
    after = _deployment()
    assert is_subset(with_hash(after)["spec"], live["spec"])
    assert needs_apply(with_hash(after), live)


def test_hand_edit_of_an_owned_field_is_drift() -> None:
    desired = with_hash(_deployment())
    live = _live(desired)
    live["spec"]["replicas"] = 5
    assert needs_apply(desired, live)


def test_hash_is_stable_and_ignores_its_own_annotation() -> None:
    once = with_hash(_deployment())
    twice = with_hash(once)
    assert (
        once["metadata"]["annotations"][APPLIED_HASH_ANNOTATION]
        == (twice["metadata"]["annotations"][APPLIED_HASH_ANNOTATION])
    )


def test_jobs_and_pvcs_are_create_only() -> None:
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": "n"}}
    live = copy.deepcopy(job)
    live["spec"] = {"template": {"spec": {"containers": [{"image": "other"}]}}}
    assert not needs_apply(with_hash(job), live)
    assert needs_apply(with_hash(job), None)


@pytest.mark.parametrize(
    ("want", "have", "same"),
    [
        ({"a": 1}, {"a": 1, "b": 2}, True),
        ({"a": [1, 2]}, {"a": [1, 2, 3]}, False),
        ({"memory": "2048Mi"}, {"memory": "2Gi"}, True),
        ({"cpu": "500m"}, {"cpu": "0.5"}, True),
        ({"cpu": "500m"}, {"cpu": "1"}, False),
        ({"nvidia.com/gpu": "1"}, {"nvidia.com/gpu": 1}, True),
        ({"name": "x"}, {"name": "y"}, False),
        ({"a": {"b": "c"}}, {"a": None}, False),
        ({"env": [], "annotations": {}}, {}, True),
        ({"readOnly": False}, {}, False),
    ],
)
def test_is_subset(want: Any, have: Any, same: bool) -> None:
    assert is_subset(want, have) is same


def test_first_difference_names_the_field() -> None:
    want = {"spec": {"template": {"spec": {"volumes": [{"name": "a"}, {"name": "b"}]}}}}
    have = {"spec": {"template": {"spec": {"volumes": [{"name": "a"}, {"name": "c"}]}}}}
    assert first_difference(want, have) == ".spec.template.spec.volumes[1].name"
    assert first_difference(want, want) is None


def test_apply_reason_says_why_a_write_is_sent() -> None:
    desired = with_hash(_deployment())
    assert apply_reason(desired, None) == "missing"
    assert apply_reason(desired, _live(desired)) is None
    assert apply_reason(with_hash({**_deployment(), "spec": {"replicas": 3}}), _live(desired)) == (
        "changed"
    )
    drifted = _live(desired)
    drifted["spec"]["replicas"] = 5
    assert apply_reason(desired, drifted) == "drift at .spec.replicas"
