"""Pull progress: JSON lines for logs and the operator, or a bar on a terminal."""

from __future__ import annotations

import json
import time
from typing import Any, TextIO

_INTERVAL_S = 1.0
_BAR_WIDTH = 30


class Progress:
    """Reports bytes transferred for one pull, throttled to about one line a second."""

    def __init__(self, stream: TextIO, *, tty: bool | None = None) -> None:
        self._stream = stream
        self._tty = stream.isatty() if tty is None else tty
        self._file = ""
        self._done = 0
        self._total: int | None = None
        self._last = 0.0

    def event(self, event: str, **fields: Any) -> None:
        """Write one JSON line (or, on a terminal, a plain line)."""
        if self._tty:
            self._stream.write(
                f"\r\033[K{event}: {' '.join(f'{k}={v}' for k, v in fields.items())}\n"
            )
        else:
            self._stream.write(json.dumps({"event": event, **fields}, sort_keys=True) + "\n")
        self._stream.flush()

    def start(self, file: str, total: int | None, done: int = 0) -> None:
        """Begin a transfer of ``file``; ``done`` bytes are already present (a resume)."""
        self._file, self._total, self._done, self._last = file, total, done, 0.0
        self._report(force=True)

    def advance(self, nbytes: int) -> None:
        """Count ``nbytes`` more bytes."""
        self._done += nbytes
        self._report(force=False)

    def restart(self) -> None:
        """The server sent the whole body again: count from zero."""
        self._done = 0

    def finish(self) -> None:
        """End the current transfer with a final report."""
        self._report(force=True)
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()

    def _report(self, *, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last < _INTERVAL_S:
            return
        self._last = now
        percent = round(100.0 * self._done / self._total, 1) if self._total else None
        if self._tty:
            filled = int(_BAR_WIDTH * (percent or 0) / 100)
            bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
            total = f"{self._total / 1e6:.1f}" if self._total else "?"
            self._stream.write(
                f"\r\033[K{self._file} [{bar}] {percent or 0:5.1f}% "
                f"{self._done / 1e6:.1f}/{total} MB"
            )
            self._stream.flush()
            return
        self.event(
            "progress", file=self._file, bytes=self._done, total=self._total, percent=percent
        )
