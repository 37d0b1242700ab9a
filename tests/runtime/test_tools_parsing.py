"""Tool-call formats learnt from real templates, and the parser that reads calls back.

The templates in tests/fixtures/tool-templates are the TEMPLATEs of Ollama's library models
(qwen2.5, llama3.2, mistral, phi4-mini, as `ollama show --template` prints them) and the Jinja
chat template of Qwen2.5-Instruct; command-r comes from the pinned Ollama module's template/
folder. The parser cases marked "ollama:" are cases of the Go table tests in the module's
tools/tools_test.go, with the same inputs and expected content and calls.
"""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from slm_runtime.prompt import PromptBuilder
from slm_runtime.tool_checks import check_tools
from slm_runtime.tools import BARE_JSON, NoToolsError, ToolCall, ToolParser, new_call_id

from tests.conftest import GEMMA_TEMPLATE

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "tests" / "fixtures" / "tool-templates"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def builder(name: str) -> PromptBuilder:
    text = (TEMPLATES / name).read_text(encoding="utf-8")
    if name.endswith(".jinja"):
        return PromptBuilder(
            template=None, system=None, model_template=text, bos_token="", eos_token=""
        )
    return PromptBuilder(
        template=text, system=None, model_template=None, bos_token="", eos_token=""
    )


@cache
def _module_template(name: str) -> str:
    src = ROOT / "hack" / "ollama-template-oracle"
    pin = next(
        line.split()[2]
        for line in (src / "go.mod").read_text().splitlines()
        if line.split()[:2] == ["require", "github.com/ollama/ollama"]
    )
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"github.com/ollama/ollama@{pin}"],
        capture_output=True,
        text=True,
        check=False,
        cwd=src,
    )
    if out.returncode != 0:
        pytest.skip(f"the Ollama module is not available: {out.stderr.strip()}")
    folder = Path(json.loads(out.stdout)["Dir"]) / "template"
    return (folder / f"{name}.gotmpl").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("name", "tag"),
    [
        ("qwen2.5.gotmpl", "<tool_call>"),
        ("qwen2.5.jinja", "<tool_call>"),
        ("llama3.2.gotmpl", BARE_JSON),
        ("mistral.gotmpl", "[TOOL_CALLS] ["),
        ("mistral-v0.3.jinja", "[TOOL_CALLS] ["),
        ("phi4-mini.gotmpl", "<|tool_call|>["),
    ],
)
def test_the_tag_is_what_the_template_writes_before_a_call(name: str, tag: str) -> None:
    assert builder(name).tool_tag() == tag


def test_a_template_that_wants_nine_character_ids_gets_them_and_replays() -> None:
    prompts = builder("mistral-v0.3.jinja")
    parser = prompts.tool_parser(["get_weather"])
    assert parser.short_ids
    ident = new_call_id(parser.short_ids)
    assert len(ident) == 9
    assert ident.isalnum()
    call = {
        "id": ident,
        "type": "function",
        "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
    }
    prompt = prompts.chat(
        [
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": "sunny", "tool_call_id": ident, "name": "get_weather"},
        ],
        tools=[WEATHER],
    )
    assert (
        f'[TOOL_CALLS] [{{"name": "get_weather", "arguments": {{"city": "Paris"}}, '
        f'"id": "{ident}"}}]'
    ) in prompt
    assert f'[TOOL_RESULTS] {{"content": sunny, "call_id": "{ident}"}}[/TOOL_RESULTS]' in prompt


@pytest.mark.parametrize("name", ["qwen2.5.jinja", "qwen2.5.gotmpl", "mistral.gotmpl"])
def test_templates_that_take_any_id_keep_openai_ids(name: str) -> None:
    assert not builder(name).tool_parser(["get_weather"]).short_ids
    assert new_call_id().startswith("call_")


def test_the_tag_of_an_ollama_module_template() -> None:
    template = _module_template("command-r")
    tag = PromptBuilder(
        template=template, system=None, model_template=None, bos_token="", eos_token=""
    ).tool_tag()
    assert tag == "Action: ```json\n["


@pytest.mark.parametrize("template", [GEMMA_TEMPLATE, "{{ .Prompt }}"])
def test_a_template_without_tools_has_no_tag(template: str) -> None:
    prompts = PromptBuilder(
        template=template, system=None, model_template=None, bos_token="", eos_token=""
    )
    assert prompts.tool_tag() is None


