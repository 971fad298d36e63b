"""EWMA latency, health config application, pool picking and state that survives rebuilds."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from spooky_trio.config import load_config_text
from spooky_trio.config.schema import HealthCheckConfig
from spooky_trio.core.generation import Generation
from spooky_trio.proxy.admission import OverloadGuard
from spooky_trio.core.state import BackendState, Ewma, StateStore
from spooky_trio.upstream import BackendTarget
from tests.balancing.helpers import request

CONFIG = """
listen:
  tls: {{cert: /c.pem, key: /k.pem}}
upstream:
  app:
    route: {{path_prefix: /}}
    load_balancing: {{type: {lb}}}
    backends:
      - {{id: a, address: "http://127.0.0.1:8001"}}
      - {{id: b, address: "http://127.0.0.1:8002", health_check: {{failure_threshold: 2, success_threshold: 1, cooldown_ms: 100}}}}
      - {{id: c, address: "http://127.0.0.1:8003", weight: 200}}
"""


def config(lb: str = "round-robin"):  # type: ignore[no-untyped-def]
    return load_config_text(CONFIG.format(lb=lb))


class TestEwma:
    def test_first_sample_is_the_value(self) -> None:
        e = Ewma(tau=10.0)
        assert e.update(0.2, 5.0) == 0.2

    def test_old_average_fades_with_time(self) -> None:
        quick, slow = Ewma(tau=10.0), Ewma(tau=10.0)
        quick.update(1.0, 0.0)
        slow.update(1.0, 0.0)
        quick.update(0.0, 1.0)  # one second later
        slow.update(0.0, 100.0)  # long after: the old value barely counts
        assert quick.value == pytest.approx(1 - max(0.1, 1 - math.exp(-0.1)))
        assert slow.value == pytest.approx(math.exp(-10), abs=1e-6)

    def test_burst_at_one_instant_still_moves_it(self) -> None:
        e = Ewma(tau=10.0, min_alpha=0.1)
        e.update(1.0, 0.0)
        for _ in range(10):
            e.update(0.0, 0.0)
        assert e.value == pytest.approx(0.9**10)

    async def test_on_the_trio_clock(self, autojump_clock: trio.testing.MockClock) -> None:
        e = Ewma(tau=2.0)
        e.update(0.100, trio.current_time())
        await trio.sleep(2.0)
        assert e.update(0.200, trio.current_time()) == pytest.approx(0.100 + (1 - math.exp(-1)) * 0.100)


def test_configure_applies_thresholds_and_keeps_verdicts() -> None:
    state = BackendState(key="k", label="p/b")
    assert state.healthy and state.active is None
    state.configure(HealthCheckConfig(failure_threshold=2, success_threshold=3, cooldown_ms=700))
    assert state.passive.policy.failure_threshold == 2 and state.passive.policy.cooldown == 0.7
    state.record_probe("5xx", 0.0)
    assert state.record_probe("timeout", 1.0) is True  # went unhealthy
    assert not state.healthy and state.failures == {"5xx": 1, "timeout": 1}
    state.configure(HealthCheckConfig(failure_threshold=4, success_threshold=1))
    assert not state.healthy  # a reload does not forget the verdict
    assert state.record_probe(None, 2.0) is False and state.healthy
    state.configure(None)
    assert state.healthy and state.passive.policy.failure_threshold == 3


def test_connect_target_follows_dns_and_is_cached() -> None:
    state = BackendState(key="k", label="p/b")
    configured = BackendTarget(scheme="http", host="app.internal", port=80)
    assert state.connect_target(configured) is configured
    state.connect_address = "10.0.0.7"
    first = state.connect_target(configured)
    assert first.connect_host == "10.0.0.7" and first.host == "app.internal"
    assert state.connect_target(configured) is first
    state.connect_address = "10.0.0.8"
    assert state.connect_target(configured).connect_host == "10.0.0.8"
    assert state.connect_target(configured) != first  # a different pool key: new connections


async def test_the_balance_step_skips_unavailable_backends_and_finds_none_when_all_are() -> None:
    store = StateStore()
    generation = Generation.build(config(), state=store)
    pool = generation.pools["app"]
    guard = OverloadGuard(store.resilience)
    a, b, c = pool.backends

    def picked() -> set[str | None]:
        return {getattr(guard.pick(generation.config, pool, request())[0], "id", None) for _ in range(6)}

    assert picked() == {"a", "b", "c"}
    b.state.active.healthy = False  # type: ignore[union-attr]
    c.state.passive.ejected_until = trio.current_time() + 60
    assert picked() == {"a"}
    a.state.passive.ejected_until = trio.current_time() + 60
    assert guard.pick(generation.config, pool, request()) == (None, None)


async def test_state_survives_a_rebuild_and_balancers_follow_config() -> None:
    store = StateStore()
    first = Generation.build(config("least-connections"), state=store)
    first.pools["app"].backends[0].state.in_flight = 7
    second = Generation.build(config("consistent-hash"), number=2, state=store)
    assert second.pools["app"].backends[0].state is first.pools["app"].backends[0].state
    assert type(first.pools["app"].balancer).__name__ == "LeastConnections"
    assert type(second.pools["app"].balancer).__name__ == "ConsistentHash"
    assert second.pools["app"].backends[1].health_check.failure_threshold == 2
