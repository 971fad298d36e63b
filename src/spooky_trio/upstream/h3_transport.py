"""One HTTP/3 client connection on Trio: the machinery under the upstream HTTP/3 pool
(:class:`~spooky_trio.upstream.h3.H3Session`) and the operator's client
(:class:`~spooky_trio.clients.h3.H3Client`).

:class:`H3Transport` owns the UDP socket and the aioquic objects and runs the driver task
(receive burst -> process events -> transmit once; aioquic timers as the deadline of the
cancel scope the driver sleeps in, like the ingress's connection task). Each request API
lives with its user; what they share is here: the driver, the per-stream state the driver
fills (:class:`~spooky_trio.upstream.h3_stream.StreamState`), receive credit returned as the
application reads, and request-body writes that wait while the stream's unsent data is
above one chunk (:meth:`H3Transport.write_body`).
"""

from __future__ import annotations

import math
import socket

import trio
from aioquic.h3.connection import ErrorCode
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    StopSendingReceived,
    StreamReset,
)
from cryptography import x509

from spooky_trio.upstream.h3_errors import H3ConnectError, H3ConnectionLost, H3TLSError
from spooky_trio.upstream.h3_stream import StreamState
from spooky_trio.upstream.quic_engine import (
    FlowControlledQuicConnection,
    GoawayAwareH3Connection,
)

MAX_BURST = 256  #: datagrams read before the driver processes events and transmits
SEND_CHUNK = 64 * 1024  #: body bytes written to aioquic at a time, and the unsent-data bound
#: QUIC CRYPTO_ERROR codes (0x100 + TLS alert, RFC 9001 4.8): a failed TLS handshake
_CRYPTO_ERRORS = range(0x100, 0x200)


async def open_udp_socket(host: str, port: int, *, local_host: str | None = None) -> tuple[socket.socket, tuple[object, ...]]:
    """A connected, non-blocking UDP socket to ``host:port`` (resolved here) and the peer
    address; connected so that an ICMP "port unreachable" surfaces as ECONNREFUSED at once.
    Raises :class:`H3ConnectError`."""
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise H3ConnectError(f"cannot resolve {host}: {exc}") from None
    family, _type, _proto, _name, peer = infos[0]
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError as exc:
        raise H3ConnectError(f"cannot create a UDP socket for {host}:{port}: {exc}") from None
    try:
        sock.setblocking(False)
        if local_host is not None:
            sock.bind((local_host, 0))
        sock.connect(peer)
    except OSError as exc:
        sock.close()
        raise H3ConnectError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
    return sock, tuple(peer)