def test_a_chatml_module_template_has_no_tools() -> None:
    template = _module_template("chatml")
    prompts = PromptBuilder(
        template=template, system=None, model_template=None, bos_token="", eos_token=""
    )
    assert prompts.tool_tag() is None


def _assistant_turn(prompts: PromptBuilder, calls: list[dict[str, Any]]) -> str:
    """What the template writes for an assistant turn holding these calls: the rendering of the
    conversation with the turn, past the rendering of the conversation up to it."""
    question = [{"role": "user", "content": "What is the weather in Paris and Rome?"}]
    turn = {"role": "assistant", "content": "", "tool_calls": calls}
    after = [{"role": "user", "content": "thanks"}]
    whole = prompts.chat([*question, turn, *after], tools=[WEATHER])
    text = prompts.chat([*question, {"role": "assistant", "content": "X"}, *after], tools=[WEATHER])
    common = 0
    while common < min(len(whole), len(text)) and whole[common] == text[common]:
        common += 1
    tail = 0
    while tail < min(len(whole), len(text)) - common and whole[-1 - tail] == text[-1 - tail]:
        tail += 1
    return whole[common : len(whole) - tail]


def _call(index: int, city: str) -> dict[str, Any]:
    return {
        "id": f"call_{index}",
        "type": "function",
        "function": {"index": index, "name": "get_weather", "arguments": {"city": city}},
    }


def _parse(tag: str, names: list[str], pieces: list[str]) -> tuple[list[ToolCall], str]:
    parser = ToolParser(tag, names)
    calls: list[ToolCall] = []
    content = ""
    for piece in pieces:
        found, text = parser.add(piece)
        calls += found
        content += text
    return calls, content + parser.finish()


@pytest.mark.parametrize(
    "name", ["qwen2.5.gotmpl", "qwen2.5.jinja", "llama3.2.gotmpl", "mistral.gotmpl"]
)
def test_calls_rendered_by_the_template_parse_back(name: str) -> None:
    prompts = builder(name)
    tag = prompts.tool_tag()
    assert tag is not None
    output = _assistant_turn(prompts, [_call(0, "Paris")])
    calls, content = _parse(tag, ["get_weather"], [output])
    assert [(c.name, c.arguments, c.index) for c in calls] == [
        ("get_weather", {"city": "Paris"}, 0)
    ]
    # Streamed one character at a time, the same calls come out.
    streamed, _ = _parse(tag, ["get_weather"], list(output))
    assert streamed == calls
    assert "get_weather" not in content


@pytest.mark.parametrize("name", ["qwen2.5.gotmpl", "qwen2.5.jinja"])
def test_parallel_calls_rendered_by_the_template_parse_back(name: str) -> None:
    prompts = builder(name)
    output = _assistant_turn(prompts, [_call(0, "Paris"), _call(1, "Rome")])
    calls, _ = _parse(prompts.tool_tag() or "", ["get_weather"], [output])
    assert [(c.arguments["city"], c.index) for c in calls] == [("Paris", 0), ("Rome", 1)]


def test_phi4_mini_output_parses() -> None:
    tag = builder("phi4-mini.gotmpl").tool_tag() or ""
    output = '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]<|/tool_call|>'
    calls, content = _parse(tag, ["get_weather"], [output])
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert content == ""


def test_llama_output_with_text_first_is_content() -> None:
    """With bare JSON, only output that starts with an object is a call."""
    output = 'Sure: {"name": "get_weather", "parameters": {"city": "Paris"}}'
    calls, content = _parse(BARE_JSON, ["get_weather"], [output])
    assert calls == []
    assert content == output


def test_a_tag_without_a_call_stays_content() -> None:
    output = "<tool_call> I cannot call anything here"
    calls, content = _parse("<tool_call>", ["get_weather"], [output[:5], output[5:]])
    assert calls == []
    assert content == output


OLLAMA_TOOLS = [
    "get_temperature",
    "get_conditions",
    "say_hello",
    "say_hello_world",
    "get_address",
    "add",
]
QWEN, MISTRAL, JSON_TAG, LIST = "<tool_call>", "[TOOL_CALLS] [", BARE_JSON, "["


