"""A compact one-request HTTP/1.1 (h11) and HTTP/2 (h2) client over TCP, TLS by default.

Used by ``spooky-trio request --http 2|1.1``. Deliberately small and self-contained (no
pooling, no redirects): one connection, one request, the response streamed to a
:class:`ResponseSink` as it arrives.
"""

from __future__ import annotations

import ssl
from typing import Protocol

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h11
import trio

from spooky_trio.clients.errors import TcpClientError

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
        return await stream.receive_some(READ_SIZE)
    except trio.BrokenResourceError as exc:
        raise TcpClientError(f"connection broken: {exc.__cause__ or exc}") from None


async def _send(stream: trio.abc.Stream, data: bytes) -> None:
    if not data:
        return
    try:
        await stream.send_all(data)
    except trio.BrokenResourceError as exc:
        raise TcpClientError(f"connection broken: {exc.__cause__ or exc}") from None


async def exchange_h11(stream: trio.abc.Stream, method: str, authority: str, path: str, headers: Headers, body: bytes | None, sink: ResponseSink) -> None:
    """One HTTP/1.1 request/response on ``stream``."""
    conn = h11.Connection(h11.CLIENT)
    head = [(b"host", authority.encode("ascii")), *headers]
    names = {k.lower() for k, _ in headers}
    if body is not None and b"content-length" not in names and b"transfer-encoding" not in names:
        head.append((b"content-length", str(len(body)).encode("ascii")))
    if b"connection" not in names:
        head.append((b"connection", b"close"))
    try:
        out = conn.send(h11.Request(method=method, target=path, headers=head))
        if body:
            out += conn.send(h11.Data(data=body))
        out += conn.send(h11.EndOfMessage())
        await _send(stream, out)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await _receive(stream))
            elif isinstance(event, h11.Response):
                sink.start("1.1", event.status_code, list(event.headers))
            elif isinstance(event, h11.Data):
                sink.data(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                sink.end(list(event.headers))
                return
            elif isinstance(event, h11.ConnectionClosed):
                raise TcpClientError("connection closed before the response was complete")
    except h11.ProtocolError as exc:
        raise TcpClientError(f"HTTP/1.1 protocol error: {exc}") from None


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
                    raise TcpClientError(f"stream reset by the server (HTTP/2 error code {int(event.error_code)})")
                elif isinstance(event, h2.events.ConnectionTerminated):
                    raise TcpClientError(f"connection terminated by the server (HTTP/2 error code {int(event.error_code)})")
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
            await exchange_h11(stream, method, authority, path, headers, body, sink)
    finally:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            try:
                await stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
