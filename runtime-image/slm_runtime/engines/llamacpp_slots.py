"""The decode loop's bookkeeping: a KV-cache slot and what it holds, a running sequence, and the
prefix a prompt shares with a slot."""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Any

from slm_runtime.engines.base import (
    Generation,
    SamplingParams,
    StopMatcher,
    TokenLogprob,
)


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two token lists (slice compares run in C)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(eq=False)
class Slot:
    """One sequence id of the context and the tokens its KV cache holds, kept after release so
    that a later prompt sharing a prefix (the same system prompt, a longer conversation) only
    evaluates what is new."""

    seq_id: int
    cached: list[int] = field(default_factory=list)
    last_used: int = 0


@dataclass(eq=False)
class Sequence:
    generation: Generation
    params: SamplingParams
    prompt: list[int]
    max_tokens: int
    slot: Slot | None = None
    reused: int = 0
    greedy: bool = False
    sampler: Any = None
    grammar_sampler: Any = None
    pending: list[int] = field(default_factory=list)
    n_past: int = 0
    generated: int = 0
    started: float = 0.0
    first_token_at: float = 0.0
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )
    stop: StopMatcher = field(default_factory=lambda: StopMatcher(()))
    # Characters decoded so far and characters emitted (the stop matcher may hold some back).
    decoded: int = 0
    emitted: int = 0
    # Log probabilities of generated tokens not yet emitted with their text.
    logprobs: list[TokenLogprob] = field(default_factory=list)
