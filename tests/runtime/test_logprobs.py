"""Log probabilities from llama.cpp's logits, over the real `openai` and `ollama` clients.

The server samples greedily (temperature 0, no repeat penalty), so the chosen token is the most
likely one: its logprob must be the first of its top_logprobs. The installed `ollama` client's
types keep `token`, `logprob` and `top_logprobs` but drop `bytes`, so `bytes` is read over HTTP.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import ollama
import openai
import pytest
from slm_runtime.engines.llamacpp_sampling import top_ids

from tests.runtime.conftest import Server, gemma_config, start_server

pytestmark = pytest.mark.runtime

USER = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def greedy_server(gemma_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Gemma answering greedily: temperature 0 and no repeat penalty."""
    server = start_server(
        tmp_path_factory.mktemp("logprobs"),
        gemma_config(
            gemma_gguf,
            parameters={
                "contextLength": 1024,
                "numPredict": 12,
                "numThread": 2,
                "temperature": 0,
                "repeatPenalty": 1.0,
            },
        ),
    )
    yield server
    server.stop(signal.SIGKILL)


def _openai(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def _assert_greedy_item(token: str, logprob: float, top: list[tuple[str, float]], n: int) -> None:
    """One position of a greedy answer: a log probability, the top n most likely first, the
    chosen token the first of them with the same logprob."""
    assert logprob <= 0.0
    assert len(top) == n
    values = [value for _, value in top]
    assert values == sorted(values, reverse=True)
    assert all(value <= 0.0 for value in values)
    if n:
        assert top[0] == (token, logprob)


def _chat_items(content: Any) -> list[tuple[str, float, list[tuple[str, float]]]]:
    return [
        (item.token, item.logprob, [(t.token, t.logprob) for t in item.top_logprobs])
        for item in content
    ]


@pytest.mark.parametrize("n", [1, 5, 20])
@pytest.mark.parametrize("spread", [0.0, 0.5, 3.0, 30.0])
def test_top_ids_are_the_most_likely_in_argmax_order(n: int, spread: float) -> None:
    """The narrowed search gives what a stable sort of the whole vocabulary gives, for peaked
    logits, flat ones (no narrowing helps) and ties."""
    rng = np.random.default_rng(int(spread * 10) + n)
    logits = (rng.standard_normal(262_144) * spread).astype(np.float32)
    logits[[4000, 17, 99_000]] = logits.max() + 1.0  # a three-way tie at the top
    expected = np.argsort(-logits, kind="stable")[:n]
    assert top_ids(logits, n, float(logits.max())).tolist() == expected.tolist()


# --- OpenAI chat completions ---


def test_chat_logprobs_with_top_logprobs(greedy_server: Server) -> None:
    result = _openai(greedy_server).chat.completions.create(
        model="gemma", messages=USER, logprobs=True, top_logprobs=5, max_tokens=10
    )
    choice = result.choices[0]
    assert choice.logprobs is not None
    content = choice.logprobs.content
    assert content is not None
    assert result.usage is not None
    assert len(content) == result.usage.completion_tokens > 0
    assert "".join(item.token for item in content) == choice.message.content
    for item in content:
        _assert_greedy_item(
            item.token, item.logprob, [(t.token, t.logprob) for t in item.top_logprobs], 5
        )
        assert item.bytes == list(item.token.encode())
        for alternative in item.top_logprobs:
            assert alternative.bytes is not None
            assert bytes(alternative.bytes).decode("utf-8", "replace") == alternative.token


def test_chat_logprobs_without_top_logprobs(greedy_server: Server) -> None:
    result = _openai(greedy_server).chat.completions.create(
        model="gemma", messages=USER, logprobs=True, max_tokens=4
    )
    content = result.choices[0].logprobs.content
    assert content
    for item in content:
        assert item.logprob <= 0.0
        assert item.top_logprobs == []


def test_chat_without_logprobs_reports_none(greedy_server: Server) -> None:
    result = _openai(greedy_server).chat.completions.create(
        model="gemma", messages=USER, max_tokens=4
    )
    assert result.choices[0].logprobs is None


def test_streamed_chat_logprobs_equal_the_whole_answer(greedy_server: Server) -> None:
    client = _openai(greedy_server)
    whole = client.chat.completions.create(
        model="gemma", messages=USER, logprobs=True, top_logprobs=3, max_tokens=10
    )
    expected = _chat_items(whole.choices[0].logprobs.content)
    streamed: list[tuple[str, float, list[tuple[str, float]]]] = []
    text = ""
    for chunk in client.chat.completions.create(
        model="gemma",
        messages=USER,
        logprobs=True,
        top_logprobs=3,
        max_tokens=10,
        stream=True,
    ):
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        piece = choice.delta.content or ""
        text += piece
        if choice.logprobs is not None and choice.logprobs.content:
            items = _chat_items(choice.logprobs.content)
            # Each chunk carries the tokens of its own delta.
            assert "".join(token for token, _, _ in items) == piece
            streamed += items
    assert text == whole.choices[0].message.content
    assert streamed == expected


def test_a_prompt_cache_hit_changes_no_logprob(greedy_server: Server) -> None:
    client = _openai(greedy_server)
    messages = [{"role": "user", "content": "Write one sentence about rivers and the sea."}]

    def ask() -> Any:
        return client.chat.completions.create(
            model="gemma", messages=messages, logprobs=True, top_logprobs=4, max_tokens=10
        )

    first, second = ask(), ask()
    assert second.usage.prompt_tokens_details.cached_tokens > 0
    assert second.choices[0].message.content == first.choices[0].message.content
    assert _chat_items(second.choices[0].logprobs.content) == _chat_items(
        first.choices[0].logprobs.content
    )


def test_tokens_cut_by_a_stop_sequence_are_not_reported(greedy_server: Server) -> None:
    client = _openai(greedy_server)
    free = client.chat.completions.create(
        model="gemma", messages=USER, logprobs=True, max_tokens=10
    )
    tokens = [item.token for item in free.choices[0].logprobs.content]
    assert len(tokens) >= 4
    stop = tokens[2].strip() or tokens[3].strip()
    assert stop
    stopped = client.chat.completions.create(
        model="gemma", messages=USER, logprobs=True, max_tokens=10, stop=[stop]
    )
    content = stopped.choices[0].message.content or ""
    reported = [item.token for item in stopped.choices[0].logprobs.content]
    assert stopped.choices[0].finish_reason == "stop"
    assert stop not in content
    assert 0 < len(reported) < len(tokens)
    assert reported == tokens[: len(reported)]
    # Reported: the tokens whose text starts before the cut, not those after it.
    assert len("".join(reported[:-1])) < len(content) <= len("".join(reported))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"top_logprobs": 2}, "logprobs must be true"),
        ({"logprobs": False, "top_logprobs": 0}, "logprobs must be true"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ({"logprobs": 1}, "logprobs"),
        ({"logprobs": True, "top_logprobs": "3"}, "top_logprobs"),
    ],
)
def test_chat_logprobs_out_of_range_is_400(
    greedy_server: Server, body: dict[str, Any], message: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        _openai(greedy_server).chat.completions.create(
            model="gemma", messages=USER, max_tokens=2, extra_body=body
        )
    assert info.value.status_code == 400
    assert message in info.value.message


# --- OpenAI completions ---


def test_completion_logprobs(greedy_server: Server) -> None:
    result = _openai(greedy_server).completions.create(
        model="gemma", prompt="The capital of France is", logprobs=3, max_tokens=8
    )
    choice = result.choices[0]
    logprobs = choice.logprobs
    assert logprobs is not None
    tokens = logprobs.tokens or []
    assert result.usage is not None
    assert len(tokens) == result.usage.completion_tokens > 0
    assert "".join(tokens) == choice.text
    assert logprobs.text_offset == [len("".join(tokens[:i])) for i in range(len(tokens))]
    assert len(logprobs.token_logprobs or []) == len(logprobs.top_logprobs or []) == len(tokens)
    for token, logprob, top in zip(
        tokens, logprobs.token_logprobs or [], logprobs.top_logprobs or [], strict=True
    ):
        assert logprob is not None
        assert logprob <= 0.0
        values = list(top.values())
        assert 1 <= len(top) <= 3
        assert values == sorted(values, reverse=True)
        assert top[token] == logprob == values[0]


def test_streamed_completion_logprobs_equal_the_whole_answer(greedy_server: Server) -> None:
    client = _openai(greedy_server)
    prompt = "A list of fruits: apple,"
    whole = client.completions.create(model="gemma", prompt=prompt, logprobs=2, max_tokens=8)
    expected = whole.choices[0].logprobs
    assert expected is not None
    tokens: list[str] = []
    values: list[float | None] = []
    tops: list[dict[str, float]] = []
    offsets: list[int] = []
    for chunk in client.completions.create(
        model="gemma", prompt=prompt, logprobs=2, max_tokens=8, stream=True
    ):
        part = chunk.choices[0].logprobs
        if part is None:
            continue
        tokens += part.tokens or []
        values += part.token_logprobs or []
        tops += part.top_logprobs or []
        offsets += part.text_offset or []
    assert tokens == expected.tokens
    assert values == expected.token_logprobs
    assert tops == expected.top_logprobs
    assert offsets == expected.text_offset


def test_completion_logprobs_zero_reports_the_chosen_token(greedy_server: Server) -> None:
    result = _openai(greedy_server).completions.create(
        model="gemma", prompt="One, two,", logprobs=0, max_tokens=3
    )
    logprobs = result.choices[0].logprobs
    assert logprobs is not None
    for token, logprob, top in zip(
        logprobs.tokens or [],
        logprobs.token_logprobs or [],
        logprobs.top_logprobs or [],
        strict=True,
    ):
        assert top == {token: logprob}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"logprobs": 6}, "logprobs"),
        ({"logprobs": -1}, "logprobs"),
        ({"logprobs": True}, "logprobs"),
        ({"logprobs": 2, "echo": True}, "echo"),
    ],
)
def test_completion_logprobs_out_of_range_is_400(
    greedy_server: Server, body: dict[str, Any], message: str
) -> None:
    response = httpx.post(
        greedy_server.url + "/v1/completions",
        json={"model": "gemma", "prompt": "Hi", "max_tokens": 2, **body},
        timeout=60,
    )
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]


