"""Resumable HTTP downloads: Range requests, retries with backoff, size check, streaming sha256.

The body is read with the standard library's ``http.client`` straight into reused buffers and
written with one system call each. Two threads overlap the rest with the transfer: one hashes
each buffer while the next arrives, the other flushes the file to disk every
``WRITEBACK_BYTES``, so the disk writes while the network reads and the final fsync finds
little left to do.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import logging
import os
import queue
import random
import re
import ssl
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urljoin, urlsplit

from slm_runtime.pull.progress import Progress

log = logging.getLogger(__name__)

DEFAULT_RETRIES: Final = 5
BUFFER_SIZE: Final = 1024 * 1024
_BUFFERS: Final = 8
WRITEBACK_BYTES: Final = 32 * 1024 * 1024
"""Flush the file to disk after this many new bytes (fdatasync on the writeback thread)."""
_TIMEOUT_S: Final = 60.0
_MAX_REDIRECTS: Final = 10
_BACKOFF_BASE_S: Final = 0.5
_BACKOFF_MAX_S: Final = 30.0
_RETRY_STATUS: Final = frozenset({408, 425, 429, 500, 502, 503, 504})
_REDIRECT_STATUS: Final = frozenset({301, 302, 303, 307, 308})
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
USER_AGENT: Final = "slm-runtime-pull"


class TransferError(Exception):
    """A download failed for good (after retries, or with a status that retrying cannot fix)."""


class _RetryableError(Exception):
    """A transient failure; the caller retries from the bytes already on disk."""


@dataclass(frozen=True)
class Fetched:
    """A completed download: its sha256 (64 hex) and size."""

    sha256: str
    size: int


@dataclass
class _State:
    """The partial file's progress: bytes on disk, their running hash, and the server validator."""

    offset: int
    hasher: hashlib._Hash
    validator: str | None


def fetch(
    url: str,
    part: Path,
    progress: Progress,
    *,
    label: str,
    expected_size: int | None = None,
    headers: dict[str, str] | None = None,
    retries: int = DEFAULT_RETRIES,
) -> Fetched:
    """Download ``url`` into ``part``, resuming what an earlier attempt left there.

    A sidecar ``<part>.json`` records the URL and the server's validator (ETag or
    Last-Modified), so a resume after a restart uses ``If-Range`` and never splices two
    versions of a file. The file is fsynced before returning, and a ``transferred`` event
    reports how long that took.
    """
    started = time.monotonic()
    state = _resume_state(url, part, expected_size)
    progress.start(label, expected_size, state.offset)
    failures = 0
    with part.open("ab", buffering=0) as out:
        while True:
            before = state.offset
            try:
                total = _attempt(url, part, out, state, progress, headers or {})
                if expected_size is not None and total is not None and total != expected_size:
                    raise TransferError(
                        f"{label}: the server sends {total} bytes, but {expected_size} were "
                        "expected"
                    )
                size = total if total is not None else state.offset
                if state.offset != size:
                    raise _RetryableError(f"got {state.offset} of {size} bytes")
                if expected_size is not None and state.offset != expected_size:
                    raise TransferError(
                        f"{label}: received {state.offset} bytes, but {expected_size} were expected"
                    )
                break
            except ssl.SSLCertVerificationError as err:
                raise TransferError(
                    f"{label}: {err}; trust the server's CA (SSL_CERT_FILE)"
                ) from err
            except (OSError, http.client.HTTPException, _RetryableError) as err:
                if state.offset > before:
                    failures = 0
                failures += 1
                if failures > retries:
                    raise TransferError(
                        f"{label}: giving up after {retries} retries at byte {state.offset}: "
                        f"{_describe(err)}"
                    ) from err
                delay = min(_BACKOFF_MAX_S, _BACKOFF_BASE_S * 2 ** (failures - 1))
                delay *= random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret
                log.warning(
                    "transfer interrupted, resuming",
                    extra={
                        "file": label,
                        "offset": state.offset,
                        "retryInS": round(delay, 2),
                        "reason": _describe(err),
                    },
                )
                progress.event("retry", file=label, bytes=state.offset, reason=_describe(err))
                time.sleep(delay)
        _sync(out, part)
    progress.finish()
    progress.event(
        "transferred", file=label, bytes=state.offset, seconds=round(time.monotonic() - started, 3)
    )
    _sidecar(part).unlink(missing_ok=True)
    return Fetched(sha256=state.hasher.hexdigest(), size=state.offset)


