"""HTTP/3 upstream connections: one QUIC connection to a backend, many request streams.

An :class:`H3Session` is the shared transport (:mod:`spooky_trio.upstream.h3_transport`:
one connected UDP socket, the aioquic timer as the deadline of the driver's cancel scope)
plus what a pool needs: the life of the connection as the HTTP/2 engine's state table
(``upstream/h2_state.py``; leaving STARTING here means the QUIC handshake completed, not a
SETTINGS frame), a stream budget, and the exchange API the HTTP/2 engine has
(:meth:`~H3Session.try_open_stream`, :meth:`~H3Session.start`, :meth:`~H3Session.release`).

* **Streams against MAX_STREAMS.** aioquic queues a stream opened beyond the peer's
  MAX_STREAMS without a word and tells nobody when the peer raises it. A session opens a
  stream only while ``bidi_streams_available()`` says the peer allows one (and below
  ``h3_pool_max_streams_per_connection``); after every receive burst it checks whether that
  budget grew and tells the pool, whose waiting requests then retry.
* **Liveness.** A backend that restarted drops our packets silently (aioquic reacts to no
  stateless reset): after :attr:`~H3Session.max_probe_timeouts` probe timeouts without an
  acknowledgement the connection counts as lost (about a second on loopback) instead of
  hanging until the idle timeout. While requests are outstanding and the backend has sent
  nothing for a second, a PING makes that rule apply to a backend that died after it had
  acknowledged a request (it would otherwise be met only by the response timeout).
* **Backpressure.** Request bodies are written a chunk at a time while the stream's unsent
  data stays below one chunk; response data earns the backend new credit only as the
  forward step takes it (:class:`~spooky_trio.upstream.h3_stream.H3Stream`).
* **0-RTT** is never used: every session completes its handshake before its first request,
  so no request (idempotent or not) can be replayed by an attacker as early data.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from functools import partial

import trio
from aioquic.h3.connection import ErrorCode
from aioquic.quic.configuration import QuicConfiguration
from cryptography.hazmat.primitives.serialization import Encoding

from spooky_trio.http.messages import UpstreamRequest
from spooky_trio.upstream.common import BackendTarget, ExchangeControl, pump_body
from spooky_trio.upstream.errors import UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout, UpstreamTLSError
from spooky_trio.upstream.h2_state import ConnInput, ConnState, next_state
from spooky_trio.upstream.h2_stream import request_headers
from spooky_trio.upstream.h3_errors import H3ConnectError, H3ConnectionLost, H3TLSError
from spooky_trio.upstream.h3_stream import H3Stream, StreamState
from spooky_trio.upstream.h3_transport import SEND_CHUNK, H3Transport, open_udp_socket
from spooky_trio.upstream.quic_engine import FlowControlledQuicConnection
from spooky_trio.upstream.tls import quic_trust, verify_identity

#: receive window of one stream (the most one slow response buffers), as for HTTP/2
STREAM_WINDOW = 1 << 20
#: receive window of a whole connection
CONNECTION_WINDOW = 16 << 20
#: methods a lost connection may resend (RFC 9110 9.2.2), when the request has no body
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
_STARTING, _OPEN, _DRAINING = ConnState.STARTING, ConnState.OPEN, ConnState.DRAINING


class H3Session(H3Transport):
    """A pooled HTTP/3 connection to ``backend`` (module docstring).

    ``on_change(session)`` runs (synchronously) whenever the session may take more streams
    than before or none any more: a stream released, the peer's stream budget grew, the
    handshake completed, GOAWAY, failure; ``on_closed(session)`` once when :meth:`run` ends.
    """

    max_probe_timeouts = 5
    keepalive = 1.0

    def __init__(
        self,
        sock: socket.socket,
        peer: tuple[object, ...],
        quic: FlowControlledQuicConnection,
        backend: BackendTarget,
        *,
        max_streams: int,
        on_change: Callable[[H3Session], None],
        on_closed: Callable[[H3Session], None],
    ) -> None:
        super().__init__(sock, peer, quic, str(backend), "")
        self.backend = backend
        self.max_streams = max_streams
        self.state = _STARTING
        self.active: dict[int, H3Stream] = {}
        self.idle_since = trio.current_time()
        self._on_change = on_change
        self._on_closed = on_closed
        #: the peer's stream budget as last seen: opening a stream lowers it, a MAX_STREAMS
        #: frame (handled while datagrams are read) raises it, and a rise wakes the pool
        self._budget = 0

    # -- pool-facing state --

    @property
    def active_streams(self) -> int:
        return len(self.active)

    @property
    def can_open_stream(self) -> bool:
        """OPEN, below ``max_streams`` and within the peer's MAX_STREAMS."""
        return self.state is _OPEN and len(self.active) < self.max_streams and self._quic.bidi_streams_available() > 0

    def _advance(self, event: ConnInput) -> None:
        self.state = next_state(self.state, event)

    def try_open_stream(self, request: UpstreamRequest) -> H3Stream | None:
        """Queue the request head on a new stream; None when this session cannot take it.
        The head goes out with :meth:`start`'s transmit."""
        if not self.can_open_stream:
            return None
        stream_id = self._quic.get_next_available_stream_id()
        state = StreamState(stream_id)
        self._streams[stream_id] = state
        self._quic.track_stream(stream_id)
        if request.method == b"HEAD":
            self._h3.head_requests.add(stream_id)
        bodiless = request.body is None
        try:
            self._h3.send_headers(stream_id, request_headers(request), end_stream=bodiless)
        except Exception:
            self._forget(state)
            raise
        state.send_done = bodiless
        self._budget = self._quic.bidi_streams_available()  # only MAX_STREAMS raises it again
        stream = H3Stream(self, state, replayable=bodiless, idempotent=request.method in _IDEMPOTENT)
        self.active[stream_id] = stream
        return stream

    async def start(self, stream: H3Stream, request: UpstreamRequest, *, nursery: trio.Nursery | None, control: ExchangeControl) -> None:
        """Send the head, start the body pump in ``nursery`` and wait for the response head.

        Raises :class:`UpstreamTimeout`, :class:`UpstreamProtocolError` or
        :class:`~spooky_trio.upstream.h3_stream.NotProcessed`."""
        await self._transmit()
        if request.body is None:
            control.request_done(complete=True)
        else:
            assert nursery is not None
            nursery.start_soon(pump_body, request.body, request.content_length, control,
                               partial(self._send_chunk, stream.state), partial(self._send_end, stream.state))
        with control.head_scope:
            await stream.wait_head()
            return
        raise UpstreamTimeout(f"{self.backend} sent no response headers within {control.response_timeout:g}s")

    async def _send_chunk(self, state: StreamState, chunk: bytes) -> None:
        view = memoryview(chunk)
        for offset in range(0, len(view), SEND_CHUNK):
            if self._error is not None or not await self.write_body(state, bytes(view[offset : offset + SEND_CHUNK])):
                raise UpstreamProtocolError(f"{self.backend} no longer takes the request body")

    async def _send_end(self, state: StreamState) -> None:
        if self._error is not None or not state.may_send:
            raise UpstreamProtocolError(f"{self.backend} no longer takes the request body")
        self._h3.send_data(state.stream_id, b"", end_stream=True)
        state.send_done = True
        await self._transmit()

    def consumed(self, state: StreamState) -> None:
        """The forward step took response data: credit the backend when half a window is due
        (the driver sends it; no await on the relay's path)."""
        self._quic.set_backlog(state.stream_id, state.buffered)
        if self._error is None and self._quic.credit_due(state.stream_id):
            self._wake_driver()

    def release(self, stream: H3Stream) -> None:
        """The exchange is over: abort what is unfinished and forget the stream (synchronous)."""
        if self.active.pop(stream.stream_id, None) is None:
            return
        self._forget(stream.state)
        if not self.active:
            self.idle_since = trio.current_time()
            if self.state is _DRAINING:
                self.close()
        self._on_change(self)

    def _forget(self, state: StreamState) -> None:
        self._forget_stream(state)

    def close(self) -> None:
        """Take no new streams; close (CONNECTION_CLOSE, H3_NO_ERROR) once none is active."""
        if self.state in (_STARTING, _OPEN):
            self._advance(ConnInput.DRAIN)
        if self.state is _DRAINING and not self.active:
            self._advance(ConnInput.GOAWAY_SENT)
            if self._error is None:
                self._quic.close(error_code=ErrorCode.H3_NO_ERROR, reason_phrase="idle")
                self._wake_driver()  # the driver sends it, then ends (close_event)
        self._on_change(self)

    def abort(self) -> None:
        """Fail at once: every stream fails, the driver stops."""
        self._fail(H3ConnectionLost(f"connection to {self.backend} aborted"))

    # -- the transport's hooks --

    def _process_events(self) -> None:
        super()._process_events()
        if self.state is _OPEN and self.goaway_received.is_set():
            self._advance(ConnInput.DRAIN)  # the streams it has finish; then we close
            if not self.active:
                self.close()
            else:
                self._on_change(self)
        budget = self._quic.bidi_streams_available()
        if budget > self._budget and self.state is _OPEN:
            self._on_change(self)
        self._budget = budget

    def _fail(self, error: H3ConnectError) -> None:
        if self._error is not None:
            return
        super()._fail(error)
        self._advance(ConnInput.FAIL)
        self._on_change(self)

    # -- life --

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drive the connection until it fails, is closed or cancelled; then close the socket.
        Never raises anything but Cancelled."""
        try:
            task_status.started()
            await self._drive()
        finally:
            self._fail(H3ConnectionLost(f"connection to {self.backend} closed"))
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()
            self._on_closed(self)

    async def handshake(self, deadline: float) -> None:
        """Wait for the QUIC handshake, then check ALPN and (without SNI) the identity.
        Raises :class:`UpstreamConnectError` or :class:`UpstreamTLSError`."""
        try:
            await self._wait_handshake(max(0.0, deadline - trio.current_time()))
        except H3TLSError as exc:
            raise UpstreamTLSError(f"TLS handshake with {self.backend} failed: {exc}") from None
        except H3ConnectError as exc:
            raise UpstreamConnectError(str(exc)) from None
        if self.alpn_protocol != "h3":
            raise UpstreamTLSError(f"TLS handshake with {self.backend} failed: ALPN negotiated {self.alpn_protocol!r}, 'h3' is required")
        backend = self.backend
        assert backend.ssl_context is not None
        sni_is_host = backend.server_name is not None and backend.server_name.rstrip(".").lower() == backend.host.rstrip(".").lower()
        if backend.ssl_context.verify_mode != ssl.CERT_NONE and not sni_is_host:
            # aioquic checks the name it sent as SNI; without one, the identity is ours to check
            certificate = self.peer_certificate
            if certificate is None:
                raise UpstreamTLSError(f"TLS handshake with {backend} failed: the backend sent no certificate")
            try:
                verify_identity(certificate.public_bytes(Encoding.DER), backend.host)
            except UpstreamTLSError as exc:
                raise UpstreamTLSError(f"TLS handshake with {backend} failed: {exc}") from None
        self._advance(ConnInput.SETTINGS)
        self._budget = self._quic.bidi_streams_available()
        self._on_change(self)


def quic_configuration(target: BackendTarget, *, idle_timeout: float) -> QuicConfiguration:
    """The client configuration for ``target``: ALPN h3, SNI ``server_name``, trust as the
    pool's ``upstream_tls`` (system roots plus its ``ca_file``/``ca_dir``, or no verification),
    the HTTP/2 engine's receive windows, and no session ticket (no 0-RTT)."""
    assert target.ssl_context is not None
    verify, cadata = quic_trust(target.ssl_context)
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=["h3"],
        server_name=target.server_name,
        verify_mode=ssl.CERT_REQUIRED if verify else ssl.CERT_NONE,
        idle_timeout=idle_timeout,
        max_stream_data=STREAM_WINDOW,
        max_data=CONNECTION_WINDOW,
    )
    if verify:
        paths = ssl.get_default_verify_paths()
        config.cafile, config.capath, config.cadata = paths.cafile, paths.capath, cadata
    return config


