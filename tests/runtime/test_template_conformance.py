"""TEMPLATE rendering conformance with Ollama: its own template test data, then Ollama's own code.

Two sources of truth, both from the Go module github.com/ollama/ollama at the version pinned in
hack/ollama-template-oracle/go.mod:

* the expected renderings in the module's template/testdata/<name>.gotmpl/<case> files, for
  every template in its template/ folder and the three conversations of template_test.go;
* a renderer built from the module's template package (hack/ollama-template-oracle), which
  renders a wider corpus: tools, tool calls, thinking, legacy .Prompt/.Response templates,
  every function and control structure, whitespace trimming, and templates that must fail.

hack/setup.d/40-ollama-oracles.sh fetches the module and builds the renderer; the fixtures
below run it too, so the tests also work before `make setup`.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from slm_runtime.template import TemplateError, render_template

from tests.runtime.conftest import OLLAMA_ORACLES_SETUP, ollama_oracle, ollama_pin

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
ORACLE_SRC = ROOT / "hack" / "ollama-template-oracle"
SETUP = OLLAMA_ORACLES_SETUP
OLLAMA_VERSION = ollama_pin(ORACLE_SRC)
ORACLE = ollama_oracle(ORACLE_SRC)


@cache
def _template_dir() -> Path:
    """The module's template/ folder in the Go module cache (downloaded on first use)."""
    try:
        out = subprocess.run(
            ["go", "mod", "download", "-json", f"github.com/ollama/ollama@{OLLAMA_VERSION}"],
            capture_output=True,
            text=True,
            check=False,
            cwd=ORACLE_SRC,
        )
    except FileNotFoundError:
        raise RuntimeError(f"these tests need Go; see {SETUP.relative_to(ROOT)}") from None
    if out.returncode != 0:
        raise RuntimeError(f"go mod download github.com/ollama/ollama failed: {out.stderr}")
    return Path(json.loads(out.stdout)["Dir"]) / "template"


# The conversations of Ollama's TestTemplate, keyed by the testdata file names.
_USER_ASSISTANT_USER = [
    {"role": "user", "content": "Hello, how are you?"},
    {"role": "assistant", "content": "I'm doing great. How can I help you today?"},
    {"role": "user", "content": "I'd like to show off how chat templating works!"},
]
CONVERSATIONS: dict[str, list[dict[str, Any]]] = {
    "user": [{"role": "user", "content": "Hello, how are you?"}],
    "user-assistant-user": _USER_ASSISTANT_USER,
    "system-user-assistant-user": [
        {"role": "system", "content": "You are a helpful assistant."},
        *_USER_ASSISTANT_USER,
    ],
}

# Ollama's TestTemplate drops one trailing space from these templates' output before comparing
# (the testdata files were written without it); the same rule applies here.
_TRAILING_SPACE_TRIMMED = {
    "chatqa.gotmpl",
    "llama2-chat.gotmpl",
    "mistral-instruct.gotmpl",
    "openchat.gotmpl",
    "vicuna.gotmpl",
}


def _testdata_cases() -> list[tuple[str, str]]:
    tdir = _template_dir()
    return [
        (tmpl.name, case.name)
        for tmpl in sorted(tdir.glob("*.gotmpl"))
        for case in sorted((tdir / "testdata" / tmpl.name).iterdir())
    ]


@pytest.mark.parametrize(("template_name", "case"), _testdata_cases())
def test_ollama_testdata(template_name: str, case: str) -> None:
    """Every template in the module renders every testdata conversation byte for byte."""
    tdir = _template_dir()
    template = (tdir / template_name).read_bytes().replace(b"\r\n", b"\n").decode()
    expected = (tdir / "testdata" / template_name / case).read_bytes()

    got = render_template(template, messages=CONVERSATIONS[case]).encode()
    if template_name in _TRAILING_SPACE_TRIMMED and got.endswith(b" "):
        got = got[:-1]

    assert got == expected


def test_testdata_covers_every_template() -> None:
    """The module still holds the data this suite expects: 20 templates, 3 cases each."""
    tdir = _template_dir()
    templates = sorted(p.name for p in tdir.glob("*.gotmpl"))
    assert len(templates) >= 20
    for name in templates:
        cases = {p.name for p in (tdir / "testdata" / name).iterdir()}
        assert cases == set(CONVERSATIONS), name