# --- Ollama ---


def _ollama_items(logprobs: Any) -> list[tuple[str, float, list[tuple[str, float]]]]:
    return [
        (item.token, item.logprob, [(t.token, t.logprob) for t in item.top_logprobs or []])
        for item in logprobs or []
    ]


def test_ollama_chat_logprobs_streamed_and_not(greedy_server: Server) -> None:
    client = ollama.Client(host=greedy_server.url)
    whole = client.chat(
        model="gemma", messages=USER, logprobs=True, top_logprobs=3, options={"num_predict": 10}
    )
    items = _ollama_items(whole.logprobs)
    assert len(items) == whole.eval_count
    assert "".join(token for token, _, _ in items) == whole.message.content
    for token, logprob, top in items:
        _assert_greedy_item(token, logprob, top, 3)
    streamed: list[tuple[str, float, list[tuple[str, float]]]] = []
    for part in client.chat(
        model="gemma",
        messages=USER,
        logprobs=True,
        top_logprobs=3,
        options={"num_predict": 10},
        stream=True,
    ):
        chunk = _ollama_items(part.logprobs)
        assert "".join(token for token, _, _ in chunk) == (part.message.content or "")
        streamed += chunk
    assert streamed == items


def test_ollama_generate_logprobs_streamed_and_not(greedy_server: Server) -> None:
    client = ollama.Client(host=greedy_server.url)
    prompt = "The days of the week are Monday,"
    whole = client.generate(
        model="gemma", prompt=prompt, logprobs=True, top_logprobs=2, options={"num_predict": 8}
    )
    items = _ollama_items(whole.logprobs)
    assert len(items) == whole.eval_count
    assert "".join(token for token, _, _ in items) == whole.response
    for token, logprob, top in items:
        _assert_greedy_item(token, logprob, top, 2)
    streamed: list[tuple[str, float, list[tuple[str, float]]]] = []
    for part in client.generate(
        model="gemma",
        prompt=prompt,
        logprobs=True,
        top_logprobs=2,
        options={"num_predict": 8},
        stream=True,
    ):
        streamed += _ollama_items(part.logprobs)
    assert streamed == items


