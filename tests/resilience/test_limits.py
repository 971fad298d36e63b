"""Inflight slots, prefix lookup and route queues."""

from __future__ import annotations

import trio
import trio.testing

from spooky_trio.config.schema_runtime import RouteQueueConfig
from spooky_trio.resilience.limits import RouteQueues, Slots, longest_prefix


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


def test_longest_prefix() -> None:
    caps = {"/api": 1, "/api/v2": 2, "/": 3}
    assert longest_prefix(caps, "/api/v2/x") == "/api/v2"
    assert longest_prefix(caps, "/api/v1") == "/api"
    assert longest_prefix(caps, "/other") == "/"
    assert longest_prefix({"/a": 1}, "/b") is None
    assert longest_prefix({}, "/b") is None


def test_route_queues_per_route_and_global_caps() -> None:
    cfg = RouteQueueConfig(default_cap=2, global_cap=3, caps={"/slow": 1})
    q = RouteQueues()
    slow = q.route_of("app", "/slow/x", cfg)
    app = q.route_of("app", "/fast", cfg)
    assert slow == ("prefix:/slow", 1) and app == ("pool:app", 2)
    assert q.try_enter(*slow, cfg)
    assert not q.try_enter(*slow, cfg)  # its prefix cap
    assert q.try_enter(*app, cfg) and q.try_enter(*app, cfg)
    assert not q.try_enter(*app, cfg)
    q.leave(slow[0])
    assert q.try_enter("pool:other", 5, cfg)  # a free global place again
    assert q.total == 3
    assert not q.try_enter("pool:third", 5, cfg)  # global_cap
    for route in ("pool:app", "pool:app", "pool:other"):
        q.leave(route)
    assert q.total == 0 and not q.waiting