# ------------------------------------------------------------------------------------------
# The differential corpus: rendered by Ollama's template package and by ours.

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the weather <now> & later",
            "parameters": {
                "type": "object",
                "required": ["city"],
                "properties": {
                    "city": {"type": "string", "description": "City name"},
                    "days": {"type": ["integer", "null"], "description": "How many days"},
                    "unit": {"type": "string", "enum": ["c", "f"]},
                    "where": {
                        "type": "object",
                        "properties": {"lat": {"type": "number"}, "lng": {"type": "number"}},
                    },
                    "when": {"anyOf": [{"type": "string"}, {"type": "number"}]},
                },
            },
        },
    },
    {"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}},
]

TOOL_CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "thinking": "need tool",
        "tool_calls": [
            {
                "function": {
                    "name": "get_weather",
                    "arguments": {
                        "city": "Paris",
                        "days": 3,
                        "big": 1000000,
                        "frac": 1.5,
                        "tiny": 0.000001,
                        "nested": {"b": [1, "x", True, None], "a": "<&>"},
                    },
                }
            },
            {"id": "call_2", "function": {"index": 1, "name": "noop", "arguments": {}}},
        ],
    },
    {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
    {"role": "tool", "content": "22C", "tool_name": "get_weather", "tool_call_id": "call_1"},
    {"role": "assistant", "content": "Sunny, 22C."},
    {"role": "user", "content": "Thanks"},
]

# name -> (messages, tools, think)
DATASETS: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]] | None, bool | None]] = {
    **{name: (msgs, None, None) for name, msgs in CONVERSATIONS.items()},
    "tool-calls": (TOOL_CONVERSATION, TOOLS, True),
    "merged-roles": (
        [
            {"role": "system", "content": "A"},
            {"role": "system", "content": "B"},
            {"role": "user", "content": "u1"},
            {"role": "user", "content": "u2"},
            {"role": "assistant", "content": "a1"},
            {"role": "assistant", "content": "a2"},
        ],
        None,
        False,
    ),
    "prefill": (
        [
            {"role": "user", "content": "Hello friend!"},
            {"role": "assistant", "content": "Hello human!"},
            {"role": "user", "content": "What is your name?"},
            {"role": "assistant", "content": "My name is Ollama and I"},
        ],
        None,
        None,
    ),
    "late-system": (
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"},
            {"role": "system", "content": "now be formal"},
            {"role": "user", "content": "hello"},
        ],
        [],
        None,
    ),
    "unicode": (
        [{"role": "user", "content": 'héllo 世界 <b>&amp;</b> "q" \\ \t tab\n\nnl'}],
        None,
        None,
    ),
    "empty": ([], None, None),
}

_MISTRAL_SYSTEM = "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}"
_CHATML_LEGACY = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"
)

