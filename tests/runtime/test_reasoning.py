"""Reasoning output: the thinking markers a template writes, the parser that splits thoughts
from the answer, and Ollama's ``think`` / ``message.thinking`` and OpenAI's
``reasoning_content`` through the real clients against the real server running SmolLM2.

No small thinking model ships on PyPI, so the server is given a ChatML TEMPLATE that renders
thoughts as ``<think>...</think>`` (tests/fixtures/thinking-templates/chatml-think.gotmpl); its
generation prompt ends with ``<think>`` when thinking is on, as Qwen3's thinking models do, and
with an empty ``<think></think>`` when it is off. SmolLM2 does not close a thought by itself, so
the tests that need a whole one take the model's real output forced into the thinking shape by
a grammar (the OpenAI routes' ``grammar`` field); the others use its free greedy output.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
from slm_runtime.prompt import PromptBuilder
from slm_runtime.template import render_template
from slm_runtime.thinking import (
    NoThinkingError,
    ReplyParser,
    ThinkingParser,
    request_think,
    think_from_effort,
)
from slm_runtime.tools import ToolParser

from tests.runtime.conftest import Server, serve, smollm2_config

pytestmark = pytest.mark.runtime

MODEL = "smollm2"
TEMPLATE = (
    Path(__file__).resolve().parents[1] / "fixtures" / "thinking-templates" / "chatml-think.gotmpl"
).read_text(encoding="utf-8")
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY: dict[str, Any] = {"temperature": 0, "seed": 7}
# The thinking shape: a thought, the closing marker (the prompt holds the opening one), a line
# of answer. The characters are left to the model.
GRAMMAR = (
    'root ::= thought "</think>" "\\n" answer\n'
    "thought ::= [A-Za-z ,.']{10,60}\n"
    "answer ::= [A-Za-z ,.']{1,60}\n"
)
SHAPE = re.compile(r"([A-Za-z ,.']{10,60})</think>\n([A-Za-z ,.']{1,60})")
# A Hugging Face template that writes thoughts as Qwen3's does: the markers around the last
# assistant turn whether or not it has a thought, an empty thought when thinking is off.
QWEN3_LIKE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' and loop.last %}<think>\n"
    "{{ (m.reasoning_content or '').strip() }}\n</think>\n\n{% endif %}"
    "{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _builder(template: str | None = None, jinja: str | None = None) -> PromptBuilder:
    return PromptBuilder(
        template=template, system=None, model_template=jinja, bos_token="", eos_token=""
    )


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _split(parser: ThinkingParser, pieces: list[str]) -> tuple[str, str]:
    thinking = content = ""
    for piece in pieces:
        thought, text = parser.add(piece)
        thinking, content = thinking + thought, content + text
    thought, text = parser.finish()
    return thinking + thought, content + text


# --- the markers and the parser -------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "jinja", "markers"),
    [
        (TEMPLATE, None, ("<think>", "</think>")),
        (None, QWEN3_LIKE, ("<think>", "</think>")),
        (None, CHATML, None),
        ("{{ .Prompt }}", None, None),
    ],
    ids=["go-template", "qwen3-like-jinja", "chatml-no-thoughts", "legacy-prompt"],
)
def test_markers_come_from_the_template(
    template: str | None, jinja: str | None, markers: tuple[str, str] | None
) -> None:
    assert _builder(template, jinja).thinking_markers() == markers


def test_think_renders_the_templates_thinking_and_no_thinking_prompts() -> None:
    on = _builder(TEMPLATE).chat(QUESTION, think=True)
    off = _builder(TEMPLATE).chat(QUESTION, think=False)
    assert on.endswith("<|im_start|>assistant\n<think>\n")
    assert off.endswith("<|im_start|>assistant\n<think></think>\n")
    assert (
        _builder(None, QWEN3_LIKE).chat(QUESTION, think=False).endswith("<think>\n\n</think>\n\n")
    )


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 100])
def test_the_parser_splits_thoughts_with_markers_split_across_pieces(size: int) -> None:
    output = "  <think>\n I weigh it.\n</think>\n\nParis is the capital."
    parser = ThinkingParser("<think>", "</think>")
    assert _split(parser, _pieces(output, size)) == ("I weigh it.\n", "Paris is the capital.")


def test_a_thought_with_no_closing_marker_is_all_thinking() -> None:
    parser = ThinkingParser("<think>", "</think>")
    assert _split(parser, _pieces("<think>still weighing it </thi", 4)) == (
        "still weighing it </thi",
        "",
    )


def test_text_before_the_opening_marker_means_no_thought_as_in_ollama() -> None:
    parser = ThinkingParser("<think>", "</think>")
    output = "Sure. <think>not a thought</think> end"
    assert _split(parser, _pieces(output, 3)) == ("", output)
    # White space alone, or the start of the marker, is held until it is known.
    assert ThinkingParser("<think>", "</think>").add(" \n<thi") == ("", "")
    assert _split(ThinkingParser("<think>", "</think>"), [" <thi"]) == ("", " <thi")


def test_an_opening_marker_in_the_prompt_starts_the_output_in_the_thought() -> None:
    builder = _builder(TEMPLATE)
    parser = builder.thinking_parser(builder.chat(QUESTION, think=True))
    assert parser is not None
    assert parser.inside
    assert _split(parser, _pieces("Hmm, France.</think>\nParis.", 2)) == ("Hmm, France.", "Paris.")
    off = builder.thinking_parser(builder.chat(QUESTION, think=False))
    assert off is not None
    assert not off.inside


def test_the_content_after_the_thought_goes_to_the_tool_parser() -> None:
    output = '<think>They ask the weather.</think>\n{"name": "get_weather", "arguments": {"a": 1}}'
    for size in (1, 4, len(output)):
        parser = ReplyParser(
            ThinkingParser("<think>", "</think>"), ToolParser("{", ["get_weather"])
        )
        thinking, content, calls = "", "", []
        for piece in [*(parser.add(p) for p in _pieces(output, size)), parser.finish()]:
            thinking, content, calls = (
                thinking + piece.thinking,
                content + piece.content,
                calls + piece.calls,
            )
        assert thinking == "They ask the weather."
        assert content == ""
        assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"a": 1})]


@pytest.mark.parametrize(
    ("value", "thinks", "expected"),
    [
        (None, True, True),
        (False, True, False),
        ("low", True, True),
        (None, False, None),
        (False, False, False),
    ],
)
def test_think_defaults_as_ollama(value: bool | str | None, thinks: bool, expected: bool) -> None:
    assert request_think(value, thinks) is expected


@pytest.mark.parametrize("value", [True, "high", "max"])
def test_think_on_for_a_model_that_does_not_think_is_refused(value: bool | str) -> None:
    with pytest.raises(NoThinkingError):
        request_think(value, False)


def test_reasoning_effort_maps_as_ollamas_openai_compatibility() -> None:
    assert [think_from_effort(e) for e in (None, "none", "minimal", "high", "xhigh")] == [
        None,
        False,
        "low",
        "high",
        "max",
    ]
    with pytest.raises(ValueError, match="reasoning_effort"):
        think_from_effort("extreme")


# --- the routes, with the real model -----------------------------------------------------------


@pytest.fixture(scope="module")
def server(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """SmolLM2 with a TEMPLATE that renders thoughts."""
    yield from serve(
        tmp_path_factory, "thinking", smollm2_config(smollm2_gguf, TEMPLATE, numPredict=60)
    )


@pytest.fixture(scope="module")
def plain(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """SmolLM2 with its own chat template, which renders no thoughts."""
    yield from serve(tmp_path_factory, "plain", smollm2_config(smollm2_gguf, numPredict=60))


def _chat(server: Server, messages: list[Any], options: dict[str, Any], **fields: Any) -> Any:
    """One non-streamed Ollama /api/chat answer, as JSON."""
    body = {"model": MODEL, "messages": messages, "stream": False, "options": options, **fields}
    return httpx.post(server.url + "/api/chat", json=body, timeout=120).json()


def _openai(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_openai_returns_reasoning_content_of_real_output_forced_into_the_thinking_shape(
    server: Server,
) -> None:
    """Real model output forced into the thinking shape by a grammar: what the model writes
    before ``</think>`` is ``reasoning_content``, the rest ``content``, streamed or not; the raw
    completion of the same prompt, fed to the parser token by token, splits the same way."""
    client = _openai(server)
    grammar = {"grammar": GRAMMAR}
    answer = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,  # type: ignore[arg-type]
        extra_body=grammar,
        **GREEDY,
    )
    message = answer.model_dump()["choices"][0]["message"]
    thought, content = message["reasoning_content"], message["content"]
    assert thought
    assert content
    raw = client.completions.create(
        model=MODEL,
        prompt=render_template(TEMPLATE, messages=QUESTION, think=True),
        max_tokens=60,
        extra_body=grammar,
        **GREEDY,
    ).choices[0]
    shape = SHAPE.fullmatch(raw.text)
    assert shape is not None, raw.text
    assert (thought, content) == (shape.group(1).lstrip(), shape.group(2).lstrip())

    stream = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,  # type: ignore[arg-type]
        stream=True,
        extra_body=grammar,
        **GREEDY,
    )
    deltas = [chunk.choices[0].delta.model_dump() for chunk in stream if chunk.choices]
    streamed_thought = "".join(d.get("reasoning_content") or "" for d in deltas)
    streamed_content = "".join(d.get("content") or "" for d in deltas)
    assert (streamed_thought, streamed_content) == (thought, content)
    assert all(not (d.get("reasoning_content") and d.get("content")) for d in deltas)
    assert sum(bool(d.get("reasoning_content")) for d in deltas) > 1

    tokens = [
        chunk.choices[0].text
        for chunk in client.completions.create(
            model=MODEL,
            prompt=render_template(TEMPLATE, messages=QUESTION, think=True),
            max_tokens=60,
            stream=True,
            extra_body=grammar,
            **GREEDY,
        )
        if chunk.choices
    ]
    assert "".join(tokens) == raw.text
    assert _split(ThinkingParser("<think>", "</think>", inside=True), tokens) == (thought, content)


def test_ollama_returns_thinking_of_the_models_free_output(server: Server) -> None:
    """Ollama's chat and generate think by default for a model that thinks: the prompt ends in
    the opening marker, and the model's real greedy output (read raw, with thinking off) is
    split as the parser splits it, streamed or not."""
    client = ollama.Client(host=server.url)
    prompt = render_template(TEMPLATE, messages=QUESTION, think=True)
    raw = client.generate(model=MODEL, prompt=prompt, raw=True, think=False, options=GREEDY)
    assert raw.thinking is None
    expected = ThinkingParser("<think>", "</think>", inside=True)
    thinking, content = _split(expected, [raw.response])
    assert thinking

    chat = client.chat(model=MODEL, messages=QUESTION, options=GREEDY)
    assert (chat.message.thinking, chat.message.content) == (thinking, content)
    parts = list(client.chat(model=MODEL, messages=QUESTION, options=GREEDY, stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == thinking
    assert "".join(p.message.content for p in parts) == content
    assert sum(bool(p.message.thinking) for p in parts) > 1

    generated = client.generate(model=MODEL, prompt=QUESTION[0]["content"], options=GREEDY)
    assert (generated.thinking, generated.response) == (thinking, content)
    show = client.show(MODEL)
    assert "thinking" in (show.capabilities or [])


def test_responses_return_the_thought_as_a_reasoning_item(server: Server) -> None:
    """The Responses API returns the model's free greedy thought (the one Ollama's chat
    returns) as a reasoning item before the message, streamed or not; effort none turns it off."""
    client = _openai(server)
    thinking = (
        ollama.Client(host=server.url)
        .chat(model=MODEL, messages=QUESTION, options=GREEDY)
        .message.thinking
    )
    answer = client.responses.create(model=MODEL, input=QUESTION[0]["content"], temperature=0)
    items = [item.model_dump() for item in answer.output]
    assert [item["type"] for item in items] == ["reasoning", "message"]
    assert items[0]["summary"] == []
    assert items[0]["content"] == [{"type": "reasoning_text", "text": thinking}]

    events = list(
        client.responses.create(
            model=MODEL, input=QUESTION[0]["content"], temperature=0, stream=True
        )
    )
    deltas = [e.delta for e in events if e.type == "response.reasoning_text.delta"]
    assert len(deltas) > 1
    assert "".join(deltas) == thinking
    done = [e.item.model_dump() for e in events if e.type == "response.output_item.done"]
    assert [item["type"] for item in done] == ["reasoning", "message"]
    assert done[0]["content"] == items[0]["content"]

    off = client.responses.create(
        model=MODEL,
        input=QUESTION[0]["content"],
        reasoning={"effort": "none"},
        max_output_tokens=16,
    )
    assert [item.type for item in off.output] == ["message"]


def test_think_false_renders_the_no_think_prompt_and_returns_no_thinking(server: Server) -> None:
    on = _chat(server, QUESTION, GREEDY)
    off = _chat(server, QUESTION, GREEDY, think=False)
    assert "thinking" in on["message"]
    assert "thinking" not in off["message"]
    # The no-think prompt holds the empty thought: more prompt tokens than the thinking one.
    assert off["prompt_eval_count"] > on["prompt_eval_count"]
    none = _openai(server).chat.completions.create(
        model=MODEL,
        messages=QUESTION,  # type: ignore[arg-type]
        reasoning_effort="none",  # type: ignore[arg-type]
        max_tokens=8,
        **GREEDY,
    )
    assert none.model_dump()["choices"][0]["message"].get("reasoning_content") is None
    assert none.usage is not None
    assert none.usage.prompt_tokens == off["prompt_eval_count"]


def test_json_output_turns_thinking_off(server: Server) -> None:
    """A JSON format holds the output to JSON from its first token, so the prompt is the
    no-think one and there is no thought to return (Ollama instead thinks unconstrained first)."""
    reply = _chat(server, QUESTION, {**GREEDY, "num_predict": 24}, format="json")
    off = _chat(server, QUESTION, {"num_predict": 1}, think=False)
    assert "thinking" not in reply["message"]
    assert reply["message"]["content"].lstrip().startswith("{")
    assert reply["prompt_eval_count"] == off["prompt_eval_count"]
    answer = _openai(server).chat.completions.create(
        model=MODEL,
        messages=QUESTION,  # type: ignore[arg-type]
        response_format={"type": "json_object"},
        max_tokens=24,
        **GREEDY,
    )
    assert answer.model_dump()["choices"][0]["message"].get("reasoning_content") is None
    assert (answer.choices[0].message.content or "").lstrip().startswith("{")


def test_an_earlier_thought_is_rendered_back(server: Server) -> None:
    """An assistant turn's thought, as Ollama's ``thinking`` or OpenAI's ``reasoning_content``,
    goes back into the prompt where the template writes it."""
    turn = [
        *QUESTION,
        {"role": "assistant", "content": "Paris.", "thinking": "An easy one."},
        {"role": "user", "content": "And of Spain?"},
    ]
    without = [*QUESTION, {"role": "assistant", "content": "Paris."}, turn[-1]]
    counts = []
    for messages in (turn, without):
        counts.append(_chat(server, messages, {"num_predict": 1})["prompt_eval_count"])
    openai_turn = [{**m} for m in turn]
    openai_turn[1] = {"role": "assistant", "content": "Paris.", "reasoning_content": "An easy one."}
    reply = _openai(server).chat.completions.create(
        model=MODEL,
        messages=openai_turn,  # type: ignore[arg-type]
        max_tokens=1,
    )
    assert reply.usage is not None
    assert counts[0] > counts[1]
    assert reply.usage.prompt_tokens == counts[0]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", {"messages": QUESTION, "think": True}),
        ("/api/chat", {"messages": QUESTION, "think": "high"}),
        ("/api/generate", {"prompt": "hi", "think": True}),
    ],
)
def test_think_for_a_model_that_does_not_think_is_a_400_as_in_ollama(
    plain: Server, path: str, body: dict[str, Any]
) -> None:
    reply = httpx.post(plain.url + path, json={"model": MODEL, "stream": False, **body}, timeout=60)
    assert reply.status_code == 400
    assert reply.json() == {"error": f"{json.dumps(MODEL)} does not support thinking"}


def test_the_openai_route_refuses_reasoning_effort_a_model_cannot_honour(
    plain: Server, server: Server
) -> None:
    for target, effort, says in (
        (plain, "high", "does not support thinking"),
        (server, "extreme", "reasoning_effort"),
    ):
        reply = httpx.post(
            target.url + "/v1/chat/completions",
            json={"model": MODEL, "messages": QUESTION, "reasoning_effort": effort},
            timeout=60,
        )
        assert reply.status_code == 400, reply.text
        assert says in reply.json()["error"]["message"]
    refused = httpx.post(
        plain.url + "/v1/responses",
        json={"model": MODEL, "input": "hi", "reasoning": {"effort": "high"}},
        timeout=60,
    )
    assert refused.status_code == 400, refused.text
    assert "reasoning.effort" in refused.json()["error"]["message"]
    bad_think = httpx.post(
        server.url + "/api/chat", json={"model": MODEL, "messages": QUESTION, "think": "deep"}
    )
    assert bad_think.status_code == 400
    assert "think" in bad_think.json()["error"]


def test_a_model_that_does_not_think_answers_without_thoughts_by_default(plain: Server) -> None:
    client = ollama.Client(host=plain.url)
    chat = client.chat(model=MODEL, messages=QUESTION, options={**GREEDY, "num_predict": 8})
    assert chat.message.thinking is None
    assert chat.message.content
    off = client.chat(model=MODEL, messages=QUESTION, think=False, options={"num_predict": 4})
    assert off.message.thinking is None
    answer = _openai(plain).chat.completions.create(
        model=MODEL,
        messages=QUESTION,  # type: ignore[arg-type]
        max_tokens=8,
        **GREEDY,
    )
    assert answer.model_dump()["choices"][0]["message"].get("reasoning_content") is None
    assert "thinking" not in (client.show(MODEL).capabilities or [])