# ollama: TestParser cases: (name, tag, pieces, content Add returns, calls as (name, arguments)).
OLLAMA_CASES: list[tuple[str, str, list[str], str, list[tuple[str, dict[str, Any]]]]] = [
    (
        "just text",
        QWEN,
        ["Hello, how can I help you today?"],
        "Hello, how can I help you today?",
        [],
    ),
    ("empty input", QWEN, [""], "", []),
    (
        "tool call",
        QWEN,
        [
            '<tool_call>{"name": "get_conditions", "arguments": '
            '{"location": "San Francisco"}}</tool_call>'
        ],
        "",
        [("get_conditions", {"location": "San Francisco"})],
    ),
    (
        "empty args",
        QWEN,
        ['<tool_call>{"name": "get_conditions", "arguments": {}}</tool_call>'],
        "",
        [("get_conditions", {})],
    ),
    (
        "text before tool call",
        QWEN,
        [
            'Let me check the weather. <tool_call>{"name": "get_temperature", '
            '"arguments": {"city": "New York"}}</tool_call>'
        ],
        "Let me check the weather. ",
        [("get_temperature", {"city": "New York"})],
    ),
    (
        "qwen no args with text",
        QWEN,
        ["Let me say hello to the user. I'll use the say_hello tool. "],
        "Let me say hello to the user. I'll use the say_hello tool. ",
        [],
    ),
    (
        "two tool calls in a list",
        MISTRAL,
        [
            '[TOOL_CALLS] [{"name": "get_temperature", "arguments": {"city": "London", '
            '"format": "fahrenheit"}}, {"name": "get_conditions", "arguments": '
            '{"location": "Tokyo"}}][/TOOL_CALLS]'
        ],
        "",
        [
            ("get_temperature", {"city": "London", "format": "fahrenheit"}),
            ("get_conditions", {"location": "Tokyo"}),
        ],
    ),
    (
        "qwen two tool calls",
        QWEN,
        [
            'Okay, let\'s call both tools! <tool_call>{"name": "get_temperature", '
            '"arguments": {"city": "London", "format": "fahrenheit"}}</tool_call>'
            '<tool_call>{"name": "get_conditions", "arguments": {"location": "Tokyo"}}'
            "</tool_call>"
        ],
        "Okay, let's call both tools! ",
        [
            ("get_temperature", {"city": "London", "format": "fahrenheit"}),
            ("get_conditions", {"location": "Tokyo"}),
        ],
    ),
    (
        "empty args followed by args",
        QWEN,
        [
            'Let me say hello and check the weather. <tool_call>{"name": "say_hello", '
            '"arguments": {}}</tool_call><tool_call>{"name": "get_temperature", '
            '"arguments": {"city": "London", "format": "fahrenheit"}}</tool_call>'
        ],
        "Let me say hello and check the weather. ",
        [
            ("say_hello", {}),
            ("get_temperature", {"city": "London", "format": "fahrenheit"}),
        ],
    ),
    (
        "json",
        JSON_TAG,
        ["{", '"name": "get_temperature",', '"arguments": {', '"city": "Tokyo"', "}", "}"],
        "",
        [("get_temperature", {"city": "Tokyo"})],
    ),
    (
        "json maybe a tool call",
        JSON_TAG,
        ["{", '"name": "get_temperature",', '"arguments": {'],
        "",
        [],
    ),
    (
        "json not a tool call",
        JSON_TAG,
        [
            "{",
            '"name": "search", ',
            '"arguments": {',
            '"query": "What is the capital of Canada?"',
            "}",
            "}",
        ],
        '{"name": "search", "arguments": {"query": "What is the capital of Canada?"}}',
        [],
    ),
    (
        "json object followed by tool call",
        JSON_TAG,
        [
            '{"name": "jeff"}',
            '{"name": "get_conditions", "arguments": {"location": "San Francisco"}}',
        ],
        '{"name": "jeff"}{"name": "get_conditions", "arguments": {"location": "San Francisco"}}',
        [],
    ),
    (
        "json code",
        JSON_TAG,
        ['for { fmt.Println("hello") }'],
        'for { fmt.Println("hello") }',
        [],
    ),
    (
        "list multiple",
        LIST,
        [
            "[",
            "{",
            '"name": "get_temperature", ',
            '"arguments": {',
            '"city": "London"',
            "}",
            "},",
            "{",
            '"name": "get_conditions", ',
            '"arguments": {',
            '"location": "Tokyo"',
            "}",
            "}]",
        ],
        "",
        [("get_temperature", {"city": "London"}), ("get_conditions", {"location": "Tokyo"})],
    ),
]