# Templates beyond the module's own: those of Ollama's TestExecuteWithMessages and
# TestExecuteWithSuffix, the conftest Gemma template, and one or more per construct.
EDGE_TEMPLATES: dict[str, str] = {
    "mistral-no-response": _MISTRAL_SYSTEM + "{{ .Prompt }}[/INST] ",
    "mistral-response": _MISTRAL_SYSTEM + "{{ .Prompt }}[/INST] {{ .Response }}",
    "mistral-messages": _MISTRAL_SYSTEM + "\n{{- range .Messages }}\n"
    '{{- if eq .Role "user" }}{{ .Content }}[/INST] '
    '{{ else if eq .Role "assistant" }}{{ .Content }}[INST] {{ end }}\n{{- end }}',
    "mistral-assistant": "\n{{- range $i, $m := .Messages }}\n"
    '{{- if eq .Role "user" }}[INST] {{ .Content }}[/INST] '
    '{{ else if eq .Role "assistant" }}{{ .Content }}{{ end }}\n{{- end }}',
    "chatml-legacy": _CHATML_LEGACY,
    "chatml-index": "\n{{- range $index, $_ := .Messages }}<|im_start|>{{ .Role }}\n"
    "{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n",
    "suffix": "{{- if .Suffix }}<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>\n"
    "{{- else }}{{ .Prompt }}\n{{- end }}",
    "gemma-conftest": '{{- range .Messages }}<start_of_turn>{{ if eq .Role "assistant" }}model'
    "{{ else }}{{ .Role }}{{ end }}\n{{ .Content }}<end_of_turn>\n{{ end }}"
    "<start_of_turn>model\n",
    "legacy-system-prompt": "{{ .System }} {{ .Prompt }}",
    "legacy-system-only": "{{ .System }}",
    "legacy-if": "{{ if .System }}<<SYS>>{{ .System }}<</SYS>>\n{{ end }}"
    "[INST] {{ .Prompt }} [/INST]",
    "legacy-response-middle": "A{{ .Prompt }}B{{ .Response }}C{{ if .System }}S{{ end }}D",
    "legacy-vars": "{{ $p := .Prompt }}<{{ $p }}>{{ .Response }}</{{ $p }}>",
    "legacy-think": "{{ .Think }} {{ .IsThinkSet }} {{ .Prompt }}",
    "chain-hides-messages": "{{ if .Prompt }}{{ .Prompt }}{{ else }}"
    "{{ (index .Messages 0).Content }}{{ end }}",
    "messages-in-var": "{{ $m := .Messages }}{{ range $m }}{{ .Content }}{{ end }}",
    "paren-messages": "{{ if (len .Messages) }}{{ range .Messages }}{{ .Content }}{{ end }}"
    "{{ end }}",
    "tools-print": "{{ range .Messages }}{{ end }}T={{ .Tools }}|J={{ json .Tools }}|"
    "{{ range .Tools }}{{ .Function.Name }}:{{ .Function.Parameters.Properties }};"
    "{{ .Function.Parameters }};{{ .Function }};{{ . }}{{ end }}",
    "tools-props": "{{- range .Messages }}{{ end }}{{ range .Tools }}"
    "{{ range $name, $p := .Function.Parameters.Properties }}{{ $name }}:{{ $p.Type }}:"
    "{{ toTypeScriptType $p }}:{{ $p.ToTypeScriptType }}:{{ $p.Description }}:{{ $p.Enum }}:"
    "{{ len $p.AnyOf }}:{{ json $p }}|{{ end }}{{ .Function.Parameters.Required }}{{ end }}",
    "tool-calls": "{{ range .Messages }}[{{ .Role }}]{{ .Content }}"
    "{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}"
    "{{ range $i, $c := .ToolCalls }}#{{ $i }} {{ $c.ID }} {{ .Function.Index }} "
    "{{ .Function.Name }} {{ .Function.Arguments }} {{ json .Function.Arguments }} "
    "{{ range $k, $v := .Function.Arguments }}{{ $k }}={{ $v }},{{ end }}{{ end }}"
    "{{ if .ToolName }}({{ .ToolName }}){{ end }}{{ .ToolCallID }}\n{{ end }}",
    "index-map": "{{ range .Messages }}{{ range .ToolCalls }}"
    '{{ index .Function.Arguments "city" }}{{ index .Function.Arguments "missing" }}'
    '{{ .Function.Arguments.city }}{{ index .Function.Arguments "nested" "b" 1 }}'
    "{{ end }}{{ end }}",
    "message-structs": "{{ range .Messages }}{{ . }}|{{ .ToolCalls }}|{{ json . }}\n{{ end }}"
    "{{ json .Messages }}",
    "printf-structs": '{{ range .Messages }}{{ printf "%v" .ToolCalls }}{{ print .ToolCalls }}'
    "{{ end }}",
    "think": "{{ range .Messages }}{{ end }}{{ .Think }} {{ .IsThinkSet }} [{{ .ThinkLevel }}] "
    "{{ if .Think }}yes{{ else }}no{{ end }}",
    "missing-keys": "{{ range .Messages }}{{ end }}[{{ .Prompt }}][{{ .Nope }}][{{ .System }}]"
    "[{{ .Response }}][{{ if .Nope }}x{{ end }}][{{ .Tools }}][{{ len .Messages }}]",
    "nil-compare": "{{ range .Messages }}{{ end }}{{ eq .Nope nil }}{{ ne .System nil }}"
    "{{ if eq .Nope .Nada }}same{{ end }}",
    "funcs": "{{- range $i, $m := .Messages }}{{ $i }}{{ if gt $i 0 }},{{ end }}{{ len .Content }}"
    "{{ if and (ge $i 1) (lt $i 3) }}A{{ end }}"
    '{{ if or (eq $i 0) (ne .Role "user") }}O{{ end }}{{ if not .Content }}E{{ end }}'
    '{{ index $.Messages 0 | printf "%v" | len }}{{ (index $.Messages $i).Role }}'
    "{{ slice .Content 0 2 }}{{ end }}"
    '|{{ and 1 "x" }}|{{ or 0 "" }}|{{ or 0 "y" }}|{{ and 0 1 }}|{{ print 1 2 "a" 3 "b" }}'
    '|{{ println 1 "a" }}|{{ printf "%s-%d-%q-%v-%t-%5.2f-%x-%05d-%-4s|" "s" 42 "q\\"" 1.5 '
    'true 3.14159 255 42 "ab" }}{{ printf "%d" }}{{ printf "%s" 1 2 }}'
    '|{{ eq 1 1 2 }}{{ eq "a" "b" "a" }}{{ ne 1 2 }}|{{ html "<a href=\'x\'>&" }}'
    '|{{ js "a\'b\\"<>" }}|{{ urlquery "a b&c" }}|{{ index "abc" 1 }}|{{ slice "héllo" 1 3 }}'
    "|{{ len \"héllo\" }}|{{ 1.5 }} {{ 1e6 }} {{ 1e-5 }} {{ 123456.0 }} {{ 0x1F }} {{ 'a' }} "
    "{{ -3 }} {{ true }}",
    "printf": "{{ range .Messages }}{{ end }}"
    '{{ printf "%f|%e|%.2g|%g|%8.3s|%+d|%x|%X|%c|%q|%5t|%-5d|%05.1f|%s|%d|%v|%v" '
    '3 1.5 3.14159 1e7 "abcdef" 5 "hi" 255 65 66 true 7 2.25 .Think 1.5 .Tools .System }}',
    "nil-handling": "{{ range .Messages }}{{ if false }}{{ nil }}{{ end }}"
    '{{ html .Nope }}{{ js (index $.Messages 0) "s" nil }}{{ urlquery nil 1 }}'
    '{{ printf "%v-%v" 1 }}{{ printf "%v" 1 nil 2 }}{{ end }}',
    "slices": "{{ range .Messages }}{{ end }}{{ len (slice .Messages 1) }}"
    "{{ range slice .Messages 0 1 }}{{ .Role }}{{ end }}{{ len $.Tools }}"
    '{{ printf "%v|%s" .Tools .System }}',
    "last-turn": "{{- range $i, $_ := .Messages }}"
    "{{- $last := eq (len (slice $.Messages $i)) 1 -}}"
    "{{ if $last }}LAST:{{ .Role }}{{ end }}{{ end }}",
    "vars-scope": "{{ $x := 1 }}{{ range .Messages }}{{ $x = 2 }}{{ $y := 3 }}{{ $x }}{{ $y }}"
    "{{ end }}{{ $x }}{{ if true }}{{ $x := 5 }}{{ $x }}{{ end }}{{ $x }}"
    '{{ with $z := "w" }}{{ $z }}{{ . }}{{ end }}',
    "control": '{{ range .Messages }}{{ if eq .Role "assistant" }}{{ continue }}{{ end }}'
    '{{ if eq .Role "tool" }}{{ break }}{{ end }}{{ .Role }};{{ end }}'
    "{{ range .Nothing }}x{{ else }}empty{{ end }}{{ range 3 }}{{ . }}{{ end }}"
    "{{ with .Nothing }}n{{ else with .System }}s={{ . }}{{ else }}none{{ end }}"
    "{{ with .Messages }}{{ len . }}{{ end }}",
    "nested-control": "{{ range $i, $m := .Messages }}{{ range $.Messages }}"
    '{{ if eq .Role "assistant" }}{{ break }}{{ end }}{{ .Role }},{{ end }}'
    "{{ with $m.Content }}{{ if eq $i 0 }}{{ continue }}{{ else if eq $i 1 }}one:{{ . }}"
    "{{ else }}{{ $i }}{{ end }}{{ end }}|{{ end }}"
    "{{ range .Messages }}{{ else }}no messages{{ end }}",
    "dollar": "{{ range .Messages }}{{ $.System }}{{ range $.Messages }}{{ $.System }}.{{ end }}"
    "{{ end }}{{ $ | len }}",
    "pipes": '{{ range .Messages }}{{ .Content | len | printf "%03d" }} {{ .Role | eq "user" }} '
    '{{ "x" | printf "%s%s" "y" }} {{ (len .Content) }}{{ end }}',
    "cmdr-like": "{{- if or .Tools .System }}SYS{{ if .Tools }}T{{ end }}{{ end }}"
    "{{ range .Messages }}{{ if $.Tools }}t{{ end }}{{ end }}",
    "trim": 'a  {{- /* comment */ -}}  b {{- " c " -}} \n\n d{{/* x */}}e {{ 1 -}}\n f {{- 2 }} '
    "g{{ -3 }}{{- range .Messages }}\n  {{ .Role }}\n{{- end }}",
    "whitespace": "  {{- range .Messages -}}  \n\t[{{- .Role -}}]\n  {{- end -}}  \n\n  X  "
    '{{- "" }}\r\n{{ "" -}}\r\n  Y',
    "strings": '{{ "tab\\tnl\\n\\u00e9\\x41\\101" }}{{ `raw\\n}}` }}{{ printf "%s" `}}` }}'
    '{{ `"quoted"` }}{{ "\\"" }}',
    "json-misc": "{{ range .Messages }}{{ end }}{{ json .System }}{{ json 1.5 }}{{ json 1e21 }}"
    '{{ json nil }}{{ json "<\\u2028>" }}{{ json .Think }}{{ json .Nope }}',
    "date-funcs": "{{ range .Messages }}{{ end }}"
    '{{ len currentDate }}{{ len (yesterdayDate "x") }}',
}

