"""Bad requests over raw HTTP: each gets its status and a message in its API family's shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.runtime.conftest import Server

pytestmark = pytest.mark.runtime

USER = [{"role": "user", "content": "hi"}]
LONG_PROMPT = "word " * 3000
SURROGATE = "\ud800"  # a lone UTF-16 surrogate: valid JSON escape, not valid Unicode


@dataclass(frozen=True)
class Bad:
    name: str
    method: str
    path: str
    status: int
    message: str
    body: Any = None
    content: bytes | None = None


CASES = [
    Bad(
        "ollama malformed JSON",
        "POST",
        "/api/generate",
        400,
        "not valid JSON",
        content=b'{"model": "gemma", "prompt": ',
    ),
    Bad(
        "openai malformed JSON",
        "POST",
        "/v1/chat/completions",
        400,
        "not valid JSON",
        content=b"{not json}",
    ),
    Bad("chat without model", "POST", "/api/chat", 400, "model", {"messages": USER}),
    Bad(
        "unknown role",
        "POST",
        "/api/chat",
        400,
        "messages.0.role",
        {"model": "gemma", "messages": [{"role": "robot", "content": "x"}]},
    ),
    Bad(
        "temperature not a number",
        "POST",
        "/api/generate",
        400,
        "options.temperature",
        {"model": "gemma", "prompt": "x", "options": {"temperature": "hot"}},
    ),
    Bad(
        "empty messages",
        "POST",
        "/v1/chat/completions",
        400,
        "messages",
        {"model": "gemma", "messages": []},
    ),
    Bad(
        "several choices",
        "POST",
        "/v1/chat/completions",
        400,
        "n",
        {"model": "gemma", "messages": USER, "n": 2},
    ),
    Bad(
        "temperature out of range",
        "POST",
        "/v1/chat/completions",
        400,
        "temperature",
        {"model": "gemma", "messages": USER, "temperature": 3},
    ),
    Bad(
        "max_tokens zero",
        "POST",
        "/v1/completions",
        400,
        "max_tokens",
        {"model": "gemma", "prompt": "x", "max_tokens": 0},
    ),
    Bad(
        "ollama unknown model",
        "POST",
        "/api/generate",
        404,
        'model "llama3" not found',
        {"model": "llama3", "prompt": "x"},
    ),
    Bad(
        "openai unknown model",
        "POST",
        "/v1/chat/completions",
        404,
        'model "gpt-4o" not found',
        {"model": "gpt-4o", "messages": USER},
    ),
    Bad(
        "several prompts",
        "POST",
        "/v1/completions",
        400,
        "exactly one prompt",
        {"model": "gemma", "prompt": ["a", "b"]},
    ),
    Bad(
        "ollama prompt longer than the context",
        "POST",
        "/api/generate",
        400,
        "context window is 1024",
        {"model": "gemma", "prompt": LONG_PROMPT, "stream": False},
    ),
    Bad(
        "openai prompt longer than the context",
        "POST",
        "/v1/chat/completions",
        400,
        "context window is 1024",
        {"model": "gemma", "messages": [{"role": "user", "content": LONG_PROMPT}]},
    ),
    Bad(
        "pull is managed by the LocalModel",
        "POST",
        "/api/pull",
        403,
        'managed by the LocalModel "gemma"',
        {"model": "gemma"},
    ),
    Bad(
        "openai model deletion is managed by the LocalModel",
        "DELETE",
        "/v1/models/gemma",
        403,
        'managed by the LocalModel "gemma"',
        {"model": "gemma"},
    ),
    Bad("wrong method", "GET", "/api/chat", 405, "not allowed"),
    Bad(
        "empty embedding input",
        "POST",
        "/v1/embeddings",
        400,
        "input",
        {"model": "gemma", "input": []},
    ),
    Bad(
        "images on a text model",
        "POST",
        "/api/generate",
        400,
        "images",
        {"model": "gemma", "prompt": "x", "images": ["aGk="]},
    ),
    Bad("unknown OpenAI route", "GET", "/v1/nothing", 404, "no route"),
    Bad(
        "json_schema without a schema",
        "POST",
        "/v1/chat/completions",
        400,
        "schema",
        {"model": "gemma", "messages": USER, "response_format": {"type": "json_schema"}},
    ),
    Bad(
        "image content part",
        "POST",
        "/v1/chat/completions",
        400,
        "image_url",
        {
            "model": "gemma",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "http://x"}}],
                }
            ],
        },
    ),
    Bad(
        "body larger than the limit",
        "POST",
        "/api/generate",
        413,
        "exceeds 65536 bytes",
        {"model": "gemma", "prompt": "x" * 70000},
    ),
    Bad(
        "bad JSON schema in format",
        "POST",
        "/api/generate",
        400,
        "schema",
        {"model": "gemma", "prompt": "x", "format": {"type": "nonsense-type"}},
    ),
    *[
        Bad(
            f"lone surrogate in {where}",
            "POST",
            path,
            400,
            f"{where} holds a lone UTF-16 surrogate (\\ud800)",
            # ASCII JSON: the surrogate travels as the escape \ud800, as a client would send it.
            content=json.dumps(body).encode(),
        )
        for path, where, body in [
            ("/api/generate", "prompt", {"model": "gemma", "prompt": "hi " + SURROGATE}),
            (
                "/api/chat",
                "messages.0.content",
                {"model": "gemma", "messages": [{"role": "user", "content": SURROGATE}]},
            ),
            ("/api/embed", "input.1", {"model": "gemma", "input": ["ok", SURROGATE]}),
            ("/api/embeddings", "prompt", {"model": "gemma", "prompt": SURROGATE}),
            ("/api/show", "model", {"model": SURROGATE}),
            ("/v1/completions", "prompt", {"model": "gemma", "prompt": SURROGATE}),
            (
                "/v1/chat/completions",
                "messages.0.content",
                {"model": "gemma", "messages": [{"role": "user", "content": SURROGATE}]},
            ),
            ("/v1/embeddings", "input", {"model": "gemma", "input": SURROGATE}),
            ("/v1/chat/completions", "model", {"model": SURROGATE, "messages": USER}),
        ]
    ],
    *[
        Bad(
            f"ollama options {name}",
            "POST",
            "/api/generate",
            400,
            message,
            content=b'{"model": "gemma", "prompt": "x", "options": {' + option + b"}}",
        )
        for name, option, message in [
            ("top_k above the config's bound", b'"top_k": 5000', "options.top_k"),
            ("stop list too long", b'"stop": [' + b",".join([b'"s"'] * 17) + b"]", "options.stop"),
            ("empty stop", b'"stop": [""]', "options.stop.0"),
            (
                "NaN penalty",
                b'"presence_penalty": NaN',
                "options.presence_penalty: Input should be a finite number",
            ),
            (
                "infinite penalty",
                b'"repeat_penalty": Infinity',
                "options.repeat_penalty: Input should be a finite number",
            ),
            ("huge frequency penalty", b'"frequency_penalty": 1e300', "options.frequency_penalty"),
            ("num_ctx above the loaded window", b'"num_ctx": 4096', "options.num_ctx: 4096"),
            ("num_ctx below the config's bound", b'"num_ctx": 16', "options.num_ctx"),
            ("num_thread other than loaded", b'"num_thread": 7', "options.num_thread"),
        ]
    ],
    *[
        Bad(
            f"openai {name} on {path}",
            "POST",
            path,
            400,
            message,
            {"model": "gemma", "stop": stop, "max_tokens": 2}
            | ({"messages": USER} if path.endswith("chat/completions") else {"prompt": "hi"}),
        )
        for path in ("/v1/chat/completions", "/v1/completions")
        for name, stop, message in [
            ("empty stop", "", "stop: a stop sequence must not be empty"),
            ("empty stop in a list", ["\n", ""], "stop.1: a stop sequence must not be empty"),
            ("stop list too long", ["s"] * 17, "stop: at most 16 sequences"),
            ("stop too long", ["s" * 257], "stop.0: a stop sequence has at most 256 characters"),
            ("stop not text", [1], "stop"),
        ]
    ],
    Bad(
        "num_thread on embed",
        "POST",
        "/api/embed",
        400,
        "options.num_thread",
        {"model": "gemma", "input": "x", "options": {"num_thread": 7}},
    ),
    Bad(
        "prompt longer than the request's num_ctx",
        "POST",
        "/api/generate",
        400,
        "context window is 128; shorten it or raise num_ctx",
        {"model": "gemma", "prompt": "word " * 200, "stream": False, "options": {"num_ctx": 128}},
    ),
    Bad(
        "embed input longer than the request's num_ctx, not truncated",
        "POST",
        "/api/embed",
        400,
        "the input length exceeds the context length: an input is 202 tokens but the context "
        "window is 128",
        {"model": "gemma", "input": "word " * 200, "options": {"num_ctx": 128}, "truncate": False},
    ),
    Bad(
        "legacy embeddings input longer than the request's num_ctx",
        "POST",
        "/api/embeddings",
        400,
        "the input length exceeds the context length",
        {"model": "gemma", "prompt": "word " * 200, "options": {"num_ctx": 128}},
    ),
]


def _message(path: str, body: Any) -> str:
    if path.startswith("/v1/"):
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}
        return str(error["message"])
    assert set(body) == {"error"}
    return str(body["error"])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_request(gemma_server: Server, case: Bad) -> None:
    with gemma_server.client() as client:
        if case.content is not None:
            response = client.request(
                case.method,
                case.path,
                content=case.content,
                headers={"content-type": "application/json"},
            )
        else:
            response = client.request(case.method, case.path, json=case.body)
        assert response.status_code == case.status, response.text
        assert case.message in _message(case.path, response.json())
        assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/api/embed", {"model": "tiny", "input": "x"}, "not supported for onnx models"),
        ("/v1/embeddings", {"model": "tiny", "input": "x"}, "not supported for onnx models"),
        ("/api/generate", {"model": "tiny", "prompt": "x", "format": "json"}, "format json"),
    ],
)
def test_what_onnx_cannot_serve(onnx_server: Server, path: str, body: Any, message: str) -> None:
    response = httpx.post(onnx_server.url + path, json=body, timeout=30)
    assert response.status_code == 501
    assert message in _message(path, response.json())


def test_chunked_body_over_the_limit(gemma_server: Server) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "gemma", "messages": [], "pad": "'
        for _ in range(20):
            yield b"x" * 4096
        yield b'"}'

    response = httpx.post(
        gemma_server.url + "/v1/chat/completions",
        content=chunks(),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413
    assert "exceeds 65536 bytes" in _message("/v1/", response.json())


@pytest.mark.parametrize(
    "content_type", [None, "application/x-www-form-urlencoded"], ids=["none", "curl -d"]
)
def test_a_json_body_is_read_whatever_its_content_type_says(
    gemma_server: Server, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    body = json.dumps({"model": "gemma", "prompt": "The sky is", "stream": False,
                       "options": {"num_predict": 2}})  # fmt: skip
    answer = httpx.post(
        f"{gemma_server.url}/api/generate", content=body, headers=headers, timeout=60
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["done"] is True
