"""The Ollama API, driven by the real `ollama` client against the real server and models."""

from __future__ import annotations

import json
import math

import httpx
import ollama
import pytest

from tests.conftest import GEMMA_TEMPLATE
from tests.runtime.conftest import Server

pytestmark = pytest.mark.runtime

GREEDY = {"temperature": 0, "num_predict": 12}


def test_root_says_ollama_is_running(gemma_server: Server) -> None:
    response = httpx.get(gemma_server.url + "/")
    assert response.status_code == 200
    assert response.text == "Ollama is running"


def test_generate_non_streaming(gemma_server: Server) -> None:
    client = ollama.Client(host=gemma_server.url)
    result = client.generate(model="gemma", prompt="Name a colour.", options=GREEDY)
    assert result.done is True
    assert result.done_reason in ("stop", "length")
    assert result.response.strip()
    assert 0 < (result.eval_count or 0) <= 12
    assert (result.prompt_eval_count or 0) > 5


def test_generate_streams_ndjson_by_default(gemma_server: Server) -> None:
    client = ollama.Client(host=gemma_server.url)
    parts = list(
        client.generate(model="gemma", prompt="Count: one, two,", stream=True, options=GREEDY)
    )
    assert len(parts) >= 2
    assert all(not p.done for p in parts[:-1])
    assert parts[-1].done is True
    assert 0 < (parts[-1].eval_count or 0) <= 12
    text = "".join(p.response for p in parts)
    assert text.strip()


def test_chat_streaming_and_not_agree_at_temperature_zero(gemma_server: Server) -> None:
    client = ollama.Client(host=gemma_server.url)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    whole = client.chat(model="gemma", messages=messages, options=GREEDY)
    streamed = list(client.chat(model="gemma", messages=messages, options=GREEDY, stream=True))
    assert whole.message.role == "assistant"
    assert whole.message.content.strip()
    assert "".join(p.message.content or "" for p in streamed) == whole.message.content
    assert streamed[-1].done is True


def test_options_override_configured_parameters(gemma_server: Server) -> None:
    client = ollama.Client(host=gemma_server.url)
    short = client.generate(model="gemma", prompt="Tell me a story.", options={"num_predict": 3})
    assert short.eval_count == 3
    assert short.done_reason == "length"
    seeded = [
        client.generate(
            model="gemma",
            prompt="Tell me a story.",
            options={"seed": 42, "temperature": 1.0, "num_predict": 10},
        ).response
        for _ in range(2)
    ]
    assert seeded[0] == seeded[1]


def test_num_predict_zero_generates_nothing(gemma_server: Server) -> None:
    client = ollama.Client(host=gemma_server.url)
    generated = client.generate(
        model="gemma", prompt="Tell me a story.", options={"num_predict": 0}
    )
    assert generated.response == ""
    assert generated.eval_count == 0
    assert generated.done_reason == "length"
    assert (generated.prompt_eval_count or 0) > 3
    streamed = list(
        client.chat(
            model="gemma",
            messages=[{"role": "user", "content": "Tell me a story."}],
            options={"num_predict": 0},
            stream=True,
        )
    )
    assert [p.message.content for p in streamed] == [""]
    assert streamed[-1].done is True
    assert streamed[-1].eval_count == 0


def test_num_ctx_narrows_the_window_and_num_thread_may_restate_the_loaded_one(
    gemma_server: Server,
) -> None:
    client = ollama.Client(host=gemma_server.url)
    # The server was loaded with contextLength 1024 and numThread 2.
    result = client.generate(
        model="gemma",
        prompt="Tell me a very long story about a cat.",
        options={"num_ctx": 128, "num_predict": -1, "temperature": 0, "num_thread": 2},
    )
    assert (result.prompt_eval_count or 0) + (result.eval_count or 0) <= 128
    with pytest.raises(ollama.ResponseError, match="context window is 128"):
        client.generate(model="gemma", prompt="word " * 200, options={"num_ctx": 128})


def test_configured_system_applies_only_without_a_system_message(gemma_server: Server) -> None:
    client = ollama.Client(host=gemma_server.url)
    question = {"role": "user", "content": "Hi"}
    with_default = client.chat(model="gemma", messages=[question], options=GREEDY)
    with_own = client.chat(
        model="gemma",
        messages=[{"role": "system", "content": "Be kind."}, question],
        options=GREEDY,
    )
    # The configured SYSTEM is 12 words long; "Be kind." is 3 tokens.
    assert (with_default.prompt_eval_count or 0) > (with_own.prompt_eval_count or 0) + 5


def test_format_json_constrains_output(gemma_server: Server) -> None:
    client = ollama.Client(host=gemma_server.url)
    result = client.generate(
        model="gemma",
        prompt="Describe a cat as a JSON object.",
        format="json",
        options={"temperature": 0, "num_predict": 24},
    )
    text = result.response.lstrip()
    assert text.startswith(("{", "["))


def test_embed_and_legacy_embeddings(gemma_server: Server) -> None:
    client = ollama.Client(host=gemma_server.url)
    result = client.embed(model="gemma", input=["a cat", "quantum chromodynamics"])
    assert len(result.embeddings) == 2
    first, second = result.embeddings
    assert len(first) == len(second) > 100
    assert math.isclose(math.sqrt(sum(x * x for x in first)), 1.0, rel_tol=1e-3)
    assert first != second
    legacy = client.embeddings(model="gemma", prompt="a cat")
    assert len(legacy.embedding) == len(first)
    short = client.embed(model="gemma", input="a cat", dimensions=8).embeddings[0]
    assert len(short) == 8
    assert math.isclose(math.sqrt(sum(x * x for x in short)), 1.0, rel_tol=1e-3)


