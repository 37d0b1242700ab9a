"""https:// pulls against nginx on loopback: verify, resume after a cut, refuse a wrong digest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from pull.conftest import CuttingProxy, Nginx, run_pull

pytestmark = pytest.mark.runtime


@pytest.fixture(scope="session")
def gemma_sha256(gemma_gguf: Path) -> str:
    """The Gemma GGUF's sha256, computed independently with hashlib."""
    with gemma_gguf.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def test_pull_places_the_verified_file_and_records_it(
    nginx: Nginx, gemma_gguf: Path, gemma_sha256: str, tmp_path: Path
) -> None:
    dest = tmp_path / "models"
    run = run_pull(
        "--source",
        nginx.url("gemma.gguf"),
        "--dest",
        str(dest),
        "--sha256",
        gemma_sha256,
        "--allow-insecure",
        tmp=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    size = gemma_gguf.stat().st_size
    assert run.result() == {
        "digest": f"sha256:{gemma_sha256}",
        "sizeBytes": size,
        "files": ["model.gguf"],
    }
    assert (dest / "model.gguf").read_bytes()[:4] == b"GGUF"
    assert (dest / "model.gguf").stat().st_size == size
    meta = json.loads((dest / ".slm-model.json").read_text())
    assert meta["digest"] == f"sha256:{gemma_sha256}"
    assert meta["source"] == nginx.url("gemma.gguf")
    assert meta["format"] == "gguf"
    assert sorted(p.name for p in dest.iterdir()) == [".slm-model.json", "model.gguf"]
    with (dest / "model.gguf").open("rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == gemma_sha256
    events = run.events()
    assert events[-1]["event"] == "done"
    assert any(e["event"] == "progress" and e["bytes"] == size for e in events)
    (transferred,) = [e for e in events if e["event"] == "transferred"]
    assert transferred["bytes"] == size
    assert isinstance(transferred["seconds"], float)
    assert transferred["seconds"] > 0


def test_rerun_with_matching_digest_transfers_nothing(
    nginx: Nginx, gemma_sha256: str, tmp_path: Path
) -> None:
    dest = tmp_path / "models"
    args = ("--source", nginx.url("gemma.gguf"), "--dest", str(dest), "--allow-insecure")
    assert run_pull(*args, "--sha256", gemma_sha256, tmp=tmp_path).returncode == 0
    before = len(nginx.requests())
    again = run_pull(*args, "--sha256", gemma_sha256, tmp=tmp_path)
    unpinned = run_pull(*args, tmp=tmp_path)
    assert again.returncode == 0, again.stderr
    assert unpinned.returncode == 0, unpinned.stderr
    assert len(nginx.requests()) == before
    assert again.result()["digest"] == unpinned.result()["digest"] == f"sha256:{gemma_sha256}"


def test_a_cut_transfer_resumes_with_a_range_request(
    cutting_proxy: CuttingProxy, gemma_sha256: str, tmp_path: Path
) -> None:
    dest = tmp_path / "models"
    run = run_pull(
        "--source",
        cutting_proxy.url("gemma.gguf"),
        "--dest",
        str(dest),
        "--sha256",
        gemma_sha256,
        "--allow-insecure",
        tmp=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert len(cutting_proxy.requests) == 2
    assert "range:" not in cutting_proxy.requests[0].lower()
    (delivered,) = cutting_proxy.delivered_body_bytes
    assert f"Range: bytes={delivered}-" in cutting_proxy.requests[1]
    assert "If-Range:" in cutting_proxy.requests[1]
    assert [e["event"] for e in run.events()].count("retry") == 1
    assert run.result()["digest"] == f"sha256:{gemma_sha256}"
    with (dest / "model.gguf").open("rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == gemma_sha256


def test_a_restarted_pull_resumes_what_the_failed_one_left(
    cutting_proxy: CuttingProxy, gemma_sha256: str, tmp_path: Path
) -> None:
    dest = tmp_path / "models"
    args = (
        "--source",
        cutting_proxy.url("gemma.gguf"),
        "--dest",
        str(dest),
        "--sha256",
        gemma_sha256,
        "--allow-insecure",
    )
    first = run_pull(*args, "--retries", "0", tmp=tmp_path)
    assert first.returncode == 1
    (delivered,) = cutting_proxy.delivered_body_bytes
    assert f"giving up after 0 retries at byte {delivered}:" in first.termination
    assert not (dest / "model.gguf").exists()
    assert not (dest / ".slm-model.json").exists()

    second = run_pull(*args, tmp=tmp_path)
    assert second.returncode == 0, second.stderr
    assert f"Range: bytes={delivered}-" in cutting_proxy.requests[1]
    assert second.result()["digest"] == f"sha256:{gemma_sha256}"
    assert sorted(p.name for p in dest.iterdir()) == [".slm-model.json", "model.gguf"]


def test_a_disk_write_failure_fails_at_once_and_places_nothing(
    nginx: Nginx, gemma_sha256: str, tmp_path: Path
) -> None:
    dest = tmp_path / "models"
    run = run_pull(
        "--source",
        nginx.url("gemma.gguf"),
        "--dest",
        str(dest),
        "--sha256",
        gemma_sha256,
        "--allow-insecure",
        tmp=tmp_path,
        file_size_limit=20_000_000,
    )
    assert run.returncode == 1, run.stderr
    assert run.termination.startswith("cannot write ")
    assert "File too large" in run.termination
    assert [e["event"] for e in run.events()].count("retry") == 0
    assert not (dest / "model.gguf").exists()
    assert not (dest / ".slm-model.json").exists()


def test_wrong_sha256_names_both_digests_and_leaves_nothing(
    nginx: Nginx, gemma_sha256: str, tmp_path: Path
) -> None:
    dest = tmp_path / "models"
    wrong = "0" * 64
    run = run_pull(
        "--source",
        nginx.url("gemma.gguf"),
        "--dest",
        str(dest),
        "--sha256",
        wrong,
        "--allow-insecure",
        tmp=tmp_path,
    )
    assert run.returncode == 2
    assert f"expected sha256:{wrong}, got sha256:{gemma_sha256}" in run.termination
    assert run.events()[-1] == {"event": "error", "message": run.termination}
    assert list(dest.iterdir()) == []


def test_http_is_refused_without_allow_insecure(nginx: Nginx, tmp_path: Path) -> None:
    before = len(nginx.requests())
    run = run_pull("--source", nginx.url("gemma.gguf"), "--dest", str(tmp_path), tmp=tmp_path)
    assert run.returncode == 2
    assert "allowInsecure: true" in run.termination
    assert len(nginx.requests()) == before


def test_a_file_that_is_not_gguf_is_not_placed(nginx: Nginx, tmp_path: Path) -> None:
    dest = tmp_path / "models"
    run = run_pull(
        "--source",
        nginx.url("not-a-model.bin"),
        "--dest",
        str(dest),
        "--format",
        "gguf",
        "--allow-insecure",
        tmp=tmp_path,
    )
    assert run.returncode == 1
    assert "is not a GGUF file" in run.termination
    assert not (dest / "model.gguf").exists()
    assert [p.name for p in dest.rglob("*") if p.is_file()] == []


def test_a_missing_file_fails_with_the_status(nginx: Nginx, tmp_path: Path) -> None:
    run = run_pull(
        "--source",
        nginx.url("absent.gguf"),
        "--dest",
        str(tmp_path / "m"),
        "--allow-insecure",
        tmp=tmp_path,
    )
    assert run.returncode == 1
    assert "HTTP 404" in run.termination


def test_a_model_changed_after_its_pull_is_pulled_again(
    nginx: Nginx, gemma_sha256: str, tmp_path: Path
) -> None:
    dest = tmp_path / "models"
    args = ("--source", nginx.url("gemma.gguf"), "--dest", str(dest), "--allow-insecure")
    assert run_pull(*args, tmp=tmp_path).returncode == 0
    with (dest / "model.gguf").open("r+b") as f:
        f.seek(1000)
        f.write(b"\xff" * 16)
    before = len(nginx.requests())
    again = run_pull(*args, "--sha256", gemma_sha256, tmp=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "does not match its metadata; pulling again" in again.stderr
    assert len(nginx.requests()) == before + 1
    with (dest / "model.gguf").open("rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == gemma_sha256


def test_https_verifies_the_server_certificate(
    nginx: Nginx, gemma_sha256: str, tmp_path: Path
) -> None:
    dest = tmp_path / "models"
    args = ("--source", nginx.https_url("gemma.gguf"), "--dest", str(dest))
    untrusted = run_pull(*args, tmp=tmp_path)
    assert untrusted.returncode == 1
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.termination
    assert "SSL_CERT_FILE" in untrusted.termination
    assert [e["event"] for e in untrusted.events()].count("retry") == 0
    assert not (dest / "model.gguf").exists()

    trusted = run_pull(
        *args, "--sha256", gemma_sha256, tmp=tmp_path, env={"SSL_CERT_FILE": str(nginx.ca_file)}
    )
    assert trusted.returncode == 0, trusted.stderr
    assert trusted.result()["digest"] == f"sha256:{gemma_sha256}"


def test_the_source_token_goes_only_to_the_source_host(
    nginx: Nginx, gemma_sha256: str, tmp_path: Path
) -> None:
    token = "https-source-token-1234"
    env = {"SSL_CERT_FILE": str(nginx.ca_file), "SLM_SOURCE_TOKEN": token}
    sent: dict[str, list[str]] = {}
    for name in ("moved", "elsewhere"):
        before = len(nginx.requests())
        run = run_pull(
            "--source",
            nginx.https_url(f"{name}/gemma.gguf"),
            "--dest",
            str(tmp_path / name),
            "--sha256",
            gemma_sha256,
            tmp=tmp_path,
            env=env,
        )
        assert run.returncode == 0, run.termination
        assert token not in run.stdout + run.stderr
        sent[name] = nginx.requests()[before:]
    # (host:port, status, Authorization) of each request nginx saw. A redirect on the same
    # origin keeps the token; one to another origin (localhost is not 127.0.0.1) drops it.
    seen = {
        name: [(line.split()[0], line.split()[1], line.split('"')[-2]) for line in lines]
        for name, lines in sent.items()
    }
    origin = f"127.0.0.1:{nginx.tls_port}"
    assert seen["moved"] == [(origin, "302", f"Bearer {token}"), (origin, "200", f"Bearer {token}")]
    assert seen["elsewhere"] == [
        (origin, "302", f"Bearer {token}"),
        (f"localhost:{nginx.tls_port}", "200", "-"),
    ]
