"""The filter chain without sockets: a recording sink and scripted backends (tests/proxy/fakes.py).

Covers the Filter protocol (order, answers, cleanups, response hooks), the built-in chain of
a generation (policy, route, body limit, admission, balance, forward with retries) and the
answer door's record step (one access-log line and one count per request, with its reason).
"""

from __future__ import annotations

import logging

import pytest
import trio

from spooky_trio.config import load_config_text
from spooky_trio.core.generation import Generation
from spooky_trio.http.errors import ErrorResponse, ProxyError
from spooky_trio.proxy.answers import Answer
from spooky_trio.proxy.chain import Chain, Proxy
from spooky_trio.proxy.context import RequestContext, ResponseHead
from spooky_trio.upstream import UpstreamConnectError
from spooky_trio.upstream.errors import UnforwardableRequest
from tests.proxy.fakes import (
    CONFIG,
    RecordingSink,
    ScriptedResponse,
    build,
    count,
    ok,
    request,
)


class Step:
    """A test filter: logs its hooks in ``journal``; may answer, raise or add a header."""

    def __init__(self, name: str, journal: list[str], *, answer: Answer | None = None, raises: Exception | None = None,
                 response_header: bytes | None = None) -> None:
        self.name = name
        self.journal = journal
        self.answer = answer
        self.raises = raises
        self.response_header = response_header

    async def on_request(self, ctx: RequestContext) -> Answer | None:
        self.journal.append(f"request:{self.name}")
        ctx.on_finish(lambda: self.journal.append(f"cleanup:{self.name}"))
        if self.response_header is not None:
            ctx.add_response_filter(self)
        if self.raises is not None:
            raise self.raises
        return self.answer

    async def on_response(self, ctx: RequestContext, head: ResponseHead) -> None:
        self.journal.append(f"response:{self.name}")
        assert self.response_header is not None
        head.headers.append((b"x-seen-by", self.response_header))


class Terminal:
    name = "terminal"

    def __init__(self, journal: list[str]) -> None:
        self.journal = journal

    async def serve(self, ctx: RequestContext) -> None:
        self.journal.append("terminal")
        assert ctx.sink is not None
        await ctx.sink.send_headers(200, [(b"content-length", b"2")])
        await ctx.sink.send_data(b"ok", end_stream=True)
        ctx.outcome = "ok"


def proxy_of(filters: list[object], journal: list[str]) -> tuple[Proxy, Generation]:
    generation = Generation.build(load_config_text(CONFIG.format(extra="")))
    proxy = Proxy(lambda: generation, lambda g: Chain(g, filters, Terminal(journal)))  # type: ignore[arg-type]
    return proxy, generation


def access(caplog: pytest.LogCaptureFixture) -> list[dict]:
    return [r.access for r in caplog.records if r.name == "spooky.access"]  # type: ignore[attr-defined]


async def test_filters_run_in_order_hooks_in_reverse_and_cleanups_last(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="spooky.access")
    journal: list[str] = []
    proxy, generation = proxy_of([Step("one", journal, response_header=b"one"), Step("two", journal, response_header=b"two")], journal)
    sink = RecordingSink()
    await proxy.handle(request(), sink)
    assert journal == ["request:one", "request:two", "terminal", "response:two", "response:one", "cleanup:two", "cleanup:one"]
    assert sink.status == 200 and sink.body == b"ok" and [v for n, v in sink.headers if n == b"x-seen-by"] == [b"two", b"one"]
    [line] = access(caplog)
    assert line["reason"] == "ok" and line["outcome"] == "ok" and line["status"] == 200 and line["bytes_out"] == 2
    assert proxy.chain_for(generation).names == ["one", "two", "terminal"]


async def test_an_answer_stops_the_chain_and_earlier_response_hooks_still_see_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="spooky.access")
    journal: list[str] = []
    teapot = Answer(418, "teapot", b"short and stout\n", ((b"content-type", b"text/plain"),))
    proxy, _ = proxy_of([Step("hooked", journal, response_header=b"h"), Step("answers", journal, answer=teapot), Step("never", journal)], journal)
    sink = RecordingSink()
    await proxy.handle(request(), sink)
    assert journal == ["request:hooked", "request:answers", "response:hooked", "cleanup:answers", "cleanup:hooked"]
    assert sink.status == 418 and sink.body == b"short and stout\n" and sink.header(b"x-seen-by") == b"h"
    assert sink.header(b"content-length") == b"16" and sink.ended
    [line] = access(caplog)
    assert line["reason"] == "teapot" and line["outcome"] == "error" and line["status"] == 418


