"""The engine contract: what the API layer asks of an inference backend, and the shared pieces."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from slm_runtime.config import Device, ModelFormat

FinishReason = Literal["stop", "length", "cancelled"]
MAX_TOP_LOGPROBS = 20
"""The most ``top_logprobs`` a request may ask for, in the Ollama and OpenAI chat APIs alike."""


class EngineError(Exception):
    """A request the engine cannot serve; the message is safe to show to the client."""


class PromptTooLongError(EngineError):
    """The prompt does not fit in the context window of one sequence."""


class UnsupportedError(EngineError):
    """The model format or engine cannot serve this kind of request."""


class GenerationFailedError(EngineError):
    """The engine failed while generating; details are in the log, not in the message."""


class DeviceUnavailableError(Exception):
    """A device could not be used; the message is the engine's own error text."""


@dataclass(frozen=True)
class SamplingParams:
    """Per-request generation settings, after defaults, configuration and request are merged."""

    max_tokens: int = -1
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    repeat_penalty: float = 1.1
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    json_mode: bool = False
    json_schema: dict[str, Any] | None = None
    context_length: int | None = None
    """A request's own context window (Ollama ``num_ctx``), at most the one loaded."""
    logprobs: bool = False
    """Report each generated token's log probability (``Delta.logprobs``)."""
    top_logprobs: int = 0
    """With ``logprobs``: also this many most likely tokens at each position."""
    grammar: str | None = None
    """A GBNF grammar (llama.cpp's) the output must match; instead of ``json_mode``."""


@dataclass(frozen=True)
class ModelDetails:
    """What ``/api/show``, ``/api/tags`` and ``/api/ps`` report about the loaded model."""

    family: str
    parameter_size: str
    quantization_level: str
    size_bytes: int
    context_length: int
    architecture_info: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class TokenChoice:
    """A token's text (``bytes`` decoded, invalid UTF-8 replaced) and its log probability."""

    token: str
    bytes: bytes
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token, its log probability, the most likely tokens at its position (most
    likely first), and where its text starts in the generated text (in characters)."""

    chosen: TokenChoice
    top: tuple[TokenChoice, ...]
    offset: int


@dataclass(frozen=True)
class Delta:
    """A piece of generated text, with the log probabilities of the tokens it holds when they
    were asked for (a token whose text is held back, such as an incomplete UTF-8 character,
    comes with the delta that carries its text)."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Finished:
    """The end of one generation, with its token counts and timings.

    ``cached_tokens`` of the prompt were found in the KV cache and not evaluated again.
    """

    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    prompt_seconds: float
    generation_seconds: float
    cached_tokens: int = 0


Event = Delta | Finished


class Generation:
    """One running generation: the engine thread pushes events, the event loop consumes them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, prompt_tokens: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.created = time.monotonic()
        self._loop = loop
        self._queue: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        self._cancelled = threading.Event()
        self._done_callbacks: list[Callable[[], None]] = []
        self._finished = False

    # --- engine side (any thread) ---

    @property
    def cancelled(self) -> bool:
        """Whether the consumer went away; the engine stops generating at the next token."""
        return self._cancelled.is_set()

    def push(self, event: Event | BaseException) -> None:
        """Deliver an event to the consumer from the engine's thread."""
        self._loop.call_soon_threadsafe(self._deliver, event)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop that consumes this generation."""
        return self._loop

    def _deliver(self, event: Event | BaseException) -> None:
        self._queue.put_nowait(event)
        if isinstance(event, Finished | BaseException) and not self._finished:
            self._finished = True
            for callback in self._done_callbacks:
                callback()

    # --- consumer side (event loop) ---

    def add_done_callback(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the event loop once the engine has finished with this generation."""
        if self._finished:
            callback()
        else:
            self._done_callbacks.append(callback)

    def cancel(self) -> None:
        """Stop generating (client disconnected, shutdown)."""
        self._cancelled.set()

    async def events(self) -> AsyncIterator[Event]:
        """Events until ``Finished``; engine failures are raised here."""
        while True:
            event = await self._queue.get()
            if isinstance(event, BaseException):
                raise event
            yield event
            if isinstance(event, Finished):
                return


