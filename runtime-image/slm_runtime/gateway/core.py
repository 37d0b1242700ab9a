"""The gateway's decisions, pure: which replica takes a request, whether a request may wait for
a model at zero replicas, when a model is scaled up or down, and the prompt prefix that prefix
affinity hashes. No I/O and no clock of its own: callers pass the time."""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

SCALED_TO_ZERO: Final = "ScaledToZero"
"""The LocalModel phase of a model the user let go to zero replicas."""
READY: Final = "Ready"


class Balance(StrEnum):
    """How a request picks among a model's ready replicas."""

    LEAST_LOAD = "LeastLoad"
    PREFIX_AFFINITY = "PrefixAffinity"


@dataclass(frozen=True)
class Model:
    """What the gateway knows of one LocalModel."""

    namespace: str
    name: str
    port: int = 8080
    phase: str = ""
    auth_secret: str | None = None
    scale_to_zero_after: float | None = None
    """Idle seconds before going to zero replicas; None when the model never goes to zero."""
    digest: str = ""
    size_bytes: int = 0
    endpoints: Mapping[str, str] = field(default_factory=dict)
    """Ready replicas: pod name -> base URL."""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


# --- choosing a replica -----------------------------------------------------------------------


def least_loaded(replicas: Sequence[str], in_flight: Mapping[str, int], turn: int = 0) -> str:
    """The replica with the fewest requests in flight; ties go round by ``turn``."""
    if not replicas:
        raise ValueError("no replicas to choose from")
    fewest = min(in_flight.get(r, 0) for r in replicas)
    tied = sorted(r for r in replicas if in_flight.get(r, 0) == fewest)
    return tied[turn % len(tied)]


def _point(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class Ring:
    """A consistent-hash ring of replicas with bounded loads (CHWBL).

    A key goes to the first replica clockwise from its hash whose load is under
    ``ceil(load_factor * (total + 1) / replicas)``; a replica over that bound is skipped, so a
    hot prefix spills to the next replica instead of queueing on one. Adding or removing a
    replica moves only the keys that hashed next to it.
    """

    def __init__(self, replicas: Sequence[str], virtual_nodes: int = 100) -> None:
        if not replicas:
            raise ValueError("no replicas to choose from")
        self.replicas = tuple(sorted(set(replicas)))
        self._points = sorted(
            (_point(f"{r}#{i}"), r) for r in self.replicas for i in range(virtual_nodes)
        )
        self._hashes = [p for p, _ in self._points]

    def pick(self, key: str, in_flight: Mapping[str, int], load_factor: float = 1.25) -> str:
        """The replica for ``key`` under the load bound."""
        total = sum(in_flight.get(r, 0) for r in self.replicas)
        bound = math.ceil(load_factor * (total + 1) / len(self.replicas))
        start = bisect.bisect(self._hashes, _point(key))
        for i in range(len(self._points)):
            replica = self._points[(start + i) % len(self._points)][1]
            if in_flight.get(replica, 0) < bound:
                return replica
        return least_loaded(self.replicas, in_flight)  # unreachable: some replica is under


def choose(
    mode: Balance,
    replicas: Sequence[str],
    in_flight: Mapping[str, int],
    prefix: str,
    *,
    turn: int = 0,
    ring: Ring | None = None,
    load_factor: float = 1.25,
) -> str:
    """The replica for one request. Prefix affinity needs a prompt: without one (an embedding
    request of a number list, say) it balances by load."""
    if mode is Balance.PREFIX_AFFINITY and prefix:
        return (ring or Ring(replicas)).pick(prefix, in_flight, load_factor)
    return least_loaded(replicas, in_flight, turn)


# --- the prompt prefix ------------------------------------------------------------------------


def _text(content: Any) -> str:
    """Text of a message content: a string, or OpenAI's list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_text(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _messages(items: Any) -> str:
    if isinstance(items, str):
        return items
    if not isinstance(items, list):
        return ""
    out = []
    for item in items:
        if isinstance(item, dict):
            out.append(f"{item.get('role', '')}:{_text(item.get('content'))}\n")
        elif isinstance(item, str):
            out.append(item)
    return "".join(out)


def prompt_prefix(body: Mapping[str, Any], length: int) -> str:
    """The first ``length`` characters of the prompt a request sends, in the order the model
    reads it (system, then messages or prompt): requests that share it share a KV-cache prefix.
    Empty when the body carries no text prompt."""
    parts = [
        body["system"] if isinstance(body.get("system"), str) else "",
        body["instructions"] if isinstance(body.get("instructions"), str) else "",
        _messages(body.get("messages")),
        _messages(body.get("input")),
        body["prompt"] if isinstance(body.get("prompt"), str) else "",
    ]
    return "".join(parts)[:length]


# --- holding requests for a model at zero -----------------------------------------------------


class Holds:
    """Requests waiting for a model to have a ready replica, counted per model and bounded."""

    def __init__(self, per_model: int) -> None:
        self.per_model = per_model
        self._held: dict[str, int] = {}

    def admit(self, model: str) -> bool:
        """Take a place in the model's queue; False when the queue is full."""
        held = self._held.get(model, 0)
        if held >= self.per_model:
            return False
        self._held[model] = held + 1
        return True

    def release(self, model: str) -> None:
        """Give a place back (the request was forwarded, timed out or went away)."""
        held = self._held.get(model, 0) - 1
        if held > 0:
            self._held[model] = held
        else:
            self._held.pop(model, None)

    def held(self, model: str) -> int:
        return self._held.get(model, 0)


# --- scaling between zero and one -------------------------------------------------------------


def wants_scale_up(model: Model) -> bool:
    """A held request may ask for one replica only when the operator reports the model
    scaled to zero (not while its first pull runs, when the operator holds it at zero)."""
    return model.scale_to_zero_after is not None and model.phase == SCALED_TO_ZERO


def idle_for(last_request: float | None, started: float, now: float) -> float:
    """Seconds since the last request through this gateway (or since it started, when none has
    come: a restarted gateway does not take a model down at once)."""
    return now - max(last_request or started, started)


def wants_scale_down(model: Model, in_flight: int, held: int, idle_seconds: float) -> bool:
    """A Ready model with a scale-to-zero period goes to zero once nothing is in flight or held
    and no request came for that long (a model that is rolling out, degraded or pulling is left
    to the operator)."""
    return (
        model.scale_to_zero_after is not None
        and model.phase == READY
        and in_flight == 0
        and held == 0
        and idle_seconds >= model.scale_to_zero_after
    )
