"""slm-gateway in front of real runtime processes (Gemma 3 270M, SmolLM2-135M-Instruct): the real
`openai` and `ollama` clients through one URL, balancing, prefix affinity with the runtime's
prompt cache, per-model tokens, holds, and a replica killed mid-stream.

The gateway here runs in this process with a Directory fed the LocalModel and EndpointSlice
objects a cluster would send (the watches themselves, the Secret reads and the scale writes run
against the real API server in tests/cluster/test_gateway.py); ``scale`` below is a stand-in for
the API server's scale subresource that starts a real runtime process."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from slm_runtime.gateway.app import create_gateway_app
from slm_runtime.gateway.core import SCALED_TO_ZERO, Balance
from slm_runtime.gateway.directory import Directory
from slm_runtime.gateway.kube import SecretUnavailableError
from slm_runtime.gateway.metrics import GatewayMetrics
from slm_runtime.gateway.service import Gateway, Settings, TokenDigest

from tests.runtime.conftest import (
    Server,
    free_port,
    gemma_config,
    serve,
    smollm2_config,
    wait_until,
)

pytestmark = pytest.mark.runtime

Factory = Callable[..., Server]


def localmodel(name: str, namespace: str = "team", **spec: Any) -> dict[str, Any]:
    status = spec.pop("status", {"phase": "Ready"})
    return {"metadata": {"name": name, "namespace": namespace}, "spec": spec, "status": status}


def endpoints(model: str, *servers: Server, namespace: str = "team") -> list[dict[str, Any]]:
    """One EndpointSlice per server (each has its own port), as the cluster would list them."""
    slices = []
    for server in servers:
        port = int(server.url.rsplit(":", 1)[1])
        slices.append(
            {
                "metadata": {
                    "name": f"{model}-{port}",
                    "namespace": namespace,
                    "labels": {"kubernetes.io/service-name": model},
                },
                "ports": [{"name": "http", "port": port}],
                "endpoints": [
                    {
                        "addresses": ["127.0.0.1"],
                        "conditions": {"ready": True},
                        "targetRef": {"kind": "Pod", "name": f"{model}-pod-{port}"},
                    }
                ],
            }
        )
    return slices


class RunningGateway:
    """A gateway served by uvicorn on a thread; the directory is changed on its loop."""

    def __init__(self, gateway: Gateway, url: str, loop: asyncio.AbstractEventLoop) -> None:
        self.gateway = gateway
        self.url = url
        self.loop = loop

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        done: Future[Any] = Future()

        def run() -> None:
            try:
                done.set_result(fn(*args))
            except Exception as exc:
                done.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return done.result(timeout=10)

    def models(self, *items: dict[str, Any]) -> None:
        self.call(self.gateway.directory.sync_models, list(items))

    def slices(self, *items: dict[str, Any]) -> None:
        self.call(self.gateway.directory.sync_slices, list(items))

    def metric(self, name: str, **labels: str) -> float:
        """The value of the sample ``name`` whose labels include ``labels`` (0 when absent)."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    return float(sample.value)
        return 0.0

    def openai(self, **kwargs: Any) -> openai.OpenAI:
        kwargs.setdefault("api_key", "unused")
        return openai.OpenAI(base_url=f"{self.url}/v1", max_retries=0, **kwargs)

    def ollama(self, **kwargs: Any) -> ollama.Client:
        return ollama.Client(host=self.url, **kwargs)


@contextmanager
def running_gateway(
    settings: Settings | None = None,
    *,
    token_digest: TokenDigest | None = None,
    scale: Callable[[str, str, int, int], Any] | None = None,
) -> Iterator[RunningGateway]:
    directory = Directory()
    settings = settings or Settings()
    gateway = Gateway(directory, settings, GatewayMetrics(), token_digest=token_digest)
    if scale is not None:

        async def scale_write(namespace: str, name: str, when: int, to: int) -> bool:
            return bool(await asyncio.to_thread(scale, namespace, name, when, to))

        gateway.scale = scale_write
    directory.on_change = gateway.changed
    gateway.synced = True
    port = free_port()
    app = create_gateway_app(gateway, [gateway.scale_down_loop])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    loops: list[asyncio.AbstractEventLoop] = []

    def run() -> None:
        loop = asyncio.new_event_loop()
        loops.append(loop)
        loop.run_until_complete(server.serve())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 30, "the gateway to start")
    try:
        yield RunningGateway(gateway, f"http://127.0.0.1:{port}", loops[0])
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def smollm2_server(
    smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    yield from serve(tmp_path_factory, "smollm2", smollm2_config(smollm2_gguf))


@pytest.fixture(scope="module")
def gemma_pair(
    gemma_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Server]]:
    """Two replicas of one Gemma model, one slot each, greedy."""
    config = gemma_config(
        gemma_gguf,
        parallel=1,
        parameters={"contextLength": 2048, "numPredict": 8, "numThread": 1, "temperature": 0},
    )
    first = serve(tmp_path_factory, "gemma-a", config)
    second = serve(tmp_path_factory, "gemma-b", config)
    yield [next(first), next(second)]
    for rest in (first, second):
        for _ in rest:
            pass


