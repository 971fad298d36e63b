"""The pools' dynamic backends without sockets: last known good, precedence (source, the
pool's newest set, the config seed, the admin API's overlay), versions, and a generation's
pools following them with each backend's state kept by identity."""

from __future__ import annotations

import attrs
import trio
import trio.testing

from spooky_trio.config import load_config_text
from spooky_trio.config.backend_entries import BackendEntry
from spooky_trio.core.generation import Generation
from spooky_trio.core.state import StateStore
from spooky_trio.discovery.membership import (
    ADMIN,
    CONFIG,
    Change,
    DiscoveryState,
    diff,
    source_key,
)
from spooky_trio.proxy.admission import OverloadGuard
from tests.balancing.helpers import request

TEXT = """
listen:
  tls: {{cert: /c.pem, key: /k.pem}}
upstream:
  app:
    route: {{path_prefix: /}}
{backends}    discovery: {{kind: file, path: {path}, backend_defaults: {{weight: 7, health_check: {{interval: 500}}}}}}
  plain:
    route: {{path_prefix: /plain}}
    backends: [{{id: p1, address: "http://10.0.9.1:80"}}]
"""
SEED = '    backends: [{id: seed, address: "http://10.0.0.9:80"}]\n'


def config(path: str = "/a.yaml", backends: str = ""):  # type: ignore[no-untyped-def]
    return load_config_text(TEXT.format(path=path, backends=backends))


def entry(backend_id: str, host: str = "10.0.0.1", weight: int | None = None) -> BackendEntry:
    return BackendEntry(backend_id, f"http://{host}:80", weight)


def ids(pairs: list) -> list[tuple[str, str]]:  # type: ignore[type-arg]
    return [(backend.id, origin) for backend, origin in pairs]


