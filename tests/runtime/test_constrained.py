"""Tool calls valid by construction: with ``tool_choice`` required or a named function, a GGUF
model's output is held by a grammar to calls of the offered tools in the shape its template
writes them, their arguments to the tools' JSON schemas.

The shapes are learnt from the Ollama and Hugging Face templates of tests/fixtures/tool-templates;
the end-to-end tests run the real SmolLM2-135M-Instruct, sampled and greedy, under several of
those templates and check every answer with the `jsonschema` validator."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from slm_runtime.constrained import (
    ARGUMENTS,
    CALL_ID,
    NAME,
    CallShape,
    call_grammar,
    integer_range,
)
from slm_runtime.prompt import PromptBuilder

from tests.runtime.conftest import Server, serve, smollm2_config

pytestmark = pytest.mark.runtime

MODEL = "smollm2"
TEMPLATES = Path(__file__).resolve().parents[1] / "fixtures" / "tool-templates"

BOOKING: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "book_table",
        "description": "Book a table at a restaurant",
        "parameters": {
            "type": "object",
            "properties": {
                "restaurant": {"type": "string", "minLength": 1, "maxLength": 40},
                "people": {"type": "integer", "minimum": 1, "maximum": 12},
                "time": {"type": "string", "pattern": "^[0-2][0-9]:[0-5][0-9]$"},
                "seating": {"type": "string", "enum": ["inside", "outside"]},
                "notes": {
                    "type": "array",
                    "items": {"type": "string", "maxLength": 40},
                    "maxItems": 3,
                },
            },
            "required": ["restaurant", "people", "time"],
        },
    },
}
WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 40},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
# The strings are bounded so that sampled calls end within the token budget: a call cut off by
# max_tokens is an answer with finish_reason "length", not a call.
TOOLS = [BOOKING, WEATHER]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def _builder(name: str) -> PromptBuilder:
    text = (TEMPLATES / name).read_text(encoding="utf-8")
    jinja = name.endswith(".jinja")
    return PromptBuilder(
        template=None if jinja else text,
        system=None,
        model_template=text if jinja else None,
        bos_token="<s>",
        eos_token="</s>",
    )


def _written(shape: CallShape, calls: list[tuple[str, dict[str, Any]]]) -> str:
    """Output in the shape, as the grammar lets a model write it."""
    objects = []
    for name, arguments in calls:
        values = {NAME: name, ARGUMENTS: json.dumps(arguments), CALL_ID: "abcDEF123"}
        text = shape.parts[0]
        for slot, part in zip(shape.slots, shape.parts[1:], strict=True):
            text += values[slot] + part
        objects.append(text)
    return shape.prefix + (shape.separator or "").join(objects) + shape.suffix


@pytest.mark.parametrize(
    ("template", "tag", "several"),
    [
        ("chatml-bare-json.gotmpl", "{", True),
        ("chatml-json-list.gotmpl", "[", True),
        ("llama3.2.gotmpl", "{", True),
        ("mistral.gotmpl", "[TOOL_CALLS] [", True),
        ("mistral-v0.3.jinja", "[TOOL_CALLS] [", True),
        ("qwen2.5.gotmpl", "<tool_call>\n", True),
        ("qwen2.5.jinja", "<tool_call>\n", True),
    ],
)
def test_the_shape_of_a_call_follows_the_template_and_its_parser_reads_it_back(
    template: str, tag: str, several: bool
) -> None:
    """What the grammar lets the model write is what the template's parser reads as calls."""
    builder = _builder(template)
    shape = builder.call_shape()
    assert shape is not None
    assert shape.prefix.startswith(tag.strip()) or tag == "{"
    assert (shape.separator is not None) is several
    calls = [
        ("book_table", {"restaurant": "Chez Nous", "people": 2, "time": "19:30"}),
        ("get_weather", {"city": "Paris", "unit": "celsius"}),
    ]
    for wanted in (calls[:1], calls):
        parser = builder.tool_parser(["book_table", "get_weather"])
        found, content = parser.parse(_written(shape, wanted))
        assert [(c.name, c.arguments) for c in found] == wanted
        assert content.strip() == ""
    grammar = call_grammar(shape, TOOLS, parallel=True)
    assert grammar.startswith("root ::= ")
    assert "tool-0-call ::= " in grammar
    assert "tool-1-call ::= " in grammar


