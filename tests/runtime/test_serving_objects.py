"""The serving objects on their own: OpenAIServing and OllamaServing over the real SmolLM2 GGUF
loaded by the real llama.cpp engine, called without HTTP; each answer typed, each refusal an
APIError with its status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from slm_runtime.api.ollama.protocol import (
    ChatRequest,
    ChatResponse,
    EmbedRequest,
    EmbedResponse,
    GenerateRequest,
    GenerateResponse,
    ShowRequest,
)
from slm_runtime.api.ollama.serving import OllamaServing
from slm_runtime.api.openai.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
)
from slm_runtime.api.openai.responses_protocol import Response, ResponseEvent, ResponseRequest
from slm_runtime.api.openai.serving import OpenAIServing
from slm_runtime.api.reply import ReplyBody
from slm_runtime.config import RuntimeConfig
from slm_runtime.engines import LoadResult, load_engine
from slm_runtime.errors import APIError
from slm_runtime.metrics import Metrics
from slm_runtime.state import RuntimeState

from tests.runtime.conftest import smollm2_config

pytestmark = pytest.mark.runtime

T = TypeVar("T")
STORY = [{"role": "user", "content": "Write a long story about a cat."}]
GREEDY = {"temperature": 0, "seed": 1}


@pytest.fixture(scope="module")
def loaded(smollm2_gguf: Path) -> Iterator[tuple[RuntimeConfig, LoadResult]]:
    """SmolLM2 loaded once for the module; each test builds its state on its own event loop."""
    config = RuntimeConfig.model_validate(smollm2_config(smollm2_gguf, numPredict=12))
    result = load_engine(config)
    yield config, result
    result.engine.close()


def run(loaded: tuple[RuntimeConfig, LoadResult], scenario: Callable[..., Awaitable[T]]) -> T:
    """``scenario(openai, ollama, state)`` on a fresh event loop, with the serving objects of
    a fresh state over the loaded engine."""
    config, result = loaded

    async def main() -> T:
        state = RuntimeState.loaded(config, result, Metrics(), 0.1, "sha256:" + "ab" * 32)
        return await scenario(OpenAIServing(state), OllamaServing(state), state)

    return asyncio.run(main())


async def gather(stream: Any) -> list[Any]:
    assert not isinstance(stream, ReplyBody), "a stream was asked for"
    parts: AsyncIterator[Any] = stream
    return [part async for part in parts]


def test_openai_chat_is_typed_and_its_stream_says_the_same(
    loaded: tuple[RuntimeConfig, LoadResult],
) -> None:
    async def scenario(openai: OpenAIServing, _: OllamaServing, state: RuntimeState) -> None:
        body = {"model": "smollm2", "messages": STORY, "max_tokens": 6, **GREEDY}
        whole = await openai.chat(ChatCompletionRequest.model_validate(body))
        assert isinstance(whole, ChatCompletion)
        choice = whole.choices[0]
        assert choice.message.content
        assert choice.finish_reason == "length"
        assert whole.usage.completion_tokens == 6
        assert whole.usage.total_tokens == whole.usage.prompt_tokens + 6
        streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
        chunks = await gather(await openai.chat(ChatCompletionRequest.model_validate(streamed)))
        assert all(isinstance(chunk, ChatCompletionChunk) for chunk in chunks)
        assert chunks[0].choices[0].delta.role == "assistant"
        assert all(chunk.id == chunks[0].id for chunk in chunks)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == choice.message.content
        *_, last, usage = chunks
        assert last.choices[0].finish_reason == "length"
        assert usage.choices == []
        assert usage.usage is not None
        assert usage.usage.completion_tokens == 6
        assert usage.usage.prompt_tokens == whole.usage.prompt_tokens
        # The slot came back once the stream ended: the only one is handed out at once.
        release = await asyncio.wait_for(state.admission.acquire(), timeout=30)
        release()

    run(loaded, scenario)


def test_openai_refusals_are_api_errors_with_their_status(
    loaded: tuple[RuntimeConfig, LoadResult],
) -> None:
    async def scenario(openai: OpenAIServing, _: OllamaServing, state: RuntimeState) -> None:
        with pytest.raises(APIError) as unknown:
            await openai.chat(
                ChatCompletionRequest.model_validate({"model": "x", "messages": STORY})
            )
        assert unknown.value.status == 404
        assert '"x" not found' in unknown.value.message
        with pytest.raises(APIError) as other:
            openai.model("other")
        assert other.value.status == 404
        bad = {"model": "smollm2", "prompt": "a", "echo": True, "logprobs": 1}
        with pytest.raises(APIError) as echo:
            await openai.completion(CompletionRequest.model_validate(bad))
        assert echo.value.status == 400
        assert "echo" in echo.value.message
        assert openai.models().data == [openai.model("smollm2:latest")]

    run(loaded, scenario)


def test_openai_completion_logprobs_cover_each_generated_token(
    loaded: tuple[RuntimeConfig, LoadResult],
) -> None:
    async def scenario(openai: OpenAIServing, _: OllamaServing, state: RuntimeState) -> None:
        body = {"model": "smollm2", "prompt": "One, two,", "max_tokens": 4, "logprobs": 2}
        whole = await openai.completion(CompletionRequest.model_validate({**body, **GREEDY}))
        assert isinstance(whole, Completion)
        assert whole.usage is not None
        logprobs = whole.choices[0].logprobs
        assert logprobs is not None
        assert len(logprobs.tokens) == whole.usage.completion_tokens == 4
        assert "".join(logprobs.tokens) == whole.choices[0].text
        for token, top in zip(logprobs.tokens, logprobs.top_logprobs, strict=True):
            assert token in top
            assert 2 <= len(top) <= 3

    run(loaded, scenario)


def test_embeddings_are_unit_vectors_in_both_families(
    loaded: tuple[RuntimeConfig, LoadResult],
) -> None:
    async def scenario(openai: OpenAIServing, ollama: OllamaServing, state: RuntimeState) -> None:
        texts = ["a cat", "a dog"]
        out = await openai.embeddings(
            EmbeddingRequest.model_validate({"model": "smollm2", "input": texts, "dimensions": 8})
        )
        assert isinstance(out, EmbeddingList)
        assert [e.index for e in out.data] == [0, 1]
        ours = await ollama.embed(EmbedRequest.model_validate({"model": "smollm2", "input": texts}))
        assert isinstance(ours, EmbedResponse)
        assert len(ours.embeddings) == 2
        for vector in [*(e.embedding for e in out.data), *ours.embeddings]:
            assert isinstance(vector, list)
            assert sum(x * x for x in vector) == pytest.approx(1.0, abs=1e-4)
        assert all(len(e.embedding) == 8 for e in out.data)
        assert ours.prompt_eval_count == out.usage.prompt_tokens

    run(loaded, scenario)


def test_responses_events_are_numbered_and_end_as_the_whole_response(
    loaded: tuple[RuntimeConfig, LoadResult],
) -> None:
    async def scenario(openai: OpenAIServing, _: OllamaServing, state: RuntimeState) -> None:
        story = "Write a long story about a cat."
        body = {"model": "smollm2", "input": story, "max_output_tokens": 16, "temperature": 0}
        whole = await openai.respond(ResponseRequest.model_validate(body))
        assert isinstance(whole, Response)
        assert whole.status == "incomplete"
        assert whole.usage is not None
        assert whole.incomplete_details is not None
        assert whole.usage.output_tokens == 16
        events = await gather(
            await openai.respond(ResponseRequest.model_validate({**body, "stream": True}))
        )
        assert all(isinstance(event, ResponseEvent) for event in events)
        assert [e.sequence_number for e in events] == list(range(len(events)))
        assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
        assert events[-1].type == "response.incomplete"
        final = events[-1].response
        assert final is not None
        assert final.output[0].model_dump(exclude={"id"}) == whole.output[0].model_dump(
            exclude={"id"}
        )
        deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert deltas == whole.output[0].content[0].text  # type: ignore[union-attr]

    run(loaded, scenario)


def test_ollama_generate_and_chat_stream_what_they_answer_whole(
    loaded: tuple[RuntimeConfig, LoadResult],
) -> None:
    async def scenario(openai: OpenAIServing, ollama: OllamaServing, state: RuntimeState) -> None:
        options = {"num_predict": 5, **GREEDY}
        generate = {
            "model": "smollm2",
            "prompt": "Write a long story about a cat.",
            "options": options,
            "stream": False,
        }
        whole = await ollama.generate(GenerateRequest.model_validate(generate))
        assert isinstance(whole, GenerateResponse)
        assert whole.done
        assert whole.done_reason == "length"
        assert whole.eval_count == 5
        parts = await gather(
            await ollama.generate(GenerateRequest.model_validate({**generate, "stream": True}))
        )
        assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
        assert "".join(p.response for p in parts) == whole.response
        chat = {"model": "smollm2", "messages": STORY, "options": options, "stream": False}
        answer = await ollama.chat(ChatRequest.model_validate(chat))
        assert isinstance(answer, ChatResponse)
        assert answer.message.role == "assistant"
        assert answer.message.content
        loading = await ollama.chat(ChatRequest.model_validate({"model": "smollm2"}))
        assert isinstance(loading, ChatResponse)
        assert loading.done_reason == "load"
        assert loading.wire().count(b"eval_count") == 0
        bad = GenerateRequest.model_validate({**generate, "options": {"num_ctx": 1 << 20}})
        with pytest.raises(APIError) as wider:
            await ollama.generate(bad)
        assert wider.value.status == 400
        assert "options.num_ctx" in wider.value.message

    run(loaded, scenario)


def test_ollama_model_listings_describe_the_loaded_model(
    loaded: tuple[RuntimeConfig, LoadResult],
) -> None:
    async def scenario(openai: OpenAIServing, ollama: OllamaServing, state: RuntimeState) -> None:
        (listed,) = ollama.tags().models
        assert listed.name == "smollm2:latest"
        assert listed.digest == "ab" * 32
        assert listed.size == state.engine.details.size_bytes > 0
        (running,) = ollama.ps().models
        assert running.device == "cpu"
        assert running.size_vram == 0
        assert running.context_length == 2048
        show = ollama.show(ShowRequest.model_validate({"model": "smollm2"}))
        assert "completion" in show.capabilities
        assert "embedding" in show.capabilities
        assert "num_ctx                        2048" in show.parameters
        with pytest.raises(APIError) as missing:
            ollama.show(ShowRequest.model_validate({}))
        assert missing.value.status == 400

    run(loaded, scenario)


def test_a_client_gone_before_the_answer_ends_stops_the_generation(
    loaded: tuple[RuntimeConfig, LoadResult],
) -> None:
    async def scenario(openai: OpenAIServing, _: OllamaServing, state: RuntimeState) -> None:
        async def gone() -> None:
            return None

        body = {"model": "smollm2", "messages": STORY, "max_tokens": 200, **GREEDY}
        with pytest.raises(APIError) as stopped:
            await openai.chat(ChatCompletionRequest.model_validate(body), gone)
        assert stopped.value.status == 499
        # The slot is free again: the only one is handed out at once.
        release = await asyncio.wait_for(state.admission.acquire(), timeout=30)
        release()

    run(loaded, scenario)
