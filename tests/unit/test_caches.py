"""The caches of children: watch events and relistings, as the reconcile reads them; what
makes a reconcile render again."""

from __future__ import annotations

from typing import Any

import pytest
from slm_operator.controller.cache import Caches
from slm_operator.kinds import SERVICE_MONITOR
from slm_operator.reconcile import _fingerprint
from slm_operator.summary import NodeInfo

pytestmark = pytest.mark.unit


def monitor(namespace: str, instance: str, uid: str, port: str = "http") -> dict[str, Any]:
    return {
        "apiVersion": SERVICE_MONITOR.api_version,
        "kind": SERVICE_MONITOR.kind,
        "metadata": {
            "name": instance,
            "namespace": namespace,
            "uid": uid,
            "labels": {"app.kubernetes.io/instance": instance},
            "managedFields": [{"manager": "slm-operator"}],
        },
        "spec": {"endpoints": [{"port": port}]},
    }


def test_a_relisting_replaces_one_namespace_and_names_the_models_it_changed() -> None:
    caches = Caches()
    caches.observe(SERVICE_MONITOR, ("a", "m1"), monitor("a", "m1", "u1"), deleted=False)
    caches.observe(SERVICE_MONITOR, ("a", "m2"), monitor("a", "m2", "u2"), deleted=False)
    caches.observe(SERVICE_MONITOR, ("b", "m3"), monitor("b", "m3", "u3"), deleted=False)

    changed = caches.replace_kind(
        SERVICE_MONITOR,
        "a",
        {("a", "m1"): [monitor("a", "m1", "u1")], ("a", "m4"): [monitor("a", "m4", "u4")]},
    )

    assert changed == {("a", "m2"), ("a", "m4")}  # m1 is unchanged, m2 gone, m4 new
    assert caches.children_of(("a", "m2")) == []
    assert [c["metadata"]["name"] for c in caches.children_of(("a", "m4"))] == ["m4"]
    # Another namespace's objects are not this listing's to drop.
    assert [c["metadata"]["name"] for c in caches.children_of(("b", "m3"))] == ["m3"]
    # What is kept leaves out managedFields.
    assert "managedFields" not in caches.children_of(("a", "m1"))[0]["metadata"]


def test_a_changed_object_in_a_relisting_counts_as_a_change() -> None:
    caches = Caches()
    caches.observe(SERVICE_MONITOR, ("a", "m1"), monitor("a", "m1", "u1"), deleted=False)
    changed = caches.replace_kind(
        SERVICE_MONITOR, "a", {("a", "m1"): [monitor("a", "m1", "u1", port="metrics")]}
    )
    assert changed == {("a", "m1")}
    assert caches.children_of(("a", "m1"))[0]["spec"]["endpoints"] == [{"port": "metrics"}]


def test_a_gone_resource_empties_every_namespace() -> None:
    caches = Caches()
    caches.observe(SERVICE_MONITOR, ("a", "m1"), monitor("a", "m1", "u1"), deleted=False)
    caches.observe(SERVICE_MONITOR, ("b", "m2"), monitor("b", "m2", "u2"), deleted=False)
    assert caches.replace_kind(SERVICE_MONITOR, None, {}) == {("a", "m1"), ("b", "m2")}
    assert caches.children_of(("a", "m1")) == caches.children_of(("b", "m2")) == []


def test_a_deleted_event_removes_only_that_object() -> None:
    caches = Caches()
    caches.observe(SERVICE_MONITOR, ("a", "m1"), monitor("a", "m1", "u1"), deleted=False)
    caches.observe(SERVICE_MONITOR, ("a", "m1"), monitor("a", "m1", "u0"), deleted=False)
    caches.observe(SERVICE_MONITOR, ("a", "m1"), monitor("a", "m1", "u0"), deleted=True)
    assert [c["metadata"]["uid"] for c in caches.children_of(("a", "m1"))] == ["u1"]


def test_only_the_version_an_apply_answered_is_an_echo_of_the_operators_own_write() -> None:
    caches = Caches()
    answered = monitor("a", "m1", "u1")
    answered["metadata"]["resourceVersion"] = "41"
    assert not caches.own_write(("a", "m1"), answered)  # nothing applied yet
    caches.remember(("a", "m1"), answered)
    assert caches.own_write(("a", "m1"), answered)
    later = monitor("a", "m1", "u1", port="metrics")  # someone else's edit
    later["metadata"]["resourceVersion"] = "42"
    assert not caches.own_write(("a", "m1"), later)
    assert not caches.own_write(("a", "m2"), answered)  # another model's key


