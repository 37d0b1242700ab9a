"""The runtime image rollout budget: a new image reaches at most N serving models at a time."""

from __future__ import annotations

from typing import Any

import pytest
from slm_operator.api import LocalModel, parse_localmodel
from slm_operator.conditions import Reason
from slm_operator.controller.cache import Key
from slm_operator.controller.rollouts import RolloutBudget
from slm_operator.place import HARDWARE_ANNOTATION, TIER_ANNOTATION, Placement, hardware_hash
from slm_runtime.config import Device

pytestmark = pytest.mark.unit

OLD, NEW = "registry.example/slm-runtime:1", "registry.example/slm-runtime:2"
CPU = Placement(device=Device.CPU, option="cpu", placed=True, reason=Reason.PLACED, image=NEW)


def model(name: str, **spec: Any) -> LocalModel:
    body = {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "LocalModel",
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1},
        "spec": {"model": {"source": "https://models.example/m.gguf"}, **spec},
    }
    return parse_localmodel(body)


def deployment(lm: LocalModel, image: str, *, done: bool = True, ready: int = 1) -> dict[str, Any]:
    """A model's Deployment on the CPU tier running ``image``; ``done``: rolled out."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": lm.metadata.name,
            "generation": 2,
            "annotations": {TIER_ANNOTATION: "cpu", HARDWARE_ANNOTATION: hardware_hash(lm.spec)},
        },
        "spec": {
            "replicas": 1,
            "template": {"spec": {"containers": [{"name": "server", "image": image}]}},
        },
        "status": {
            "observedGeneration": 2,
            "readyReplicas": ready,
            "replicas": 1 if done else 2,
            "updatedReplicas": 1 if done else 0,
            "availableReplicas": 1,
        },
    }


class Budget:
    """A rollout budget with the Deployments it would see, and the keys it wakes."""

    def __init__(self, slots: int) -> None:
        self.live: dict[Key, dict[str, Any]] = {}
        self.woken: list[Key] = []
        self.waits: dict[str, str | None] = {}
        self.budget = RolloutBudget(
            slots,
            lambda key: [self.live[key]] if key in self.live else [],
            lambda key, cause: self.woken.append(key),
            lambda key, delay: None,
        )

    def image(self, lm: LocalModel, placement: Placement = CPU) -> str:
        """The image the model is rendered with now."""
        key = ("ns", lm.metadata.name)
        got, wait = self.budget.admit(key, lm, placement, self.live.get(key))
        self.waits[lm.metadata.name] = wait
        return got.image


def test_a_new_image_reaches_one_model_at_a_time_and_a_finished_rollout_wakes_the_next() -> None:
    budget = Budget(slots=1)
    a, b, c = model("a"), model("b"), model("c")
    for lm in (a, b, c):
        budget.live[("ns", lm.metadata.name)] = deployment(lm, OLD)
    assert budget.image(a) == NEW
    assert budget.waits["a"] is None
    assert budget.image(b) == OLD  # held while a rolls, and its status says so
    assert budget.waits["b"] == (
        f"runtime image {NEW} waits for a rollout slot: 1 models move at a time "
        f"(runtime.maxImageRollouts); serving on {OLD} meanwhile"
    )
    assert budget.image(c) == OLD
    # a's apply is on the way: the cache still shows the old image, which is not a finished
    # rollout.
    assert budget.image(b) == OLD
    budget.live[("ns", "a")] = deployment(a, NEW, done=False)
    assert budget.image(b) == OLD
    budget.live[("ns", "a")] = deployment(a, NEW, done=True)
    assert budget.image(b) == NEW  # b noticed a's end and took the slot
    assert budget.waits["b"] is None
    assert budget.woken == [("ns", "c")]  # c is woken, and waits for b now
    assert budget.image(c) == OLD


def test_pinned_new_idle_and_moving_models_are_not_held() -> None:
    budget = Budget(slots=1)
    busy, pinned, fresh, idle, moving = (
        model(n) for n in ("busy", "pinned", "fresh", "idle", "moving")
    )
    for lm in (busy, pinned):
        budget.live[("ns", lm.metadata.name)] = deployment(lm, OLD)
    budget.live[("ns", "idle")] = deployment(idle, OLD, ready=0)
    budget.live[("ns", "moving")] = deployment(moving, OLD)
    assert budget.image(busy) == NEW  # takes the only slot
    pinned = pinned.model_copy(
        update={
            "spec": pinned.spec.model_copy(
                update={"runtime": pinned.spec.runtime.model_copy(update={"image": OLD})}
            )
        }
    )
    assert budget.image(pinned, CPU) == NEW  # placement.image; the render uses the pin
    assert budget.image(fresh) == NEW  # no Deployment yet
    assert budget.image(idle) == NEW  # no replica serves: nothing to keep serving
    gpu = Placement(device=Device.GPU, option="nvidia-gpu", placed=True, reason=Reason.PLACED,
                    image=NEW)  # fmt: skip
    assert budget.image(moving, gpu) == NEW  # another tier comes with its own image


def test_a_failed_or_deleted_model_gives_its_slot_back() -> None:
    budget = Budget(slots=1)
    a, b = model("a"), model("b")
    for lm in (a, b):
        budget.live[("ns", lm.metadata.name)] = deployment(lm, OLD)
    assert budget.image(a) == NEW
    assert budget.image(b) == OLD
    budget.budget.release(("ns", "a"))  # what a failed or deleted model does
    assert ("ns", "b") in budget.woken
    assert budget.image(b) == NEW
