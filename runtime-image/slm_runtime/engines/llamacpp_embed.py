"""Embeddings on llama.cpp: a second context on the loaded weights, made on first use."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import llama_cpp

from slm_runtime.engines.base import EngineError, PromptTooLongError


class Embedder:
    """Mean-pooled embeddings, one input at a time, in a context of its own."""

    def __init__(
        self,
        model: Any,
        vocab: Any,
        context_length: int,
        threads: int,
        tokenize: Callable[[str], list[int]],
    ) -> None:
        self._model = model
        self._vocab = vocab
        self._context_length = context_length
        self._threads = threads
        self._tokenize = tokenize
        self._ctx: Any = None
        self._lock = threading.Lock()

    def embed(
        self, texts: list[str], *, window: int, truncate: bool
    ) -> tuple[list[list[float]], int]:
        """The vectors of ``texts`` and the tokens read; an input longer than ``window`` is cut
        to it with ``truncate``, else PromptTooLongError."""
        with self._lock:
            if self._ctx is None:
                params = llama_cpp.llama_context_default_params()
                params.n_ctx = self._context_length
                params.n_batch = self._context_length
                params.n_ubatch = self._context_length
                params.n_seq_max = 1
                params.embeddings = True
                params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_MEAN
                params.n_threads = self._threads
                params.n_threads_batch = self._threads
                self._ctx = llama_cpp.llama_init_from_model(self._model, params)
                if not self._ctx:
                    raise EngineError("llama.cpp could not create an embedding context")
            n_embd = llama_cpp.llama_model_n_embd(self._model)
            memory = llama_cpp.llama_get_memory(self._ctx)
            batch = llama_cpp.llama_batch_init(self._context_length, 0, 1)
            vectors: list[list[float]] = []
            total = 0
            try:
                for text in texts:
                    tokens = self._tokenize(text)
                    if not tokens:
                        raise EngineError("an input is empty")
                    if len(tokens) > window:
                        if not truncate:
                            raise PromptTooLongError(
                                f"an input is {len(tokens)} tokens but the context window is "
                                f"{window}"
                            )
                        tokens = self._truncated(tokens, window)
                    total += len(tokens)
                    llama_cpp.llama_memory_clear(memory, True)
                    for i, token in enumerate(tokens):
                        batch.token[i] = token
                        batch.pos[i] = i
                        batch.n_seq_id[i] = 1
                        batch.seq_id[i][0] = 0
                        batch.logits[i] = True
                    batch.n_tokens = len(tokens)
                    rc = llama_cpp.llama_decode(self._ctx, batch)
                    if rc != 0:
                        raise EngineError(f"llama_decode returned {rc}")
                    pointer = llama_cpp.llama_get_embeddings_seq(self._ctx, 0)
                    vectors.append([float(pointer[k]) for k in range(n_embd)])
            finally:
                llama_cpp.llama_batch_free(batch)
            return vectors, total

    def _truncated(self, tokens: list[int], window: int) -> list[int]:
        """The first ``window`` tokens of an input, still ending in the EOS or SEP token the
        tokenizer adds (an embedding model may pool on it), as Ollama keeps room for it."""
        vocab = self._vocab
        ends = []
        if llama_cpp.llama_vocab_get_add_eos(vocab):
            ends.append(llama_cpp.llama_vocab_eos(vocab))
        if llama_cpp.llama_vocab_get_add_sep(vocab):
            ends.append(llama_cpp.llama_vocab_sep(vocab))
        tail = 0
        while tail < len(ends) and tokens[-1 - tail] in ends:
            tail += 1
        return tokens[: window - tail] + tokens[len(tokens) - tail :]

    def close(self) -> None:
        """Free the embedding context, if one was made."""
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
