"""HTTP/1.1 ingress on a TLS stream (h11), with the request-smuggling and slowloris defences.

One :class:`H1ServerConnection` per connection serves its requests one after another. Reads
happen only when the pipeline asks for body bytes (backpressure); responses are written with
``send_all``. Framing problems (Content-Length together with Transfer-Encoding, obs-fold,
bad chunk sizes, malformed heads) get 400 and the connection closes; the request never
reaches the proxy pipeline when the problem is in the head or the first body chunk. CONNECT
is not served over HTTP/1.1 (tunnels here are 101 upgrades; CONNECT needs HTTP/2 or
HTTP/3): it gets 501 and the connection closes, so bytes after it are never read as requests.
"""

from __future__ import annotations

import logging
import re
import socket
from typing import TYPE_CHECKING

import h11
import trio

from spooky_trio.http.errors import ErrorResponse, reason_phrase
from spooky_trio.http.messages import DownstreamRequest, Headers, RequestBodyError
from spooky_trio.ingress.tls import client_headers

if TYPE_CHECKING:
    from spooky_trio.ingress.bootstrap import ServeContext

log = logging.getLogger("spooky.ingress.h1")

RECEIVE_SIZE = 64 * 1024
#: after the last response, how long we read and discard the client's bytes before closing,
#: so the client reads our final response instead of a TCP reset
LINGER_SECONDS = 1.0
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_OBS_FOLD = re.compile(rb"\n[ \t]")


