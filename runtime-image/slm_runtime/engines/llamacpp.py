"""GGUF models on llama.cpp: one context, one decode per step for all running sequences.

Sampling (``llamacpp_sampling``), the slots and sequences (``llamacpp_slots``), the model's
metadata (``llamacpp_model``) and embeddings (``llamacpp_embed``) live beside it."""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import math
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from slm_runtime.config import Device, ModelFormat, device_tier
from slm_runtime.engines.base import (
    Delta,
    DeviceUnavailableError,
    EngineError,
    Finished,
    FinishReason,
    Generation,
    GenerationFailedError,
    Outbox,
    SamplingParams,
    StopMatcher,
    TokenChoice,
    TokenLogprob,
    finished_at_once,
    generation_budget,
)
from slm_runtime.engines.ggml import gpu_backend_absence, has_llamafile, load_cpu_backend
from slm_runtime.engines.llamacpp_embed import Embedder
from slm_runtime.engines.llamacpp_model import gguf_metadata, model_details
from slm_runtime.engines.llamacpp_sampling import is_greedy, sampler_chain, top_ids
from slm_runtime.engines.llamacpp_slots import Sequence, Slot, common_prefix

log = logging.getLogger(__name__)


_GPU_LAYERS_ALL = 999


_PIECE_BUFFER = 256


_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


_GGML_LOG_LEVELS = {3: logging.WARNING, 4: logging.ERROR}  # ggml: 1 debug, 2 info, 3 warn, 4 error


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _forward_llama_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """Send llama.cpp's warnings and errors to our log; drop its chatty load report."""
    if level in _GGML_LOG_LEVELS:
        message = text.decode("utf-8", "replace").strip()
        if message:
            log.log(_GGML_LOG_LEVELS[level], "llama.cpp: %s", message)


