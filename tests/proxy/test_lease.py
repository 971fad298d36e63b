"""The backend lease records one attempt's verdicts in one call (proxy/lease.py), on a MockClock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from spooky_trio.config import load_config_text
from spooky_trio.core.generation import Generation
from spooky_trio.core.state import StateStore
from spooky_trio.health.passive import PassivePolicy
from spooky_trio.observability.metrics import Metrics
from spooky_trio.proxy.admission import OverloadGuard
from spooky_trio.proxy.lease import BackendLease
from spooky_trio.upstream import UpstreamTLSError
from tests.balancing.helpers import request

CONFIG = """
listen:
  tls: {cert: /c.pem, key: /k.pem}
upstream:
  app:
    route: {path_prefix: /}
    backends:
      - {id: a, address: "http://127.0.0.1:8001"}
resilience:
  circuit_breaker: {enabled: true, failure_threshold: 5, open_ms: 1000, half_open_max_probes: 1}
"""


async def lease() -> tuple[BackendLease, OverloadGuard, Metrics]:
    store = StateStore()
    generation = Generation.build(load_config_text(CONFIG), state=store)
    metrics = Metrics()
    guard = OverloadGuard(store.resilience, metrics)
    chosen = await guard.choose(generation.config, generation.pools["app"], request())
    chosen.backend.state.passive.policy = PassivePolicy(failure_threshold=2, cooldown=1.0)
    return chosen, guard, metrics


def exchanges(metrics: Metrics, status_class: str, outcome: str) -> float:
    labels = {"upstream": "app", "backend": "a", "status_class": status_class, "outcome": outcome}
    return metrics.registry.get_sample_value("spooky_backend_requests_total", labels) or 0.0


async def test_a_lease_counts_in_flight_latency_and_outcomes(autojump_clock: trio.testing.MockClock) -> None:
    first, guard, metrics = await lease()
    state = first.backend.state
    assert state.slots.held == 1 and state.in_flight == 0
    first.begin()
    assert state.in_flight == 1
    await trio.sleep(0.25)
    first.response_started(200)
    await trio.sleep(1)  # body time is not latency
    first.finish()
    assert state.in_flight == 0 and state.slots.held == 0
    assert state.latency == pytest.approx(0.25) and first.latency_ms == pytest.approx(250)
    assert state.passive.consecutive_failures == 0
    assert exchanges(metrics, "2xx", "success") == 1
    first.finish()  # idempotent: nothing counted twice, no slot given back twice
    assert state.slots.held == 0 and exchanges(metrics, "2xx", "success") == 1

    config = first._config
    second = guard.lease(config, first.backend)
    second.begin()
    second.response_started(503)
    second.finish()
    assert state.failures["5xx"] == 1 and state.passive.consecutive_failures == 1
    assert exchanges(metrics, "5xx", "failure") == 1

    third = guard.lease(config, first.backend)
    third.begin()
    third.finish(UpstreamTLSError("bad cert"))
    assert state.failures["tls"] == 1
    assert not state.available(trio.current_time())  # two in a row: ejected
    assert state.breaker.failures == 2  # the 503 and the TLS failure, in a row


async def test_client_side_failures_give_no_verdict(autojump_clock: trio.testing.MockClock) -> None:
    first, guard, metrics = await lease()
    state = first.backend.state
    first.begin()
    first.finish(trio.BrokenResourceError())  # the client went away before any response
    assert sum(state.failures.values()) == 0 and state.passive.consecutive_failures == 0
    assert metrics.registry.get_sample_value("spooky_backend_requests_total", {
        "upstream": "app", "backend": "a", "status_class": "none", "outcome": "success"}) is None
    state.passive.consecutive_failures = 1
    second = guard.lease(first._config, first.backend)
    second.begin()
    second.response_started(200)
    second.finish(trio.BrokenResourceError())  # mid-body: the backend did answer
    assert state.passive.consecutive_failures == 0
    assert state.in_flight == 0 and state.slots.held == 0


async def test_the_total_deadline_counts_as_a_timeout(autojump_clock: trio.testing.MockClock) -> None:
    first, _, metrics = await lease()
    first.begin()
    first.finish(trio.TooSlowError())
    assert first.backend.state.failures == {"timeout": 1}
    assert metrics.registry.get_sample_value("spooky_backend_timeouts_total") == 1


async def test_an_unused_lease_only_gives_the_slot_back(autojump_clock: trio.testing.MockClock) -> None:
    first, _, metrics = await lease()
    state = first.backend.state
    first.release()
    assert state.slots.held == 0 and state.in_flight == 0 and not first.held
    assert sum(state.failures.values()) == 0 and exchanges(metrics, "none", "success") == 0
