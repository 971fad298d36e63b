"""Real OTLP receivers for tracing tests and the bench, built on the OpenTelemetry protobuf
package (the Collector is not packaged for Debian).

* :func:`grpc_receiver`: OTLP/gRPC (``TraceService/Export``) on a grpcio server;
* :func:`http_receiver`: OTLP/HTTP protobuf (``POST /v1/traces``) on ``http.server``;
* :func:`black_hole`: a TCP port that accepts connections and never answers (a collector
  that hangs).

Each runs in its own threads and keeps what it received in a :class:`SpanSink`; tests wait
for spans with ``await sink.wait_spans(n)`` (a condition variable, no polling).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import attrs
import grpc
import trio
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def _attributes(items: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in items if isinstance(kv, KeyValue)}


@attrs.frozen
class ReceivedSpan:
    """One span as the collector got it (ids as lowercase hex, as in ``traceparent``)."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    status_code: int
    status_message: str
    start_ns: int
    end_ns: int
    resource: dict[str, Any]
    scope: str


class SpanSink:
    """What a receiver got: ``spans`` in arrival order, ``exports`` (requests) counted."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.spans: list[ReceivedSpan] = []
        self.exports = 0

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        received = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(ReceivedSpan(
                        name=span.name, trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(), kind=span.kind, attributes=_attributes(span.attributes),
                        status_code=span.status.code, status_message=span.status.message,
                        start_ns=span.start_time_unix_nano, end_ns=span.end_time_unix_nano,
                        resource=resource, scope=scope_spans.scope.name,
                    ))
        with self._cond:
            self.exports += 1
            self.spans.extend(received)
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float) -> list[ReceivedSpan]:
        """Block until ``n`` spans arrived (or ``timeout``); returns what arrived."""
        with self._cond:
            self._cond.wait_for(lambda: len(self.spans) >= n, timeout)
            return list(self.spans)

    async def wait_spans(self, n: int, timeout: float = 15.0) -> list[ReceivedSpan]:
        """:meth:`wait_for` from Trio (in a thread); asserts that ``n`` arrived."""
        spans = await trio.to_thread.run_sync(self.wait_for, n, timeout)
        assert len(spans) >= n, f"{len(spans)} span(s) arrived, expected {n}: {spans}"
        return spans


@attrs.define
class Receiver:
    """A running receiver: point ``otlp_endpoint`` (or the OTEL variables) at ``endpoint``."""

    endpoint: str
    sink: SpanSink


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, sink: SpanSink) -> None:
        self.sink = sink

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any) -> trace_service_pb2.ExportTraceServiceResponse:  # noqa: N802
        self.sink.add(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@contextlib.contextmanager
def grpc_receiver() -> Iterator[Receiver]:
    """OTLP/gRPC on 127.0.0.1, an ephemeral port (``endpoint`` ``http://127.0.0.1:PORT``)."""
    sink = SpanSink()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(sink), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield Receiver(f"http://127.0.0.1:{port}", sink)
    finally:
        server.stop(0)


@contextlib.contextmanager
def http_receiver() -> Iterator[Receiver]:
    """OTLP/HTTP protobuf on 127.0.0.1 (``endpoint`` is the base URL; spans go to
    ``/v1/traces``, any other path gets 404)."""
    sink = SpanSink()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if self.path != "/v1/traces" or self.headers.get("content-type") != "application/x-protobuf":
                self.send_response(404)
                self.send_header("content-length", "0")
                self.end_headers()
                return
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(body)
            sink.add(request)
            answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Receiver(f"http://127.0.0.1:{server.server_address[1]}", sink)
    finally:
        server.shutdown()
        server.server_close()


@attrs.define(eq=False)
class BlackHole:
    """A collector that accepts connections and never answers; ``accepted`` is set once a
    connection came in (an exporter is now stuck in an export call)."""

    endpoint: str
    accepted: threading.Event

    async def wait_accepted(self, timeout: float = 15.0) -> None:
        assert await trio.to_thread.run_sync(self.accepted.wait, timeout), "no exporter connected"


@contextlib.contextmanager
def black_hole() -> Iterator[BlackHole]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted = threading.Event()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_loop() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            held.append(conn)  # kept open, never read from or answered
            accepted.set()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        yield BlackHole(f"http://127.0.0.1:{listener.getsockname()[1]}", accepted)
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


def closed_port() -> str:
    """An endpoint nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"
