"""The composed checks (admission -> limits/queues -> backend limit -> breaker, and the
brownout step that admission keeps up to date) on a MockClock."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from spooky_trio.config import load_config_text
from spooky_trio.observability.metrics import Metrics
from spooky_trio.http.errors import ProxyError, ShedError
from spooky_trio.proxy.admission import OverloadGuard
from spooky_trio.proxy.brownout import Brownout
from spooky_trio.proxy.context import RequestContext
from spooky_trio.proxy.lease import breaker_verdict
from spooky_trio.core.generation import Generation
from spooky_trio.core.state import StateStore
from tests.balancing.helpers import request

CONFIG = """
listen:
  tls: {{cert: /c.pem, key: /k.pem}}
upstream:
  core:
    route: {{path_prefix: /core}}
    backends:
      - {{id: c1, address: "http://127.0.0.1:8001"}}
  web:
    route: {{path_prefix: /}}
    backends:
      - {{id: w1, address: "http://127.0.0.1:8002"}}
      - {{id: w2, address: "http://127.0.0.1:8003"}}
performance:
  global_inflight_limit: 10
  per_upstream_inflight_limit: {pool_limit}
  per_backend_inflight_limit: {backend_limit}
  inflight_acquire_wait_ms: {wait_ms}
resilience:
  adaptive_admission: {{enabled: {admission}, min_limit: 2, decrease_step: 4, increase_step: 1, high_latency_ms: 100}}
  brownout: {{enabled: {brownout}, trigger_inflight_percent: 50, recover_inflight_percent: 20, core_routes: [core]}}
  route_queue: {{default_cap: 1, global_cap: 5, shed_retry_after_seconds: 7, caps: {{core: 2, "/big": 5}}}}
  circuit_breaker: {{failure_threshold: 2, open_ms: 1000, half_open_max_probes: 1}}
"""


def setup(**overrides: Any) -> tuple[Generation, OverloadGuard, Metrics, StateStore]:
    values = {"pool_limit": 10, "backend_limit": 10, "wait_ms": 0, "admission": "false", "brownout": "false"} | overrides
    store = StateStore()
    generation = Generation.build(load_config_text(CONFIG.format(**values)), state=store)
    metrics = Metrics()
    return generation, OverloadGuard(store.resilience, metrics), metrics, store


def shed_count(metrics: Metrics, reason: str) -> float:
    return metrics.registry.get_sample_value("spooky_overload_shed_by_reason_total", {"reason": reason}) or 0.0


async def test_global_limit_sheds_with_retry_after_and_releases() -> None:
    generation, guard, metrics, _ = setup()
    config = generation.config
    held = [await guard.admit(config, "web") for _ in range(10)]
    with pytest.raises(ShedError) as info:
        await guard.admit(config, "web")
    assert info.value.response.status == 503 and info.value.response.reason == "global_inflight"
    assert info.value.retry_after == 7 and "too many requests" in info.value.response.body().decode()
    assert metrics.registry.get_sample_value("spooky_overload_shed_total") == 1
    guard.release(config, held.pop())
    await guard.admit(config, "web")


async def test_pool_limit_sheds_upstream_inflight_and_gives_back_the_global_slot() -> None:
    generation, guard, metrics, store = setup(pool_limit=2)
    config = generation.config
    await guard.admit(config, "web")
    await guard.admit(config, "web")
    with pytest.raises(ShedError, match="upstream pool"):
        await guard.admit(config, "web")
    assert store.resilience.global_slots.held == 2
    await guard.admit(config, "core")  # another pool has its own count
    assert shed_count(metrics, "upstream_inflight") == 1


def brownout_check(generation: Generation, guard: OverloadGuard, pool: str) -> None:
    """The chain's brownout step (proxy/brownout.py) for a request routed to ``pool``."""
    ctx = RequestContext(request(), generation)
    ctx.serving_pool = generation.pools[pool]
    Brownout(generation.config, guard, "@connect").on_request(ctx)


async def test_admission_updates_brownout_which_its_own_step_checks_first() -> None:
    generation, guard, metrics, store = setup(admission="true", brownout="true")
    config = generation.config
    for _ in range(5):  # 50% of 10: brownout turns on
        await guard.admit(config, "core")
    assert store.resilience.brownout.active
    with pytest.raises(ShedError, match="brownout"):
        brownout_check(generation, guard, "web")
    brownout_check(generation, guard, "core")  # core routes are exempt
    await guard.admit(config, "web")  # admission itself no longer checks brownout
    for _ in range(2):  # slow upstream: the admission limit falls from 10 to 2
        guard.latency_sample(config, 500.0)
    with pytest.raises(ShedError) as info:
        await guard.admit(config, "core")
    assert info.value.response.reason == "adaptive_admission"
    assert [shed_count(metrics, r) for r in ("brownout", "adaptive_admission")] == [1, 1]


async def test_brownout_recovers_only_at_the_recover_threshold() -> None:
    generation, guard, _, store = setup(brownout="true")
    config = generation.config
    held = [await guard.admit(config, "core") for _ in range(5)]
    for _ in range(2):  # 5 -> 3 in flight: 30% is above recover (20%)
        guard.release(config, held.pop())
    assert store.resilience.brownout.active
    guard.release(config, held.pop())  # 2 in flight: 20%
    assert not store.resilience.brownout.active
    brownout_check(generation, guard, "web")


