"""The ``brownout`` and ``rate_limit`` steps without sockets (tests/proxy/fakes.py), on Trio's
MockClock: rule order, keys and fallbacks, the 429, the RateLimit fields, metrics, reloads."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from spooky_trio.config import load_config_text
from spooky_trio.core.generation import Generation
from spooky_trio.core.state import StateStore
from spooky_trio.proxy.chain import Chain, Proxy
from spooky_trio.proxy.context import RequestContext
from spooky_trio.proxy.filters import build_chain
from spooky_trio.proxy.ratelimit import LocalRateLimit
from tests.proxy.fakes import CONFIG, RecordingSink, Script, ScriptedResponse, build, count, ok, request

RULES = """
  scoped_rate_limits:
    - {name: per-ip, scope: client, requests_per_sec: 1, burst: 2}
    - {name: tenant, scope: tenant, key: "Header:X-Tenant", requests_per_sec: 100, burst: 3, route_allowlist: [app]}
"""


def sample(metrics: object, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0  # type: ignore[attr-defined]


def own_fields() -> Script:
    """A backend that sends its own RateLimit field."""
    return lambda req: ScriptedResponse(200, [(b"content-length", b"2"), (b"ratelimit", b'"backend";r=9;t=0')], [b"ok"])


def step_named(chain: Chain, name: str) -> object:
    return next(step for step in chain.filters if step.name == name)


async def statuses(proxy: Proxy, n: int, **kwargs: object) -> list[int]:
    out = []
    for _ in range(n):
        sink = RecordingSink()
        await proxy.handle(request(**kwargs), sink)  # type: ignore[arg-type]
        assert sink.status is not None
        out.append(sink.status)
    return out


async def test_spooky_example_5_third_request_within_a_second_gets_429(mock_clock: trio.testing.MockClock,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="spooky.access")
    proxy, generation, _, metrics, upstream = build({"10.0.0.1": ok(), "10.0.0.2": ok()}, extra=RULES)
    chain = proxy.chain_for(generation)
    assert chain.names[:5] == ["normalize_path", "protocol_policy", "route", "brownout", "rate_limit"]
    assert isinstance(chain.filters[4], LocalRateLimit)  # no redis rule: a step that never waits
    assert await statuses(proxy, 2) == [200, 200]
    sink = RecordingSink()
    await proxy.handle(request(), sink)
    assert sink.status == 429 and sink.header(b"retry-after") == b"1"
    assert sink.body == b"429 Too Many Requests: request rate limited (rate_limited:per-ip)\n"
    assert sink.header(b"ratelimit-policy") == b'"per-ip";q=2;w=2'
    assert sink.header(b"ratelimit") == b'"per-ip";r=0;t=1'
    assert len(upstream.sent) == 2
    assert caplog.records[-1].access["reason"] == "rate_limited:per-ip"  # type: ignore[attr-defined]
    assert count(metrics, "rate_limited:per-ip", "4xx") == 1
    assert sample(metrics, "spooky_request_rate_limited_total") == 1
    assert sample(metrics, "spooky_route_rate_limited_total", route="app") == 1
    assert sample(metrics, "spooky_rate_limit_decisions_total", rule="per-ip", outcome="allowed") == 2
    assert sample(metrics, "spooky_rate_limit_decisions_total", rule="per-ip", outcome="limited") == 1
    mock_clock.jump(1.0)  # one token back
    assert await statuses(proxy, 2) == [200, 429]


async def test_rules_run_in_order_first_rejection_wins_and_earlier_tokens_stay_spent(mock_clock: trio.testing.MockClock) -> None:
    extra = """
  scoped_rate_limits:
    - {name: wide, scope: client, requests_per_sec: 1, burst: 5}
    - {name: narrow, scope: route, requests_per_sec: 1, burst: 2}
