"""The runtime contract: the one model and the constants shared by the operator and the runtime pod.

The operator imports this module to render a LocalModel's ConfigMap and pod; the runtime imports
it to read its configuration. Nothing else crosses between them. Pure: no Kubernetes, no I/O
beyond ``load_config``'s file read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Final

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from pydantic.alias_generators import to_camel

# --- paths inside the runtime pod -------------------------------------------------------------

CONFIG_DIR: Final = "/etc/slm"
CONFIG_FILE_NAME: Final = "config.yaml"
CONFIG_PATH: Final = f"{CONFIG_DIR}/{CONFIG_FILE_NAME}"
"""Where the ConfigMap key ``config.yaml`` is mounted."""

CONFIGMAP_KEY: Final = CONFIG_FILE_NAME
"""The key of ``<lm>-config`` that holds the RuntimeConfig as YAML."""

MODELS_DIR: Final = "/models"
"""The model volume, mounted read-only in the server container."""

MODEL_METADATA_FILE: Final = ".slm-model.json"
MODEL_CORRUPT_MARKER: Final = "changed after it was verified"
"""In the server's exit message when the model on disk no longer matches the puller's record."""
MODEL_METADATA_PATH: Final = f"{MODELS_DIR}/{MODEL_METADATA_FILE}"
"""The puller's record of what it placed: source, digest, sizeBytes, files, time."""

TMP_DIR: Final = "/tmp"  # noqa: S108 - an emptyDir inside the pod, not the host /tmp
"""The only writable path in the pod (an emptyDir); HOME and caches live here."""

TERMINATION_LOG_PATH: Final = "/dev/termination-log"
"""The pull command writes ``{"digest","sizeBytes","files"}`` as JSON here; a server that cannot
start writes why."""
ENV_TERMINATION_LOG: Final = "SLM_TERMINATION_LOG"
"""Overrides TERMINATION_LOG_PATH (outside a pod)."""

# --- environment ------------------------------------------------------------------------------

ENV_API_TOKEN: Final = "SLM_API_TOKEN"
"""Bearer token that API requests must carry, from ``serving.authSecret`` key ``token``."""

ENV_SOURCE_TOKEN: Final = "SLM_SOURCE_TOKEN"
ENV_SOURCE_USERNAME: Final = "SLM_SOURCE_USERNAME"
ENV_SOURCE_PASSWORD: Final = "SLM_SOURCE_PASSWORD"
"""Source credentials from ``model.credentialsSecret``; set only in the pull container."""

ENV_HOME: Final = "HOME"

SECRET_KEY_TOKEN: Final = "token"
SECRET_KEY_USERNAME: Final = "username"
SECRET_KEY_PASSWORD: Final = "password"

# --- process identity and ports ---------------------------------------------------------------

RUNTIME_UID: Final = 65532
RUNTIME_GID: Final = 65532
"""Numeric non-root ids; ``fsGroup`` is the same GID so the pull Job can write the volume."""

DEFAULT_PORT: Final = 8080
PORT_NAME: Final = "http"

HEALTHZ_PATH: Final = "/healthz"
READYZ_PATH: Final = "/readyz"
METRICS_PATH: Final = "/metrics"

# --- durations --------------------------------------------------------------------------------

