"""oci:// and ollama:// pulls from the CNCF distribution registry on loopback, pushed with oras."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from pull.conftest import REGISTRY_PASSWORD, REGISTRY_USER, OciRegistry, run_pull

pytestmark = pytest.mark.runtime

GGUF_MEDIA_TYPE = "application/vnd.slm.model.gguf"
OLLAMA_TEMPLATE = "{{ .System }}<start_of_turn>user\n{{ .Prompt }}<end_of_turn>\n"
OLLAMA_PARAMS = {"stop": ["<end_of_turn>"], "temperature": 0.6, "num_ctx": 4096, "mirostat": 1}


@dataclass(frozen=True)
class Pushed:
    """An artifact in the registry: its repository, manifest digest and model digest."""

    repository: str
    manifest_digest: str
    model_sha256: str


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _push_gguf(registry: OciRegistry, gguf: Path, repository: str, tag: str) -> Pushed:
    """Push the GGUF as a one-layer OCI artifact with the real oras CLI."""
    stage = registry.workdir / f"push-{repository.replace('/', '-')}"
    stage.mkdir(exist_ok=True)
    target = stage / "gemma-3-270m.gguf"
    if not target.exists():
        target.symlink_to(gguf)
    out = registry.oras(
        "push",
        "--plain-http",
        "--format",
        "json",
        "--artifact-type",
        "application/vnd.slm.model",
        f"{registry.host}/{repository}:{tag}",
        f"{target.name}:{GGUF_MEDIA_TYPE}",
        cwd=stage,
    )
    return Pushed(repository, json.loads(out)["digest"], _sha256(gguf))


@pytest.fixture(scope="session")
def pushed_gemma(oci_registry: OciRegistry, gemma_gguf: Path) -> Pushed:
    """The Gemma GGUF as models/gemma:270m."""
    return _push_gguf(oci_registry, gemma_gguf, "models/gemma", "270m")


@pytest.fixture(scope="session")
def pushed_ollama_gemma(oci_registry: OciRegistry, gemma_gguf: Path) -> Pushed:
    """The Gemma GGUF as an Ollama model: library/gemma3:270m with template and params layers."""
    stage = oci_registry.workdir / "ollama"
    stage.mkdir()
    (stage / "model").symlink_to(gemma_gguf)
    (stage / "template").write_text(OLLAMA_TEMPLATE, encoding="utf-8")
    (stage / "system").write_text("You are terse.", encoding="utf-8")
    (stage / "params").write_text(json.dumps(OLLAMA_PARAMS), encoding="utf-8")
    (stage / "config").write_text(
        json.dumps({"model_format": "gguf", "model_family": "gemma3"}), encoding="utf-8"
    )
    repo = f"{oci_registry.host}/library/gemma3"
    descriptors = {}
    for name in ("model", "template", "system", "params", "config"):
        out = oci_registry.oras(
            "blob", "push", "--plain-http", "--descriptor", repo, name, cwd=stage
        )
        descriptors[name] = json.loads(out)
    layers = [
        {
            "mediaType": f"application/vnd.ollama.image.{name}",
            "digest": descriptors[name]["digest"],
            "size": descriptors[name]["size"],
        }
        for name in ("model", "template", "system", "params")
    ]
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": descriptors["config"]["digest"],
            "size": descriptors["config"]["size"],
        },
        "layers": layers,
    }
    (stage / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    oci_registry.oras(
        "manifest",
        "push",
        "--plain-http",
        "--media-type",
        "application/vnd.docker.distribution.manifest.v2+json",
        f"{repo}:270m",
        "manifest.json",
        cwd=stage,
    )
    digest = "sha256:" + hashlib.sha256((stage / "manifest.json").read_bytes()).hexdigest()
    return Pushed("library/gemma3", digest, _sha256(gemma_gguf))


def test_oci_pull_by_tag(oci_registry: OciRegistry, pushed_gemma: Pushed, tmp_path: Path) -> None:
    dest = tmp_path / "models"
    run = run_pull(
        "--source",
        f"oci://{oci_registry.host}/models/gemma:270m",
        "--dest",
        str(dest),
        "--allow-insecure",
        tmp=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert run.result()["digest"] == f"sha256:{pushed_gemma.model_sha256}"
    assert run.result()["files"] == ["model.gguf"]
    assert _sha256(dest / "model.gguf") == pushed_gemma.model_sha256


def test_oci_pull_by_digest_with_a_pin_then_rerun_transfers_nothing(
    oci_registry: OciRegistry, pushed_gemma: Pushed, tmp_path: Path
) -> None:
    dest = tmp_path / "models"
    args = (
        "--source",
        f"oci://{oci_registry.host}/models/gemma@{pushed_gemma.manifest_digest}",
        "--dest",
        str(dest),
        "--sha256",
        pushed_gemma.model_sha256,
        "--allow-insecure",
    )
    first = run_pull(*args, tmp=tmp_path)
    assert first.returncode == 0, first.stderr
    downloads = oci_registry.blob_downloads("models/gemma")
    again = run_pull(*args, tmp=tmp_path)
    assert again.returncode == 0, again.stderr
    assert oci_registry.blob_downloads("models/gemma") == downloads
    assert again.result() == first.result()


def test_oci_pin_that_is_not_the_layer_fails_before_transferring(
    oci_registry: OciRegistry, pushed_gemma: Pushed, tmp_path: Path
) -> None:
    dest = tmp_path / "models"
    downloads = oci_registry.blob_downloads("models/gemma")
    run = run_pull(
        "--source",
        f"oci://{oci_registry.host}/models/gemma:270m",
        "--dest",
        str(dest),
        "--sha256",
        "f" * 64,
        "--allow-insecure",
        tmp=tmp_path,
    )
    assert run.returncode == 2
    assert f"expected sha256:{'f' * 64}, got sha256:{pushed_gemma.model_sha256}" in run.termination
    assert oci_registry.blob_downloads("models/gemma") == downloads
    assert list(dest.iterdir()) == []


def test_oci_unknown_tag_says_not_found(oci_registry: OciRegistry, tmp_path: Path) -> None:
    run = run_pull(
        "--source",
        f"oci://{oci_registry.host}/models/absent:v9",
        "--dest",
        str(tmp_path / "m"),
        "--allow-insecure",
        tmp=tmp_path,
    )
    assert run.returncode == 1
    assert "models/absent/manifests/v9: not found in the registry (HTTP 404)" in run.termination


def test_ollama_pull_places_the_model_and_records_its_defaults(
    oci_registry: OciRegistry, pushed_ollama_gemma: Pushed, tmp_path: Path
) -> None:
    dest = tmp_path / "models"
    source = f"ollama://{oci_registry.host}/library/gemma3:270m"
    run = run_pull("--source", source, "--dest", str(dest), "--allow-insecure", tmp=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.result()["digest"] == f"sha256:{pushed_ollama_gemma.model_sha256}"
    assert _sha256(dest / "model.gguf") == pushed_ollama_gemma.model_sha256
    meta = json.loads((dest / ".slm-model.json").read_text())
    assert meta["format"] == "gguf"
    assert meta["defaults"] == {
        "template": OLLAMA_TEMPLATE,
        "system": "You are terse.",
        "parameters": {"stop": ["<end_of_turn>"], "temperature": 0.6, "contextLength": 4096},
    }
    assert "ignoring unsupported Ollama parameter parameter=mirostat" in run.stderr


def test_basic_auth_registry_needs_and_accepts_credentials(
    basic_auth_registry: OciRegistry, gemma_gguf: Path, tmp_path: Path
) -> None:
    registry = basic_auth_registry
    pushed = _push_gguf_with_auth(registry, gemma_gguf)
    source = f"oci://{registry.host}/private/gemma:v1"
    anonymous = run_pull(
        "--source", source, "--dest", str(tmp_path / "a"), tmp=tmp_path, env=registry.pull_env()
    )
    assert anonymous.returncode == 1
    assert "asks for a username and password" in anonymous.termination

    wrong = run_pull(
        "--source",
        source,
        "--dest",
        str(tmp_path / "b"),
        tmp=tmp_path,
        env={
            **registry.pull_env(),
            "SLM_SOURCE_USERNAME": REGISTRY_USER,
            "SLM_SOURCE_PASSWORD": "not-it",
        },
    )
    assert wrong.returncode == 1
    assert "refused the credentials (HTTP 401)" in wrong.termination
    assert "not-it" not in wrong.stderr + wrong.stdout + wrong.termination

    ok = run_pull(
        "--source",
        source,
        "--dest",
        str(tmp_path / "c"),
        tmp=tmp_path,
        env={
            **registry.pull_env(),
            "SLM_SOURCE_USERNAME": REGISTRY_USER,
            "SLM_SOURCE_PASSWORD": REGISTRY_PASSWORD,
        },
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.result()["digest"] == f"sha256:{pushed.model_sha256}"
    assert REGISTRY_PASSWORD not in ok.stderr + ok.stdout


def test_basic_credentials_are_never_sent_over_plain_http(
    basic_auth_registry_plain_http: OciRegistry, gemma_gguf: Path, tmp_path: Path
) -> None:
    registry = basic_auth_registry_plain_http
    _push_gguf_with_auth(registry, gemma_gguf)
    run = run_pull(
        "--source",
        f"oci://{registry.host}/private/gemma:v1",
        "--dest",
        str(tmp_path / "m"),
        "--allow-insecure",
        tmp=tmp_path,
        env={"SLM_SOURCE_USERNAME": REGISTRY_USER, "SLM_SOURCE_PASSWORD": REGISTRY_PASSWORD},
    )
    assert run.returncode == 1
    assert (
        f"the registry {registry.host} asks for a username and password over plain http, where "
        "they would travel unencrypted; serve the registry over https and drop allowInsecure"
    ) in run.termination
    assert registry.blob_downloads("private/gemma") == 0
    assert not (tmp_path / "m" / "model.gguf").exists()


def _push_gguf_with_auth(registry: OciRegistry, gguf: Path) -> Pushed:
    stage = registry.workdir / "push-private"
    stage.mkdir(exist_ok=True)
    if not (stage / "m.gguf").exists():
        (stage / "m.gguf").symlink_to(gguf)
    out = registry.oras(
        "push",
        *registry.transport(),
        "--format",
        "json",
        "-u",
        REGISTRY_USER,
        "-p",
        REGISTRY_PASSWORD,
        f"{registry.host}/private/gemma:v1",
        f"m.gguf:{GGUF_MEDIA_TYPE}",
        cwd=stage,
    )
    return Pushed("private/gemma", json.loads(out)["digest"], _sha256(gguf))


def test_oci_folder_model_is_verified_with_the_manifest_digest(
    oci_registry: OciRegistry, tmp_path: Path
) -> None:
    folder = tmp_path / "src" / "phi-onnx"
    (folder / "sub").mkdir(parents=True)
    (folder / "genai_config.json").write_text('{"model": {}}', encoding="utf-8")
    (folder / "model.onnx").write_bytes(b"\x08\x07onnx-bytes" * 100)
    (folder / "sub" / "tokenizer.json").write_text("{}", encoding="utf-8")
    expected_manifest = "".join(
        sorted(
            f"{_sha256(folder / rel)}  {rel}\n"
            for rel in ("genai_config.json", "model.onnx", "sub/tokenizer.json")
        )
    )
    folder_digest = hashlib.sha256(expected_manifest.encode()).hexdigest()
    archive = shutil.make_archive(
        str(tmp_path / "src" / "phi"), "tar", tmp_path / "src", "phi-onnx"
    )
    registry = oci_registry
    registry.oras(
        "push",
        "--plain-http",
        f"{registry.host}/models/phi:onnx",
        f"{Path(archive).name}:application/vnd.oci.image.layer.v1.tar",
        cwd=tmp_path / "src",
    )
    dest = tmp_path / "models"
    run = run_pull(
        "--source",
        f"oci://{registry.host}/models/phi:onnx",
        "--dest",
        str(dest),
        "--format",
        "onnx",
        "--sha256",
        folder_digest,
        "--allow-insecure",
        tmp=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert run.result() == {
        "digest": f"sha256:{folder_digest}",
        "sizeBytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
        "files": ["model/genai_config.json", "model/model.onnx", "model/sub/tokenizer.json"],
    }
    assert (dest / "model" / "model.onnx").read_bytes() == (folder / "model.onnx").read_bytes()


def _onnx_folder(root: Path) -> tuple[Path, str]:
    """A small ONNX-shaped folder and its folder digest (sha256 of the sha256sum manifest)."""
    folder = root / "phi-onnx"
    (folder / "sub").mkdir(parents=True)
    (folder / "genai_config.json").write_text('{"model": {}}', encoding="utf-8")
    (folder / "model.onnx").write_bytes(b"\x08\x07onnx-bytes" * 1000)
    (folder / "sub" / "tokenizer.json").write_text("{}", encoding="utf-8")
    manifest = "".join(
        sorted(
            f"{_sha256(folder / rel)}  {rel}\n"
            for rel in ("genai_config.json", "model.onnx", "sub/tokenizer.json")
        )
    )
    return folder, hashlib.sha256(manifest.encode()).hexdigest()


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_oci_compressed_folder_layer_is_read(
    compression: str, oci_registry: OciRegistry, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    folder, folder_digest = _onnx_folder(src)
    tar = Path(shutil.make_archive(str(src / "phi"), "tar", src, folder.name))
    if compression == "gzip":
        layer = src / "phi.tar.gz"
        layer.write_bytes(gzip.compress(tar.read_bytes()))
    else:
        layer = src / "phi.tar.zst"
        layer.write_bytes(zstandard.ZstdCompressor(level=3).compress(tar.read_bytes()))
    repository = f"models/phi-{compression}"
    oci_registry.oras(
        "push",
        "--plain-http",
        f"{oci_registry.host}/{repository}:onnx",
        f"{layer.name}:application/vnd.oci.image.layer.v1.tar+{compression}",
        cwd=src,
    )
    dest = tmp_path / "models"
    run = run_pull(
        "--source",
        f"oci://{oci_registry.host}/{repository}:onnx",
        "--dest",
        str(dest),
        "--format",
        "onnx",
        "--sha256",
        folder_digest,
        "--allow-insecure",
        tmp=tmp_path,
    )
    assert run.returncode == 0, run.termination
    assert run.result()["digest"] == f"sha256:{folder_digest}"
    assert (dest / "model" / "model.onnx").read_bytes() == (folder / "model.onnx").read_bytes()
    assert not (dest / ".slm-partial").exists()


def test_oci_compressed_single_file_layer_is_refused_before_download(
    oci_registry: OciRegistry, gemma_gguf: Path, tmp_path: Path
) -> None:
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "m.gguf.zst").write_bytes(zstandard.ZstdCompressor().compress(b"GGUF" + b"\0" * 4096))
    oci_registry.oras(
        "push",
        "--plain-http",
        f"{oci_registry.host}/models/zstd-gguf:v1",
        "m.gguf.zst:application/vnd.slm.model.gguf+zstd",
        cwd=stage,
    )
    run = run_pull(
        "--source",
        f"oci://{oci_registry.host}/models/zstd-gguf:v1",
        "--dest",
        str(tmp_path / "m"),
        "--allow-insecure",
        tmp=tmp_path,
    )
    assert run.returncode == 1
    assert (
        "is compressed (application/vnd.slm.model.gguf+zstd) but not a tar; push a GGUF "
        "uncompressed, or a model folder as a tar (+gzip or +zstd)" in run.termination
    )
    assert oci_registry.blob_downloads("models/zstd-gguf") == 0
