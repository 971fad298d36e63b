"""The traffic-policy steps without sockets (proxy/route_answers.py, faults.py, rewrites.py,
split.py, mirror.py): order in the chain, answers, rewrites, the split's statistics and
stickiness, faults and what they never touch, mirror copies and their bounds."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from spooky_trio.config import load_config_text
from spooky_trio.core.generation import Generation
from spooky_trio.core.state import StateStore
from spooky_trio.http.messages import UpstreamRequest
from spooky_trio.observability.metrics import Metrics
from spooky_trio.proxy.chain import Proxy
from spooky_trio.proxy.filters import build_chain
from spooky_trio.proxy.mirror import BodyTee, shadow_authority
from spooky_trio.proxy.split import key_bucket
from tests.proxy.fakes import RecordingSink, ScriptedResponse, ScriptedUpstream, ok, request

HEAD = """
listen:
  tls: {cert: /c.pem, key: /k.pem}
upstream:
"""


def pool(name: str, host: str, route: str | None = "{path_prefix: /}", policy: str = "") -> str:
    text = f"  {name}:\n"
    if route is not None:
        text += f"    route: {route}\n"
    text += f'    backends: [{{id: {name}, address: "http://{host}:80"}}]\n'
    if policy:
        text += f"    traffic_policy: {policy}\n"
    return text


class Setup:
    """A Proxy over one generation of ``text`` whose backends answer from ``scripts`` (every
    host answers 200 "hello" unless scripted), with the shadow nursery running."""

    def __init__(self, text: str, scripts: dict[str, Callable[[UpstreamRequest], ScriptedResponse]] | None = None) -> None:
        self.store = StateStore()
        self.config = load_config_text(HEAD + text)
        self.generation = Generation.build(self.config, state=self.store)
        self.metrics = Metrics()
        hosts = {b.target.host for b in self.generation.backends()}
        self.upstream = ScriptedUpstream({host: (scripts or {}).get(host, ok()) for host in hosts})
        self.proxy = Proxy(lambda: self.generation,
                           lambda g: build_chain(g, upstream=self.upstream, state=self.store, metrics=self.metrics),  # type: ignore[arg-type]
                           self.metrics)

    @property
    def names(self) -> list[str]:
        return self.proxy.chain_for(self.generation).names

    async def get(self, path: bytes = b"/", method: bytes = b"GET", **kwargs: Any) -> RecordingSink:
        sink = RecordingSink()
        await self.proxy.handle(request(path, method, **kwargs), sink)
        return sink

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def hosts(self) -> list[str]:
        return [host for host, _ in self.upstream.sent]


def test_each_step_where_section_0_puts_it() -> None:
    text = (pool("answers", "10.0.0.9", "{host: down.example.com}", "{direct_response: {status: 503}}")
            + pool("api", "10.0.0.1", policy="{split: [{pool: v2, percent: 5}], mirror: {pool: shadow}, fault: {header_control: true}, "
                                             "request_headers: {add: {via: edge}}}")
            + pool("v2", "10.0.0.2", None) + pool("shadow", "10.0.0.3", None))
    assert Setup(text).names == ["normalize_path", "protocol_policy", "route", "route_answer", "brownout", "fault", "rewrite",
                                 "split", "body_limit", "admission", "balance", "mirror", "forward"]
    # a config without traffic policy has none of the steps
    assert Setup(pool("api", "10.0.0.1")).names == ["normalize_path", "protocol_policy", "route", "brownout", "body_limit",
                                                    "admission", "balance", "forward"]


async def test_direct_response_and_redirects() -> None:
    text = (pool("down", "10.0.0.9", "{path_prefix: /down}",
                 "{direct_response: {status: 503, body: \"maintenance\\n\", headers: {Retry-After: '120'}}, "
                 "response_headers: {set: {x-served-by: edge}}}")
            + pool("empty", "10.0.0.9", "{path_prefix: /empty}", "{direct_response: {status: 204}}")
            + pool("moved", "10.0.0.9", "{path_prefix: /old}", "{redirect: {status: 308, location: 'https://new.example.com{uri}'}}")
            + pool("parts", "10.0.0.9", "{path_prefix: /parts}",
                   "{redirect: {location: 'https://{host}/x{path}?q={query}'}}")
            + pool("bare", "10.0.0.9", "{path_prefix: /bare}", "{redirect: {location: '{path}'}}"))
    setup = Setup(text)
    sink = await setup.get(b"/down/x")
    assert (sink.status, sink.body) == (503, b"maintenance\n")
    assert sink.headers == [(b"content-type", b"text/plain; charset=utf-8"), (b"retry-after", b"120"), (b"x-served-by", b"edge"),
                            (b"content-length", b"12")]
    head = await setup.get(b"/down", b"HEAD")
    assert (head.status, head.body, head.header(b"content-length")) == (503, b"", b"12")
    empty = await setup.get(b"/empty")
    assert (empty.status, empty.body, empty.header(b"content-type")) == (204, b"", None)
    moved = await setup.get(b"/old/a?b=1")
    assert (moved.status, moved.header(b"location"), moved.body) == (308, b"https://new.example.com/old/a?b=1", b"")
    assert (await setup.get(b"/old/a")).header(b"location") == b"https://new.example.com/old/a"
    parts = await setup.get(b"/parts/p?k=v")
    assert (parts.status, parts.header(b"location")) == (302, b"https://example.com/x/parts/p?q=k=v")
    assert (await setup.get(b"/parts/p")).header(b"location") == b"https://example.com/x/parts/p?q="
    # a path put first never makes a scheme-relative location, a backslash never a host
    assert (await setup.get(b"/bare\\evil.example")).header(b"location") == b"/bare%5Cevil.example"
    assert setup.upstream.sent == []  # nothing reached a backend
    assert setup.sample("spooky_requests_by_reason_total", reason="direct_response", status_class="5xx") == 2
    assert setup.sample("spooky_requests_by_reason_total", reason="redirect", status_class="3xx") == 5
    assert setup.sample("spooky_policy_denied_total") == 0  # not refusals


def test_a_location_never_starts_with_two_slashes() -> None:
    from spooky_trio.config.schema_traffic import RedirectConfig
    from spooky_trio.proxy.route_answers import Redirect

    redirect = Redirect(RedirectConfig(location="{path}"), None)
    assert redirect.location(b"//evil.example/x", "a") == b"/evil.example/x"
    assert redirect.location(b"/ok", "a") == b"/ok"


async def test_request_and_response_header_rewrites() -> None:
    text = pool("api", "10.0.0.1", "{path_prefix: /v1}",
                "{request_headers: {set: {x-env: prod}, add: {via: edge}, remove: [x-debug]}, "
                "response_headers: {set: {strict-transport-security: max-age=60}, add: {x-edge: '1'}, remove: [server]}, "
                "rewrite: {path_prefix: /internal/v1}}")
    backend = ok()

    def answer(req: UpstreamRequest) -> ScriptedResponse:
        response = backend(req)
        response.headers += [(b"server", b"hypercorn"), (b"strict-transport-security", b"max-age=0")]
        return response

    setup = Setup(text, {"10.0.0.1": answer})
    sink = await setup.get(b"/v1/users?id=7", headers=[(b"x-env", b"dev"), (b"x-env", b"qa"), (b"via", b"client"),
                                                        (b"x-debug", b"1"), (b"accept", b"*/*")])
    assert sink.status == 200
    sent = setup.upstream.sent[0][1]
    assert sent.target == b"/internal/v1/users?id=7"
    names = [(n, v) for n, v in sent.headers if n in (b"x-env", b"via", b"x-debug", b"accept")]
    assert names == [(b"via", b"client"), (b"accept", b"*/*"), (b"x-env", b"prod"), (b"via", b"edge")]
    assert sink.header(b"server") is None
    assert [v for n, v in sink.headers if n == b"strict-transport-security"] == [b"max-age=60"]
    assert sink.header(b"x-edge") == b"1"


async def test_response_headers_also_on_the_proxys_later_answers() -> None:
    text = pool("api", "10.0.0.1", policy="{response_headers: {set: {x-edge: '1'}}}") + (
        "performance:\n  per_backend_inflight_limit: 1\n")
    setup = Setup(text)
    setup.generation.pools["api"].backends[0].state.slots.held = 1  # the only backend is busy: 503
    sink = await setup.get(b"/")
    assert (sink.status, sink.header(b"x-edge")) == (503, b"1")


def binomial_bound(n: int, p: float, sigmas: float = 5.0) -> tuple[float, float]:
    """Mean -/+ ``sigmas`` standard deviations of Binomial(n, p): outside it by chance with
    probability < 6e-7 at 5 sigmas (normal approximation)."""
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    return mean - sigmas * sd, mean + sigmas * sd


async def test_split_5_percent_of_10000_within_5_sigma() -> None:
    setup = Setup(pool("api", "10.0.0.1", policy="{split: [{pool: v2, percent: 5}]}") + pool("v2", "10.0.0.2", None))
    for _ in range(10000):
        await setup.get(b"/")
    moved = setup.hosts().count("10.0.0.2")
    low, high = binomial_bound(10000, 0.05)  # 500 +/- 109
    assert low < moved < high, moved
    assert setup.sample("spooky_traffic_split_total", upstream="api", target="v2") == moved
    assert setup.sample("spooky_traffic_split_total", upstream="api", target="api") == 10000 - moved
    # the same config replays the same sequence (a seeded per-generation RNG)
    again = Setup(pool("api", "10.0.0.1", policy="{split: [{pool: v2, percent: 5}]}") + pool("v2", "10.0.0.2", None))
    for _ in range(1000):
        await again.get(b"/")
    assert again.hosts() == setup.hosts()[:1000]


async def test_split_serving_pool_limits_but_route_pool_policy(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="spooky.access")
    text = (pool("api", "10.0.0.1", policy="{split: [{pool: v2, percent: 100}], request_headers: {set: {x-policy: api}}}")
            + pool("v2", "10.0.0.2", None, "{request_headers: {set: {x-policy: v2}}}"))
    setup = Setup(text)
    await setup.get(b"/")
    host, sent = setup.upstream.sent[0]
    assert host == "10.0.0.2" and (b"x-policy", b"api") in sent.headers  # v2's own policy is not applied
    line = [r.access for r in caplog.records if r.name == "spooky.access"][0]  # type: ignore[attr-defined]
    assert (line["pool"], line["backend"], line["split"]) == ("v2", "v2", "api->v2")


async def test_sticky_split_by_cookie_never_flips() -> None:
    text = pool("api", "10.0.0.1", policy="{split: [{pool: v2, percent: 30}], split_key: 'cookie:session'}") + pool("v2", "10.0.0.2", None)
    setup = Setup(text)
    sides: dict[int, set[str]] = {}
    for round_ in range(3):
        for user in range(200):
            await setup.get(b"/", headers=[(b"cookie", f"theme=dark; session=u{user}".encode())])
            sides.setdefault(user, set()).add(setup.hosts()[-1])
    assert all(len(side) == 1 for side in sides.values())  # never flips
    moved = sum(1 for side in sides.values() if side == {"10.0.0.2"})
    low, high = binomial_bound(200, 0.3)
    assert low < moved < high
    # the bucket is the value's hash alone: a user on the split side at 30 % stays there at 50 %
    assert all(key_bucket(f"u{user}") < 3000 for user, side in sides.items() if side == {"10.0.0.2"})
    # without the key: a random draw, not Spooky's fallback (every keyless request one way)
    for _ in range(400):
        await setup.get(b"/")
    keyless = setup.hosts()[-400:].count("10.0.0.2")
    assert 0 < keyless < 400


async def test_faults_rates_and_reasons(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0
    text = pool("api", "10.0.0.1", policy="{fault: {delay: {fixed_ms: 200, percent: 20}, abort: {status: 503, percent: 10}}}")
    setup = Setup(text)
    aborted = delayed = 0
    for _ in range(2000):
        start = trio.current_time()
        sink = await setup.get(b"/")
        waited = trio.current_time() - start
        delayed += waited > 0.199  # (float sums of the mock clock)
        if sink.status == 503:
            aborted += 1
            assert sink.body == b"503 Service Unavailable: fault injected (fault_abort)\n"
        else:
            assert sink.status == 200
    low, high = binomial_bound(2000, 0.2)
    assert low < delayed < high
    low, high = binomial_bound(2000, 0.1)
    assert low < aborted < high
    assert setup.sample("spooky_fault_injections_total", upstream="api", kind="abort") == aborted
    assert setup.sample("spooky_fault_injections_total", upstream="api", kind="delay") == delayed
    assert setup.sample("spooky_requests_by_reason_total", reason="fault_abort", status_class="5xx") == aborted
    # aborts never reach a backend, so nothing about the backend changed
    assert len(setup.upstream.sent) == 2000 - aborted
    state = setup.generation.pools["api"].backends[0].state
    assert not state.failures and state.breaker.state == "closed" and not state.passive.ejected(trio.current_time())
    assert setup.sample("spooky_upstream_requests_total", upstream="api", status_class="5xx", outcome="failure") == 0


async def test_fault_header_control_and_max_active(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0
    setup = Setup(pool("api", "10.0.0.1", policy="{fault: {header_control: true, max_active: 2}}")
                  + pool("off", "10.0.0.2", "{path_prefix: /off}", "{fault: {delay: {fixed_ms: 1, percent: 0}}}"))
    sink = await setup.get(b"/", headers=[(b"x-spooky-fault-abort", b"418")])
    assert sink.status == 418
    start = trio.current_time()
    sink = await setup.get(b"/", headers=[(b"x-spooky-fault-delay-ms", b"250"), (b"x-keep", b"1")])
    assert sink.status == 200 and trio.current_time() - start == pytest.approx(0.25)
    sent = setup.upstream.sent[-1][1]
    assert (b"x-keep", b"1") in sent.headers and not [n for n, _ in sent.headers if n.startswith(b"x-spooky-fault")]
    assert (await setup.get(b"/", headers=[(b"x-spooky-fault-abort", b"99")])).status == 200  # not a status: ignored
    # header control is off by default: the fields do nothing and pass on
    sink = await setup.get(b"/off", headers=[(b"x-spooky-fault-abort", b"503")])
    assert sink.status == 200 and (b"x-spooky-fault-abort", b"503") in setup.upstream.sent[-1][1].headers
    # at most max_active requests in a fault: the third one goes through untouched
    statuses: list[int | None] = []

    async def slow() -> None:
        statuses.append((await setup.get(b"/", headers=[(b"x-spooky-fault-delay-ms", b"1000"), (b"x-spooky-fault-abort", b"503")])).status)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(slow)
    assert sorted(statuses, key=str) == [200, 503, 503]
    assert setup.sample("spooky_fault_max_active_skips_total", upstream="api") == 1


def test_shadow_authority() -> None:
    assert shadow_authority(b"api.example.com") == b"api.example.com-shadow"
    assert shadow_authority(b"api.example.com:8443") == b"api.example.com-shadow:8443"
    assert shadow_authority(b"[::1]:8443") == b"[::1]-shadow:8443"
    assert shadow_authority(b"[::1]") == b"[::1]-shadow"


class Body:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)

    async def receive(self) -> bytes:
        await trio.lowlevel.checkpoint()
        return self.chunks.pop(0) if self.chunks else b""


async def test_body_tee_states() -> None:
    tee = BodyTee(Body([b"ab", b"cd"]), 10, None)
    assert [await tee.receive() for _ in range(3)] == [b"ab", b"cd", b""]
    assert (tee.state, tee.chunks, tee.done.is_set()) == ("complete", [b"ab", b"cd"], True)
    declared = BodyTee(Body([b"ab", b"cd"]), 10, 4)
    await declared.receive()
    await declared.receive()
    assert declared.state == "complete"  # the declared length is reached: no need to wait for the end
    big = BodyTee(Body([b"abcdef", b"ghijkl"]), 10, None)
    assert await big.receive() == b"abcdef" and await big.receive() == b"ghijkl"  # the primary gets every byte
    assert (big.state, big.chunks) == ("too_large", [])
    cut = BodyTee(Body([b"ab", b"cd"]), 10, None)
    await cut.receive()
    cut.close()
    assert (cut.state, cut.done.is_set()) == ("incomplete", True)


MIRRORED = pool("api", "10.0.0.1", policy="{mirror: {pool: shadow, max_inflight: 2, max_body_bytes: 8, timeout_ms: 500}}") + pool(
    "shadow", "10.0.0.3", None)


async def test_mirror_copies_the_request_with_a_shadow_host() -> None:
    setup = Setup(MIRRORED)
    async with trio.open_nursery() as nursery:
        await nursery.start(setup.store.shadows.run)
        sink = await setup.get(b"/x?y=1", b"POST", body=Body([b"1234", b"5678"]), content_length=8,
                               headers=[(b"x-a", b"1"), (b"content-length", b"8")])
        assert sink.status == 200
        await setup.store.shadows.drain(5)
        nursery.cancel_scope.cancel()
    (primary_host, primary), (shadow_host, copy) = setup.upstream.sent
    assert (primary_host, shadow_host) == ("10.0.0.1", "10.0.0.3")
    assert (copy.method, copy.target, copy.content_length) == (primary.method, primary.target, 8) == (b"POST", b"/x?y=1", 8)
    assert copy.authority == b"example.com-shadow" and primary.authority == b"example.com"
    assert copy.headers == primary.headers
    assert setup.sample("spooky_mirror_copies_total", upstream="api", shadow="shadow", result="completed") == 1


async def test_mirror_drops_are_counted(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0
    stalled = trio.Event()

    def hang(req: UpstreamRequest) -> ScriptedResponse:
        class Slow(ScriptedResponse):
            async def receive(self) -> bytes:
                await stalled.wait()
                return b""

        return Slow(200, [], [])

    setup = Setup(MIRRORED, {"10.0.0.3": hang})
    async with trio.open_nursery() as nursery:
        await nursery.start(setup.store.shadows.run)
        for _ in range(3):  # two copies hang in the shadow, the third has no place
            assert (await setup.get(b"/")).status == 200
        # a body declared over max_body_bytes is never copied; a streamed one finds no place
        assert (await setup.get(b"/", b"POST", body=Body([b"x" * 9]), content_length=9)).status == 200
        assert (await setup.get(b"/", b"POST", body=Body([b"x" * 5, b"y" * 5]))).status == 200
        await trio.sleep(1)  # the two hanging copies time out (timeout_ms 500)
        # now the copy starts, and is dropped when the streamed body passes the bound
        sink = await setup.get(b"/", b"POST", body=Body([b"x" * 5, b"y" * 5]))
        assert sink.status == 200 and setup.upstream.sent[-1][1].content_length == 10  # the primary got all of it
        await setup.store.shadows.drain(5)
        nursery.cancel_scope.cancel()
    counts = {result: setup.sample("spooky_mirror_copies_total", upstream="api", shadow="shadow", result=result)
              for result in ("completed", "timeout", "dropped_max_inflight", "dropped_body_too_large")}
    assert counts == {"completed": 0, "timeout": 2, "dropped_max_inflight": 2, "dropped_body_too_large": 2}
    assert setup.store.shadows.running == {}
