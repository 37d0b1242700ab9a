"""What a GGUF model says of itself through llama.cpp: its metadata and Ollama's details."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import llama_cpp

from slm_runtime.engines.base import ModelDetails

# llama.cpp's file types, as Ollama names them.
_FTYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    32: "BF16",
}


def _human_count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def gguf_metadata(model: Any) -> dict[str, str]:
    """Every metadata key of the loaded model with its value as text."""
    out: dict[str, str] = {}
    buf = ctypes.create_string_buffer(1 << 16)
    for i in range(llama_cpp.llama_model_meta_count(model)):
        n = llama_cpp.llama_model_meta_key_by_index(model, i, buf, len(buf))
        if n < 0:
            continue
        key = buf.value.decode("utf-8", "replace")
        n = llama_cpp.llama_model_meta_val_str_by_index(model, i, buf, len(buf))
        if n < 0:
            continue
        if n >= len(buf):
            big = ctypes.create_string_buffer(n + 1)
            llama_cpp.llama_model_meta_val_str_by_index(model, i, big, len(big))
            out[key] = big.value.decode("utf-8", "replace")
        else:
            out[key] = buf.value.decode("utf-8", "replace")
    return out


def model_details(
    model: Any, metadata: dict[str, str], model_path: str, context_length: int
) -> ModelDetails:
    """Ollama's details of the model: family, size, quantization and architecture facts."""
    arch = metadata.get("general.architecture", "")
    info: dict[str, object] = {
        "general.architecture": arch,
        "general.parameter_count": llama_cpp.llama_model_n_params(model),
    }
    for key, value in metadata.items():
        if key.startswith(f"{arch}.") and value.lstrip("-").isdigit():
            info[key] = int(value)
    ftype = llama_cpp.llama_model_ftype(model)
    return ModelDetails(
        family=arch,
        parameter_size=_human_count(llama_cpp.llama_model_n_params(model)),
        quantization_level=_FTYPES.get(ftype, str(ftype)),
        size_bytes=Path(model_path).stat().st_size,
        context_length=context_length,
        architecture_info=info,
    )
