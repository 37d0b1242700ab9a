"""hf:// pulls through huggingface_hub against a loopback stand-in for the Hub's HTTP API.

The Hub cannot run here, so a small server answers the endpoints huggingface_hub and the puller
call (revision, paths-info, tree, resolve) from a fixed repository; as on the Hub, resolving
an LFS file redirects to another origin (real nginx, playing the CDN).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from pull.conftest import ROOT, Nginx, run_pull

pytestmark = pytest.mark.runtime

REPO = "acme/gemma-3-270m"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_loopbackTestToken1234"
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
FOLDER = {
    "onnx/cpu-int4/genai_config.json": b'{"model": {"type": "gemma3"}}',
    "onnx/cpu-int4/model.onnx": bytes(range(256)) * 40,
    "onnx/cpu-int4/tokenizer/tokenizer.json": b'{"version": "1.0"}',
}
# Folders whose listing (as a hostile mirror could serve it) names files outside the folder:
# climbing out with '..', or an absolute path after the folder's prefix.
ESCAPE_NAME = "escaped-by-listing.txt"
ESCAPING = {
    "climb/genai_config.json": b"{}",
    f"climb/../../../{ESCAPE_NAME}": b"written outside the destination",
}
ABSOLUTE_DIR = Path(f"/tmp/slm-hf-absolute-{os.getpid()}")
ABSOLUTE = {
    "absolute/genai_config.json": b"{}",
    f"absolute/{ABSOLUTE_DIR}/{ESCAPE_NAME}": b"written outside the destination",
}
SERVED = {**FOLDER, **ESCAPING, **ABSOLUTE}


@dataclass
class HubStandIn:
    """The served repository and a record of the requests."""

    url: str
    gguf_sha256: str
    requests: list[tuple[str, str, bool]] = field(default_factory=list)


def _entries(gguf_size: int, gguf_sha256: str) -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {
        GGUF_NAME: {
            "type": "file",
            "path": GGUF_NAME,
            "size": gguf_size,
            "oid": "1" * 40,
            "lfs": {"oid": gguf_sha256, "size": gguf_size, "pointerSize": 134},
        }
    }
    for path, data in SERVED.items():
        entries[path] = {"type": "file", "path": path, "size": len(data), "oid": "2" * 40}
    for folder in ("onnx", "onnx/cpu-int4", "onnx/cpu-int4/tokenizer", "climb", "absolute"):
        entries[folder] = {"type": "directory", "path": folder, "oid": "3" * 40}
    return entries


@pytest.fixture(scope="module")
def hub(nginx: Nginx, gemma_gguf: Path) -> Iterator[HubStandIn]:
    """The stand-in Hub on a loopback port, requiring the token on every request."""
    with gemma_gguf.open("rb") as f:
        gguf_sha = hashlib.file_digest(f, "sha256").hexdigest()
    entries = _entries(gemma_gguf.stat().st_size, gguf_sha)
    state = HubStandIn(url="", gguf_sha256=gguf_sha)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, value: object) -> None:
            self._send(200, json.dumps(value).encode(), {"Content-Type": "application/json"})

        def _authorized(self) -> bool:
            ok = self.headers.get("Authorization") == f"Bearer {TOKEN}"
            state.requests.append((self.command, self.path, ok))
            if not ok:
                self._send(401, b'{"error": "Invalid credentials"}', {"X-Error-Code": "Unauth"})
            return ok

        def _revision(self, rev: str) -> bool:
            if unquote(rev) in ("main", COMMIT):
                return True
            self._send(404, b'{"error": "Invalid rev id"}', {"X-Error-Code": "RevisionNotFound"})
            return False

        def do_GET(self) -> None:
            if not self._authorized():
                return
            url = urlsplit(self.path)
            prefix = f"/api/models/{REPO}/"
            if url.path.startswith(prefix + "revision/"):
                if self._revision(url.path.removeprefix(prefix + "revision/")):
                    self._json({"id": REPO, "sha": COMMIT})
            elif url.path.startswith(prefix + "tree/"):
                rev, _, path = url.path.removeprefix(prefix + "tree/").partition("/")
                path = unquote(path)
                recursive = parse_qs(url.query).get("recursive", [""])[0].lower() == "true"
                if self._revision(rev):
                    self._json(
                        [
                            e
                            for p, e in sorted(entries.items())
                            if p.startswith(path + "/")
                            and (recursive or "/" not in p.removeprefix(path + "/"))
                        ]
                    )
            elif url.path.startswith(f"/{REPO}/resolve/"):
                rev, _, path = url.path.removeprefix(f"/{REPO}/resolve/").partition("/")
                path = unquote(path)
                if not self._revision(rev):
                    return
                if path == GGUF_NAME:
                    self._send(302, b"", {"Location": nginx.url("gemma.gguf")})
                elif path in SERVED:
                    self._send(200, SERVED[path], {"ETag": '"' + "2" * 40 + '"'})
                else:
                    self._send(404, b"{}", {"X-Error-Code": "EntryNotFound"})
            else:
                self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            form = parse_qs(self.rfile.read(length).decode())
            if not self._authorized():
                return
            prefix = f"/api/models/{REPO}/paths-info/"
            if self.path.startswith(prefix) and self._revision(self.path.removeprefix(prefix)):
                self._json([entries[p] for p in form.get("paths", []) if p in entries])
            elif not self.path.startswith(prefix):
                self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def test_hf_file_is_pulled_with_the_token_and_pinned_to_a_commit(
    hub: HubStandIn, nginx: Nginx, tmp_path: Path
) -> None:
    dest = tmp_path / "models"
    source = f"hf://{REPO}/{GGUF_NAME}"
    before = len(nginx.requests())
    run = run_pull(
        "--source",
        source,
        "--dest",
        str(dest),
        "--hf-endpoint",
        hub.url,
        "--sha256",
        hub.gguf_sha256,
        tmp=tmp_path,
        env={"SLM_SOURCE_TOKEN": TOKEN},
    )
    assert run.returncode == 0, run.stderr
    assert run.result() == {
        "digest": f"sha256:{hub.gguf_sha256}",
        "sizeBytes": (dest / "model.gguf").stat().st_size,
        "files": ["model.gguf"],
    }
    assert all(ok for _, _, ok in hub.requests)
    resolves = [path for _, path, _ in hub.requests if "/resolve/" in path]
    assert resolves == [f"/{REPO}/resolve/{COMMIT}/{GGUF_NAME}"]
    (cdn_request,) = nginx.requests()[before:]
    assert cdn_request.endswith('"-"'), "the token must not follow the redirect to another origin"
    assert TOKEN not in run.stdout + run.stderr
    meta = json.loads((dest / ".slm-model.json").read_text())
    assert meta["source"] == f"hf://{REPO}@main/{GGUF_NAME}"


def test_hf_folder_is_pulled_and_verified_with_the_folder_digest(
    hub: HubStandIn, tmp_path: Path
) -> None:
    manifest = "".join(
        sorted(
            f"{hashlib.sha256(data).hexdigest()}  {path.removeprefix('onnx/cpu-int4/')}\n"
            for path, data in FOLDER.items()
        )
    )
    digest = hashlib.sha256(manifest.encode()).hexdigest()
    dest = tmp_path / "models"
    run = run_pull(
        "--source",
        f"hf://{REPO}@{COMMIT}/onnx/cpu-int4",
        "--dest",
        str(dest),
        "--hf-endpoint",
        hub.url,
        "--sha256",
        digest,
        tmp=tmp_path,
        env={"SLM_SOURCE_TOKEN": TOKEN},
    )
    assert run.returncode == 0, run.stderr
    assert run.result()["digest"] == f"sha256:{digest}"
    assert run.result()["files"] == [
        "model/genai_config.json",
        "model/model.onnx",
        "model/tokenizer/tokenizer.json",
    ]
    for path, data in FOLDER.items():
        assert (dest / "model" / path.removeprefix("onnx/cpu-int4/")).read_bytes() == data


def test_hf_without_the_token_fails_and_says_so(hub: HubStandIn, tmp_path: Path) -> None:
    run = run_pull(
        "--source",
        f"hf://{REPO}/{GGUF_NAME}",
        "--dest",
        str(tmp_path / "m"),
        "--hf-endpoint",
        hub.url,
        tmp=tmp_path,
        env={"SLM_SOURCE_TOKEN": ""},
    )
    assert run.returncode == 1
    assert run.termination.startswith(f"hf://{REPO}@main/{GGUF_NAME}: ")
    assert "401" in run.termination


def test_hf_unknown_revision_fails_with_the_hub_message(hub: HubStandIn, tmp_path: Path) -> None:
    run = run_pull(
        "--source",
        f"hf://{REPO}@v9/{GGUF_NAME}",
        "--dest",
        str(tmp_path / "m"),
        "--hf-endpoint",
        hub.url,
        tmp=tmp_path,
        env={"SLM_SOURCE_TOKEN": TOKEN},
    )
    assert run.returncode == 1
    assert "RevisionNotFoundError: 404 Client Error. (Invalid rev id)" in run.termination


def test_hf_rerun_with_the_model_present_asks_the_hub_nothing(
    hub: HubStandIn, nginx: Nginx, tmp_path: Path
) -> None:
    dest = tmp_path / "models"
    args = [
        "--source",
        f"hf://{REPO}/{GGUF_NAME}",
        "--dest",
        str(dest),
        "--hf-endpoint",
        hub.url,
        "--sha256",
        hub.gguf_sha256,
    ]
    first = run_pull(*args, tmp=tmp_path, env={"SLM_SOURCE_TOKEN": TOKEN})
    assert first.returncode == 0, first.stderr
    hub_before, cdn_before = len(hub.requests), len(nginx.requests())
    # The same command in-process, to see which modules the re-run needed.
    script = (
        "import sys\n"
        "from slm_runtime.cli import main\n"
        f"code = main(['pull', *{args!r}, '--termination-log', {str(tmp_path / 'again')!r}])\n"
        "print(sorted(m for m in ('httpx', 'huggingface_hub') if m in sys.modules))\n"
        "sys.exit(code)\n"
    )
    again = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "runtime-image"), "SLM_SOURCE_TOKEN": TOKEN},
        timeout=120,
        check=False,
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1] == "[]"
    assert json.loads((tmp_path / "again").read_text()) == first.result()
    assert (len(hub.requests), len(nginx.requests())) == (hub_before, cdn_before)


@pytest.mark.parametrize(
    ("folder", "escaped"),
    [("climb", f"../{ESCAPE_NAME}"), ("absolute", f"{ABSOLUTE_DIR}/{ESCAPE_NAME}")],
)
def test_hf_folder_listing_cannot_place_files_outside_the_destination(
    folder: str, escaped: str, hub: HubStandIn, tmp_path: Path
) -> None:
    dest = tmp_path / "models"
    outside = (dest / escaped).resolve()
    run = run_pull(
        "--source",
        f"hf://{REPO}/{folder}",
        "--dest",
        str(dest),
        "--hf-endpoint",
        hub.url,
        tmp=tmp_path,
        env={"SLM_SOURCE_TOKEN": TOKEN},
    )
    assert run.returncode == 1
    listed = next(p for p in SERVED if p.startswith(f"{folder}/") and ESCAPE_NAME in p)
    assert f"the repository listing names {listed!r}, which is not a file inside {folder!r}" in (
        run.termination
    )
    assert not outside.exists()
    assert not (dest / "model").exists()
    # Refused before anything is downloaded.
    assert not [p for _, p, _ in hub.requests if f"/resolve/{COMMIT}/{folder}/" in p]


@pytest.mark.parametrize("planted", [".slm-partial", ".slm-partial/hf-folder"])
def test_hf_folder_pull_does_not_follow_links_already_in_the_destination(
    planted: str, hub: HubStandIn, tmp_path: Path
) -> None:
    dest = tmp_path / "models"
    outside = tmp_path / "outside"
    outside.mkdir()
    (dest / planted).parent.mkdir(parents=True, exist_ok=True)
    (dest / planted).symlink_to(outside, target_is_directory=True)
    run = run_pull(
        "--source",
        f"hf://{REPO}@{COMMIT}/onnx/cpu-int4",
        "--dest",
        str(dest),
        "--hf-endpoint",
        hub.url,
        tmp=tmp_path,
        env={"SLM_SOURCE_TOKEN": TOKEN},
    )
    assert run.returncode == 0, run.termination
    assert list(outside.iterdir()) == []
    assert not (dest / ".slm-partial").is_symlink(), "partial files went through the link"
    model = dest / "model"
    assert model.is_dir()
    assert not model.is_symlink()
    for path, data in FOLDER.items():
        assert (model / path.removeprefix("onnx/cpu-int4/")).read_bytes() == data