def test_templates_whose_calls_are_not_json_objects_have_no_shape() -> None:
    """Phi-4-mini's Ollama template leaves each call object open: nothing to constrain to, so
    ``required`` is read as ``auto`` there; a template without tools has no shape either."""
    assert _builder("phi4-mini.gotmpl").call_shape() is None
    assert _builder("phi4-mini.gotmpl").tool_tag() == "<|tool_call|>["
    plain = PromptBuilder(
        template="{{ .Prompt }}", system=None, model_template=None, bos_token="", eos_token=""
    )
    assert plain.call_shape() is None


def _config(gguf: Path, template: str) -> dict[str, Any]:
    """SmolLM2 under a tool template, with room for sampled calls."""
    return smollm2_config(gguf, (TEMPLATES / template).read_text(encoding="utf-8"), numPredict=400)


@pytest.fixture(
    scope="module",
    params=["chatml-bare-json.gotmpl", "chatml-json-list.gotmpl", "qwen2.5.gotmpl"],
)
def server(
    request: pytest.FixtureRequest, smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """SmolLM2 under a template that renders tools: bare JSON, a JSON list, Qwen's tags."""
    yield from serve(tmp_path_factory, "constrained", _config(smollm2_gguf, request.param))


def _client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


# Prompts a 135M model answers with text when it may: each would be content under ``auto``.
PROMPTS = ["Say hello.", "Book a table for two at Chez Nous at half past seven."]
SAMPLINGS: list[dict[str, Any]] = [{"temperature": 0}] + [
    {"temperature": 1.0, "seed": seed} for seed in range(2)
]


def _check(calls: list[tuple[str, str]], allowed: set[str]) -> None:
    assert calls, "a constrained answer holds at least one call"
    for name, arguments in calls:
        assert name in allowed
        jsonschema.validate(json.loads(arguments), SCHEMAS[name])


@pytest.mark.parametrize("prompt", PROMPTS)
def test_required_answers_calls_whose_arguments_validate(server: Server, prompt: str) -> None:
    for sampling in SAMPLINGS:
        answer = _client(server).chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": prompt}],
            tools=TOOLS,  # type: ignore[arg-type]
            tool_choice="required",
            **sampling,
        )
        choice = answer.choices[0]
        assert choice.finish_reason == "tool_calls", (sampling, choice.message)
        calls = choice.message.tool_calls or []
        _check([(c.function.name, c.function.arguments) for c in calls], set(SCHEMAS))  # type: ignore[union-attr]


def test_a_named_function_is_the_one_called_streamed_or_not(server: Server) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    for sampling in SAMPLINGS[:2]:
        body: dict[str, Any] = {
            "model": MODEL,
            "messages": [{"role": "user", "content": PROMPTS[1]}],
            "tools": TOOLS,
            "tool_choice": named,
            "parallel_tool_calls": False,
            **sampling,
        }
        whole = _client(server).chat.completions.create(**body)
        calls = whole.choices[0].message.tool_calls or []
        assert len(calls) == 1
        _check([(c.function.name, c.function.arguments) for c in calls], {"get_weather"})  # type: ignore[union-attr]
        pieces: dict[int, dict[str, str]] = {}
        argument_deltas = 0
        reasons = []
        for chunk in _client(server).chat.completions.create(**body, stream=True):
            for delta_call in chunk.choices[0].delta.tool_calls or []:
                if delta_call.index not in pieces:
                    assert delta_call.id
                    assert delta_call.function
                    assert delta_call.function.name
                piece = pieces.setdefault(delta_call.index, {"name": "", "arguments": ""})
                if delta_call.function and delta_call.function.name:
                    piece["name"] += delta_call.function.name
                if delta_call.function and delta_call.function.arguments:
                    piece["arguments"] += delta_call.function.arguments
                    argument_deltas += 1
            reasons.append(chunk.choices[0].finish_reason)
        assert reasons[-1] == "tool_calls"
        # The arguments stream as the model writes them: a grammar makes sure they end a call.
        assert argument_deltas > 3
        streamed = [(p["name"], p["arguments"]) for _, p in sorted(pieces.items())]
        assert [(n, json.loads(a)) for n, a in streamed] == [
            (c.function.name, json.loads(c.function.arguments))  # type: ignore[union-attr]
            for c in calls
        ]


def test_the_responses_api_constrains_required_as_chat_does(server: Server) -> None:
    tools = [{"type": "function", **t["function"]} for t in TOOLS]
    answer = _client(server).responses.create(
        model=MODEL,
        input="Say hello.",
        tools=tools,  # type: ignore[arg-type]
        tool_choice="required",
        temperature=0,
    )
    calls = [item for item in answer.output if item.type == "function_call"]
    _check([(c.name, c.arguments) for c in calls], set(SCHEMAS))  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "extra",
    [{"grammar": 'root ::= "a"'}, {"response_format": {"type": "json_object"}}],
)
def test_required_with_another_constraint_is_a_400(server: Server, extra: dict[str, Any]) -> None:
    answer = httpx.post(
        server.url + "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "tools": TOOLS,
            "tool_choice": "required",
            **extra,
        },
        timeout=60,
    )
    assert answer.status_code == 400, answer.text
    assert "cannot be combined" in answer.json()["error"]["message"]


