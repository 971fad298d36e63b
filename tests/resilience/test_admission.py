"""Adaptive admission: the limit moves by steps between min and max as latency crosses high_latency_ms."""

from __future__ import annotations

from spooky_trio.config.schema_runtime import AdaptiveAdmissionConfig
from spooky_trio.resilience.admission import AdaptiveAdmission

CFG = AdaptiveAdmissionConfig(min_limit=10, max_limit=40, decrease_step=8, increase_step=3, high_latency_ms=100)


def test_starts_at_max_and_moves_by_steps_within_bounds() -> None:
    a = AdaptiveAdmission()
    assert a.limit(CFG) == 40
    assert a.observe(100, CFG) == 40  # at the threshold is not "high"
    assert a.observe(101, CFG) == 32
    assert a.observe(500, CFG) == 24
    assert a.observe(500, CFG) == 16
    assert a.observe(500, CFG) == 10  # clamped at min
    assert a.observe(500, CFG) == 10
    assert a.observe(5, CFG) == 13
    for _ in range(20):
        a.observe(5, CFG)
    assert a.limit(CFG) == 40  # clamped at max


def test_new_bounds_from_a_reload_apply_at_the_next_read() -> None:
    a = AdaptiveAdmission()
    a.observe(1000, CFG)
    assert a.limit(CFG) == 32
    narrower = AdaptiveAdmissionConfig(min_limit=5, max_limit=20, decrease_step=8, increase_step=3, high_latency_ms=100)
    assert a.limit(narrower) == 20
    higher_floor = AdaptiveAdmissionConfig(min_limit=30, max_limit=40, decrease_step=8, increase_step=3, high_latency_ms=100)
    assert a.limit(higher_floor) == 30
