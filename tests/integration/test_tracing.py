"""observability.tracing end to end: the real proxy, real clients (HTTP/3, HTTP/2, HTTP/1.1),
a real backend, and a real OTLP receiver (gRPC or HTTP/protobuf) started by the test."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import httpx
import pytest
import trio

from spooky_trio.clients.h3 import H3Client
from spooky_trio.serving.server import Server
from tests.support.backends import Backend, run_backend
from tests.support.otlp import ReceivedSpan, black_hole, closed_port, grpc_receiver, http_receiver
from tests.support.proxy import h1_pool, proxy_yaml, running_proxy

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT = "00f067aa0ba902b7"
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"
SERVER_KIND = 2  # opentelemetry.proto.trace.v1.Span.SPAN_KIND_SERVER


@pytest.fixture(autouse=True)
def otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OTEL_* variable of the machine leaks in; batches go out after 20 ms."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")


def tracing_config(certs_dir: Path, backend: Backend, tracing: str) -> str:
    return proxy_yaml(h1_pool(backend.url, prefix="/app"), certs_dir=certs_dir,
                      extra="observability:\n  tracing:\n" + "".join(f"    {line}\n" for line in tracing.strip().splitlines()))


def upstream_trace_headers(backend: Backend, index: int = -1) -> dict[str, list[str]]:
    headers = backend.requests[index]["headers"]
    return {name: [v for n, v in headers if n == name] for name in ("traceparent", "tracestate")}


def tls(certs_dir: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certs_dir / "ca.pem"))


def by_protocol(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {s.attributes["network.protocol.version"]: s for s in spans}


async def h3_get(server: Server, certs_dir: Path, path: str, headers: list[tuple[str, str]]) -> int:
    port = server.listeners[0].port
    async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=str(certs_dir / "ca.pem")) as client:
        return (await client.request("GET", path, headers=headers, authority="localhost")).status


async def tcp_get(server: Server, certs_dir: Path, path: str, headers: list[tuple[str, str]], *, http2: bool) -> int:
    port = server.listeners[0].port
    async with httpx.AsyncClient(http2=http2, http1=not http2, verify=tls(certs_dir)) as http:
        return (await http.get(f"https://localhost:{port}{path}", headers=headers)).status_code


async def test_a_span_per_request_continues_the_client_trace_and_parents_the_upstream_request(certs_dir: Path) -> None:
    with grpc_receiver() as receiver:
        async with run_backend(name="h1") as backend:
            config = tracing_config(certs_dir, backend, f"enabled: true\nservice_name: edge-test\notlp_endpoint: {receiver.endpoint}")
            async with running_proxy(config) as server:
                client_headers = [("traceparent", CLIENT_TRACEPARENT), ("tracestate", "vendor=a1")]
                assert await h3_get(server, certs_dir, "/app/h3/echo", client_headers) == 200
                h3_upstream = upstream_trace_headers(backend)
                assert await tcp_get(server, certs_dir, "/app/h2/echo", client_headers, http2=True) == 200
                h2_upstream = upstream_trace_headers(backend)
                assert await tcp_get(server, certs_dir, "/app/h1/echo", [], http2=False) == 200
                h1_upstream = upstream_trace_headers(backend)
                spans = await receiver.sink.wait_spans(3)
    spans = by_protocol(spans)
    for version, upstream in (("3", h3_upstream), ("2", h2_upstream)):
        span = spans[version]
        # continued: the client's trace, the client's span as our parent, a span of our own
        assert span.trace_id == CLIENT_TRACE and span.parent_span_id == CLIENT_PARENT
        assert span.span_id not in ("", CLIENT_PARENT)
        # the backend got exactly one traceparent, ours: same trace, our span as its parent
        assert upstream["traceparent"] == [f"00-{CLIENT_TRACE}-{span.span_id}-01"]
        assert upstream["tracestate"] == ["vendor=a1"]
        assert span.name == "GET app" and span.kind == SERVER_KIND and span.status_code == 0
        assert span.resource["service.name"] == "edge-test" and span.scope == "spooky_trio"
        a = span.attributes
        assert a["spooky.route"] == "app" and a["spooky.pool"] == "app" and a["spooky.backend"] == "app-1"
        assert a["http.response.status_code"] == 200 and a["spooky.reason"] == "ok" and a["spooky.outcome"] == "ok"
        assert a["http.request.method"] == "GET" and a["url.path"] == f"/app/h{version}/echo" and a["server.address"] == "localhost"
        assert a["client.address"] == "127.0.0.1"
        assert span.end_ns >= span.start_ns > 0
    # started: a new trace (no parent), still sent upstream with our span as the parent
    started = spans["1.1"]
    assert started.parent_span_id == "" and started.trace_id != CLIENT_TRACE
    # flags 03: sampled, and (W3C level 2) a trace id we drew at random
    assert h1_upstream["traceparent"] == [f"00-{started.trace_id}-{started.span_id}-03"] and h1_upstream["tracestate"] == []


async def test_refusals_of_the_chain_are_traced_with_their_reason_over_http_protobuf(
    certs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The OTEL_* fallbacks: no otlp_endpoint in the config, the endpoint and protocol from
    the environment (a base URL: /v1/traces is appended)."""
    with http_receiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        async with run_backend(name="h1") as backend:
            async with running_proxy(tracing_config(certs_dir, backend, "enabled: true")) as server:
                assert await h3_get(server, certs_dir, "/nowhere", [("traceparent", CLIENT_TRACEPARENT)]) == 404
                assert await tcp_get(server, certs_dir, "/app/echo", [], http2=True) == 200
                assert await tcp_get(server, certs_dir, "/nowhere", [], http2=True) == 404
                spans = await receiver.sink.wait_spans(3)
    refused = [s for s in spans if s.attributes["http.response.status_code"] == 404]
    assert len(refused) == 2 and backend.requests[-1]["path"] == "/app/echo"
    for span in refused:
        assert span.name == "GET" and span.resource["service.name"] == "spooky"
        assert span.attributes["spooky.reason"] == "no_route" and span.attributes["spooky.outcome"] == "error"
        assert "spooky.route" not in span.attributes and "spooky.backend" not in span.attributes
        assert span.status_code == 0  # a 4xx is the client's error, not the server's
    assert {s.attributes["network.protocol.version"] for s in refused} == {"3", "2"}
    assert next(s for s in refused if s.attributes["network.protocol.version"] == "3").trace_id == CLIENT_TRACE