def _regex(gbnf: str) -> str:
    """The regular expression of the GBNF that ``integer_range`` writes (quoted digits and
    signs, classes, counts, groups, alternatives)."""
    return gbnf.replace('"', "").replace(" ", "")


@pytest.mark.parametrize(
    ("low", "high"),
    [(1, 12), (0, 9), (0, 100), (7, 7), (15, 2031), (-40, 60), (-12, -3), (95, 1005), (-1, 0)],
)
def test_integer_bounds_allow_exactly_the_integers_between_them(low: int, high: int) -> None:
    pattern = re.compile(_regex(integer_range(low, high)))
    for value in range(low - 150, high + 150):
        assert bool(pattern.fullmatch(str(value))) == (low <= value <= high), value
    for text in ("", "-", "01", "-0", "+1", "1.0"):
        assert not pattern.fullmatch(text)


def test_an_integer_bounded_on_one_side_has_up_to_sixteen_digits() -> None:
    at_least = re.compile(_regex(integer_range(3, None)))
    assert at_least.fullmatch("3")
    assert at_least.fullmatch("9" * 16)
    assert not at_least.fullmatch("2")
    assert not at_least.fullmatch("9" * 17)
    at_most = re.compile(_regex(integer_range(None, -5)))
    assert at_most.fullmatch("-5")
    assert at_most.fullmatch("-" + "9" * 16)
    assert not at_most.fullmatch("-4")
    assert not at_most.fullmatch("0")


def test_bounds_beyond_sixteen_digits_on_one_side_leave_no_integer() -> None:
    """The other side's default is 16 digits: a bound beyond it leaves nothing to write, which
    is a 400 naming the tool, not a grammar that allows no value."""
    with pytest.raises(ValueError, match="no integer of up to 16 digits is at least"):
        integer_range(10**17, None)
    with pytest.raises(ValueError, match="no integer of up to 16 digits is at most"):
        integer_range(None, -(10**17))
    with pytest.raises(ValueError, match=re.escape("tools[0].function.parameters: the schema")):
        _integers({"type": "integer", "minimum": 10**17})


# A call that is its arguments alone: the grammar of one argument is read without the call's text.
_ARGUMENTS_ONLY = CallShape("", ("", ""), (ARGUMENTS,), None, "")


def _integers(schema: dict[str, Any]) -> re.Pattern[str]:
    """The regular expression of the integers the grammar lets a tool's argument ``n`` of
    ``schema`` be (its rules written in place, the optional space after a value left out)."""
    tool = {"type": "function", "function": {"name": "f", "parameters": _one_argument(schema)}}
    grammar = call_grammar(_ARGUMENTS_ONLY, [tool], parallel=False)
    rules = dict(line.split(" ::= ", 1) for line in grammar.splitlines())

    def written(name: str) -> str:
        if name == "space":
            return ""
        return "(" + re.sub(r"[a-z][a-z0-9-]*", lambda m: written(m[0]), rules[name]) + ")"

    return re.compile(_regex(written("tool-0-arguments-n")))


def _one_argument(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"n": schema},
        "required": ["n"],
        "$defs": {"small": {"type": "integer", "minimum": 2, "maximum": 4}},
    }


@pytest.mark.parametrize(
    ("schema", "allowed"),
    [
        ({"type": "integer", "minimum": 1, "maximum": 10, "enum": [3, 5]}, {3, 5}),
        ({"type": "integer", "minimum": 1, "const": 4}, {4}),
        ({"type": "integer", "minimum": 1, "anyOf": [{"const": 3}, {"const": 5}]}, {3, 5}),
        ({"type": "integer", "maximum": 9, "oneOf": [{"const": -2}, {"const": 7}]}, {-2, 7}),
        ({"type": "integer", "minimum": 0, "$ref": "#/$defs/small"}, {2, 3, 4}),
        # Draft 4 writes exclusive bounds as flags on `minimum` and `maximum`.
        ({"type": "integer", "minimum": 3, "exclusiveMinimum": True, "maximum": 6}, {4, 5, 6}),
        ({"type": "integer", "minimum": 3, "exclusiveMinimum": False, "maximum": 6}, {3, 4, 5, 6}),
        (
            {"type": "integer", "minimum": -2, "maximum": 5, "exclusiveMaximum": True},
            set(range(-2, 5)),
        ),
        ({"type": "integer", "minimum": 0.5, "maximum": 2.5, "exclusiveMaximum": True}, {1, 2}),
        ({"type": "integer", "exclusiveMinimum": 2, "exclusiveMaximum": 5}, {3, 4}),
    ],
)
def test_integer_rules_keep_enum_const_unions_references_and_draft_4_bounds(
    schema: dict[str, Any], allowed: set[int]
) -> None:
    """Bounds beside an enum, a const, a union or a reference leave the rule to those keywords;
    a draft-4 `exclusiveMinimum`/`exclusiveMaximum` of true makes its bound strict."""
    pattern = _integers(schema)
    assert {n for n in range(-30, 30) if pattern.fullmatch(str(n))} == allowed


