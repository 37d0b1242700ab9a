"""The server refuses a model that changed on disk after the puller verified it."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from slm_runtime.config import (
    ENV_TERMINATION_LOG,
    MODEL_CORRUPT_MARKER,
    MODEL_METADATA_FILE,
    ModelMetadata,
)
from slm_runtime.integrity import model_problem

from .conftest import free_port, gemma_config, start_server

pytestmark = pytest.mark.runtime


def pulled(folder: Path, name: str, content: bytes) -> Path:
    """A model as the puller leaves it: the file, then its record written after it."""
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / name
    model.write_bytes(content)
    record = ModelMetadata(
        digest=f"sha256:{hashlib.sha256(content).hexdigest()}",
        size_bytes=len(content),
        files=[name],
        source="https://models.example/m.gguf",
        time="2026-01-01T00:00:00Z",
    )
    (folder / MODEL_METADATA_FILE).write_text(record.model_dump_json(by_alias=True))
    return model


def flip_a_byte(path: Path, offset: int) -> None:
    """Damage the file in place, as a bad disk or a stray write would."""
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_an_unchanged_model_passes(tmp_path: Path) -> None:
    model = pulled(tmp_path / "models", "model.gguf", b"GGUF" + b"\0" * 4096)
    assert model_problem(str(model)) is None


def test_a_model_without_a_pull_record_is_not_checked(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    assert model_problem(str(model)) is None


def test_a_rewritten_but_identical_model_passes_after_hashing(tmp_path: Path) -> None:
    content = b"GGUF" + os.urandom(4096)
    model = pulled(tmp_path / "models", "model.gguf", content)
    model.write_bytes(content)  # a newer ctime than the record: hashed again, still equal
    assert model_problem(str(model)) is None


def test_a_damaged_model_is_named_with_both_digests(tmp_path: Path) -> None:
    content = b"GGUF" + os.urandom(4096)
    model = pulled(tmp_path / "models", "model.gguf", content)
    flip_a_byte(model, 100)
    problem = model_problem(str(model))
    assert problem is not None
    assert MODEL_CORRUPT_MARKER in problem
    assert f"sha256:{hashlib.sha256(content).hexdigest()}" in problem
    assert f"sha256:{hashlib.sha256(model.read_bytes()).hexdigest()}" in problem


def test_a_missing_model_with_a_record_is_refused(tmp_path: Path) -> None:
    model = pulled(tmp_path / "models", "model.gguf", b"GGUF")
    model.unlink()
    assert "is missing" in (model_problem(str(model)) or "")


def test_the_server_serves_a_verified_copy_and_refuses_a_damaged_one(
    gemma_gguf: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    model = folder / "model.gguf"
    shutil.copyfile(gemma_gguf, model)
    pulled_record = ModelMetadata(
        digest=f"sha256:{hashlib.file_digest(model.open('rb'), 'sha256').hexdigest()}",
        size_bytes=model.stat().st_size,
        files=["model.gguf"],
        source="https://models.example/gemma.gguf",
        time="2026-01-01T00:00:00Z",
    )
    (folder / MODEL_METADATA_FILE).write_text(pulled_record.model_dump_json(by_alias=True))

    server = start_server(tmp_path, gemma_config(model))
    assert server.client().get("/readyz").status_code == 200
    server.stop()

    flip_a_byte(model, model.stat().st_size // 2)
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump({**gemma_config(model), "port": free_port(), "host": "127.0.0.1"})
    )
    termination = tmp_path / "termination-log"
    termination.touch()  # the kubelet provides it in a pod
    done = subprocess.run(
        [sys.executable, "-m", "slm_runtime.cli", "serve", "--config", str(config)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, ENV_TERMINATION_LOG: str(termination)},
    )  # fmt: skip
    assert done.returncode != 0
    assert MODEL_CORRUPT_MARKER in done.stderr
    # The reason is the container's last exit message, whole, without a traceback around it.
    reason = termination.read_text()
    assert reason.startswith("refusing to serve the model: ")
    assert MODEL_CORRUPT_MARKER in reason
    assert pulled_record.digest in reason