def test_one_url_serves_two_models_through_both_clients(
    gemma_server: Server, smollm2_server: Server
) -> None:
    with running_gateway() as gw:
        gw.models(localmodel("gemma"), localmodel("smollm2"))
        gw.slices(*endpoints("gemma", gemma_server), *endpoints("smollm2", smollm2_server))
        client = gw.openai()
        assert sorted(m.id for m in client.models.list()) == ["gemma", "smollm2"]

        reply = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
        )
        assert reply.model == "smollm2"
        assert reply.choices[0].message.content

        chunks = list(
            client.chat.completions.create(
                model="gemma",
                messages=[{"role": "user", "content": "Count to five."}],
                max_tokens=8,
                stream=True,
            )
        )
        assert len(chunks) > 2, "the stream arrives as chunks, not one buffered body"
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

        local = gw.ollama()
        answer = local.chat(model="smollm2:latest", messages=[{"role": "user", "content": "Hi"}])
        assert answer.message.content
        streamed = list(local.generate(model="team/gemma", prompt="The sky is", stream=True))
        assert streamed[-1].done
        assert sorted(m.model or "" for m in local.list().models) == [
            "gemma:latest",
            "smollm2:latest",
        ]
        assert (
            gw.metric(
                "slm_gateway_requests_total", namespace="team", localmodel="gemma", code="200"
            )
            == 2
        )

        with pytest.raises(openai.NotFoundError) as missing:
            client.chat.completions.create(
                model="nope", messages=[{"role": "user", "content": "hi"}]
            )
        assert missing.value.code == "model_not_found"
        with pytest.raises(ollama.ResponseError) as missing_ollama:
            local.generate(model="nope", prompt="hi")
        assert missing_ollama.value.status_code == 404
        assert 'model "nope" not found' in missing_ollama.value.error

        bad = httpx.post(f"{gw.url}/v1/chat/completions", content=b"{not json", timeout=10)
        assert bad.status_code == 400
        assert bad.json()["error"]["type"] == "invalid_request_error"
        refused = httpx.post(f"{gw.url}/api/pull", json={"model": "x"}, timeout=10)
        assert refused.status_code == 403
        assert "LocalModel" in refused.json()["error"]


def _server_timing(response: httpx.Response) -> dict[str, float]:
    timings = {}
    for part in response.headers["server-timing"].split(","):
        name, _, dur = part.strip().partition(";dur=")
        timings[name] = float(dur)
    return timings


def test_an_answer_says_how_long_the_replica_took(gemma_server: Server) -> None:
    with running_gateway() as gw:
        gw.models(localmodel("gemma"))
        gw.slices(*endpoints("gemma", gemma_server))
        body = {"model": "gemma", "prompt": "The sky is", "max_tokens": 4}
        started = time.perf_counter()
        whole = httpx.post(f"{gw.url}/v1/completions", json=body, timeout=60)
        elapsed = (time.perf_counter() - started) * 1000
        assert whole.status_code == 200
        upstream = _server_timing(whole)["upstream"]
        assert 0 < upstream <= elapsed
        assert len(whole.headers.get_list("date")) == 1, "the gateway's Date, not two"

        # Headers go on as the caller sent them: none is added, Content-Type included.
        bare = httpx.post(f"{gw.url}/v1/completions", content=json.dumps(body), timeout=60)
        direct = httpx.post(
            f"{gemma_server.url}/v1/completions", content=json.dumps(body), timeout=60
        )
        assert (bare.status_code, direct.status_code) == (200, 200), (bare.text, direct.text)

        streamed = {**body, "stream": True}
        with httpx.stream("POST", f"{gw.url}/v1/completions", json=streamed, timeout=60) as got:
            assert got.status_code == 200
            assert _server_timing(got)["upstream-start"] > 0
            assert "[DONE]" in got.read().decode()


