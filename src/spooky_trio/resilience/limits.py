"""Inflight slots (global, per pool, per backend) and the route queues of requests waiting for one.

A :class:`Slots` counts the requests holding a slot; the limit is not stored but passed in
by the caller, because it is per-generation config while the count must survive reloads
(requests admitted under the old generation release their slots after the swap).

With ``performance.inflight_acquire_wait_ms`` > 0 a request that finds no free slot waits
that long for one instead of being shed at once. Waiting requests form the route queues:
at most ``route_queue.caps[prefix]`` (the longest prefix matching the path) or
``default_cap`` (per pool) per route and ``global_cap`` in all may wait; one more is shed
at once with reason ``route_queue``. With no wait configured nobody queues.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping

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


#: id(mapping) -> (mapping, its keys longest first); config maps are frozen with their config
_PREFIX_CACHE: dict[int, tuple[Mapping[str, object], list[str]]] = {}


def longest_prefix(mapping: Mapping[str, object], path: str) -> str | None:
    """The longest key of ``mapping`` that ``path`` starts with, or None."""
    if not mapping:
        return None
    cached = _PREFIX_CACHE.get(id(mapping))
    if cached is None or cached[0] is not mapping:
        if len(_PREFIX_CACHE) > 64:  # old generations' maps
            _PREFIX_CACHE.clear()
        cached = _PREFIX_CACHE[id(mapping)] = (mapping, sorted(mapping, key=len, reverse=True))
    for prefix in cached[1]:
        if path.startswith(prefix):
            return prefix
    return None


class RouteQueues:
    """Requests waiting for a slot, per route and in all (see the module docstring)."""

    __slots__ = ("waiting", "total")

    def __init__(self) -> None:
        self.waiting: collections.Counter[str] = collections.Counter()
        self.total = 0

    @staticmethod
    def route_of(pool: str, path: str, cfg: RouteQueueConfig) -> tuple[str, int]:
        """(queue key, cap) of a request: its ``caps`` prefix, else its pool with ``default_cap``."""
        prefix = longest_prefix(cfg.caps, path)
        if prefix is not None:
            return "prefix:" + prefix, cfg.caps[prefix]
        return "pool:" + pool, cfg.default_cap

    def try_enter(self, route: str, cap: int, cfg: RouteQueueConfig) -> bool:
        """Join the queue of ``route`` unless it or the global queue is full."""
        if self.total >= cfg.global_cap or self.waiting[route] >= cap:
            return False
        self.waiting[route] += 1
        self.total += 1
        return True

    def leave(self, route: str) -> None:
        self.total -= 1
        left = self.waiting[route] - 1
        if left:
            self.waiting[route] = left
        else:
            del self.waiting[route]
