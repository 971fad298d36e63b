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

from spooky_trio.http.errors import ErrorResponse
from spooky_trio.http.messages import NO_TLS_INFO, ConnectionTls, DownstreamRequest, Headers, RequestBodyError
from spooky_trio.http.headers import drop_connection_nominated
from spooky_trio.http.validate import TRANSPORT_SCHEME, check_head
from spooky_trio.ingress.h1_stream import (
    RECEIVE_SIZE,
    ClosingAnswerSink,
    H1RequestBody,
    H1ResponseSink,
)
from spooky_trio.ingress.tls import client_headers

if TYPE_CHECKING:
    from spooky_trio.ingress.bootstrap import ServeContext

log = logging.getLogger("spooky.ingress.h1")

#: after the last response, how long we read and discard the client's bytes before closing,
#: so the client reads our final response instead of a TCP reset
LINGER_SECONDS = 1.0
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_OBS_FOLD = re.compile(rb"\n[ \t]")


#: absolute-form request target (RFC 9112 3.2.2): scheme "://" authority [path] [?query]
_ABSOLUTE_FORM = re.compile(rb"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#]*)(?P<path>/[^?#]*)?(?P<query>\?[^#]*)?")


class _Reject(Exception):
    """Answer with ``status`` and close the connection; the chain is not involved.
    ``request``: what is known of the refused request (for its access-log line)."""

    def __init__(self, status: int, reason: str, message: str, request: DownstreamRequest | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message
        self.request = request


class H1ServerConnection:
    """Serves HTTP/1.1 requests on one TLS connection until it closes (see module docstring)."""

    def __init__(self, ctx: ServeContext, stream: trio.SSLStream[trio.SocketStream], client_address: tuple[str, int], subject: bytes | None,
                 tls: ConnectionTls = NO_TLS_INFO) -> None:
        self.ctx = ctx
        self.stream = stream
        self.client_address = client_address
        self.subject = subject
        self.tls = tls
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
                    await self.ctx.reject(refused, ClosingAnswerSink(self), ErrorResponse(rej.status, rej.reason, rej.message))
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
        absolute = _ABSOLUTE_FORM.fullmatch(target)
        if absolute is not None:  # RFC 9112 3.2.2: its authority replaces Host, in origin-form
            if absolute["scheme"].lower() != TRANSPORT_SCHEME:
                raise refused(400, "scheme_mismatch", f"the target's scheme must be {TRANSPORT_SCHEME.decode()}, the scheme this connection uses")
            authority, host_header = absolute["authority"], host
            target = (absolute["path"] or b"/") + (absolute["query"] or b"")
        error = check_head(bytes(event.method), target, headers, multiplexed=False, authority=authority if absolute else None)
        if error is not None:
            raise refused(error.status, error.reason, error.message)
        declared = next((v for n, v in headers if n == b"content-length"), None)
        content_length = int(declared) if declared is not None else None
        chunked = b"transfer-encoding" in names
        body = H1RequestBody(self) if chunked or (content_length or 0) > 0 else None
        request = DownstreamRequest(
            method=bytes(event.method),
            scheme=b"https",
            authority=authority,
            path=target,
            headers=client_headers(drop_connection_nominated(headers), self.subject),
            protocol="HTTP/1.1" if event.http_version == b"1.1" else "HTTP/1.0",
            client_address=self.client_address,
            body=body,
            content_length=content_length,
            host_header=host_header,
            tls=self.tls,
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
