"""Folder digests match sha256sum's text; pvc:// and file:// sources are verified in place."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from slm_runtime.pull.digest import folder_manifest, folder_sha256, normalize_sha256

from pull.conftest import run_pull

pytestmark = pytest.mark.runtime


def _folder(root: Path) -> Path:
    folder = root / "onnx"
    (folder / "b").mkdir(parents=True)
    (folder / "genai_config.json").write_text('{"model": {"type": "phi3"}}', encoding="utf-8")
    (folder / "model.onnx").write_bytes(bytes(range(256)) * 64)
    (folder / "b" / "a file.txt").write_text("spaces are fine", encoding="utf-8")
    return folder


@pytest.mark.unit
def test_folder_manifest_is_sha256sum_output_sorted(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    shell = subprocess.run(
        ["bash", "-c", "find . -type f -printf '%P\\0' | xargs -0 sha256sum | LC_ALL=C sort"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert folder_manifest(folder) == shell
    assert folder_sha256(folder) == hashlib.sha256(shell.encode()).hexdigest()


@pytest.mark.unit
@pytest.mark.parametrize(
    ("value", "expected"),
    [("AB" * 32, "ab" * 32), ("sha256:" + "cd" * 32, "cd" * 32), (" " + "0" * 64, "0" * 64)],
)
def test_normalize_sha256(value: str, expected: str) -> None:
    assert normalize_sha256(value) == expected


@pytest.mark.unit
@pytest.mark.parametrize("value", ["", "abc", "sha512:" + "0" * 64, "g" * 64, "0" * 65])
def test_normalize_sha256_rejects(value: str) -> None:
    with pytest.raises(ValueError, match="is not 64 hex characters"):
        normalize_sha256(value)


@pytest.mark.runtime
def test_file_source_is_verified_in_place(tmp_path: Path) -> None:
    model = tmp_path / "image" / "gemma.gguf"
    model.parent.mkdir()
    model.write_bytes(b"GGUF" + b"\0" * 1000)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    ok = run_pull("--source", f"file://{model}", "--sha256", digest, tmp=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert ok.result() == {"digest": f"sha256:{digest}", "sizeBytes": 1004, "files": ["gemma.gguf"]}

    bad = run_pull("--source", f"file://{model}", "--sha256", "1" * 64, tmp=tmp_path)
    assert bad.returncode == 2
    assert f"expected sha256:{'1' * 64}, got sha256:{digest}" in bad.termination


@pytest.mark.runtime
def test_pvc_folder_is_verified_under_the_mount(tmp_path: Path) -> None:
    mount = tmp_path / "models"
    folder = _folder(mount)
    digest = folder_sha256(folder)
    run = run_pull(
        "--source",
        "pvc://shared-models/onnx",
        "--dest",
        str(mount),
        "--sha256",
        digest,
        tmp=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert run.result()["digest"] == f"sha256:{digest}"
    assert run.result()["files"] == ["b/a file.txt", "genai_config.json", "model.onnx"]
    assert not (mount / ".slm-model.json").exists()

    missing = run_pull("--source", "pvc://shared-models/absent", "--dest", str(mount), tmp=tmp_path)
    assert missing.returncode == 1
    assert f"{mount}/absent does not exist" in missing.termination


@pytest.mark.runtime
def test_bad_input_exits_2_with_a_message(tmp_path: Path) -> None:
    run = run_pull("--source", "oci://host/repo", "--dest", str(tmp_path), tmp=tmp_path)
    assert run.returncode == 2
    assert "needs a :TAG or an @sha256:HEX digest" in run.termination
    bad_pin = run_pull("--source", "file:///x.gguf", "--sha256", "zz", tmp=tmp_path)
    assert bad_pin.returncode == 2
    assert "sha256 'zz' is not 64 hex characters" in bad_pin.termination
    assert "Traceback" not in run.stderr + bad_pin.stderr