async def test_a_raised_proxy_error_is_answered_with_its_headers_and_a_bug_propagates(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="spooky.access")
    journal: list[str] = []
    refusal = ProxyError(429, "slow_down", "too fast", [(b"retry-after", b"3")])
    proxy, _ = proxy_of([Step("refuses", journal, raises=refusal)], journal)
    sink = RecordingSink()
    await proxy.handle(request(), sink)
    assert sink.status == 429 and sink.header(b"retry-after") == b"3" and b"(slow_down)" in sink.body
    assert journal == ["request:refuses", "cleanup:refuses"]
    buggy, _ = proxy_of([Step("buggy", journal, raises=KeyError("oops"))], journal)
    with pytest.raises(KeyError):  # the ingress's task boundary logs and counts it
        await buggy.handle(request(), RecordingSink())
    lines = access(caplog)
    assert [(line["status"], line["reason"]) for line in lines] == [(429, "slow_down"), (None, "internal_error")]
    assert journal[-1] == "cleanup:buggy"


async def test_the_built_in_chain_forwards_and_records(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="spooky.access")
    proxy, generation, store, metrics, upstream = build({"10.0.0.1": ok(b"from a"), "10.0.0.2": ok(b"from b")})
    assert proxy.chain_for(generation).names == ["normalize_path", "protocol_policy", "route", "brownout", "body_limit", "admission",
                                                     "balance", "forward"]
    sinks = [RecordingSink() for _ in range(2)]
    for sink in sinks:
        await proxy.handle(request(b"/x?y=1", headers=[(b"x-forwarded-proto", b"forged")]), sink)
    assert sorted(sink.body for sink in sinks) == [b"from a", b"from b"]  # round robin
    host, sent = upstream.sent[0]
    assert sent.target == b"/x?y=1" and sent.authority == b"example.com"
    assert [v for n, v in sent.headers if n == b"x-forwarded-proto"] == [b"https"]  # the client's copy is replaced
    assert count(metrics, "ok", "2xx") == 2
    lines = access(caplog)
    assert {line["backend"] for line in lines} == {"a", "b"} and {line["pool"] for line in lines} == {"app"}
    resilience = store.resilience
    assert resilience.global_slots.held == 0 and resilience.pool_slots["app"].held == 0  # admission cleaned up
    assert all(b.state.slots.held == 0 and b.state.in_flight == 0 for b in generation.backends())  # leases finished


@pytest.mark.parametrize(
    ("req", "status", "reason"),
    [
        (request(method=b"DELETE"), 405, "method_not_allowed"),
        (request(b"/admin/users"), 403, "path_denied"),
        (request(b"/upload", b"POST", content_length=101), 413, "request_body_too_large"),
    ],
)
async def test_refusals_of_the_built_in_steps(req: object, status: int, reason: str) -> None:
    proxy, generation, store, metrics, upstream = build({"10.0.0.1": ok(), "10.0.0.2": ok()})
    sink = RecordingSink()
    await proxy.handle(req, sink)  # type: ignore[arg-type]
    assert sink.status == status and f"({reason})".encode() in sink.body and sink.header(b"content-type") == b"text/plain; charset=utf-8"
    assert count(metrics, reason, "4xx") == 1 and upstream.sent == []
    assert store.resilience.global_slots.held == 0


async def test_no_route_is_404_and_an_empty_authority_is_400() -> None:
    proxy, generation, _, metrics, _ = build({}, extra="")
    other = Generation.build(load_config_text(CONFIG.format(extra="").replace("route: {path_prefix: /}", "route: {path_prefix: /api}")))
    proxy._pick_generation = lambda: other  # type: ignore[method-assign]
    sink = RecordingSink()
    await proxy.handle(request(b"/web"), sink)
    assert sink.status == 404 and count(metrics, "no_route", "4xx") == 1
    nameless = request(b"/api")
    nameless.authority = b""
    await proxy.handle(nameless, sink := RecordingSink())
    assert sink.status == 400 and b"missing_authority" in sink.body


