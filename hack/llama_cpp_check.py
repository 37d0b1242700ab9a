"""Keep the virtualenv's llama.cpp free of llamafile's sgemm, as the runtime image builds it.

With GGML_LLAMAFILE a token's logits depend on how many tokens share its batch, so a
prompt-cache hit could change a greedy answer (see runtime-image/slm_runtime/engines/ggml.py).
`make venv` installs llama-cpp-python with CMAKE_ARGS=-DGGML_LLAMAFILE=OFF, but pip reuses a
wheel it built earlier whatever CMAKE_ARGS say: when the installed build still has llamafile,
this drops pip's cached wheels of it and builds it again from the pinned sdist.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLAG = "-DGGML_LLAMAFILE=OFF"
PROBE = """
from pathlib import Path
import llama_cpp
from slm_runtime.engines.ggml import has_llamafile, load_cpu_backend
lib = Path(llama_cpp.__file__).parent / "lib"
print(int(has_llamafile(lib, load_cpu_backend(lib))))
"""


def built_with_llamafile() -> bool:
    """Ask a fresh interpreter, so the answer is about what is installed now."""
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    return out.stdout.strip() == "1"


def main() -> int:
    """Rebuild llama-cpp-python when the installed one has llamafile; fail if it still has."""
    if not built_with_llamafile():
        return 0
    print("llama-cpp-python was built with llamafile; building it again without", flush=True)
    env = {**os.environ, "CMAKE_ARGS": f"{os.environ.get('CMAKE_ARGS', '')} {FLAG}".strip()}
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "cache", "remove", "llama_cpp_python"], check=False, env=env)
    lock = ROOT / "requirements" / "llama-cpp-python.txt"
    subprocess.run(
        [*pip, "install", "-q", "--force-reinstall", "--no-deps", "--require-hashes", "-r", lock],
        check=True,
        env=env,
    )
    if built_with_llamafile():
        print("llama-cpp-python still has llamafile after a rebuild with " + FLAG, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
