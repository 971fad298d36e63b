"""The order of the whole chain (proxy/filters.py build_chain; extensions.md section 0 with
Spooky's own steps in Spooky's order, spooky-head.md section 2): every optional step present,
and a request that several steps would refuse gets the status of the first, as on Spooky."""

from __future__ import annotations

import trio.testing

from spooky_trio.config import load_config_text
from spooky_trio.core.generation import Generation
from spooky_trio.core.state import StateStore
from spooky_trio.observability.metrics import Metrics
from spooky_trio.observability.tracing import Tracing
from spooky_trio.proxy.chain import Proxy
from spooky_trio.proxy.filters import build_chain
from tests.proxy.fakes import CONFIG, RecordingSink, ScriptedUpstream, ok, request

#: pool ``app`` (api_key) plus pool ``ext`` (external auth), a rule for both, tracing on
EVERY_STEP = """
  scoped_rate_limits:
    - {name: per-ip, scope: client, requests_per_sec: 1, burst: 1}
observability:
  tracing: {enabled: true}
"""
EXT_POOL = """  ext:
    route: {path_prefix: /ext}
    auth: {external_auth: {kind: http, endpoint: "http://127.0.0.1:9/check"}}
    backends: [{id: e, address: "http://10.0.0.3:80"}]
"""


def build() -> tuple[Proxy, Generation, ScriptedUpstream]:
    text = CONFIG.format(extra=EVERY_STEP).replace("    backends:\n", "    auth: {api_key: {keys: [k1]}}\n    backends:\n", 1)
    text = text.replace("performance:\n", EXT_POOL + "performance:\n", 1)
    store = StateStore()
    generation = Generation.build(load_config_text(text), state=store)
    metrics = Metrics()
    metrics.attach_rate_limits(store.rate_limits)
    tracing = Tracing(metrics, environ={})
    upstream = ScriptedUpstream({"10.0.0.1": ok(), "10.0.0.2": ok()})
    proxy = Proxy(lambda: generation,
                  lambda g: build_chain(g, upstream=upstream, state=store, metrics=metrics, tracing=tracing),  # type: ignore[arg-type]
                  metrics)
    return proxy, generation, upstream


def test_every_step_in_extensions_section_0_order() -> None:
    proxy, generation, _ = build()
    assert proxy.chain_for(generation).names == [
        "trace", "normalize_path", "protocol_policy", "route",
        "auth", "brownout", "rate_limit", "external_auth",  # api_key/jwt -> brownout -> rate limits -> external auth
        "body_limit", "admission", "balance", "forward",
    ]


async def status(proxy: Proxy, *, key: bool, length: int | None = None) -> int:
    sink = RecordingSink()
    headers = [(b"x-api-key", b"k1")] if key else []
    await proxy.handle(request(b"/x", b"POST", headers=headers, content_length=length, body=None), sink)
    assert sink.status is not None
    return sink.status


async def test_the_first_refusing_step_decides(mock_clock: trio.testing.MockClock) -> None:
    proxy, _, upstream = build()
    # no key and a declared body over max_request_body_bytes (100): auth's 401, not 413, and
    # no token taken (auth runs before the rate limit)
    assert await status(proxy, key=False, length=1000) == 401
    # with the key: the body limit (413) only after auth and the rate limit passed; that
    # request took the rule's one token, so the next one is rate limited, body or not
    assert await status(proxy, key=True, length=1000) == 413
    assert await status(proxy, key=True, length=1000) == 429
    assert await status(proxy, key=False) == 401  # auth still decides first
    assert upstream.sent == []