"""
    proxy, generation, store, metrics, _ = build({"10.0.0.1": ok(), "10.0.0.2": ok()}, extra=extra)
    assert await statuses(proxy, 3) == [200, 200, 429]
    sink = RecordingSink()
    await proxy.handle(request(), sink)
    assert sink.status == 429 and b"rate_limited:narrow" in sink.body
    # "wide" admitted all four requests (its tokens stay spent), so one is left
    [wide, narrow] = (store.rate_limits.rule(r) for r in generation.config.resilience.scoped_rate_limits)
    assert wide.tokens("192.0.2.1", trio.current_time()) == pytest.approx(1.0)
    assert narrow.tokens("app", trio.current_time()) == pytest.approx(0.0)
    assert sample(metrics, "spooky_rate_limit_decisions_total", rule="wide", outcome="allowed") == 4


async def test_tenant_key_route_allowlist_and_the_shared_fallback_bucket(mock_clock: trio.testing.MockClock) -> None:
    extra = """
  scoped_rate_limits:
    - {name: tenant, scope: tenant, key: "header:x-tenant", requests_per_sec: 1, burst: 1}
    - {name: elsewhere, scope: client, requests_per_sec: 1, burst: 1, route_allowlist: [other]}
"""
    proxy, _, _, metrics, _ = build({"10.0.0.1": ok(), "10.0.0.2": ok()}, extra=extra)
    a, b = [(b"x-tenant", b"a")], [(b"x-tenant", b"b")]
    assert await statuses(proxy, 2, headers=a) == [200, 429]
    assert await statuses(proxy, 1, headers=b) == [200]  # another tenant, another bucket
    # no tenant header: Spooky falls back to the authority, one bucket for all of them
    assert await statuses(proxy, 2) == [200, 429]
    # "elsewhere" applies only to pool "other": never counted here
    assert sample(metrics, "spooky_rate_limit_decisions_total", rule="elsewhere", outcome="allowed") == 0


async def test_an_empty_key_skips_the_rule(mock_clock: trio.testing.MockClock) -> None:
    extra = """
  scoped_rate_limits:
    - {name: by-method, scope: client, key: "header:x-missing", requests_per_sec: 1, burst: 1}
"""
    proxy, _, _, metrics, _ = build({"10.0.0.1": ok(), "10.0.0.2": ok()}, extra=extra)
    # the header is missing and the fallback chain (authority, path, method) yields ""
    bare = request(path=b"", method=b"")
    bare.authority = b""
    generation = proxy._pick_generation()
    rule_step = step_named(proxy.chain_for(generation), "rate_limit")
    assert isinstance(rule_step, LocalRateLimit)
    ctx = RequestContext(bare, generation)
    ctx.route_pool = "app"
    for _ in range(3):
        assert rule_step.on_request(ctx) is None
    assert sample(metrics, "spooky_rate_limit_decisions_total", rule="by-method", outcome="skipped") == 3


async def test_rate_limit_headers_on_every_answer_for_the_rule_with_fewest_tokens(mock_clock: trio.testing.MockClock) -> None:
    extra = """
  rate_limit_headers: true
  scoped_rate_limits:
    - {name: big, scope: client, requests_per_sec: 10, burst: 100}
    - {name: "small \\"one\\"", scope: route, requests_per_sec: 2, burst: 4}
"""
    proxy, _, _, _, _ = build({"10.0.0.1": ok(), "10.0.0.2": own_fields()}, extra=extra)
    sink = RecordingSink()
    await proxy.handle(request(), sink)
    assert sink.status == 200
    assert sink.header(b"ratelimit") == b'"small \\"one\\"";r=3;t=0'
    assert sink.header(b"ratelimit-policy") == b'"small \\"one\\"";q=4;w=2'
    await proxy.handle(request(), sink := RecordingSink())  # backend b sends its own RateLimit: replaced
    assert [v for n, v in sink.headers if n == b"ratelimit"] == [b'"small \\"one\\"";r=2;t=0']
    for _ in range(2):
        await proxy.handle(request(), sink := RecordingSink())
    assert sink.header(b"ratelimit") == b'"small \\"one\\"";r=0;t=1'


async def test_without_rate_limit_headers_only_429s_carry_them(mock_clock: trio.testing.MockClock) -> None:
    proxy, _, _, _, _ = build({"10.0.0.1": ok(), "10.0.0.2": ok()}, extra=RULES)
    sink = RecordingSink()
    await proxy.handle(request(), sink)
    assert sink.status == 200 and sink.header(b"ratelimit") is None


async def test_brownout_answers_before_the_rate_limits(mock_clock: trio.testing.MockClock) -> None:
    extra = """
  brownout: {core_routes: []}
  scoped_rate_limits:
    - {name: per-ip, scope: client, requests_per_sec: 1, burst: 1}