def test_least_load_sends_a_concurrent_request_to_the_idle_replica(
    gemma_pair: list[Server],
) -> None:
    with running_gateway() as gw:
        gw.models(localmodel("gemma"))
        gw.slices(*endpoints("gemma", *gemma_pair))
        pods = [f"gemma-pod-{s.url.rsplit(':', 1)[1]}" for s in gemma_pair]

        def served_by(pod: str) -> float:
            return gw.metric("slm_gateway_upstream_requests_total", localmodel="gemma", pod=pod)

        long = gw.openai().completions.create(
            model="gemma", prompt="Once upon a time", max_tokens=64, stream=True
        )
        next(iter(long))  # the first replica is now busy with this stream
        (busy,) = [p for p in pods if served_by(p) == 1]
        (idle,) = [p for p in pods if p != busy]
        reply = gw.openai().completions.create(model="gemma", prompt="Hello", max_tokens=2)
        assert reply.choices[0].text is not None
        assert (served_by(busy), served_by(idle)) == (1, 1)
        # A client that goes away mid-stream releases its place, and the replica stops.
        long.close()
        wait_until(
            lambda: gw.metric("slm_gateway_requests_in_flight", localmodel="gemma") == 0,
            30,
            "the gateway to release the closed stream",
        )
        wait_until(
            lambda: all(s.metric("slm_runtime_requests_in_flight") == 0 for s in gemma_pair),
            30,
            "the replica to stop generating for the closed stream",
        )


def test_prefix_affinity_keeps_a_repeated_prompt_on_the_replica_that_cached_it(
    gemma_pair: list[Server],
) -> None:
    prompt = " ".join(f"Fact {i}: the number {i} follows {i - 1}." for i in range(1, 60))
    settings = Settings(balance=Balance.PREFIX_AFFINITY, prefix_length=512)
    with running_gateway(settings) as gw:
        gw.models(localmodel("gemma"))
        gw.slices(*endpoints("gemma", *gemma_pair))
        before = [s.metric("slm_runtime_prompt_cached_tokens_total") for s in gemma_pair]
        cached = []
        for _ in range(4):
            reply = gw.openai().completions.create(model="gemma", prompt=prompt, max_tokens=2)
            assert reply.usage is not None
            assert reply.usage.prompt_tokens_details is not None
            cached.append(reply.usage.prompt_tokens_details.cached_tokens or 0)
        gained = [
            s.metric("slm_runtime_prompt_cached_tokens_total") - b
            for s, b in zip(gemma_pair, before, strict=True)
        ]
    assert min(gained) == 0, "every repeat went to one replica"
    assert all(c > 200 for c in cached[1:]), cached
    assert max(gained) == sum(cached)


def test_a_model_with_a_token_is_listed_and_served_only_with_it(
    gemma_server: Server, smollm2_server: Server
) -> None:
    secret = hashlib.sha256(b"s3cret").digest()

    async def digest(namespace: str, name: str) -> bytes | None:
        return secret if (namespace, name) == ("team", "smollm2-token") else None

    with running_gateway(token_digest=digest) as gw:
        gw.models(
            localmodel("gemma"), localmodel("smollm2", serving={"authSecret": "smollm2-token"})
        )
        gw.slices(*endpoints("gemma", gemma_server), *endpoints("smollm2", smollm2_server))
        assert [m.id for m in gw.openai().models.list()] == ["gemma"]
        assert sorted(m.id for m in gw.openai(api_key="s3cret").models.list()) == [
            "gemma",
            "smollm2",
        ]
        with pytest.raises(openai.AuthenticationError):
            gw.openai(api_key="wrong").chat.completions.create(
                model="smollm2", messages=[{"role": "user", "content": "hi"}]
            )
        with pytest.raises(ollama.ResponseError) as refused:
            gw.ollama().generate(model="smollm2", prompt="hi")
        assert refused.value.status_code == 401
        reply = gw.openai(api_key="s3cret").chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert reply.choices[0].message.content is not None
        assert (
            gw.metric(
                "slm_gateway_errors_total",
                namespace="team",
                localmodel="smollm2",
                reason="unauthorized",
            )
            == 2
        )


