"""The operator's own watches (watches.py) against the real API server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import config
from slm_operator.controller.kube import Kube
from slm_operator.controller.watches import KindWatch
from slm_operator.kinds import CONFIG_MAP, Kind
from slm_operator.names import LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGER_NAME

from .conftest import Cluster
from .operator_run import wait_for

Key = tuple[str, str]
MANAGED = {LABEL_MANAGED_BY: MANAGER_NAME}


class Recorder:
    """A cache that keeps what the watch hands it, as the operator's caches would."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.objects: dict[tuple[Key, str], dict[str, Any]] = {}
        self.queued: list[Key] = []

    def replace_kind(
        self, kind: Kind, namespace: str | None, objects: dict[Key, list[dict[str, Any]]]
    ) -> set[Key]:
        with self.lock:
            self.objects = {
                (key, obj["metadata"]["name"]): obj for key, objs in objects.items() for obj in objs
            }
            return set(objects)

    def observe(self, kind: Kind, key: Key, obj: dict[str, Any], *, deleted: bool) -> None:
        with self.lock:
            if deleted:
                self.objects.pop((key, obj["metadata"]["name"]), None)
            else:
                self.objects[(key, obj["metadata"]["name"])] = obj

    def own_write(self, key: Key, obj: dict[str, Any]) -> bool:
        return False

    def enqueue(self, key: Key, cause: str) -> None:
        with self.lock:
            self.queued.append(key)

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            return next((o for (_, n), o in self.objects.items() if n == name and
                         o["metadata"]["namespace"] == namespace), None)  # fmt: skip


def config_map(name: str, instance: str, value: str, labels: dict[str, str] = MANAGED) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {**labels, LABEL_INSTANCE: instance}},
        "data": {"value": value},
    }


@pytest.fixture
def kube(cluster: Cluster) -> Kube:
    return Kube(config.new_client_from_config(config_file=str(cluster.kubeconfig)))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def watch(kube: Kube, recorder: Recorder, namespace: str) -> Iterator[KindWatch]:
    selector = f"{LABEL_MANAGED_BY}={MANAGER_NAME}"
    w = KindWatch(kube, CONFIG_MAP, recorder, recorder.enqueue, namespace=namespace,
                  label_selector=selector)  # fmt: skip
    yield w
    w.stop()


def test_listed_objects_carry_their_kind_like_watched_ones(
    cluster: Cluster, namespace: str, watch: KindWatch, recorder: Recorder
) -> None:
    """A list's items come without apiVersion and kind; the cache must not see the difference
    (a reconcile identifies children by them)."""
    cluster.apply(config_map("before", "m1", "a"), namespace)
    watch.start()
    assert watch.listed.wait(30)
    listed = recorder.get(namespace, "before")
    assert listed is not None
    assert (listed["apiVersion"], listed["kind"]) == ("v1", "ConfigMap")
    assert (namespace, "m1") in recorder.queued

    cluster.apply(config_map("after", "m2", "b"), namespace)
    watched = wait_for(lambda: recorder.get(namespace, "after"), timeout=30, what="the event")
    assert (watched["apiVersion"], watched["kind"]) == ("v1", "ConfigMap")


def test_changes_and_deletions_reach_the_cache_and_queue_the_owner(
    cluster: Cluster, namespace: str, watch: KindWatch, recorder: Recorder
) -> None:
    watch.start()
    assert watch.listed.wait(30)
    cluster.apply(config_map("c", "m", "one"), namespace)
    wait_for(lambda: recorder.get(namespace, "c"), timeout=30, what="the creation")
    cluster.apply(config_map("c", "m", "two"), namespace)
    wait_for(lambda: (recorder.get(namespace, "c") or {}).get("data") == {"value": "two"},
             timeout=30, what="the change")  # fmt: skip
    cluster.kubectl("delete", "configmap", "c", namespace=namespace)
    wait_for(lambda: recorder.get(namespace, "c") is None, timeout=30, what="the deletion")
    assert recorder.queued.count((namespace, "m")) >= 3


def test_objects_the_operator_does_not_manage_are_not_watched(
    cluster: Cluster, namespace: str, watch: KindWatch, recorder: Recorder
) -> None:
    watch.start()
    assert watch.listed.wait(30)
    cluster.apply(config_map("theirs", "m", "x", labels={}), namespace)
    cluster.apply(config_map("ours", "m", "y"), namespace)
    wait_for(lambda: recorder.get(namespace, "ours"), timeout=30, what="our ConfigMap")
    assert recorder.get(namespace, "theirs") is None
