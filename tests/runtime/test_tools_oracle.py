"""Tool-call parsing conformance with Ollama's own code: a parser built from the tools package of
the pinned github.com/ollama/ollama module (hack/ollama-tools-oracle, built by
hack/setup.d/40-ollama-oracles.sh, which the fixture below runs too) reads the same output as ours.

Compared: Ollama's table-test cases with their tags, and the output of real templates (the tag
then derived by each side from the template: Ollama from its parse tree, ours by rendering).
Two deliberate differences at the end of output: when it holds a tag but no call, Ollama's parser
keeps the held text back and ours returns it as content (``finish``); when bare-JSON output
turned out to be text, Ollama's Content repeats text Add already returned and ours does not.
"""

from __future__ import annotations

import json
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from slm_runtime.prompt import PromptBuilder
from slm_runtime.tools import ToolCall, ToolParser

from tests.runtime.conftest import OLLAMA_ORACLES_SETUP, ollama_oracle
from tests.runtime.test_tools_parsing import (
    OLLAMA_CASES,
    OLLAMA_TOOLS,
    TEMPLATES,
    WEATHER,
    _assistant_turn,
    _call,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "hack" / "ollama-tools-oracle"
SETUP = OLLAMA_ORACLES_SETUP
ORACLE = ollama_oracle(SRC)


def _tool(name: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": name, "parameters": {"type": "object", "properties": {}}},
    }


@cache
def _built_oracle() -> Path:
    """The oracle, built or rebuilt by the setup script when its source or go.sum changed (the
    script checks their hash, so an unchanged oracle costs a moment)."""
    subprocess.run(["bash", str(SETUP)], check=True, cwd=ROOT)
    return ORACLE


def _oracle(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(_built_oracle())],
        input=json.dumps(requests),
        capture_output=True,
        text=True,
        check=True,
    )
    results: list[dict[str, Any]] = json.loads(out.stdout)
    return results


def _ours(parser: ToolParser, inputs: list[str]) -> dict[str, Any]:
    calls: list[ToolCall] = []
    content = ""
    for piece in inputs:
        found, text = parser.add(piece)
        calls += found
        content += text
    return {
        "content": content,
        "rest": parser.finish(),
        "calls": [{"name": c.name, "arguments": c.arguments, "index": c.index} for c in calls],
    }


def _agree(ours: dict[str, Any], theirs: dict[str, Any], held_back: bool) -> None:
    assert "error" not in theirs, theirs
    assert ours["content"] == theirs["content"]
    assert ours["calls"] == theirs["calls"]
    if held_back and not ours["calls"]:
        # Ollama drops what its parser held after a tag; ours returns it.
        assert theirs["rest"] == ""
    elif ours["rest"] == "" and theirs["rest"] and theirs["rest"] in theirs["content"]:
        # Once bare-JSON output turns out to be text, Ollama's Add returns all of it but keeps
        # its buffer, so its Content repeats text already returned; ours does not.
        pass
    else:
        assert ours["rest"] == theirs["rest"]


@cache
def _table_results() -> list[dict[str, Any]]:
    tools = [_tool(name) for name in OLLAMA_TOOLS]
    return _oracle(
        [{"tag": tag, "tools": tools, "inputs": pieces} for _, tag, pieces, _, _ in OLLAMA_CASES]
    )


@pytest.mark.parametrize("index", range(len(OLLAMA_CASES)), ids=[c[0] for c in OLLAMA_CASES])
def test_ollama_table_cases_agree(index: int) -> None:
    _, tag, pieces, _, _ = OLLAMA_CASES[index]
    ours = _ours(ToolParser(tag, list(OLLAMA_TOOLS)), pieces)
    _agree(ours, _table_results()[index], held_back=tag not in ("{", "["))


GO_TEMPLATES = [
    "qwen2.5.gotmpl",
    "llama3.2.gotmpl",
    "mistral.gotmpl",
    "phi4-mini.gotmpl",
    "chatml-bare-json.gotmpl",
]


# Greedy answers of SmolLM2-135M-Instruct to "What is the weather in Paris?" with get_weather
# offered (recorded from the server; the model writes text and code, not calls).
SMOLLM2_OUTPUTS = [
    ["\n", "The weather in Paris is quite hot."],
    [
        "\nYou can use the following code to get weather data for Paris:\n```python\n",
        "import json\ndef get_weather(city):\n    return {\n",
        '        "temperature": 25,\n        "windSpeed": 60.137498888888',
    ],
    [
        "\n```python\ndef get_weather(city):\n    return {\n",
        '        "type": "string",\n        "data": {"city" : city}\n    }\n\n\n',
        "get_weather(\"Paris\")() # returns: {'type': 'string', 'data': {}}\n# This is",
    ],
]


def _outputs(prompts: PromptBuilder) -> list[list[str]]:
    """Model output as the template writes it (whole, streamed by characters, after some text)
    and output with no call in it."""
    one = _assistant_turn(prompts, [_call(0, "Paris")])
    two = _assistant_turn(prompts, [_call(0, "Paris"), _call(1, "Rome")])
    return [
        [one],
        list(one),
        [two],
        ["Let me look. ", one],
        ["The weather in Paris is sunny."],
        ['{"city": "Paris"}'],
        ["<tool_call> not really"],
        *SMOLLM2_OUTPUTS,
    ]


@pytest.mark.parametrize("name", GO_TEMPLATES)
def test_template_outputs_agree(name: str) -> None:
    template = (TEMPLATES / name).read_text(encoding="utf-8")
    prompts = PromptBuilder(
        template=template, system=None, model_template=None, bos_token="", eos_token=""
    )
    outputs = _outputs(prompts)
    theirs = _oracle(
        [{"template": template, "tools": [WEATHER], "inputs": inputs} for inputs in outputs]
    )
    tag = prompts.tool_tag()
    assert tag is not None
    for inputs, result in zip(outputs, theirs, strict=True):
        ours = _ours(prompts.tool_parser(["get_weather"]), inputs)
        _agree(ours, result, held_back=tag not in ("{", "["))
