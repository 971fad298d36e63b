"""Inflight slots, prefix lookup and route queues."""

from __future__ import annotations

import trio
import trio.testing

from spooky_trio.config.schema_runtime import RouteQueueConfig
from spooky_trio.resilience.limits import RouteQueues, Slots


def test_slots_respect_the_limit_passed_in() -> None:
    s = Slots()
    assert s.try_acquire(2) and s.try_acquire(2)
    assert not s.try_acquire(2)
    assert s.try_acquire(3)  # a reload raised the limit
    s.release()
    assert s.held == 2


async def test_wait_release_wakes_on_release(autojump_clock: trio.testing.MockClock) -> None:
    s = Slots()
    s.try_acquire(1)
    woke: list[float] = []

    async def waiter() -> None:
        await s.wait_release()
        woke.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(5)
        assert woke == []
        s.release()
    assert woke == [5.0]


def test_route_queues_per_pool_and_global_caps() -> None:
    cfg = RouteQueueConfig(default_cap=2, global_cap=3, caps={"slow": 1, "/app": 9})
    q = RouteQueues()
    assert q.try_enter("slow", cfg)
    assert not q.try_enter("slow", cfg)  # caps.slow
    assert q.try_enter("app", cfg) and q.try_enter("app", cfg)
    assert not q.try_enter("app", cfg)  # default_cap: "/app" is not the pool's name
    q.leave("slow")
    assert q.try_enter("other", cfg)  # a free global place again
    assert q.total == 3
    assert not q.try_enter("third", cfg)  # global_cap
    for pool in ("app", "app", "other"):
        q.leave(pool)
    assert q.total == 0 and not q.waiting
