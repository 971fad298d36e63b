"""One QUIC connection on the server: its aioquic state, HTTP/3 layer, timer and the
request stream tasks it owns. Datagrams are fed by the listener's receive loop.

aioquic's private state is read only through the named methods of
:class:`~spooky_trio.ingress.quic_engine.SpookyQuicConnection` and
:class:`~spooky_trio.ingress.h3.StreamScopedH3Connection` (tests/unit/test_aioquic_boundary.py).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import trio
from aioquic.h3.connection import ErrorCode
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.events import (
    ConnectionIdIssued,
    ConnectionIdRetired,
    ConnectionTerminated,
    HandshakeCompleted,
    StopSendingReceived,
    StreamReset,
)

from spooky_trio.http.errors import ErrorResponse
from spooky_trio.http.messages import ConnectionTls
from spooky_trio.http.validate import (
    MultiplexedHead,
    split_pseudo,
)
from spooky_trio.ingress.h3 import (
    H3RequestBody,
    H3ResponseSink,
    MalformedRequest,
    StreamScopedH3Connection,
)
from spooky_trio.ingress.multiplexed import (
    StreamTask,
    build_request,
    check_trailers,
    refusal,
    refused_request,
)
from spooky_trio.ingress.quic_engine import SpookyQuicConnection

if TYPE_CHECKING:
    from spooky_trio.ingress.quic import QuicListener

log = logging.getLogger("spooky.ingress.quic")


def _is_crypto_error(code: int) -> bool:
    """A QUIC CRYPTO_ERROR (0x0100-0x01ff: a TLS alert, RFC 9000 section 20.1)."""
    return 0x100 <= code <= 0x1FF


#: a request stream of this connection
_RequestStream = StreamTask[H3RequestBody, H3ResponseSink]


class QuicConnectionTask:
    """One QUIC connection: its aioquic state, H3 layer, timer and request stream tasks."""

    def __init__(self, listener: QuicListener, quic: SpookyQuicConnection, original_dcid: bytes, addr: tuple[str, int]) -> None:
        self.listener = listener
        self.quic = quic
        limits = listener.protocol
        self.h3 = StreamScopedH3Connection(
            quic,
            # like h2's MAX_HEADER_LIST_SIZE: well above the 431 limits, far below a QPACK bomb
            max_field_section_bytes=4 * limits.max_headers_bytes + 64 * limits.max_headers_count,
            max_field_lines=2 * limits.max_headers_count + 16,
        )
        self.original_dcid = original_dcid
        self.addr = addr
        self.streams: dict[int, _RequestStream] = {}
        self.closed = trio.Event()
        self._timer_at = math.inf
        self._timer_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._progress = trio.lowlevel.ParkingLot()
        self._goaway_sent = False
        self._goaway_stream_id: int | None = None
        self._close_when_acked = False
        self._handshake_done = False
        #: what the handshake said, for every request (made at the first one: the ClientHello,
        #: and with it the SNI, came before any request, 0-RTT ones included)
        self._tls: ConnectionTls | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the connection until it terminates: timers, then the stream tasks' nursery."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                while not self.closed.is_set():
                    with trio.CancelScope(deadline=self._timer_at) as scope:
                        self._timer_scope = scope
                        await self.closed.wait()
                    self._timer_scope = None
                    if scope.cancelled_caught:
                        self._timer_at = math.inf
                        self.quic.handle_timer(trio.current_time())
                        self.process_events()
                        self.transmit()
                nursery.cancel_scope.cancel()
        finally:
            self._progress.unpark_all()
            self.listener.forget(self)

    # --- receive path (called by the listener's receive loop) ---

    def process_events(self) -> None:
        quic = self.quic
        while (event := quic.next_event()) is not None:
            if isinstance(event, ConnectionIdIssued):
                self.listener.register_cid(event.connection_id, self)
            elif isinstance(event, ConnectionIdRetired):
                self.listener.unregister_cid(event.connection_id)
            elif isinstance(event, HandshakeCompleted):
                self._handshake_done = True
                self.listener.stats["handshake_success"] += 1
            elif isinstance(event, ConnectionTerminated):
                if not self._handshake_done and _is_crypto_error(event.error_code):
                    self.listener.stats["handshake_failure"] += 1
                    log.debug("QUIC handshake from %s failed: %s (0x%x)", self.addr, event.reason_phrase, event.error_code)
                self._terminated()
                return
            elif isinstance(event, (StreamReset, StopSendingReceived)):
                self._client_aborted(event.stream_id)
            for h3_event in self.h3.handle_event(event):
                self._on_h3_event(h3_event)
            if self.h3.control_stream_overflows:
                self.listener.stats["control_stream_overflow"] += self.h3.control_stream_overflows
                self.h3.control_stream_overflows = 0
        self._close_if_drained()
        self._progress.unpark_all()

    def _on_h3_event(self, event: H3Event) -> None:
        if isinstance(event, DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.body is not None:
                stream.body.feed(event.data, event.stream_ended, self.quic.stream_read_offset(event.stream_id))
        elif isinstance(event, HeadersReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                self._start_request(event)
            else:
                # request trailers end the body and are not forwarded; a malformed section
                # resets the stream (docs/security.md)
                problem = check_trailers(event.headers)
                if problem is not None:
                    self.reset_stream(event.stream_id, ErrorCode.H3_MESSAGE_ERROR)
                    self._malformed(event.stream_id, problem, excessive_load=False)
                elif event.stream_ended and stream.body is not None:
                    stream.body.feed(b"", True, self.quic.stream_read_offset(event.stream_id))
        elif isinstance(event, MalformedRequest):
            self._malformed(event.stream_id, event.reason, excessive_load=event.excessive_load)

    def _malformed(self, stream_id: int, reason: str, *, excessive_load: bool) -> None:
        """A request stream reset as malformed or too heavy: counted, its request (if one
        started) aborted; the connection and its other streams go on."""
        self.listener.stats["excessive_load" if excessive_load else "malformed_requests"] += 1
        log.debug("malformed request on stream %d from %s: %s", stream_id, self.addr, reason)
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.abort(f"malformed request: {reason}")

    def _start_request(self, event: HeadersReceived) -> None:
        stream_id = event.stream_id
        if self._goaway_stream_id is not None and stream_id >= self._goaway_stream_id:
            self.reset_stream(stream_id, ErrorCode.H3_REQUEST_REJECTED)
            return
        head = split_pseudo(event.headers)
        limits = self.listener.protocol
        error = head if isinstance(head, ErrorResponse) else refusal(
            head, max_count=limits.max_headers_count, max_bytes=limits.max_headers_bytes, websocket=False)
        if error is not None:  # answered through the answer door: logged and counted
            known = head if isinstance(head, MultiplexedHead) else None
            self._nursery.start_soon(self._reject, stream_id, known, error)  # type: ignore[union-attr]
            return
        assert isinstance(head, MultiplexedHead)
        body = None if event.stream_ended else H3RequestBody(self, stream_id)
        if body is not None:
            self.quic.consumed_offsets[stream_id] = self.quic.stream_read_offset(stream_id)
        if self._tls is None:
            self._tls = ConnectionTls(self.quic.server_name(), None)
        # QUIC clients present no certificate: a client-sent subject header is always forged
        request = build_request(
            head, body, protocol="HTTP/3", client_address=self.addr, subject=None,
            quic_connection_id=self.original_dcid,
            # a request head decoded before the handshake completed came in 0-RTT
            early_data=not self._handshake_done,
            tls=self._tls,
        )
        tunnel_body = body if request.method == b"CONNECT" else None
        stream = _RequestStream(stream_id, request, body, H3ResponseSink(self, stream_id, tunnel_body))
        self.streams[stream_id] = stream
        assert self._nursery is not None
        self._nursery.start_soon(self._serve_stream, stream)

    async def _reject(self, stream_id: int, head: MultiplexedHead | None, error: ErrorResponse) -> None:
        """Answer a request refused before the chain through the answer door (``head`` None:
        its pseudo-headers were malformed)."""
        request = refused_request(head, protocol="HTTP/3", client_address=self.addr)
        sink = H3ResponseSink(self, stream_id)
        activity = self.listener.activity
        activity.enter()  # in flight like a served request: a drain waits for its record
        try:
            await self.listener.reject(request, sink, error)
        finally:
            activity.exit()
        if not sink.finished:
            return
        try:  # the request body, if any, is not wanted (RFC 9114 4.1)
            self.quic.stop_stream(stream_id, ErrorCode.H3_NO_ERROR)
        except ValueError:
            pass
        self.schedule_transmit()

    async def _serve_stream(self, stream: _RequestStream) -> None:
        listener = self.listener
        listener.activity.enter()
        try:
            with stream.cancel_scope:
                await listener.handler(stream.request, stream.sink)
        except Exception:
            listener.stats["panics"] += 1
            log.exception("unexpected error serving stream %d from %s", stream.stream_id, self.addr)
            stream.sink.reset("internal_error")
        finally:
            listener.activity.exit()
            self._finish_stream(stream)

    def _finish_stream(self, stream: _RequestStream) -> None:
        stream_id = stream.stream_id
        self.streams.pop(stream_id, None)
        self.quic.consumed_offsets.pop(stream_id, None)
        sink = stream.sink
        if not sink.finished and not sink.aborted:
            self.reset_stream(stream_id, ErrorCode.H3_INTERNAL_ERROR)
        if stream.body is not None and not stream.body.ended:
            # answered before the whole request arrived: ask the client to stop (RFC 9114 4.1)
            try:
                self.quic.stop_stream(stream_id, ErrorCode.H3_NO_ERROR)
            except ValueError:
                pass
        if self._goaway_sent and not self.streams:
            self._close_when_acked = True
        self.schedule_transmit()

    def _client_aborted(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.abort("client reset the stream")

    def _terminated(self) -> None:
        for stream in list(self.streams.values()):
            stream.sink.aborted = True
            stream.cancel_scope.cancel()
        self.closed.set()

    # --- send path ---

    def reset_stream(self, stream_id: int, code: int) -> None:
        try:
            self.quic.reset_stream(stream_id, code)
        except ValueError:
            return
        try:
            self.quic.stop_stream(stream_id, code)
        except ValueError:
            pass
        self.schedule_transmit()

    def body_consumed(self, stream_id: int, offset: int) -> None:
        """The pipeline read request bytes up to stream ``offset``: the window may move on."""
        offsets = self.quic.consumed_offsets
        if stream_id in offsets and offset > offsets[stream_id]:
            offsets[stream_id] = offset
            self.schedule_transmit()

    def schedule_transmit(self) -> None:
        self.listener.mark_dirty(self)

    async def wait_send_buffer_below(self, stream_id: int, limit: int) -> None:
        """Wait until the stream's unacknowledged send buffer is below ``limit`` bytes (or
        there is nothing to wait for: the stream is gone or being reset, the connection closed)."""
        quic = self.quic
        while not self.closed.is_set() and not quic.send_buffer_below(stream_id, limit):
            await self._progress.park()

    def transmit(self) -> None:
        datagrams = self.quic.datagrams_to_send(trio.current_time())
        if datagrams:
            # one sendmsg per run of equal-size datagrams (UDP GSO); drops are counted and
            # left to QUIC loss recovery
            self.listener.sender.send(datagrams)
        self.update_timer()

    def update_timer(self) -> None:
        """Move the connection task's wake-up to aioquic's timer (after any state change)."""
        timer = self.quic.get_timer()
        self._timer_at = math.inf if timer is None else timer
        if self._timer_scope is not None:
            self._timer_scope.deadline = self._timer_at

    def goaway(self) -> None:
        """Drain: tell the client no new requests will be served; close once idle."""
        if self._goaway_sent or self.closed.is_set():
            return
        self._goaway_sent = True
        self._goaway_stream_id = self.h3.max_request_stream_id + 4
        self.h3.send_goaway()
        if not self.streams:
            self._close_when_acked = True
        self.schedule_transmit()

    async def wait_acked(self) -> None:
        """Wait until all sent data is acknowledged or the connection ended."""
        while not self.closed.is_set() and not self.quic.all_sent_data_acked():
            await self._progress.park()

    def _close_if_drained(self) -> None:
        # aioquic's close() discards unsent stream data, so close only once the response
        # bytes (and the GOAWAY) were acknowledged
        if self._close_when_acked and not self.closed.is_set() and self.quic.all_sent_data_acked():
            self._close_when_acked = False
            self.quic.close(error_code=ErrorCode.H3_NO_ERROR, reason_phrase="draining")
            self.schedule_transmit()
