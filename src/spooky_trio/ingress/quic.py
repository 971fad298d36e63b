"""HTTP/3 ingress: aioquic driven by one non-blocking UDP socket on Trio.

Shape (see docs/architecture.md): one receive loop per listener drains the socket in bursts,
feeds every datagram to its connection, then processes events and transmits once per
touched connection. Each QUIC connection has one task (its timer and its nursery of request
stream tasks); datagrams never hop through a task or a channel.
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from aioquic import tls
from aioquic.buffer import Buffer
from aioquic.h3.connection import ErrorCode
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import (
    MAX_STREAM_DATA_FRAME_CAPACITY,
    QuicConnection,
)
from aioquic.quic.events import (
    ConnectionIdIssued,
    ConnectionIdRetired,
    ConnectionTerminated,
    StopSendingReceived,
    StreamReset,
)
from aioquic.quic.packet import (
    QuicFrameType,
    QuicPacketType,
    encode_quic_version_negotiation,
    pull_quic_header,
)

from spooky_trio.ingress.closing import encode_initial_close
from spooky_trio.ingress.h3 import (
    H3RequestBody,
    H3ResponseSink,
    MalformedRequest,
    StreamScopedH3Connection,
    parse_request_head,
)
from spooky_trio.ingress.identities import IdentityStore
from spooky_trio.http.messages import DownstreamRequest, RequestBodyError, ResponseSink

log = logging.getLogger("spooky.ingress.quic")

Handler = Callable[[DownstreamRequest, ResponseSink], Awaitable[None]]

#: Datagrams read from the socket before events are processed and replies sent.
RECV_BURST = 64
QUIC_CONNECTION_REFUSED = 0x2


class _SniContext(tls.Context):
    """aioquic TLS context that picks the certificate from the ClientHello's SNI."""

    identities: IdentityStore

    def _server_handle_hello(self, input_buf: Buffer, initial_buf: Buffer, handshake_buf: Buffer) -> None:  # type: ignore[override]
        start = input_buf.tell()
        try:
            hello = tls.pull_client_hello(input_buf)
            server_name = hello.server_name
        except Exception:  # malformed hello: let aioquic raise its own alert below
            server_name = None
        input_buf.seek(start)
        identity, _selection = self.identities.select(server_name)
        self.certificate = identity.certificate
        self.certificate_chain = list(identity.chain)
        self.certificate_private_key = identity.private_key
        super()._server_handle_hello(input_buf, initial_buf, handshake_buf)


