"""Bearer-token auth: the distribution registry in token mode, with a loopback token service.

The registry verifies RS256 tokens whose x5c certificate chains to its root bundle, as it does
behind Docker Hub's or Harbor's token services; the token service here is a small loopback
server that checks basic credentials and signs tokens with openssl.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from pull.conftest import OciRegistry, run_pull, start_registry, stop

pytestmark = pytest.mark.runtime

SERVICE = "slm-test-registry"
ISSUER = "slm-test-token-service"
USER, PASSWORD = "puller", "t0ken-Pa55"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenService:
    """Signs registry tokens for a user with the right password."""

    key: Path
    cert_der: bytes
    url: str = ""

    def mint(self, repository: str, actions: list[str]) -> str:
        """A signed token granting ``actions`` on ``repository``."""
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self.cert_der).decode()]}
        claims = {
            "iss": ISSUER,
            "sub": USER,
            "aud": SERVICE,
            "iat": now,
            "nbf": now - 30,
            "exp": now + 600,
            "jti": secrets.token_hex(8),
            "access": [{"type": "repository", "name": repository, "actions": actions}],
        }
        signing_input = (
            _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        )
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(),
            capture_output=True,
            check=True,
        ).stdout
        return signing_input + "." + _b64url(signature)


@pytest.fixture(scope="module")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[OciRegistry, TokenService]]:
    """A registry in token-auth mode and its token service."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    workdir = tmp_path_factory.mktemp("registry-token")
    key, cert = workdir / "key.pem", workdir / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            f"/CN={ISSUER}",
        ],
        check=True,
        capture_output=True,
    )
    der = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-outform", "DER"], check=True, capture_output=True
    ).stdout
    service = TokenService(key=key, cert_der=der)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            if self.headers.get("Authorization") != expected:
                body = b'{"details": "incorrect username or password"}'
                self.send_response(401)
            else:
                query = parse_qs(urlsplit(self.path).query)
                _, _, rest = query.get("scope", [""])[0].partition(":")
                repository, _, actions = rest.rpartition(":")
                token = service.mint(repository, actions.split(","))
                body = json.dumps({"token": token, "expires_in": 600}).encode()
                self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    service.url = f"http://127.0.0.1:{server.server_address[1]}/token"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    auth = (
        f"auth:\n  token:\n    realm: {service.url}\n    service: {SERVICE}\n"
        f"    issuer: {ISSUER}\n    rootcertbundle: {cert}\n"
    )
    proc, host = start_registry(workdir, auth)
    try:
        yield OciRegistry(host=host, workdir=workdir), service
    finally:
        stop(proc)
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def pushed(
    token_registry: tuple[OciRegistry, TokenService], tmp_path_factory: pytest.TempPathFactory
) -> str:
    """A small GGUF pushed with oras through the token flow; returns its sha256."""
    registry, _ = token_registry
    stage = tmp_path_factory.mktemp("token-push")
    data = b"GGUF" + bytes(range(256)) * 64
    (stage / "tiny.gguf").write_bytes(data)
    registry.oras(
        "push",
        "--plain-http",
        "-u",
        USER,
        "-p",
        PASSWORD,
        f"{registry.host}/private/tiny:v1",
        "tiny.gguf:application/vnd.slm.model.gguf",
        cwd=stage,
    )
    return hashlib.sha256(data).hexdigest()


def test_bearer_challenge_is_answered_through_the_token_service(
    token_registry: tuple[OciRegistry, TokenService], pushed: str, tmp_path: Path
) -> None:
    registry, _ = token_registry
    source = f"oci://{registry.host}/private/tiny:v1"
    ok = run_pull(
        "--source",
        source,
        "--dest",
        str(tmp_path / "ok"),
        "--allow-insecure",
        tmp=tmp_path,
        env={"SLM_SOURCE_USERNAME": USER, "SLM_SOURCE_PASSWORD": PASSWORD},
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.result()["digest"] == f"sha256:{pushed}"
    assert PASSWORD not in ok.stdout + ok.stderr

    refused = run_pull(
        "--source",
        source,
        "--dest",
        str(tmp_path / "no"),
        "--allow-insecure",
        tmp=tmp_path,
        env={"SLM_SOURCE_USERNAME": USER, "SLM_SOURCE_PASSWORD": "wrong"},
    )
    assert refused.returncode == 1
    assert "the token service refused (HTTP 401)" in refused.termination


def test_a_preissued_registry_token_is_sent_as_bearer(
    token_registry: tuple[OciRegistry, TokenService], pushed: str, tmp_path: Path
) -> None:
    registry, service = token_registry
    source = f"oci://{registry.host}/private/tiny:v1"
    token = service.mint("private/tiny", ["pull"])
    ok = run_pull(
        "--source",
        source,
        "--dest",
        str(tmp_path / "ok"),
        "--allow-insecure",
        tmp=tmp_path,
        env={"SLM_SOURCE_TOKEN": token},
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.result()["digest"] == f"sha256:{pushed}"
    assert token not in ok.stdout + ok.stderr

    other_repo = service.mint("private/other", ["pull"])
    refused = run_pull(
        "--source",
        source,
        "--dest",
        str(tmp_path / "no"),
        "--allow-insecure",
        tmp=tmp_path,
        env={"SLM_SOURCE_TOKEN": other_repo},
    )
    assert refused.returncode == 1
    assert "refused the credentials (HTTP 401)" in refused.termination