async def test_a_connect_failure_is_retried_on_the_other_backend() -> None:
    def refuse(req: object) -> ScriptedResponse:
        raise UpstreamConnectError("connect to 10.0.0.1 refused")

    extra = "  retry_budget: {enabled: true, ratio_percent: 100}"
    proxy, generation, store, metrics, upstream = build({"10.0.0.1": refuse, "10.0.0.2": ok(b"from b")}, extra=extra)
    sink = RecordingSink()
    await proxy.handle(request(), sink)  # round robin starts at a
    assert sink.status == 200 and sink.body == b"from b"
    assert [host for host, _ in upstream.sent] == ["10.0.0.1", "10.0.0.2"]
    assert metrics.registry.get_sample_value("spooky_retries_total") == 1
    a, b = generation.backends()
    assert a.state.failures["transport"] == 1 and a.state.slots.held == b.state.slots.held == 0


async def test_a_head_the_upstream_serializer_refuses_is_the_requests_fault() -> None:
    """Issue 24, finding 1: a serializer refusal is a 400, never retried elsewhere and never
    a failure of the backend (a client could otherwise eject a whole pool)."""
    def refuse(req: object) -> ScriptedResponse:
        raise UnforwardableRequest("cannot send this request over HTTP/1.1: Illegal header name")

    extra = "  retry_budget: {enabled: true, ratio_percent: 100}"
    proxy, generation, _, metrics, upstream = build({"10.0.0.1": refuse, "10.0.0.2": refuse}, extra=extra)
    for _ in range(5):
        sink = RecordingSink()
        await proxy.handle(request(), sink)
        assert sink.status == 400 and b"unforwardable_request" in sink.body
    assert len(upstream.sent) == 5  # one attempt each: no retry
    assert metrics.registry.get_sample_value("spooky_retries_total") in (None, 0)
    for backend in generation.backends():
        assert sum(backend.state.failures.values()) == 0 and backend.state.available(trio.current_time())
        assert backend.state.slots.held == 0
    assert count(metrics, "unforwardable_request", "4xx") == 5


async def test_a_failure_after_the_head_resets_the_stream_and_is_recorded(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="spooky.access")

    def cut(req: object) -> ScriptedResponse:
        return ScriptedResponse(200, [], [b"part"], fail=trio.TooSlowError())

    proxy, generation, _, metrics, _ = build({"10.0.0.1": cut, "10.0.0.2": cut})
    sink = RecordingSink()
    await proxy.handle(request(), sink)
    assert sink.status == 200 and sink.body == b"part" and sink.reset_reason == "total_timeout"
    [line] = access(caplog)
    assert line["outcome"] == "reset" and line["reason"] == "total_timeout" and line["status"] == 200
    assert count(metrics, "total_timeout", "none") == 1
    assert generation.backends()[0].state.failures["timeout"] == 1


async def test_a_client_gone_during_the_answer_is_a_reset_not_an_error() -> None:
    proxy, _, store, metrics, _ = build({"10.0.0.1": ok(), "10.0.0.2": ok()})
    await proxy.handle(request(method=b"DELETE"), RecordingSink(broken=True))
    assert count(metrics, "client_gone", "none") == 1
    assert store.resilience.global_slots.held == 0


async def test_ingress_refusals_go_through_the_same_door(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="spooky.access")
    proxy, _, _, metrics, _ = build({})
    sink = RecordingSink()
    await proxy.reject(request(b"/big"), sink, ErrorResponse(431, "headers_too_large", "header fields exceed 10 bytes"))
    assert sink.status == 431 and sink.body.startswith(b"431 Request Header Fields Too Large: header fields exceed")
    [line] = access(caplog)
    assert line["reason"] == "headers_too_large" and line["pool"] is None and line["path"] == "/big"
    assert count(metrics, "headers_too_large", "4xx") == 1
    assert metrics.registry.get_sample_value("spooky_policy_denied_total") == 1