# Templates both implementations must refuse, at parse or at execution.
ERROR_TEMPLATES: dict[str, str] = {
    "unclosed-action": "{{ .Prompt ",
    "unknown-function": "{{ foo .Prompt }}",
    "missing-end": "{{ if .Prompt }}x",
    "unexpected-end": "x{{ end }}",
    "undefined-variable": "{{ $nope }}",
    "unknown-message-field": "{{ range .Messages }}{{ .Nope }}{{ end }}",
    "field-of-string": "{{ range .Messages }}{{ .Role.Name }}{{ end }}",
    "break-outside-range": "{{ break }}",
    "named-templates": '{{define "x"}}{{template "x"}}{{end}}{{template "x"}}',
    "eq-string-int": "{{ range .Messages }}{{ if eq .Role 1 }}x{{ end }}{{ end }}",
    "lt-bools": "{{ range .Messages }}{{ if lt true false }}x{{ end }}{{ end }}",
    "index-out-of-range": "{{ range .Messages }}{{ index $.Messages 99 }}{{ end }}",
    "slice-inverted": "{{ range .Messages }}{{ slice .Content 5 1 }}{{ end }}",
    "nil-command": "{{ nil }}",
    "index-nil": "{{ index nil }}",
    "len-of-int": "{{ range .Messages }}{{ len 3 }}{{ end }}",
    "argument-to-field": "{{ range .Messages }}{{ .Role 1 }}{{ end }}",
    "unterminated-string": '{{ "abc }}',
    "bad-number": "{{ 1x2 }}",
    "comment-after-space": "{{ /* not a comment here */ }}",
    "unclosed-paren": "{{ (len .Prompt }}",
    "empty-action": "{{ }}",
    "if-without-value": "{{ if }}x{{ end }}",
    "field-of-nil": "{{ range .Messages }}{{ end }}{{ .Nope.Deeper }}",
    "range-int-two-vars": "{{ range .Messages }}{{ end }}{{ range $i, $v := 2 }}{{ end }}",
}

