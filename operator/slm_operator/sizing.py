"""Container resources for the model server, derived from the model when the spec sets none.

Pure. A pod without requests is BestEffort: the first to be evicted and scheduled with no regard
for the memory a model needs. So when ``spec.resources`` leaves cpu or memory unset, they are
derived from the model:

- memory request = model size + KV cache + runtime overhead, rounded up to a mebibyte, and the
  memory limit equal to it, so a model that outgrows its estimate fails visibly (OOMKilled)
  instead of starving its neighbours;
- cpu request = ``parameters.numThread`` (else one core), and no cpu limit, so the pod is never
  throttled. The runtime's generation threads default to that request (render.py passes it
  through the downward API), not to every core of the node: on a busy node a thread per core
  would fight the node's other pods for the cores this one was never promised.

The estimates are deliberately on the high side for models up to about 4B parameters; set
``spec.resources`` for anything larger or to tighten them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Final

from slm_runtime.config import Device, ModelFormat

from slm_operator.api import LocalModel
from slm_operator.fields import quantity_value
from slm_operator.spec import LocalModelSpec

MIB: Final = 1024**2

DEFAULT_CONTEXT_LENGTH: Final = 4096
"""Tokens per sequence when ``parameters.contextLength`` is unset; the runtime uses at most this."""

KV_CACHE_BYTES_PER_TOKEN: Final[Mapping[ModelFormat, int]] = {
    ModelFormat.GGUF: 128 * 1024,
    ModelFormat.ONNX: 256 * 1024,
}
"""K and V for one token of context: 2 x layers x KV heads x head size x bytes per value.

An upper bound for grouped-query-attention models up to about 4B parameters. llama.cpp keeps the
cache in f16: Phi-4-mini needs 2 x 32 x 8 x 128 x 2 = 128 KiB, Llama 3.2 3B 112 KiB, Qwen2.5 0.5B
12 KiB, Gemma 3 270M 18 KiB. The onnxruntime-genai model builder keeps it in f32 for CPU int4
exports, twice as much. Models without grouped-query attention (Phi-3-mini, SmolLM2 1.7B) need
more: set ``spec.resources.requests.memory`` for them.
"""

EMBEDDING_SEQUENCES: Final[Mapping[ModelFormat, int]] = {ModelFormat.GGUF: 1, ModelFormat.ONNX: 0}
"""Sequences beyond ``parallel``: llama.cpp serves embeddings from a context of its own."""

RUNTIME_OVERHEAD_BYTES: Final = 512 * MIB
"""The Python process, HTTP server and the engine's compute buffers, on top of weights and cache.

Weights are memory-mapped, so under pressure their pages are reclaimed rather than OOM-killed;
the cache and compute buffers are not. Gemma 3 270M at 4096 x 4 peaked at 1584 MiB resident
after four chats and an embedding, against an estimate of 3314 MiB.
"""

DEFAULT_CPU_REQUEST: Final = "1"
"""cpu request when neither ``resources`` nor ``parameters.numThread`` says otherwise."""

Resources = dict[str, dict[str, str]]


def parse_quantity(text: str | int | float) -> float:
    """A Kubernetes quantity as a number: cpu in cores, memory in bytes (``500m`` -> 0.5)."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a Kubernetes quantity such as 500m, 2Gi or 4")
    if isinstance(text, int | float):
        return float(text)
    return float(quantity_value(text.strip()))


def format_mebibytes(size_bytes: float) -> str:
    """Bytes as a quantity in whole mebibytes, rounded up (``1.5 MiB`` -> ``2Mi``)."""
    return f"{max(1, math.ceil(size_bytes / MIB))}Mi"


def estimated_model_bytes(spec: LocalModelSpec, model_size_bytes: int | None) -> int:
    """The model's size: the pulled size when known, else ``cache.size`` (the model fits in it)."""
    if model_size_bytes is not None:
        return model_size_bytes
    return math.ceil(parse_quantity(spec.cache.size))


def kv_cache_bytes(spec: LocalModelSpec) -> int:
    """The KV cache the runtime allocates: contextLength x parallel, plus embeddings on GGUF."""
    model_format = spec.model.resolved_format()
    context = spec.parameters.context_length or DEFAULT_CONTEXT_LENGTH
    sequences = spec.serving.parallel + EMBEDDING_SEQUENCES[model_format]
    return context * sequences * KV_CACHE_BYTES_PER_TOKEN[model_format]


def memory_estimate(spec: LocalModelSpec, model_size_bytes: int | None) -> int:
    """Bytes the server needs: weights + KV cache + runtime overhead."""
    return (
        estimated_model_bytes(spec, model_size_bytes)
        + kv_cache_bytes(spec)
        + RUNTIME_OVERHEAD_BYTES
    )


def pod_resources(spec: LocalModelSpec, model_size_bytes: int | None) -> Resources:
    """``{"requests": ..., "limits": ...}`` for the server container; never BestEffort.

    Each of cpu and memory is taken from ``spec.resources`` when the user set it (as a request or
    a limit), else derived from the model. Accelerator counts are the placement's business.
    """
    user_requests = spec.resources.requests.model_dump(by_alias=True, exclude_none=True)
    user_limits = spec.resources.limits.model_dump(by_alias=True, exclude_none=True)
    requests: dict[str, str] = dict(user_requests)
    limits: dict[str, str] = dict(user_limits)

    if "memory" not in user_requests and "memory" not in user_limits:
        memory = format_mebibytes(memory_estimate(spec, model_size_bytes))
        requests["memory"] = memory
        limits["memory"] = memory
    if "cpu" not in user_requests and "cpu" not in user_limits:
        threads = spec.parameters.num_thread
        requests["cpu"] = str(threads) if threads is not None else DEFAULT_CPU_REQUEST

    return {"requests": dict(sorted(requests.items())), "limits": dict(sorted(limits.items()))}


def pulled_size(lm: LocalModel) -> int | None:
    """The size status holds for the model's source: None once it describes another source (the
    variant before a step down, a source since changed), whose size would misjudge the pods."""
    known = lm.status.model
    if known.source is not None and known.source != lm.spec.model.source:
        return None
    return known.size_bytes


def requests_by_tier(lm: LocalModel) -> Callable[[Device], dict[str, float]]:
    """What one pod asks for on each tier, for placement: the pods of a tier run its variant,
    sized by that variant's format and parameters, and by the pulled size once status describes
    that variant (cpu in cores, memory in bytes)."""
    sized: dict[Device, dict[str, float]] = {}

    def requests(device: Device) -> dict[str, float]:
        if device not in sized:
            served = lm.serving(lm.spec.model.variant_for(device))
            wanted = pod_resources(served.spec, pulled_size(served)).get("requests", {})
            sized[device] = {name: parse_quantity(value) for name, value in wanted.items()}
        return sized[device]

    return requests
