"""`slmctl chat --url` streaming from the real runtime serving the real Gemma GGUF on loopback."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime.conftest import Server, gemma_config, start_server

pytestmark = pytest.mark.runtime

TOKEN = "test-token-0123456789"


@pytest.fixture(scope="module")
def server(gemma_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Greedy Gemma behind a bearer token."""
    config = gemma_config(
        gemma_gguf,
        parallel=1,
        parameters={"contextLength": 1024, "numPredict": 12, "numThread": 2, "temperature": 0},
    )
    started = start_server(tmp_path_factory.mktemp("chat"), config, {"SLM_API_TOKEN": TOKEN})
    yield started
    started.stop(signal.SIGKILL)


def chat(
    *args: str, token: str | None = TOKEN, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`slmctl chat gemma ARGS` with stdin from ``input`` (not a terminal)."""
    env = {k: v for k, v in os.environ.items() if k != "SLM_API_TOKEN"}
    if token:
        env["SLM_API_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "slm_operator.cli", "chat", "gemma", *args],
        input=input or "", capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("api", ["ollama", "openai"])
def test_one_shot_answer_through_each_api(server: Server, api: str) -> None:
    result = chat("--url", server.url, "--api", api, "-p", "Name a primary colour.")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert result.stderr == ""


def test_both_apis_give_the_same_greedy_answer_and_stdin_works(server: Server) -> None:
    question = "Name a primary colour."
    ollama = chat("--url", server.url, "--api", "ollama", input=question)
    openai = chat("--url", server.url, "--api", "openai", "-p", question)
    assert ollama.returncode == openai.returncode == 0
    assert ollama.stdout == openai.stdout


def test_max_tokens_bounds_the_answer(server: Server) -> None:
    short = chat("--url", server.url, "--max-tokens", "1", "-p", "Count from one to twenty.")
    longer = chat("--url", server.url, "--max-tokens", "8", "-p", "Count from one to twenty.")
    assert short.returncode == longer.returncode == 0
    assert 0 < len(short.stdout.strip()) < len(longer.stdout.strip())


def test_without_the_token_the_error_says_401(server: Server) -> None:
    result = chat("--url", server.url, "-p", "hi", token=None)
    assert result.returncode == 1
    assert result.stderr.startswith("error: the model answered 401")
    assert TOKEN not in result.stderr


def test_unreachable_url_is_a_clear_error() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        result = chat("--url", url, "-p", "hi")
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: cannot reach the model at {url}")


def test_empty_prompt_is_refused(server: Server) -> None:
    result = chat("--url", server.url, input="  \n")
    assert result.returncode == 1
    assert "empty prompt" in result.stderr


def test_repl_on_a_terminal_keeps_the_conversation(server: Server) -> None:
    """A real pseudo-terminal on stdin: two turns, then /bye."""
    controller, terminal = pty.openpty()
    env = {**os.environ, "SLM_API_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "slm_operator.cli", "chat", "gemma", "--url", server.url],
        stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
    )  # fmt: skip
    os.close(terminal)
    try:
        os.write(controller, b"Name a primary colour.\nAnd another one?\n/bye\n")
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(controller)
    assert proc.returncode == 0, err
    assert out.startswith("Chatting with gemma (ollama API). Ctrl-D or /bye to quit.\n")
    turns = [t for t in out.split(">>> ")[1:] if t.strip()]
    assert len(turns) == 2
    assert all(t.strip() for t in turns)