class TestDiscoveryState:
    def test_an_http3_pool_leaves_out_the_cleartext_backends_a_source_names(self, caplog) -> None:  # type: ignore[no-untyped-def]
        """HTTP/3 runs over TLS only: an ``http://`` entry in an ``upstream_protocol: h3``
        pool is logged and never reaches the pool (dialling it would be a QUIC attempt
        without TLS); the admin API's such entry too."""
        state = DiscoveryState()
        pool = config().upstream["app"]
        pool = attrs.evolve(pool, upstream_protocol="h3")
        key = source_key("app", pool.discovery)  # type: ignore[arg-type]
        state.answer(key, [entry("a"), BackendEntry("b", "https://10.0.0.2:443", None)], now=1.0)
        state.put("app", entry("m", "10.0.0.3"))
        with caplog.at_level("WARNING", logger="spooky.discovery"):
            assert ids(state.backends("app", pool)) == [("b", "file")]
        assert "backend a from file left out: upstream_protocol h3 needs https://" in caplog.text
        assert "backend m from admin left out" in caplog.text

    def test_a_source_set_replaces_the_seed_and_empty_or_failed_answers_keep_it(self) -> None:
        state = DiscoveryState()
        cfg = config(backends=SEED)
        pool = cfg.upstream["app"]
        key = source_key("app", pool.discovery)  # type: ignore[arg-type]
        assert ids(state.backends("app", pool)) == [("seed", CONFIG)] and state.version("app") == 0
        change = state.answer(key, [entry("a"), entry("b", "10.0.0.2", 3)], now=100.0)
        assert change is not None and [e.id for e in change.added] == ["a", "b"]
        backends = state.backends("app", pool)
        assert ids(backends) == [("a", "file"), ("b", "file")]
        assert [b.weight for b, _ in backends] == [7, 3]  # backend_defaults fill in what an entry omits
        assert backends[0][0].health_check is not None and backends[0][0].health_check.interval == 500
        version = state.version("app")
        assert version > 0
        # last known good: an empty answer is a failure, a failure keeps the set
        assert state.answer(key, [], now=101.0) is None
        assert state.failure(key, "timeout", "slow", now=102.0) is False  # the streak started with the empty answer
        status = state.status(key)
        assert (status.errors, status.failing, status.last_success, status.last_error) == (2, True, 100.0, "timeout: slow")
        assert ids(state.backends("app", pool)) == [("a", "file"), ("b", "file")] and state.version("app") == version
        # the same set again: no change, no new version, the streak ends
        assert not state.answer(key, [entry("a"), entry("b", "10.0.0.2", 3)], now=103.0)
        assert state.version("app") == version and not status.failing and status.updates == 1

    def test_a_moved_source_serves_the_pools_newest_set_until_it_answers(self) -> None:
        state = DiscoveryState()
        old, new = config("/a.yaml").upstream["app"], config("/b.yaml").upstream["app"]
        state.answer(source_key("app", old.discovery), [entry("a")], now=1.0)  # type: ignore[arg-type]
        assert ids(state.backends("app", new)) == [("a", "file")]
        state.answer(source_key("app", new.discovery), [entry("z")], now=2.0)  # type: ignore[arg-type]
        assert ids(state.backends("app", new)) == [("z", "file")]
        assert ids(state.backends("app", old)) == [("a", "file")]  # a canary of the old source keeps its own set

    def test_the_admin_overlay_adds_and_replaces_by_id_and_survives_source_answers(self) -> None:
        state = DiscoveryState()
        cfg = config()
        pool, plain = cfg.upstream["app"], cfg.upstream["plain"]
        key = source_key("app", pool.discovery)  # type: ignore[arg-type]
        state.answer(key, [entry("a"), entry("b", "10.0.0.2")], now=1.0)
        assert state.put("app", entry("b", "10.0.0.22", 50)) == Change(added=(entry("b", "10.0.0.22", 50),))
        assert state.put("app", entry("m", "10.0.0.3")).added
        assert not state.put("app", entry("m", "10.0.0.3"))  # the same again: nothing
        assert ids(state.backends("app", pool)) == [("a", "file"), ("b", ADMIN), ("m", ADMIN)]
        state.answer(key, [entry("a"), entry("b", "10.0.0.2"), entry("c", "10.0.0.4")], now=2.0)
        assert ids(state.backends("app", pool)) == [("a", "file"), ("c", "file"), ("b", ADMIN), ("m", ADMIN)]
        # a pool without discovery takes admin backends too (with no defaults but the schema's)
        state.put("plain", entry("p2", "10.0.9.2"))
        assert [(b.id, b.weight, origin) for b, origin in state.backends("plain", plain)] == [("p1", 100, CONFIG), ("p2", 100, ADMIN)]
        assert state.delete("app", "b") == Change(removed=(entry("b", "10.0.0.22", 50),))
        assert state.delete("app", "b") is None and state.delete("app", "a") is None
        assert ids(state.backends("app", pool))[:2] == [("a", "file"), ("b", "file")]

    def test_retain_forgets_what_no_live_generation_uses_and_versions_never_repeat(self) -> None:
        state = DiscoveryState()
        changes: list[int] = []
        state.on_change = lambda: changes.append(1)
        pool = config().upstream["app"]
        key = source_key("app", pool.discovery)  # type: ignore[arg-type]
        state.answer(key, [entry("a")], now=1.0)
        state.put("app", entry("m"))
        before = state.version("app")
        assert len(changes) == 2
        state.retain({"app"}, set())  # the source left the config: its set stays as the pool's fallback
        assert ids(state.backends("app", pool)) == [("a", "file"), ("m", ADMIN)]
        state.retain(set(), set())  # the pool left: all of it goes
        assert state.version("app") == 0 and state.backends("app", pool) == [] and list(state.gauges()) == []
        state.answer(key, [entry("a")], now=2.0)
        assert state.version("app") > before  # one counter for the store: a stamp is never reused

    def test_diff_and_its_log_lines(self) -> None:
        change = diff({"a": entry("a"), "b": entry("b")}, {"b": entry("b", weight=5), "c": entry("c")})
        assert list(change.lines()) == [
            "backend c added (http://10.0.0.1:80, default weight)",
            "backend a removed (http://10.0.0.1:80): it takes no new requests, its requests in flight finish",
            "backend b changed (http://10.0.0.1:80, default weight -> http://10.0.0.1:80, weight 5)",
        ]