async def test_a_backend_failure_is_an_error_span(certs_dir: Path) -> None:
    with grpc_receiver() as receiver:
        config = proxy_yaml(h1_pool(closed_port()), certs_dir=certs_dir,
                            extra=f"observability:\n  tracing:\n    enabled: true\n    otlp_endpoint: {receiver.endpoint}\n")
        async with running_proxy(config) as server:
            assert await h3_get(server, certs_dir, "/", []) == 502
            assert await tcp_get(server, certs_dir, "/", [], http2=True) == 502
            spans = await receiver.sink.wait_spans(2)
    for span in spans:
        assert span.attributes["http.response.status_code"] == 502 and span.attributes["spooky.reason"] == "connect_failed"
        assert span.attributes["error.type"] == "connect_failed" and span.attributes["spooky.backend"] == "app-1"
        assert span.status_code == 2 and span.status_message == "connect_failed"  # STATUS_CODE_ERROR


async def test_sample_ratio_zero_exports_nothing_but_still_sends_our_trace_context(certs_dir: Path) -> None:
    with grpc_receiver() as receiver:
        async with run_backend(name="h1") as backend:
            config = tracing_config(certs_dir, backend, f"enabled: true\nsample_ratio: 0\notlp_endpoint: {receiver.endpoint}")
            async with running_proxy(config) as server:
                headers = [("traceparent", CLIENT_TRACEPARENT)]  # the client asks for sampling: not obeyed
                assert await h3_get(server, certs_dir, "/app/a/echo", headers) == 200
                h3_upstream = upstream_trace_headers(backend)
                assert await tcp_get(server, certs_dir, "/app/b/echo", headers, http2=True) == 200
                h2_upstream = upstream_trace_headers(backend)
                assert len(server.tracing.queue) == 0  # nothing recorded, nothing to send
            # the proxy stopped: its drain flushed whatever was queued (nothing)
    assert receiver.sink.exports == 0 and receiver.sink.spans == []
    for upstream in (h3_upstream, h2_upstream):
        [traceparent] = upstream["traceparent"]
        version, trace_id, parent_id, flags = traceparent.split("-")
        assert version == "00" and trace_id == CLIENT_TRACE and parent_id != CLIENT_PARENT
        assert int(flags, 16) & 1 == 0  # not sampled


def sample(server: Server, name: str, labels: dict[str, str] | None = None) -> float:
    return server.metrics.registry.get_sample_value(name, labels or {}) or 0.0


