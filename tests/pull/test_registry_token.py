"""Bearer-token auth: the distribution registry in token mode, with a loopback token service.

The registry verifies RS256 tokens whose x5c certificate chains to its root bundle, as it does
behind Docker Hub's or Harbor's token services; the token service here is a small loopback
server that checks basic credentials and signs tokens with openssl. Registry and token service
speak https with one self-signed certificate (for 127.0.0.1 and localhost), which the puller
trusts through SSL_CERT_FILE; a second token service on plain http is never to be asked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from pull.conftest import OciRegistry, PullRun, run_pull, self_signed, start_registry, stop

pytestmark = pytest.mark.runtime

SERVICE = "slm-test-registry"
ISSUER = "slm-test-token-service"
USER, PASSWORD = "puller", "t0ken-Pa55"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenService:
    """Signs registry tokens for a user with the right password; counts the requests."""

    key: Path
    cert_der: bytes
    url: str = ""
    requests: list[str] = field(default_factory=list)

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


@dataclass
class TokenSetup:
    """The token-signing key pair, the TLS certificate, and a token service on https and http."""

    workdir: Path
    signing_cert: Path
    tls: tuple[Path, Path]
    https: TokenService
    http: TokenService


def _serve(service: TokenService, tls: tuple[Path, Path] | None) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            service.requests.append(self.path)
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
    scheme = "http"
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    service.url = f"{scheme}://127.0.0.1:{server.server_address[1]}/token"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenSetup]:
    """A token service on https (the registry's certificate) and the same on plain http."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    workdir = tmp_path_factory.mktemp("registry-token")
    key, cert = workdir / "signing-key.pem", workdir / "signing-cert.pem"
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
    tls = self_signed(workdir)
    setup = TokenSetup(workdir, cert, tls, TokenService(key, der), TokenService(key, der))
    servers = [_serve(setup.https, tls), _serve(setup.http, None)]
    try:
        yield setup
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def _token_registry(
    tokens: TokenSetup, name: str, realm: str
) -> tuple[subprocess.Popen[bytes], OciRegistry]:
    """An HTTPS registry in token mode whose challenges name ``realm``; all share one storage."""
    workdir = tokens.workdir / name
    workdir.mkdir()
    (tokens.workdir / "storage").mkdir(exist_ok=True)
    (workdir / "storage").symlink_to(tokens.workdir / "storage")
    auth = (
        f"auth:\n  token:\n    realm: {realm}\n    service: {SERVICE}\n"
        f"    issuer: {ISSUER}\n    rootcertbundle: {tokens.signing_cert}\n"
    )
    proc, host = start_registry(workdir, auth, tls=tokens.tls)
    return proc, OciRegistry(host=host, workdir=workdir, ca_file=tokens.tls[0])


@pytest.fixture(scope="module")
def token_registry(tokens: TokenSetup) -> Iterator[tuple[OciRegistry, TokenService]]:
    """A registry whose token service is https on its own host (127.0.0.1, another port)."""
    proc, registry = _token_registry(tokens, "same-host", tokens.https.url)
    try:
        yield registry, tokens.https
    finally:
        stop(proc)


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
        *registry.transport(),
        "-u",
        USER,
        "-p",
        PASSWORD,
        f"{registry.host}/private/tiny:v1",
        "tiny.gguf:application/vnd.slm.model.gguf",
        cwd=stage,
    )
    return hashlib.sha256(data).hexdigest()


def _pull(registry: OciRegistry, dest: Path, *args: str, env: dict[str, str]) -> PullRun:
    return run_pull(
        "--source",
        f"oci://{registry.host}/private/tiny:v1",
        "--dest",
        str(dest),
        *args,
        tmp=dest.parent,
        env={**registry.pull_env(), **env},
    )


BASIC = {"SLM_SOURCE_USERNAME": USER, "SLM_SOURCE_PASSWORD": PASSWORD}


