"""Brownout: on at trigger percent, off at recover percent, unchanged in between; core pools exempt."""

from __future__ import annotations

from spooky_trio.config.schema_runtime import BrownoutConfig
from spooky_trio.resilience.brownout import Brownout

CFG = BrownoutConfig(trigger_inflight_percent=50, recover_inflight_percent=20, core_routes=["core"])


def test_hysteresis_thresholds() -> None:
    b = Brownout()
    assert not b.update(4, 10, CFG) and not b.active  # 40% < 50%
    assert b.update(5, 10, CFG) and b.active  # 50%: on
    assert not b.update(3, 10, CFG) and b.active  # 30%: between recover and trigger, stays on
    assert not b.update(9, 10, CFG) and b.active
    assert b.update(2, 10, CFG) and not b.active  # 20%: off
    assert not b.update(4, 10, CFG) and not b.active  # 40%: stays off
    assert b.activations == 1


def test_only_non_core_pools_are_shed_while_active() -> None:
    b = Brownout()
    assert not b.sheds("web", CFG)
    b.update(10, 10, CFG)
    assert b.sheds("web", CFG) and not b.sheds("core", CFG)