def test_ollama_logprobs_wire_format(greedy_server: Server) -> None:
    """As Ollama's server writes them: a top-level `logprobs` list whose items carry `bytes`,
    and `top_logprobs` only when asked for."""
    with greedy_server.client() as http:
        body = {"model": "gemma", "messages": USER, "stream": False, "options": {"num_predict": 4}}
        plain = http.post("/api/chat", json=body).json()
        assert "logprobs" not in plain
        with_top = http.post("/api/chat", json={**body, "logprobs": True, "top_logprobs": 2}).json()
        assert "logprobs" not in with_top["message"]
        for item in with_top["logprobs"]:
            assert set(item) == {"token", "logprob", "bytes", "top_logprobs"}
            assert item["bytes"] == list(item["token"].encode())
            for alternative in item["top_logprobs"]:
                assert set(alternative) <= {"token", "logprob", "bytes"}
        bare = http.post("/api/chat", json={**body, "logprobs": True}).json()
        assert len(bare["logprobs"]) == bare["eval_count"] > 0
        for item in bare["logprobs"]:
            assert set(item) == {"token", "logprob", "bytes"}
        lines = http.post(
            "/api/generate",
            json={
                "model": "gemma",
                "prompt": "Hello",
                "logprobs": True,
                "options": {"num_predict": 4},
            },
        ).text.splitlines()
        streamed = [json.loads(line) for line in lines]
        assert streamed[-1]["done"] is True
        assert "logprobs" not in streamed[-1]
        reported = sum(len(line.get("logprobs", [])) for line in streamed)
        assert reported == streamed[-1]["eval_count"] > 0


