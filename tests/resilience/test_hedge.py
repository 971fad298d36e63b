"""Hedge eligibility and the race bookkeeping (first head wins, others cancelled)."""

from __future__ import annotations

import trio
import trio.testing

from spooky_trio.config.schema_runtime import HedgingConfig
from spooky_trio.resilience.hedge import HedgeRace, hedge_allowed


def test_eligibility_by_method_and_route_allowlist() -> None:
    every = HedgingConfig(enabled=True)
    assert hedge_allowed(b"GET", "app", every) and hedge_allowed(b"HEAD", "app", every)
    assert not hedge_allowed(b"POST", "app", every)
    # pool names, trimmed, blanks dropped; "/search" is a name no pool has
    listed = HedgingConfig(enabled=True, route_allowlist=["/search", " catalog ", "  "], safe_methods=["get"])
    assert listed.route_allowlist == ["/search", "catalog"]
    assert hedge_allowed(b"GET", "catalog", listed)
    assert not hedge_allowed(b"GET", "search", listed) and not hedge_allowed(b"GET", "Catalog", listed)
    assert not hedge_allowed(b"HEAD", "catalog", listed)
    # only blanks: the list is empty, so every pool
    assert hedge_allowed(b"GET", "any", HedgingConfig(enabled=True, route_allowlist=[" ", ""]))


async def test_first_claim_wins_and_cancels_the_others(autojump_clock: trio.testing.MockClock) -> None:
    race = HedgeRace()
    finished: list[str] = []

    async def attempt(index: int, head_after: float) -> None:
        with trio.CancelScope() as scope:
            race.start(index, scope)
            await trio.sleep(head_after)
            if race.claim(index):
                finished.append(f"winner {index} at {trio.current_time():g}")
            return
        finished.append(f"cancelled {index} at {trio.current_time():g}")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(attempt, 0, 10.0)  # a stalling primary
        await trio.sleep(1.0)
        nursery.start_soon(attempt, 1, 0.5)
    assert sorted(finished) == ["cancelled 0 at 1.5", "winner 1 at 1.5"]
    assert race.settled.is_set() and race.winner == 1


def test_settles_when_every_started_attempt_failed() -> None:
    race = HedgeRace()
    race.start(0, trio.CancelScope())
    race.start(1, trio.CancelScope())
    race.failed(0, ValueError("a"))
    assert not race.settled.is_set() and race.running == 1
    race.failed(1, ValueError("b"))
    assert race.settled.is_set() and race.winner is None


async def test_an_attempt_started_after_a_win_is_cancelled_at_once() -> None:
    """The hedge task can start (register its scope) just after the primary claimed the
    response: it must not go on to send a second request (found in review)."""
    race = HedgeRace()
    primary = trio.CancelScope()
    race.start(0, primary)
    assert race.claim(0)
    late = trio.CancelScope()
    race.start(1, late)
    assert late.cancel_called and not primary.cancel_called
