"""The named nursery of work that follows a request but must never hold it up: the copies of
traffic_policy ``mirror`` (``proxy/mirror.py``).

A request never waits on a shadow task: :meth:`ShadowTasks.try_start` is synchronous, takes
one of ``limit`` places of its key (the pool whose policy mirrors) or refuses, and starts the
task in this nursery, which belongs to the Server's root nursery (started with the other
background services, ``serving/background.py``), not to the request. Each task bounds
itself (``mirror.timeout_ms``); its place is given back when it ends, however it ends.

Drain (``Server._serve``): after the primary requests finished, :meth:`drain` refuses new
tasks, waits for the running ones at most ``timeout`` seconds (their own deadlines end them
sooner) and cancels what is left; the server then cancels its root scope.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable

import trio

log = logging.getLogger("spooky.mirror")


class ShadowTasks:
    """The shadow nursery (module docstring); kept in the Server's StateStore, so the places
    in use survive a reload (copies of the old generation still count)."""

    def __init__(self) -> None:
        self._nursery: trio.Nursery | None = None
        #: key -> tasks running
        self.running: collections.Counter[str] = collections.Counter()
        self.closing = False
        self._idle = trio.Event()
        self._idle.set()

    @property
    def total(self) -> int:
        return sum(self.running.values())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the nursery until cancelled (the Server's root scope, after :meth:`drain`)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def try_start(self, key: str, limit: int, fn: Callable[[], Awaitable[object]]) -> bool:
        """Start ``fn()`` unless ``key`` already runs ``limit`` tasks, the nursery is not
        running or the server drains (False: nothing started)."""
        nursery = self._nursery
        if nursery is None or self.closing or self.running[key] >= limit:
            return False
        self.running[key] += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        nursery.start_soon(self._run, key, fn)
        return True

    async def _run(self, key: str, fn: Callable[[], Awaitable[object]]) -> None:
        try:
            await fn()
        except Exception:  # noqa: BLE001 - a bug in a copy must not end the nursery (or the server)
            log.exception("a shadow task failed")
        finally:
            self.running[key] -= 1
            if self.running[key] <= 0:
                del self.running[key]
            if not self.running:
                self._idle.set()

    async def drain(self, timeout: float) -> None:
        """Refuse new tasks, give the running ones up to ``timeout`` seconds, cancel the rest."""
        self.closing = True
        if self.running:
            log.info("draining: %d mirror copies in flight, up to %.1fs", self.total, timeout)
            with trio.move_on_after(timeout):
                await self._idle.wait()
        nursery = self._nursery
        if nursery is not None and self.running:
            log.info("cancelling %d mirror copies", self.total)
            nursery.cancel_scope.cancel()
