"""What the routes share: the loaded engine, prompt rendering, admission and metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from slm_runtime.admission import Admission
from slm_runtime.config import Device, ModelParameters, RuntimeConfig
from slm_runtime.engines import LoadResult
from slm_runtime.engines.base import (
    Delta,
    Engine,
    Event,
    Finished,
    Generation,
    SamplingParams,
    TokenLogprob,
    UnsupportedError,
)
from slm_runtime.errors import APIError
from slm_runtime.metrics import Metrics
from slm_runtime.prompt import PromptBuilder

# ModelParameters fields a request may override for its own sampling.
SAMPLING_FIELDS = (
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "repeat_penalty",
    "repeat_last_n",
    "presence_penalty",
    "frequency_penalty",
    "seed",
)

# Prompts up to this size are tokenized on the event loop (tens of microseconds, cheaper than
# a hop to a worker thread); longer ones, and JSON schemas to compile, go to a thread.
_INLINE_PROMPT_CHARS = 8192


@dataclass
class RuntimeState:
    """Set on ``app.state.runtime`` by the lifespan once the model is loaded."""

    config: RuntimeConfig
    engine: Engine
    prompts: PromptBuilder
    admission: Admission
    metrics: Metrics
    device_failures: dict[Device, str]
    load_seconds: float
    digest: str = ""
    loaded_at: float = field(default_factory=time.time)

    @classmethod
    def loaded(
        cls,
        config: RuntimeConfig,
        result: LoadResult,
        metrics: Metrics,
        load_seconds: float,
        digest: str = "",
    ) -> RuntimeState:
        """The state of a server that loaded ``result`` for ``config``: prompts rendered with
        the configured or the model's template, admission as the limits say."""
        engine = result.engine
        return cls(
            config=config,
            engine=engine,
            prompts=PromptBuilder(
                template=config.template,
                system=config.system,
                model_template=engine.chat_template,
                bos_token=engine.bos_token,
                eos_token=engine.eos_token,
            ),
            admission=Admission(
                config.parallel,
                config.limits.max_queue,
                config.limits.request_timeout_seconds,
                metrics,
            ),
            metrics=metrics,
            device_failures=result.failures,
            load_seconds=load_seconds,
            digest=digest,
        )

    def check_model(self, name: str) -> None:
        """Answer 404 unless ``name`` is the served model (``name:latest`` matches too)."""
        served = self.config.model_name
        if name not in (served, f"{served}:latest"):
            raise APIError(404, f'model "{name}" not found; this server serves "{served}"')

    def sampling(
        self,
        overrides: dict[str, Any],
        *,
        json_mode: bool = False,
        json_schema: dict[str, Any] | None = None,
        logprobs: bool = False,
        top_logprobs: int = 0,
        grammar: str | None = None,
    ) -> SamplingParams:
        """Engine defaults, then the configured PARAMETERs, then the request's options; logprobs
        are refused (400) where the engine cannot compute them."""
        if logprobs and not self.engine.supports_logprobs:
            raise APIError(
                400,
                f"logprobs are not supported for {self.engine.format.value} models; "
                "leave logprobs unset or false",
            )
        merged: dict[str, Any] = {}
        configured: ModelParameters = self.config.parameters
        for name in (*SAMPLING_FIELDS, "stop"):
            value = getattr(configured, name)
            if value is not None:
                merged[name] = value
        if configured.num_predict is not None:
            merged["max_tokens"] = configured.num_predict
        merged.update({k: v for k, v in overrides.items() if v is not None})
        stop = merged.pop("stop", ())
        merged["stop"] = (stop,) if isinstance(stop, str) else tuple(stop)
        return SamplingParams(
            **merged,
            json_mode=json_mode,
            json_schema=json_schema,
            logprobs=logprobs,
            top_logprobs=top_logprobs if logprobs else 0,
            grammar=grammar,
        )

    async def start(self, prompt: str, params: SamplingParams) -> Generation:
        """Take a slot (or fail with 429/503) and start generating; the slot frees at the end."""
        release = await self.admission.acquire()
        loop = asyncio.get_running_loop()
        try:
            parses_a_grammar = params.json_schema is not None or params.grammar is not None
            if len(prompt) <= _INLINE_PROMPT_CHARS and not parses_a_grammar:
                generation = self.engine.generate(prompt, params, loop)
            else:
                generation = await asyncio.to_thread(self.engine.generate, prompt, params, loop)
        except BaseException:
            release()
            raise
        generation.add_done_callback(release)
        return generation

    async def run(self, prompt: str, params: SamplingParams, route: str) -> Run:
        """Start a generation and wait for its first event, so that a failure to start is an
        HTTP error rather than a broken stream; the generation is cancelled on any failure."""
        generation = await self.start(prompt, params)
        run = Run(self, generation, route)
        try:
            await run.prime()
        except BaseException:
            generation.cancel()
            raise
        return run

    def check_embeddings(self) -> None:
        """501 (UnsupportedError) when the engine makes no embeddings."""
        if not self.engine.supports_embeddings:
            raise UnsupportedError(
                f"embeddings are not supported for {self.engine.format.value} models"
            )

    async def embed(self, texts: list[str], **options: Any) -> tuple[list[list[float]], int]:
        """The vectors of ``texts`` and the tokens read, with a slot of the admission queue (or
        429/503); 501 when the engine has no embeddings."""
        self.check_embeddings()
        release = await self.admission.acquire()
        try:
            return await asyncio.to_thread(self.engine.embed, texts, **options)
        finally:
            release()