async def test_a_hanging_collector_never_slows_or_fails_requests(certs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first export hangs on a collector that never answers; every request after it is
    answered while that export is still in progress (so none waited for it), and what the
    bounded queue cannot hold is dropped and counted."""
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "4")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2")
    monkeypatch.setenv("OTEL_BSP_EXPORT_TIMEOUT", "60000")
    with black_hole() as collector:
        async with run_backend(name="h1") as backend:
            config = tracing_config(certs_dir, backend, f"enabled: true\notlp_endpoint: {collector.endpoint}")
            async with running_proxy(config) as server:
                assert await tcp_get(server, certs_dir, "/app/first/echo", [], http2=True) == 200
                await collector.wait_accepted()  # the export of the first span is now stuck
                port = server.listeners[0].port
                async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=str(certs_dir / "ca.pem")) as h3, \
                        httpx.AsyncClient(http2=True, http1=False, verify=tls(certs_dir)) as h2:
                    for i in range(10):
                        assert (await h3.request("GET", f"/app/{i}/echo", authority="localhost")).status == 200
                        assert (await h2.get(f"https://localhost:{port}/app/{i}/echo")).status_code == 200
                # still no export call has returned: the requests above never waited for one
                for result in ("success", "failure", "timeout"):
                    assert sample(server, "spooky_tracing_exports_total", {"result": result}) == 0
                assert len(server.tracing.queue) == 4
                assert sample(server, "spooky_tracing_spans_dropped_total", {"reason": "queue_full"}) == 20 - 4
                metrics = server.metrics.render().decode()
                assert 'spooky_tracing_spans_dropped_total{reason="queue_full"} 16.0' in metrics


async def test_a_dead_collector_fails_exports_not_requests(certs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections refused: the export fails (counted, its spans dropped as export_failed),
    the exporter backs off, and requests keep being answered."""
    monkeypatch.setenv("OTEL_BSP_EXPORT_TIMEOUT", "500")
    async with run_backend(name="h1") as backend:
        config = tracing_config(certs_dir, backend, f"enabled: true\notlp_endpoint: {closed_port()}")
        async with running_proxy(config) as server:
            assert await h3_get(server, certs_dir, "/app/a/echo", []) == 200
            # returns once the span's export ended (the task's, or this one if it came first)
            await server.tracing.flush(timeout=20)
            assert sample(server, "spooky_tracing_exports_total", {"result": "failure"}) == 1
            assert sample(server, "spooky_tracing_spans_dropped_total", {"reason": "export_failed"}) >= 1
            assert server.tracing.exports.backoff >= 1
            assert await tcp_get(server, certs_dir, "/app/b/echo", [], http2=True) == 200
            assert await h3_get(server, certs_dir, "/app/c/echo", []) == 200


async def test_a_reload_turns_tracing_on_moves_it_to_another_collector_and_off(certs_dir: Path) -> None:
    with grpc_receiver() as first, grpc_receiver() as second:
        async with run_backend(name="h1") as backend:
            port_line = "  port: "
            config = tracing_config(certs_dir, backend, "enabled: false")
            port = int(next(line for line in config.splitlines() if line.startswith(port_line))[len(port_line):])

            def with_tracing(tracing: str) -> bytes:
                return proxy_yaml(h1_pool(backend.url, prefix="/app"), certs_dir=certs_dir, port=port,
                                  extra=f"observability:\n  tracing:\n    {tracing}\n").encode()

            async with running_proxy(config) as server:
                assert await h3_get(server, certs_dir, "/app/off/echo", [("traceparent", CLIENT_TRACEPARENT)]) == 200
                assert upstream_trace_headers(backend)["traceparent"] == [CLIENT_TRACEPARENT]  # untouched while off
                on = await server.reloads.apply(with_tracing(f"enabled: true\n    otlp_endpoint: {first.endpoint}"))
                assert on.status == 200
                assert await h3_get(server, certs_dir, "/app/on/echo", []) == 200
                [span] = await first.sink.wait_spans(1)
                assert span.attributes["url.path"] == "/app/on/echo"
                moved = await server.reloads.apply(with_tracing(f"enabled: true\n    otlp_endpoint: {second.endpoint}"))
                assert moved.status == 200
                assert await tcp_get(server, certs_dir, "/app/moved/echo", [], http2=True) == 200
                [span] = await second.sink.wait_spans(1)
                assert span.attributes["url.path"] == "/app/moved/echo" and len(first.sink.spans) == 1
                off = await server.reloads.apply(with_tracing("enabled: false"))
                assert off.status == 200
                assert await h3_get(server, certs_dir, "/app/off-again/echo", [("traceparent", CLIENT_TRACEPARENT)]) == 200
                assert upstream_trace_headers(backend)["traceparent"] == [CLIENT_TRACEPARENT]
                assert "trace" not in server.proxy.chain_for(server.generation).names