async def open_session(
    target: BackendTarget,
    nursery: trio.Nursery,
    *,
    deadline: float,
    idle_timeout: float,
    max_streams: int,
    on_change: Callable[[H3Session], None],
    on_closed: Callable[[H3Session], None],
) -> H3Session:
    """Dial ``target`` (its ``connect_host`` when set), run the session in ``nursery`` and
    wait for the handshake by ``deadline``. Raises :class:`UpstreamConnectError` or
    :class:`UpstreamTLSError`; nothing is left running then."""
    config = quic_configuration(target, idle_timeout=idle_timeout)
    with trio.move_on_at(deadline) as scope:
        try:
            sock, peer = await open_udp_socket(target.connect_host or target.host, target.port)
        except H3ConnectError as exc:
            raise UpstreamConnectError(f"connect to {target} failed: {exc}") from None
    if scope.cancelled_caught:  # (resolving the name took the whole connect timeout)
        raise UpstreamConnectError(f"connect to {target} timed out")
    quic = FlowControlledQuicConnection(configuration=config)
    session = H3Session(sock, peer, quic, target, max_streams=max_streams, on_change=on_change, on_closed=on_closed)
    quic.connect(peer, now=trio.current_time())
    await nursery.start(session.run)
    try:
        await session.handshake(deadline)
    except BaseException:
        session.abort()
        raise
    return session
