"""What the puller reports: progress lines, the terminal bar, a termination message that fits."""

from __future__ import annotations

import io
import json

import pytest
from slm_runtime.config import PullResult
from slm_runtime.pull import TERMINATION_MESSAGE_MAX, _result_json
from slm_runtime.pull.core import _ollama_parameters
from slm_runtime.pull.progress import Progress
from slm_runtime.pull.registry import RegistryError

pytestmark = pytest.mark.unit


def test_progress_writes_json_lines_with_percent() -> None:
    out = io.StringIO()
    progress = Progress(out, tty=False)
    progress.start("model.gguf", 200, done=50)
    progress.advance(150)
    progress.finish()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0] == {
        "event": "progress",
        "file": "model.gguf",
        "bytes": 50,
        "total": 200,
        "percent": 25.0,
    }
    assert lines[-1]["bytes"] == 200
    assert lines[-1]["percent"] == 100.0


def test_progress_draws_a_bar_on_a_terminal() -> None:
    out = io.StringIO()
    progress = Progress(out, tty=True)
    progress.start("model.gguf", 4_000_000)
    progress.advance(1_000_000)
    progress.finish()
    text = out.getvalue()
    assert "{" not in text
    assert "model.gguf [#######-----------------------]  25.0% 1.0/4.0 MB" in text


def test_termination_message_drops_file_names_to_fit() -> None:
    files = [f"model/shard-{i:05d}.onnx.data" for i in range(400)]
    result = PullResult(digest="sha256:" + "a" * 64, size_bytes=123, files=files)
    text = _result_json(result)
    assert len(text.encode()) <= TERMINATION_MESSAGE_MAX
    parsed = json.loads(text)
    assert parsed["digest"] == result.digest
    assert parsed["sizeBytes"] == 123
    assert parsed["files"] == files[: len(parsed["files"])]
    assert 0 < len(parsed["files"]) < len(files)


def test_ollama_params_become_model_parameters() -> None:
    params = _ollama_parameters(
        json.dumps({"num_ctx": 8192, "stop": ["<eot>", "</s>"], "top_k": [20, 40], "mirostat": 2})
    )
    assert params.context_length == 8192
    assert params.stop == ["<eot>", "</s>"]
    assert params.top_k == 40


@pytest.mark.parametrize(
    ("text", "message"),
    [("[1]", "not a JSON object"), ("{", "not JSON"), ('{"temperature": 9}', "invalid values")],
)
def test_bad_ollama_params_are_rejected(text: str, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        _ollama_parameters(text)
