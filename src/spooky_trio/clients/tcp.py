"""A compact one-request HTTP/1.1 and HTTP/2 client over TCP, TLS by default.

Used by ``spooky-trio request --http 2|1.1`` (the operator's client, pointed at the proxy).
One connection, one request, no pooling or redirects; the response is streamed to a
:class:`ResponseSink` as it arrives.

Connecting (TCP, TLS with the command's trust options, ALPN) is this module's own, shared
by both versions, so that its failures are the one-line messages the command prints.

HTTP/1.1 reuses the proxy's HTTP/1.1 client instead of a second h11 loop:
:class:`~spooky_trio.upstream.h1.H1Connection` on the stream opened here
(:meth:`~spooky_trio.upstream.h1.H1Connection.exchange`), so request-head serialization,
the concurrent body upload, response parsing and protocol-error mapping exist once. Only
the connection class is used, never the pool. What that means for the command: ``Host``
comes from the URL unless ``-H Host:`` overrides it, ``content-length`` or chunked framing
is derived from the body (a ``transfer-encoding`` header asks for chunked), and errors
read "... from host:port ..." like the proxy's logs.

HTTP/2 keeps its own small h2 loop: the upstream HTTP/2 engine is a multiplexing pool
engine (a connection task in the pool's nursery, per-stream flow-control windows, GOAWAY
handling), which a one-shot command does not need.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterator
from typing import Protocol

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import trio

from spooky_trio.clients.errors import TcpClientError
from spooky_trio.http.messages import UpstreamRequest
from spooky_trio.upstream.errors import UpstreamError
from spooky_trio.upstream.h1 import H1Connection

Headers = list[tuple[bytes, bytes]]
READ_SIZE = 65536


class ResponseSink(Protocol):
    """Receives one response as it arrives (headers first, then body chunks, then the end)."""

    def start(self, http_version: str, status: int, headers: Headers) -> None:
        """The final response head (interim 1xx responses are not reported)."""

    def data(self, chunk: bytes) -> None:
        """A piece of the body."""

    def end(self, trailers: Headers) -> None:
        """The response is complete; ``trailers`` may be empty."""


def tls_context(alpn: str, *, cafile: str | None, verify: bool) -> ssl.SSLContext:
    """A client TLS context offering exactly ``alpn``."""
    ctx = ssl.create_default_context(cafile=cafile)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([alpn])
    return ctx


def _os_error_text(exc: OSError) -> str:
    """The most specific message: trio reports "all attempts failed" with the causes chained."""
    cause: BaseException | None = exc.__cause__
    while isinstance(cause, BaseExceptionGroup):
        cause = cause.exceptions[0]
    if isinstance(cause, OSError):
        return cause.strerror or str(cause)
    return exc.strerror or str(exc)


async def open_stream(
    host: str, port: int, *, tls: bool, alpn: str, server_name: str | None, cafile: str | None, verify: bool
) -> trio.abc.Stream:
    """Connect (and complete the TLS handshake); raise :class:`TcpClientError` on failure."""
    try:
        tcp = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        raise TcpClientError(f"cannot connect to {host}:{port}: {_os_error_text(exc)}") from None
    if not tls:
        return tcp
    try:
        ctx = tls_context(alpn, cafile=cafile, verify=verify)
    except (OSError, ssl.SSLError) as exc:
        await tcp.aclose()
        raise TcpClientError(f"cannot load CA file {cafile}: {exc}") from None
    stream = trio.SSLStream(tcp, ctx, server_hostname=server_name or host, https_compatible=True)
    try:
        await stream.do_handshake()
    except trio.BrokenResourceError as exc:
        await tcp.aclose()
        cause = exc.__cause__
        detail = getattr(cause, "verify_message", None) or getattr(cause, "reason", None) or str(cause or exc)
        raise TcpClientError(f"TLS handshake with {host}:{port} failed: {detail}") from None
    negotiated = stream.selected_alpn_protocol()
    if alpn == "h2" and negotiated != "h2":
        await stream.aclose()
        raise TcpClientError(f"{host}:{port} did not negotiate HTTP/2 (ALPN {negotiated!r})")
    return stream


async def _receive(stream: trio.abc.Stream) -> bytes:
    try:
        return bytes(await stream.receive_some(READ_SIZE))  # (trio streams hand out bytes: no copy)
    except trio.BrokenResourceError as exc:
        raise TcpClientError(f"connection broken: {exc.__cause__ or exc}") from None


async def _send(stream: trio.abc.Stream, data: bytes) -> None:
    if not data:
        return
    try:
        await stream.send_all(data)
    except trio.BrokenResourceError as exc:
        raise TcpClientError(f"connection broken: {exc.__cause__ or exc}") from None


async def exchange_h11(stream: trio.abc.Stream, peer: str, method: str, authority: str, path: str, headers: Headers, body: bytes | None, sink: ResponseSink) -> None:
    """One HTTP/1.1 request/response on ``stream`` (the upstream client, module docstring);
    ``peer`` names the server in errors. ``connection: close`` unless ``headers`` say otherwise."""
    names = {k.lower() for k, _ in headers}
    host = next((v for k, v in headers if k.lower() == b"host"), authority.encode("ascii"))
    if b"connection" not in names:
        headers = [*headers, (b"connection", b"close")]
    request = UpstreamRequest(
        method=method.encode("ascii"),
        target=path.encode("ascii"),
        authority=host,
        headers=headers,
        body=None if body is None else _whole(body),
        content_length=None if body is None or b"transfer-encoding" in names else len(body),
    )
    try:
        async with H1Connection(stream, peer).exchange(request, response_timeout=math.inf) as response:
            sink.start("1.1", response.status, response.headers)
            while chunk := await response.receive():
                sink.data(chunk)
            sink.end(response.trailers)
    except UpstreamError as exc:
        raise TcpClientError(str(exc)) from None


async def _whole(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def exchange_h2(stream: trio.abc.Stream, method: str, scheme: str, authority: str, path: str, headers: Headers, body: bytes | None, sink: ResponseSink) -> None:
    """One HTTP/2 request/response on ``stream``, honouring the server's flow control."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    stream_id = conn.get_next_available_stream_id()
    head = [(b":method", method.encode("ascii")), (b":scheme", scheme.encode("ascii")), (b":authority", authority.encode("ascii")), (b":path", path.encode("utf-8"))]
    head += [(k.lower(), v) for k, v in headers]
    if body is not None and not any(k.lower() == b"content-length" for k, _ in headers):
        head.append((b"content-length", str(len(body)).encode("ascii")))
    pending = memoryview(body or b"")
    try:
        conn.send_headers(stream_id, head, end_stream=body is None)
        sending = body is not None
        while True:
            while sending:  # as much body as the flow-control windows allow
                size = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size, len(pending))
                if size <= 0 and pending:
                    break
                conn.send_data(stream_id, bytes(pending[:size]), end_stream=size == len(pending))
                pending = pending[size:]
                sending = bool(pending)
            await _send(stream, conn.data_to_send())
            data = await _receive(stream)
            if not data:
                raise TcpClientError("connection closed before the response was complete")
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                    status = next(int(v) for k, v in event.headers if k == b":status")
                    sink.start("2", status, [(k, v) for k, v in event.headers if not k.startswith(b":")])
                elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream_id:
                    conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                    sink.data(event.data)
                elif isinstance(event, h2.events.TrailersReceived) and event.stream_id == stream_id:
                    trailers = list(event.headers)
                    sink.end(trailers)
                    if not event.stream_ended:
                        raise TcpClientError("trailers without END_STREAM")
                    return
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                    sink.end([])
                    return
                elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream_id:
                    raise TcpClientError(f"stream reset by the server (HTTP/2 error code {int(event.error_code or 0)})")
                elif isinstance(event, h2.events.ConnectionTerminated):
                    raise TcpClientError(f"connection terminated by the server (HTTP/2 error code {int(event.error_code or 0)})")
    except h2.exceptions.ProtocolError as exc:
        raise TcpClientError(f"HTTP/2 protocol error: {exc}") from None


async def fetch(
    *,
    method: str,
    scheme: str,
    host: str,
    port: int,
    authority: str,
    path: str,
    headers: Headers,
    body: bytes | None,
    http_version: str,
    sink: ResponseSink,
    cafile: str | None = None,
    verify: bool = True,
) -> None:
    """Perform one request with HTTP/1.1 (``http_version="1.1"``) or HTTP/2 (``"2"``); TLS
    for ``https`` (ALPN ``http/1.1`` or ``h2``), cleartext for ``http`` (h2 prior knowledge)."""
    if http_version not in ("1.1", "2"):
        raise ValueError(f"unsupported HTTP version {http_version!r}")
    alpn = "h2" if http_version == "2" else "http/1.1"
    stream = await open_stream(host, port, tls=scheme == "https", alpn=alpn, server_name=None, cafile=cafile, verify=verify)
    try:
        if http_version == "2":
            await exchange_h2(stream, method, scheme, authority, path, headers, body, sink)
        else:
            peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            await exchange_h11(stream, peer, method, authority, path, headers, body, sink)
    finally:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            try:
                await stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
