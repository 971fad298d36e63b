"""The HTTP/1.1 client: h11 over a Trio stream, one exchange at a time.

The process's only HTTP/1.1 client. Request-head serialization (Host and framing derived
from the :class:`UpstreamRequest`), the body pump, response-head parsing (1xx skipped, a
101 returned), the response-head timeout and the mapping of failures to
:class:`UpstreamProtocolError` / :class:`UpstreamTimeout` exist only here; dialling (and its
:class:`UpstreamConnectError` / ``UpstreamTLSError``) is
:func:`upstream.tls.open_backend_stream` via :func:`connect`. Its users:

* the pool (``upstream/pool.py``): keep-alive connections, one :meth:`H1Connection.start`
  per exchange; afterwards the connection goes back to the idle list
  (:attr:`H1Connection.reusable`) or is closed;
* WebSocket relays (``proxy/tunnel.py``): :func:`connect`, :meth:`H1Connection.upgrade`,
  then :meth:`H1Connection.detach` for the byte stream once the backend answered 101;
* ``spooky-trio request --http 1.1`` (``clients/tcp.py``): :meth:`H1Connection.exchange`
  on the stream it opened itself.

Backpressure: the stream is read only while a response head is awaited or when the consumer
calls :meth:`H1Response.receive`, one :data:`READ_CHUNK` at a time, so at most one read's
worth of body is ever buffered here.

Every byte goes through the stream's ``send_all``/``receive_some``; a plain TCP
``trio.SocketStream`` is wrapped in :class:`~spooky_trio.upstream.fd_stream.FdSocketStream`
(which says why, with the numbers).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import h11
import trio

from spooky_trio.http.messages import Headers, UpstreamRequest
from spooky_trio.upstream.common import (
    READ_CHUNK,
    BackendTarget,
    ExchangeControl,
    UpstreamResponse,
    exchange_scope,
    pump_body,
)
from spooky_trio.upstream.errors import (
    UnforwardableRequest,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from spooky_trio.upstream.fd_stream import FdSocketStream
from spooky_trio.upstream.h1_head import request_head
from spooky_trio.upstream.tls import open_backend_stream

#: request headers the engine owns (framing and Host are derived from the request)
_ENGINE_HEADERS = frozenset({b"host", b"content-length", b"transfer-encoding"})
#: methods whose bodiless requests still announce ``content-length: 0``
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})
_MAX_HEAD_BYTES = 64 * 1024


class StaleConnection(UpstreamProtocolError):
    """A reused idle connection turned out closed before any response byte arrived.

    Raised only while the request can be replayed (no body, or the body not yet read), so the
    pool may safely retry it once on a fresh connection.
    """


async def connect(target: BackendTarget, *, timeout: float) -> H1Connection:
    """A new connection to ``target`` (TCP, plus TLS for https) within ``timeout`` seconds.

    Raises :class:`UpstreamConnectError` or :class:`UpstreamTLSError` (nothing left open).
    """
    return H1Connection(await open_backend_stream(target, timeout=timeout, require_alpn=None), str(target))


class H1Connection:
    """One HTTP/1.1 client connection on ``stream``; ``peer`` names the server in errors.

    Used by one task (plus its body pump) at a time. Any failure or cancellation in the
    middle of I/O leaves it unusable (:attr:`reusable` False); :meth:`aclose` closes it.
    """

    def __init__(self, stream: trio.abc.Stream, peer: str) -> None:
        if isinstance(stream, trio.SocketStream):
            stream = FdSocketStream(stream)
        self.peer = peer
        self._stream = stream
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD_BYTES)
        #: trio time the connection last became idle
        self.idle_since = trio.current_time()
        #: completed exchanges; a connection with ``cycles > 0`` is a reused one
        self.cycles = 0
        self._broken = False
        self._closed = False
        self._sending = False  # a send_all is in flight (the body pump may still be writing)
        self._received_this_cycle = 0

    @property
    def reusable(self) -> bool:
        """Both sides finished cleanly and keep-alive is possible."""
        return (
            not self._broken
            and not self._closed
            and not self._sending
            and self._h11.our_state is h11.DONE
            and self._h11.their_state is h11.DONE
            and not self._h11.trailing_data[0]
        )

    def prepare_reuse(self) -> None:
        """Start the next h11 cycle; only valid when :attr:`reusable`."""
        self._h11.start_next_cycle()
        self.cycles += 1
        self.idle_since = trio.current_time()

    def looks_alive(self) -> bool:
        """False if the connection is closed, broken, or (idle and plain TCP) readable.

        An idle HTTP/1.1 connection must be silent; a readable socket means the server closed
        it (or broke the protocol), so it must not be reused. Other streams cannot be polled
        and count as alive.
        """
        if self._closed or self._broken:
            return False
        stream = self._stream
        return not (isinstance(stream, FdSocketStream) and stream.is_readable())

    async def aclose(self) -> None:
        """Close at once (no graceful shutdown needed for HTTP/1.1); safe under cancellation."""
        if not self._closed:
            self._closed = True
            await trio.aclose_forcefully(self._stream)

    async def _send(self, data: bytes) -> None:
        self._sending = True
        try:
            await self._stream.send_all(data)
            self._sending = False
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._broken = True
            raise UpstreamProtocolError(f"sending to {self.peer} failed: {exc or type(exc).__name__}") from exc
        except BaseException:
            self._broken = True
            raise

    def buffered_event(self) -> h11.Event | None:
        """The next h11 event from data already received; None if a read is needed."""
        try:
            event = self._h11.next_event()
        except h11.RemoteProtocolError as exc:
            self._broken = True
            raise UpstreamProtocolError(f"malformed HTTP/1.1 response from {self.peer}: {exc}") from exc
        # (identity tests: h11.Event is an ABC, and isinstance against it costs a microsecond)
        if event is h11.NEED_DATA:
            return None
        if event is h11.PAUSED:
            self._broken = True
            raise UpstreamProtocolError(f"{self.peer} sent data after the response")
        if type(event) is h11.ConnectionClosed:
            self._broken = True
            raise UpstreamProtocolError(f"{self.peer} closed the connection before the response ended")
        return event  # type: ignore[return-value]  # the sentinels were handled above

    async def next_event(self, *, retryable: bool = False) -> h11.Event:
        """The next h11 event, reading from the stream as needed (one chunk per read)."""
        while True:
            event = self.buffered_event()
            if event is not None:
                return event
            try:
                data = await self._stream.receive_some(READ_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._broken = True
                if retryable and self._received_this_cycle == 0:
                    raise StaleConnection(f"reused connection to {self.peer} was reset") from exc
                raise UpstreamProtocolError(f"connection to {self.peer} lost: {exc or type(exc).__name__}") from exc
            except BaseException:
                self._broken = True
                raise
            if not data and retryable and self._received_this_cycle == 0:
                self._broken = True
                raise StaleConnection(f"reused connection to {self.peer} was closed by the backend")
            self._received_this_cycle += len(data)
            self._h11.receive_data(bytes(data))  # (trio streams hand out bytes: no copy)

    def _request_head(self, request: UpstreamRequest) -> h11.Request:
        headers: Headers = [(b"host", request.authority)]
        headers.extend((name, value) for name, value in request.headers if name.lower() not in _ENGINE_HEADERS)
        if request.body is None:
            if request.method.upper() in _BODY_METHODS:
                headers.append((b"content-length", b"0"))
        elif request.content_length is not None:
            headers.append((b"content-length", str(request.content_length).encode("ascii")))
        else:
            headers.append((b"transfer-encoding", b"chunked"))
        return request_head(request.method, request.target, headers)

    async def start(self, request: UpstreamRequest, *, nursery: trio.Nursery | None, control: ExchangeControl) -> H1Response:
        """Send the request head, start the body pump in ``nursery``, return the response head.

        ``nursery`` may be None only for a bodiless request. Informational (1xx) responses are
        skipped, except a 101, which h11 accepts only for a request that proposed an upgrade
        (see :meth:`upgrade`). Raises :class:`StaleConnection` (reused connection, request
        still replayable, nothing received), :class:`UpstreamTimeout` (no head within the
        response timeout after the request was sent) or :class:`UpstreamProtocolError`.
        """
        retryable = self.cycles > 0 and request.body is None
        self._received_this_cycle = 0
        try:
            head = self._h11.send(self._request_head(request))
        except h11.LocalProtocolError as exc:
            raise UnforwardableRequest(f"cannot send this request over HTTP/1.1: {exc}") from exc
        if request.body is None:
            data = head + self._h11.send(h11.EndOfMessage())
            try:
                await self._send(data)
            except UpstreamProtocolError as exc:
                if retryable:
                    raise StaleConnection(str(exc)) from exc
                raise
            control.request_done(complete=True)
        else:
            assert nursery is not None, "a request with a body needs a nursery for its pump"
            try:
                await self._send(head)
            except UpstreamProtocolError as exc:
                if self.cycles > 0:  # the body was not touched yet: a retry is still safe
                    raise StaleConnection(str(exc)) from exc
                raise
            nursery.start_soon(pump_body, request.body, request.content_length, control, self._send_chunk, self._send_end)
        with control.head_scope:
            while True:
                event = await self.next_event(retryable=retryable)
                if isinstance(event, h11.Response):
                    return H1Response(self, event)
                if isinstance(event, h11.InformationalResponse):
                    if event.status_code == 101:
                        return H1Response(self, event)
                    continue
                self._broken = True
                raise UpstreamProtocolError(f"unexpected {type(event).__name__} from {self.peer} before the response head")
        self._broken = True
        raise UpstreamTimeout(f"{self.peer} sent no response headers within {control.response_timeout:g}s")

    @contextlib.asynccontextmanager
    async def exchange(self, request: UpstreamRequest, *, response_timeout: float) -> AsyncIterator[H1Response]:
        """One exchange on this connection outside any pool: :meth:`start` with the body
        pumped in a nursery around the block (:func:`~spooky_trio.upstream.common.exchange_scope`:
        an exception from ``request.body`` is raised unchanged). The connection stays open."""
        async with exchange_scope(response_timeout, pump=request.body is not None) as (nursery, control):
            yield await self.start(request, nursery=nursery, control=control)

    async def upgrade(self, request: UpstreamRequest, *, response_timeout: float) -> H1Response:
        """Send a bodiless ``request`` proposing a protocol switch (its headers carry
        ``connection: upgrade`` and ``upgrade: ...``) and return the server's answer.

        Status 101: the switch happened; :meth:`detach` hands over the byte stream. Any other
        status is an ordinary response (read its body with :meth:`H1Response.receive`).
        Raises like :meth:`start`; :class:`UpstreamTimeout` when no answer came within
        ``response_timeout`` seconds after the request was sent.
        """
        if request.body is not None:
            raise ValueError("an upgrade request has no body")
        return await self.start(request, nursery=None, control=ExchangeControl(trio.CancelScope(), response_timeout))

    def detach(self) -> tuple[trio.abc.Stream, bytes]:
        """After a 101: the byte stream and the bytes the server sent after the 101's head.

        The connection stops speaking HTTP (never reusable); :meth:`aclose` still closes the
        stream. Raises RuntimeError if the server did not switch protocols.
        """
        if self._h11.their_state is not h11.SWITCHED_PROTOCOL:
            raise RuntimeError(f"detach() needs a 101 answer; the server is in state {self._h11.their_state}")
        self._broken = True
        return self._stream, bytes(self._h11.trailing_data[0])

    async def _send_chunk(self, chunk: bytes) -> None:
        if self._broken:
            raise UpstreamProtocolError("connection unusable")
        await self._send(self._h11.send(h11.Data(data=chunk)))
        # a backend that always accepts must not let the body pump run without yielding
        await trio.lowlevel.checkpoint()

    async def _send_end(self) -> None:
        if self._broken:
            raise UpstreamProtocolError("connection unusable")
        await self._send(self._h11.send(h11.EndOfMessage()))


class H1Response(UpstreamResponse):
    """The response of one HTTP/1.1 exchange; reads its body from the connection on demand.

    A 101 (see :meth:`H1Connection.upgrade`) has no HTTP body: it is :attr:`complete` at once.
    """

    http_version = "1.1"

    def __init__(self, connection: H1Connection, head: h11.Response | h11.InformationalResponse) -> None:
        self._connection = connection
        self.status = head.status_code
        self.headers = [(bytes(name), bytes(value)) for name, value in head.headers]
        self.trailers: Headers = []
        # h11 knows from the request method when there is no body (HEAD); a 101 has none
        self._done = self.status == 101

    @property
    def complete(self) -> bool:
        return self._done

    @property
    def buffered_bytes(self) -> int:
        return len(self._connection._h11.trailing_data[0])

    def _body_event(self, event: h11.Event) -> bytes:
        if isinstance(event, h11.Data):
            return bytes(event.data)
        if isinstance(event, h11.EndOfMessage):
            self.trailers = [(bytes(name), bytes(value)) for name, value in event.headers]
            self._done = True
            return b""
        self._connection._broken = True
        raise UpstreamProtocolError(f"unexpected {type(event).__name__} in the response body")

    def receive_nowait(self) -> bytes | None:
        """Like :meth:`receive` from what h11 already holds; None when a read is needed."""
        while not self._done:
            event = self._connection.buffered_event()
            if event is None:
                return None
            chunk = self._body_event(event)
            if chunk:
                return chunk
        return b""

    async def receive(self) -> bytes:
        """Next body chunk or b"" at the end; see :meth:`UpstreamResponse.receive`."""
        while not self._done:
            chunk = self._body_event(await self._connection.next_event())
            if chunk:
                return chunk
        return b""