class _Reject(Exception):
    """Answer with ``status`` and close the connection; the chain is not involved.
    ``request``: what is known of the refused request (for its access-log line)."""

    def __init__(self, status: int, reason: str, message: str, request: DownstreamRequest | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message
        self.request = request


def raw_response(status: int, headers: Headers, body: bytes) -> bytes:
    """A complete ``connection: close`` response serialized by hand (h11 may be in ERROR);
    ``content-length`` is set from ``body`` (one in ``headers`` is dropped)."""
    lines = [f"HTTP/1.1 {status} {reason_phrase(status)}".encode("ascii")]
    lines += [n + b": " + v for n, v in headers if n != b"content-length"]
    lines += [b"content-length: " + str(len(body)).encode("ascii"), b"connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class _ClosingAnswerSink:
    """The sink of an answer given before a request could be served (a malformed or slow
    head): the whole response is written in one piece with ``connection: close``, by hand,
    because h11 may be in its ERROR state."""

    def __init__(self, conn: H1ServerConnection) -> None:
        self._conn = conn
        self._head: tuple[int, Headers] | None = None
        self.headers_sent = False

    async def send_headers(self, status: int, headers: Headers, *, end_stream: bool = False) -> None:
        self._head = (status, self._conn.ctx.response_headers(headers))
        self.headers_sent = True
        if end_stream:
            await self.send_data(b"", end_stream=True)

    async def send_data(self, data: bytes, *, end_stream: bool = False) -> None:
        assert self._head is not None and end_stream, "an answer is one head and one body"
        status, headers = self._head
        async with self._conn._send_lock:
            await self._conn.stream.send_all(raw_response(status, headers, data))

    async def send_trailers(self, trailers: Headers) -> None:
        raise AssertionError("an answer has no trailers")

    def reset(self, reason: str) -> None:
        """Nothing to reset: the connection closes after the answer."""


class H1RequestBody:
    """The request body: pulls from the connection only when ``receive`` is called."""

    def __init__(self, conn: H1ServerConnection) -> None:
        self._conn = conn
        self._first: bytes | None = None
        self.ended = False

    async def prefetch(self) -> None:
        """Read the first chunk before the request is forwarded (framing errors surface here)."""
        self._first = await self.receive()

    async def receive(self) -> bytes:
        if self._first is not None:
            chunk, self._first = self._first, None
            return chunk
        if self.ended:
            return b""
        chunk = await self._conn.next_body_chunk()
        if not chunk:
            self.ended = True
        return chunk


class H1ResponseSink:
    """Writes one response on the connection; ``send_all`` is the backpressure."""

    def __init__(self, conn: H1ServerConnection, method: bytes) -> None:
        self._conn = conn
        self._method = method
        self._chunked = False
        self.headers_sent = False
        self.finished = False
        self.aborted = False
        self.tunnelled = False

    async def send_headers(self, status: int, headers: Headers, *, end_stream: bool = False) -> None:
        conn = self._conn
        out = conn.ctx.response_headers(headers)
        has_length = any(n == b"content-length" for n, _ in out)
        if end_stream and not has_length and self._method != b"HEAD" and status not in (204, 304):
            out.append((b"content-length", b"0"))
            has_length = True
        if conn.close_after_response():
            out.append((b"connection", b"close"))
        self._chunked = not has_length and (conn.h11.their_http_version or b"1.0") >= b"1.1"
        await conn.send(h11.Response(status_code=status, headers=out, reason=reason_phrase(status, "").encode()))
        self.headers_sent = True
        if end_stream:
            await conn.send(h11.EndOfMessage())
            self.finished = True

    async def send_data(self, data: bytes, *, end_stream: bool = False) -> None:
        if data:
            await self._conn.send(h11.Data(data=data))
        if end_stream:
            await self._conn.send(h11.EndOfMessage())
            self.finished = True

    async def send_trailers(self, trailers: Headers) -> None:
        # trailers exist only in chunked framing; with a content-length they are dropped
        await self._conn.send(h11.EndOfMessage(headers=trailers if self._chunked else []))
        self.finished = True

    def reset(self, reason: str) -> None:
        self.aborted = True

    async def open_tunnel(self, headers: Headers) -> H1Tunnel:
        """Answer 101 Switching Protocols with ``headers`` and hand over the raw stream."""
        conn = self._conn
        await conn.send(h11.InformationalResponse(status_code=101, headers=conn.ctx.response_headers(headers)))
        self.headers_sent = self.finished = self.tunnelled = True
        leftover, _closed = conn.h11.trailing_data
        return H1Tunnel(conn.stream, leftover)


class H1Tunnel:
    """The client side of a relay after 101: raw bytes on the TLS stream."""

    supports_half_close = False

    def __init__(self, stream: trio.SSLStream[trio.SocketStream], leftover: bytes) -> None:
        self._stream = stream
        self._leftover = leftover

    async def receive_some(self) -> bytes:
        if self._leftover:
            data, self._leftover = self._leftover, b""
            return data
        try:
            return bytes(await self._stream.receive_some(RECEIVE_SIZE))  # (trio streams hand out bytes: no copy)
        except trio.BrokenResourceError:
            return b""

    async def send_all(self, data: bytes) -> None:
        await self._stream.send_all(data)

    async def send_eof(self) -> None:
        """TLS over TCP cannot half-close; the relay closes the whole connection instead."""


class H1ServerConnection:
    """Serves HTTP/1.1 requests on one TLS connection until it closes (see module docstring)."""

    def __init__(self, ctx: ServeContext, stream: trio.SSLStream[trio.SocketStream], client_address: tuple[str, int], subject: bytes | None) -> None:
        self.ctx = ctx
        self.stream = stream
        self.client_address = client_address
        self.subject = subject
        limits = ctx.limits
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_headers_bytes + 8192)
        self.requests_served = 0
        self.draining = False
        self._idle_scope: trio.CancelScope | None = None
        self._send_lock = trio.Lock()
        self._body_error: str | None = None
        #: close by lingering (the client may have sent bytes we never read)
        self._linger = False

    def begin_drain(self) -> None:
        """Close at once when idle between requests; otherwise after the current response."""
        self.draining = True
        if self._idle_scope is not None:
            self._idle_scope.cancel()

    def close_after_response(self) -> bool:
        return self.draining or self.requests_served + 1 >= self.ctx.limits.max_requests_per_connection

    async def send(self, event: h11.Event) -> None:
        async with self._send_lock:
            data = self.h11.send(event)
            if data:
                await self.stream.send_all(data)

    async def run(self) -> None:
        """Serve until the client closes, an error, the keep-alive limits, or drain."""
        try:
            while True:
                try:
                    request = await self._read_head()
                    if request is None:
                        return
                    if not await self._serve(request):
                        return
                except _Reject as rej:
                    self.ctx.stats[f"h1_rejected.{rej.reason}"] += 1
                    log.debug("rejecting request from %s: %s %s", self.client_address, rej.status, rej.message)
                    self._linger = True
                    refused = rej.request or self._unknown_request()
                    await self.ctx.reject(refused, _ClosingAnswerSink(self), ErrorResponse(rej.status, rej.reason, rej.message))
                    return
                self.requests_served += 1
                self.h11.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await self._close()

    async def _close(self) -> None:
        """Close with TLS close_notify; or, when unread client bytes would turn our close into
        a TCP reset that can destroy the final response in flight, shut down our direction
        and discard what the client still sends for up to :data:`LINGER_SECONDS` first."""
        if self._linger or self.h11.their_state in (h11.SEND_BODY, h11.ERROR):
            tcp = self.stream.transport_stream
            with trio.move_on_after(LINGER_SECONDS):
                try:
                    tcp.socket.shutdown(socket.SHUT_WR)
                    while await tcp.receive_some(RECEIVE_SIZE):
                        pass
                except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, OSError):
                    pass
        else:
            with trio.move_on_after(LINGER_SECONDS):
                try:
                    await self.stream.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
                    pass
        await trio.aclose_forcefully(self.stream)

    async def _read_head(self) -> h11.Request | None:
        """The next request head, None when the connection should just close.

        The first request must arrive complete within ``header_timeout`` of the connection's
        start; later ones within ``header_timeout`` of their first byte, after at most
        ``keepalive_timeout`` of idleness. Raises :class:`_Reject` (400, 408, 431).
        """
        limits = self.ctx.limits
        now = trio.current_time()
        first = self.requests_served == 0
        header_deadline = now + limits.header_timeout if first else float("inf")
        idle_deadline = header_deadline if first else now + limits.keepalive_timeout
        got_bytes = bool(self.h11.trailing_data[0])
        while True:
            self._check_obs_fold()
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint if exc.error_status_hint in (400, 413, 414, 431, 501) else 400
                raise _Reject(status, "malformed_request" if status != 431 else "headers_too_large", str(exc)) from None
            if isinstance(event, h11.Request):
                return event
            if event is not h11.NEED_DATA:
                return None  # ConnectionClosed
            if self.draining and not got_bytes:
                return None
            with trio.CancelScope(deadline=header_deadline if got_bytes else idle_deadline) as scope:
                self._idle_scope = None if got_bytes else scope
                data = await self.stream.receive_some(RECEIVE_SIZE)
            self._idle_scope = None
            if scope.cancelled_caught:
                if self.draining and not got_bytes:
                    return None
                if got_bytes or first:
                    raise _Reject(408, "header_timeout", f"request head not complete within {limits.header_timeout:g}s")
                return None
            if data and not got_bytes:
                got_bytes = True
                header_deadline = min(header_deadline, trio.current_time() + limits.header_timeout)
            self.h11.receive_data(bytes(data))

    def _check_obs_fold(self) -> None:
        # h11 silently unfolds obsolete line folding; a proxy must reject it (RFC 9112 5.2)
        if self.h11.their_state is not h11.IDLE:
            return
        pending = self.h11.trailing_data[0].lstrip(b"\r\n")
        end = _HEAD_END.search(pending)
        if end is not None and _OBS_FOLD.search(pending, 0, end.start() + 1):
            raise _Reject(400, "obs_fold", "obsolete line folding in the request head")

    def _unknown_request(self, method: bytes = b"", target: bytes = b"", host: bytes = b"") -> DownstreamRequest:
        """What the access log shows of a request refused before it could be built."""
        return DownstreamRequest(method=method, scheme=b"https", authority=host, path=target, headers=[],
                                 protocol="HTTP/1.1", client_address=self.client_address)

    def _build(self, event: h11.Request) -> tuple[DownstreamRequest, H1RequestBody | None]:
        """The request for ``event``; raises :class:`_Reject` for a head we do not serve."""
        headers: Headers = [(bytes(n), bytes(v)) for n, v in event.headers]
        names = {n for n, _ in headers}

        def refused(status: int, reason: str, message: str) -> _Reject:
            host = next((v for n, v in headers if n == b"host"), b"")
            return _Reject(status, reason, message, self._unknown_request(bytes(event.method), bytes(event.target), host))

        if b"content-length" in names and b"transfer-encoding" in names:
            raise refused(400, "ambiguous_framing", "both Content-Length and Transfer-Encoding")
        if event.method == b"CONNECT":
            # h11 switches protocols on any 2xx answer to CONNECT (then refuses to send the
            # response's end), and a client may already be sending tunnel bytes: refuse here
            raise refused(501, "connect_not_supported", "CONNECT is not supported over HTTP/1.1; use HTTP/2 or HTTP/3")
        error = self.ctx.head_limit_error(headers)
        if error is not None:
            raise refused(error.status, error.reason, error.message)
        host = next((v for n, v in headers if n == b"host"), None)
        target = bytes(event.target)
        authority, host_header = host or b"", None
        if target[:1] != b"/" and b"://" in target:  # absolute-form: its authority is :authority
            _scheme, _, rest = target.partition(b"://")
            authority, slash, path = rest.partition(b"/")
            target, host_header = slash + path or b"/", host
        declared = next((v for n, v in headers if n == b"content-length"), None)
        content_length = int(declared) if declared is not None else None
        chunked = b"transfer-encoding" in names
        body = H1RequestBody(self) if chunked or (content_length or 0) > 0 else None
        request = DownstreamRequest(
            method=bytes(event.method),
            scheme=b"https",
            authority=authority,
            path=target,
            headers=client_headers(headers, self.subject),
            protocol="HTTP/1.1" if event.http_version == b"1.1" else "HTTP/1.0",
            client_address=self.client_address,
            body=body,
            content_length=content_length,
            host_header=host_header,
        )
        return request, body

    async def _serve(self, event: h11.Request) -> bool:
        """Serve one request; True when the connection may carry another."""
        request, body = self._build(event)
        self._body_error = None
        if body is not None:
            with trio.move_on_after(self.ctx.limits.body_idle_timeout) as scope:
                try:
                    await body.prefetch()
                except RequestBodyError as exc:
                    raise _Reject(400, "bad_body_framing", str(exc), request) from None
            if scope.cancelled_caught:
                raise _Reject(408, "client_body_timeout", "no request body bytes in time", request)
        else:
            end = self.h11.next_event()  # a body-less request ends with its head
            assert isinstance(end, h11.EndOfMessage), end
        sink = H1ResponseSink(self, request.method)
        await self.ctx.serve_request(request, sink)
        if not sink.finished:
            if not sink.headers_sent and self._body_error is not None:
                raise _Reject(400, "bad_body_framing", self._body_error, request)
            return False
        if sink.tunnelled:
            return False
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE and not self.close_after_response()

    async def next_body_chunk(self) -> bytes:
        """Next request body bytes (b"" at the end); reads the socket only when needed.

        Raises :class:`RequestBodyError` when the body breaks HTTP/1.1 framing or the client
        goes away mid-body.
        """
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                self._body_error = str(exc)
                raise RequestBodyError(f"bad request body framing: {exc}") from None
            if isinstance(event, h11.Data):
                return bytes(event.data)
            if isinstance(event, h11.EndOfMessage):
                return b""
            if event is not h11.NEED_DATA:
                raise RequestBodyError("request body interrupted")
            if self.h11.they_are_waiting_for_100_continue:
                await self.send(h11.InformationalResponse(status_code=100, headers=[]))
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except trio.BrokenResourceError as exc:
                raise RequestBodyError("client connection broke mid-body") from exc
            self.h11.receive_data(bytes(data))