DURATION_PATTERN: Final = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
"""A Go-style duration such as ``90s``, ``2m`` or ``1h30m`` (the CRD's pattern)."""
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration (``1m30s`` -> 90.0)."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not a duration such as 90s, 2m or 1h30m")
    return sum(float(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(text))


# --- commands ---------------------------------------------------------------------------------

RUNTIME_COMMAND: Final = "slm-runtime"


def serve_command(config_path: str = CONFIG_PATH) -> list[str]:
    """The server container's explicit command (pods never rely on an image entrypoint)."""
    return [RUNTIME_COMMAND, "serve", "--config", config_path]


def pull_command(
    source: str,
    dest: str = MODELS_DIR,
    sha256: str | None = None,
    model_format: str | None = None,
) -> list[str]:
    """The pull container's explicit command."""
    cmd = [RUNTIME_COMMAND, "pull", "--source", source, "--dest", dest]
    if sha256:
        cmd += ["--sha256", sha256]
    if model_format:
        cmd += ["--format", model_format]
    return cmd


# --- the configuration model ------------------------------------------------------------------


class ModelFormat(StrEnum):
    """On-disk model formats and the engine that serves each."""

    GGUF = "gguf"  # llama.cpp
    ONNX = "onnx"  # ONNX Runtime GenAI


class Device(StrEnum):
    """Hardware tiers, in the order users usually prefer them."""

    NPU = "npu"
    GPU = "gpu"
    CPU = "cpu"


@dataclass(frozen=True)
class DeviceTier:
    """One hardware tier: what a pod requests for it and what the runtime's engines run on it."""

    device: Device
    resource: str | None
    """The extended resource the default accelerator catalog requests (None: the pod's cores)."""
    formats: tuple[ModelFormat, ...]
    """The model formats an engine of the runtime runs on it."""
    onnx_provider: str | None
    """ONNX Runtime GenAI's execution provider for it (None: ONNX Runtime's own, the CPU)."""
    llama_offload: bool
    """Whether llama.cpp offloads the model's layers to it."""


DEVICE_TIERS: Final = (
    DeviceTier(Device.NPU, "intel.com/npu", (ModelFormat.ONNX,), "OpenVINO", llama_offload=False),
    DeviceTier(
        Device.GPU,
        "nvidia.com/gpu",
        (ModelFormat.GGUF, ModelFormat.ONNX),
        "cuda",
        llama_offload=True,
    ),
    DeviceTier(Device.CPU, None, (ModelFormat.GGUF, ModelFormat.ONNX), None, llama_offload=False),
)
"""Every tier, in the order the operator prefers them: the one table that the default catalog,
the status's tier order, the engines and the chart's values schema follow."""


def device_tier(device: Device) -> DeviceTier:
    """The table's row for ``device``."""
    return next(t for t in DEVICE_TIERS if t.device is device)


class Api(StrEnum):
    """API families the runtime can serve."""

    OLLAMA = "ollama"
    OPENAI = "openai"


class _Camel(BaseModel):
    """Contract models: camelCase on the wire, snake_case in Python, unknown keys rejected."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        use_enum_values=False,
    )


MAX_STOP_SEQUENCES = 16
"""The most stop sequences a configuration or a request (either API) may give."""
MAX_STOP_CHARS = 256
StopSequence = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STOP_CHARS)]


class ModelParameters(_Camel):
    """Ollama Modelfile PARAMETERs, typed. Unset fields use the model's or engine's default."""

    model_config = ConfigDict(allow_inf_nan=False)  # JSON readers take NaN and Infinity

    temperature: float | None = Field(
        default=None, ge=0.0, le=2.0, description="Sampling temperature; 0 is greedy."
    )
    top_p: float | None = Field(
        default=None, gt=0.0, le=1.0, description="Nucleus sampling: keep tokens within this mass."
    )
    top_k: int | None = Field(
        default=None, ge=0, le=1000, description="Keep only the K most likely tokens; 0 disables."
    )
    min_p: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Drop tokens below this fraction of the top one."
    )
    context_length: int | None = Field(
        default=None,
        ge=128,
        le=1_048_576,
        description="Context window per sequence in tokens (Ollama num_ctx); "
        "the runtime allocates contextLength x parallel.",
    )
    num_predict: int | None = Field(
        default=None,
        ge=-1,
        le=1_048_576,
        description="Maximum tokens to generate per request; -1 means until the context is full.",
    )
    repeat_penalty: float | None = Field(
        default=None, ge=0.0, le=10.0, description="Penalty for repeated tokens; 1 disables."
    )
    repeat_last_n: int | None = Field(
        default=None, ge=-1, le=1_048_576, description="How far back repeat_penalty looks."
    )
    presence_penalty: float | None = Field(
        default=None, ge=-2.0, le=2.0, description="Penalty for tokens that appeared at all."
    )
    frequency_penalty: float | None = Field(
        default=None,
        ge=-2.0,
        le=2.0,
        description="Penalty growing with how often a token appeared.",
    )
    seed: int | None = Field(
        default=None, ge=0, le=2**32 - 1, description="Random seed for reproducible sampling."
    )
    stop: list[StopSequence] | None = Field(
        default=None, max_length=MAX_STOP_SEQUENCES, description="Sequences that end generation."
    )
    num_thread: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="CPU threads for generation; by default, the CPUs the server may use (its "
        "cpu limit or CPU set; without a limit, its cpu request, rounded up).",
    )


class ServeLimits(_Camel):
    """Bounds the runtime enforces on every request."""

    max_queue: int = Field(
        default=32,
        ge=0,
        le=10_000,
        description="Requests waiting for a free sequence slot beyond which the runtime answers "
        "429/503.",
    )
    request_timeout_seconds: float = Field(default=600.0, gt=0, le=86_400)
    drain_timeout_seconds: float = Field(
        default=25.0, ge=0, le=3600, description="How long SIGTERM waits for in-flight requests."
    )
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=1 << 30)


DEFAULT_DEVICE_ORDER: Final = (Device.CPU,)

OPENVINO_NPU: Final = "NPU"
"""OpenVINO's name for the NPU: the device_type used when ``openvinoDevice`` is unset."""
_OPENVINO_NPU_PATTERN: Final = r"^(NPU(\.[0-9]+)?|HETERO:NPU(\.[0-9]+)?(,(GPU|CPU)(\.[0-9]+)?)+)$"
# AUTO and MULTI are refused: they may serve from the CPU while the runtime reports the NPU.


class RuntimeConfig(_Camel):
    """What one runtime pod serves and how; rendered by the operator into ``<lm>-config``."""

    model_name: str = Field(
        min_length=1, max_length=253, description="Served model name (the LocalModel's name)."
    )
    format: ModelFormat
    model_path: str = Field(
        min_length=1,
        description="GGUF file or ONNX folder, absolute, normally under /models.",
    )
    source: str = Field(default="", description="Where the model came from, for /api/show.")
    parameters: ModelParameters = Field(default_factory=ModelParameters)
    system: str | None = Field(default=None, description="Modelfile SYSTEM message.")
    template: str | None = Field(
        default=None,
        description="Modelfile TEMPLATE (Ollama Go-template form); the model's own when unset.",
    )
    parallel: int = Field(default=1, ge=1, le=256, description="Concurrent sequences.")
    devices: list[Device] = Field(
        default_factory=lambda: list(DEFAULT_DEVICE_ORDER),
        min_length=1,
        max_length=len(Device),
        description="Devices to try at load, in order, each at most once.",
    )
    openvino_device: str | None = Field(
        default=None,
        pattern=_OPENVINO_NPU_PATTERN,
        description="The OpenVINO device_type an ONNX model loads with on the npu device: NPU "
        "(when unset), NPU.<n>, or HETERO:NPU,<GPU|CPU>... (the NPU runs what it supports, the "
        "rest falls to the devices after it).",
    )
    apis: list[Api] = Field(
        default_factory=lambda: [Api.OLLAMA, Api.OPENAI], min_length=1, max_length=2
    )
    host: str = "0.0.0.0"  # noqa: S104 - the pod has its own network namespace
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535)
    limits: ServeLimits = Field(default_factory=ServeLimits)

    @field_validator("devices")
    @classmethod
    def _devices_once(cls, devices: list[Device]) -> list[Device]:
        repeated = sorted({d.value for d in devices if devices.count(d) > 1})
        if repeated:
            raise ValueError(f"each device may appear once; repeated: {', '.join(repeated)}")
        return devices

    def to_yaml(self) -> str:
        """Stable YAML for the ConfigMap: camelCase keys, unset values omitted."""
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return yaml.safe_dump(data, sort_keys=True, default_flow_style=False)

    @classmethod
    def from_yaml(cls, text: str) -> RuntimeConfig:
        """Parse and validate the ConfigMap's YAML."""
        return cls.model_validate(yaml.safe_load(text) or {})


def load_config(path: str | Path = CONFIG_PATH) -> RuntimeConfig:
    """Read the runtime configuration file."""
    return RuntimeConfig.from_yaml(Path(path).read_text(encoding="utf-8"))


class PullResult(_Camel):
    """What ``slm-runtime pull`` writes to the termination log; the operator copies it to status."""

    digest: str = Field(
        pattern=r"^sha256:[0-9a-f]{64}$",
        description="sha256 of the file, or of the folder manifest for folder models.",
    )
    size_bytes: int = Field(ge=0)
    files: list[str] = Field(default_factory=list, description="Paths relative to the model dir.")


class ModelDefaults(_Camel):
    """Runtime defaults that came with the model (Ollama template, system and params layers).

    The LocalModel's own values override them.
    """

    template: str | None = None
    system: str | None = None
    parameters: ModelParameters = Field(default_factory=ModelParameters)


class ModelMetadata(PullResult):
    """The puller's record at ``/models/.slm-model.json``."""

    source: str
    format: ModelFormat | None = None
    time: str = Field(description="RFC 3339 time the pull completed.")
    defaults: ModelDefaults | None = Field(
        default=None, description="Defaults shipped with the model, e.g. by an Ollama registry."
    )
