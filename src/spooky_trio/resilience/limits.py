"""Inflight slots (global, per pool, per backend) and the route queues of requests waiting for one.

A :class:`Slots` counts the requests holding a slot; the limit is not stored but passed in
by the caller, because it is per-generation config while the count must survive reloads
(requests admitted under the old generation release their slots after the swap).

With ``performance.inflight_acquire_wait_ms`` > 0 a request that finds no free slot waits
that long for one instead of being shed at once. Waiting requests form the route queues,
one per pool: at most ``route_queue.caps[pool]`` (the name of the pool that routed the
request, matched exactly as Spooky does; spooky-head.md section 4) or ``default_cap`` and
``global_cap`` in all may wait; one more is shed at once with reason ``route_queue``. With
no wait configured nobody queues.
"""

from __future__ import annotations

import collections

import trio

from spooky_trio.config import RouteQueueConfig


class Slots:
    """Held inflight slots with a wake-up for requests waiting for one."""

    __slots__ = ("held", "_freed")

    def __init__(self) -> None:
        self.held = 0
        self._freed: trio.Event | None = None

    def try_acquire(self, limit: int) -> bool:
        """Take a slot if fewer than ``limit`` are held."""
        if self.held >= limit:
            return False
        self.held += 1
        return True

    def release(self) -> None:
        self.held -= 1
        freed = self._freed
        if freed is not None:
            self._freed = None
            freed.set()

    async def wait_release(self) -> None:
        """Return after the next :meth:`release` (waiters then race for the slot)."""
        if self._freed is None:
            self._freed = trio.Event()
        await self._freed.wait()


class RouteQueues:
    """Requests waiting for a slot, per pool and in all (see the module docstring)."""

    __slots__ = ("waiting", "total")

    def __init__(self) -> None:
        self.waiting: collections.Counter[str] = collections.Counter()
        self.total = 0

    def try_enter(self, pool: str, cfg: RouteQueueConfig) -> bool:
        """Join the queue of ``pool`` unless it (``caps[pool]``, else ``default_cap``) or the
        global queue is full; one dict lookup by name."""
        cap = cfg.caps.get(pool, cfg.default_cap)
        if self.total >= cfg.global_cap or self.waiting[pool] >= cap:
            return False
        self.waiting[pool] += 1
        self.total += 1
        return True

    def leave(self, pool: str) -> None:
        self.total -= 1
        left = self.waiting[pool] - 1
        if left:
            self.waiting[pool] = left
        else:
            del self.waiting[pool]