CORPUS: dict[str, tuple[str, str]] = {}  # case id -> (template, dataset)
for _name, _text in sorted(EDGE_TEMPLATES.items()):
    for _dataset in DATASETS:
        CORPUS[f"{_name}/{_dataset}"] = (_text, _dataset)
for _name, _text in sorted(ERROR_TEMPLATES.items()):
    CORPUS[f"error:{_name}"] = (_text, "tool-calls")


def _random_template(rng: random.Random) -> str:
    """A random, mostly well-typed template over .Messages: control flow, functions, trimming."""
    strings = [".Role", ".Content", "$.System", '"s"', '""', ".Thinking", ".ToolName", '"user"']
    ints = ["$i", "1", "0", "-1", "(len .Content)", "(len $.Messages)", "(len .ToolCalls)"]
    others = ["$.Tools", ".ToolCalls", "$x", "true", "$.Think", ".", "2.5"]

    def string(d: int) -> str:
        if d > 2 or rng.random() < 0.6:
            return rng.choice(strings)
        return rng.choice(
            [
                f'(printf "%s|%d" {string(d + 1)} {integer(d + 1)})',
                f"(print {value(d + 1)} {value(d + 1)})",
                f"(slice {string(d + 1)} 0 {rng.choice(['0', '1'])})",
                f"(json {value(d + 1)})",
                f"(html {string(d + 1)})",
                "(index $.Messages 0).Content",
            ]
        )

    def integer(d: int) -> str:
        return rng.choice(ints) if d > 2 or rng.random() < 0.7 else f"(len {string(d + 1)})"

    def boolean(d: int) -> str:
        if d > 2 or rng.random() < 0.3:
            return rng.choice(["true", "$.Think", "(not .Content)", "$.IsThinkSet"])
        a, b = rng.choice([(string, string), (integer, integer), (value, value)])
        op = {string: ["eq", "ne", "lt", "ge"], integer: ["eq", "ne", "lt", "le", "gt", "ge"]}
        return f"({rng.choice(op.get(a, ['and', 'or']))} {a(d + 1)} {b(d + 1)})"

    def other(d: int) -> str:
        return rng.choice(others)

    def value(d: int) -> str:
        return rng.choice([string, integer, boolean, other])(d)

    def statement(d: int) -> str:
        r = rng.random()
        if d > 2 or r < 0.4:
            left, right = rng.choice(["{{", "{{- "]), rng.choice(["}}", " -}}"])
            return rng.choice(
                ["txt ", "\n", " \n ", f"{left}{value(0)}{right}", f"{{{{ $x = {value(0)} }}}}"]
            )
        if r < 0.6:
            out = f"{{{{ if {boolean(0)} }}}}{block(d + 1)}"
            if rng.random() < 0.3:
                out += f"{{{{ else if {boolean(0)} }}}}{block(d + 1)}"
            return (
                out + (f"{{{{ else }}}}{block(d + 1)}" if rng.random() < 0.5 else "") + "{{ end }}"
            )
        if r < 0.75:
            return f"{{{{ with {value(0)} }}}}{block(d + 1)}{{{{ end }}}}"
        loop = rng.choice(["", "", f"{{{{ if {boolean(0)} }}}}{{{{ break }}}}{{{{ end }}}}"])
        loop += rng.choice(["", f"{{{{ if {boolean(0)} }}}}{{{{ continue }}}}{{{{ end }}}}"])
        source = rng.choice(["$.Messages", "(slice $.Messages 1)"])
        tail = "{{ else }}E{{ end }}" if rng.random() < 0.3 else "{{ end }}"
        return f"{{{{ range $j, $m := {source} }}}}{loop}{block(d + 1)}{tail}"

    def block(d: int) -> str:
        return "".join(statement(d) for _ in range(rng.randint(1, 3)))

    return f"{{{{ $x := 0 }}}}{{{{ range $i, $m := .Messages }}}}{block(0)}{{{{ end }}}}"


