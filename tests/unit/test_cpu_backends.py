"""Which ggml CPU backend the runtime reports, from the libraries mapped into the process."""

from __future__ import annotations

from pathlib import Path

import pytest
from slm_runtime.engines.ggml import BUILTIN, load_cpu_backend, loaded_cpu_variants

pytestmark = pytest.mark.unit

MAPS = """\
7f00-7f10 r--p 00000000 00:2f 12 /opt/slm/site-packages/llama_cpp/lib/libggml-base.so
7f10-7f20 r-xp 00001000 00:2f 13 /opt/slm/site-packages/llama_cpp/lib/libggml-cpu-zen4.so
7f20-7f30 r--p 00011000 00:2f 13 /opt/slm/site-packages/llama_cpp/lib/libggml-cpu-zen4.so
7f30-7f40 r--p 00000000 00:2f 14 /usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0
"""


def test_the_variant_comes_from_the_mapped_library_names() -> None:
    assert loaded_cpu_variants(MAPS) == ["zen4"]
    assert loaded_cpu_variants("7f00 r-xp /x/libggml-cpu-sandybridge.so\n") == ["sandybridge"]
    assert loaded_cpu_variants("7f00 r-xp /x/libggml-cpu.so\n") == []


def test_a_build_without_variant_libraries_has_its_cpu_backend_built_in(tmp_path: Path) -> None:
    (tmp_path / "libggml.so").touch()
    assert load_cpu_backend(tmp_path) == BUILTIN