async def test_micro_wait_admits_when_a_slot_frees_in_time(autojump_clock: trio.testing.MockClock) -> None:
    generation, guard, metrics, store = setup(wait_ms=100, pool_limit=1)
    config = generation.config
    first = await guard.admit(config, "web")
    admitted_at: list[float] = []

    async def waiter() -> None:
        await guard.admit(config, "web")
        admitted_at.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(0.05)
        assert store.resilience.queues.total == 1
        guard.release(config, first)
    assert admitted_at == [pytest.approx(0.05)]
    assert metrics.registry.get_sample_value("spooky_inflight_wait_admit_total", {"scope": "upstream"}) == 1
    assert store.resilience.queues.total == 0
    start = trio.current_time()
    with pytest.raises(ShedError, match="upstream pool"):  # nobody releases: shed after the wait
        await guard.admit(config, "web")
    assert trio.current_time() - start == pytest.approx(0.1)


async def test_route_queue_caps_are_keyed_by_pool_name(autojump_clock: trio.testing.MockClock) -> None:
    # spooky-head.md section 4: caps[<pool>] for the pool that routed the request; "/big"
    # looks like a path prefix and matches nothing (every other pool gets default_cap 1)
    generation, guard, metrics, _ = setup(wait_ms=1000, pool_limit=1)
    config = generation.config
    await guard.admit(config, "web")
    await guard.admit(config, "core")
    outcomes: list[str] = []

    async def waiter(pool: str) -> None:
        try:
            await guard.admit(config, pool)
            outcomes.append("admitted")
        except ShedError as exc:
            outcomes.append(f"{pool} {exc.response.reason} at {trio.current_time():g}")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "web")  # queues on pool "web" (default_cap 1)
        await trio.sleep(0.1)
        nursery.start_soon(waiter, "web")  # the pool's queue is full
        nursery.start_soon(waiter, "core")  # caps.core: 2
        nursery.start_soon(waiter, "core")
        nursery.start_soon(waiter, "core")  # full
    assert sorted(outcomes) == [
        "core route_queue at 0.1", "core upstream_inflight at 1.1", "core upstream_inflight at 1.1",
        "web route_queue at 0.1", "web upstream_inflight at 1",
    ]
    assert shed_count(metrics, "route_queue") == 2


async def test_choose_avoids_open_breakers_then_sheds_circuit_open(autojump_clock: trio.testing.MockClock) -> None:
    generation, guard, metrics, _ = setup()
    config = generation.config
    pool = generation.pools["web"]
    w1, w2 = pool.backends
    cb = config.resilience.circuit_breaker
    for _ in range(2):
        breaker_verdict(cb, w1, False, True)
    assert w1.state.breaker.state == "open"
    for _ in range(4):
        chosen = await guard.choose(config, pool, request())
        assert chosen.backend is w2
        chosen.release()
    for _ in range(2):
        breaker_verdict(cb, w2, False, True)
    with pytest.raises(ShedError, match="circuit breaker"):
        await guard.choose(config, pool, request())
    assert metrics.registry.get_sample_value("spooky_circuit_breaker_rejected_total") == 1
    await trio.sleep(1.0)  # open_ms: half-open, one probe each
    first = await guard.choose(config, pool, request())
    first.begin()  # the exchange starts: the lease takes the half-open probe
    second = await guard.choose(config, pool, request())
    assert {first.backend.id, second.backend.id} == {"w1", "w2"}
    second.begin()
    with pytest.raises(ShedError, match="circuit breaker"):  # both probes in flight
        await guard.choose(config, pool, request())
    first.response_started(200)
    first.finish()  # a 200: the probe succeeded
    assert first.backend.state.breaker.state == "closed"
    second.finish(trio.BrokenResourceError())  # the client went away before a status: no verdict
    assert second.backend.state.breaker.state == "half_open"
    assert first.backend.state.slots.held == second.backend.state.slots.held == 0


async def test_backend_limit_sheds_backend_inflight_and_no_backend_is_a_plain_503() -> None:
    generation, guard, metrics, _ = setup(backend_limit=1)
    config = generation.config
    pool = generation.pools["web"]
    chosen = {(await guard.choose(config, pool, request())).backend.id for _ in range(2)}
    assert chosen == {"w1", "w2"}
    with pytest.raises(ShedError, match="inflight limit"):
        await guard.choose(config, pool, request())
    assert shed_count(metrics, "backend_inflight") == 1
    for backend in pool.backends:
        backend.state.passive.ejected_until = trio.current_time() + 60
    with pytest.raises(ProxyError) as info:
        await guard.choose(config, pool, request())
    assert not isinstance(info.value, ShedError) and info.value.response.reason == "no_healthy_backend"


async def test_backend_wait_takes_whichever_backend_frees_first(autojump_clock: trio.testing.MockClock) -> None:
    generation, guard, metrics, _ = setup(backend_limit=1, wait_ms=500)
    config = generation.config
    pool = generation.pools["web"]
    w1 = await guard.choose(config, pool, request())
    w2 = await guard.choose(config, pool, request())
    got: list[str] = []

    async def waiter() -> None:
        got.append((await guard.choose(config, pool, request())).backend.id)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(0.2)
        (w2 if w1.backend.id == "w1" else w1).release()
    assert got == ["w2"]
    assert metrics.registry.get_sample_value("spooky_inflight_wait_admit_total", {"scope": "backend"}) == 1


async def test_state_survives_a_rebuild_of_the_generation() -> None:
    generation, guard, _, store = setup(brownout="true")
    config = generation.config
    pool = generation.pools["web"]
    for _ in range(2):
        breaker_verdict(config.resilience.circuit_breaker, pool.backends[0], False, True)
    for _ in range(5):
        await guard.admit(config, "core")
    rebuilt = Generation.build(config, number=2, state=store)
    assert rebuilt.pools["web"].backends[0].state.breaker.state == "open"
    assert store.resilience.brownout.active and store.resilience.global_slots.held == 5