def _describe(err: Exception) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _sidecar(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _redact(url: str) -> str:
    """The URL without its query string, which may carry a signature."""
    return url.split("?", 1)[0]


def _resume_state(url: str, part: Path, expected_size: int | None) -> _State:
    """Hash the bytes a previous attempt left, or start over when they cannot be trusted."""
    hasher = hashlib.sha256()
    try:
        record = json.loads(_sidecar(part).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    usable = (
        part.is_file()
        and not part.is_symlink()
        and record.get("url") == url
        and (expected_size is None or part.stat().st_size <= expected_size)
    )
    if not usable:
        part.unlink(missing_ok=True)
        _sidecar(part).unlink(missing_ok=True)
        return _State(0, hasher, None)
    with part.open("rb") as f:
        hasher = hashlib.file_digest(f, "sha256")
    offset = part.stat().st_size
    if offset:
        log.info("resuming partial download", extra={"url": _redact(url), "offset": offset})
    return _State(offset, hasher, record.get("validator"))


def _ssl_context() -> ssl.SSLContext:
    """CAs from SSL_CERT_FILE or SSL_CERT_DIR when set, else certifi's: the same as httpx."""
    if cafile := os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=cafile)
    if capath := os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=capath)
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


def _connect(url: str) -> tuple[http.client.HTTPConnection, str]:
    """A connection for ``url`` (through the environment's proxy, if any) and the request target."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    proxy = (
        None if urllib.request.proxy_bypass(host) else urllib.request.getproxies().get(parts.scheme)
    )
    conn: http.client.HTTPConnection
    if proxy:
        pp = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        proxy_port = pp.port or 80
        if secure:
            conn = http.client.HTTPSConnection(
                pp.hostname or "",
                proxy_port,
                timeout=_TIMEOUT_S,
                context=_ssl_context(),
            )
            conn.set_tunnel(host, port)
        else:
            conn = http.client.HTTPConnection(pp.hostname or "", proxy_port, timeout=_TIMEOUT_S)
            target = url
    elif secure:
        conn = http.client.HTTPSConnection(host, port, timeout=_TIMEOUT_S, context=_ssl_context())
    else:
        conn = http.client.HTTPConnection(host, port, timeout=_TIMEOUT_S)
    return conn, target


def _open(
    url: str, headers: dict[str, str]
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """GET ``url``, following redirects; Authorization is dropped when the origin changes."""
    origin = urlsplit(url)[:2]
    for _ in range(_MAX_REDIRECTS + 1):
        conn, target = _connect(url)
        conn.request("GET", target, headers={"User-Agent": USER_AGENT, **headers})
        resp = conn.getresponse()
        location = resp.getheader("location")
        if resp.status not in _REDIRECT_STATUS or not location:
            return conn, resp
        conn.close()
        url = urljoin(url, location)
        if urlsplit(url)[:2] != origin:
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    raise TransferError(f"GET {_redact(url)}: more than {_MAX_REDIRECTS} redirects")


def _attempt(
    url: str,
    part: Path,
    out: io.FileIO,
    state: _State,
    progress: Progress,
    headers: dict[str, str],
) -> int | None:
    """One GET from ``state.offset``; returns the full size when the server says it."""
    request_headers = {"Accept-Encoding": "identity", **headers}
    if state.offset:
        request_headers["Range"] = f"bytes={state.offset}-"
        if state.validator:
            request_headers["If-Range"] = state.validator
    conn, resp = _open(url, request_headers)
    try:
        total: int | None
        if resp.status == 416 and state.offset:
            match = re.fullmatch(r"bytes \*/(\d+)", resp.getheader("content-range") or "")
            if match and int(match.group(1)) == state.offset:
                return state.offset
            _restart(part, state, progress)
            raise _RetryableError("the server rejected the resume range; starting over")
        if resp.status in _RETRY_STATUS:
            raise _RetryableError(f"HTTP {resp.status}")
        if resp.status >= 400:
            raise TransferError(f"GET {_redact(url)}: HTTP {resp.status} {resp.reason}")
        if resp.status == 206:
            match = _CONTENT_RANGE.fullmatch(resp.getheader("content-range") or "")
            if not match or int(match.group(1)) != state.offset:
                _restart(part, state, progress)
                raise _RetryableError("the server answered a different range; starting over")
            total = None if match.group(3) == "*" else int(match.group(3))
        else:
            if state.offset:
                _restart(part, state, progress)
            length = resp.getheader("content-length")
            total = int(length) if length and length.isdigit() else None
        validator = resp.getheader("etag") or resp.getheader("last-modified")
        if validator and validator.startswith("W/"):
            validator = None  # weak validators cannot guard a byte range
        state.validator = validator
        _sidecar(part).write_text(json.dumps({"url": url, "validator": validator}), "utf-8")
        _copy_body(resp, out, part, state, progress)
        return total
    finally:
        conn.close()


def _copy_body(
    resp: http.client.HTTPResponse,
    out: io.FileIO,
    part: Path,
    state: _State,
    progress: Progress,
) -> None:
    """Read the body into reused buffers and write each; hash and flush on two other threads."""
    free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
    full: queue.SimpleQueue[tuple[bytearray, int] | None] = queue.SimpleQueue()
    for _ in range(_BUFFERS):
        free.put(bytearray(BUFFER_SIZE))
    hasher = state.hasher

    def hash_buffers() -> None:
        while (item := full.get()) is not None:
            buf, n = item
            hasher.update(memoryview(buf)[:n])
            free.put(buf)

    hashing = threading.Thread(target=hash_buffers, name="sha256", daemon=True)
    hashing.start()
    writeback = _Writeback(out.fileno(), part)
    try:
        while True:
            buf = free.get()
            view = memoryview(buf)
            n = resp.readinto(view)
            if not n:
                free.put(buf)
                break
            _write(out.fileno(), view[:n], part)
            full.put((buf, n))
            state.offset += n
            progress.advance(n)
            writeback.wrote(n)
    finally:
        full.put(None)
        hashing.join()
        writeback.stop()
    writeback.check()


def _write(fd: int, data: memoryview, part: Path) -> None:
    """Write all of ``data``; a local disk failure is not something a retry can fix."""
    try:
        while data:
            data = data[os.write(fd, data) :]
    except OSError as err:
        raise _write_error(part, err) from err


def _sync(out: io.FileIO, part: Path) -> None:
    try:
        os.fsync(out.fileno())
    except OSError as err:
        raise _write_error(part, err) from err


def _write_error(part: Path, err: OSError) -> TransferError:
    return TransferError(f"cannot write {part}: {_describe(err)}")


class _Writeback:
    """fdatasync on a second thread every WRITEBACK_BYTES, so the disk keeps up with the network.

    Its errors are kept and raised by the transfer: after a failed fdatasync the kernel may
    report nothing to the final fsync, so they must not be lost.
    """

    def __init__(self, fd: int, part: Path) -> None:
        self._fd = fd
        self._part = part
        self._unflushed = 0
        self._requests: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="writeback", daemon=True)
        self._thread.start()

    def wrote(self, nbytes: int) -> None:
        """Count ``nbytes`` written; ask for a flush once enough are pending."""
        self._unflushed += nbytes
        if self._unflushed >= WRITEBACK_BYTES:
            self._unflushed = 0
            self._requests.put(True)
            self.check()

    def stop(self) -> None:
        """Let the flushes asked for finish, and end the thread."""
        self._requests.put(False)
        self._thread.join()

    def check(self) -> None:
        """Raise the error a flush met, if any."""
        if self._error is not None:
            raise _write_error(self._part, self._error) from self._error

    def _run(self) -> None:
        while self._requests.get():
            try:
                os.fdatasync(self._fd)
            except OSError as err:
                self._error = err
                return


def _restart(part: Path, state: _State, progress: Progress) -> None:
    """Drop the partial bytes: the server will send (or has sent) the whole body."""
    with part.open("r+b") as f:
        f.truncate(0)
    state.offset = 0
    state.hasher = hashlib.sha256()
    progress.restart()