class TestGenerationRefresh:
    def test_a_pool_follows_its_backends_and_each_keeps_its_state_by_identity(self) -> None:
        store = StateStore()
        cfg = config(backends=SEED)
        generation = Generation.build(cfg, state=store)
        pool = generation.pools["app"]
        assert [(b.id, b.origin) for b in pool.backends] == [("seed", CONFIG)]
        key = source_key("app", cfg.upstream["app"].discovery)  # type: ignore[arg-type]
        store.discovery.answer(key, [entry("a"), entry("b", "10.0.0.2")], now=1.0)
        stale = generation.stale_pools()
        assert [(p.name, [b.id for b in backends]) for p, backends in stale] == [("app", ["a", "b"])]
        assert [b.id for b in pool.backends] == ["seed"]  # nothing changed yet
        assert generation.refresh(prepared=stale[0][1]) == [pool]
        a, b = pool.backends
        assert (a.origin, a.weight, a.state.active is not None) == ("file", 7, True)  # backend_defaults' health check applied
        a.state.latency_ewma.update(0.25, 1.0)
        a.state.breaker.failures = 2
        a.state.slots.held = 1  # a request in flight holds a slot
        lease_held = b  # a request in flight on b keeps its object
        # weight change for a (same identity: same state), b removed, c added
        store.discovery.answer(key, [entry("a", weight=1), entry("c", "10.0.0.3")], now=2.0)
        generation.refresh()
        a2, c = pool.backends
        assert (a2.id, a2.weight, c.id) == ("a", 1, "c")
        assert a2.state is a.state and a2.state.latency == 0.25 and a2.state.breaker.failures == 2 and a2.state.slots.held == 1
        assert lease_held.state.label == "app/b" and lease_held not in pool.backends
        assert pool.balancer.weights == [1, 7] and generation.refresh() == []  # up to date
        # the same address under the same id but another port is another backend: fresh state
        store.discovery.answer(key, [BackendEntry("a", "http://10.0.0.1:81")], now=3.0)
        generation.refresh()
        assert pool.backends[0].state is not a.state and pool.backends[0].state.latency is None
        # the other pool never moved
        assert [b.id for b in generation.pools["plain"].backends] == ["p1"]

    async def test_an_empty_discovered_pool_answers_no_backend_and_fills_later(self) -> None:
        store = StateStore()
        cfg = config()
        generation = Generation.build(cfg, state=store)
        pool = generation.pools["app"]
        guard = OverloadGuard(store.resilience)
        assert pool.backends == [] and guard.pick(cfg, pool, request()) == (None, None)  # -> 503 no_healthy_backend
        store.discovery.answer(source_key("app", cfg.upstream["app"].discovery), [entry("a")], now=1.0)  # type: ignore[arg-type]
        generation.refresh()
        backend, _ = guard.pick(cfg, pool, request())
        assert backend is not None and backend.id == "a"

    def test_a_canary_does_not_retune_the_backends_it_shares(self) -> None:
        store = StateStore()
        stable = Generation.build(config(), state=store)
        canary_cfg = load_config_text(TEXT.format(path="/a.yaml", backends="").replace("interval: 500", "interval: 900")
                                      .replace("health_check: {interval: 900}", "health_check: {interval: 900, failure_threshold: 9}"))
        canary = Generation.build(canary_cfg, number=2, state=store)
        store.discovery.answer(source_key("app", config().upstream["app"].discovery), [entry("a")], now=1.0)  # type: ignore[arg-type]
        stable.refresh()
        canary.refresh(beside=stable)
        (a,), (a_canary,) = stable.pools["app"].backends, canary.pools["app"].backends
        assert a.state is a_canary.state and a.state.active is not None and a.state.active.failure_threshold == 3


async def test_state_store_forget_drops_only_the_named_keys() -> None:
    store = StateStore()
    first = store.backend(("app", "a"), "app/a")
    kept = store.backend(("app", "b"), "app/b")
    store.forget([("app", "a"), ("app", "zz")])
    assert store.get(("app", "a")) is None and store.get(("app", "b")) is kept
    assert store.backend(("app", "a"), "app/a") is not first
    await trio.lowlevel.checkpoint()
