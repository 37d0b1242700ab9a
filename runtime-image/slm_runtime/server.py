"""`slm-runtime serve`: read the configuration (file, then environment) and serve it."""

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
from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from slm_runtime.app import create_app
from slm_runtime.config import (
    CONFIG_PATH,
    ENV_API_TOKEN,
    ENV_TERMINATION_LOG,
    TERMINATION_LOG_PATH,
    Api,
    Device,
    ModelFormat,
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


class EnvOverrides(BaseSettings):
    """Environment variables that override the configuration file (``SLM_`` prefix).

    Nested settings use ``__``: ``SLM_PARAMETERS__TEMPERATURE=0.2``, ``SLM_LIMITS__MAX_QUEUE=8``;
    lists are JSON: ``SLM_DEVICES='["gpu","cpu"]'``.
    """

    model_config = SettingsConfigDict(
        env_prefix="SLM_", env_nested_delimiter="__", extra="ignore", case_sensitive=False
    )

    model_name: str | None = None
    format: ModelFormat | None = None
    model_path: str | None = None
    system: str | None = None
    template: str | None = None
    parallel: int | None = None
    devices: list[Device] | None = None
    apis: list[Api] | None = None
    host: str | None = None
    port: int | None = None
    parameters: dict[str, Any] | None = None
    limits: dict[str, Any] | None = None


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_settings(path: str | Path) -> RuntimeConfig:
    """The configuration file, validated, with ``SLM_*`` environment overrides applied."""
    text = Path(path).read_text(encoding="utf-8")
    base = RuntimeConfig.model_validate(yaml.safe_load(text) or {}).model_dump()
    overrides = EnvOverrides().model_dump(exclude_none=True)
    return RuntimeConfig.model_validate(_merge(base, overrides))


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
    parser.add_argument("--config", default=CONFIG_PATH, help="RuntimeConfig YAML file")
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
