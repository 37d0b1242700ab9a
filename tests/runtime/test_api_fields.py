"""Request fields of both APIs against the real server: each field the server accepts and
ignores answers 200, each one it refuses a 400 in the API's shape naming the field, and the
supported fields no other test drives change the answer as they should."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.runtime.conftest import Server

pytestmark = pytest.mark.runtime

USER = [{"role": "user", "content": "Hi"}]
BASES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": "gemma", "messages": USER, "max_tokens": 2},
    "/v1/completions": {"model": "gemma", "prompt": "Hi", "max_tokens": 2},
    "/v1/embeddings": {"model": "gemma", "input": "Hi"},
    "/v1/responses": {"model": "gemma", "input": "Hi", "max_output_tokens": 16},
    "/api/generate": {
        "model": "gemma",
        "prompt": "Hi",
        "stream": False,
        "options": {"num_predict": 2},
    },
    "/api/chat": {
        "model": "gemma",
        "messages": USER,
        "stream": False,
        "options": {"num_predict": 2},
    },
    "/api/embed": {"model": "gemma", "input": "Hi"},
    "/api/embeddings": {"model": "gemma", "prompt": "Hi"},
    "/api/show": {"model": "gemma"},
}
# Options Ollama's clients may send that change nothing here: load settings fixed when the model
# was loaded, and sampling options Ollama's own engine does not read either.
IGNORED_OPTIONS = {
    "num_keep": 4,
    "typical_p": 0.5,
    "num_batch": 64,
    "num_gpu": 0,
    "main_gpu": 0,
    "use_mmap": False,
    "numa": False,
    "low_vram": False,
    "f16_kv": True,
    "logits_all": False,
    "vocab_only": False,
    "use_mlock": False,
    "embedding_only": False,
    "tfs_z": 1.0,
    "mirostat": 2,
    "mirostat_tau": 5.0,
    "mirostat_eta": 0.1,
    "penalize_newline": True,
}

IGNORED: list[tuple[str, dict[str, Any]]] = [
    ("/v1/chat/completions", {"user": "u-1", "safety_identifier": "s-1"}),
    ("/v1/chat/completions", {"metadata": {"team": "a"}, "store": True}),
    (
        "/v1/chat/completions",
        {"prompt_cache_key": "k", "prompt_cache_retention": "24h", "prompt_cache_options": {}},
    ),
    ("/v1/chat/completions", {"service_tier": "flex"}),
    ("/v1/chat/completions", {"prediction": {"type": "content", "content": "Hello"}}),
    ("/v1/chat/completions", {"modalities": ["text"], "verbosity": "medium"}),
    ("/v1/chat/completions", {"logit_bias": {}, "n": 1}),
    ("/v1/chat/completions", {"stream_options": {"include_obfuscation": False}}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi", "name": "ann"}]}),
    ("/v1/completions", {"user": "u-1", "logit_bias": {}, "best_of": 1, "n": 1}),
    ("/v1/embeddings", {"user": "u-1"}),
    ("/v1/responses", {"user": "u-1", "safety_identifier": "s-1", "metadata": {"team": "a"}}),
    ("/v1/responses", {"store": True, "tools": [], "include": []}),
    ("/v1/responses", {"include": ["reasoning.encrypted_content"]}),
    (
        "/v1/responses",
        {"prompt_cache_key": "k", "prompt_cache_retention": "24h", "prompt_cache_options": {}},
    ),
    ("/v1/responses", {"service_tier": "flex", "stream_options": {"include_obfuscation": False}}),
    ("/v1/responses", {"text": {"verbosity": "medium"}, "truncation": "disabled"}),
    (
        "/v1/responses",
        {
            "access_programs": {},
            "background_options": {"completion_window": "soonest"},
            "context_management": [{"type": "compaction", "compact_threshold": 100000}],
            "image": {"context_compression": "auto"},
        },
    ),
    ("/api/generate", {"keep_alive": "5m", "truncate": True, "shift": False}),
    ("/api/generate", {"width": 64, "height": 64, "steps": 4}),
    ("/api/generate", {"options": {"num_predict": 2, **IGNORED_OPTIONS}}),
    ("/api/chat", {"keep_alive": 300, "truncate": False, "shift": True}),
    ("/api/chat", {"options": {"num_predict": 2, **IGNORED_OPTIONS}}),
    ("/api/embed", {"keep_alive": "1m", "options": {"num_batch": 64}}),
    ("/api/embeddings", {"keep_alive": "1m"}),
    ("/api/show", {"verbose": True, "system": "Be brief.", "template": "{{ .Prompt }}"}),
]

REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("/v1/chat/completions", {"n": 2}, "n: Input should be less than or equal to 1"),
    ("/v1/chat/completions", {"logit_bias": {"1": 5}}, "logit_bias: per-token biases"),
    ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs: logprobs must be true"),
    ("/v1/chat/completions", {"modalities": ["text", "audio"]}, "modalities, audio"),
    ("/v1/chat/completions", {"audio": {"voice": "alloy", "format": "wav"}}, "modalities, audio"),
    ("/v1/chat/completions", {"verbosity": "low"}, "verbosity: the model has no verbosity"),
    ("/v1/chat/completions", {"moderation": {"model": "omni-moderation-latest"}}, "moderation"),
    ("/v1/chat/completions", {"web_search_options": {}}, "web_search_options"),
    ("/v1/chat/completions", {"functions": [{"name": "f"}]}, "use tools and tool_choice"),
    ("/v1/chat/completions", {"function_call": "auto"}, "use tools and tool_choice"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        "content part type 'image_url' is not supported",
    ),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "function", "name": "f", "content": "1"}]},
        "messages.0.role",
    ),
    ("/v1/completions", {"best_of": 2}, "best_of: this server generates one completion"),
    ("/v1/completions", {"n": 2}, "n: Input should be less than or equal to 1"),
    ("/v1/completions", {"logit_bias": {"1": 5}}, "logit_bias"),
    ("/v1/completions", {"suffix": "end"}, "suffix is not supported"),
    ("/v1/completions", {"prompt": [1, 2, 3]}, "prompt"),
    ("/v1/completions", {"prompt": ["a", "b"]}, "exactly one prompt"),
    ("/v1/completions", {"echo": True, "logprobs": 1}, "logprobs with echo"),
    ("/v1/embeddings", {"input": [[1, 2]]}, "input"),
    ("/v1/embeddings", {"encoding_format": "int8"}, "encoding_format"),
    ("/v1/responses", {"moderation": {"model": "omni-moderation-latest"}}, "moderation"),
    ("/v1/responses", {"previous_response_id": "resp_1"}, "previous_response_id: this server"),
    ("/v1/responses", {"conversation": "conv_1"}, "conversation: this server keeps no"),
    ("/v1/responses", {"background": True}, "background: responses run in the foreground"),
    ("/v1/responses", {"prompt": {"id": "pmpt_1"}}, "prompt: stored prompt templates"),
    ("/v1/responses", {"text": {"verbosity": "low"}}, "text.verbosity: the model has no"),
    (
        "/v1/responses",
        {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
        "input.0.content.0.type: 'input_file' is not supported",
    ),
    ("/api/generate", {"context": [1, 2, 3]}, "context: answers here carry no context"),
    ("/api/generate", {"images": ["aGk="]}, "does not accept images"),
    ("/api/generate", {"suffix": "end"}, "suffix (fill-in-the-middle)"),
    ("/api/generate", {"format": "yaml"}, "format"),
    (
        "/api/chat",
        {"messages": [{"role": "user", "content": "Hi", "images": ["aGk="]}]},
        "does not accept images",
    ),
    ("/api/chat", {"options": {"num_predict": 2, "top_k": "many"}}, "options.top_k"),
    ("/api/embed", {"truncate": "yes"}, "truncate"),
]


def _post(server: Server, path: str, fields: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.url + path, json={**BASES[path], **fields}, timeout=120)


def _error(path: str, answer: httpx.Response) -> str:
    error = answer.json()["error"]
    if path.startswith("/v1/"):
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error"
        return str(error["message"])
    assert isinstance(error, str)
    return error


@pytest.mark.parametrize(("path", "fields"), IGNORED, ids=[f"{p} {sorted(f)}" for p, f in IGNORED])
def test_an_ignored_field_is_accepted(
    gemma_server: Server, path: str, fields: dict[str, Any]
) -> None:
    answer = _post(gemma_server, path, fields)
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(
    ("path", "fields", "says"), REFUSED, ids=[f"{p} {sorted(f)}" for p, f, _ in REFUSED]
)
def test_a_refused_field_is_a_400_naming_it(
    gemma_server: Server, path: str, fields: dict[str, Any], says: str
) -> None:
    answer = _post(gemma_server, path, fields)
    assert answer.status_code == 400, answer.text
    assert says in _error(path, answer)


def _generate(server: Server, prompt: str, options: dict[str, Any]) -> str:
    body = {"model": "gemma", "prompt": prompt, "raw": True, "stream": False, "options": options}
    answer = httpx.post(server.url + "/api/generate", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["response"])


def _complete(server: Server, prompt: str, fields: dict[str, Any]) -> str:
    body = {"model": "gemma", "prompt": prompt, "max_tokens": 12, **fields}
    answer = httpx.post(server.url + "/v1/completions", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["choices"][0]["text"])


REPETITIVE = "The cat sat on the mat. The cat sat on the mat. The cat"


@pytest.mark.parametrize(
    "option",
    [{"repeat_penalty": 2.0}, {"presence_penalty": 2.0}, {"frequency_penalty": 2.0}],
    ids=lambda option: next(iter(option)),
)
def test_ollama_penalties_change_a_greedy_answer(
    gemma_server: Server, option: dict[str, Any]
) -> None:
    greedy = {"temperature": 0, "num_predict": 12, "repeat_penalty": 1.0}
    plain = _generate(gemma_server, REPETITIVE, greedy)
    assert _generate(gemma_server, REPETITIVE, {**greedy, **option}) != plain
    # repeat_last_n 0 looks back at no token, so the repeat penalty has nothing to penalise.
    if "repeat_penalty" in option:
        assert (
            _generate(gemma_server, REPETITIVE, {**greedy, **option, "repeat_last_n": 0}) == plain
        )


@pytest.mark.parametrize("field", ["presence_penalty", "frequency_penalty"])
def test_openai_penalties_change_a_greedy_answer(gemma_server: Server, field: str) -> None:
    plain = _complete(gemma_server, REPETITIVE, {"temperature": 0})
    assert _complete(gemma_server, REPETITIVE, {"temperature": 0, field: 2.0}) != plain


@pytest.mark.parametrize(
    "option", [{"top_k": 1}, {"min_p": 1.0}, {"top_p": 0.001}], ids=lambda o: next(iter(o))
)
def test_ollama_truncation_samplers_leave_only_the_most_likely_token(
    gemma_server: Server, option: dict[str, Any]
) -> None:
    """At a high temperature different seeds sample different answers; top_k 1, min_p 1 and a
    tiny top_p each leave only the most likely token, so every seed answers the greedy text."""
    sampled = {"temperature": 1.5, "num_predict": 8, "repeat_penalty": 1.0}
    greedy = _generate(gemma_server, "Once upon a time", {**sampled, "temperature": 0})
    free = {_generate(gemma_server, "Once upon a time", {**sampled, "seed": s}) for s in (1, 2, 3)}
    assert len(free) > 1
    held = {
        _generate(gemma_server, "Once upon a time", {**sampled, **option, "seed": s})
        for s in (1, 2, 3)
    }
    assert held == {greedy}


def test_max_completion_tokens_bounds_the_answer(gemma_server: Server) -> None:
    body = {"model": "gemma", "messages": USER, "max_completion_tokens": 3, "temperature": 0}
    answer = httpx.post(gemma_server.url + "/v1/chat/completions", json=body, timeout=120).json()
    assert answer["usage"]["completion_tokens"] <= 3
    assert answer["choices"][0]["finish_reason"] == "length"


def test_echo_puts_the_prompt_before_the_completion(gemma_server: Server) -> None:
    plain = _complete(gemma_server, "Once upon a time", {"temperature": 0})
    echoed = _complete(gemma_server, "Once upon a time", {"temperature": 0, "echo": True})
    assert echoed == "Once upon a time" + plain


@pytest.mark.parametrize(
    ("fields", "rendered"),
    [
        (
            {},
            "<start_of_turn>system\nYou are a terse assistant who answers in one short sentence."
            "<end_of_turn>\n<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
        ),
        (
            {"system": "Be brief."},
            "<start_of_turn>system\nBe brief.<end_of_turn>\n<start_of_turn>user\nHi<end_of_turn>\n"
            "<start_of_turn>model\n",
        ),
        ({"system": "Be brief.", "template": "{{ .System }}|{{ .Prompt }}"}, "Be brief.|Hi"),
        ({"raw": True}, "Hi"),
    ],
    ids=["configured", "system", "template", "raw"],
)
def test_generate_renders_system_template_and_raw_as_debug_render_only_shows(
    gemma_server: Server, fields: dict[str, Any], rendered: str
) -> None:
    """``_debug_render_only`` answers the prompt the template rendered and generates nothing,
    as Ollama does; it shows what ``system``, ``template`` and ``raw`` do to the prompt."""
    body = {**BASES["/api/generate"], **fields, "_debug_render_only": True}
    answer = httpx.post(gemma_server.url + "/api/generate", json=body, timeout=120).json()
    assert answer["_debug_info"] == {"rendered_template": rendered, "image_count": 0}
    assert answer["response"] == ""
    assert answer["done"] is False
    assert "eval_count" not in answer


def test_chat_debug_render_only_answers_the_rendered_prompt(gemma_server: Server) -> None:
    messages = [{"role": "system", "content": "Be brief."}, *USER]
    body = {"model": "gemma", "messages": messages, "_debug_render_only": True}
    answer = httpx.post(gemma_server.url + "/api/chat", json=body, timeout=120).json()
    assert answer["_debug_info"]["rendered_template"] == (
        "<start_of_turn>system\nBe brief.<end_of_turn>\n<start_of_turn>user\nHi<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert answer["message"] == {"role": "", "content": ""}
    assert answer["done"] is False


@pytest.mark.parametrize("as_list", [True, False], ids=["list", "string"])
def test_ollama_stop_ends_the_answer_before_the_sequence(
    gemma_server: Server, as_list: bool
) -> None:
    greedy = {"temperature": 0, "num_predict": 12, "repeat_penalty": 1.0}
    text = _generate(gemma_server, "Once upon a time", greedy)
    word = text.split()[2]
    stop = [word] if as_list else word
    body = {
        "model": "gemma",
        "prompt": "Once upon a time",
        "raw": True,
        "stream": False,
        "options": {**greedy, "stop": stop},
    }
    answer = httpx.post(gemma_server.url + "/api/generate", json=body, timeout=120).json()
    assert answer["response"] == text[: text.index(word)]
    assert answer["done_reason"] == "stop"


def test_show_takes_the_model_under_its_deprecated_name_too(gemma_server: Server) -> None:
    by_name = httpx.post(gemma_server.url + "/api/show", json={"name": "gemma"}, timeout=60)
    by_model = httpx.post(gemma_server.url + "/api/show", json={"model": "gemma"}, timeout=60)
    assert by_name.status_code == 200, by_name.text
    assert by_name.json()["modelfile"] == by_model.json()["modelfile"]


def test_responses_echo_metadata_and_user(gemma_server: Server) -> None:
    fields = {"metadata": {"team": "a"}, "user": "u-1", "store": True}
    answer = _post(gemma_server, "/v1/responses", fields).json()
    assert answer["metadata"] == {"team": "a"}
    assert answer["user"] == "u-1"
    assert answer["store"] is False
