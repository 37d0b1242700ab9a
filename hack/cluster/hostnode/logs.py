"""The kubelet's log endpoint, so that `kubectl logs` works for host-0 pods."""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

log = logging.getLogger(__name__)
# (namespace, pod, container) -> (log file, whether the container still runs)
Locate = Callable[[str, str, str], tuple[Path, Callable[[], bool]] | None]


def _tail(data: bytes, lines: int) -> bytes:
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:]) if lines >= 0 else data


class _Handler(BaseHTTPRequestHandler):
    server: LogServer

    def do_GET(self) -> None:
        url = urlparse(self.path)
        parts = url.path.strip("/").split("/")
        if len(parts) != 4 or parts[0] != "containerLogs":
            self.send_error(404, "only /containerLogs/<namespace>/<pod>/<container> is served")
            return
        found = self.server.locate(parts[1], parts[2], parts[3])
        if found is None:
            self.send_error(404, f"container {parts[3]!r} of pod {parts[1]}/{parts[2]} not found")
            return
        path, running = found
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        data = path.read_bytes() if path.exists() else b""
        if "tailLines" in query:
            data = _tail(data, int(query["tailLines"]))
        if "limitBytes" in query:
            data = data[: int(query["limitBytes"])]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(data)
        if query.get("follow") != "true":
            return
        offset = path.stat().st_size if path.exists() else 0
        while running():
            time.sleep(0.2)
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            if chunk:
                offset += len(chunk)
                self.wfile.write(chunk)
                self.wfile.flush()

    def log_message(self, format: str, *args: object) -> None:
        log.debug(format, *args)


class LogServer(ThreadingHTTPServer):
    """HTTPS on the node address; clients must present a certificate signed by the CA."""

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], locate: Locate, cert: str, key: str, client_ca: str
    ) -> None:
        super().__init__(address, _Handler)
        self.locate = locate
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
        self.socket = ctx.wrap_socket(self.socket, server_side=True)

    def start(self) -> None:
        """Serve in a daemon thread."""
        threading.Thread(target=self.serve_forever, name="logs", daemon=True).start()
