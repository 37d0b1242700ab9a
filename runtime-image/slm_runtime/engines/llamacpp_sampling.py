"""Choosing tokens on llama.cpp: the sampler chain for a request, whether it is greedy, and the
most likely tokens for log probabilities."""

from __future__ import annotations

from typing import Any

import llama_cpp
import numpy as np

from slm_runtime.engines.base import (
    SamplingParams,
)

# Logit distances from the peak (nats) tried in turn to narrow the search for the top tokens.
_TOP_WIDTHS = (8.0, 16.0)


def is_greedy(params: SamplingParams) -> bool:
    """Temperature 0 without penalties: the argmax of the logits, nothing else."""
    return (
        params.temperature <= 0.0
        and params.repeat_penalty == 1.0
        and params.presence_penalty == 0.0
        and params.frequency_penalty == 0.0
    )


def top_ids(logits: Any, n: int, peak: float) -> Any:
    """The ``n`` most likely token ids, most likely first (equal logits in id order, as the
    argmax picks). Partitioning the whole vocabulary costs milliseconds at 262k tokens; the
    tokens within a few nats of the peak are usually a few dozen and hold the top ``n``
    whenever there are at least ``n`` of them."""
    ids = None
    for width in _TOP_WIDTHS:
        near = np.flatnonzero(logits >= np.float32(peak - width))
        if near.size >= n:
            ids = near
            break
    if ids is None:
        ids = np.arange(logits.size)
    if ids.size > n:
        # Keep every id tied with the n-th largest logit: which of them a partition keeps is
        # arbitrary. ``ids`` ascend, so the stable sort lists ties in id order.
        values = logits[ids]
        ids = ids[values >= np.partition(values, ids.size - n)[ids.size - n]]
    return ids[np.argsort(-logits[ids], kind="stable")[:n]]


def sampler_chain(params: SamplingParams, n_vocab: int, context_length: int) -> Any:
    """llama.cpp's sampler chain for ``params``: penalties, then greedy, or top-k, top-p, min-p,
    temperature and a seeded draw."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    if (
        params.repeat_penalty != 1.0
        or params.presence_penalty != 0.0
        or params.frequency_penalty != 0.0
    ):
        last_n = context_length if params.repeat_last_n < 0 else params.repeat_last_n
        llama_cpp.llama_sampler_chain_add(
            chain,
            llama_cpp.llama_sampler_init_penalties(
                n_vocab,
                last_n,
                params.repeat_penalty,
                params.frequency_penalty,
                params.presence_penalty,
            ),
        )
    if params.temperature <= 0.0:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        return chain
    if params.top_k > 0:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_k(params.top_k))
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
    if params.min_p > 0.0:
        llama_cpp.llama_sampler_chain_add(
            chain, llama_cpp.llama_sampler_init_min_p(params.min_p, 1)
        )
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(params.temperature))
    seed = llama_cpp.LLAMA_DEFAULT_SEED if params.seed is None else params.seed
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed))
    return chain
