"""Tool calling through the real `openai` and `ollama` clients against the real server running
SmolLM2-135M-Instruct.

SmolLM2's own chat template renders no tools, so the server is given a ChatML TEMPLATE whose tool
calls are bare JSON objects (tests/fixtures/tool-templates/chatml-bare-json.gotmpl). A 135M model
rarely writes a call by itself, so the tests that need one ask for it the way a client can: the
request's own JSON schema (OpenAI ``response_format``, Ollama ``format``) constrains the greedy
output to the shape of a call, and the server parses that output as it parses any other. The
tests that need no call use the model's free greedy output.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from tests.runtime.conftest import Server, serve, smollm2_config

pytestmark = pytest.mark.runtime

MODEL = "smollm2"
TEMPLATE = Path(__file__).resolve().parents[1] / "fixtures" / "tool-templates"


def _city_tool(name: str, description: str) -> dict[str, Any]:
    """A function tool that takes a city."""
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }


WEATHER = _city_tool("get_weather", "Get the current weather in a city")
TIME = _city_tool("get_time", "Get the current time in a city")
# The shape of a call to get_weather, as a JSON schema for the request's structured output.
CALL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "enum": ["get_weather"]},
        "arguments": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
    "required": ["name", "arguments"],
}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
GREEDY: dict[str, Any] = {"temperature": 0, "seed": 7}


@pytest.fixture(scope="module")
def server(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """SmolLM2 with a TEMPLATE that renders tools."""
    template = (TEMPLATE / "chatml-bare-json.gotmpl").read_text(encoding="utf-8")
    yield from serve(tmp_path_factory, "tools", smollm2_config(smollm2_gguf, template))


@pytest.fixture(scope="module")
def plain(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """SmolLM2 with its own chat template, which renders no tools."""
    yield from serve(tmp_path_factory, "plain", smollm2_config(smollm2_gguf))


def _openai(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def _forced_call() -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "call", "schema": CALL_SCHEMA}}


def test_openai_answers_a_call_with_tool_calls(server: Server) -> None:
    answer = _openai(server).chat.completions.create(
        model=MODEL,
        messages=QUESTION,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        response_format=_forced_call(),  # type: ignore[arg-type]
        **GREEDY,
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None
    assert len(calls) == 1
    call = calls[0]
    assert call.type == "function"
    assert call.id.startswith("call_")
    assert len(call.id) > len("call_")
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]
    assert isinstance(arguments, dict)
    assert isinstance(arguments["city"], str)


def test_openai_streams_a_call_as_openai_does(server: Server) -> None:
    client = _openai(server)
    whole = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        response_format=_forced_call(),  # type: ignore[arg-type]
        **GREEDY,
    )
    stream = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        response_format=_forced_call(),  # type: ignore[arg-type]
        stream=True,
        **GREEDY,
    )
    deltas = []
    reasons = []
    for chunk in stream:
        for choice in chunk.choices:
            reasons.append(choice.finish_reason)
            deltas += choice.delta.tool_calls or []
    assert reasons[-1] == "tool_calls"
    first = deltas[0]
    assert first.index == 0
    assert first.id
    assert first.id.startswith("call_")
    assert first.type == "function"
    assert first.function is not None
    assert first.function.name == "get_weather"
    assert all(d.index == 0 and d.id is None for d in deltas[1:])
    arguments = "".join((d.function.arguments or "") for d in deltas if d.function)
    assert whole.choices[0].message.tool_calls is not None
    assert json.loads(arguments) == json.loads(
        whole.choices[0].message.tool_calls[0].function.arguments  # type: ignore[union-attr]
    )


def _loop(result: str) -> list[dict[str, Any]]:
    call = {
        "id": "call_abc",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    return [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_abc", "content": result},
    ]


def test_openai_tool_results_reach_the_prompt_and_the_model_answers(server: Server) -> None:
    client = _openai(server)
    short = client.chat.completions.create(
        model=MODEL,
        messages=_loop("sunny"),  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        **GREEDY,
    )
    longer = client.chat.completions.create(
        model=MODEL,
        messages=_loop("sunny, 24 degrees, light wind from the west"),  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        **GREEDY,
    )
    assert short.usage is not None
    assert longer.usage is not None
    assert longer.usage.prompt_tokens > short.usage.prompt_tokens
    choice = short.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert choice.message.tool_calls is None
    assert isinstance(choice.message.content, str)
    assert choice.message.content


def _prompt_tokens(server: Server, body: dict[str, Any]) -> int:
    answer = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": QUESTION, "max_tokens": 1, **body},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    return int(answer.json()["usage"]["prompt_tokens"])


def test_tool_choice_decides_which_tools_the_model_is_offered(server: Server) -> None:
    none = _prompt_tokens(server, {})
    both = _prompt_tokens(server, {"tools": [WEATHER, TIME]})
    weather = _prompt_tokens(server, {"tools": [WEATHER]})
    assert _prompt_tokens(server, {"tools": [WEATHER, TIME], "tool_choice": "none"}) == none
    assert _prompt_tokens(server, {"tools": [WEATHER, TIME], "tool_choice": "auto"}) == both
    assert _prompt_tokens(server, {"tools": [WEATHER, TIME], "tool_choice": "required"}) == both
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert _prompt_tokens(server, {"tools": [WEATHER, TIME], "tool_choice": named}) == weather
    assert none < weather < both


def _error(server: Server, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    answer = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": QUESTION, **body},
        timeout=60,
    )
    return answer.status_code, answer.json()


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"type": "dictionary"}},
                    }
                ]
            },
            "not a valid JSON Schema",
        ),
        ({"tool_choice": "auto"}, "tool_choice is only allowed when tools are given"),
        ({"functions": [WEATHER["function"]]}, "use tools and tool_choice"),
        ({"tools": [{"type": "web_search"}]}, "only function tools"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "'nope' is not one of the tools",
        ),
        (
            {"messages": [*QUESTION, {"role": "tool", "tool_call_id": "call_x", "content": "1"}]},
            "answers no tool call",
        ),
        (
            {
                "messages": [
                    *_loop("sunny")[:2],
                    {"role": "tool", "tool_call_id": "x", "content": "1"},
                ]
            },
            "answers no tool call",
        ),
    ],
)
def test_openai_bad_tool_input_is_a_400(server: Server, body: dict[str, Any], says: str) -> None:
    status, error = _error(server, body)
    assert status == 400
    assert error["error"]["type"] == "invalid_request_error"
    assert says in error["error"]["message"]


def test_openai_tools_on_a_template_without_tools_is_a_400(plain: Server) -> None:
    with pytest.raises(openai.BadRequestError, match="does not support tools"):
        _openai(plain).chat.completions.create(
            model=MODEL,
            messages=QUESTION,  # type: ignore[arg-type]
            tools=[WEATHER],  # type: ignore[list-item]
        )


def test_ollama_answers_a_call_with_tool_calls(server: Server) -> None:
    client = ollama.Client(host=server.url)
    answer = client.chat(
        model=MODEL, messages=QUESTION, tools=[WEATHER], format=CALL_SCHEMA, options=GREEDY
    )
    assert answer.done_reason == "stop"
    assert answer.message.content == ""
    calls = answer.message.tool_calls
    assert calls is not None
    assert len(calls) == 1
    assert calls[0].function.name == "get_weather"
    assert isinstance(calls[0].function.arguments["city"], str)
    raw = httpx.post(
        server.url + "/api/chat",
        json={
            "model": MODEL,
            "messages": QUESTION,
            "tools": [WEATHER],
            "format": CALL_SCHEMA,
            "options": GREEDY,
            "stream": False,
        },
        timeout=120,
    ).json()
    call = raw["message"]["tool_calls"][0]
    assert call["id"].startswith("call_")
    assert call["function"]["index"] == 0
    assert call["function"]["arguments"] == dict(calls[0].function.arguments)


def test_ollama_streams_a_call(server: Server) -> None:
    client = ollama.Client(host=server.url)
    parts = list(
        client.chat(
            model=MODEL,
            messages=QUESTION,
            tools=[WEATHER],
            format=CALL_SCHEMA,
            options=GREEDY,
            stream=True,
        )
    )
    assert parts[-1].done
    calls = [call for part in parts for call in part.message.tool_calls or []]
    assert [c.function.name for c in calls] == ["get_weather"]
    assert "".join(part.message.content or "" for part in parts) == ""


def test_ollama_tool_results_reach_the_prompt(server: Server) -> None:
    client = ollama.Client(host=server.url)
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}

    def loop(result: str) -> ollama.ChatResponse:
        messages = [
            *QUESTION,
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": result, "tool_name": "get_weather"},
        ]
        return client.chat(model=MODEL, messages=messages, tools=[WEATHER], options=GREEDY)

    short, longer = loop("sunny"), loop("sunny, 24 degrees, light wind from the west")
    assert (longer.prompt_eval_count or 0) > (short.prompt_eval_count or 0)
    assert short.message.tool_calls is None
    assert short.message.content


def test_ollama_tools_on_a_template_without_tools_is_a_400(plain: Server) -> None:
    answer = httpx.post(
        plain.url + "/api/chat",
        json={"model": MODEL, "messages": QUESTION, "tools": [WEATHER], "stream": False},
        timeout=60,
    )
    assert answer.status_code == 400
    assert answer.json() == {"error": f"{MODEL} does not support tools"}
    with pytest.raises(ollama.ResponseError, match="does not support tools"):
        ollama.Client(host=plain.url).chat(model=MODEL, messages=QUESTION, tools=[WEATHER])


def test_ollama_bad_tool_schema_is_a_400(server: Server) -> None:
    bad = {"type": "function", "function": {"name": "f", "parameters": {"properties": []}}}
    answer = httpx.post(
        server.url + "/api/chat",
        json={"model": MODEL, "messages": QUESTION, "tools": [bad], "stream": False},
        timeout=60,
    )
    assert answer.status_code == 400
    assert "not a valid JSON Schema" in answer.json()["error"]


def test_ollama_show_lists_tools_when_the_template_renders_them(
    server: Server, plain: Server
) -> None:
    assert "tools" in (ollama.Client(host=server.url).show(MODEL).capabilities or [])
    assert "tools" not in (ollama.Client(host=plain.url).show(MODEL).capabilities or [])


@pytest.fixture(scope="module")
def listing(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """SmolLM2 with a TEMPLATE whose calls are a bare JSON list (so several fit in one answer)."""
    template = (TEMPLATE / "chatml-json-list.gotmpl").read_text(encoding="utf-8")
    yield from serve(tmp_path_factory, "list", smollm2_config(smollm2_gguf, template))


TWO_CITIES = [{"role": "user", "content": "What is the weather in Paris and in Rome?"}]
# Two calls to get_weather, as a JSON schema for the request's structured output.
TWO_CALLS: dict[str, Any] = {"type": "array", "items": CALL_SCHEMA, "minItems": 2, "maxItems": 2}


def _two_calls() -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "calls", "schema": TWO_CALLS}}


@pytest.mark.parametrize("parallel", [True, False])
def test_openai_parallel_tool_calls(listing: Server, parallel: bool) -> None:
    client = _openai(listing)
    answer = client.chat.completions.create(
        model=MODEL,
        messages=TWO_CITIES,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        response_format=_two_calls(),  # type: ignore[arg-type]
        parallel_tool_calls=parallel,
        max_tokens=80,
        **GREEDY,
    )
    calls = answer.choices[0].message.tool_calls or []
    assert answer.choices[0].finish_reason == "tool_calls"
    assert len(calls) == (2 if parallel else 1)
    assert len({call.id for call in calls}) == len(calls)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=TWO_CITIES,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        response_format=_two_calls(),  # type: ignore[arg-type]
        parallel_tool_calls=parallel,
        max_tokens=80,
        stream=True,
        **GREEDY,
    )
    arguments: dict[int, str] = {}
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                text = delta.function.arguments if delta.function else None
                arguments[delta.index] = arguments.get(delta.index, "") + (text or "")
    assert sorted(arguments) == list(range(len(calls)))
    assert [json.loads(arguments[i]) for i in sorted(arguments)] == [
        json.loads(call.function.arguments)  # type: ignore[union-attr]
        for call in calls
    ]


def test_ollama_answers_several_calls_with_their_index(listing: Server) -> None:
    answer = ollama.Client(host=listing.url).chat(
        model=MODEL,
        messages=TWO_CITIES,
        tools=[WEATHER],
        format=TWO_CALLS,
        options={**GREEDY, "num_predict": 80},
    )
    calls = answer.message.tool_calls or []
    assert [call.function.name for call in calls] == ["get_weather", "get_weather"]
    raw = httpx.post(
        listing.url + "/api/chat",
        json={
            "model": MODEL,
            "messages": TWO_CITIES,
            "tools": [WEATHER],
            "format": TWO_CALLS,
            "options": {**GREEDY, "num_predict": 80},
            "stream": False,
        },
        timeout=120,
    ).json()
    assert [call["function"]["index"] for call in raw["message"]["tool_calls"]] == [0, 1]
