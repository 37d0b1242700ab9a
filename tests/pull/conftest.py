"""Real servers on loopback for the puller: nginx (HTTP Range), a cutting proxy, an OCI registry.

Every test here carries the `pull` marker. A server or tool that is not installed (nginx,
htpasswd, openssl, the registry, oras) skips its tests on a developer machine; under CI
(`CI` set, as CI services do) the skip is a failure, so the suite cannot quietly stop running.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("SLM_CACHE_DIR", Path.home() / ".cache/slm-operator")) / "bin"
VERSIONS = dict(
    re.findall(
        r"^([A-Z0-9_]+)=(v\S+)$",
        (ROOT / "hack" / "pull-versions.sh").read_text(encoding="utf-8"),
        re.MULTILINE,
    )
)
"""The versions hack/setup.d/30-pull.sh builds, from the file it sources."""
REGISTRY_BIN = BIN_DIR / f"registry-{VERSIONS['REGISTRY_VERSION']}"
ORAS_BIN = BIN_DIR / f"oras-{VERSIONS['ORAS_VERSION']}"
SETUP_HINT = "run `make setup` (hack/setup.d/30-pull.sh installs it)"


def in_ci() -> bool:
    """True under CI, where a missing tool must fail the suite rather than skip it."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this folder is part of the pull suite (`pytest -m pull`)."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.pull)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Under CI, a skip in this suite (a server or tool is not installed) is a failure."""
    report = yield
    if report.skipped and in_ci() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"{reason}\nCI is set: the pull suite fails instead of skipping"
    return report


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Wait until something accepts connections on ``port``, or fail if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a server we started, and reap it."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class PullRun:
    """One `slm-runtime pull` process: exit code, output and its termination log."""

    returncode: int
    stdout: str
    stderr: str
    termination: str

    def events(self) -> list[dict[str, object]]:
        """The JSON-line progress events from stdout."""
        return [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]

    def result(self) -> dict[str, object]:
        """The termination log as the success JSON."""
        value = json.loads(self.termination)
        assert isinstance(value, dict)
        return value


def run_pull(
    *args: str,
    tmp: Path,
    env: dict[str, str] | None = None,
    file_size_limit: int | None = None,
) -> PullRun:
    """Run the real CLI, `slm-runtime pull ARGS`, with the termination log under ``tmp``.

    ``file_size_limit`` (bytes, via prlimit) makes the kernel refuse writes past it, as a full
    disk would.
    """
    term = tmp / f"termination-log-{time.monotonic_ns()}"
    full_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "runtime-image"), str(ROOT / "operator")]),
        "SLM_TERMINATION_LOG": str(term),
        **(env or {}),
    }
    limit = ["prlimit", f"--fsize={file_size_limit}"] if file_size_limit is not None else []
    proc = subprocess.run(
        [*limit, sys.executable, "-m", "slm_runtime.cli", "pull", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
        check=False,
    )
    termination = term.read_text(encoding="utf-8") if term.exists() else ""
    return PullRun(proc.returncode, proc.stdout, proc.stderr, termination)


def self_signed(prefix: Path) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1 and localhost under ``prefix``."""
    cert, key = prefix / "cert.pem", prefix / "key.pem"
    if shutil.which("openssl") is None:
        pytest.skip(f"openssl is not installed; {SETUP_HINT}")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


# --- nginx ------------------------------------------------------------------------------------


@dataclass
class Nginx:
    """nginx serving ``root`` on loopback, with an access log to count requests."""

    port: int
    root: Path
    access_log: Path
    tls_port: int
    ca_file: Path
    """The self-signed certificate the TLS listener presents (for 127.0.0.1)."""

    def url(self, name: str) -> str:
        """The plain-HTTP URL of a file under the served root."""
        return f"http://127.0.0.1:{self.port}/{name}"

    def https_url(self, name: str) -> str:
        """The HTTPS URL of a file under the served root."""
        return f"https://127.0.0.1:{self.tls_port}/{name}"

    def requests(self) -> list[str]:
        """Access log lines so far:
        ``<host>:<port> <status> "<range>" <bytes sent> "<authorization>"``."""
        if not self.access_log.exists():
            return []
        return self.access_log.read_text(encoding="utf-8").splitlines()


