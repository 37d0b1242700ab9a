"""TEMPLATE rendering: the request data model, errors that say what to fix, the Gemma template."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from slm_runtime.template import Template, TemplateError, parse_template, render_template

from tests.conftest import GEMMA_TEMPLATE

pytestmark = pytest.mark.unit

CHAT = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Tell me a joke."},
]


def test_gemma_template_renders_a_conversation() -> None:
    assert render_template(GEMMA_TEMPLATE, messages=CHAT) == (
        "<start_of_turn>user\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nTell me a joke.<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_gemma_template_generate_prompt_with_default_system() -> None:
    got = render_template(GEMMA_TEMPLATE, messages=[], system="Be terse.", prompt="Why?")
    assert got == (
        "<start_of_turn>system\nBe terse.<end_of_turn>\n"
        "<start_of_turn>user\nWhy?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_default_system_only_when_messages_bring_none() -> None:
    tmpl = "{{ range .Messages }}{{ .Role }}={{ .Content }};{{ end }}"
    assert render_template(tmpl, messages=CHAT[:1], system="S") == "system=S;user=Hi;"
    own = [{"role": "system", "content": "Mine"}, *CHAT[:1]]
    assert render_template(tmpl, messages=own, system="S") == "system=Mine;user=Hi;"


def test_system_is_collected_and_consecutive_roles_merge() -> None:
    tmpl = "[{{ .System }}]{{ range .Messages }}{{ .Role }}={{ .Content }};{{ end }}"
    msgs = [
        {"role": "system", "content": "A"},
        {"role": "system", "content": "B"},
        {"role": "user", "content": "u1"},
        {"role": "User", "content": "u2"},
        {"role": "tool", "content": "t1"},
        {"role": "tool", "content": "t2"},
    ]
    assert render_template(tmpl, messages=msgs) == (
        "[A\n\nB]system=A\n\nB;user=u1\n\nu2;tool=t1;tool=t2;"
    )


def test_legacy_template_renders_one_turn_at_a_time() -> None:
    tmpl = "{{ if .System }}<<{{ .System }}>>{{ end }}[INST] {{ .Prompt }} [/INST]"
    got = render_template(tmpl, messages=CHAT, system="S")
    assert got == "<<S>>[INST] Hi [/INST]Hello![INST] Tell me a joke. [/INST]"


def test_response_is_a_prefill_the_model_continues() -> None:
    legacy = "<user>{{ .Prompt }}</user><bot>{{ .Response }}</bot>"
    got = render_template(legacy, messages=[], prompt="Count", response="1, 2,")
    assert got == "<user>Count</user><bot>1, 2,"
    chat = "{{ range .Messages }}<{{ .Role }}>{{ .Content }}{{ end }}"
    got = render_template(chat, messages=[], prompt="Count", response="1, 2,")
    assert got == "<user>Count<assistant>1, 2,"


def test_legacy_response_inside_a_branch_with_else() -> None:
    """Ollama panics on this shape; here the branch after the response slot is dropped."""
    tmpl = "{{ if .Prompt }}P{{ .Prompt }}{{ .Response }}x{{ else }}E{{ end }}Z"
    assert render_template(tmpl, messages=CHAT) == "PHiHello!xZPTell me a joke."


@pytest.mark.parametrize(
    ("think", "expected"),
    [(None, "false false"), (False, "false true"), (True, "true true")],
)
def test_think_flags(think: bool | None, expected: str) -> None:
    tmpl = "{{ range .Messages }}{{ end }}{{ .Think }} {{ .IsThinkSet }}"
    assert render_template(tmpl, messages=CHAT, think=think) == expected


def test_tools_and_tool_calls() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {
                    "type": "object",
                    "required": ["city"],
                    "properties": {"city": {"type": "string", "description": "City"}},
                },
            },
        }
    ]
    msgs: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": "",
            # OpenAI clients send the arguments as a JSON string; Ollama's as an object.
            "tool_calls": [{"function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}],
        },
        {"role": "tool", "content": "-3C", "tool_name": "get_weather"},
    ]
    tmpl = (
        "{{ range .Tools }}{{ .Function.Name }}("
        "{{ range $n, $p := .Function.Parameters.Properties }}{{ $n }}: {{ toTypeScriptType $p }}"
        "{{ end }}) {{ .Function.Parameters.Properties }}\n{{ end }}"
        "{{ range .Messages }}{{ .Role }}:{{ .Content }}"
        "{{ range .ToolCalls }}{{ .Function.Name }}{{ .Function.Arguments }}{{ end }}"
        "{{ with .ToolName }}<{{ . }}>{{ end }}\n{{ end }}"
    )
    assert render_template(tmpl, messages=msgs, tools=tools) == (
        'get_weather(city: string) {"city":{"type":"string","description":"City"}}\n'
        "user:Weather in Oslo?\n"
        'assistant:get_weather{"city":"Oslo"}\n'
        "tool:-3C<get_weather>\n"
    )


def test_current_date() -> None:
    tmpl = "{{ range .Messages }}{{ end }}{{ currentDate }}"
    assert render_template(tmpl, messages=CHAT) in {
        dt.date.today().isoformat(),
        (dt.date.today() + dt.timedelta(days=1)).isoformat(),  # midnight between the two calls
    }


def test_parse_is_cached_and_reusable() -> None:
    first = parse_template(GEMMA_TEMPLATE)
    assert isinstance(first, Template)
    assert parse_template(GEMMA_TEMPLATE) is first
    assert first.render(messages=CHAT[:1]) == first.render(messages=CHAT[:1])
    assert first.render(messages=CHAT[:1]).startswith("<start_of_turn>user\nHi")


# Each bad TEMPLATE fails when parsed (at load), with the position and what is wrong.
@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("Hi {{ .Prompt ", "line 1, column 4: unclosed action"),
        ("{{ foo .Prompt }}", 'line 1, column 4: function "foo" not defined'),
        ("a\n{{ if .Prompt }}x", "missing {{end}}"),
        ("x{{ end }}", "unexpected {{end}}"),
        ("{{ $nope }}", 'undefined variable "$nope"'),
        ("{{ break }}", "{{break}} outside {{range}}"),
        ('{{ define "x" }}{{ end }}', "{{define}} is not supported"),
        ('{{ "abc }}', "unterminated quoted string"),
        ("{{ (len .Prompt }}", "unclosed left paren"),
        ("{{ }}", "missing value for command"),
        ("{{ if }}x{{ end }}", "missing value for if"),
        ("{{ .Prompt|}}", "missing command after '|'"),
        ("{{/* note", "unclosed comment"),
    ],
)
def test_parse_errors(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=r"^template: ") as err:
        parse_template(template)
    assert message in str(err.value)


# ... and a TEMPLATE that parses but cannot render the request says why.
@pytest.mark.parametrize(
    ("template", "message"),
    [
        (
            "{{ range .Messages }}{{ .Nope }}{{ end }}",
            "can't evaluate field Nope in type *template.templateMessage",
        ),
        (
            "{{ range .Messages }}{{ .Role.Name }}{{ end }}",
            "can't evaluate field Name in type string",
        ),
        ("{{ range .Messages }}{{ if eq .Role 1 }}{{ end }}{{ end }}", "incompatible types"),
        ("{{ range .Messages }}{{ index $.Messages 9 }}{{ end }}", "index out of range: 9"),
        ("{{ range .Messages }}{{ len 3 }}{{ end }}", "len of type int"),
        ("{{ range .Messages }}{{ nil }}{{ end }}", "nil is not a command"),
        ("{{ range .Messages }}{{ end }}{{ .Nope.Deeper }}", "nil pointer evaluating"),
    ],
)
def test_execution_errors(template: str, message: str) -> None:
    parsed = parse_template(template)
    with pytest.raises(TemplateError, match=r"^template: line 1, column \d+: executing: ") as err:
        parsed.render(messages=CHAT)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([{"content": "x"}], "messages[0].role must be a non-empty string"),
        ([{"role": "user", "content": 3}], "messages[0].content must be a string"),
        (["hi"], "messages[0] must be an object"),
        (
            [{"role": "assistant", "tool_calls": [{"function": {"arguments": "{oops"}}]}],
            "tool call arguments are not valid JSON",
        ),
    ],
)
def test_bad_messages(messages: list[Any], message: str) -> None:
    with pytest.raises(TemplateError, match=message.replace("[", r"\[").replace("]", r"\]")):
        render_template("{{ range .Messages }}{{ end }}", messages=messages)


def test_template_error_is_a_value_error() -> None:
    assert issubclass(TemplateError, ValueError)


# A template can come with a request (/api/generate "template"), so rendering is bounded.
@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ range 1000000000000 }}{{ end }}", "more than 1000000 steps"),
        ("{{ range 100000 }}" + "x" * 10_000 + "{{ end }}", "output exceeds"),
        ('{{ printf "%999999999d" 1 }}', "printf width 999999999 is larger than 4096"),
        ("{{ len }}", "wrong number of args for len: got 0"),
    ],
)
def test_rendering_is_bounded(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        render_template(template, messages=CHAT)


def test_deep_nesting_is_refused() -> None:
    with pytest.raises(TemplateError, match="nested too deeply"):
        parse_template("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}")