@pytest.fixture(scope="module")
def open_calls(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """SmolLM2 under Phi-4-mini's Ollama template, whose call objects cannot be constrained."""
    yield from serve(tmp_path_factory, "open-calls", _config(smollm2_gguf, "phi4-mini.gotmpl"))


def test_required_is_read_as_auto_where_calls_cannot_be_constrained(open_calls: Server) -> None:
    """Output that holds no call is content with finish_reason "stop" (or "length"), never a
    made-up call."""
    answer = _client(open_calls).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello."}],
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="required",
        max_tokens=24,
        temperature=0,
    )
    choice = answer.choices[0]
    assert choice.message.tool_calls is None
    assert choice.finish_reason in ("stop", "length")
    assert choice.message.content


def test_the_parser_hands_out_arguments_as_they_are_written() -> None:
    """Fed one character at a time, the pieces and the rest at the end make the arguments as
    written, for each call; without ``streams_arguments`` nothing is handed out early."""
    builder = _builder("qwen2.5.jinja")
    shape = builder.call_shape()
    assert shape is not None
    calls = [
        ("book_table", {"restaurant": 'Le "Z" {bar}', "people": 2, "time": "19:30"}),
        ("get_weather", {"city": "Paris", "unit": "celsius"}),
    ]
    output = _written(shape, calls)
    for streams in (True, False):
        parser = builder.tool_parser(["book_table", "get_weather"])
        parser.streams_arguments = streams
        pieces: dict[int, str] = {}
        found = []
        for char in output:
            done, content = parser.add(char)
            assert content == ""
            found.extend(done)
            piece = parser.argument_piece()
            if piece is not None:
                index, name, text = piece
                assert name == calls[index][0]
                pieces[index] = pieces.get(index, "") + text
        assert [(c.name, c.arguments) for c in found] == calls
        for call in found:
            if streams:
                assert call.raw_arguments == json.dumps(calls[call.index][1])
                assert 0 < call.sent <= len(call.raw_arguments)
                assert pieces[call.index] == call.raw_arguments[: call.sent]
            else:
                assert call.sent == 0
                assert not pieces


def test_a_call_cut_off_by_max_tokens_ends_by_length(server: Server) -> None:
    """Streamed, the pieces of the call went out and the stream ends by length without sending
    them again as content; whole, the cut call is content, by length."""
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPTS[1]}],
        "tools": TOOLS,
        "tool_choice": "required",
        "max_tokens": 24,
        "temperature": 0,
    }
    whole = _client(server).chat.completions.create(**body)
    assert whole.choices[0].finish_reason == "length"
    assert whole.choices[0].message.tool_calls is None
    assert "book_table" in (whole.choices[0].message.content or "")
    names, content, reasons = [], "", []
    for chunk in _client(server).chat.completions.create(**body, stream=True):
        delta = chunk.choices[0].delta
        content += delta.content or ""
        names += [c.function.name for c in delta.tool_calls or [] if c.function and c.function.name]
        reasons.append(chunk.choices[0].finish_reason)
    assert names == ["book_table"]
    assert content == ""
    assert reasons[-1] == "length"


def test_a_grammar_that_allows_no_token_is_a_400_and_the_server_goes_on(
    server: Server,
) -> None:
    """llama.cpp aborts the process when it accepts a token its grammar refuses; a grammar
    that allows none ends the request instead."""
    answer = httpx.post(
        server.url + "/v1/completions",
        json={
            "model": MODEL,
            "prompt": "Hello",
            "max_tokens": 5,
            "temperature": 1.0,
            "grammar": "root ::= [^\\x00-\\U0010FFFF]",
        },
        timeout=60,
    )
    assert answer.status_code == 400, answer.text
    assert "the grammar allows no token" in answer.json()["error"]["message"]
    assert _client(server).models.retrieve(MODEL).id == MODEL
