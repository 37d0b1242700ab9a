"""The OpenAI API, driven by the real `openai` client against the real server and models."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from tests.runtime.conftest import Server, gemma_config

pytestmark = pytest.mark.runtime


def _client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_chat_completion_with_usage(gemma_server: Server) -> None:
    result = _client(gemma_server).chat.completions.create(
        model="gemma",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
    )
    choice = result.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert result.usage is not None
    assert 0 < result.usage.completion_tokens <= 8
    assert result.usage.prompt_tokens > 3
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens


def test_chat_streaming_ends_with_usage_and_done(gemma_server: Server) -> None:
    client = _client(gemma_server)
    stream = client.chat.completions.create(
        model="gemma",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert reasons[-1] in ("stop", "length")
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens <= 8
    whole = client.chat.completions.create(
        model="gemma",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
    )
    assert text == whole.choices[0].message.content
    raw = httpx.post(
        gemma_server.url + "/v1/chat/completions",
        json={
            "model": "gemma",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "max_tokens": 3,
        },
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.rstrip().endswith("data: [DONE]")


def test_completions_max_tokens_and_stop(gemma_server: Server) -> None:
    client = _client(gemma_server)
    first = client.completions.create(
        model="gemma", prompt="The days of the week are Monday,", max_tokens=12, temperature=0
    )
    assert first.choices[0].finish_reason == "length"
    assert first.usage is not None
    assert first.usage.completion_tokens == 12
    text = first.choices[0].text
    words = [w.strip(",. ") for w in text.split() if len(w.strip(",. ")) > 2]
    assert words, text
    stop_word = words[0]
    stopped = client.completions.create(
        model="gemma",
        prompt="The days of the week are Monday,",
        max_tokens=12,
        temperature=0,
        stop=[stop_word],
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == text[: text.index(stop_word)]
    streamed = client.completions.create(
        model="gemma",
        prompt="The days of the week are Monday,",
        max_tokens=12,
        temperature=0,
        stream=True,
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == text


def test_an_empty_stop_list_keeps_the_configured_stop(
    gemma_gguf: Path, gemma_server: Server, server_factory: Callable[..., Server]
) -> None:
    """``stop: []`` (as some clients send by default) gives no sequences of its own, so the
    LocalModel's ``parameters.stop`` still ends the answer; sixteen sequences are accepted."""
    prompt = {"model": "gemma", "prompt": "The days of the week are Monday,", "max_tokens": 12}
    free = _client(gemma_server).completions.create(**prompt, temperature=0)
    text = free.choices[0].text
    words = [w.strip(",. ") for w in text.split() if len(w.strip(",. ")) > 2]
    assert words, text
    parameters = {"contextLength": 1024, "numThread": 2, "temperature": 0, "stop": [words[0]]}
    configured = _client(server_factory(gemma_config(gemma_gguf, parameters=parameters)))
    for stop in (None, []):
        stopped = configured.completions.create(**prompt, stop=stop)
        assert stopped.choices[0].finish_reason == "stop"
        assert stopped.choices[0].text == text[: text.index(words[0])]
    many = configured.completions.create(**prompt, stop=[f"<stop {n}>" for n in range(16)])
    assert many.choices[0].text == text


def test_seed_makes_sampling_reproducible(gemma_server: Server) -> None:
    client = _client(gemma_server)
    texts = {
        client.completions.create(
            model="gemma",
            prompt="Once upon a time",
            max_tokens=10,
            temperature=1.0,
            top_p=0.95,
            seed=7,
        )
        .choices[0]
        .text
        for _ in range(2)
    }
    assert len(texts) == 1


def test_response_format_json_object(gemma_server: Server) -> None:
    result = _client(gemma_server).chat.completions.create(
        model="gemma",
        messages=[{"role": "user", "content": "Give me a JSON object describing a dog."}],
        response_format={"type": "json_object"},
        max_tokens=24,
        temperature=0,
    )
    content = result.choices[0].message.content or ""
    assert content.lstrip().startswith(("{", "["))


