"""Serving behaviour: auth, overload, disconnects, SIGTERM drain, fallback, batching, metrics."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import ollama
import openai
import pytest
import yaml
from slm_runtime.config import CONFIG_PATH, Device
from slm_runtime.engines import openvino
from slm_runtime.engines.base import (
    DeviceUnavailableError,
    Event,
    Finished,
    Generation,
    SamplingParams,
)
from slm_runtime.engines.onnx import OnnxGenaiEngine

from tests.conftest import GEMMA_TEMPLATE
from tests.runtime.conftest import (
    TINY_ONNX,
    Server,
    free_port,
    gemma_config,
    onnx_config,
    wait_until,
)

pytestmark = pytest.mark.runtime

Factory = Callable[..., Server]
CHAT = {"model": "gemma", "messages": [{"role": "user", "content": "Write a long story."}]}
# Greedy continuation of prose: the base model does not stop on its own for hundreds of tokens.
PROSE = {"model": "gemma", "prompt": "The history of the printing press begins", "raw": True}


def prose(num_predict: int, **extra: object) -> dict[str, object]:
    """A long-running /api/generate body."""
    return {**PROSE, "options": {"temperature": 0, "num_predict": num_predict}, **extra}


def test_bearer_token_guards_every_api_route(gemma_gguf: Path, server_factory: Factory) -> None:
    server = server_factory(gemma_config(gemma_gguf), env={"SLM_API_TOKEN": "s3cret-token"})
    with server.client() as client:
        for path in ("/healthz", "/readyz", "/metrics", "/"):
            assert client.get(path).status_code == 200, path
        denied = client.get("/api/tags")
        assert denied.status_code == 401
        assert "API token" in denied.json()["error"]
        wrong = client.get("/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.json()["error"]["code"] == "invalid_api_key"
        assert client.post("/api/chat", json=CHAT).status_code == 401
    good = openai.OpenAI(base_url=server.url + "/v1", api_key="s3cret-token", max_retries=0)
    assert [m.id for m in good.models.list()] == ["gemma"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0).models.list()
    oll = ollama.Client(host=server.url, headers={"Authorization": "Bearer s3cret-token"})
    assert oll.list().models
    assert "s3cret-token" not in server.logs()


def _open_stream(
    server: Server, path: str, body: dict[str, object]
) -> tuple[httpx.Client, httpx.Response]:
    client = httpx.Client(base_url=server.url, timeout=60)
    response = client.send(client.build_request("POST", path, json=body), stream=True)
    assert response.status_code == 200
    return client, response


def test_overload_gets_429_or_503_with_retry_after(
    gemma_gguf: Path, server_factory: Factory
) -> None:
    server = server_factory(
        gemma_config(
            gemma_gguf,
            parallel=1,
            limits={"maxQueue": 0},
            parameters={"contextLength": 1024},
        )
    )
    client, busy = _open_stream(server, "/api/generate", prose(400))
    # Keep the line iterator: dropping it would close the connection and free the slot.
    lines = busy.iter_lines()
    try:
        next(lines)
        # Refusals are immediate; a timeout here means the request was admitted.
        with httpx.Client(base_url=server.url, timeout=10) as other:
            try:
                openai_reply = other.post("/v1/chat/completions", json=CHAT)
                ollama_reply = other.post("/api/chat", json=CHAT)
            except httpx.TimeoutException:
                pytest.fail(f"a request was admitted past a full queue:\n{server.logs()[-4000:]}")
        assert openai_reply.status_code == 429
        assert openai_reply.headers["retry-after"] == "1"
        assert openai_reply.json()["error"]["type"] == "rate_limit_error"
        assert ollama_reply.status_code == 503
        assert ollama_reply.headers["retry-after"] == "1"
        assert "busy" in ollama_reply.json()["error"]
    finally:
        busy.close()
        client.close()
    wait_until(lambda: server.metric("slm_runtime_requests_in_flight") == 0, 30, "the slot to free")
    assert (
        httpx.post(
            server.url + "/api/chat",
            json={**CHAT, "stream": False, "options": {"num_predict": 2}},
            timeout=60,
        ).status_code
        == 200
    )


def test_client_disconnect_stops_generation(gemma_gguf: Path, server_factory: Factory) -> None:
    server = server_factory(
        gemma_config(gemma_gguf, parameters={"contextLength": 1024, "numPredict": -1})
    )
    # Streaming: read one chunk, hang up.
    client, stream = _open_stream(server, "/api/generate", prose(-1))
    next(stream.iter_lines())
    stream.close()
    client.close()
    wait_until(
        lambda: server.metric("slm_runtime_requests_in_flight") == 0,
        30,
        "the streaming generation to stop",
    )
    after_stream = server.metric("slm_runtime_generated_tokens_total")
    assert after_stream < 200
    # Non-streaming: send the request on a raw socket, hang up while it generates.
    host, port = server.url.removeprefix("http://").split(":")
    body = json.dumps(prose(-1, stream=False)).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        wait_until(
            lambda: server.metric("slm_runtime_requests_in_flight") == 1, 30, "the request to start"
        )
        start = server.metric("slm_runtime_generated_tokens_total")
    wait_until(
        lambda: server.metric("slm_runtime_requests_in_flight") == 0,
        30,
        "the non-streaming generation to stop",
    )
    assert server.metric("slm_runtime_generated_tokens_total") - start < 200


def test_sigterm_drains_in_flight_requests(gemma_gguf: Path, server_factory: Factory) -> None:
    # Draining ends as soon as the stream does; the generous timeout only keeps a loaded
    # machine from cutting the stream.
    server = server_factory(gemma_config(gemma_gguf, limits={"drainTimeoutSeconds": 300}))
    client, stream = _open_stream(
        server,
        "/v1/completions",
        {"model": "gemma", "prompt": "Once upon a time", "max_tokens": 24, "stream": True},
    )
    lines = stream.iter_lines()
    first = next(lines)
    assert first.startswith("data: ")
    server.proc.send_signal(signal.SIGTERM)
    rest = list(lines)
    client.close()
    payloads = [
        json.loads(x.removeprefix("data: ")) for x in [first, *rest] if x.startswith("data: {")
    ]
    assert [x for x in rest if x][-1] == "data: [DONE]"
    assert payloads[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    # uvicorn re-raises the signal once it has drained, so the exit status is SIGTERM's.
    assert server.proc.wait(timeout=30) in (0, -signal.SIGTERM)
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/healthz", timeout=2)
    assert "draining" in server.logs()


def test_device_fallback_lands_on_cpu_with_engine_errors_logged(
    gemma_gguf: Path, server_factory: Factory
) -> None:
    gguf = server_factory(gemma_config(gemma_gguf, devices=["npu", "gpu", "cpu"]))
    ready = httpx.get(gguf.url + "/readyz").json()
    assert ready["device"] == "cpu"
    assert ready["fallback"]["npu"] == "llama.cpp has no NPU backend"
    assert "without a GPU backend" in ready["fallback"]["gpu"]
    assert "llama.cpp has no NPU backend" in gguf.logs()

    onnx = server_factory(onnx_config(devices=["npu", "gpu", "cpu"]))
    ready = httpx.get(onnx.url + "/readyz").json()
    assert ready["device"] == "cpu"
    no_npu = "OpenVINO finds no NPU device on this node (it finds: CPU"
    assert ready["fallback"]["npu"].startswith(no_npu)
    assert "Cuda interface not available" in ready["fallback"]["gpu"]
    logs = onnx.logs()
    assert no_npu in logs
    assert "Cuda interface not available" in logs
    assert httpx.get(onnx.url + "/api/ps").json()["models"][0]["device"] == "cpu"
    assert 'device="cpu",engine="onnxruntime-genai"' in httpx.get(onnx.url + "/metrics").text


def test_the_onnx_engine_runs_on_the_openvino_execution_provider() -> None:
    """The npu device's path (ONNX Runtime's OpenVINO provider), with OpenVINO's CPU device
    standing in for the NPU this machine lacks (a config may not name it: the runtime reports
    this engine's device as npu)."""
    assert "CPU" in (openvino.available_devices() or [])
    engine = OnnxGenaiEngine(
        str(TINY_ONNX), Device.NPU, context_length=None, threads=1, openvino_device="CPU"
    )

    async def run() -> list[Event]:
        params = SamplingParams(max_tokens=5, temperature=0.0)
        generation = engine.generate("hello", params, asyncio.get_running_loop())
        return [event async for event in generation.events()]

    try:
        events = asyncio.run(run())
    finally:
        engine.close()
    assert engine.device is Device.NPU
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert finished.completion_tokens > 0
    with pytest.raises(DeviceUnavailableError, match=r"OpenVINO finds no NPU\.3 device"):
        OnnxGenaiEngine(
            str(TINY_ONNX), Device.NPU, context_length=None, threads=1, openvino_device="NPU.3"
        )


def test_onnx_generates_with_num_thread_threads(server_factory: Factory) -> None:
    def threads(num_thread: int) -> int:
        server = server_factory(onnx_config(parameters={"numThread": num_thread, "numPredict": 4}))
        reply = httpx.post(server.url + "/api/generate", json={"model": "tiny", "prompt": "hi"})
        assert reply.status_code == 200, reply.text
        return len(list(Path(f"/proc/{server.proc.pid}/task").iterdir()))

    # ONNX Runtime's intra-op pool: numThread - 1 threads beside the caller's.
    assert threads(4) - threads(1) >= 3


def serve_once(config: Path) -> subprocess.CompletedProcess[str]:
    """``slm_runtime.cli serve`` with ``config``, for a server that must exit on its own."""
    return subprocess.run(
        [sys.executable, "-m", "slm_runtime.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_no_usable_device_exits_with_the_reason(gemma_gguf: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {**gemma_config(gemma_gguf, devices=["npu"]), "port": free_port(), "host": "127.0.0.1"}
        )
    )
    done = serve_once(config)
    assert done.returncode != 0
    assert "no configured device could load the model" in done.stderr
    assert "llama.cpp has no NPU backend" in done.stderr


def test_an_onnx_variant_for_the_npu_alone_exits_with_the_engines_message(tmp_path: Path) -> None:
    """The operator gives an NPU-only variant no lower device (its GGUF sibling serves those
    tiers): with no NPU here, ONNX Runtime GenAI's OpenVINO provider says why and the server
    exits instead of serving the NPU build on a device it was not given."""
    from slm_operator.api import parse_localmodel
    from slm_operator.catalog import default_catalog
    from slm_operator.children import runtime_config
    from slm_operator.place import place
    from slm_operator.summary import NodeInfo

    lm = parse_localmodel(
        {
            "metadata": {"name": "tiny"},
            "spec": {
                "model": {
                    "variants": [
                        {"name": "npu", "tiers": ["npu"], "source": f"file://{TINY_ONNX}",
                         "format": "onnx"},
                        {"name": "cpu", "tiers": ["cpu"], "source": "file:///m/tiny.gguf"},
                    ]
                },
                "hardware": {"preferred": "npu", "fallback": ["cpu"]},
            },
        }
    )  # fmt: skip
    npu_node = NodeInfo(name="n", allocatable={"cpu": 4.0, "memory": 8e9, "intel.com/npu": 1.0})
    placement = place(lm.spec, [npu_node], default_catalog())
    assert placement.device is Device.NPU
    rendered = runtime_config(lm.serving(placement.variant), placement)
    assert rendered.devices == [Device.NPU]
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                **onnx_config(devices=["npu"], openvinoDevice=rendered.openvino_device),
                "port": free_port(),
                "host": "127.0.0.1",
            }
        )
    )
    done = serve_once(config)
    assert done.returncode != 0
    last = json.loads(done.stderr.strip().splitlines()[-1])["message"]
    assert last.startswith(
        "the model could not be loaded: no configured device could load the model (npu: "
        "OpenVINO finds no NPU device"
    ), last
    assert "cpu:" not in last  # only the device the variant was given