@pytest.mark.parametrize(("case", "tag", "pieces", "content", "calls"), OLLAMA_CASES)
def test_ollama_parser_cases(
    case: str, tag: str, pieces: list[str], content: str, calls: list[tuple[str, dict[str, Any]]]
) -> None:
    """ollama: TestParser cases; content is what Add returns, as the Go test collects it."""
    parser = ToolParser(tag, OLLAMA_TOOLS)
    got_calls: list[ToolCall] = []
    got = ""
    for piece in pieces:
        found, text = parser.add(piece)
        got_calls += found
        got += text
    assert got == content, case
    assert [(c.name, c.arguments) for c in got_calls] == calls, case
    assert [c.index for c in got_calls] == list(range(len(calls)))


def _with_parameters(parameters: Any) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {"name": "f", "parameters": parameters}}]


def _object(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


def _nested(
    levels: int, wrap: Callable[[dict[str, Any]], dict[str, Any]] = lambda inner: _object(x=inner)
) -> dict[str, Any]:
    """A schema ``levels`` schemas deep, each the only subschema of the one above it."""
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(levels - 1):
        schema = wrap(schema)
    return schema


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        ([{"type": "retrieval"}], "only function tools"),
        ([{"type": "function", "function": {"name": "has space"}}], "function.name"),
        ([{"type": "function"}], "function must be an object"),
        (
            _with_parameters({"type": "thing"}),
            "tools[0].function.parameters.type: 'thing' is not valid under any of the given "
            "schemas (the parameters are not a valid JSON Schema)",
        ),
        (
            _with_parameters(_object(city={"type": "strin"})),
            "tools[0].function.parameters.properties.city.type: 'strin' is not valid under any "
            "of the given schemas",
        ),
        (
            _with_parameters({"type": "object", "required": "x"}),
            "tools[0].function.parameters.required: 'x' is not of type 'array'",
        ),
        (
            _with_parameters(_object(x=3)),
            "tools[0].function.parameters.properties.x: 3 is not of type 'object', 'boolean'",
        ),
        (
            _with_parameters(_object(x={"anyOf": [{"type": "string"}, {"minLength": -1}]})),
            "tools[0].function.parameters.properties.x.anyOf[1].minLength: -1 is less than the "
            "minimum of 0",
        ),
        (
            _with_parameters(_object(x={"type": "string", "pattern": 3})),
            "tools[0].function.parameters.properties.x.pattern: 3 is not of type 'string'",
        ),
        (
            _with_parameters(_object(x={"type": "object", "properties": list(range(100))})),
            "tools[0].function.parameters.properties.x.properties: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9,"
            " 10, 11, 12, 13, 14, 15, 16... is not of type 'object'",
        ),
        (
            # The metaschema the schema names: draft 4 wants a non-empty `required`.
            _with_parameters(
                {"$schema": "http://json-schema.org/draft-04/schema#", "required": []}
            ),
            "tools[0].function.parameters.required: [] should be non-empty",
        ),
        (
            _with_parameters({"$schema": 5, "type": "object"}),
            "tools[0].function.parameters.$schema: 5 is not of type 'string'",
        ),
        (
            _with_parameters({"$schema": ["x"], "type": "object"}),
            "tools[0].function.parameters.$schema: ['x'] is not of type 'string'",
        ),
        (_with_parameters(True), "tools[0].function.parameters must be an object schema"),
        (_with_parameters("object"), "tools[0].function.parameters must be an object schema"),
        (
            _with_parameters({"type": "string"}),
            "tools[0].function.parameters.type must be 'object'",
        ),
        (
            _with_parameters(_object(x={"$ref": "https://example.com/city.json"})),
            "tools[0].function.parameters.properties.x.$ref: 'https://example.com/city.json' "
            "is outside the schema; references are not fetched",
        ),
        (
            _with_parameters(_object(x={"items": {"$ref": "city.json#/$defs/name"}})),
            "tools[0].function.parameters.properties.x.items.$ref: 'city.json#/$defs/name' is "
            "outside the schema",
        ),
        (
            _with_parameters(
                {
                    "$schema": "http://json-schema.org/draft-07/schema#",
                    **_object(x={"items": [{"$ref": "http://example.com/a"}]}),
                }
            ),
            "tools[0].function.parameters.properties.x.items[0].$ref: 'http://example.com/a'",
        ),
        ([WEATHER, WEATHER], "named twice"),
        # A hundred levels exhaust the recursion of the metaschema check.
        (_with_parameters(_nested(100)), "tools[0].function.parameters nest deeper than 32 levels"),
        (_with_parameters(_nested(33)), "tools[0].function.parameters nest deeper than 32 levels"),
        (
            _with_parameters(_object(x=_nested(32, lambda inner: {"anyOf": [True, inner]}))),
            "tools[0].function.parameters nest deeper than 32 levels",
        ),
        (
            _with_parameters(_nested(33, lambda inner: {"$defs": {"a": inner}})),
            "tools[0].function.parameters nest deeper than 32 levels",
        ),
    ],
)
def test_bad_tools_are_refused(tools: list[dict[str, Any]], message: str) -> None:
    """Parameters are checked against the JSON Schema metaschema (draft 2020-12 unless they name
    another); the message names the tool and the keyword."""
    with pytest.raises(ValueError, match=re.escape(message)):
        check_tools(tools)


