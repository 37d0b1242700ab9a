"""ggml's CPU backends: load the best variant for this CPU from a build that keeps one per level.

A llama.cpp built with ``GGML_BACKEND_DL`` and ``GGML_CPU_ALL_VARIANTS`` (the runtime image)
ships one CPU backend per x86-64 instruction-set level beside ``libggml``
(``libggml-cpu-haswell.so``, ``libggml-cpu-skylakex.so``, ...) and links none of them in:
something must load one before a model can. llama-cpp-python does not bind
``ggml_backend_load_all_from_path``, so it is called here through ctypes; ggml scores each
variant against the CPU's features and loads the best. A native build (``GGML_NATIVE``, the
development virtualenv) has its CPU backend inside ``libggml`` and nothing to load.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)

BUILTIN = "builtin"
_VARIANT_FILE = re.compile(r"/libggml-cpu-([A-Za-z0-9_.]+)\.so\b")
_GGML_FILE = re.compile(r"/\S*/libggml\.so(\.[0-9.]+)?$", re.MULTILINE)


def loaded_cpu_variants(maps: str) -> list[str]:
    """The CPU variants whose libraries appear in a ``/proc/<pid>/maps`` text, in order."""
    seen: list[str] = []
    for match in _VARIANT_FILE.finditer(maps):
        if match.group(1) not in seen:
            seen.append(match.group(1))
    return seen


def has_llamafile(lib_dir: Path, variant: str) -> bool:
    """Whether the CPU backend in use was built with llamafile's sgemm (``GGML_LLAMAFILE``).

    That kernel serves matrix products of two or more rows and the plain dot product serves
    one, so a token's logits would depend on how many others share its batch: a prompt-cache
    hit, or another request decoding alongside, could change a greedy answer.
    """
    name = "libggml-cpu.so" if variant == BUILTIN else f"libggml-cpu-{variant}.so"
    cpu = ctypes.CDLL(str(lib_dir / name))
    cpu.ggml_cpu_has_llamafile.restype = ctypes.c_int
    return bool(cpu.ggml_cpu_has_llamafile())


@functools.cache
def load_cpu_backend(lib_dir: Path) -> str:
    """Load ggml's backends from ``lib_dir`` once; the CPU variant in use, or ``builtin``."""
    if not any(lib_dir.glob("libggml-cpu-*.so")):
        return BUILTIN
    # The libggml that libllama linked, not another copy of it: a wheel stores libggml.so,
    # .so.0 and .so.0.x as separate files, and backends registered in a second copy would be
    # invisible to llama.cpp.
    maps = Path("/proc/self/maps").read_text()
    linked = sorted({m.group(0) for m in _GGML_FILE.finditer(maps) if str(lib_dir) in m.group(0)})
    ggml = ctypes.CDLL(linked[0] if linked else str(lib_dir / "libggml.so"))
    ggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
    ggml.ggml_backend_load_all_from_path.restype = None
    ggml.ggml_backend_load_all_from_path(str(lib_dir).encode())
    variants = loaded_cpu_variants(Path("/proc/self/maps").read_text())
    if not variants:
        raise RuntimeError(f"ggml loaded no CPU backend from {lib_dir}")
    log.info("ggml CPU backend loaded", extra={"variant": variants[-1], "dir": str(lib_dir)})
    return variants[-1]


GPU_BACKENDS = ("cuda", "vulkan", "hip", "sycl")
"""ggml's GPU backend modules (libggml-<name>.so) that a build with GGML_BACKEND_DL may hold."""


def gpu_backend_absence(lib_dir: Path) -> str:
    """Why llama.cpp offers no GPU: the GPU backend module it holds does not load here (with the
    loader's reason, e.g. no NVIDIA driver), or it holds none."""
    for name in GPU_BACKENDS:
        module = lib_dir / f"libggml-{name}.so"
        if not module.is_file():
            continue
        try:
            ctypes.CDLL(str(module))
        except OSError as exc:
            return f"llama.cpp's {name} backend does not load on this node: {exc}"
        return f"llama.cpp's {name} backend loads but finds no usable GPU"
    return "llama.cpp was built without a GPU backend (llama_supports_gpu_offload() is false)"
