"""Agent frameworks, unchanged, in a whole tool loop against the real server running
SmolLM2-135M-Instruct: LangChain's ``ChatOpenAI`` and ``ChatOllama``, and the OpenAI Agents SDK
over chat completions and over the Responses API.

The server is set up as test_tools_api.py sets it up: SmolLM2 with a ChatML TEMPLATE whose tool
calls are bare JSON objects. A 135M model rarely calls a tool by itself, so the first turn asks
for a call, greedily: ``tool_choice="required"`` where the API has it (generation is then held to
a call), and on Ollama's API, which has no ``tool_choice``, a ``format`` schema in the shape of a
call (langchain-ollama ignores ``bind_tools(tool_choice=...)``). The framework or the test runs
the tool, sends its result back and the model answers in text. Each loop runs twice, with a short
and a long tool result: the final turn's prompt is longer by the result, so the result reached
the model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from agents import (
    Agent,
    FunctionTool,
    MessageOutputItem,
    Model,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    ToolCallItem,
    ToolCallOutputItem,
    function_tool,
    set_tracing_disabled,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.tools import BaseTool, tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_ollama import ChatOllama
from langchain_openai import ChatOpenAI
from openai import AsyncOpenAI

from tests.runtime.conftest import Server, serve, smollm2_config

pytestmark = pytest.mark.runtime

MODEL = "smollm2"
TEMPLATE = Path(__file__).resolve().parents[1] / "fixtures" / "tool-templates"
QUESTION = "What is the weather in Paris?"
SHORT = "sunny"
LONG = "sunny, 24 degrees, a light wind from the west and no rain until the evening"
# Model calls in one loop: the forced call, the answer, and room for one more call.
MAX_TURNS = 3


@pytest.fixture(scope="module")
def server(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """SmolLM2 with a TEMPLATE that renders tools, as in test_tools_api.py."""
    template = (TEMPLATE / "chatml-bare-json.gotmpl").read_text(encoding="utf-8")
    yield from serve(tmp_path_factory, "frameworks", smollm2_config(smollm2_gguf, template))


@dataclass
class Loop:
    """What one tool loop did: the arguments the tool was run with, the prompt tokens of the
    last model call and the answer it ended with."""

    arguments: list[dict[str, Any]]
    prompt_tokens: int
    answer: str


def _assert_the_result_reached_the_prompt(run: Callable[[str], Loop]) -> None:
    """Run a loop with a short and a long tool result; the same call, a longer last prompt."""
    short, long = run(SHORT), run(LONG)
    assert short.arguments == long.arguments
    assert long.prompt_tokens > short.prompt_tokens
    for loop in (short, long):
        assert loop.arguments
        assert loop.answer.strip()


def _weather_tool(result: str, calls: list[dict[str, Any]]) -> BaseTool:
    @tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        calls.append({"city": city})
        return result

    return get_weather


def _langchain_loop(chat: BaseChatModel, first_turn: dict[str, Any], result: str) -> Loop:
    """LangChain's tool loop: the model's calls run with ``tool.invoke(call)`` and go back as
    ToolMessages until the model answers without a call; ``first_turn`` binds the first call."""
    calls: list[dict[str, Any]] = []
    weather = _weather_tool(result, calls)
    schema = convert_to_openai_tool(weather)["function"]["parameters"]
    messages: list[BaseMessage] = [HumanMessage(QUESTION)]
    answer = chat.bind_tools([weather], **first_turn).invoke(messages)
    assert isinstance(answer, AIMessage)
    assert answer.tool_calls, f"the first turn made no call: {answer.content!r}"
    free = chat.bind_tools([weather])
    made: list[dict[str, Any]] = []
    for _ in range(MAX_TURNS - 1):
        if not answer.tool_calls:
            break
        messages.append(answer)
        for call in answer.tool_calls:
            assert call["name"] == "get_weather"
            jsonschema.validate(call["args"], schema)
            made.append(call["args"])
            messages.append(weather.invoke(call))
        answer = free.invoke(messages)
        assert isinstance(answer, AIMessage)
    assert not answer.tool_calls, "the loop did not end with an answer"
    assert calls == made
    assert answer.usage_metadata is not None
    assert isinstance(answer.content, str)
    return Loop(calls, answer.usage_metadata["input_tokens"], answer.content)


@pytest.mark.parametrize(
    ("streaming", "tool_choice"),
    [(False, "required"), (True, "required"), (False, "get_weather")],
)
def test_langchain_chat_openai_runs_a_tool_loop(
    server: Server, streaming: bool, tool_choice: str
) -> None:
    """``tool_choice`` "required", or the tool's name, which LangChain sends as a named
    function."""
    chat = ChatOpenAI(
        base_url=server.url + "/v1",
        api_key="unused",
        model=MODEL,
        temperature=0,
        max_retries=0,
        streaming=streaming,
        stream_usage=True,
    )
    _assert_the_result_reached_the_prompt(
        lambda result: _langchain_loop(chat, {"tool_choice": tool_choice}, result)
    )


def _call_schema(tool_: BaseTool) -> dict[str, Any]:
    """A JSON schema for a call of ``tool_`` as the TEMPLATE asks the model to write one."""
    function = convert_to_openai_tool(tool_)["function"]
    return {
        "type": "object",
        "properties": {
            "name": {"type": "string", "enum": [function["name"]]},
            "arguments": function["parameters"],
        },
        "required": ["name", "arguments"],
    }


def test_langchain_chat_ollama_runs_a_tool_loop(server: Server) -> None:
    chat = ChatOllama(base_url=server.url, model=MODEL, temperature=0)
    call = _call_schema(_weather_tool(SHORT, []))
    _assert_the_result_reached_the_prompt(
        lambda result: _langchain_loop(chat, {"format": call}, result)
    )


def _agents_loop(model: Callable[[AsyncOpenAI], Model], result: str, url: str) -> Loop:
    """The Agents SDK's own loop: ``Runner.run_sync`` calls the model, runs the function tool,
    sends its output back, and ends with the model's text. The SDK sets ``tool_choice`` back to
    auto after a tool call, so only the first turn is held to a call."""
    set_tracing_disabled(True)
    calls: list[dict[str, Any]] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        calls.append({"city": city})
        return result

    assert isinstance(get_weather, FunctionTool)
    agent = Agent(
        name="weather",
        instructions="You answer questions about the weather.",
        tools=[get_weather],
        model=model(AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)),
        model_settings=ModelSettings(tool_choice="required", temperature=0),
    )
    run = Runner.run_sync(agent, QUESTION, max_turns=MAX_TURNS)
    made = [item.raw_item for item in run.new_items if isinstance(item, ToolCallItem)]
    assert made
    arguments = []
    for call in made:
        assert getattr(call, "name", None) == "get_weather"
        arguments.append(json.loads(getattr(call, "arguments", "")))
        jsonschema.validate(arguments[-1], get_weather.params_json_schema)
    assert calls == arguments
    outputs = [item.output for item in run.new_items if isinstance(item, ToolCallOutputItem)]
    assert outputs == [result] * len(made)
    assert isinstance(run.new_items[-1], MessageOutputItem)
    assert isinstance(run.final_output, str)
    return Loop(calls, run.raw_responses[-1].usage.input_tokens, run.final_output)


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(lambda client: OpenAIChatCompletionsModel(MODEL, client), id="chat"),
        pytest.param(lambda client: OpenAIResponsesModel(MODEL, client), id="responses"),
    ],
)
def test_openai_agents_sdk_runs_a_tool_loop(
    server: Server, model: Callable[[AsyncOpenAI], Model]
) -> None:
    _assert_the_result_reached_the_prompt(lambda result: _agents_loop(model, result, server.url))
