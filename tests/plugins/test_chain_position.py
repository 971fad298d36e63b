"""Where the plugin step sits in the chain (extensions.md section 0; proxy/filters.py
build_chain): right after external auth, so filters see only requests auth and rate limits
let through, and before body_limit, admission and balance. Without sockets (tests/proxy/fakes.py)."""

from __future__ import annotations

import trio.testing

from spooky_trio.config import load_config_text
from spooky_trio.core.generation import Generation
from spooky_trio.core.state import StateStore
from spooky_trio.observability.metrics import Metrics
from spooky_trio.proxy.chain import Proxy
from spooky_trio.proxy.filters import build_chain
from tests.plugins import samples
from tests.proxy.fakes import CONFIG, RecordingSink, ScriptedUpstream, ok, request

EXTRA = """
  scoped_rate_limits:
    - {name: per-ip, scope: client, requests_per_sec: 1, burst: 1}
plugins:
  - {name: stamp, object: 'tests.plugins.samples:Stamp'}
  - {name: deny, object: 'tests.plugins.samples:Answer', config: {status: 451}}
"""
EXT_POOL = """  ext:
    route: {path_prefix: /ext}
    auth: {external_auth: {kind: http, endpoint: "http://127.0.0.1:9/check"}}
    backends: [{id: e, address: "http://10.0.0.3:80"}]
"""


def build() -> tuple[Proxy, Generation, ScriptedUpstream]:
    text = CONFIG.format(extra=EXTRA).replace("    backends:\n", "    auth: {api_key: {keys: [k1]}}\n    filters: [stamp, deny]\n"
                                              "    backends:\n", 1)
    text = text.replace("performance:\n", EXT_POOL + "performance:\n", 1)
    store = StateStore()
    generation = Generation.build(load_config_text(text), state=store)
    metrics = Metrics()
    metrics.attach_rate_limits(store.rate_limits)
    upstream = ScriptedUpstream({"10.0.0.1": ok(), "10.0.0.2": ok()})
    proxy = Proxy(lambda: generation, lambda g: build_chain(g, upstream=upstream, state=store, metrics=metrics),  # type: ignore[arg-type]
                  metrics)
    return proxy, generation, upstream


def test_the_plugin_step_follows_external_auth() -> None:
    proxy, generation, _ = build()
    names = proxy.chain_for(generation).names
    assert names[names.index("external_auth") + 1] == "plugins"
    assert names.index("plugins") < names.index("body_limit") < names.index("admission") < names.index("balance")


async def status(proxy: Proxy, path: bytes, *, key: bool, length: int | None = None) -> int:
    sink = RecordingSink()
    headers = [(b"x-api-key", b"k1")] if key else []
    await proxy.handle(request(path, b"POST", headers=headers, content_length=length, body=None), sink)
    assert sink.status is not None
    return sink.status


async def test_filters_see_only_what_auth_and_rate_limits_let_through(mock_clock: trio.testing.MockClock) -> None:
    samples.JOURNAL.clear()
    proxy, _, upstream = build()
    assert await status(proxy, b"/x", key=False) == 401  # auth refused it: no filter ran
    assert samples.JOURNAL == []
    # a filter's answer pre-empts the body limit (413) like every policy step before it
    assert await status(proxy, b"/answer", key=True, length=1000) == 451
    assert samples.JOURNAL == ["request:stamp", "response:stamp"]
    assert await status(proxy, b"/x", key=True) == 429  # the rule's one token was taken: rate limited, no filter
    assert samples.JOURNAL == ["request:stamp", "response:stamp"]
    assert upstream.sent == []
