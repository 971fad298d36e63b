"""The trace step and the record step's span, without sockets (tests/proxy/fakes.py): the
W3C context continued or started, the client's trace headers replaced upstream, the span's
attributes from the record, refusals traced, sampling, and the step absent when disabled."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from spooky_trio.config import load_config_text
from spooky_trio.core.generation import Generation
from spooky_trio.core.state import StateStore
from spooky_trio.http.messages import Headers
from spooky_trio.observability.metrics import Metrics
from spooky_trio.observability.tracing import Tracing
from spooky_trio.proxy.chain import Proxy
from spooky_trio.proxy.filters import build_chain
from spooky_trio.upstream import UpstreamConnectError
from tests.proxy.fakes import CONFIG, RecordingSink, ScriptedResponse, ScriptedUpstream, ok, request

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def traced(tracing_yaml: str = "enabled: true", scripts: dict | None = None) -> tuple[Proxy, Tracing, ScriptedUpstream]:
    store = StateStore()
    extra = "observability:\n  tracing:\n" + "".join(f"    {line}\n" for line in tracing_yaml.splitlines())
    generation = Generation.build(load_config_text(CONFIG.format(extra=extra)), state=store)
    metrics = Metrics()
    tracing = Tracing(metrics, environ={})
    upstream = ScriptedUpstream(scripts if scripts is not None else {"10.0.0.1": ok(), "10.0.0.2": ok()})
    proxy = Proxy(lambda: generation,
                  lambda g: build_chain(g, upstream=upstream, state=store, metrics=metrics, tracing=tracing),  # type: ignore[arg-type]
                  metrics)
    return proxy, tracing, upstream


def trace_headers(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(n, v) for n, v in headers if n in (b"traceparent", b"tracestate")]


def only_span(tracing: Tracing) -> ReadableSpan:
    spans = tracing.queue.take(10)
    assert len(spans) == 1
    return spans[0]


async def test_the_trace_step_runs_first_only_when_enabled() -> None:
    proxy, _, _ = traced()
    generation = proxy._pick_generation()
    assert proxy.chain_for(generation).names[:3] == ["trace", "normalize_path", "protocol_policy"]
    proxy, _, _ = traced("enabled: false")
    assert "trace" not in proxy.chain_for(proxy._pick_generation()).names


async def test_a_client_trace_is_continued_and_the_upstream_request_names_our_span() -> None:
    proxy, tracing, upstream = traced()
    client = [(b"traceparent", f"00-{TRACE}-{PARENT}-01".encode()), (b"tracestate", b"congo=t61rcWkgMzE"), (b"accept", b"*/*")]
    await proxy.handle(request(b"/x?token=secret", headers=client), RecordingSink())
    span = only_span(tracing)
    assert span.parent is not None and span.parent.is_remote
    assert f"{span.parent.trace_id:032x}" == TRACE and f"{span.parent.span_id:016x}" == PARENT
    assert f"{span.context.trace_id:032x}" == TRACE and span.context.span_id != int(PARENT, 16)
    [(_, sent)] = upstream.sent
    ours = f"00-{TRACE}-{span.context.span_id:016x}-01".encode()
    assert trace_headers(sent.headers) == [(b"traceparent", ours), (b"tracestate", b"congo=t61rcWkgMzE")]
    assert (b"accept", b"*/*") in sent.headers
    assert span.name == "GET app" and span.kind == SpanKind.SERVER and span.status.status_code == StatusCode.UNSET
    attributes = dict(span.attributes or {})
    assert attributes == {
        "http.request.method": "GET", "url.scheme": "https", "url.path": "/x", "network.protocol.version": "3",
        "client.address": "192.0.2.1",
        "spooky.outcome": "ok", "server.address": "example.com", "http.response.status_code": 200,
        "spooky.route": "app", "spooky.pool": "app", "spooky.backend": attributes["spooky.backend"], "spooky.reason": "ok",
    }
    assert attributes["spooky.backend"] in ("a", "b")
    assert span.resource.attributes["service.name"] == "spooky"


@pytest.mark.parametrize(
    "client",
    [
        [],
        [(b"traceparent", b"00-zz-not-a-traceparent")],
        [(b"traceparent", f"00-{'0' * 32}-{PARENT}-01".encode())],  # an all-zero trace id is invalid
        [(b"traceparent", f"00-{TRACE}-{PARENT}-01".encode()), (b"traceparent", f"00-{TRACE}-{PARENT}-01".encode())],
        [(b"tracestate", b"orphan=1")],  # a tracestate without a traceparent is meaningless
    ],
    ids=["none", "malformed", "zero-trace-id", "duplicated", "tracestate-only"],
)
async def test_without_one_valid_traceparent_a_new_trace_starts(client: Headers) -> None:
    proxy, tracing, upstream = traced()
    await proxy.handle(request(headers=list(client)), RecordingSink())
    span = only_span(tracing)
    assert span.parent is None and f"{span.context.trace_id:032x}" != TRACE
    [(_, sent)] = upstream.sent
    assert trace_headers(sent.headers) == [(b"traceparent", f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-03".encode())]


async def test_refusals_are_traced_with_the_deciding_reason() -> None:
    proxy, tracing, upstream = traced()
    sink = RecordingSink()
    await proxy.handle(request(b"/admin/x"), sink)
    assert sink.status == 403 and upstream.sent == []
    span = only_span(tracing)
    attributes = span.attributes or {}
    assert span.name == "GET" and attributes["spooky.reason"] == "path_denied" and attributes["http.response.status_code"] == 403
    assert attributes["spooky.outcome"] == "error" and "spooky.route" not in attributes
    assert span.status.status_code == StatusCode.UNSET  # a 4xx is not the server's error
    await proxy.handle(request(method=b"BREW"), RecordingSink())
    span = only_span(tracing)
    attributes = span.attributes or {}
    assert span.name == "HTTP" and attributes["http.request.method"] == "_OTHER" and attributes["http.request.method_original"] == "BREW"
    assert attributes["spooky.reason"] == "method_not_allowed"


async def test_a_backend_failure_is_an_error_span() -> None:
    def refuse(_: object) -> ScriptedResponse:
        raise UpstreamConnectError("connect refused")

    proxy, tracing, _ = traced(scripts={"10.0.0.1": refuse, "10.0.0.2": refuse})
    sink = RecordingSink()
    await proxy.handle(request(), sink)
    assert sink.status == 502
    span = only_span(tracing)
    attributes = span.attributes or {}
    assert attributes["spooky.reason"] == "connect_failed" and attributes["error.type"] == "connect_failed"
    assert span.status.status_code == StatusCode.ERROR and span.status.description == "connect_failed"


async def test_a_client_that_went_away_is_a_reset_but_not_a_server_error() -> None:
    proxy, tracing, _ = traced()
    await proxy.handle(request(b"/admin"), RecordingSink(broken=True))
    span = only_span(tracing)
    assert (span.attributes or {})["spooky.outcome"] == "reset" and (span.attributes or {})["spooky.reason"] == "client_gone"
    assert span.status.status_code == StatusCode.UNSET


async def test_sample_ratio_zero_records_nothing_and_sends_an_unsampled_context() -> None:
    proxy, tracing, upstream = traced("enabled: true\nsample_ratio: 0")
    await proxy.handle(request(headers=[(b"traceparent", f"00-{TRACE}-{PARENT}-01".encode())]), RecordingSink())
    assert len(tracing.queue) == 0
    [(_, sent)] = upstream.sent
    [(_, traceparent)] = trace_headers(sent.headers)
    version, trace_id, parent, flags = traceparent.decode().split("-")
    assert (version, trace_id, flags) == ("00", TRACE, "00") and parent != PARENT


async def test_sample_ratio_samples_by_trace_id() -> None:
    proxy, tracing, _ = traced("enabled: true\nsample_ratio: 0.5")
    # TraceIdRatioBased compares the low 64 bits of the trace id with ratio * 2**64
    for trace_id, sampled in (("0" * 16 + "0" * 15 + "1", True), ("0" * 16 + "f" * 16, False)):
        await proxy.handle(request(headers=[(b"traceparent", f"00-{trace_id}-{PARENT}-00".encode())]), RecordingSink())
        assert len(tracing.queue.take(10)) == (1 if sampled else 0)


async def test_disabled_the_client_trace_headers_pass_through_untouched() -> None:
    proxy, tracing, upstream = traced("enabled: false")
    client = [(b"traceparent", f"00-{TRACE}-{PARENT}-01".encode()), (b"tracestate", b"a=1")]
    await proxy.handle(request(headers=list(client)), RecordingSink())
    [(_, sent)] = upstream.sent
    assert trace_headers(sent.headers) == client and len(tracing.queue) == 0


async def test_a_client_cannot_strip_our_traceparent_by_naming_it_in_connection() -> None:
    proxy, tracing, upstream = traced()
    client = [(b"connection", b"keep-alive, TraceParent"), (b"connection", b"tracestate"), (b"x-other", b"1")]
    await proxy.handle(request(headers=client), RecordingSink())
    span = only_span(tracing)
    [(_, sent)] = upstream.sent
    assert [n for n, _ in trace_headers(sent.headers)] == [b"traceparent"]
    assert f"{span.context.span_id:016x}".encode() in dict(trace_headers(sent.headers))[b"traceparent"]
    assert (b"x-other", b"1") in sent.headers


async def test_with_the_sdk_disabled_no_invalid_traceparent_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    proxy, tracing, upstream = traced()
    await proxy.handle(request(), RecordingSink())
    [(_, sent)] = upstream.sent
    assert trace_headers(sent.headers) == [] and len(tracing.queue) == 0
