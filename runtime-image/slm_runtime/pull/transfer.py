"""Resumable HTTP downloads: Range requests, retries with backoff, size check, streaming sha256."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

import httpx

from slm_runtime.pull.digest import CHUNK_SIZE
from slm_runtime.pull.progress import Progress

log = logging.getLogger(__name__)

DEFAULT_RETRIES: Final = 5
_BACKOFF_BASE_S: Final = 0.5
_BACKOFF_MAX_S: Final = 30.0
_RETRY_STATUS: Final = frozenset({408, 425, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


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
    client: httpx.Client,
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
    versions of a file. The file is fsynced before returning.
    """
    state = _resume_state(url, part, expected_size)
    progress.start(label, expected_size, state.offset)
    failures = 0
    with part.open("ab") as out:
        while True:
            before = state.offset
            try:
                total = _attempt(client, url, part, out, state, progress, headers or {})
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
            except (httpx.TransportError, _RetryableError) as err:
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
        out.flush()
        os.fsync(out.fileno())
    progress.finish()
    _sidecar(part).unlink(missing_ok=True)
    return Fetched(sha256=state.hasher.hexdigest(), size=state.offset)


def _describe(err: Exception) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _sidecar(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _resume_state(url: str, part: Path, expected_size: int | None) -> _State:
    """Hash the bytes a previous attempt left, or start over when they cannot be trusted."""
    hasher = hashlib.sha256()
    validator: str | None = None
    try:
        record = json.loads(_sidecar(part).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    usable = (
        part.is_file()
        and record.get("url") == url
        and (expected_size is None or part.stat().st_size <= expected_size)
    )
    if not usable:
        part.unlink(missing_ok=True)
        _sidecar(part).unlink(missing_ok=True)
        return _State(0, hasher, None)
    validator = record.get("validator")
    with part.open("rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            hasher.update(chunk)
    offset = part.stat().st_size
    if offset:
        log.info("resuming partial download", extra={"url": _redact(url), "offset": offset})
    return _State(offset, hasher, validator)


def _redact(url: str) -> str:
    """The URL without its query string, which may carry a signature."""
    return url.split("?", 1)[0]


def _attempt(
    client: httpx.Client,
    url: str,
    part: Path,
    out: BinaryIO,
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
    with client.stream("GET", url, headers=request_headers) as resp:
        total: int | None
        if resp.status_code == 416 and state.offset:
            match = re.fullmatch(r"bytes \*/(\d+)", resp.headers.get("content-range", ""))
            if match and int(match.group(1)) == state.offset:
                return state.offset
            _restart(part, state, progress)
            raise _RetryableError("the server rejected the resume range; starting over")
        if resp.status_code in _RETRY_STATUS:
            raise _RetryableError(f"HTTP {resp.status_code}")
        if resp.status_code >= 400:
            raise TransferError(f"GET {_redact(url)}: HTTP {resp.status_code} {resp.reason_phrase}")
        if resp.status_code == 206:
            match = _CONTENT_RANGE.fullmatch(resp.headers.get("content-range", ""))
            if not match or int(match.group(1)) != state.offset:
                _restart(part, state, progress)
                raise _RetryableError("the server answered a different range; starting over")
            total = None if match.group(3) == "*" else int(match.group(3))
        else:
            if state.offset:
                _restart(part, state, progress)
            length = resp.headers.get("content-length")
            total = int(length) if length and length.isdigit() else None
        validator = resp.headers.get("etag") or resp.headers.get("last-modified")
        if validator and validator.startswith("W/"):
            validator = None  # weak validators cannot guard a byte range
        state.validator = validator
        _sidecar(part).write_text(
            json.dumps({"url": url, "validator": validator}), encoding="utf-8"
        )
        write = out.write
        update = state.hasher.update
        for chunk in resp.iter_raw():
            write(chunk)
            update(chunk)
            state.offset += len(chunk)
            progress.advance(len(chunk))
        return total


def _restart(part: Path, state: _State, progress: Progress) -> None:
    """Drop the partial bytes: the server will send (or has sent) the whole body."""
    with part.open("r+b") as f:
        f.truncate(0)
    state.offset = 0
    state.hasher = hashlib.sha256()
    progress.restart()
