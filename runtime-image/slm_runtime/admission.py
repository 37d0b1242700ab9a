"""Admission control: ``parallel`` sequence slots, a bounded wait queue, and draining."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from slm_runtime.metrics import Metrics


class OverloadedError(Exception):
    """Every slot is busy and the wait queue is full."""


class DrainingError(Exception):
    """The runtime is shutting down and takes no new work."""


class Admission:
    """Hands out sequence slots; a slot is held from admission until its generation ends."""

    def __init__(self, parallel: int, max_queue: int, timeout: float, metrics: Metrics) -> None:
        self._slots = asyncio.Semaphore(parallel)
        self._max_queue = max_queue
        self._timeout = timeout
        self._waiting = 0
        self._metrics = metrics
        self.draining = False

    async def acquire(self) -> Callable[[], None]:
        """Wait for a slot; return the function that gives it back (safe to call twice)."""
        if self.draining:
            raise DrainingError
        if self._slots.locked() and self._waiting >= self._max_queue:
            raise OverloadedError
        self._waiting += 1
        self._metrics.queued.inc()
        try:
            async with asyncio.timeout(self._timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise OverloadedError from None
        finally:
            self._waiting -= 1
            self._metrics.queued.dec()
        self._metrics.in_flight.inc()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._slots.release()
                self._metrics.in_flight.dec()

        return release
