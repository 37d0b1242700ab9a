"""ONNX models on ONNX Runtime GenAI, with the execution provider chosen per device."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import onnxruntime_genai as og

from slm_runtime.config import OPENVINO_NPU, Device, ModelFormat, device_tier
from slm_runtime.engines import openvino
from slm_runtime.engines.base import (
    Delta,
    DeviceUnavailableError,
    EngineError,
    Finished,
    FinishReason,
    Generation,
    GenerationFailedError,
    ModelDetails,
    SamplingParams,
    StopMatcher,
    UnsupportedError,
    finished_at_once,
    generation_budget,
)

log = logging.getLogger(__name__)

_OPENVINO = "OpenVINO"


def _config_for(model_dir: str, device: Device, *, openvino_device: str, threads: int) -> Any:
    """The model's genai config with the device's execution provider and ``threads`` intra-op
    threads (ONNX Runtime's own default is one per core of the node)."""
    cfg = og.Config(model_dir)
    cfg.clear_providers()
    tier = device_tier(device)
    if ModelFormat.ONNX not in tier.formats:
        raise DeviceUnavailableError(f"ONNX Runtime GenAI has no {device.value.upper()} backend")
    provider = tier.onnx_provider
    if provider == _OPENVINO:
        # ONNX Runtime's own OpenVINO provider (onnxruntime-openvino); a build without it
        # refuses this with "OpenVINO execution provider is not supported in this build".
        # When OpenVINO lacks the device, ONNX Runtime only says "Failed to load provider
        # OpenVINO": ask OpenVINO first, to name what is missing.
        found = openvino.available_devices()
        if found is not None and (missing := openvino.missing_device(openvino_device, found)):
            listed = ", ".join(found) or "none"
            raise DeviceUnavailableError(
                f"OpenVINO finds no {missing} device on this node (it finds: {listed})"
            )
        cfg.append_provider(_OPENVINO)
        cfg.set_provider_option(_OPENVINO, "device_type", openvino_device)
    elif provider is not None:
        cfg.append_provider(provider)
    session = {"session_options": {"intra_op_num_threads": threads}}
    cfg.overlay(json.dumps({"model": {"decoder": session}}))
    return cfg


class OnnxGenaiEngine:
    """One generator per request, each in its own thread; ONNX Runtime sessions run concurrently."""

    engine_name = "onnxruntime-genai"
    cpu_backend: str | None = None
    engine_version = og.__version__
    format = ModelFormat.ONNX
    supports_embeddings = False
    supports_json = False
    supports_logprobs = False

    def __init__(
        self,
        model_dir: str,
        device: Device,
        *,
        context_length: int | None,
        threads: int,
        openvino_device: str = OPENVINO_NPU,
    ) -> None:
        root = Path(model_dir)
        if not (root / "genai_config.json").is_file():
            raise EngineError(f"{model_dir} holds no genai_config.json")
        try:
            config = _config_for(
                model_dir, device, openvino_device=openvino_device, threads=threads
            )
            self._model = og.Model(config)
        except RuntimeError as exc:
            raise DeviceUnavailableError(str(exc)) from exc
        self.device = device
        self.threads = threads
        self._tokenizer = og.Tokenizer(self._model)
        self._held: dict[Generation, int] = {}  # each running generator's sequence length
        self._held_lock = threading.Lock()
        genai = json.loads((root / "genai_config.json").read_text(encoding="utf-8"))
        model_cfg = genai.get("model", {})
        trained = int(model_cfg.get("context_length", 2048))
        eos = model_cfg.get("eos_token_id", [])
        self._eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.context_length = min(context_length or trained, trained)
        tokenizer_cfg = _read_json(root / "tokenizer_config.json")
        template_file = root / "chat_template.jinja"
        self.chat_template = _as_str(tokenizer_cfg.get("chat_template")) or (
            template_file.read_text(encoding="utf-8") if template_file.is_file() else None
        )
        self.bos_token = _token_str(tokenizer_cfg.get("bos_token"))
        self.eos_token = _token_str(tokenizer_cfg.get("eos_token"))
        size = sum(p.stat().st_size for p in root.iterdir() if p.is_file())
        self.details = ModelDetails(
            family=str(model_cfg.get("type", "")),
            parameter_size="",
            quantization_level="",
            size_bytes=size,
            context_length=self.context_length,
            architecture_info={
                "general.architecture": str(model_cfg.get("type", "")),
                "context_length": self.context_length,
                "vocab_size": model_cfg.get("vocab_size"),
            },
        )

    def tokenize(self, text: str) -> list[int]:
        """Token ids for ``text``."""
        return [int(t) for t in self._tokenizer.encode(text)]

    def count_tokens(self, text: str) -> int:
        """Number of tokens the prompt takes."""
        return len(self.tokenize(text))

    def kv_tokens(self) -> int:
        """Tokens the running generators' KV caches hold."""
        with self._held_lock:
            return sum(self._held.values())

    def _hold(self, generation: Generation, length: int | None) -> None:
        with self._held_lock:
            if length is None:
                self._held.pop(generation, None)
            else:
                self._held[generation] = length

    def generate(
        self, prompt: str, params: SamplingParams, loop: asyncio.AbstractEventLoop
    ) -> Generation:
        """Start a generator thread for this request."""
        if params.json_mode:
            raise UnsupportedError("format json is not supported for ONNX models")
        if params.grammar is not None:
            raise UnsupportedError("grammar is not supported for ONNX models")
        tokens = self.tokenize(prompt)
        if not tokens:
            raise EngineError("the prompt is empty")
        max_tokens = generation_budget(len(tokens), params, self.context_length)
        if max_tokens == 0:
            return finished_at_once(loop, len(tokens))
        generation = Generation(loop, prompt_tokens=len(tokens))
        threading.Thread(
            target=self._run,
            args=(generation, tokens, params, max_tokens),
            name="onnx-generate",
            daemon=True,
        ).start()
        return generation

    def _run(
        self, generation: Generation, tokens: list[int], params: SamplingParams, max_tokens: int
    ) -> None:
        started = time.monotonic()
        first = 0.0
        produced = 0
        reason: FinishReason = "length"
        try:
            gen_params = og.GeneratorParams(self._model)
            options: dict[str, Any] = {
                "max_length": len(tokens) + max_tokens,
                "do_sample": params.temperature > 0.0,
                "repetition_penalty": params.repeat_penalty or 1.0,
            }
            if params.temperature > 0.0:
                options.update(
                    temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or 0
                )
            if params.seed is not None:
                options["random_seed"] = params.seed
            gen_params.set_search_options(**options)
            generator = og.Generator(self._model, gen_params)
            generator.append_tokens(tokens)
            self._hold(generation, len(tokens))
            stream = self._tokenizer.create_stream()
            stop = StopMatcher(params.stop)
            while True:
                if generation.cancelled:
                    reason = "cancelled"
                    break
                generator.generate_next_token()
                first = first or time.monotonic()
                token = int(generator.get_next_tokens()[0])
                if token in self._eos_ids:
                    reason = "stop"
                    break
                produced += 1
                self._hold(generation, len(tokens) + produced)
                text, stopped = stop.feed(stream.decode(token))
                if text:
                    generation.push(Delta(text))
                if stopped:
                    reason = "stop"
                    break
                if produced >= max_tokens or generator.is_done():
                    reason = "length"
                    break
            tail = stop.flush()
            if tail:
                generation.push(Delta(tail))
        except Exception:
            log.exception("onnxruntime-genai generation failed")
            generation.push(GenerationFailedError("generation failed"))
            return
        finally:
            self._hold(generation, None)
        end = time.monotonic()
        first = first or end
        generation.push(Finished(reason, len(tokens), produced, first - started, end - first))

    def embed(
        self, texts: list[str], *, context_length: int | None = None, truncate: bool = False
    ) -> tuple[list[list[float]], int]:
        """ONNX Runtime GenAI models are generative only."""
        raise UnsupportedError("embeddings are not supported for ONNX models")

    def close(self) -> None:
        """Release the model."""
        del self._model


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _as_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _token_str(value: object) -> str:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else ""
