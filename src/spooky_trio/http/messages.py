"""Protocol-neutral message types shared by ingress, the proxy pipeline and upstream clients.

Header names are lowercase ``bytes``; values are ``bytes``. Pseudo-headers never appear in
``Headers`` lists; they are carried as explicit fields.
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import Protocol

import attrs

Headers = list[tuple[bytes, bytes]]

#: A request or response body as the sender produces it: an async iterable of non-empty
#: chunks. It ends when the iteration ends; an exception from it aborts the exchange.
Body = AsyncIterable[bytes]


@attrs.define(slots=True)
class UpstreamRequest:
    """What the proxy sends to a backend.

    ``headers`` are already cleaned of hop-by-hop headers and of ``host``; the upstream
    client sends ``authority`` as ``Host`` (HTTP/1.1) or ``:authority`` (HTTP/2).
    ``content_length`` is the declared length, or None when unknown (HTTP/1.1 then uses
    chunked encoding when ``body`` is not None). ``body`` None means no body at all.
    """

    method: bytes
    target: bytes
    authority: bytes
    headers: Headers
    body: Body | None = None
    content_length: int | None = None
    scheme: bytes = b"https"


class RequestBodyError(Exception):
    """The client's request body failed: the stream was reset, or it broke framing rules."""


class RequestBodyTooLarge(RequestBodyError):
    """The client sent more than ``max_request_body_bytes``."""


class RequestBodyTimeout(RequestBodyError):
    """The client paused longer than ``client_body_idle_timeout_ms`` between body chunks."""


class DownstreamBody(Protocol):
    """Interface of a client's request body as the pipeline reads it."""

    async def receive(self) -> bytes:
        """Next non-empty chunk, or b"" at the end. Raises :class:`RequestBodyError`."""


@attrs.frozen(slots=True)
class ConnectionTls:
    """What the TLS (or QUIC) handshake of a client's connection said, shared by every request
    on it: ``server_name`` is the ClientHello's SNI (None without one), ``client_cert_subject``
    the verified client certificate's subject as RFC 4514 text, non-printable and non-ASCII
    characters escaped as ``\\XX`` (None without one; QUIC clients never present one). The
    plugin API shows it as ``spooky_trio.plugin.TlsInfo``."""

    server_name: str | None = None
    client_cert_subject: str | None = None


#: a connection whose handshake said nothing of either (and refused requests)
NO_TLS_INFO = ConnectionTls()


@attrs.define(slots=True, eq=False)
class DownstreamRequest:
    """A client request as every ingress protocol hands it to the proxy pipeline.

    ``path`` is the request target (path plus query). ``authority`` is ``:authority`` (or the
    ``Host`` header on HTTP/1.1); ``host_header`` is a separate ``Host`` field when the client
    sent one next to ``:authority``. ``body`` is None when the request ended with its headers.
    """

    method: bytes
    scheme: bytes
    authority: bytes
    path: bytes
    headers: Headers
    protocol: str
    client_address: tuple[str, int]
    body: DownstreamBody | None = None
    content_length: int | None = None
    host_header: bytes | None = None
    #: original destination connection ID of the client's QUIC connection (HTTP/3 only)
    quic_connection_id: bytes | None = None
    #: the request head arrived in QUIC 0-RTT, before the handshake completed (replayable)
    early_data: bool = False
    #: what the connection's handshake said (SNI, client certificate), one object per connection
    tls: ConnectionTls = NO_TLS_INFO


class ResponseSink(Protocol):
    """Interface the pipeline writes a response to; each ingress protocol implements it.

    ``send_data`` returns only once the data was accepted within the protocol's flow-control
    and buffer bounds, which is how a slow client slows the backend read down.
    """

    @property
    def headers_sent(self) -> bool:
        """The response head went out (after that, an error can only reset the stream)."""
        ...

    async def send_headers(self, status: int, headers: Headers, *, end_stream: bool = False) -> None:
        """Send the response head; ``end_stream`` when there is no body."""

    async def send_data(self, data: bytes, *, end_stream: bool = False) -> None:
        """Send body bytes, waiting while the client's window or our send buffer is full."""

    async def send_trailers(self, trailers: Headers) -> None:
        """Send trailers and end the response."""

    def reset(self, reason: str) -> None:
        """Abort the response stream (after headers were sent, the only honest error signal)."""


class _TunnelSide(Protocol):
    """What a tunnel needs of a stream's response sink (HTTP/2 and HTTP/3 sinks have it)."""

    finished: bool
    aborted: bool

    async def send_data(self, data: bytes, *, end_stream: bool = False) -> None: ...


class StreamTunnel:
    """The client side of a tunnel carried on one HTTP/2 or HTTP/3 request stream (RFC 8441
    extended CONNECT, RFC 9114 CONNECT): the request body's DATA frames in, the response's
    DATA frames out; a byte stream for the relay in ``proxy/tunnel.py``.

    ``sink`` is the protocol's response sink (with ``finished``/``aborted`` flags), ``body``
    the stream's request body.
    """

    supports_half_close = True

    def __init__(self, sink: _TunnelSide, body: DownstreamBody) -> None:
        self._sink = sink
        self._body = body

    async def receive_some(self) -> bytes:
        try:
            return await self._body.receive()
        except RequestBodyError:
            return b""

    async def send_all(self, data: bytes) -> None:
        await self._sink.send_data(data)

    async def send_eof(self) -> None:
        if not self._sink.finished and not self._sink.aborted:
            await self._sink.send_data(b"", end_stream=True)
