"""From a decoded HTTP/2 or HTTP/3 field section to the chain's request: one way for both.

The two multiplexed ingresses differ in framing and flow control, not in what a request
head means, so they share this: :func:`refusal` (the 431 of the header limits, the one
validator's 400, the 501 of an extended CONNECT the ingress cannot serve),
:func:`build_request` (cookie crumbs joined for HTTP/1.1 backends, a client-sent
certificate subject dropped, ``host`` standing in for a missing ``:authority``, an extended
CONNECT for WebSocket turned into an upgrade GET), :func:`refused_request` (what the access
log shows of a request answered before the chain), :func:`check_trailers`, and
:class:`StreamTask`, a request stream as its connection tracks it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

import trio

from spooky_trio.http.errors import ErrorResponse, header_limit_error
from spooky_trio.http.messages import (
    NO_TLS_INFO,
    ConnectionTls,
    DownstreamBody,
    DownstreamRequest,
    RequestBodyError,
)
from spooky_trio.http.validate import (
    TRANSPORT_SCHEME,
    MultiplexedHead,
    check_head,
    join_cookies,
)
from spooky_trio.ingress.request_body import QueuedRequestBody
from spooky_trio.ingress.tls import client_headers


class AbortableSink(Protocol):
    #: set once the stream is gone: the sink writes nothing more
    aborted: bool


B = TypeVar("B", bound=QueuedRequestBody)
S = TypeVar("S", bound=AbortableSink)


class StreamTask(Generic[B, S]):
    """A request stream of an HTTP/2 or HTTP/3 connection: its request, body, sink and the
    cancel scope of the task serving it; ``error`` is the answer it gets instead of the
    chain (a refused head)."""

    __slots__ = ("stream_id", "request", "body", "sink", "error", "cancel_scope")

    def __init__(self, stream_id: int, request: DownstreamRequest, body: B | None, sink: S, error: ErrorResponse | None = None) -> None:
        self.stream_id = stream_id
        self.request = request
        self.body = body
        self.sink = sink
        self.error = error
        self.cancel_scope = trio.CancelScope()

    def abort(self, why: str) -> None:
        """The stream is gone (client reset, malformed, connection lost): the chain's next
        body read raises ``why``, the sink writes nothing more, the task is cancelled."""
        if self.body is not None:
            self.body.fail(RequestBodyError(why))
        self.sink.aborted = True
        self.cancel_scope.cancel()


def refusal(head: MultiplexedHead, *, max_count: int, max_bytes: int, websocket: bool) -> ErrorResponse | None:
    """The answer a head gets without running the chain, or None.

    ``websocket``: the ingress serves an extended CONNECT for ``websocket`` (HTTP/2 does,
    RFC 8441; HTTP/3 does not, RFC 9220)."""
    error = header_limit_error(head.headers, max_count=max_count, max_bytes=max_bytes)
    if error is None:
        error = check_head(head.method, head.path, head.headers, multiplexed=True, scheme=head.scheme, authority=head.authority)
    if error is None and head.protocol is not None:
        if not websocket:
            error = ErrorResponse(501, "extended_connect_unsupported", "WebSocket over HTTP/3 (RFC 9220) is not supported; use the TCP listener")
        elif head.protocol.lower() != b"websocket":
            error = ErrorResponse(501, "connect_protocol_unsupported", f"extended CONNECT for {head.protocol.decode('latin-1')!r} is not supported")
    return error


def build_request(
    head: MultiplexedHead,
    body: DownstreamBody | None,
    *,
    protocol: str,
    client_address: tuple[str, int],
    subject: bytes | None,
    quic_connection_id: bytes | None = None,
    early_data: bool = False,
    tls: ConnectionTls = NO_TLS_INFO,
) -> DownstreamRequest:
    """The chain's request for a head :func:`refusal` let through.

    ``subject``: the client certificate's subject (HTTP/2 with mTLS), None otherwise: a
    client-sent copy of the subject header is always dropped. An extended CONNECT's
    ``body`` is the tunnel, not a request body: the request goes on without one."""
    # RFC 9113 8.2.3, RFC 9114 4.2.1: cookie crumbs become one field for HTTP/1.1 backends
    headers = join_cookies(client_headers(head.headers, subject))
    method, request_body = head.method, body
    if head.protocol is not None:  # RFC 8441: relayed like an HTTP/1.1 upgrade
        method, request_body = b"GET", None
        headers = [*headers, (b"connection", b"upgrade"), (b"upgrade", b"websocket")]
    host = declared = None
    for name, value in headers:
        if name == b"host" and host is None:
            host = value
        elif name == b"content-length":
            declared = value
    return DownstreamRequest(
        method=method,
        scheme=TRANSPORT_SCHEME,
        # RFC 9113 8.3.1, RFC 9114 4.3.1: without :authority, Host names the target
        authority=head.authority if head.authority is not None else host or b"",
        path=head.path or b"",
        headers=headers,
        protocol=protocol,
        client_address=client_address,
        body=request_body,
        content_length=int(declared) if declared is not None else None,  # digits: check_head
        host_header=host if head.authority is not None else None,
        quic_connection_id=quic_connection_id,
        early_data=early_data,
        tls=tls,
    )


def refused_request(head: MultiplexedHead | None, *, protocol: str, client_address: tuple[str, int]) -> DownstreamRequest:
    """What the access log shows of a request answered before the chain (``head`` None:
    its pseudo-headers were malformed): the request line, no fields, no body."""
    return DownstreamRequest(
        method=head.method if head else b"",
        scheme=TRANSPORT_SCHEME,
        authority=(head.authority or b"") if head else b"",
        path=(head.path or b"") if head else b"",
        headers=[],
        protocol=protocol,
        client_address=client_address,
    )


def check_trailers(fields: Sequence[tuple[bytes, bytes]]) -> str | None:
    """Why a trailer section makes its request malformed (RFC 9113 8.1, RFC 9114 4.1.2:
    a pseudo-header, or a field the head rules refuse), or None. Request trailers end the
    body and are never forwarded (docs/security.md); a malformed one resets the stream."""
    fields = list(fields)
    if any(name[:1] == b":" for name, _ in fields):
        return "pseudo-header in trailers"
    error = check_head(b"GET", None, fields, multiplexed=True)
    return None if error is None else f"trailers: {error.message}"
