"""Passive health: failure classification, ejection, cooldown expiry, probation, observe()."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from spooky_trio.health.passive import PassiveHealth, PassivePolicy
from spooky_trio.upstream.errors import failure_reason
from spooky_trio.core.state import BackendState, StateStore
from spooky_trio.upstream import UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout, UpstreamTLSError
from spooky_trio.upstream.errors import UpstreamError


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def test_failure_reasons() -> None:
    assert failure_reason(UpstreamTLSError("x")) == "tls"
    assert failure_reason(UpstreamConnectError("x")) == "transport"
    assert failure_reason(UpstreamProtocolError("x")) == "transport"
    assert failure_reason(UpstreamTimeout("x")) == "timeout"
    assert failure_reason(UpstreamError("x", reason="body_timeout")) == "timeout"
    assert failure_reason(trio.TooSlowError()) == "timeout"
    assert failure_reason(ExceptionGroup("g", [UpstreamTLSError("x")])) == "tls"
    assert failure_reason(trio.BrokenResourceError()) is None
    assert failure_reason(ValueError()) is None


class TestStateMachine:
    def test_threshold_consecutive_failures_eject_for_cooldown(self) -> None:
        p = PassiveHealth(PassivePolicy(failure_threshold=3, cooldown=5.0))
        assert not p.record_failure(0.0)
        assert not p.record_failure(1.0)
        assert not p.ejected(1.0)
        assert p.record_failure(2.0)
        assert p.ejected(2.0) and p.ejected(6.99) and not p.ejected(7.0)

    def test_success_resets_the_count(self) -> None:
        p = PassiveHealth(PassivePolicy(failure_threshold=2, cooldown=1.0))
        p.record_failure(0.0)
        p.record_success(0.1)
        assert not p.record_failure(0.2)
        assert p.record_failure(0.3)

    def test_outcomes_during_ejection_do_not_extend_or_end_it(self) -> None:
        p = PassiveHealth(PassivePolicy(failure_threshold=1, cooldown=10.0))
        assert p.record_failure(0.0)
        assert not p.record_failure(5.0)
        assert not p.record_success(6.0)
        assert p.ejected_until == 10.0 and p.probation

    def test_probation_one_failure_re_ejects_one_success_restores(self) -> None:
        p = PassiveHealth(PassivePolicy(failure_threshold=3, cooldown=1.0))
        for t in (0.0, 0.1, 0.2):
            p.record_failure(t)
        assert p.ejected(0.5) and not p.ejected(1.2)
        assert p.record_failure(1.3)  # straight back out: it just failed again
        assert p.ejected(2.2) and p.ejections == 2
        assert p.record_success(2.4)  # restored
        assert not p.probation
        assert not p.record_failure(2.5)  # a full threshold is needed again


async def test_backend_state_ejects_and_recovers_on_the_trio_clock(autojump_clock: trio.testing.MockClock) -> None:
    store = StateStore()
    state = store.backend("k", "pool/b")
    state.passive.policy = PassivePolicy(failure_threshold=2, cooldown=3.0)
    for _ in range(2):
        state.record_failure("5xx", trio.current_time())
    assert not state.available(trio.current_time())
    assert state.failures == {"5xx": 2}
    start = trio.current_time()
    await trio.sleep_until(state.passive.ejected_until)  # type: ignore[arg-type]
    assert trio.current_time() - start == pytest.approx(3.0)
    assert state.available(trio.current_time())
    state.record_success(trio.current_time())
    assert not state.passive.probation


async def test_store_wait_for_wakes_on_ejection(autojump_clock: trio.testing.MockClock) -> None:
    store = StateStore()
    state = store.backend("k", "p/b")
    state.passive.policy = PassivePolicy(failure_threshold=1, cooldown=1.0)
    woke_at: list[float] = []

    async def waiter() -> None:
        await store.wait_for(lambda: state.passive.ejections > 0)
        woke_at.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(4)
        state.record_failure("transport", trio.current_time())
    assert woke_at == [pytest.approx(4.0)]
    assert store.get("k") is state and list(store) == [state]