def test_a_check_that_runs_out_of_stack_is_a_refusal() -> None:
    """Should the metaschema check recurse deeper than the stack allows within the levels that
    pass, the parameters are refused as too deep rather than failing the request."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack()) + 100)
    try:
        with pytest.raises(ValueError, match="nest deeper than 32 levels"):
            check_tools(_with_parameters(_nested(32)))
    finally:
        sys.setrecursionlimit(limit)


def test_good_tools_pass() -> None:
    assert check_tools([WEATHER, {"type": "function", "function": {"name": "ping"}}]) == [
        "get_weather",
        "ping",
    ]


@pytest.mark.parametrize(
    "parameters",
    [
        {},
        {"type": "object", "properties": {"x": True}, "additionalProperties": False},
        {"$defs": {"city": {"type": "string"}}, **_object(x={"$ref": "#/$defs/city"})},
        # References to a `$id` inside the schema are not remote.
        {
            "$id": "https://example.com/root.json",
            "$defs": {"city": {"$id": "city.json", "type": "string"}},
            **_object(x={"$ref": "city.json"}, y={"$ref": "https://example.com/root.json#"}),
        },
        # Patterns are ECMA-262 regular expressions, which Python's re does not all read.
        _object(x={"type": "string", "pattern": r"^\p{L}+$"}, y={"pattern": "(?<word>a)"}),
        # A `$ref` inside a value (const, default, enum) is data, not a reference.
        _object(x={"const": {"$ref": "https://example.com/a"}}),
        {"$schema": "http://json-schema.org/draft-07/schema#", **_object(x={"items": [{}]})},
        _nested(32),
        _object(x=_nested(31, lambda inner: {"type": "array", "items": inner})),
        # Data nests as deep as it likes: only schemas count.
        _object(x={"const": json.loads("[" * 200 + "]" * 200)}),
    ],
)
def test_valid_parameters_pass(parameters: dict[str, Any]) -> None:
    assert check_tools(_with_parameters(parameters)) == ["f"]


# A chat template in FunctionGemma's notation (`<start_function_declaration>` tools, calls as
# `<start_function_call>call:NAME{key:<escape>text<escape>,n:3}<end_function_call>`), reduced to
# what tool calling needs; the model's own template ships with its weights, which are not here.
FUNCTIONGEMMA = """{{ bos_token }}
{%- if tools -%}
{{- '<start_of_turn>developer\\n' -}}
{%- for tool in tools -%}
{{- '<start_function_declaration>' + (tool | tojson) + '<end_function_declaration>' -}}
{%- endfor -%}
{{- '<end_of_turn>\\n' -}}
{%- endif -%}
{%- for message in messages -%}
{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
{%- if message['role'] == 'tool' -%}
{{- '<start_function_response>response:' + message['content'] + '<end_function_response>' -}}
{%- else -%}
{{- '<start_of_turn>' + role + '\\n' + (message['content'] or '') -}}
{%- for tool_call in message['tool_calls'] or [] -%}
{%- set fn = tool_call['function'] -%}
{{- '<start_function_call>call:' + fn['name'] + '{' -}}
{%- for key, value in fn['arguments'] | dictsort -%}
{%- if not loop.first %},{% endif -%}
{{- key + ':' -}}
{%- if value is string %}{{ '<escape>' + value + '<escape>' }}{% else %}{{ value }}{% endif -%}
{%- endfor -%}
{{- '}<end_function_call>' -}}
{%- endfor -%}
{{- '<end_of_turn>\\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif -%}
"""


def test_functiongemma_calls_are_read_in_the_templates_own_notation() -> None:
    prompts = PromptBuilder(
        template=None,
        system=None,
        model_template=FUNCTIONGEMMA,
        bos_token="<bos>",
        eos_token="<eos>",
    )
    assert prompts.tool_tag() == "<start_function_call>call:"
    output = _assistant_turn(prompts, [_call(0, "Paris")])
    assert output.startswith("<start_function_call>call:get_weather{city:<escape>Paris<escape>}")
    parser = prompts.tool_parser(["get_weather"])
    calls, content = parser.add(output)
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Paris"})]
    parser = prompts.tool_parser(["get_weather"])
    text = (
        "Checking.<start_function_call>call:get_weather{city:<escape>New York, NY<escape>,"
        "days:3,metric:true}<end_function_call>"
    )
    found: list[ToolCall] = []
    content = ""
    for char in text:
        calls, piece = parser.add(char)
        found += calls
        content += piece
    assert [(c.name, c.arguments) for c in found] == [
        ("get_weather", {"city": "New York, NY", "days": 3, "metric": True})
    ]
    assert content == "Checking."


def test_jinja_tojson_writes_tools_as_hugging_face_does() -> None:
    """Key order kept, nothing HTML-escaped, and text joined to it stays text."""
    prompt = builder("qwen2.5.jinja").chat(
        [{"role": "user", "content": "hi"}],
        tools=[{**WEATHER, "function": {**WEATHER["function"], "description": "a <b> & 'c'"}}],
    )
    assert '{"type": "function", "function": {"name": "get_weather", ' in prompt
    assert '"description": "a <b> & \'c\'"' in prompt
    gemma = PromptBuilder(
        template=None, system=None, model_template=FUNCTIONGEMMA, bos_token="", eos_token=""
    )
    declared = gemma.chat([{"role": "user", "content": "hi"}], tools=[WEATHER])
    assert '<start_function_declaration>{"type": "function"' in declared
    assert "<end_function_declaration>" in declared


@pytest.mark.parametrize("tag", ["<tool_call>", "[TOOL_CALLS] ["])
def test_a_long_call_streamed_in_small_pieces_is_read_once(tag: str) -> None:
    text = 'line {with} "quotes", [brackets] and \\ slashes\n' * 1100
    call = json.dumps({"name": "write_file", "arguments": {"path": "a.txt", "text": text}})
    output = f"{tag}{call}{']' if tag.endswith('[') else '</tool_call>'}"
    assert len(output) > 50_000
    parser = ToolParser(tag, ["write_file", "read_file"])
    calls: list[ToolCall] = []
    content = ""
    for at in range(0, len(output), 4):
        found, piece = parser.add(output[at : at + 4])
        calls += found
        content += piece
    content += parser.finish()
    assert calls == [ToolCall("write_file", {"path": "a.txt", "text": text}, 0)]
    assert "write_file" not in content
    # Each character is read at most once by each of the two scans.
    assert parser._scanned <= 2 * len(output)


def test_jinja_templates_get_calls_without_their_index() -> None:
    call = {
        "id": "abcdefghi",
        "type": "function",
        "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}},
    }
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "sunny", "tool_call_id": "abcdefghi", "name": "get_weather"},
    ]
    prompt = builder("mistral-v0.3.jinja").chat(messages, tools=[WEATHER])
    assert '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}' in prompt
    assert '"index"' not in prompt
    assert call["function"]["index"] == 0
    # Ollama's templates still read it.
    go = PromptBuilder(
        template="{{ range .Messages }}{{ range .ToolCalls }}{{ .Function.Index }}:"
        "{{ .Function.Name }}{{ end }}{{ end }}",
        system=None,
        model_template=None,
        bos_token="",
        eos_token="",
    )
    call["function"]["index"] = 3
    assert go.chat(messages) == "3:get_weather"


def test_parse_reads_a_whole_output() -> None:
    output = 'Sure. <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    calls, content = ToolParser("<tool_call>", ["get_weather"]).parse(output)
    assert calls == [ToolCall("get_weather", {"city": "Paris"}, 0)]
    assert content == "Sure. "
    assert ToolParser("<tool_call>", ["get_weather"]).parse("no call") == ([], "no call")


def test_a_template_without_tools_gives_no_parser() -> None:
    prompts = PromptBuilder(
        template=GEMMA_TEMPLATE, system=None, model_template=None, bos_token="", eos_token=""
    )
    with pytest.raises(NoToolsError):
        prompts.tool_parser(["get_weather"])
