"""Inference engines and the device fallback that picks one at load."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from slm_runtime.config import OPENVINO_NPU, Device, ModelFormat, RuntimeConfig
from slm_runtime.cpus import usable_cpus
from slm_runtime.engines.base import DeviceUnavailableError, Engine, EngineError

log = logging.getLogger(__name__)

__all__ = ["DeviceUnavailableError", "Engine", "EngineError", "LoadResult", "load_engine"]


@dataclass
class LoadResult:
    """The engine that loaded and why the devices before it did not."""

    engine: Engine
    failures: dict[Device, str] = field(default_factory=dict)


def _load_on(config: RuntimeConfig, device: Device) -> Engine:
    params = config.parameters
    threads = params.num_thread or usable_cpus()
    if config.format is ModelFormat.GGUF:
        from slm_runtime.engines.llamacpp import LlamaCppEngine

        return LlamaCppEngine(
            config.model_path,
            device,
            context_length=params.context_length,
            parallel=config.parallel,
            threads=threads,
        )
    from slm_runtime.engines.onnx import OnnxGenaiEngine

    return OnnxGenaiEngine(
        config.model_path,
        device,
        context_length=params.context_length,
        threads=threads,
        openvino_device=config.openvino_device or OPENVINO_NPU,
    )


def load_engine(config: RuntimeConfig) -> LoadResult:
    """Try each configured device in order; log each failure with the engine's own error text."""
    failures: dict[Device, str] = {}
    for device in config.devices:
        try:
            engine = _load_on(config, device)
        except DeviceUnavailableError as exc:
            failures[device] = str(exc)
            log.warning(
                "device %s unavailable for %s model: %s",
                device.value,
                config.format.value,
                exc,
                extra={"device": device.value, "error": str(exc)},
            )
            continue
        log.info(
            "model loaded on %s",
            device.value,
            extra={"device": device.value, "engine": engine.engine_name},
        )
        return LoadResult(engine, failures)
    tried = "; ".join(f"{d.value}: {msg}" for d, msg in failures.items())
    raise EngineError(f"no configured device could load the model ({tried})")
