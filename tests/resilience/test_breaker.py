"""Circuit breaker state machine: closed -> open -> half-open -> closed, driven by explicit times."""

from __future__ import annotations

from spooky_trio.config.schema_runtime import CircuitBreakerConfig
from spooky_trio.resilience.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker

CFG = CircuitBreakerConfig(failure_threshold=3, open_ms=1000, half_open_max_probes=2)


def test_opens_after_threshold_consecutive_failures_and_success_resets() -> None:
    b = CircuitBreaker()
    assert b.failure(False, 0.0, CFG) is None
    assert b.failure(False, 0.1, CFG) is None
    assert b.success(False) is None  # resets the count
    assert b.failure(False, 0.2, CFG) is None
    assert b.failure(False, 0.3, CFG) is None
    assert b.state == CLOSED and b.permits(0.3, CFG)
    assert b.failure(False, 0.4, CFG) == OPEN
    assert b.state == OPEN and b.opens == 1


def test_open_rejects_until_open_ms_then_half_open_limits_probes() -> None:
    b = CircuitBreaker()
    for t in (0.0, 0.0, 0.0):
        b.failure(False, t, CFG)
    assert not b.permits(0.5, CFG)
    assert not b.permits(0.999, CFG)
    assert b.permits(1.0, CFG) and b.state == HALF_OPEN
    assert b.begin() is True
    assert b.permits(1.0, CFG)
    assert b.begin() is True
    assert not b.permits(1.0, CFG)  # half_open_max_probes in flight
    b.abandon(True)  # a probe without a verdict gives its place back
    assert b.permits(1.0, CFG)


def test_half_open_success_closes_and_failure_reopens() -> None:
    b = CircuitBreaker()
    for _ in range(3):
        b.failure(False, 0.0, CFG)
    assert b.permits(1.0, CFG)
    probe = b.begin()
    assert b.failure(probe, 1.5, CFG) == OPEN  # one failed probe suffices
    assert not b.permits(2.4, CFG)
    assert b.permits(2.5, CFG)
    probe = b.begin()
    assert b.success(probe) == CLOSED
    assert b.state == CLOSED and b.probes == 0 and b.failures == 0
    assert b.begin() is False  # closed: not a probe


def test_failures_of_requests_started_before_opening_do_not_extend_it() -> None:
    b = CircuitBreaker()
    for _ in range(3):
        b.failure(False, 0.0, CFG)
    assert b.failure(False, 0.9, CFG) is None
    assert b.permits(1.0, CFG)


def test_snapshot() -> None:
    b = CircuitBreaker()
    for _ in range(3):
        b.failure(False, 10.0, CFG)
    snap = b.snapshot(10.25, CFG)
    assert snap["state"] == "open" and snap["half_open_in_seconds"] == 0.75 and snap["opens"] == 1
