"""The real runtime process on a loopback port, with the real Gemma GGUF or the tiny ONNX model."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import GEMMA_TEMPLATE

TINY_ONNX = Path(__file__).resolve().parent.parent / "fixtures" / "tiny-onnx"
STARTUP_SECONDS = 90


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A running ``slm-runtime serve`` process."""

    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def logs(self) -> str:
        """Everything the process has logged so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def client(self, **kwargs: Any) -> httpx.Client:
        """An HTTP client for this server."""
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)

    def metric(self, name: str, labels: str = "") -> float:
        """The value of one sample on /metrics (0 when absent)."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        key = f"{name}{{{labels}}}" if labels else name
        for line in text.splitlines():
            if line.startswith(key + " "):
                return float(line.split()[-1])
        return 0.0

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal the process and wait for it to exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def start_server(
    tmp_path: Path, config: dict[str, Any], env: dict[str, str] | None = None
) -> Server:
    """Write the config, start the process and wait until /readyz answers 200."""
    port = free_port()
    config = {"host": "127.0.0.1", "port": port, **config}
    config_path = tmp_path / f"config-{port}.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    log_path = tmp_path / f"server-{port}.log"
    proc_env = {k: v for k, v in os.environ.items() if not k.startswith("SLM_")}
    proc_env.update(env or {})
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "slm_runtime.cli", "serve", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=proc_env,
        )
    server = Server(f"http://127.0.0.1:{port}", proc, log_path)

    def ready() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}:\n{server.logs()}")
        try:
            return httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(ready, STARTUP_SECONDS, "the server to become ready")
    return server


def gemma_config(gguf: Path, **overrides: Any) -> dict[str, Any]:
    """A RuntimeConfig for the Gemma GGUF with a chat template, small context and slots."""
    config: dict[str, Any] = {
        "modelName": "gemma",
        "format": "gguf",
        "modelPath": str(gguf),
        "template": GEMMA_TEMPLATE,
        "parallel": 2,
        "parameters": {"contextLength": 1024, "numPredict": 16, "numThread": 2},
    }
    config.update(overrides)
    return config


def smollm2_config(gguf: Path, template: str | None = None, **parameters: Any) -> dict[str, Any]:
    """A RuntimeConfig for SmolLM2-135M-Instruct with one slot: its own chat template, or the
    Modelfile TEMPLATE given; ``parameters`` replace the default context, answer length and
    threads."""
    config: dict[str, Any] = {
        "modelName": "smollm2",
        "format": "gguf",
        "modelPath": str(gguf),
        "parallel": 1,
        "parameters": {"contextLength": 2048, "numPredict": 40, "numThread": 2, **parameters},
    }
    if template is not None:
        config["template"] = template
    return config


def serve(
    tmp_path_factory: pytest.TempPathFactory, name: str, config: dict[str, Any]
) -> Iterator[Server]:
    """A server for a module or session fixture (``yield from``), killed at its end."""
    server = start_server(tmp_path_factory.mktemp(name), config)
    yield server
    server.stop(signal.SIGKILL)


def onnx_config(**overrides: Any) -> dict[str, Any]:
    """A RuntimeConfig for the tiny ONNX model (its own chat template)."""
    config: dict[str, Any] = {
        "modelName": "tiny",
        "format": "onnx",
        "modelPath": str(TINY_ONNX),
        "parallel": 2,
        "parameters": {"numPredict": 8, "temperature": 0},
    }
    config.update(overrides)
    return config


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers for one test; all are stopped afterwards."""
    started: list[Server] = []

    def factory(config: dict[str, Any], env: dict[str, str] | None = None) -> Server:
        server = start_server(tmp_path, config, env)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop(signal.SIGKILL)


@pytest.fixture(scope="session")
def gemma_server(gemma_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One Gemma server shared by the API tests."""
    server = start_server(
        tmp_path_factory.mktemp("gemma"),
        gemma_config(
            gemma_gguf,
            system="You are a terse assistant who answers in one short sentence.",
            parameters={
                "contextLength": 1024,
                "numPredict": 16,
                "numThread": 2,
                "temperature": 0.7,
            },
            limits={"maxRequestBytes": 65536},
        ),
    )
    yield server
    server.stop(signal.SIGKILL)


@pytest.fixture(scope="session")
def onnx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One tiny-ONNX server shared by the API tests."""
    server = start_server(tmp_path_factory.mktemp("onnx"), onnx_config())
    yield server
    server.stop(signal.SIGKILL)


OLLAMA_ORACLES_SETUP = (
    Path(__file__).resolve().parents[2] / "hack" / "setup.d" / "40-ollama-oracles.sh"
)
"""Builds the oracles (hack/ollama-template-oracle, hack/ollama-tools-oracle); idempotent."""


def ollama_pin(oracle_src: Path) -> str:
    """The github.com/ollama/ollama version an oracle's go.mod pins."""
    for line in (oracle_src / "go.mod").read_text().splitlines():
        words = line.split()
        if words[:2] == ["require", "github.com/ollama/ollama"]:
            return words[2]
    raise RuntimeError(f"no github.com/ollama/ollama pin in {oracle_src / 'go.mod'}")


def ollama_oracle(oracle_src: Path) -> Path:
    """Where the setup script caches the oracle built from ``oracle_src``."""
    name = oracle_src.name
    return Path.home() / ".cache" / "slm-operator" / "bin" / f"{name}-{ollama_pin(oracle_src)}"