def test_a_model_at_zero_holds_its_requests_until_a_replica_is_ready(
    gemma_gguf: Path, server_factory: Factory
) -> None:
    writes: list[tuple[str, str, int, int]] = []
    zero = localmodel(
        "gemma",
        autoscaling={"enabled": True, "minReplicas": 0, "scaleToZeroAfter": "1s"},
        status={"phase": SCALED_TO_ZERO},
    )
    holder: list[RunningGateway] = []

    def scale(namespace: str, name: str, when: int, to: int) -> bool:
        writes.append((namespace, name, when, to))
        gw = holder[0]
        if to == 1:  # what the cluster does next: a pod starts, loads the model, turns Ready
            server = server_factory(gemma_config(gemma_gguf, parallel=1))
            gw.models({**zero, "status": {"phase": "Ready"}})
            gw.slices(*endpoints("gemma", server))
        else:
            gw.slices()
            gw.models(zero)
        return True

    settings = Settings(hold_queue=2, hold_timeout=120, idle_check_seconds=0.2)
    with running_gateway(settings, scale=scale) as gw:
        holder.append(gw)
        gw.models(zero)
        stream = gw.ollama().generate(model="gemma", prompt="Hello", stream=True)
        parts = list(stream)
        assert parts[-1].done
        assert writes[0] == ("team", "gemma", 0, 1)
        assert (
            gw.metric("slm_gateway_hold_seconds_count", namespace="team", localmodel="gemma") == 1
        )
        # Idle past scaleToZeroAfter (1s) on the gateway and on the replica: back to zero.
        wait_until(lambda: len(writes) == 2, 30, "the scale to zero")
        assert writes[1] == ("team", "gemma", 1, 0)
        assert (
            gw.metric(
                "slm_gateway_scale_writes_total",
                namespace="team",
                localmodel="gemma",
                direction="down",
            )
            == 1
        )


def test_a_full_hold_queue_and_a_hold_timeout_answer_in_the_api_shape() -> None:
    settings = Settings(hold_queue=1, hold_timeout=6)
    pending = localmodel("slow", status={"phase": "Deploying"})
    with running_gateway(settings) as gw:
        gw.models(pending)
        results: list[httpx.Response] = []
        waiter = threading.Thread(
            target=lambda: results.append(
                httpx.post(
                    f"{gw.url}/api/generate", json={"model": "slow", "prompt": "x"}, timeout=30
                )
            )
        )
        waiter.start()
        wait_until(
            lambda: (
                gw.metric("slm_gateway_requests_held", namespace="team", localmodel="slow") == 1
            ),
            10,
            "a held request",
        )
        full = httpx.post(
            f"{gw.url}/v1/completions", json={"model": "slow", "prompt": "x"}, timeout=30
        )
        assert full.status_code == 429
        assert full.headers["retry-after"] == "1"
        assert full.json()["error"]["code"] == "rate_limit_exceeded"
        waiter.join()
        (timed_out,) = results
        assert timed_out.status_code == 503
        assert "no ready replica after 6s (phase Deploying)" in timed_out.json()["error"]
        failed = localmodel("broken", status={"phase": "Failed"})
        gw.models(pending, failed)
        refused = httpx.post(
            f"{gw.url}/v1/completions", json={"model": "broken", "prompt": "x"}, timeout=30
        )
        assert refused.status_code == 503
        assert "kubectl describe localmodel -n team broken" in refused.json()["error"]["message"]


