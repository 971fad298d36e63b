"""The request's span: started by the first step of the chain, ended by the record step.

With ``observability.tracing.enabled``, :class:`Trace` runs first (before
``protocol_policy``), so every request that reaches the chain gets a span, its refusals
included: it continues the client's W3C trace context (one valid ``traceparent``, plus its
``tracestate``) or starts a trace, opens a SERVER span that starts when the request arrived,
and replaces the client's ``traceparent``/``tracestate`` in the request with ours, so every
attempt sent upstream (retries, hedges, WebSocket and CONNECT handshakes) names our span as
its parent. The record step of the answer door (``proxy/answers.py``) calls
:func:`finish_span` once the request ended, whatever ended it, so the span carries what the
access log shows: route, pool, backend, status, outcome and the deciding ``reason``.

Not traced: requests a listener refuses before the chain (``Proxy.reject``: 431, 400, 408,
501 for a head it could not take). Their head is incomplete or malformed (a trace context
in it cannot be trusted), no generation was taken, and they are logged and counted as
before. Disabled, the step is not in the chain and a client's trace headers pass through
untouched, as they always did.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer, format_span_id, format_trace_id
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from spooky_trio.http.headers import host_without_port

if TYPE_CHECKING:
    from spooky_trio.proxy.answers import Answer
    from spooky_trio.proxy.context import RequestContext

_PROPAGATOR = TraceContextTextMapPropagator()
#: the parent of a trace we start (never the ambient context: nothing here attaches one)
_ROOT = Context()
_TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})
#: span names and ``http.request.method`` use these; other methods are ``_OTHER`` / ``HTTP``
#: (OpenTelemetry HTTP conventions: a client's arbitrary method must not become a span name)
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
_PROTOCOL_VERSIONS = {"HTTP/3": "3", "HTTP/2": "2", "HTTP/1.1": "1.1", "HTTP/1.0": "1.0"}
#: resets that are the client's doing, not a server error
_CLIENT_RESETS = frozenset({"client_gone"})


class Trace:
    """Start the request's span and send our trace context upstream (module docstring)."""

    name = "trace"

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer

    def on_request(self, ctx: RequestContext) -> Answer | None:
        request = ctx.request
        headers = request.headers
        parent = _ROOT
        # one pass; most requests carry no trace headers and skip the propagator's parsing
        parents: list[str] = []
        states: list[str] = []
        for name, value in headers:
            if name == b"traceparent":
                parents.append(value.decode("latin-1"))
            elif name == b"tracestate":
                states.append(value.decode("latin-1"))
        if parents or states:
            # the client's copies never go upstream (a client's "Connection: traceparent"
            # cannot strip ours: the ingress honours a Connection list, http/headers.py)
            request.headers = headers = [(n, v) for n, v in headers if n not in _TRACE_HEADERS]
            # W3C: two traceparents are no parent
            if len(parents) == 1:
                carrier = {"traceparent": parents, "tracestate": states} if states else {"traceparent": parents}
                parent = _PROPAGATOR.extract(carrier, _ROOT)
        method = request.method.decode("latin-1")
        span = self.tracer.start_span(
            method if method in _KNOWN_METHODS else "HTTP", parent, SpanKind.SERVER, start_time=int(ctx.started_wall * 1e9)
        )
        ctx.span = span
        # what the propagator's inject writes, without the Context it needs built per request
        context = span.get_span_context()
        if not context.is_valid:  # (OTEL_SDK_DISABLED=true: the SDK hands back no span of ours)
            return None
        headers.append((b"traceparent", f"00-{format_trace_id(context.trace_id)}-{format_span_id(context.span_id)}-"
                                        f"{context.trace_flags:02x}".encode("ascii")))
        if context.trace_state:
            headers.append((b"tracestate", context.trace_state.to_header().encode("latin-1")))
        return None


def finish_span(ctx: RequestContext) -> None:
    """End ``ctx.span`` with what the record shows (the record step calls it, once)."""
    span = ctx.span
    if span is None:
        return
    ctx.span = None
    if not span.is_recording():  # not sampled: nothing to fill in or export
        return
    request = ctx.request
    method = request.method.decode("latin-1")
    known = method in _KNOWN_METHODS
    # (each attribute costs the SDK's validation, ~0.6 us: the access log has the rest)
    path, _, _query = request.path.partition(b"?")  # the query may carry secrets: left out
    attributes: dict[str, AttributeValue] = {
        "http.request.method": method if known else "_OTHER",
        "url.scheme": (request.scheme or b"https").decode("latin-1"),
        "url.path": path.decode("latin-1"),
        "network.protocol.version": _PROTOCOL_VERSIONS.get(request.protocol, request.protocol),
        "client.address": request.client_address[0],
        "spooky.outcome": ctx.outcome,
    }
    if not known:
        attributes["http.request.method_original"] = method
    authority = ctx.authority.encode("latin-1") if ctx.authority else request.authority or request.host_header or b""
    if authority:
        attributes["server.address"] = host_without_port(authority).decode("latin-1")
    if ctx.status is not None:
        attributes["http.response.status_code"] = ctx.status
    if ctx.route_pool is not None:
        attributes["spooky.route"] = ctx.route_pool
        span.update_name(f"{method if known else 'HTTP'} {ctx.route_pool}")
    if ctx.pool is not None:
        attributes["spooky.pool"] = ctx.pool
    if ctx.backend is not None:
        attributes["spooky.backend"] = ctx.backend
    reason = ctx.reason or "-"
    attributes["spooky.reason"] = reason
    failed = (ctx.status is not None and ctx.status >= 500) or (ctx.outcome == "reset" and reason not in _CLIENT_RESETS)
    if failed:
        attributes["error.type"] = reason
    span.set_attributes(attributes)
    if failed:
        span.set_status(Status(StatusCode.ERROR, reason))
    span.end()
