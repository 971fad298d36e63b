"""Active health: the threshold state machine and the probe task, on a MockClock."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from spooky_trio.config.schema import HealthCheckConfig
from spooky_trio.health.active import ActiveHealth, HealthChecker
from spooky_trio.core.state import StateStore
from spooky_trio.upstream import BackendTarget, UpstreamConnectError, UpstreamTLSError

TARGET = BackendTarget(scheme="http", host="127.0.0.1", port=8080)


@attrs.define
class FakeResponse:
    status: int
    body: list[bytes] = attrs.Factory(lambda: [b"ok"])

    async def receive(self) -> bytes:
        return self.body.pop(0) if self.body else b""


@attrs.define
class FakeUpstream:
    """Answers each probe with ``behaviour(probe_number)``: a status, an exception, or "hang"."""

    behaviour: Callable[[int], Any]
    calls: list[tuple[float, Any, Any]] = attrs.Factory(list)

    @contextlib.asynccontextmanager
    async def exchange(self, target: BackendTarget, request: Any, *, connect_timeout: float, response_timeout: float) -> AsyncIterator[FakeResponse]:
        self.calls.append((trio.current_time(), target, request))
        outcome = self.behaviour(len(self.calls) - 1)
        if outcome == "hang":
            await trio.sleep_forever()
        if isinstance(outcome, BaseException):
            raise outcome
        yield FakeResponse(outcome)


def checker(upstream: FakeUpstream, check: HealthCheckConfig, store: StateStore | None = None) -> HealthChecker:
    state = (store or StateStore()).backend("k", "app/a")
    state.configure(check)
    return HealthChecker(state=state, check=check, authority=b"a.internal:8080", target=lambda: TARGET, upstream=upstream)  # type: ignore[arg-type]


def test_state_machine_thresholds() -> None:
    health = ActiveHealth(failure_threshold=2, success_threshold=3)
    assert health.healthy
    assert not health.record(False)
    assert not health.record(True)  # a success breaks the failure streak
    assert not health.record(False)
    assert health.record(False) and not health.healthy
    assert not health.record(True) and not health.record(True)
    assert not health.record(False)  # a failure breaks the success streak
    assert [health.record(True) for _ in range(3)] == [False, False, True]
    assert health.healthy


async def test_unhealthy_after_threshold_then_cooldown_then_healthy(autojump_clock: trio.testing.MockClock) -> None:
    failing = {"on": False}
    upstream = FakeUpstream(lambda n: 503 if failing["on"] else 200)
    check = HealthCheckConfig(path="/healthz", interval=1000, failure_threshold=3, success_threshold=2, cooldown_ms=5000)
    store = StateStore()
    probe = checker(upstream, check, store)
    state = probe.state
    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe.run)
        await trio.sleep(1.5)  # probes at t=0 and t=1 succeeded
        assert state.healthy and len(upstream.calls) == 2
        failing["on"] = True
        await store.wait_for(lambda: not state.healthy)
        went_down = trio.current_time()
        assert went_down == pytest.approx(4.0)  # failures at t=2, 3, 4
        assert state.failures == {"5xx": 3}
        failing["on"] = False
        await store.wait_for(lambda: state.healthy)
        # the cooldown pauses probing: the next probes run at t=9 and t=10
        assert [t for t, _, _ in upstream.calls[5:]] == pytest.approx([9.0, 10.0])
        assert trio.current_time() == pytest.approx(10.0)
        nursery.cancel_scope.cancel()
    _, target, request = upstream.calls[0]
    assert target is TARGET
    assert (request.method, request.target, request.authority) == (b"GET", b"/healthz", b"a.internal:8080")


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        (200, None),
        (301, None),
        (404, "status"),
        (500, "5xx"),
        (UpstreamTLSError("bad certificate"), "tls"),
        (UpstreamConnectError("refused"), "transport"),
        ("hang", "timeout"),
    ],
)
async def test_probe_outcomes(autojump_clock: trio.testing.MockClock, outcome: Any, reason: str | None) -> None:
    probe = checker(FakeUpstream(lambda n: outcome), HealthCheckConfig(timeout_ms=250))
    start = trio.current_time()
    assert await probe.probe() == reason
    assert trio.current_time() - start <= 0.25


async def test_unexpected_probe_error_is_a_failure_not_a_crash(autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    probe = checker(FakeUpstream(lambda n: RuntimeError("bug")), HealthCheckConfig())
    assert await probe.probe() == "transport"
    assert "failed unexpectedly" in caplog.text


async def test_transitions_are_logged_once_each(autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="spooky.health")
    upstream = FakeUpstream(lambda n: 500 if n < 6 else 200)
    check = HealthCheckConfig(interval=100, failure_threshold=2, success_threshold=2, cooldown_ms=100)
    probe = checker(upstream, check)
    with trio.move_on_after(2.0):
        await probe.run()
    assert caplog.text.count("is unhealthy") == 1
    assert caplog.text.count("is healthy again") == 1
