"""The work queue: which LocalModels wait for a reconcile, and their timers.

A key waits in the queue at most once: triggers that arrive while it waits, or while a worker
reconciles it, fold into one more reconcile (which is level-based and reads the latest caches).
A burst of events costs one reconcile, not one each, and the queue holds keys, not events,
however far the workers fall behind. Each key has one record (why it is queued, whether a
worker holds it, its timer), so forgetting a model is one removal.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Key = tuple[str, str]


@dataclass
class _Entry:
    cause: str | None = None
    """Why the key is queued; None while it is not."""
    processing: bool = False
    """A worker holds the key."""
    timer: threading.Timer | None = None

    def idle(self) -> bool:
        return self.cause is None and not self.processing and self.timer is None


class WorkQueue:
    """Keys to reconcile, handed to worker threads one key per worker."""

    def __init__(self, handle: Callable[[Key, str], None]) -> None:
        self._handle = handle
        self._work = threading.Condition()
        self._order: deque[Key] = deque()
        self._entries: dict[Key, _Entry] = {}

    def enqueue(self, key: Key, cause: str) -> None:
        """Mark ``key`` for a reconcile by a worker; returns at once."""
        with self._work:
            entry = self._entries.setdefault(key, _Entry())
            if entry.cause is not None:
                return
            entry.cause = cause
            if entry.processing:
                return  # queued again when its reconcile ends
            self._order.append(key)
            self._work.notify()

    def schedule(self, key: Key, delay: float) -> None:
        """Enqueue ``key`` after ``delay`` seconds (at most one pending timer per key)."""
        timer = threading.Timer(delay, self._fire, args=(key,))
        timer.daemon = True
        with self._work:
            entry = self._entries.setdefault(key, _Entry())
            if entry.timer is not None:
                entry.timer.cancel()
            entry.timer = timer
        timer.start()

    def _fire(self, key: Key) -> None:
        with self._work:
            entry = self._entries.get(key)
            if entry is not None and entry.timer is threading.current_thread():
                entry.timer = None
        self.enqueue(key, "timer")

    def forget(self, key: Key) -> None:
        """Cancel the key's timer; its record goes once no worker needs it."""
        with self._work:
            entry = self._entries.get(key)
            if entry is None:
                return
            if entry.timer is not None:
                entry.timer.cancel()
                entry.timer = None
            if entry.idle():
                del self._entries[key]

    def pending(self, key: Key) -> bool:
        """Whether the key is queued, held by a worker or has a timer (tests read it)."""
        with self._work:
            entry = self._entries.get(key)
            return entry is not None and not entry.idle()

    def start_workers(self, count: int, after: Sequence[threading.Event] = ()) -> None:
        """Start ``count`` worker threads that handle queued keys, once every event in ``after``
        is set (the caches are filled: a reconcile that saw no children would apply them all
        again)."""
        for i in range(count):
            worker = threading.Thread(
                target=self._work_loop, args=(after,), daemon=True, name=f"reconcile-{i}"
            )
            worker.start()

    def _work_loop(self, after: Sequence[threading.Event]) -> None:
        for gate in after:
            gate.wait()
        while True:
            with self._work:
                while not self._order:
                    self._work.wait()
                key = self._order.popleft()
                entry = self._entries[key]
                entry.processing = True
                cause, entry.cause = entry.cause or "", None
            try:
                self._handle(key, cause)
            finally:
                with self._work:
                    entry.processing = False
                    if entry.cause is not None:
                        self._order.append(key)
                        self._work.notify()
                    elif entry.idle() and self._entries.get(key) is entry:
                        del self._entries[key]
