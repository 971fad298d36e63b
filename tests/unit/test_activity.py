"""Activity: the in-flight count drain waits on (core/activity.py)."""

from __future__ import annotations

import trio
import trio.testing

from spooky_trio.core.activity import Activity


async def test_wait_idle_returns_at_zero_and_waits_while_busy() -> None:
    parent = Activity()
    child = Activity(parent)
    await child.wait_idle()  # nothing in flight: returns at once
    child.enter()
    child.enter()
    assert (child.count, parent.count) == (2, 2)
    woke: list[str] = []

    async def waiter(name: str, activity: Activity) -> None:
        await activity.wait_idle()
        woke.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "child", child)
        nursery.start_soon(waiter, "parent", parent)
        await trio.testing.wait_all_tasks_blocked()
        child.exit()
        await trio.testing.wait_all_tasks_blocked()
        assert woke == []  # one still in flight
        child.exit()
    assert sorted(woke) == ["child", "parent"]
    assert (child.count, parent.count) == (0, 0)
    # busy again after an idle period: a new wait waits again
    woke.clear()
    child.enter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "again", child)
        await trio.testing.wait_all_tasks_blocked()
        assert woke == []
        child.exit()
    assert woke == ["again"]