def test_embed_truncates_a_long_input_unless_told_not_to(gemma_server: Server) -> None:
    """As Ollama: with ``truncate`` (the default) an input longer than the context (the loaded
    one, or ``num_ctx``) is cut to it; with ``truncate: false`` it is a 400."""
    client = ollama.Client(host=gemma_server.url)
    window = {"num_ctx": 128}
    long, longer, short = "word " * 200, "word " * 300, "word " * 50
    cut = client.embed(model="gemma", input=[long, longer], options=window)
    assert cut.prompt_eval_count == 2 * 128
    # Both are cut to the same first 128 tokens.
    assert cut.embeddings[0] == cut.embeddings[1]
    assert cut.embeddings[0] != client.embed(model="gemma", input=short).embeddings[0]
    explicit = client.embed(model="gemma", input=long, options=window, truncate=True)
    assert explicit.embeddings[0] == cut.embeddings[0]
    loaded = client.embed(model="gemma", input="word " * 1500)
    assert loaded.prompt_eval_count == 1024
    with pytest.raises(ollama.ResponseError) as refused:
        client.embed(model="gemma", input=["a cat", long], options=window, truncate=False)
    assert refused.value.status_code == 400
    raw = httpx.post(
        gemma_server.url + "/api/embed",
        json={"model": "gemma", "input": long, "options": window, "truncate": False},
        timeout=60,
    )
    assert raw.status_code == 400
    assert raw.json() == {
        "error": "the input length exceeds the context length: an input is 202 tokens but the "
        "context window is 128"
    }


def test_tags_show_ps_version(gemma_server: Server) -> None:
    client = ollama.Client(host=gemma_server.url)
    tags = client.list()
    assert [m.model for m in tags.models] == ["gemma:latest"]
    assert tags.models[0].details is not None
    assert tags.models[0].details.family == "gemma3"
    assert tags.models[0].details.quantization_level == "Q4_K_M"
    show = client.show("gemma")
    assert show.template == GEMMA_TEMPLATE
    raw_show = httpx.post(gemma_server.url + "/api/show", json={"model": "gemma"}).json()
    assert raw_show["system"].startswith("You are a terse assistant")
    assert show.parameters is not None
    assert "temperature" in show.parameters
    assert "num_ctx" in show.parameters
    assert show.modelfile is not None
    assert "TEMPLATE" in show.modelfile
    ps = httpx.get(gemma_server.url + "/api/ps").json()
    assert ps["models"][0]["device"] == "cpu"
    assert ps["models"][0]["size"] > 100_000_000
    assert ps["models"][0]["context_length"] == 1024
    version = httpx.get(gemma_server.url + "/api/version").json()
    assert version["version"]


def test_keep_alive_and_empty_prompt_load_the_model(gemma_server: Server) -> None:
    client = ollama.Client(host=gemma_server.url)
    result = client.generate(model="gemma", prompt="", keep_alive="5m")
    assert result.done is True
    assert result.done_reason == "load"


@pytest.mark.parametrize(
    ("method", "route"),
    [
        ("POST", "/api/pull"),
        ("POST", "/api/create"),
        ("POST", "/api/copy"),
        ("POST", "/api/push"),
        ("DELETE", "/api/delete"),
        ("POST", "/api/blobs/sha256:" + "0" * 64),
    ],
)
def test_model_management_is_left_to_the_localmodel(
    gemma_server: Server, method: str, route: str
) -> None:
    # 403, not a 5xx: clients retry a 5xx as transient, and this refusal is permanent.
    response = httpx.request(method, gemma_server.url + route, json={"model": "other"})
    assert response.status_code == 403
    body = response.json()
    assert set(body) == {"error"}
    assert 'managed by the LocalModel "gemma"' in body["error"]
    assert "spec" in body["error"]


def test_the_ollama_client_sees_model_management_refused(gemma_server: Server) -> None:
    client = ollama.Client(host=gemma_server.url)
    for call in (
        lambda: client.pull("gemma"),
        lambda: client.delete("gemma"),
        lambda: client.copy("gemma", "other"),
    ):
        with pytest.raises(ollama.ResponseError) as info:
            call()
        assert info.value.status_code == 403
        assert "LocalModel" in info.value.error
    assert httpx.head(gemma_server.url + "/api/blobs/sha256:" + "0" * 64).status_code == 403


def test_onnx_chat_with_its_own_template(onnx_server: Server) -> None:
    client = ollama.Client(host=onnx_server.url)
    whole = client.chat(model="tiny", messages=[{"role": "user", "content": "hello"}])
    assert whole.done is True
    assert whole.eval_count == 8
    parts = list(
        client.generate(model="tiny", prompt="hello", stream=True, options={"num_predict": 5})
    )
    assert parts[-1].done is True
    assert parts[-1].eval_count == 5
    ps = httpx.get(onnx_server.url + "/api/ps").json()
    assert ps["models"][0]["device"] == "cpu"


def test_format_json_schema_gives_parseable_output(gemma_server: Server) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    result = ollama.Client(host=gemma_server.url).generate(
        model="gemma",
        prompt="Describe a cat as a JSON object.",
        format=schema,
        options={"temperature": 0, "num_predict": 60},
    )
    assert result.done_reason == "stop"
    data = json.loads(result.response)
    assert isinstance(data["name"], str)
    assert isinstance(data["age"], int)