_rng = random.Random(20240611)  # noqa: S311 - a fixed seed, so the corpus is the same every run
for _n in range(300):
    CORPUS[f"random:{_n}"] = (_random_template(_rng), _rng.choice(list(DATASETS)))


def _module_templates() -> dict[str, str]:
    tdir = _template_dir()
    return {
        p.name: p.read_bytes().replace(b"\r\n", b"\n").decode()
        for p in sorted(tdir.glob("*.gotmpl"))
    }


@pytest.fixture(scope="session")
def oracle_results() -> dict[str, dict[str, str]]:
    """Every corpus case rendered by Ollama's own template package, in one process run."""
    if not (os.access(ORACLE, os.X_OK)):
        subprocess.run(["bash", str(SETUP)], check=True, cwd=ROOT)
    cases = dict(CORPUS)
    for name, text in _module_templates().items():
        for dataset in DATASETS:
            cases[f"{name}/{dataset}"] = (text, dataset)
    requests = []
    for text, dataset in cases.values():
        messages, tools, think = DATASETS[dataset]
        requests.append({"template": text, "messages": messages, "tools": tools, "think": think})
    out = subprocess.run(
        [str(ORACLE)], input=json.dumps(requests), capture_output=True, text=True, check=True
    )
    return dict(zip(cases, json.loads(out.stdout), strict=True))


def _corpus_ids() -> list[str]:
    ids = list(CORPUS)
    ids += [f"{name}/{dataset}" for name in _module_templates() for dataset in DATASETS]
    return ids


@pytest.mark.parametrize("case", _corpus_ids())
def test_matches_ollama(case: str, oracle_results: dict[str, dict[str, str]]) -> None:
    """Our rendering equals Ollama's byte for byte; where Ollama fails, we raise TemplateError."""
    if case in CORPUS:
        text, dataset = CORPUS[case]
    else:
        name, _, dataset = case.rpartition("/")
        text = _module_templates()[name]
    messages, tools, think = DATASETS[dataset]
    expected = oracle_results[case]

    if "error" in expected:
        with pytest.raises(TemplateError):
            render_template(text, messages=messages, tools=tools, think=think)
        return
    got = render_template(text, messages=messages, tools=tools, think=think)
    assert got == expected["output"]