def test_a_grammar_constrains_chat_and_completions_as_llama_cpps_server_does(
    gemma_server: Server,
) -> None:
    """The ``grammar`` extension (llama.cpp's server field) holds even sampled output to it."""
    client = _client(gemma_server)
    grammar = 'root ::= ("yes" | "no") " because " [a-z ]{3,12}'
    for seed in range(3):
        chat = client.chat.completions.create(
            model="gemma",
            messages=[{"role": "user", "content": "Is the sky blue?"}],
            max_tokens=32,
            temperature=1.0,
            seed=seed,
            extra_body={"grammar": grammar},
        )
        completion = client.completions.create(
            model="gemma",
            prompt="Is the sky blue? Answer:",
            max_tokens=32,
            temperature=1.0,
            seed=seed,
            extra_body={"grammar": grammar},
        )
        for text in (chat.choices[0].message.content or "", completion.choices[0].text):
            assert re.fullmatch(r"(yes|no) because [a-z ]{3,12}", text), text


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"grammar": "root ::= (unclosed"}, "not valid GBNF"),
        ({"grammar": 'root ::= "a"', "response_format": {"type": "json_object"}}, "grammar and"),
    ],
)
def test_a_bad_grammar_is_a_400(gemma_server: Server, extra: dict[str, object], says: str) -> None:
    answer = httpx.post(
        gemma_server.url + "/v1/chat/completions",
        json={"model": "gemma", "messages": [{"role": "user", "content": "hi"}], **extra},
        timeout=60,
    )
    assert answer.status_code == 400, answer.text
    assert says in answer.json()["error"]["message"]


def test_embeddings_float_and_base64(gemma_server: Server) -> None:
    client = _client(gemma_server)
    # The client asks for base64 by default and decodes it.
    default = client.embeddings.create(model="gemma", input=["a cat", "a dog"])
    as_float = client.embeddings.create(model="gemma", input="a cat", encoding_format="float")
    assert len(default.data) == 2
    assert default.data[1].index == 1
    assert default.data[0].embedding == pytest.approx(as_float.data[0].embedding, rel=1e-5)
    assert default.usage.prompt_tokens > 2


def test_embeddings_are_unit_vectors_with_dimensions_as_ollama_returns_them(
    gemma_server: Server,
) -> None:
    client = _client(gemma_server)
    full = client.embeddings.create(model="gemma", input="a cat").data[0].embedding
    short = client.embeddings.create(model="gemma", input="a cat", dimensions=8).data[0].embedding
    ollama_short = httpx.post(
        gemma_server.url + "/api/embed",
        json={"model": "gemma", "input": "a cat", "dimensions": 8},
        timeout=60,
    ).json()["embeddings"][0]
    assert len(short) == 8
    assert math.isclose(math.sqrt(sum(x * x for x in short)), 1.0, rel_tol=1e-3)
    assert math.isclose(math.sqrt(sum(x * x for x in full)), 1.0, rel_tol=1e-3)
    assert short == pytest.approx(ollama_short, rel=1e-5)


def test_models(gemma_server: Server) -> None:
    client = _client(gemma_server)
    assert [m.id for m in client.models.list()] == ["gemma"]
    assert client.models.retrieve("gemma").owned_by == "slm-operator"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("llama")


def test_deleting_the_model_is_refused_as_managed_by_the_localmodel(gemma_server: Server) -> None:
    with pytest.raises(openai.PermissionDeniedError) as info:
        _client(gemma_server).models.delete("gemma")
    assert info.value.status_code == 403
    assert 'managed by the LocalModel "gemma"' in info.value.message
    assert _client(gemma_server).models.retrieve("gemma").id == "gemma"


def test_onnx_chat_streaming(onnx_server: Server) -> None:
    client = _client(onnx_server)
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    whole = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=4
    )
    assert whole.usage is not None
    assert whole.usage.completion_tokens == 4
    assert whole.choices[0].finish_reason == "length"