def test_a_replica_killed_mid_stream_fails_that_stream_cleanly_and_later_requests_go_on(
    gemma_gguf: Path, server_factory: Factory
) -> None:
    config = gemma_config(
        gemma_gguf,
        parallel=1,
        parameters={"contextLength": 1024, "numPredict": 400, "numThread": 1},
    )
    pair = [server_factory(config), server_factory(config)]
    with running_gateway() as gw:
        gw.models(localmodel("gemma"))
        gw.slices(*endpoints("gemma", *pair))
        stream = gw.openai().chat.completions.create(
            model="gemma",
            messages=[{"role": "user", "content": "Write a long story."}],
            max_tokens=400,
            stream=True,
        )
        chunks = iter(stream)
        next(chunks)
        victim = next(s for s in pair if s.metric("slm_runtime_requests_in_flight") == 1)
        victim.stop(signal.SIGKILL)
        with pytest.raises(openai.APIError, match="failed mid-answer"):
            for _ in chunks:
                pass
        # The dead replica still has its endpoint (the cluster has not noticed yet): the next
        # requests find its port closed and go to the other one.
        for _ in range(3):
            reply = gw.openai().chat.completions.create(
                model="gemma", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
            assert reply.choices[0].message is not None
        assert (
            gw.metric(
                "slm_gateway_errors_total",
                namespace="team",
                localmodel="gemma",
                reason="upstream_broken",
            )
            == 1
        )


def test_the_gateway_answers_its_probes() -> None:
    with running_gateway() as gw:
        assert httpx.get(f"{gw.url}/healthz").status_code == 200
        assert httpx.get(f"{gw.url}/readyz").json()["status"] == "ready"
        gw.gateway.draining = True
        assert httpx.get(f"{gw.url}/readyz").status_code == 503


def test_the_gateway_process_serves_upstreams_and_drains_on_sigterm(
    gemma_server: Server, tmp_path: Path
) -> None:
    """`slm-runtime gateway --upstream` (no cluster): a stream in flight when SIGTERM comes is
    finished before the process exits."""
    port = free_port()
    log = (tmp_path / "gateway.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "slm_runtime.cli", "gateway", "--port", str(port),
         "--upstream", f"gemma={gemma_server.url}", "--drain-timeout", "60"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, 60, "the gateway process to be ready")
        assert [m.id for m in openai.OpenAI(base_url=f"{url}/v1", api_key="x").models.list()] == [
            "gemma"
        ]
        client = httpx.Client(base_url=url, timeout=120)
        body = {"model": "gemma", "prompt": "Once upon a time", "stream": True,
                "options": {"num_predict": 400}}  # fmt: skip
        with client.stream("POST", "/api/generate", json=body) as stream:
            lines = stream.iter_lines()
            first = next(lines)
            assert gemma_server.metric("slm_runtime_requests_in_flight") == 1, "still generating"
            proc.send_signal(signal.SIGTERM)
            rest = list(lines)
        parts = [json.loads(line) for line in [first, *rest] if line]
        assert parts[-1]["done"] is True
        assert len(parts) > 20, "the stream went on after SIGTERM"
        # uvicorn re-raises the signal once it has drained, so the exit status is SIGTERM's.
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in (tmp_path / "gateway.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()


def test_a_held_request_whose_client_left_gives_its_place_back() -> None:
    settings = Settings(hold_queue=1, hold_timeout=60)
    with running_gateway(settings) as gw:
        gw.models(localmodel("slow", status={"phase": "Deploying"}))
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{gw.url}/api/generate", json={"model": "slow", "prompt": "x"}, timeout=1)
        wait_until(
            lambda: gw.metric("slm_gateway_requests_held", localmodel="slow") == 0,
            10,
            "the held place given back",
        )
        assert gw.metric("slm_gateway_requests_total", localmodel="slow", code="499") == 1


def test_a_namespace_token_closes_the_models_there_that_have_none_of_their_own(
    gemma_server: Server,
) -> None:
    team = hashlib.sha256(b"team-token-value").digest()

    async def digest(namespace: str, name: str) -> bytes | None:
        if name != "team-token":
            return None
        # "team" has the Secret, "blank" has it without a token (which opens nothing).
        return {"team": team, "blank": b""}.get(namespace)

    settings = Settings(namespace_token_secret="team-token")
    with running_gateway(settings, token_digest=digest) as gw:
        gw.models(
            localmodel("gemma", "team"), localmodel("open", "other"), localmodel("shut", "blank")
        )
        gw.slices(
            *endpoints("gemma", gemma_server, namespace="team"),
            *endpoints("open", gemma_server, namespace="other"),
            *endpoints("shut", gemma_server, namespace="blank"),
        )
        assert [m.id for m in gw.openai().models.list()] == ["open"]
        assert sorted(m.id for m in gw.openai(api_key="team-token-value").models.list()) == [
            "gemma",
            "open",
        ]
        with pytest.raises(openai.AuthenticationError):
            gw.openai(api_key="any").completions.create(model="shut", prompt="Hi", max_tokens=1)
        with pytest.raises(openai.AuthenticationError):
            gw.openai().completions.create(model="gemma", prompt="Hi", max_tokens=1)
        reply = gw.openai(api_key="team-token-value").completions.create(
            model="gemma", prompt="Hi", max_tokens=1
        )
        assert reply.choices


def test_a_token_secret_that_cannot_be_read_is_a_503_not_a_401() -> None:
    async def unreadable(namespace: str, name: str) -> bytes | None:
        raise SecretUnavailableError(f"cannot read Secret {namespace}/{name}: HTTP 500")

    with running_gateway(token_digest=unreadable) as gw:
        gw.models(localmodel("smollm2", serving={"authSecret": "smollm2-token"}))
        answer = httpx.post(
            f"{gw.url}/v1/chat/completions",
            json={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": "Bearer anything"},
            timeout=10,
        )
        assert answer.status_code == 503
        assert "cannot be checked right now" in answer.json()["error"]["message"]