@dataclass
class Output:
    """A whole generation: its text, the log probabilities of its tokens (when asked for) and
    its end."""

    text: str
    logprobs: list[TokenLogprob]
    end: Finished


class Run:
    """A generation as the routes consume it, recording metrics on the way."""

    def __init__(self, state: RuntimeState, generation: Generation, route: str) -> None:
        self.state = state
        self.generation = generation
        self.route = route
        self.started = time.monotonic()
        self.first: Event | None = None
        self._events = generation.events()
        self._seen_text = False

    async def prime(self) -> None:
        """Wait for the first event, so that failures before any output become HTTP errors."""
        self.first = await self._next()

    async def _next(self) -> Event:
        event = await anext(self._events)
        if isinstance(event, Delta) and not self._seen_text:
            self._seen_text = True
            self.state.metrics.ttft.labels(self.route).observe(time.monotonic() - self.started)
        if isinstance(event, Finished):
            self.state.metrics.prompt_tokens.inc(event.prompt_tokens)
            self.state.metrics.cached_prompt_tokens.inc(event.cached_tokens)
            self.state.metrics.generated_tokens.inc(event.completion_tokens)
        return event

    async def __aiter__(self) -> AsyncIterator[Event]:
        try:
            if self.first is not None:
                first, self.first = self.first, None
                yield first
                if isinstance(first, Finished):
                    return
            while True:
                event = await self._next()
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            self.generation.cancel()

    async def collect(self, disconnected: Disconnected | None = None) -> Output:
        """All text and the end; the generation stops if ``disconnected`` returns first (the
        client went away): 499."""
        parts: list[str] = []
        logprobs: list[TokenLogprob] = []

        async def consume() -> Finished:
            async for event in self:
                if isinstance(event, Delta):
                    parts.append(event.text)
                    logprobs.extend(event.logprobs)
                else:
                    return event
            raise RuntimeError("generation ended without a result")

        consumer = asyncio.create_task(consume())
        waits: set[asyncio.Task[Any]] = {consumer}
        if disconnected is not None:
            waits.add(asyncio.create_task(disconnected()))
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits - {consumer}:
                task.cancel()
            if not consumer.done():
                self.generation.cancel()
                consumer.cancel()
        if consumer not in done:
            raise APIError(499, "client disconnected")
        return Output("".join(parts), logprobs, consumer.result())


Disconnected = Callable[[], Coroutine[Any, Any, None]]
"""Returns once the client that sent a request has gone away."""


def disconnection(request: Request) -> Disconnected:
    """What returns once ``request``'s client has gone away."""

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return gone
