"""The gateway's pure core: replica choice, prompt prefixes, the hold queue, scale decisions, and
the directory built from LocalModels and EndpointSlices."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from slm_operator.conditions import Phase
from slm_operator.names import APP_NAME, COMPONENT_SERVER, LABEL_COMPONENT, LABEL_NAME
from slm_runtime.gateway.core import (
    READY,
    SCALED_TO_ZERO,
    Balance,
    Holds,
    Model,
    Ring,
    choose,
    idle_for,
    least_loaded,
    prompt_prefix,
    wants_scale_down,
    wants_scale_up,
)
from slm_runtime.gateway.directory import (
    MODEL_SLICE_SELECTOR,
    AmbiguousModelError,
    Directory,
    model_from,
    ready_endpoints,
    static_objects,
)

pytestmark = pytest.mark.unit

PODS = ["a", "b", "c"]


@pytest.mark.parametrize(
    ("in_flight", "turn", "chosen"),
    [
        ({}, 0, "a"),
        ({}, 1, "b"),
        ({}, 5, "c"),  # ties go round
        ({"a": 1}, 0, "b"),
        ({"a": 1, "b": 1}, 0, "c"),
        ({"a": 2, "b": 1, "c": 3}, 7, "b"),
        ({"a": 1, "b": 1, "c": 1}, 2, "c"),
    ],
)
def test_least_loaded_takes_the_replica_with_fewest_in_flight(
    in_flight: dict[str, int], turn: int, chosen: str
) -> None:
    assert least_loaded(PODS, in_flight, turn) == chosen


def test_least_loaded_needs_a_replica() -> None:
    with pytest.raises(ValueError, match="no replicas"):
        least_loaded([], {})


def test_the_ring_sends_a_prefix_to_one_replica_while_it_is_under_its_bound() -> None:
    ring = Ring(PODS)
    first = ring.pick("system: you are terse\nuser: hi", {})
    assert all(ring.pick("system: you are terse\nuser: hi", {}) == first for _ in range(10))
    # Another ring of the same replicas (another gateway replica) agrees.
    assert Ring(list(reversed(PODS))).pick("system: you are terse\nuser: hi", {}) == first


def test_the_ring_spreads_distinct_prefixes_over_every_replica() -> None:
    ring = Ring(PODS)
    spread = Counter(ring.pick(f"prompt {i}", {}) for i in range(3000))
    assert set(spread) == set(PODS)
    assert min(spread.values()) > 3000 / len(PODS) * 0.7


def test_a_replica_over_its_bound_is_skipped_for_the_next_on_the_ring() -> None:
    ring = Ring(PODS)
    home = ring.pick("hot prefix", {})
    # total 4 in flight, bound ceil(1.25 * 5 / 3) = 3: the home replica at 3 is full.
    busy = {home: 3, **{p: 0 for p in PODS if p != home}}
    spill = ring.pick("hot prefix", busy)
    assert spill != home
    # Under its bound (total 2, bound ceil(1.25 * 3 / 3) = 2) it keeps the prefix.
    assert ring.pick("hot prefix", {home: 1, spill: 1}) == home


def test_removing_a_replica_moves_only_its_keys() -> None:
    keys = [f"k{i}" for i in range(600)]
    before = {k: Ring(PODS).pick(k, {}) for k in keys}
    after = {k: Ring(["a", "b"]).pick(k, {}) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert moved
    assert all(before[k] == "c" for k in moved)


@pytest.mark.parametrize(
    ("mode", "prefix", "in_flight", "expected"),
    [
        (Balance.LEAST_LOAD, "same prompt", {"a": 1}, "b"),
        (Balance.PREFIX_AFFINITY, "", {"a": 1}, "b"),  # no prompt: by load
    ],
)
def test_choose_balances_by_load_without_affinity(
    mode: Balance, prefix: str, in_flight: dict[str, int], expected: str
) -> None:
    assert choose(mode, ["a", "b"], in_flight, prefix) == expected


def test_choose_with_affinity_follows_the_ring() -> None:
    ring = Ring(["a", "b"])
    target = ring.pick("same prompt", {})
    assert choose(Balance.PREFIX_AFFINITY, ["a", "b"], {}, "same prompt", ring=ring) == target


@pytest.mark.parametrize(
    ("body", "prefix"),
    [
        ({"model": "m", "prompt": "Once upon a time"}, "Once upon"),
        ({"model": "m", "system": "Be brief.", "prompt": "Hi"}, "Be brief."),
        (
            {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]},
            "system:S\nu",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "part"}]}]},
            "user:part\n",
        ),
        ({"input": "a string input", "instructions": "I. "}, "I. a strin"),
        ({"input": [1, 2, 3]}, ""),  # token ids: no text to hash
        ({"model": "m"}, ""),
    ],
)
def test_prompt_prefix_is_the_start_of_what_the_model_reads(
    body: dict[str, Any], prefix: str
) -> None:
    assert prompt_prefix(body, 10).startswith(prefix)
    assert len(prompt_prefix(body, 10)) <= 10


def test_the_hold_queue_is_bounded_per_model() -> None:
    holds = Holds(per_model=2)
    assert holds.admit("ns/a")
    assert holds.admit("ns/a")
    assert not holds.admit("ns/a")
    assert holds.admit("ns/b")  # another model has its own places
    holds.release("ns/a")
    assert holds.held("ns/a") == 1
    assert holds.admit("ns/a")
    for _ in range(3):
        holds.release("ns/a")
    assert holds.held("ns/a") == 0


ZERO = Model("ns", "m", phase=SCALED_TO_ZERO, scale_to_zero_after=60)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (ZERO, True),
        (Model("ns", "m", phase="Pulling", scale_to_zero_after=60), False),  # held by the operator
        (Model("ns", "m", phase="Pending", scale_to_zero_after=60), False),
        (Model("ns", "m", phase=SCALED_TO_ZERO), False),  # not a scale-to-zero model
    ],
)
def test_a_scale_up_is_asked_only_of_a_model_scaled_to_zero(model: Model, expected: bool) -> None:
    assert wants_scale_up(model) is expected


IDLE = Model("ns", "m", phase="Ready", scale_to_zero_after=60)


@pytest.mark.parametrize(
    ("model", "in_flight", "held", "idle", "expected"),
    [
        (IDLE, 0, 0, 60, True),
        (IDLE, 0, 0, 59.9, False),
        (IDLE, 1, 0, 600, False),
        (IDLE, 0, 1, 600, False),
        (Model("ns", "m", phase="Ready"), 0, 0, 600, False),
        (Model("ns", "m", phase="Degraded", scale_to_zero_after=60), 0, 0, 600, False),
        (ZERO, 0, 0, 600, False),
    ],
)
def test_a_model_goes_to_zero_only_when_idle_for_its_period(
    model: Model, in_flight: int, held: int, idle: float, expected: bool
) -> None:
    assert wants_scale_down(model, in_flight, held, idle) is expected


def test_idle_time_counts_from_the_gateways_start_until_a_request_comes() -> None:
    assert idle_for(None, started=100, now=130) == 30
    assert idle_for(120, started=100, now=130) == 10
    assert idle_for(50, started=100, now=130) == 30


# --- the directory ------------------------------------------------------------------------------


def localmodel(name: str, namespace: str = "team", **spec: Any) -> dict[str, Any]:
    status = spec.pop("status", {"phase": "Ready"})
    return {"metadata": {"name": name, "namespace": namespace}, "spec": spec, "status": status}


def endpoint_slice(
    service: str, name: str, pods: dict[str, bool], namespace: str = "team", port: int = 8080
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service},
        },
        "ports": [{"name": "http", "port": port}],
        "endpoints": [
            {
                "addresses": [f"10.0.0.{i}"],
                "conditions": {"ready": ready},
                "targetRef": {"kind": "Pod", "name": pod},
            }
            for i, (pod, ready) in enumerate(pods.items(), start=1)
        ],
    }


def test_the_phases_the_gateway_reads_are_the_operators() -> None:
    assert (Phase.SCALED_TO_ZERO.value, Phase.READY.value) == (SCALED_TO_ZERO, READY)


def test_the_slice_selector_matches_the_labels_of_a_models_service() -> None:
    assert f"{LABEL_NAME}={APP_NAME},{LABEL_COMPONENT}={COMPONENT_SERVER}" == MODEL_SLICE_SELECTOR


def test_a_localmodel_with_min_replicas_zero_has_a_scale_to_zero_period() -> None:
    lm = localmodel(
        "m",
        autoscaling={"enabled": True, "minReplicas": 0, "scaleToZeroAfter": "1m30s"},
        serving={"port": 9000, "authSecret": "m-token"},
        status={"phase": SCALED_TO_ZERO, "model": {"digest": "sha256:ab", "sizeBytes": 7}},
    )
    model = model_from(lm)
    assert (model.scale_to_zero_after, model.port, model.auth_secret) == (90, 9000, "m-token")
    assert (model.phase, model.digest, model.size_bytes) == (SCALED_TO_ZERO, "sha256:ab", 7)
    assert model_from(localmodel("m", autoscaling={"enabled": True})).scale_to_zero_after is None
    disabled = localmodel("m", autoscaling={"enabled": False, "minReplicas": 0})
    assert model_from(disabled).scale_to_zero_after is None


def test_ready_endpoints_leave_out_pods_not_ready_or_terminating() -> None:
    found = ready_endpoints(endpoint_slice("m", "m-1", {"p1": True, "p2": False}, port=9000))
    assert found == {"p1": "http://10.0.0.1:9000"}
    terminating = endpoint_slice("m", "m-1", {"p1": True})
    terminating["endpoints"][0]["conditions"]["terminating"] = True
    assert ready_endpoints(terminating) == {}
    assert ready_endpoints({**endpoint_slice("m", "m-1", {"p": True}), "ports": []}) == {}


def test_the_directory_joins_models_with_their_slices_and_follows_events() -> None:
    changes: list[int] = []
    directory = Directory(on_change=lambda: changes.append(1))
    directory.sync_models([localmodel("gemma"), localmodel("smol")])
    directory.sync_slices(
        [
            endpoint_slice("gemma", "gemma-x", {"g1": True}),
            endpoint_slice("gemma", "gemma-y", {"g2": True}),
        ]
    )
    gemma = directory.resolve("gemma:latest")
    assert gemma is not None
    assert set(gemma.endpoints) == {"g1", "g2"}
    smol = directory.resolve("smol")
    assert smol is not None
    assert smol.endpoints == {}
    directory.slice_event("MODIFIED", endpoint_slice("smol", "smol-x", {"s1": True}))
    smol = directory.resolve("team/smol")
    assert smol is not None
    assert smol.endpoints == {"s1": "http://10.0.0.1:8080"}
    directory.slice_event("DELETED", endpoint_slice("gemma", "gemma-y", {}))
    gemma = directory.resolve("gemma")
    assert gemma is not None
    assert set(gemma.endpoints) == {"g1"}
    directory.model_event("DELETED", localmodel("smol"))
    assert directory.resolve("smol") is None
    assert directory.resolve("unknown") is None
    assert len(changes) == 5


def test_a_name_in_two_namespaces_needs_its_namespace() -> None:
    directory = Directory()
    directory.sync_models([localmodel("m", "a"), localmodel("m", "b"), localmodel("n", "a")])
    with pytest.raises(AmbiguousModelError, match='"a/m", "b/m"'):
        directory.resolve("m")
    found = directory.resolve("b/m:latest")
    assert found is not None
    assert found.namespace == "b"
    names = [directory.public_name(m) for m in directory.models()]
    assert names == ["a/m", "n", "b/m"]


def test_a_namespace_sync_replaces_only_that_namespace() -> None:
    directory = Directory()
    directory.sync_models([localmodel("m", "a"), localmodel("n", "b")])
    directory.sync_models([localmodel("o", "a")], namespace="a")
    assert [m.key for m in directory.models()] == ["a/o", "b/n"]


def test_fixed_upstreams_become_ready_models_with_their_endpoints() -> None:
    models, slices = static_objects({"gemma": ["http://10.1.0.5:8080", "http://[fd00::1]:9000"]})
    directory = Directory()
    directory.sync_models(models)
    directory.sync_slices(slices)
    gemma = directory.resolve("gemma")
    assert gemma is not None
    assert gemma.phase == "Ready"
    assert sorted(gemma.endpoints.values()) == ["http://10.1.0.5:8080", "http://[fd00::1]:9000"]
    with pytest.raises(ValueError, match="is not http://HOST:PORT"):
        static_objects({"gemma": ["https://example:443"]})
    with pytest.raises(ValueError, match="is not http://HOST:PORT"):
        static_objects({"gemma": ["http://no-port"]})