class H3Transport:
    """One QUIC connection driven on a connected, non-blocking UDP socket.

    Shared-state rules: aioquic is only touched synchronously (no await in between), and
    every transmit goes through :meth:`_transmit`, which a lock serialises.
    """

    #: consecutive probe timeouts without an acknowledgement after which an established
    #: connection counts as lost (None: wait for the idle timeout, as aioquic does). A peer
    #: that restarted drops our packets silently; this finds it in a few round trips.
    max_probe_timeouts: int | None = None
    #: while requests are outstanding, a PING after this many seconds without a datagram
    #: from the peer (None: never), so that a peer gone silent under a request that it had
    #: acknowledged meets the probe-timeout rule above instead of the idle timeout
    keepalive: float | None = None

    def __init__(self, sock: socket.socket, peer: tuple[object, ...], quic: FlowControlledQuicConnection, target: str, authority: str) -> None:
        self._sock = sock
        self._peer = peer
        self._quic = quic
        self._h3 = GoawayAwareH3Connection(quic)
        self._target = target
        self._authority = authority
        self._streams: dict[int, StreamState] = {}
        self._send_lock = trio.Lock()
        self._progress = trio.Event()  # set and replaced after every transmit
        self._handshake_event = trio.Event()
        self._handshake_complete = False
        self._error: H3ConnectError | None = None
        self._closing = False
        self._drive_scope = trio.CancelScope()
        self._timer_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._last_received = trio.current_time()
        self.alpn_protocol: str | None = None
        #: Set when the server sent an HTTP/3 GOAWAY; new ``request()`` calls then fail.
        self.goaway_received = trio.Event()

    async def _wait_handshake(self, timeout: float) -> None:
        with trio.move_on_after(timeout):
            await self._handshake_event.wait()
        if self._error is not None:
            raise self._fresh_error()
        if not self._handshake_complete:
            self._fail(H3ConnectError(f"timed out after {timeout:g}s waiting for the QUIC handshake with {self._target}"))
            raise self._fresh_error()

    async def wait_handshake(self, timeout: float = 10.0) -> None:
        """Wait for the handshake (after a 0-RTT ``connect``); raises :class:`H3ConnectError`."""
        await self._wait_handshake(timeout)

    @property
    def early_data_accepted(self) -> bool:
        """The server accepted our 0-RTT early data (meaningful once the handshake completed)."""
        tls = getattr(self._quic, "tls", None)
        return bool(tls is not None and tls.early_data_accepted)

    @property
    def session_resumed(self) -> bool:
        """The handshake resumed a session from a ticket."""
        tls = getattr(self._quic, "tls", None)
        return bool(tls is not None and tls.session_resumed)

    async def aclose(self) -> None:
        """Close the connection (CONNECTION_CLOSE with H3_NO_ERROR); pending requests fail."""
        if self._closing:
            return
        self._closing = True
        if self._error is None:
            self._quic.close(error_code=ErrorCode.H3_NO_ERROR, reason_phrase="client closing")
            with trio.move_on_after(1.0):
                await self._transmit()
        self._fail(H3ConnectionLost(f"connection to {self._target} closed by the client"))

    # -- properties --------------------------------------------------------------------------

    @property
    def connection_id(self) -> bytes:
        """This client's current source connection ID."""
        return self._quic.host_cid

    @property
    def peer_connection_id(self) -> bytes:
        """The destination connection ID packets currently carry (issued by the server)."""
        return self._quic.peer_cid

    @property
    def original_destination_connection_id(self) -> bytes:
        """The random destination connection ID of the client's first Initial packet."""
        return self._quic.original_destination_connection_id

    @property
    def peer_certificate(self) -> x509.Certificate | None:
        """The server's leaf certificate from the handshake (None before it completed)."""
        return self._quic.peer_certificate

    @property
    def is_open(self) -> bool:
        """Whether the connection is established and not closed or failed."""
        return self._handshake_complete and self._error is None
    async def _consumed(self, state: StreamState) -> None:
        """The application read from ``state``: return receive credit if enough is due."""
        self._quic.set_backlog(state.stream_id, state.buffered)
        if self._error is None and self._quic.credit_due(state.stream_id):
            await self._transmit()

    async def write_body(self, state: StreamState, chunk: bytes) -> bool:
        """Queue one request-body chunk and wait until less than :data:`SEND_CHUNK` of the
        stream is unsent (the peer's flow control paces the rest); False if the request
        side can no longer be written (server STOP_SENDING, reset, failure)."""
        if not state.may_send:
            return False
        self._h3.send_data(state.stream_id, chunk, end_stream=False)
        await self._transmit()
        while self._quic.unsent_bytes(state.stream_id) >= SEND_CHUNK:
            await self._progress.wait()
            if not state.may_send:  # (the server or a failure may have stopped it meanwhile)
                return False
        return True

    # -- the driver ----------------------------------------------------------------------------

    async def _drive(self) -> None:
        """Receive, process, transmit; sleep until readable or aioquic's next timer."""
        with self._drive_scope:
            try:
                await self._transmit()  # the first Initial
                while self._error is None:
                    with trio.CancelScope(deadline=self._timer_deadline()) as timer_scope:
                        self._timer_scope = timer_scope
                        await trio.lowlevel.wait_readable(self._sock)
                    self._timer_scope = None
                    now = trio.current_time()
                    timer = self._quic.get_timer()
                    if timer is not None and timer <= now:
                        self._quic.handle_timer(now=now)
                        self._check_liveness()
                    if self._keepalive_due(now):
                        self._quic.send_ping(0)
                        self._last_received = now  # the next one a keepalive later; the PTO probes the rest
                    for _ in range(MAX_BURST):
                        try:
                            data = self._sock.recv(65536)
                        except BlockingIOError:
                            break
                        self._quic.receive_datagram(data, self._peer, now=now)
                        self._last_received = now
                    self._process_events()
                    await self._transmit()
            except OSError as exc:
                self._fail(self._connection_error(f"socket error: {exc.strerror or exc}"))
            except Exception as exc:  # noqa: BLE001 - never crash the caller's nursery
                self._fail(self._connection_error(f"internal error: {exc!r}"))

    def _check_liveness(self) -> None:
        limit = self.max_probe_timeouts
        if limit is not None and self._handshake_complete and self._quic.probe_timeouts >= limit:
            self._fail(H3ConnectionLost(f"connection to {self._target} lost: no acknowledgement after {limit} probe timeouts"))

    def _keepalive_due(self, now: float) -> bool:
        keepalive = self.keepalive
        return keepalive is not None and bool(self._streams) and self._handshake_complete and now >= self._last_received + keepalive

    def _timer_deadline(self) -> float:
        timer = self._quic.get_timer()
        deadline = math.inf if timer is None else timer
        keepalive = self.keepalive
        if keepalive is not None and self._streams and self._handshake_complete:
            deadline = min(deadline, self._last_received + keepalive)
        return deadline

    def _forget_stream(self, state: StreamState) -> None:
        """Stop tracking a stream; while the connection lives, cancel (H3_REQUEST_CANCELLED)
        whichever of its directions is unfinished, and transmit that now."""
        self._streams.pop(state.stream_id, None)
        self._h3.head_requests.discard(state.stream_id)
        self._quic.untrack_stream(state.stream_id)
        if self._error is None:
            stop = not state.receive_finished
            reset = not state.send_done and state.stop_sending_code is None
            if stop or reset:
                self._quic.abort_stream(state.stream_id, int(ErrorCode.H3_REQUEST_CANCELLED), stop_receiving=stop, reset_sending=reset)
                self._wake_driver()

    def _wake_driver(self) -> None:
        """Make the driver run a cycle (and transmit) now, e.g. after queuing an abort."""
        if self._timer_scope is not None:
            self._timer_scope.deadline = -math.inf

    async def _transmit(self) -> None:
        """Send everything aioquic has queued, then re-arm the driver's timer deadline."""
        async with self._send_lock:
            if self._error is not None:
                return
            try:
                for data, _addr in self._quic.datagrams_to_send(now=trio.current_time()):
                    while True:
                        try:
                            self._sock.send(data)
                            break
                        except BlockingIOError:
                            await trio.lowlevel.wait_writable(self._sock)
            except OSError as exc:
                self._fail(self._connection_error(f"socket error: {exc.strerror or exc}"))
                return
            if self._timer_scope is not None:
                self._timer_scope.deadline = self._timer_deadline()
            progress, self._progress = self._progress, trio.Event()
            progress.set()
            close = self._quic.close_event
            if close is not None:
                self._fail(self._terminated_error(close))

    def _process_events(self) -> None:
        while (event := self._quic.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                self._handshake_complete = True
                self.alpn_protocol = event.alpn_protocol
                self._handshake_event.set()
            elif isinstance(event, ConnectionTerminated):
                self._fail(self._terminated_error(event))
                return
            elif isinstance(event, (StreamReset, StopSendingReceived)):
                state = self._streams.get(event.stream_id)
                if state is not None:
                    if isinstance(event, StreamReset):
                        state.reset_code = event.error_code
                    else:
                        state.stop_sending_code = event.error_code
                    state.notify()
            for h3_event in self._h3.handle_event(event):
                self._dispatch(h3_event)
        if self._h3.goaway_seen and not self.goaway_received.is_set():
            self.goaway_received.set()

    def _dispatch(self, event: H3Event) -> None:
        if not isinstance(event, (HeadersReceived, DataReceived)) or event.push_id is not None:
            return
        state = self._streams.get(event.stream_id)
        if state is None:
            return  # a stream the application already gave up on
        if isinstance(event, HeadersReceived):
            state.on_headers(event.headers, event.stream_ended)
        else:
            state.on_data(event.data, event.stream_ended)
            self._quic.set_backlog(state.stream_id, state.buffered)
        state.notify()

    # -- failure -------------------------------------------------------------------------------

    def _connection_error(self, detail: str) -> H3ConnectError:
        if self._handshake_complete:
            return H3ConnectionLost(f"connection to {self._target} failed: {detail}")
        if "refused" in detail.lower():
            detail = f"connection refused (nothing listening on UDP {self._target}?)"
        return H3ConnectError(f"cannot connect to {self._target}: {detail}")

    def _terminated_error(self, event: ConnectionTerminated) -> H3ConnectError:
        reason = event.reason_phrase or "no reason given"
        detail = f"{reason} (error 0x{event.error_code:x})"
        if self._handshake_complete:
            return H3ConnectionLost(f"connection to {self._target} closed: {detail}")
        if event.error_code in _CRYPTO_ERRORS:
            return H3TLSError(f"QUIC handshake with {self._target} failed: {detail}")
        return H3ConnectError(f"QUIC handshake with {self._target} failed: {detail}")

    def _fail(self, error: H3ConnectError) -> None:
        """Mark the connection dead: wake every waiter and stop the driver (idempotent)."""
        if self._error is not None:
            return
        self._error = error
        for state in self._streams.values():
            # whether the peer got any of the request: decides if the pool may resend it
            state.reached = state.reached or self._quic.stream_data_acked(state.stream_id)
            state.error = error
            state.notify()
        self._handshake_event.set()
        progress, self._progress = self._progress, trio.Event()
        progress.set()
        self._drive_scope.cancel()

    def _fresh_error(self) -> H3ConnectError:
        error = self._error or H3ConnectionLost(f"connection to {self._target} is closed")
        return type(error)(*error.args)
