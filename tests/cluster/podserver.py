"""A small HTTP server that host-0 test pods run, with switchable health endpoints.

GET /ready and /live answer 200 or 503 as switched by POST /ready and POST /break-live;
GET /stats reports the pid and how often each endpoint was probed; GET /file?path=P
returns a file. On SIGTERM it writes a termination message and exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from urllib.parse import parse_qs, urlparse

state = {"ready": False, "live": True}
hits: Counter[str] = Counter()


class Handler(BaseHTTPRequestHandler):
    """Routes of the test server."""

    def _send(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        """Health endpoints, stats and file reads."""
        url = urlparse(self.path)
        hits[url.path] += 1
        if url.path == "/ready":
            self._send(200 if state["ready"] else 503, state)
        elif url.path == "/live":
            self._send(200 if state["live"] else 500, state)
        elif url.path == "/stats":
            self._send(200, {"pid": os.getpid(), "hits": hits, "uid": os.getuid()})
        elif url.path == "/file":
            path = parse_qs(url.query)["path"][0]
            try:
                with open(path, encoding="utf-8") as f:
                    self._send(200, {"content": f.read()})
            except OSError as e:
                self._send(404, {"error": str(e)})
        else:
            self._send(200, {"hello": os.environ.get("HOSTNAME", "")})

    def do_POST(self) -> None:
        """Switches: /ready makes readiness pass, /break-live makes liveness fail."""
        if self.path == "/ready":
            state["ready"] = True
        elif self.path == "/break-live":
            state["live"] = False
        self._send(200, state)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: probes would flood the log."""


def main() -> None:
    """Serve on the port given as the first argument."""
    server = ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler)  # noqa: S104

    def on_term(signum: int, frame: FrameType | None) -> None:
        with open("/dev/termination-log", "w", encoding="utf-8") as f:
            f.write("podserver stopped by SIGTERM")
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    server.serve_forever()


if __name__ == "__main__":
    main()
