"""llama.cpp as the runtime runs it: without llamafile, logits never depend on the batch."""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import pytest
from slm_runtime.engines.ggml import has_llamafile, load_cpu_backend

pytestmark = pytest.mark.runtime


def test_the_virtualenv_llama_cpp_is_built_without_llamafile() -> None:
    lib = Path(llama_cpp.__file__).parent / "lib"
    assert not has_llamafile(lib, load_cpu_backend(lib)), (
        "llama-cpp-python was built with GGML_LLAMAFILE; make venv builds it without"
    )
