"""Watchdog windows, consecutive-window trigger, drain, cooldown and stall detection (MockClock)."""

from __future__ import annotations

import trio
import trio.testing

from spooky_trio.config.schema_runtime import WatchdogConfig
from spooky_trio.resilience.watchdog import Watchdog, WindowSample, unhealthy_reasons

CFG = WatchdogConfig(enabled=True, check_interval_ms=1000, poll_stall_timeout_ms=5000, timeout_error_rate_percent=60,
                     min_requests_per_window=20, overload_inflight_percent=95, unhealthy_consecutive_windows=3,
                     drain_grace_ms=8000, restart_cooldown_ms=120000, restart_command=["restart-me", "--now"])


def test_window_rules() -> None:
    def reasons(**kw: float) -> list[str]:
        sample = WindowSample(**{"requests": 0, "timeouts": 0, "inflight": 0, "lag": 0.0, **kw})  # type: ignore[arg-type]
        return unhealthy_reasons(CFG, 100, sample)

    assert reasons() == []
    assert reasons(requests=19, timeouts=19) == []  # too few requests to judge
    assert reasons(requests=20, timeouts=11) == []  # 55% < 60%
    assert reasons(requests=20, timeouts=12) == ["timeouts 12/20"]  # 60%
    assert reasons(inflight=94) == []
    assert reasons(inflight=95) == ["inflight 95/100"]
    assert reasons(lag=4.999) == []
    assert reasons(lag=5.0, inflight=100) == ["inflight 100/100", "event loop stalled 5.000s"]


class Harness:
    """A watchdog over fake counters, recording readiness changes and commands with times."""

    def __init__(self, config: WatchdogConfig = CFG) -> None:
        self.requests = 0
        self.timeouts = 0
        self.inflight = 0
        self.ready_log: list[tuple[float, bool]] = []
        self.commands: list[tuple[float, list[str]]] = []
        self.dog = Watchdog(
            config, inflight=lambda: self.inflight, inflight_limit=100, totals=lambda: (self.requests, self.timeouts),
            set_ready=lambda ready: self.ready_log.append((trio.current_time(), ready)), run_command=self.run_command,
        )

    async def run_command(self, argv: list[str]) -> int:
        self.commands.append((trio.current_time(), argv))
        return 0


async def test_three_unhealthy_windows_drain_then_run_command(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    h.inflight = 96
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        await nursery.start(h.dog.run)
        await h.dog.wait_stat("restart_hooks", 1)
        nursery.cancel_scope.cancel()
    # windows close at +1, +2, +3 s; the third triggers: not ready for 8 s, then the command
    assert h.commands == [(start + 11, ["restart-me", "--now"])]
    assert h.ready_log == [(start + 3, False), (start + 11, True)]
    assert h.dog.stats["degraded_windows"] == 3 and h.dog.stats["restart_requests"] == 1


async def test_a_healthy_window_resets_the_count(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    async with trio.open_nursery() as nursery:
        await nursery.start(h.dog.run)
        for healthy in (False, False, True, False, False):
            h.inflight = 0 if healthy else 100
            await h.dog.wait_stat("windows", h.dog.stats["windows"] + 1)
        assert h.dog.consecutive == 2 and h.commands == []
        await h.dog.wait_stat("restart_hooks", 1)  # the next unhealthy window is the third in a row
        nursery.cancel_scope.cancel()


async def test_timeout_rate_uses_per_window_differences(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(WatchdogConfig(enabled=True, unhealthy_consecutive_windows=1, restart_command=["x"], drain_grace_ms=0))
    h.requests, h.timeouts = 1000, 1000  # before the watchdog started: not part of any window
    async with trio.open_nursery() as nursery:
        await nursery.start(h.dog.run)
        await h.dog.wait_stat("windows", 1)
        assert h.dog.stats["degraded_windows"] == 0
        h.requests += 30
        h.timeouts += 20  # 66% of this window
        await h.dog.wait_stat("restart_hooks", 1)
        nursery.cancel_scope.cancel()


async def test_cooldown_limits_restarts(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(WatchdogConfig(enabled=True, unhealthy_consecutive_windows=1, restart_cooldown_ms=10000, drain_grace_ms=0, restart_command=["x"]))
    h.inflight = 100
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        await nursery.start(h.dog.run)
        await h.dog.wait_stat("restart_hooks", 2)
        nursery.cancel_scope.cancel()
    # every window is unhealthy; restarts at +1 s and then once the 10 s cooldown passed
    assert [t - start for t, _ in h.commands] == [1, 11]
    assert h.dog.stats["suppressed"] == 9


async def test_event_loop_stall_is_detected(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(WatchdogConfig(enabled=True, unhealthy_consecutive_windows=1, restart_command=[], poll_stall_timeout_ms=5000))
    async with trio.open_nursery() as nursery:
        await nursery.start(h.dog.run)
        await h.dog.wait_stat("windows", 2)
        assert h.dog.stats["degraded_windows"] == 0
        # the watchdog sleeps until its next deadline; the loop "blocks" 6 s past it
        autojump_clock.jump(7)
        await h.dog.wait_stat("windows", 3)
        assert h.dog.stats["degraded_windows"] == 1
        # no restart_command: the restart is requested and counted, nothing runs, readiness untouched
        assert h.dog.stats["restart_requests"] == 1 and h.commands == [] and h.ready_log == []
        nursery.cancel_scope.cancel()