def test_tokens_holding_parts_of_a_character_come_with_its_text(greedy_server: Server) -> None:
    """Runes are byte-fallback tokens in Gemma's vocabulary (one byte each): a token's `bytes`
    are exact, and each streamed line carries the tokens whose bytes make up its text."""
    body = {
        "model": "gemma",
        "prompt": "ᚠᛇᚻ᛫ᛒᛦᚦ ᚠᛇᚻ᛫ᛒᛦᚦ ᚠᛇᚻ᛫ᛒᛦᚦ ᚠᛇ",
        "raw": True,
        "logprobs": True,
        "options": {"num_predict": 12},
    }

    def joined(items: list[dict[str, Any]]) -> bytes:
        return b"".join(bytes(item.get("bytes", [])) for item in items)

    with greedy_server.client() as http:
        whole = http.post("/api/generate", json={**body, "stream": False}).json()
        items = whole["logprobs"]
        assert len(items) == whole["eval_count"]
        assert joined(items) == whole["response"].encode()
        assert any("\ufffd" in item["token"] for item in items), "no byte-fallback token"
        lines = [
            json.loads(line) for line in http.post("/api/generate", json=body).text.splitlines()
        ]
    streamed: list[dict[str, Any]] = []
    for line in lines:
        assert joined(line.get("logprobs", [])) == line["response"].encode()
        streamed += line.get("logprobs", [])
    assert streamed == items


@pytest.mark.parametrize("top_logprobs", [21, -1])
def test_ollama_top_logprobs_out_of_range_is_400(greedy_server: Server, top_logprobs: int) -> None:
    client = ollama.Client(host=greedy_server.url)
    with pytest.raises(ollama.ResponseError) as info:
        client.generate(model="gemma", prompt="Hi", logprobs=True, top_logprobs=top_logprobs)
    assert info.value.status_code == 400
    assert "top_logprobs" in info.value.error


# --- ONNX ---


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": USER, "logprobs": True}),
        ("/v1/completions", {"prompt": "Hi", "logprobs": 0}),
        ("/api/chat", {"messages": USER, "logprobs": True, "stream": False}),
        ("/api/generate", {"prompt": "Hi", "logprobs": True, "top_logprobs": 2}),
    ],
)
def test_onnx_models_refuse_logprobs(onnx_server: Server, path: str, body: dict[str, Any]) -> None:
    response = httpx.post(onnx_server.url + path, json={"model": "tiny", **body}, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    message = error["message"] if path.startswith("/v1/") else error
    assert "logprobs are not supported for onnx models" in message


def test_onnx_clients_see_the_400(onnx_server: Server) -> None:
    with pytest.raises(openai.BadRequestError):
        _openai(onnx_server).chat.completions.create(model="tiny", messages=USER, logprobs=True)
    with pytest.raises(ollama.ResponseError) as info:
        ollama.Client(host=onnx_server.url).chat(model="tiny", messages=USER, logprobs=True)
    assert info.value.status_code == 400
