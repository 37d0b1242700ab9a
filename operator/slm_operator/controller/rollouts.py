"""The runtime image rollout budget: a new runtime image reaches at most N serving models at a
time (``runtime.maxImageRollouts``).

A new runtime image for every model (an operator upgrade, ``runtime.image``) would otherwise
restart every serving model at once. The others keep the image their pods run until a slot
frees, and a model whose rollout ends wakes them. Only a new image on the same tier waits: a
model that names its image (``spec.runtime.image``), a new model, a model that no replica serves
yet and a model that moves to another tier (whose image differs with it) take theirs at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Final

from slm_operator.api import LocalModel
from slm_operator.children import SERVER_CONTAINER
from slm_operator.children import image as image_of
from slm_operator.controller.cache import Key
from slm_operator.kinds import DEPLOYMENT
from slm_operator.place import Placement, recorded_tier

log = logging.getLogger(__name__)

WAIT_SECONDS: Final = 10.0
"""How often a model waiting for a rollout slot looks again (a finished rollout also wakes it
at once)."""


class RolloutBudget:
    """Which models are moving to a new runtime image, and which wait for a slot."""

    def __init__(
        self,
        slots: int,
        children: Callable[[Key], list[dict[str, Any]]],
        enqueue: Callable[[Key, str], None],
        schedule: Callable[[Key, float], None],
    ) -> None:
        self._slots = slots
        self._children = children
        self._enqueue = enqueue
        self._schedule = schedule
        self._moving: dict[Key, str] = {}
        """Models moving to a new runtime image, and that image."""
        self._waiting: set[Key] = set()
        """Models kept on their old runtime image until a slot frees."""
        self._lock = threading.Lock()

    def admit(
        self,
        key: Key,
        lm: LocalModel,
        placement: Placement,
        deployment: Mapping[str, Any] | None,
    ) -> tuple[Placement, str | None]:
        """The placement, or the same with the image the model's pods run now and a line for
        its status that says why."""
        live = server_image(deployment)
        wanted = image_of(lm, placement)
        same_tier = recorded_tier(lm.spec, deployment) is placement.device
        serving = bool(((deployment or {}).get("status") or {}).get("readyReplicas"))
        wake: list[Key] = []
        held = first_hold = False
        with self._lock:
            for other, target in list(self._moving.items()):
                if self._finished(other, target):
                    del self._moving[other]
                    wake.extend(self._waiting)
            budgeted = not lm.spec.runtime.image and live is not None and same_tier and serving
            if not budgeted or live == wanted:
                if not budgeted or self._moving.get(key) != wanted:
                    self._release(key, wake)
            elif key in self._moving or len(self._moving) < self._slots:
                self._moving[key] = wanted
                self._waiting.discard(key)
            else:
                held, first_hold = True, key not in self._waiting
                self._waiting.add(key)
        self._wake(key, wake)
        if not held or live is None:
            return placement, None
        if first_hold:
            log.info(
                "%s/%s keeps runtime image %s until one of %d rollouts to %s ends",
                *key, live, len(self._moving), wanted,
            )  # fmt: skip
        self._schedule(key, WAIT_SECONDS)
        wait = (
            f"runtime image {wanted} waits for a rollout slot: {self._slots} "
            f"models move at a time (runtime.maxImageRollouts); serving on {live} meanwhile"
        )
        return replace(placement, image=live), wait

    def release(self, key: Key) -> None:
        """The model failed or went away: its slot (if any) goes to a waiting model."""
        wake: list[Key] = []
        with self._lock:
            self._release(key, wake)
        self._wake(key, wake)

    def _release(self, key: Key, wake: list[Key]) -> None:
        """Give up the model's slot (lock held), waking the models waiting for one."""
        self._waiting.discard(key)
        if self._moving.pop(key, None) is not None:
            wake.extend(self._waiting)

    def _wake(self, key: Key, wake: list[Key]) -> None:
        for other in wake:
            if other != key:
                self._enqueue(other, "a runtime image rollout ended")

    def _finished(self, key: Key, target: str) -> bool:
        """Whether the model's Deployment has finished moving to ``target``: every replica
        updated and available and no old pod left, or (once the Deployment controller has seen
        the new template) its progress deadline passed; or the Deployment is gone. A Deployment
        that does not show ``target`` yet (its apply is on the way) has not finished."""
        deployment = next(
            (c for c in self._children(key) if c.get("kind") == DEPLOYMENT.kind), None
        )
        if deployment is None:
            return True
        if server_image(deployment) != target:
            return False
        spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
        meta = deployment.get("metadata") or {}
        if status.get("observedGeneration", 0) < meta.get("generation", 0):
            return False
        if any(
            c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
            for c in status.get("conditions") or []
        ):
            return True
        wanted = spec.get("replicas", 1)
        return bool(
            status.get("updatedReplicas", 0) >= wanted
            and status.get("availableReplicas", 0) >= wanted
            and status.get("replicas", 0) <= wanted
        )


def server_image(deployment: Mapping[str, Any] | None) -> str | None:
    """The image of a Deployment's runtime container, as its pod template has it."""
    template = ((deployment or {}).get("spec") or {}).get("template") or {}
    for container in (template.get("spec") or {}).get("containers") or []:
        if container.get("name") == SERVER_CONTAINER:
            image: str | None = container.get("image")
            return image
    return None