def _nginx_binary() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.skip(f"nginx is not installed; {SETUP_HINT}")


@pytest.fixture(scope="session")
def nginx(tmp_path_factory: pytest.TempPathFactory, gemma_gguf: Path) -> Iterator[Nginx]:
    """nginx with Range support serving the Gemma GGUF as gemma.gguf."""
    binary = _nginx_binary()
    prefix = tmp_path_factory.mktemp("nginx")
    root = prefix / "www"
    root.mkdir()
    (root / "gemma.gguf").symlink_to(gemma_gguf)
    (root / "not-a-model.bin").write_bytes(b"plain bytes, no GGUF magic" * 10)
    port, tls_port = free_port(), free_port()
    access_log = prefix / "access.log"
    cert, key = self_signed(prefix)
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""{user}worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
    log_format ranges '$host:$server_port $status "$http_range" $body_bytes_sent '
                      '"$http_authorization"';
    access_log {access_log} ranges;
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp;
    scgi_temp_path {prefix}/tmp;
    server {{
        listen 127.0.0.1:{port};
        listen 127.0.0.1:{tls_port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {root};
        sendfile on;
        location = /moved/gemma.gguf {{ return 302 /gemma.gguf; }}
        location = /elsewhere/gemma.gguf {{ return 302 https://localhost:{tls_port}/gemma.gguf; }}
    }}
}}
""",
        encoding="utf-8",
    )
    proc = subprocess.Popen(
        [binary, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_listening(port, proc)
        wait_listening(tls_port, proc)
        yield Nginx(port=port, root=root, access_log=access_log, tls_port=tls_port, ca_file=cert)
    finally:
        stop(proc)


# --- a proxy that cuts a response body -----------------------------------------------------------


@dataclass
class CuttingProxy:
    """A TCP proxy that drops the first ``cuts`` connections after ``cut_after`` response bytes."""

    upstream_port: int
    cut_after: int
    cuts: int = 1
    port: int = 0
    requests: list[str] = field(default_factory=list)
    delivered_body_bytes: list[int] = field(default_factory=list)
    _server: socket.socket | None = None

    def start(self) -> None:
        """Listen on a loopback port and serve connections in threads."""
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        """Stop accepting connections."""
        if self._server is not None:
            self._server.close()

    def url(self, name: str) -> str:
        """The URL of a file through the proxy."""
        return f"http://127.0.0.1:{self.port}/{name}"

    def _accept(self) -> None:
        assert self._server is not None
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            cut = self.cuts > 0
            self.cuts -= 1
            threading.Thread(target=self._serve, args=(client, cut), daemon=True).start()

    def _serve(self, client: socket.socket, cut: bool) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        with client, upstream:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = client.recv(65536)
                if not chunk:
                    return
                request += chunk
            self.requests.append(request.decode("latin-1"))
            upstream.sendall(request)
            sent = 0
            head = b""
            while True:
                data = upstream.recv(1 << 20)
                if not data:
                    return
                if len(head) < 65536 and b"\r\n\r\n" not in head:
                    head += data
                if cut and sent + len(data) >= self.cut_after:
                    client.sendall(data[: self.cut_after - sent])
                    header_length = head.index(b"\r\n\r\n") + 4
                    self.delivered_body_bytes.append(self.cut_after - header_length)
                    return
                client.sendall(data)
                sent += len(data)


@pytest.fixture
def cutting_proxy(nginx: Nginx) -> Iterator[CuttingProxy]:
    """A proxy in front of nginx that cuts the first response after 100 MB."""
    proxy = CuttingProxy(upstream_port=nginx.port, cut_after=100_000_000)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()


# --- an OCI registry --------------------------------------------------------------------------


@dataclass
class OciRegistry:
    """The CNCF distribution registry on loopback, and oras to push to it.

    Plain HTTP, or HTTPS with a self-signed certificate when ``ca_file`` is set (the puller
    then trusts it through ``SSL_CERT_FILE``).
    """

    host: str
    workdir: Path
    ca_file: Path | None = None

    def transport(self) -> list[str]:
        """The oras flags that reach this registry: --plain-http or its CA."""
        return ["--ca-file", str(self.ca_file)] if self.ca_file else ["--plain-http"]

    def pull_args(self) -> list[str]:
        """The `slm-runtime pull` flags for this registry (plain HTTP needs --allow-insecure)."""
        return [] if self.ca_file else ["--allow-insecure"]

    def pull_env(self) -> dict[str, str]:
        """The environment that makes the puller trust this registry's certificate."""
        return {"SSL_CERT_FILE": str(self.ca_file)} if self.ca_file else {}

    def blob_downloads(self, repository: str) -> int:
        """How many blob GETs the registry has answered for ``repository``."""
        log = (self.workdir / "registry.log").read_text(encoding="utf-8")
        return log.count(f'"GET /v2/{repository}/blobs/')

    def oras(self, *args: str, cwd: Path | None = None) -> str:
        """Run the real oras CLI against this registry."""
        proc = subprocess.run(
            [str(ORAS_BIN), *args],
            cwd=cwd or self.workdir,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"oras {' '.join(args)} failed: {proc.stderr}")
        return proc.stdout


def start_registry(
    workdir: Path, auth_block: str = "", tls: tuple[Path, Path] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start the registry on a free loopback port (HTTPS with ``tls``: certificate, key)."""
    if not REGISTRY_BIN.exists() or not ORAS_BIN.exists():
        pytest.skip(f"the OCI registry or oras is not built; {SETUP_HINT}")
    port = free_port()
    tls_block = f"  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}\n" if tls else ""
    config = workdir / "config.yml"
    config.write_text(
        f"""version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {workdir / "storage"}
http:
  addr: 127.0.0.1:{port}
{tls_block}{auth_block}""",
        encoding="utf-8",
    )
    proc = subprocess.Popen(
        [str(REGISTRY_BIN), "serve", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "registry.log").open("wb"),
        env={**os.environ, "OTEL_TRACES_EXPORTER": "none"},
    )
    wait_listening(port, proc)
    return proc, f"127.0.0.1:{port}"


@pytest.fixture(scope="session")
def oci_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OciRegistry]:
    """An anonymous registry."""
    workdir = tmp_path_factory.mktemp("registry")
    proc, host = start_registry(workdir)
    try:
        yield OciRegistry(host=host, workdir=workdir)
    finally:
        stop(proc)


REGISTRY_USER = "puller"
REGISTRY_PASSWORD = "s3cret-Pa55"


def _basic_auth_registry(
    workdir: Path, *, tls: bool
) -> tuple[subprocess.Popen[bytes], OciRegistry]:
    """A registry that demands HTTP basic auth (htpasswd, bcrypt), over HTTPS when ``tls``."""
    htpasswd = shutil.which("htpasswd")
    if htpasswd is None:
        pytest.skip(f"htpasswd (apache2-utils) is not installed; {SETUP_HINT}")
    users = workdir / "htpasswd"
    subprocess.run(
        [htpasswd, "-Bbc", str(users), REGISTRY_USER, REGISTRY_PASSWORD],
        check=True,
        capture_output=True,
    )
    auth = f"auth:\n  htpasswd:\n    realm: slm-test\n    path: {users}\n"
    cert_key = self_signed(workdir) if tls else None
    proc, host = start_registry(workdir, auth, tls=cert_key)
    return proc, OciRegistry(host=host, workdir=workdir, ca_file=cert_key[0] if cert_key else None)


@pytest.fixture(scope="session")
def basic_auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OciRegistry]:
    """An HTTPS registry that demands HTTP basic auth."""
    proc, registry = _basic_auth_registry(tmp_path_factory.mktemp("registry-auth"), tls=True)
    try:
        yield registry
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def basic_auth_registry_plain_http(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OciRegistry]:
    """A plain-HTTP registry that demands HTTP basic auth: the puller must not answer it."""
    proc, registry = _basic_auth_registry(tmp_path_factory.mktemp("registry-auth-http"), tls=False)
    try:
        yield registry
    finally:
        stop(proc)