"""
    proxy, _, store, metrics, _ = build({"10.0.0.1": ok(), "10.0.0.2": ok()}, extra=extra)
    assert await statuses(proxy, 1) == [200]
    store.resilience.brownout.active = True
    sink = RecordingSink()
    await proxy.handle(request(), sink)
    assert sink.status == 503 and b"(brownout)" in sink.body and sink.header(b"retry-after") == b"1"
    assert sample(metrics, "spooky_overload_shed_by_reason_total", reason="brownout") == 1
    assert sample(metrics, "spooky_rate_limit_decisions_total", rule="per-ip", outcome="limited") == 0
    store.resilience.brownout.active = False
    assert await statuses(proxy, 1) == [429]


async def test_a_reload_keeps_the_buckets_of_an_unchanged_rule_and_resets_a_changed_one(mock_clock: trio.testing.MockClock) -> None:
    rules = """
  scoped_rate_limits:
    - {name: per-ip, scope: client, requests_per_sec: 1, burst: 2}
"""
    proxy, generation, store, metrics, upstream = build({"10.0.0.1": ok(), "10.0.0.2": ok()}, extra=rules)
    assert await statuses(proxy, 3) == [200, 200, 429]
    kept = Generation.build(load_config_text(CONFIG.format(extra=rules)), number=2, state=store)
    proxy._pick_generation = lambda: kept  # type: ignore[method-assign]
    assert await statuses(proxy, 1) == [429]  # same rule, same bucket
    changed = Generation.build(load_config_text(CONFIG.format(extra=rules.replace("burst: 2", "burst: 3"))), number=3, state=store)
    proxy._pick_generation = lambda: changed  # type: ignore[method-assign]
    assert await statuses(proxy, 4) == [200, 200, 200, 429]  # a fresh bucket of 3


async def test_a_connect_tunnel_is_not_rate_limited(mock_clock: trio.testing.MockClock) -> None:
    proxy, generation, _, _, _ = build({}, extra=RULES)
    step = step_named(proxy.chain_for(generation), "rate_limit")
    assert isinstance(step, LocalRateLimit)
    ctx = RequestContext(request(), generation)
    assert ctx.route_pool is None  # the route step skips a CONNECT tunnel
    for _ in range(5):
        assert step.on_request(ctx) is None


def test_a_generation_without_rules_has_no_rate_limit_step() -> None:
    proxy, generation, *_ = build({})
    assert "rate_limit" not in proxy.chain_for(generation).names
    disabled = Generation.build(load_config_text(CONFIG.format(extra="  brownout: {enabled: false}")))
    chain = build_chain(disabled, upstream=None, state=StateStore(), metrics=None)  # type: ignore[arg-type]
    assert "brownout" not in chain.names


async def test_a_long_key_is_bucketed_by_its_digest(mock_clock: trio.testing.MockClock) -> None:
    extra = """
  scoped_rate_limits:
    - {name: tenant, scope: tenant, key: "header:x-tenant", requests_per_sec: 1, burst: 1}
"""
    proxy, generation, store, _, _ = build({"10.0.0.1": ok(), "10.0.0.2": ok()}, extra=extra)
    huge = [(b"x-tenant", b"t" * 10_000)]
    assert await statuses(proxy, 2, headers=huge) == [200, 429]
    [rule] = store.rate_limits.rules()
    [key] = rule.buckets
    assert key.startswith("~") and len(key) == 33
