"""`slm-runtime serve`: read the configuration (file and environment) and serve it."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
import yaml
from fastapi import FastAPI
from pydantic import BaseModel, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from slm_runtime.app import create_app
from slm_runtime.config import (
    CONFIG_PATH,
    ENV_API_TOKEN,
    ENV_TERMINATION_LOG,
    TERMINATION_LOG_PATH,
    RuntimeConfig,
)

log = logging.getLogger("slm_runtime")

_RESERVED = {
    "name",
    "msg",
    "args",
    "levelname",
    "levelno",
    "pathname",
    "filename",
    "module",
    "exc_info",
    "exc_text",
    "stack_info",
    "lineno",
    "funcName",
    "created",
    "msecs",
    "relativeCreated",
    "thread",
    "threadName",
    "processName",
    "process",
    "taskName",
    "message",
    "color_message",
}


def _names_not_keys(model: type[BaseModel], data: Any, path: str = "") -> list[str]:
    """Python names given where the file's camelCase key belongs (``top_k`` for ``topK``)."""
    if not isinstance(data, dict):
        return []
    found = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        if name != key and name in data:
            found.append(f"{path}{name} should be {path}{key}")
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            found += _names_not_keys(field.annotation, data.get(key), f"{path}{key}.")
    return found


class RuntimeSettings(BaseSettings, RuntimeConfig):
    """The RuntimeConfig from the configuration file and ``SLM_*`` environment variables.

    One naming: a variable is ``SLM_`` and the file's camelCase key path, ``__`` between
    levels, in any case: ``SLM_MODELNAME``, ``SLM_PARAMETERS__TOPK=40``,
    ``SLM_LIMITS__MAXQUEUE=8``. Lists and objects are JSON:
    ``SLM_PARAMETERS__STOP='["<end_of_turn>"]'``. A variable wins over the file; together they
    must give the required fields, so either may supply them.
    """

    model_config = SettingsConfigDict(
        env_prefix="SLM_",
        env_prefix_target="alias",
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
        validate_by_name=False,
    )

    @model_validator(mode="before")
    @classmethod
    def _one_naming(cls, data: Any) -> Any:
        wrong = _names_not_keys(RuntimeConfig, data)
        if wrong:
            raise ValueError(
                "settings take the file's camelCase names (SLM_PARAMETERS__TOPK sets "
                "parameters.topK): " + "; ".join(wrong)
            )
        return data

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The environment first, then the file's values (passed as keyword arguments)."""
        return env_settings, init_settings


def load_settings(path: str | Path = CONFIG_PATH) -> RuntimeConfig:
    """The configuration file under ``SLM_*`` environment variables, validated as one; the
    file at ``CONFIG_PATH`` may be absent (the environment then gives every setting), another
    named file must exist."""
    file = Path(path)
    data: Any = {}
    if file.is_file() or file != Path(CONFIG_PATH):
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{file} holds {type(data).__name__}, not a mapping of settings")
    settings = RuntimeSettings(**data)
    return RuntimeConfig.model_validate(settings.model_dump(by_alias=True))


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the record's ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render a record as JSON."""
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str) -> None:
    """JSON logs on stderr for the runtime, uvicorn and the engines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


class DrainingServer(uvicorn.Server):
    """Marks the runtime as draining (``/readyz`` 503, new work refused) when a signal arrives."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Stop taking work; uvicorn then waits for in-flight requests up to the drain timeout."""
        state = self._app.state.runtime
        if state is not None and not state.admission.draining:
            state.admission.draining = True
            log.info("signal %d: draining in-flight requests", sig)
        super().handle_exit(sig, frame)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``slm-runtime serve``."""
    parser.add_argument(
        "--config",
        default=CONFIG_PATH,
        help="RuntimeConfig YAML file (may be absent at the default path); SLM_* environment "
        "variables override it or stand in for it",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("SLM_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
    )


def run(args: argparse.Namespace) -> int:
    """Load the configuration and serve until SIGTERM/SIGINT; 0 on a clean shutdown."""
    setup_logging(args.log_level)
    try:
        config = load_settings(args.config)
    except FileNotFoundError:
        log.error("configuration file %s does not exist", args.config)
        return 2
    except (ValidationError, yaml.YAMLError, ValueError) as exc:
        log.error("invalid configuration in %s: %s", args.config, exc)
        return 2
    token = os.environ.get(ENV_API_TOKEN) or None
    app = create_app(config, api_token=token)
    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_config=None,
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=int(config.limits.drain_timeout_seconds) or None,
        server_header=False,
        proxy_headers=False,
    )
    server = DrainingServer(uv_config, app)
    with contextlib.suppress(SystemExit):  # uvicorn exits this way when startup fails
        server.run()
    if not server.started:
        reason = getattr(app.state, "startup_error", None)
        log.error("%s", reason or "the server did not start; see the errors above")
        if reason:
            _write_termination_log(reason)
        return 1
    return 0


def _write_termination_log(text: str) -> None:
    """Tell the kubelet why the server stopped (it shows as the container's last exit)."""
    path = Path(os.environ.get(ENV_TERMINATION_LOG, TERMINATION_LOG_PATH))
    if not path.exists():  # outside a pod, unless asked for
        return
    try:
        path.write_text(text[:4096], encoding="utf-8")
    except OSError as exc:
        log.warning("cannot write the termination log %s: %s", path, exc)
