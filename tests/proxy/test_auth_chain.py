"""The auth steps in the chain without sockets (tests/proxy/fakes.py): where they sit, that a
generation without auth has none, sync vs async, and that a refused request reaches no
backend and takes no slot."""

from __future__ import annotations

import inspect

from spooky_trio.config import load_config_text
from spooky_trio.core.generation import Generation
from spooky_trio.core.state import StateStore
from spooky_trio.observability.metrics import Metrics
from spooky_trio.proxy.chain import Proxy
from spooky_trio.proxy.filters import build_chain
from tests.proxy.fakes import CONFIG, RecordingSink, ScriptedUpstream, build, count, ok, request
from tests.support.tokens import claims, hs256

API_KEY = """
    auth: {api_key: {keys: [k1]}, jwt: {secret: s3cret}, forward_claims: {sub: x-user-id}}
"""


def names(proxy: Proxy, generation: Generation) -> list[str]:
    return proxy.chain_for(generation).names


def build_with(auth: str) -> tuple[Proxy, Generation, StateStore, Metrics, ScriptedUpstream]:
    """:func:`tests.proxy.fakes.build` with ``auth`` (YAML lines at pool level) in pool ``app``."""
    text = CONFIG.format(extra="").replace("    backends:\n", auth + "    backends:\n", 1)
    store = StateStore()
    generation = Generation.build(load_config_text(text), state=store)
    metrics = Metrics()
    upstream = ScriptedUpstream({"10.0.0.1": ok(), "10.0.0.2": ok()})
    proxy = Proxy(lambda: generation, lambda g: build_chain(g, upstream=upstream, state=store, metrics=metrics), metrics)  # type: ignore[arg-type]
    return proxy, generation, store, metrics, upstream


def test_no_auth_block_no_auth_step() -> None:
    proxy, generation, *_ = build({"10.0.0.1": ok(), "10.0.0.2": ok()})
    assert names(proxy, generation) == ["normalize_path", "protocol_policy", "route", "brownout", "body_limit", "admission", "balance",
                                        "forward"]


def test_local_auth_sits_right_after_the_route_and_never_waits() -> None:
    # Spooky's order: route -> api_key -> jwt -> brownout -> ...; body_limit after the auth
    # steps (proxy/filters.py build_chain), so a refused request with a big body gets 401
    proxy, generation, *_ = build_with(API_KEY)
    chain = proxy.chain_for(generation)
    assert chain.names == ["normalize_path", "protocol_policy", "route", "auth", "brownout", "body_limit", "admission", "balance",
                           "forward"]
    step = chain.filters[3]
    assert step.name == "auth"
    assert not inspect.iscoroutinefunction(step.on_request)  # a SyncFilter: no coroutine per request


def test_jwks_auth_is_async_and_external_auth_comes_before_admission() -> None:
    proxy, generation, *_ = build_with("    auth: {jwt: {jwks_uri: 'https://127.0.0.1:9/jwks', jwks_timeout_ms: 1}}\n")
    chain = proxy.chain_for(generation)
    assert chain.names[3] == "auth" and inspect.iscoroutinefunction(chain.filters[3].on_request)
    proxy, generation, *_ = build_with("    auth: {external_auth: {kind: http, endpoint: 'http://127.0.0.1:9/check'}}\n")
    assert proxy.chain_for(generation).names == ["normalize_path", "protocol_policy", "route", "brownout", "external_auth", "body_limit",
                                                 "admission", "balance", "forward"]
    proxy, generation, *_ = build_with("    auth: {external_auth: {kind: http, endpoint: 'http://127.0.0.1:9/', response_header_allowlist: [x-u]}}\n")
    assert proxy.chain_for(generation).names[3:6] == ["auth", "brownout", "external_auth"]  # the strip step runs first


async def test_refused_requests_reach_no_backend() -> None:
    proxy, generation, store, metrics, upstream = build_with(API_KEY)
    sink = RecordingSink()
    await proxy.handle(request(b"/x", headers=[(b"x-api-key", b"k1")]), sink)
    assert (sink.status, sink.header(b"www-authenticate"), sink.body) == (401, b"Bearer", b"unauthorized\n")
    sink = RecordingSink()
    await proxy.handle(request(b"/x"), sink)
    assert (sink.status, sink.header(b"www-authenticate")) == (401, b"ApiKey")
    assert upstream.sent == []
    assert count(metrics, "auth_missing", "4xx") == 2
    token = hs256("s3cret", claims(sub="alice"))
    sink = RecordingSink()
    await proxy.handle(request(b"/x", headers=[(b"x-api-key", b"k1"), (b"authorization", f"Bearer {token}".encode()),
                                              (b"x-user-id", b"mallory")]), sink)
    assert sink.status == 200
    (_host, sent), = upstream.sent
    assert [v for n, v in sent.headers if n == b"x-user-id"] == [b"alice"]
    assert metrics.auth_decisions[("app", "jwt", "allowed")] == 1 and metrics.auth_decisions[("app", "api_key", "allowed")] == 2