def test_bearer_challenge_is_answered_through_the_token_service(
    token_registry: tuple[OciRegistry, TokenService], pushed: str, tmp_path: Path
) -> None:
    registry, _ = token_registry
    ok = _pull(registry, tmp_path / "ok", env=BASIC)
    assert ok.returncode == 0, ok.stderr
    assert ok.result()["digest"] == f"sha256:{pushed}"
    assert PASSWORD not in ok.stdout + ok.stderr

    refused = _pull(registry, tmp_path / "no", env={**BASIC, "SLM_SOURCE_PASSWORD": "wrong"})
    assert refused.returncode == 1
    assert "the token service refused (HTTP 401)" in refused.termination


def test_a_preissued_registry_token_is_sent_as_bearer(
    token_registry: tuple[OciRegistry, TokenService], pushed: str, tmp_path: Path
) -> None:
    registry, service = token_registry
    token = service.mint("private/tiny", ["pull"])
    ok = _pull(registry, tmp_path / "ok", env={"SLM_SOURCE_TOKEN": token})
    assert ok.returncode == 0, ok.stderr
    assert ok.result()["digest"] == f"sha256:{pushed}"
    assert token not in ok.stdout + ok.stderr

    other_repo = service.mint("private/other", ["pull"])
    refused = _pull(registry, tmp_path / "no", env={"SLM_SOURCE_TOKEN": other_repo})
    assert refused.returncode == 1
    assert "refused the credentials (HTTP 401)" in refused.termination


def test_a_token_realm_on_plain_http_never_gets_the_credentials(
    tokens: TokenSetup, pushed: str, tmp_path: Path
) -> None:
    proc, registry = _token_registry(tokens, "http-realm", tokens.http.url)
    try:
        before = len(tokens.http.requests)
        run = _pull(registry, tmp_path / "m", env=BASIC)
    finally:
        stop(proc)
    assert run.returncode == 1
    assert f"sends token requests to {tokens.http.url}, which is not https" in run.termination
    assert len(tokens.http.requests) == before, "the credentials went to a plain-http realm"
    assert not (tmp_path / "m" / "model.gguf").exists()


def test_a_token_realm_on_another_host_needs_the_puller_to_trust_it(
    tokens: TokenSetup, pushed: str, tmp_path: Path
) -> None:
    other = tokens.https.url.replace("127.0.0.1", "localhost")
    proc, registry = _token_registry(tokens, "other-host-realm", other)
    try:
        before = len(tokens.https.requests)
        refused = _pull(registry, tmp_path / "no", env=BASIC)
        assert len(tokens.https.requests) == before, "the credentials went to another host"
        trusted = _pull(registry, tmp_path / "ok", "--token-realm-hosts", "localhost", env=BASIC)
        by_env = _pull(
            registry,
            tmp_path / "env",
            env={**BASIC, "SLM_TOKEN_REALM_HOSTS": "x.example,localhost"},
        )
    finally:
        stop(proc)
    assert refused.returncode == 1
    assert (
        f"the registry {registry.host} sends token requests to {other}, another host; if you "
        "trust it, add localhost to the puller's --token-realm-hosts (env SLM_TOKEN_REALM_HOSTS)"
    ) in refused.termination
    assert trusted.returncode == 0, trusted.stderr
    assert trusted.result()["digest"] == f"sha256:{pushed}"
    assert by_env.returncode == 0, by_env.stderr


def test_an_anonymous_token_request_may_go_to_another_host(
    tokens: TokenSetup, pushed: str, tmp_path: Path
) -> None:
    """Docker Hub's token service is another host: a request without credentials sends
    nothing of ours, so the realm rule does not stop it."""
    other = tokens.https.url.replace("127.0.0.1", "localhost")
    proc, registry = _token_registry(tokens, "anonymous-other-host", other)
    try:
        before = len(tokens.https.requests)
        run = _pull(registry, tmp_path / "m", env={})
    finally:
        stop(proc)
    assert len(tokens.https.requests) == before + 1, "the anonymous token request was refused"
    assert "another host" not in run.termination
    assert "the token service refused (HTTP 401)" in run.termination