def test_environment_variables_alone_configure_the_server(gemma_gguf: Path, tmp_path: Path) -> None:
    assert not Path(CONFIG_PATH).exists(), "this test needs no file at the default path"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLM_")}
    env.update(
        SLM_MODELNAME="gemma",
        SLM_FORMAT="gguf",
        SLM_MODELPATH=str(gemma_gguf),
        SLM_TEMPLATE=GEMMA_TEMPLATE,
        SLM_HOST="127.0.0.1",
        SLM_PORT=str(port),
        SLM_PARAMETERS__CONTEXTLENGTH="512",
        SLM_PARAMETERS__NUMTHREAD="2",
        SLM_PARAMETERS__STOP='["<end_of_turn>", "Paris"]',
    )
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "slm_runtime.cli", "serve"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = Server(f"http://127.0.0.1:{port}", proc, log_path)
    try:

        def ready() -> bool:
            assert proc.poll() is None, server.logs()
            try:
                return httpx.get(server.url + "/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, 90, "the server configured by its environment to become ready")
        show = httpx.post(server.url + "/api/show", json={"model": "gemma"}, timeout=30).json()
        assert ["stop", '"Paris"'] in [line.split() for line in show["parameters"].splitlines()]
        assert show["model_info"]["context_length"] == 512
    finally:
        server.stop(signal.SIGKILL)


def test_parallel_sequences_are_decoded_together(gemma_gguf: Path, server_factory: Factory) -> None:
    server = server_factory(
        gemma_config(gemma_gguf, parallel=2, parameters={"contextLength": 1024})
    )
    client_a, stream_a = _open_stream(server, "/api/generate", prose(120))
    lines_a = stream_a.iter_lines()
    next(lines_a)
    # B starts while A is generating, and B's first token arrives before A is done.
    with server.client() as client_b:
        reply = client_b.post("/api/generate", json=prose(4, stream=False))
    assert reply.status_code == 200
    assert reply.json()["eval_count"] == 4
    assert server.metric("slm_runtime_requests_in_flight") == 1, "A must still be generating"
    rest = [json.loads(x) for x in lines_a if x]
    assert rest[-1]["done"] is True
    assert rest[-1]["eval_count"] == 120
    stream_a.close()
    client_a.close()


def test_metrics_are_clean_for_promtool(gemma_server: Server) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by hack/setup.d/30-runtime.sh"
    with gemma_server.client() as client:
        assert client.post("/api/chat", json={**CHAT, "stream": False}).status_code == 200
        assert (
            client.post("/api/generate", json={"model": "nope", "prompt": "x"}).status_code == 404
        )
        text = client.get("/metrics").text
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert 'slm_runtime_requests_total{code="200",route="/api/chat"}' in text
    assert 'slm_runtime_requests_total{code="404",route="/api/generate"}' in text
    assert 'slm_runtime_device_info{device="cpu",engine="llama.cpp"' in text
    assert gemma_server.metric("slm_runtime_generated_tokens_total") > 0
    assert gemma_server.metric("slm_runtime_prompt_tokens_total") > 0
    assert (
        gemma_server.metric("slm_runtime_time_to_first_token_seconds_count", 'route="/api/chat"')
        > 0
    )
    assert gemma_server.metric("slm_runtime_model_load_seconds") > 0
    assert "slm_runtime_requests_queued 0.0" in text
    assert "slm_runtime_request_duration_seconds_bucket" in text


def test_concurrent_clients_all_complete(gemma_server: Server) -> None:
    results: list[int] = []

    def one() -> None:
        reply = httpx.post(
            gemma_server.url + "/api/generate",
            json={
                "model": "gemma",
                "prompt": "Hello",
                "stream": False,
                "options": {"num_predict": 6},
            },
            timeout=120,
        )
        results.append(reply.status_code)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 6


@pytest.mark.parametrize("repeat_penalty", [1.0, 1.1], ids=["argmax", "sampler-chain"])
def test_a_shared_prompt_prefix_is_reused_and_changes_no_output(
    gemma_gguf: Path, server_factory: Factory, repeat_penalty: float
) -> None:
    parameters = {"contextLength": 1024, "temperature": 0, "repeatPenalty": repeat_penalty}
    config = gemma_config(gemma_gguf, parallel=1, parameters={**parameters, "numThread": 2})
    server = server_factory(config)
    first = "The history of the printing press begins"
    second = "The history of the printing press in Europe"
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")

    def complete(prompt: str, on: openai.OpenAI = client) -> tuple[str, int, int]:
        reply = on.completions.create(model="gemma", prompt=prompt, max_tokens=12)
        usage = reply.usage
        assert usage is not None
        assert usage.prompt_tokens_details is not None
        cached = usage.prompt_tokens_details.cached_tokens or 0
        return reply.choices[0].text, usage.prompt_tokens, cached

    text, prompt_tokens, cached = complete(first)
    assert cached == 0
    again, _, cached = complete(first)
    assert (again, cached) == (text, prompt_tokens - 1), "all but the last prompt token reused"
    continued, second_tokens, cached = complete(second)
    assert 0 < cached < second_tokens - 1, "only the shared prefix is reused"
    assert server.metric("slm_runtime_prompt_cached_tokens_total") == prompt_tokens - 1 + cached

    cold = server_factory(config)
    cold_client = openai.OpenAI(base_url=cold.url + "/v1", api_key="unused")
    assert complete(second, cold_client) == (continued, second_tokens, 0)


KV_USAGE = "slm_runtime_kv_cache_usage_ratio"


def test_model_server_protocol_gauges_follow_a_running_request(
    gemma_gguf: Path, server_factory: Factory
) -> None:
    """The gauges a Gateway API Inference Extension endpoint picker reads: requests waiting,
    requests running, and the share of the KV cache the running ones hold."""
    server = server_factory(
        gemma_config(gemma_gguf, parallel=2, parameters={"contextLength": 512, "numPredict": -1})
    )
    assert server.metric(KV_USAGE) == 0
    client, stream = _open_stream(server, "/api/generate", prose(-1))
    try:
        lines = stream.iter_lines()
        next(lines)
        assert server.metric("slm_runtime_requests_in_flight") == 1
        assert server.metric("slm_runtime_requests_queued") == 0
        first = server.metric(KV_USAGE)
        # The prompt and what was generated so far, in one of two 512-token sequences.
        assert 0 < first <= 0.5
        for _ in range(16):
            next(lines)
        wait_until(lambda: server.metric(KV_USAGE) > first, 30, "the running request to grow")
        assert server.metric(KV_USAGE) <= 0.5
    finally:
        stream.close()
        client.close()
    wait_until(lambda: server.metric("slm_runtime_requests_in_flight") == 0, 30, "the slot free")
    # The finished sequence's tokens stay cached for reuse, but no running request holds them.
    assert server.metric(KV_USAGE) == 0


def test_onnx_engine_counts_the_kv_its_running_generators_hold() -> None:
    """kv_tokens, read each time the generator thread updates its hold: positive while the
    generator runs, and zero once it has ended (reading it from the event loop instead would
    race the thread, which may finish a tiny model's answer before the loop looks)."""
    engine = OnnxGenaiEngine(str(TINY_ONNX), Device.CPU, context_length=None, threads=1)
    held: list[int] = []
    hold = engine._hold

    def observed_hold(generation: Generation, length: int | None) -> None:
        hold(generation, length)
        held.append(engine.kv_tokens())

    engine._hold = observed_hold  # type: ignore[method-assign]

    async def run() -> list[Event]:
        params = SamplingParams(max_tokens=400, temperature=0.0)
        generation = engine.generate("hello", params, asyncio.get_running_loop())
        return [event async for event in generation.events()]

    try:
        assert engine.kv_tokens() == 0
        events = asyncio.run(run())
        after = engine.kv_tokens()
    finally:
        engine.close()
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert max(held) > 0, "never saw the generator running"
    assert max(held) <= finished.prompt_tokens + finished.completion_tokens
    assert held[-1] == 0, "the generator's hold outlived it"
    assert after == 0


def test_a_few_shared_tokens_do_not_evict_another_prompts_cache(
    gemma_gguf: Path, server_factory: Factory
) -> None:
    """Two prompts that share only their first words, asked in turn on two slots: each keeps its
    own slot's cache (a slot is reused for a prompt only when they share at least half of it)."""
    parameters = {"contextLength": 512, "temperature": 0, "numThread": 2}
    server = server_factory(gemma_config(gemma_gguf, parallel=2, parameters=parameters))
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    prompts = [
        "Notes on rivers. " + " ".join(f"River {i} flows past town {i * 3}." for i in range(20)),
        "Notes on castles. " + " ".join(f"Castle {i} guards hill {i * 5}." for i in range(20)),
    ]
    cached = []
    for _ in range(2):
        for prompt in prompts:
            usage = client.completions.create(model="gemma", prompt=prompt, max_tokens=1).usage
            assert usage is not None
            assert usage.prompt_tokens_details is not None
            cached.append((usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens))
    first, second, again_first, again_second = cached
    assert first[1] == 0
    assert second[1] < 5, "the second prompt did not take the first one's slot"
    assert again_first[1] == again_first[0] - 1
    assert again_second[1] == again_second[0] - 1
