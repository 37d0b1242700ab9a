"""The reconcile pass: parse -> observe -> place -> render -> apply -> status, each step once.

The pass runs here against ``RecordingKube``, a stand-in for the API client that answers applies
with the object sent and records every write; the cluster tests (tests/cluster/test_operator.py)
run the same pass against a real API server and node.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from slm_operator import reconcile
from slm_operator.catalog import default_catalog
from slm_operator.controller.queue import WorkQueue
from slm_operator.reconcile import Reconciler
from slm_operator.settings import OperatorSettings
from slm_operator.summary import NodeInfo

pytestmark = pytest.mark.unit

GIB = 1024**3
KEY = ("ns", "m")


class RecordingKube:
    """Stand-in for ``controller.kube.Kube``: applies and creates answer with the object sent
    (given a resourceVersion); status patches, Events and deletions are recorded."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, str]] = []
        self.status: list[Mapping[str, Any]] = []
        self.sent: dict[str, Mapping[str, Any]] = {}
        """The last object applied or created, by kind."""

    def _answer(self, verb: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        self.writes.append((verb, obj["kind"]))
        self.sent[obj["kind"]] = obj
        meta = {**obj["metadata"], "resourceVersion": str(len(self.writes)), "uid": "u"}
        return {**obj, "metadata": meta}

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        return self._answer("apply", obj)

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        return self._answer("create", obj)

    def get(self, *_: Any) -> None:
        return None

    def delete(self, kind: Any, namespace: str, name: str) -> bool:
        self.writes.append(("delete", name))
        return True

    def patch_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        self.status.append(patch)

    def post_event(self, *_: Any, reason: str = "", **__: Any) -> None:
        self.writes.append(("event", reason))

    def pod_log_tail(self, *_: Any) -> str:
        return ""


def localmodel(**cache: Any) -> dict[str, Any]:
    return {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "LocalModel",
        "metadata": {"name": "m", "namespace": "ns", "uid": "uid-m", "generation": 1},
        "spec": {"model": {"source": "https://models.example/m.gguf"}, "cache": cache},
    }


def reconciler(body: Mapping[str, Any]) -> tuple[Reconciler, RecordingKube]:
    kube = RecordingKube()
    rec = Reconciler(kube, OperatorSettings(), default_catalog())  # type: ignore[arg-type]
    node = NodeInfo(name="cpu-0", allocatable={"cpu": 8.0, "memory": 32.0 * GIB, "pods": 110.0})
    rec.caches.put_model(KEY, body)
    rec.caches.put_node({"metadata": {"name": node.name, "uid": "n"}}, node)
    return rec, kube


STEPS = {
    "parse": (reconcile, "parse_localmodel"),
    "observe": (reconcile, "observation"),
    "place": (reconcile, "decide"),
    "render": (reconcile, "render"),
    "apply": (reconcile, "apply_children"),
    "status": (reconcile, "compute_status"),
}


def count_steps(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Wrap each step's function in the reconcile module so that calls are counted."""
    calls: Counter[str] = Counter()
    for step, (module, name) in STEPS.items():
        original: Callable[..., Any] = getattr(module, name)

        def counted(*args: Any, __step: str = step, __f: Any = original, **kwargs: Any) -> Any:
            calls[__step] += 1
            return __f(*args, **kwargs)

        monkeypatch.setattr(module, name, functools.wraps(original)(counted))
    return calls


@pytest.mark.parametrize("mode", ["PerPod", "Volume"])
def test_each_step_runs_once_per_pass(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    body = localmodel(mode=mode)
    rec, kube = reconciler(body)
    calls = count_steps(monkeypatch)

    rec.reconcile(body, cause="created")

    assert calls == Counter(list(STEPS))  # every step, once
    applied = [kind for verb, kind in kube.writes if verb in ("apply", "create")]
    assert "Deployment" in applied
    assert ("Job" in applied) is (mode == "Volume")
    assert kube.status == []  # a pass that applied leaves the status to the next, once

    calls.clear()
    rec.reconcile(body, cause="applied")

    # The children are as rendered: nothing to apply, and the same render is reused.
    assert calls == Counter({step: 1 for step in STEPS if step != "render"})
    assert [w for w in kube.writes[len(applied) :] if w[0] != "event"] == []
    assert len(kube.status) == 1
    assert kube.status[0]["status"]["phase"] in ("Pending", "Pulling", "Deploying")


def test_a_refused_spec_stops_after_parse_with_a_failed_status(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = localmodel()
    body["spec"]["model"]["source"] = "ftp://models.example/m.gguf"
    rec, kube = reconciler(body)
    calls = count_steps(monkeypatch)

    with pytest.raises(reconcile.InvalidSpecError):
        rec.reconcile(body, cause="created")

    assert calls == Counter({"parse": 1})
    assert [w for w in kube.writes if w[0] != "event"] == []
    assert kube.status[0]["status"]["phase"] == "Failed"


def test_forgetting_a_model_drops_what_was_remembered_of_it() -> None:
    body = localmodel(mode="Volume")
    rec, _ = reconciler(body)
    rec.reconcile(body, cause="created")
    assert not rec.changed_since_seen(KEY, body)
    rec.forget(KEY, body)
    assert rec.changed_since_seen(KEY, body)  # nothing remembered: the next event is a pass
    assert KEY not in rec._records
    assert rec.caches.model(KEY) is None


def test_the_queue_folds_triggers_and_forgets_a_timer() -> None:
    handled: list[tuple[tuple[str, str], str]] = []
    done = threading.Event()
    gate = threading.Event()

    def handle(key: tuple[str, str], cause: str) -> None:
        handled.append((key, cause))
        done.set()

    queue = WorkQueue(handle)
    queue.enqueue(KEY, "created")
    queue.enqueue(KEY, "child")  # folds into the one waiting
    queue.start_workers(1, after=[gate])
    gate.set()
    assert done.wait(10)
    assert handled == [(KEY, "created")]
    deadline = time.monotonic() + 10
    while queue.pending(KEY) and time.monotonic() < deadline:  # the worker lets go of the key
        time.sleep(0.01)
    assert not queue.pending(KEY)

    queue.schedule(KEY, 3600)
    assert queue.pending(KEY)
    queue.forget(KEY)
    assert not queue.pending(KEY)


def alias_model(alias: str, **spec: Any) -> dict[str, Any]:
    body = localmodel()
    body["spec"] = {"model": {"alias": alias}, **spec}
    return body


def test_an_alias_missing_from_the_catalog_fails_naming_spec_model_alias() -> None:
    body = alias_model("phi-5")
    rec, kube = reconciler(body)

    with pytest.raises(reconcile.InvalidSpecError):
        rec.reconcile(body, cause="created")

    (patch,) = kube.status
    status = patch["status"]
    assert status["phase"] == "Failed"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "InvalidSpec"
    assert ready["message"].startswith("spec.model.alias: phi-5 is not in the operator's model")
    assert "phi-4-mini" in ready["message"]
    assert [w for w in kube.writes if w[0] in ("apply", "create")] == []


def test_an_alias_serves_the_catalogs_variant_for_the_placed_tier() -> None:
    """On a CPU-only cluster the phi-4-mini alias skips the NPU (no node offers one) and the GPU,
    and the pods pull and run its GGUF variant; status and an Event name it."""
    body = alias_model("phi-4-mini")
    rec, kube = reconciler(body)
    rec.reconcile(body, cause="created")
    config = kube.sent["ConfigMap"]["data"]["config.yaml"]
    assert "source: hf://unsloth/Phi-4-mini-instruct-GGUF/Phi-4-mini-instruct-Q4_K_M.gguf" in config
    status = rec.reconcile(body, cause="applied")
    assert status.placed_tier is not None
    assert status.placed_tier.value == "cpu"
    assert status.model.variant == "gguf-q4-k-m"
    assert status.model.source == (
        "hf://unsloth/Phi-4-mini-instruct-GGUF/Phi-4-mini-instruct-Q4_K_M.gguf"
    )
    assert ("event", "VariantSelected") in kube.writes