def _deliver_all(items: list[tuple[Generation, Event | BaseException]]) -> None:
    for generation, event in items:
        generation._deliver(event)


class Outbox:
    """Events an engine thread produces in one step, handed to each event loop with one wake-up.

    ``Generation.push`` wakes the loop once per event; a batching engine that emits a token for
    every running sequence per step uses this instead, so the loop is woken once per step.
    """

    def __init__(self) -> None:
        self._items: dict[asyncio.AbstractEventLoop, list[tuple[Generation, Event | BaseException]]]
        self._items = {}

    def put(self, generation: Generation, event: Event | BaseException) -> None:
        """Queue an event; nothing reaches the consumer before ``flush``."""
        self._items.setdefault(generation.loop, []).append((generation, event))

    def flush(self) -> None:
        """Deliver everything queued since the last flush."""
        if not self._items:
            return
        items, self._items = self._items, {}
        for loop, events in items.items():
            # A closed loop raises RuntimeError: its consumers are gone.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_deliver_all, events)


class Engine(Protocol):
    """An inference backend serving one loaded model."""

    engine_name: str
    engine_version: str
    format: ModelFormat
    device: Device
    context_length: int
    chat_template: str | None
    bos_token: str
    eos_token: str
    details: ModelDetails
    supports_embeddings: bool
    supports_json: bool
    supports_logprobs: bool
    threads: int
    # The ggml CPU backend llama.cpp runs on ("haswell", "builtin", ...); None for other engines.
    cpu_backend: str | None

    def count_tokens(self, text: str) -> int:
        """Number of tokens ``text`` encodes to, as the engine would feed it."""
        ...

    def kv_tokens(self) -> int:
        """Tokens the KV cache holds for running generations (any thread); prefixes kept only
        for reuse by later requests are not counted."""
        ...

    def generate(
        self, prompt: str, params: SamplingParams, loop: asyncio.AbstractEventLoop
    ) -> Generation:
        """Start generating; raises ``PromptTooLongError`` before anything runs."""
        ...

    def embed(
        self, texts: list[str], *, context_length: int | None = None, truncate: bool = False
    ) -> tuple[list[list[float]], int]:
        """Mean-pooled embeddings for each text, and the number of tokens read (blocking);
        ``context_length`` (at most the loaded one) bounds each text: a longer one is cut to it
        with ``truncate``, else refused with ``PromptTooLongError``."""
        ...

    def close(self) -> None:
        """Stop background work and free the model."""
        ...


def generation_budget(prompt_tokens: int, params: SamplingParams, loaded: int) -> int:
    """Tokens a request may generate: what fits in its window after the prompt, at most its
    ``max_tokens``; a prompt that fills the window raises ``PromptTooLongError``."""
    window = min(params.context_length or loaded, loaded)
    if prompt_tokens >= window:
        setting = "num_ctx" if window < loaded else "contextLength"
        raise PromptTooLongError(
            f"the prompt is {prompt_tokens} tokens but the context window is {window}; "
            f"shorten it or raise {setting}"
        )
    room = window - prompt_tokens
    return room if params.max_tokens < 0 else min(params.max_tokens, room)


def finished_at_once(loop: asyncio.AbstractEventLoop, prompt_tokens: int) -> Generation:
    """A generation asked for no tokens at all (``num_predict: 0``): it ends before it starts."""
    generation = Generation(loop, prompt_tokens=prompt_tokens)
    generation.push(Finished("length", prompt_tokens, 0, 0.0, 0.0))
    return generation


class StopMatcher:
    """Holds back text that may be the start of a stop sequence, and cuts at the first match."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._buffer = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Add generated text; return what is safe to emit and whether a stop sequence matched."""
        if not self._stops:
            return text, False
        self._buffer += text
        cut = min((i for i in (self._buffer.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self._buffer = self._buffer[:cut], ""
            return out, True
        keep = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(self._buffer)), keep, -1):
                if self._buffer.endswith(stop[:n]):
                    keep = n
                    break
        out = self._buffer[: len(self._buffer) - keep]
        self._buffer = self._buffer[len(self._buffer) - keep :]
        return out, False

    def flush(self) -> str:
        """Whatever is held back, at the end of generation."""
        out, self._buffer = self._buffer, ""
        return out