class SpookyQuicConnection(QuicConnection):
    """QuicConnection with SNI certificate choice and consumption-based stream windows.

    aioquic grows a stream's receive window as data *arrives*; a proxy must grow it as the
    backend *accepts* the request body, or a slow backend lets a client fill our memory.
    """

    def __init__(self, *, identities: IdentityStore, max_streams_bidi: int, max_streams_uni: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._identities = identities
        self._stream_window = self._configuration.max_stream_data
        #: stream id -> stream offset the application has consumed up to
        self.consumed_offsets: dict[int, int] = {}
        for limit, value in ((self._local_max_streams_bidi, max_streams_bidi), (self._local_max_streams_uni, max_streams_uni)):
            limit.value = limit.sent = value

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        self.tls.__class__ = _SniContext
        self.tls.identities = self._identities  # type: ignore[attr-defined]

    def _write_stream_limits(self, builder, space, stream) -> None:  # type: ignore[no-untyped-def]
        consumed = self.consumed_offsets.get(stream.stream_id)
        if consumed is None:
            return super()._write_stream_limits(builder, space, stream)
        target = consumed + self._stream_window
        if target - stream.max_stream_data_local >= self._stream_window // 4:
            stream.max_stream_data_local = target
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            buf = builder.start_frame(
                QuicFrameType.MAX_STREAM_DATA,
                capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                handler=self._on_max_stream_data_delivery,
                handler_args=(stream,),
            )
            buf.push_uint_var(stream.stream_id)
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local
        return None


class _RequestStream:
    __slots__ = ("stream_id", "body", "sink", "cancel_scope", "request")

    def __init__(self, stream_id: int, body: H3RequestBody | None, sink: H3ResponseSink, request: DownstreamRequest) -> None:
        self.stream_id = stream_id
        self.body = body
        self.sink = sink
        self.request = request
        self.cancel_scope = trio.CancelScope()


class QuicConnectionTask:
    """One QUIC connection: its aioquic state, H3 layer, timer and request stream tasks."""

    def __init__(self, listener: QuicListener, quic: SpookyQuicConnection, original_dcid: bytes, addr: tuple[str, int]) -> None:
        self.listener = listener
        self.quic = quic
        self.h3 = StreamScopedH3Connection(quic)
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
            elif isinstance(event, ConnectionTerminated):
                self._terminated()
                return
            elif isinstance(event, (StreamReset, StopSendingReceived)):
                self._client_aborted(event.stream_id)
            for h3_event in self.h3.handle_event(event):
                self._on_h3_event(h3_event)
        self._close_if_drained()
        self._progress.unpark_all()

    def _on_h3_event(self, event: Any) -> None:
        if isinstance(event, DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.body is not None:
                stream.body.feed(event.data, event.stream_ended, self._read_offset(event.stream_id))
        elif isinstance(event, HeadersReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                self._start_request(event)
            elif event.stream_ended and stream.body is not None:
                # request trailers end the body; they are not forwarded
                stream.body.feed(b"", True, self._read_offset(event.stream_id))
        elif isinstance(event, MalformedRequest):
            self.listener.stats["malformed_requests"] += 1
            log.debug("malformed request on stream %d from %s: %s", event.stream_id, self.addr, event.reason)
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                if stream.body is not None:
                    stream.body.fail(RequestBodyError(f"malformed request: {event.reason}"))
                stream.sink.aborted = True
                stream.cancel_scope.cancel()

    def _read_offset(self, stream_id: int) -> int:
        qstream = self.quic._streams.get(stream_id)
        return qstream.receiver.highest_offset if qstream is not None else 0

    def _start_request(self, event: HeadersReceived) -> None:
        stream_id = event.stream_id
        if self._goaway_stream_id is not None and stream_id >= self._goaway_stream_id:
            self.reset_stream(stream_id, ErrorCode.H3_REQUEST_REJECTED)
            return
        try:
            pseudo, headers = parse_request_head(event.headers)
        except Exception as exc:  # MessageError: reset this stream only
            self.listener.stats["malformed_requests"] += 1
            log.debug("malformed request on stream %d: %s", stream_id, exc)
            self.reset_stream(stream_id, ErrorCode.H3_MESSAGE_ERROR)
            return
        content_length = self.h3._stream[stream_id].expected_content_length if stream_id in self.h3._stream else None
        host_header = None
        for name, value in headers:
            if name == b"host":
                host_header = value
                break
        body = None if event.stream_ended else H3RequestBody(self, stream_id)
        if body is not None:
            self.quic.consumed_offsets[stream_id] = self._read_offset(stream_id)
        request = DownstreamRequest(
            method=pseudo.get(b":method", b""),
            scheme=pseudo.get(b":scheme", b"https"),
            authority=pseudo.get(b":authority", b""),
            path=pseudo.get(b":path", b""),
            headers=headers,
            protocol="HTTP/3",
            client_address=self.addr,
            body=body,
            content_length=content_length,
            host_header=host_header,
            quic_connection_id=self.original_dcid,
        )
        stream = _RequestStream(stream_id, body, H3ResponseSink(self, stream_id), request)
        self.streams[stream_id] = stream
        assert self._nursery is not None
        self._nursery.start_soon(self._serve_stream, stream)

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
        if stream is None:
            return
        if stream.body is not None:
            stream.body.fail(RequestBodyError("client reset the stream"))
        stream.sink.aborted = True
        stream.cancel_scope.cancel()

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
        """Wait until the stream's unacknowledged send buffer is below ``limit`` bytes."""
        while not self.closed.is_set():
            qstream = self.quic._streams.get(stream_id)
            if qstream is None:
                return
            sender = qstream.sender
            if sender._buffer_stop - sender._buffer_start < limit or sender.reset_pending:
                return
            await self._progress.park()

    def transmit(self) -> None:
        sock = self.listener.sock
        for data, addr in self.quic.datagrams_to_send(trio.current_time()):
            try:
                sock.sendto(data, addr)
            except BlockingIOError:
                self.listener.stats["send_drops"] += 1  # QUIC loss recovery resends it
            except OSError as exc:
                log.debug("sendto %s failed: %s", addr, exc)
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

    def all_sent_data_acked(self) -> bool:
        """True when the peer acknowledged every byte we sent on every stream."""
        return all(s.sender._buffer_start == s.sender._buffer_stop for s in self.quic._streams.values())

    async def wait_acked(self) -> None:
        """Wait until all sent data is acknowledged or the connection ended."""
        while not self.closed.is_set() and not self.all_sent_data_acked():
            await self._progress.park()

    def _close_if_drained(self) -> None:
        # aioquic's close() discards unsent stream data, so close only once the response
        # bytes (and the GOAWAY) were acknowledged
        if self._close_when_acked and not self.closed.is_set() and self.all_sent_data_acked():
            self._close_when_acked = False
            self.quic.close(error_code=ErrorCode.H3_NO_ERROR, reason_phrase="draining")
            self.schedule_transmit()


class Activity:
    """In-flight request count with a wait-for-zero, shared by every listener (drain)."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = trio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        if self._idle.is_set():
            self._idle = trio.Event()

    def exit(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


class QuicListener:
    """One UDP socket serving HTTP/3 for a listener block."""

    def __init__(
        self,
        *,
        address: str,
        port: int,
        identities: IdentityStore,
        performance: Any,
        handler: Handler,
        activity: Activity,
    ) -> None:
        self.address = address
        self.port = port
        self.identities = identities
        self.performance = performance
        self.handler = handler
        self.activity = activity
        self.sock: socket.socket = None  # type: ignore[assignment]
        self.connections: set[QuicConnectionTask] = set()
        self._by_cid: dict[bytes, QuicConnectionTask] = {}
        self._dirty: set[QuicConnectionTask] = set()
        self._flush_wakeup = trio.Event()
        self.draining = False
        self.stats: dict[str, int] = {
            "datagrams": 0, "bad_headers": 0, "unroutable": 0, "send_drops": 0,
            "refused_draining": 0, "cap_rejects": 0, "malformed_requests": 0, "panics": 0,
        }
        p = performance
        self.configuration = QuicConfiguration(
            is_client=False,
            alpn_protocols=["h3"],
            idle_timeout=p.quic_max_idle_timeout_ms / 1000,
            max_data=p.quic_initial_max_data,
            max_stream_data=p.quic_initial_max_stream_data,
        )
        # aioquic insists on a certificate up front; _SniContext swaps it per handshake
        primary = identities.primary
        self.configuration.certificate = primary.certificate
        self.configuration.certificate_chain = list(primary.chain)
        self.configuration.private_key = primary.private_key

    def bind(self) -> None:
        """Bind the UDP socket now, so bind errors surface before the server reports ready."""
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if self.performance.reuseport and hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            for opt, size in ((socket.SO_RCVBUF, self.performance.udp_recv_buffer_bytes), (socket.SO_SNDBUF, self.performance.udp_send_buffer_bytes)):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, size)
                except OSError:
                    log.warning("could not set UDP buffer size %d", size)
            sock.bind((self.address, self.port))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self.sock = sock
        self.port = sock.getsockname()[1]

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the receive loop and flusher until cancelled. Call :meth:`bind` first."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._flusher)
                task_status.started()
                await self._receive_loop()
        finally:
            self.sock.close()

    async def _receive_loop(self) -> None:
        sock = self.sock
        while True:
            await trio.lowlevel.wait_readable(sock)
            now = trio.current_time()
            touched: set[QuicConnectionTask] = set()
            for _ in range(RECV_BURST):
                try:
                    data, addr = sock.recvfrom(65536)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:  # e.g. ICMP port unreachable surfacing on the socket
                    log.debug("recvfrom failed: %s", exc)
                    continue
                self.stats["datagrams"] += 1
                try:
                    conn = self._route(data, addr)
                    if conn is None:
                        continue
                    if conn._nursery is None:
                        await self._nursery.start(conn.run)
                    conn.quic.receive_datagram(data, addr, now)
                except Exception:
                    # one bad datagram or connection must never stop the listener
                    self.stats["panics"] += 1
                    log.exception("error handling a datagram from %s", addr)
                    continue
                touched.add(conn)
            for conn in touched:
                try:
                    conn.process_events()
                except Exception:
                    self.stats["panics"] += 1
                    log.exception("error processing events of connection from %s", conn.addr)
                    conn.quic.close(error_code=ErrorCode.H3_INTERNAL_ERROR, reason_phrase="internal error")
            self._dirty |= touched
            self._flush()
            await trio.lowlevel.checkpoint_if_cancelled()

    def _route(self, data: bytes, addr: tuple[str, int]) -> QuicConnectionTask | None:
        """Find or create the connection for a datagram; None to drop it."""
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=self.configuration.connection_id_length)
        except ValueError:
            self.stats["bad_headers"] += 1
            return None
        conn = self._by_cid.get(header.destination_cid)
        if conn is not None:
            return conn
        if (
            header.packet_type != QuicPacketType.VERSION_NEGOTIATION
            and header.version is not None
            and header.version not in self.configuration.supported_versions
        ):
            self._send(encode_quic_version_negotiation(
                source_cid=header.destination_cid,
                destination_cid=header.source_cid,
                supported_versions=self.configuration.supported_versions,
            ), addr)
            return None
        if header.packet_type != QuicPacketType.INITIAL or len(data) < SMALLEST_MAX_DATAGRAM_SIZE:
            self.stats["unroutable"] += 1
            return None
        if self.draining:
            self.stats["refused_draining"] += 1
            self._send(encode_initial_close(header, QUIC_CONNECTION_REFUSED, "server draining"), addr)
            return None
        if len(self.connections) >= self.performance.max_active_connections:
            self.stats["cap_rejects"] += 1
            return None
        quic = SpookyQuicConnection(
            configuration=self.configuration,
            original_destination_connection_id=header.destination_cid,
            identities=self.identities,
            max_streams_bidi=self.performance.quic_initial_max_streams_bidi,
            max_streams_uni=self.performance.quic_initial_max_streams_uni,
        )
        conn = QuicConnectionTask(self, quic, header.destination_cid, addr)
        self.connections.add(conn)
        self._by_cid[header.destination_cid] = conn
        self._by_cid[quic.host_cid] = conn
        return conn

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self.sock.sendto(data, addr)
        except OSError as exc:
            log.debug("sendto %s failed: %s", addr, exc)

    def register_cid(self, cid: bytes, conn: QuicConnectionTask) -> None:
        self._by_cid[cid] = conn

    def unregister_cid(self, cid: bytes) -> None:
        self._by_cid.pop(cid, None)

    def forget(self, conn: QuicConnectionTask) -> None:
        self.connections.discard(conn)
        self._dirty.discard(conn)
        for cid in [c for c, owner in self._by_cid.items() if owner is conn]:
            del self._by_cid[cid]

    def mark_dirty(self, conn: QuicConnectionTask) -> None:
        self._dirty.add(conn)
        self._flush_wakeup.set()

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, set()
        for conn in dirty:
            conn.transmit()
            if conn.quic._close_pending or conn.quic._state.name in ("CLOSING", "DRAINING", "TERMINATED"):
                conn.process_events()

    async def _flusher(self) -> None:
        """Transmit for connections that stream tasks wrote to, once per scheduling batch."""
        while True:
            await self._flush_wakeup.wait()
            self._flush_wakeup = trio.Event()
            # let the other tasks woken in this batch write too, then send once
            await trio.lowlevel.cancel_shielded_checkpoint()
            self._flush()

    async def wait_acked(self) -> None:
        """Wait until every connection's sent data was acknowledged (or it ended)."""
        for conn in list(self.connections):
            await conn.wait_acked()

    def close_all(self) -> None:
        """Close every connection now (end of drain) and transmit the closes."""
        for conn in list(self.connections):
            conn.quic.close(error_code=ErrorCode.H3_NO_ERROR, reason_phrase="shutting down")
            self._dirty.add(conn)
        self._flush()

    async def wait_closed(self) -> None:
        """Wait until every connection task has ended."""
        for conn in list(self.connections):
            await conn.closed.wait()

    def begin_drain(self) -> None:
        """Refuse new connections and send GOAWAY on every open one."""
        self.draining = True
        for conn in list(self.connections):
            conn.goaway()