class LlamaCppEngine:
    """llama-cpp-python's low-level API with continuous batching over ``parallel`` sequences."""

    engine_name = "llama.cpp"
    engine_version = llama_cpp.__version__
    format = ModelFormat.GGUF
    supports_embeddings = True
    supports_json = True
    supports_logprobs = True

    def __init__(
        self,
        model_path: str,
        device: Device,
        *,
        context_length: int | None,
        parallel: int,
        threads: int,
    ) -> None:
        llama_cpp.llama_log_set(_forward_llama_log, ctypes.c_void_p(0))
        lib_dir = Path(llama_cpp.__file__).parent / "lib"
        self.cpu_backend: str | None = load_cpu_backend(lib_dir)
        if has_llamafile(lib_dir, self.cpu_backend):
            log.warning(
                "llama.cpp was built with GGML_LLAMAFILE: greedy answers can change with a "
                "prompt-cache hit or a busy batch; build it with CMAKE_ARGS=-DGGML_LLAMAFILE=OFF"
            )
        llama_cpp.llama_backend_init()
        if not Path(model_path).is_file():
            raise EngineError(f"model file {model_path} does not exist")
        model_params = llama_cpp.llama_model_default_params()
        tier = device_tier(device)
        if ModelFormat.GGUF not in tier.formats:
            raise DeviceUnavailableError(f"llama.cpp has no {device.value.upper()} backend")
        if tier.llama_offload:
            if not llama_cpp.llama_supports_gpu_offload():
                raise DeviceUnavailableError(gpu_backend_absence(lib_dir))
            model_params.n_gpu_layers = _GPU_LAYERS_ALL
        else:
            model_params.n_gpu_layers = 0
        if device is Device.CPU:
            # Batch invariance on the CPU: a token's logits must not depend on how many tokens
            # share its batch, or a prompt-cache hit (one token evaluated instead of the whole
            # prompt) or concurrent requests would change a greedy answer. ggml computes a row
            # differently in a batch than alone in its repacked weights (extra buffer types),
            # its tiled K-quant matmul (8 rows and more), its tiled and KV-split flash
            # attention, and llamafile's sgemm (2 rows and more: off in our builds). The plain
            # kernels compute every row the same way whatever the batch.
            model_params.use_extra_bufts = False
            os.environ["GGML_CPU_TILED_MM"] = "0"  # read once, at the first matmul
        self.device: Device = device
        self._model = llama_cpp.llama_model_load_from_file(model_path.encode(), model_params)
        if not self._model:
            raise DeviceUnavailableError(f"llama.cpp could not load {model_path} on {device}")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.context_length = context_length or min(
            llama_cpp.llama_model_n_ctx_train(self._model), 4096
        )
        self._parallel = parallel
        self.threads = threads
        self._threads = threads
        self._n_batch = max(512, self.context_length)
        ctx_params = llama_cpp.llama_context_default_params()
        ctx_params.n_ctx = self.context_length * parallel
        ctx_params.n_batch = self._n_batch
        ctx_params.n_ubatch = 512
        ctx_params.n_seq_max = parallel
        ctx_params.n_threads = self._threads
        ctx_params.n_threads_batch = self._threads
        ctx_params.kv_unified = False
        # As llama-server: sliding-window layers keep only their window (less memory); prompt
        # reuse checks that the window a continuation needs is still cached.
        ctx_params.swa_full = False
        if device is Device.CPU:
            ctx_params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self._ctx = llama_cpp.llama_init_from_model(self._model, ctx_params)
        if not self._ctx:
            llama_cpp.llama_model_free(self._model)
            raise DeviceUnavailableError(f"llama.cpp could not create a context on {device}")
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._n_swa = llama_cpp.llama_model_n_swa(self._model)
        self._batch = llama_cpp.llama_batch_init(self._n_batch, 0, 1)
        self._piece_buf = ctypes.create_string_buffer(_PIECE_BUFFER)
        self._scratch = np.empty(self._n_vocab, dtype=np.float32)  # log-softmax, decode thread
        self._embedder = Embedder(
            self._model, self._vocab, self.context_length, self._threads, self.tokenize
        )

        self.metadata = gguf_metadata(self._model)
        self.chat_template = self.metadata.get("tokenizer.chat_template")
        self.bos_token = self._token_text(llama_cpp.llama_vocab_bos(self._vocab))
        self.eos_token = self._token_text(llama_cpp.llama_vocab_eos(self._vocab))
        self.details = model_details(self._model, self.metadata, model_path, self.context_length)

        self._incoming: queue.SimpleQueue[Sequence | None] = queue.SimpleQueue()
        self._free: list[Slot] = [Slot(i) for i in range(parallel)]
        self._active: list[Sequence] = []  # the decode thread's; others only copy it
        self._admitted = 0
        self._outbox = Outbox()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="llama-decode", daemon=True)
        self._thread.start()

    # --- model facts ---

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._piece(token, special=True).decode("utf-8", "replace")

    def _piece(self, token: int, *, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(_PIECE_BUFFER)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, _PIECE_BUFFER, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def _generated_piece(self, token: int) -> bytes:
        """``_piece`` for the decode thread, into a buffer it reuses."""
        buf = self._piece_buf
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, _PIECE_BUFFER, 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, -n, 0, False)
        return buf.raw[:n]

    def tokenize(self, text: str) -> list[int]:
        """Tokens for ``text``, with BOS when the model wants one; special tokens are parsed."""
        data = text.encode("utf-8")
        capacity = len(data) + 8
        tokens = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), tokens, capacity, True, True)
        if n < 0:
            capacity = -n
            tokens = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), tokens, capacity, True, True)
        return list(tokens[:n])

    def count_tokens(self, text: str) -> int:
        """Number of tokens the prompt takes."""
        return len(self.tokenize(text))

    # --- generation ---

    def generate(
        self, prompt: str, params: SamplingParams, loop: asyncio.AbstractEventLoop
    ) -> Generation:
        """Queue a sequence for the decode loop."""
        tokens = self.tokenize(prompt)
        if not tokens:
            raise EngineError("the prompt is empty")
        max_tokens = generation_budget(len(tokens), params, self.context_length)
        if max_tokens == 0:
            return finished_at_once(loop, len(tokens))
        grammar = params.grammar
        if params.json_mode:
            grammar = JSON_GBNF
            if params.json_schema is not None:
                try:
                    grammar = json_schema_to_gbnf(json.dumps(params.json_schema))
                except Exception as exc:
                    raise EngineError(f"the JSON schema in format is not usable: {exc}") from exc
        grammar_sampler = None
        if grammar is not None:
            # Parsed here, not in the decode loop, so that a grammar llama.cpp refuses is the
            # request's error (400) before it takes a slot.
            grammar_sampler = llama_cpp.llama_sampler_init_grammar(
                self._vocab, grammar.encode(), b"root"
            )
            if not grammar_sampler:
                what = "grammar" if params.grammar is not None else "JSON grammar"
                raise EngineError(f"llama.cpp refuses the {what}: it is not valid GBNF")
        generation = Generation(loop, prompt_tokens=len(tokens))
        sequence = Sequence(
            grammar_sampler=grammar_sampler,
            generation=generation,
            params=params,
            prompt=tokens,
            max_tokens=max_tokens,
            stop=StopMatcher(params.stop),
        )
        if self._closed:
            if grammar_sampler is not None:
                llama_cpp.llama_sampler_free(grammar_sampler)
            raise EngineError("the engine is shutting down")
        self._incoming.put(sequence)
        return generation

    def kv_tokens(self) -> int:
        """Positions the running sequences hold in the context's KV cache."""
        return sum(seq.n_past for seq in list(self._active))

    def _run(self) -> None:
        active = self._active
        while True:
            self._admit(active, block=not active)
            if self._closed:
                for seq in list(active):
                    self._finish(active, seq, "cancelled")
                self._drop_incoming()
                self._outbox.flush()
                return
            for seq in [s for s in active if s.generation.cancelled]:
                self._finish(active, seq, "cancelled")
            if active:
                try:
                    self._step(active)
                except Exception:  # a failed decode must not take the loop down
                    log.exception("llama.cpp decode failed")
                    for seq in list(active):
                        self._release(active, seq, keep_cache=False)
                        self._outbox.put(seq.generation, GenerationFailedError("generation failed"))
            self._outbox.flush()

    def _drop_incoming(self) -> None:
        """Ends the sequences still queued when the loop stops, as cancelled, freeing their
        grammar samplers."""
        while True:
            try:
                seq = self._incoming.get_nowait()
            except queue.Empty:
                return
            if seq is None:
                continue
            if seq.grammar_sampler is not None:
                llama_cpp.llama_sampler_free(seq.grammar_sampler)
            self._outbox.put(seq.generation, Finished("cancelled", len(seq.prompt), 0, 0.0, 0.0))

    def _admit(self, active: list[Sequence], *, block: bool) -> None:
        while self._free:
            if block:
                self._outbox.flush()
            try:
                seq = self._incoming.get(block=block)
            except queue.Empty:
                return
            block = False
            if seq is None:
                self._closed = True
                return
            if seq.generation.cancelled:
                if seq.grammar_sampler is not None:
                    llama_cpp.llama_sampler_free(seq.grammar_sampler)
                self._outbox.put(
                    seq.generation, Finished("cancelled", len(seq.prompt), 0, 0.0, 0.0)
                )
                continue
            seq.greedy = is_greedy(seq.params) and seq.grammar_sampler is None
            if not seq.greedy:
                seq.sampler = sampler_chain(seq.params, self._n_vocab, self.context_length)
            seq.slot, seq.reused = self._claim(seq.prompt)
            seq.n_past = seq.reused
            seq.pending = seq.prompt[seq.reused :]
            seq.started = time.monotonic()
            active.append(seq)

    def _claim(self, prompt: list[int]) -> tuple[Slot, int]:
        """The free slot whose cache shares the longest prefix with ``prompt``, when that prefix
        is at least half the prompt; otherwise an empty slot, else the least recently used one,
        so that a few shared tokens (BOS, a greeting) do not evict another prompt's cache.
        The slot is trimmed to its shared prefix; returns it and the tokens it saves."""
        shared = [common_prefix(slot.cached, prompt) for slot in self._free]
        best = max(range(len(self._free)), key=lambda i: (shared[i], -self._free[i].last_used))
        if shared[best] * 2 < len(prompt):
            best = min(
                range(len(self._free)),
                key=lambda i: (bool(self._free[i].cached), self._free[i].last_used),
            )
        slot = self._free.pop(best)
        self._admitted += 1
        slot.last_used = self._admitted
        # At least the last prompt token is evaluated again: its logits give the first token.
        keep = min(shared[best], len(prompt) - 1)
        if keep > 0:
            # A continuation attends to the previous n_swa positions, which a sliding-window
            # cache may have dropped already.
            oldest = llama_cpp.llama_memory_seq_pos_min(self._memory, slot.seq_id)
            if oldest < 0 or oldest > max(0, keep - max(1, self._n_swa)):
                keep = 0
        if keep == 0 or not llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, keep, -1):
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            keep = 0
        del slot.cached[keep:]
        return slot, keep

    def _step(self, active: list[Sequence]) -> None:
        batch = self._batch
        n = 0
        budget = self._n_batch
        outputs: list[tuple[Sequence, int]] = []
        # Sequences already generating go first (one token each), prompts fill the rest.
        for seq in sorted(active, key=lambda s: len(s.pending) > 1):
            take = min(len(seq.pending), budget - n)
            if take <= 0:
                break
            seq_id = seq.slot.seq_id if seq.slot is not None else 0
            for j in range(take):
                batch.token[n] = seq.pending[j]
                batch.pos[n] = seq.n_past + j
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq_id
                batch.logits[n] = False
                n += 1
            if take == len(seq.pending):
                batch.logits[n - 1] = True
                outputs.append((seq, n - 1))
            seq.n_past += take
            if seq.slot is not None:
                seq.slot.cached.extend(seq.pending[:take])
            del seq.pending[:take]
        batch.n_tokens = n
        rc = llama_cpp.llama_decode(self._ctx, batch)
        if rc != 0:
            raise EngineError(f"llama_decode returned {rc}")
        now = time.monotonic()
        for seq, index in outputs:
            if seq.greedy:
                token = self._argmax(index)
            elif seq.grammar_sampler is not None:
                token = self._sample_constrained(seq, index)
                if token < 0:
                    self._release(active, seq, keep_cache=False)
                    self._outbox.put(
                        seq.generation,
                        EngineError(
                            "the grammar allows no token after "
                            f"{seq.generated} generated tokens; change the grammar"
                        ),
                    )
                    continue
            else:
                token = llama_cpp.llama_sampler_sample(seq.sampler, self._ctx, index)
            if seq.generated == 0:
                seq.first_token_at = now
            if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                self._emit(seq, seq.decoder.decode(b"", final=True) + seq.stop.flush(), last=True)
                self._finish(active, seq, "stop")
                continue
            seq.generated += 1
            piece = self._generated_piece(token)
            decoded = seq.decoder.decode(piece)
            if seq.params.logprobs:
                seq.logprobs.append(self._token_logprob(seq, index, token, piece))
            seq.decoded += len(decoded)
            text, stopped = seq.stop.feed(decoded)
            self._emit(seq, text)
            if stopped:
                self._finish(active, seq, "stop")
            elif seq.generated >= seq.max_tokens:
                self._emit(seq, seq.decoder.decode(b"", final=True) + seq.stop.flush(), last=True)
                self._finish(active, seq, "length")
            else:
                seq.pending.append(token)

    def _argmax(self, index: int) -> int:
        """The most likely token at batch position ``index`` (greedy sampling, without building
        llama.cpp's candidate array over the whole vocabulary)."""
        logits = np.ctypeslib.as_array(
            llama_cpp.llama_get_logits_ith(self._ctx, index), shape=(self._n_vocab,)
        )
        return int(logits.argmax())

    def _candidates(self, index: int) -> tuple[Any, Any]:
        """All tokens with their logits at batch position ``index``, as llama.cpp takes them."""
        logits = np.ctypeslib.as_array(
            llama_cpp.llama_get_logits_ith(self._ctx, index), shape=(self._n_vocab,)
        )
        data = np.empty(self._n_vocab, dtype=_TOKEN_DATA)
        data["id"] = np.arange(self._n_vocab, dtype=np.int32)
        data["logit"] = logits
        data["p"] = 0.0
        array = llama_cpp.llama_token_data_array(
            data=data.ctypes.data_as(llama_cpp.llama_token_data_p),
            size=self._n_vocab,
            selected=-1,
            sorted=False,
        )
        return data, array

    def _sample_constrained(self, seq: Sequence, index: int) -> int:
        """Sample as usual, then check the token against the grammar; only if it is refused,
        apply the grammar to the whole vocabulary and sample again (as llama.cpp's own
        sampler does: checking 262k tokens every step is far slower)."""
        data, array = self._candidates(index)
        llama_cpp.llama_sampler_apply(seq.sampler, ctypes.byref(array))
        token = int(data["id"][array.selected])
        single = np.array([(token, 1.0, 0.0)], dtype=_TOKEN_DATA)
        check = llama_cpp.llama_token_data_array(
            data=single.ctypes.data_as(llama_cpp.llama_token_data_p),
            size=1,
            selected=-1,
            sorted=False,
        )
        llama_cpp.llama_sampler_apply(seq.grammar_sampler, ctypes.byref(check))
        if not np.isfinite(single["logit"][0]):
            data, array = self._candidates(index)
            llama_cpp.llama_sampler_apply(seq.grammar_sampler, ctypes.byref(array))
            if not np.isfinite(data["logit"]).any():
                # llama.cpp aborts the process when a token the grammar refuses is accepted.
                return -1
            llama_cpp.llama_sampler_apply(seq.sampler, ctypes.byref(array))
            token = int(data["id"][array.selected])
        llama_cpp.llama_sampler_accept(seq.grammar_sampler, token)
        llama_cpp.llama_sampler_accept(seq.sampler, token)
        return token

    def _token_logprob(self, seq: Sequence, index: int, token: int, piece: bytes) -> TokenLogprob:
        """The log-softmax of the raw logits at batch position ``index`` (the model's own
        distribution, before penalties, temperature, top-k/p or a grammar) for ``token`` and
        for the most likely tokens; only sequences that asked for logprobs pay for it."""
        logits = np.ctypeslib.as_array(
            llama_cpp.llama_get_logits_ith(self._ctx, index), shape=(self._n_vocab,)
        )
        peak = float(logits.max())
        scratch = self._scratch
        np.subtract(logits, np.float32(peak), out=scratch)
        np.exp(scratch, out=scratch)
        norm = peak + math.log(float(scratch.sum(dtype=np.float64)))
        top: tuple[TokenChoice, ...] = ()
        n = min(seq.params.top_logprobs, self._n_vocab)
        if n > 0:
            ids = top_ids(logits, n, peak)
            top = tuple(self._choice(int(i), float(logits[i]) - norm) for i in ids)
        chosen = TokenChoice(piece.decode("utf-8", "replace"), piece, float(logits[token]) - norm)
        return TokenLogprob(chosen, top, seq.decoded)

    def _choice(self, token: int, logprob: float) -> TokenChoice:
        piece = self._generated_piece(token)
        return TokenChoice(piece.decode("utf-8", "replace"), piece, logprob)

    def _emit(self, seq: Sequence, text: str, *, last: bool = False) -> None:
        """Send ``text`` with the log probabilities of the tokens whose text it starts or
        holds; ``last``: the generation ends here, so every token still waiting goes too."""
        seq.emitted += len(text)
        logprobs: tuple[TokenLogprob, ...] = ()
        if seq.logprobs:
            waiting = seq.logprobs
            n = len(waiting)
            if not last:
                n = 0
                while n < len(waiting) and waiting[n].offset < seq.emitted:
                    n += 1
            logprobs = tuple(waiting[:n])
            del waiting[:n]
        if text or logprobs:
            self._outbox.put(seq.generation, Delta(text, logprobs))

    def _finish(self, active: list[Sequence], seq: Sequence, reason: FinishReason) -> None:
        self._release(active, seq, keep_cache=True)
        end = time.monotonic()
        first = seq.first_token_at or end
        self._outbox.put(
            seq.generation,
            Finished(
                finish_reason=reason,
                prompt_tokens=len(seq.prompt),
                completion_tokens=seq.generated,
                prompt_seconds=first - seq.started,
                generation_seconds=end - first,
                cached_tokens=seq.reused,
            ),
        )

    def _release(self, active: list[Sequence], seq: Sequence, *, keep_cache: bool) -> None:
        active.remove(seq)
        if seq.sampler is not None:
            llama_cpp.llama_sampler_free(seq.sampler)
        if seq.grammar_sampler is not None:
            llama_cpp.llama_sampler_free(seq.grammar_sampler)
        slot = seq.slot
        if slot is None:
            return
        if not keep_cache:
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            slot.cached.clear()
        self._free.append(slot)

    # --- embeddings ---

    def embed(
        self, texts: list[str], *, context_length: int | None = None, truncate: bool = False
    ) -> tuple[list[list[float]], int]:
        """Mean-pooled embeddings from a second context on the same weights, made on first use."""
        window = min(context_length or self.context_length, self.context_length)
        return self._embedder.embed(texts, window=window, truncate=truncate)

    def close(self) -> None:
        """Stop the decode loop (running sequences end as cancelled) and free the model."""
        self._closed = True
        self._incoming.put(None)
        self._thread.join(timeout=30)
        if self._thread.is_alive():
            log.warning("the decode loop did not stop; leaving its memory to the process exit")
            return
        llama_cpp.llama_batch_free(self._batch)
        self._embedder.close()
        llama_cpp.llama_free(self._ctx)
        llama_cpp.llama_model_free(self._model)