def test_a_status_write_does_not_make_a_model_render_again_but_a_spec_or_label_change_does() -> (
    None
):
    body: dict[str, Any] = {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "LocalModel",
        "metadata": {"name": "m", "namespace": "a", "uid": "u", "generation": 1,
                     "resourceVersion": "10", "labels": {"team": "x"}},
        "spec": {"parameters": {"temperature": 0.5}},
    }  # fmt: skip
    after_status = {
        **body,
        "metadata": {**body["metadata"], "resourceVersion": "11", "managedFields": [{}]},
        "status": {"phase": "Ready"},
    }
    assert _fingerprint(after_status) == _fingerprint(body)
    # The API server counts every spec change in metadata.generation.
    spec_changed = {
        **body,
        "metadata": {**body["metadata"], "generation": 2},
        "spec": {"parameters": {"temperature": 0.7}},
    }
    assert _fingerprint(spec_changed) != _fingerprint(body)
    relabelled = {**body, "metadata": {**body["metadata"], "labels": {"team": "y"}}}
    assert _fingerprint(relabelled) != _fingerprint(body)


def test_models_nodes_and_crds_are_kept_under_the_caches_lock() -> None:
    """kopf's handlers write LocalModels, nodes and CRDs into the caches; workers read copies."""
    caches = Caches()
    body = {"metadata": {"name": "m", "namespace": "a", "uid": "u1", "managedFields": [{}]}}
    caches.put_model(("a", "m"), body)
    read = caches.model(("a", "m"))
    assert read == {"metadata": {"name": "m", "namespace": "a", "uid": "u1"}}
    assert read is not None
    read["spec"] = {"changed": True}  # a copy: the cache keeps what the event had
    assert caches.model(("a", "m")) == {"metadata": {"name": "m", "namespace": "a", "uid": "u1"}}
    assert caches.model_keys() == [("a", "m")]

    n1, n2 = ({"metadata": {"name": n, "uid": f"uid-{n}"}} for n in ("n1", "n2"))
    caches.put_node(n1, NodeInfo(name="n1"))
    caches.put_node(n2, NodeInfo(name="n2"))
    caches.drop_node(n1)
    assert [n.name for n in caches.nodes()] == ["n2"]

    crd = {"metadata": {"name": SERVICE_MONITOR.crd, "uid": "c1"}}
    caches.put_crd(crd)
    assert caches.crd_installed(SERVICE_MONITOR.crd)
    assert caches.drop_crd(crd)
    assert not caches.crd_installed(SERVICE_MONITOR.crd)

    assert caches.forget(("a", "m"), body)
    assert caches.model(("a", "m")) is None
    assert caches.model_keys() == []


def test_a_deletion_seen_after_its_successor_keeps_the_successor() -> None:
    """kopf handles each object's events apart: a LocalModel, node or CRD deleted and created
    again under its name may be seen created before the old one is seen deleted. The deletion
    then leaves the new object in place."""
    caches = Caches()
    old = {"metadata": {"name": "m", "namespace": "a", "uid": "old"}}
    new = {"metadata": {"name": "m", "namespace": "a", "uid": "new"}}
    caches.put_model(("a", "m"), new)
    assert not caches.forget(("a", "m"), old)
    assert caches.model(("a", "m")) == new

    caches.put_node({"metadata": {"name": "n", "uid": "new"}}, NodeInfo(name="n"))
    caches.drop_node({"metadata": {"name": "n", "uid": "old"}})
    assert [n.name for n in caches.nodes()] == ["n"]

    caches.put_crd({"metadata": {"name": SERVICE_MONITOR.crd, "uid": "new"}})
    assert not caches.drop_crd({"metadata": {"name": SERVICE_MONITOR.crd, "uid": "old"}})
    assert caches.crd_installed(SERVICE_MONITOR.crd)


def test_a_deletion_without_a_uid_still_removes_its_entry() -> None:
    caches = Caches()
    caches.put_model(("a", "m"), {"metadata": {"name": "m", "namespace": "a", "uid": "u1"}})
    assert caches.forget(("a", "m"), {"metadata": {"name": "m", "namespace": "a"}})
    assert caches.model(("a", "m")) is None
    caches.put_model(("a", "m"), {"metadata": {"name": "m", "namespace": "a"}})
    assert caches.forget(("a", "m"), {"metadata": {"name": "m", "namespace": "a", "uid": "u2"}})
    assert caches.model(("a", "m")) is None
