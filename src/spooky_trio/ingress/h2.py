"""HTTP/2 ingress on a TLS stream (h2): one reader and one writer per connection, one task per stream.

Stream tasks never touch the socket: they change the h2 state synchronously and kick the
connection's :class:`~spooky_trio.http.h2_pump.H2WriterPump`, whose task sends everything
queued by then in one ``send_all``, so the frames of many streams (and a stream's HEADERS and
DATA) share one TLS record and one syscall instead of one each.

Backpressure both ways: a request body's flow-control window is acknowledged only as the
pipeline consumes it (:meth:`H2ServerConnection.body_consumed`), and a response waits for
the client's window before each DATA frame and, while more than :data:`SEND_HIGH_WATER`
bytes of DATA are queued for the writer, for the writer to take them (which it does only
once its previous ``send_all`` returned). The reader, likewise, stops reading while 64 KiB
of its own output (acks of the client's PINGs and SETTINGS, resets) waits (the pump's
``backoff``). A closed pump is ``trio.BrokenResourceError`` for the pipeline.

``SETTINGS_ENABLE_CONNECT_PROTOCOL`` is advertised: an extended CONNECT (RFC 8441) with
``:protocol websocket`` becomes a GET with ``upgrade: websocket`` for the pipeline, and its
sink can :meth:`open_tunnel`.

Rapid reset (CVE-2023-44487): a client that opens streams and resets them at once makes the
proxy start (and maybe forward) a request per pair while never holding more than
``MAX_CONCURRENT_STREAMS`` open. Each client reset of a stream we have not finished adds one
to the connection's reset debt, each response finished normally takes one off; past
:attr:`BootstrapLimits.h2_max_reset_debt` the connection gets GOAWAY(ENHANCE_YOUR_CALM) and is
closed (``stats["h2_rapid_reset"]``). Work per connection is thereby bounded by the work of
the requests it lets finish.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import trio
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from spooky_trio.http.errors import ErrorResponse
from spooky_trio.http.h2_pump import H2WriterPump
from spooky_trio.http.messages import NO_TLS_INFO, ConnectionTls
from spooky_trio.http.validate import MultiplexedHead, split_pseudo
from spooky_trio.ingress.h2_engine import MalformedStream, StreamScopedH2Connection
from spooky_trio.ingress.h2_stream import (
    RECEIVE_SIZE,
    SEND_HIGH_WATER,
    H2RequestBody,
    H2ResponseSink,
)
from spooky_trio.ingress.multiplexed import (
    StreamTask,
    build_request,
    check_trailers,
    refusal,
    refused_request,
)

if TYPE_CHECKING:
    from spooky_trio.ingress.bootstrap import ServeContext

log = logging.getLogger("spooky.ingress.h2")

#: how long the frames still queued when the connection ends (a response's tail, a GOAWAY)
#: may take to reach a client that stopped reading
CLOSE_FLUSH_TIMEOUT = 10.0


#: a request stream of this connection
_Stream = StreamTask[H2RequestBody, H2ResponseSink]


class H2ServerConnection:
    """Serves one HTTP/2 connection: the reader loop here, one task per stream."""

    def __init__(self, ctx: ServeContext, stream: trio.SSLStream[trio.SocketStream], client_address: tuple[str, int], subject: bytes | None,
                 tls: ConnectionTls = NO_TLS_INFO) -> None:
        self.ctx = ctx
        self.stream = stream
        self.client_address = client_address
        self.subject = subject
        self.tls = tls
        limits = ctx.limits
        self.h2 = StreamScopedH2Connection(
            # header_block() builds what h2's outbound normalization and validation would pass;
            # inbound heads are checked by http/validate.py per stream (h2_engine.py: why)
            h2.config.H2Configuration(
                client_side=False,
                header_encoding=None,
                validate_inbound_headers=False,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.h2_max_concurrent_streams,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: limits.h2_stream_window,
                h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,
                # hpack's hard limit stays well above ours, so oversize heads get 431, not a connection error
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 4 * limits.max_headers_bytes + 64 * limits.max_headers_count,
            },
        )
        self.streams: dict[int, _Stream] = {}
        self._nursery: trio.Nursery | None = None
        self._window_changed = trio.lowlevel.ParkingLot()
        #: the only writer of ``stream``; closed once the connection ends (see the module doc)
        self.pump = H2WriterPump(stream, self.h2.data_to_send)
        self._read_scope: trio.CancelScope | None = None
        self._goaway_last: int | None = None
        self._any_request = False
        #: client resets of unfinished streams minus responses finished normally (see module doc)
        self._reset_debt = 0

    # --- the connection task ---

    async def run(self) -> None:
        """Serve until the client closes, a protocol error, idle timeout or drain completes."""
        try:
            self.h2.initiate_connection()
            extra = self.ctx.limits.h2_connection_window - 65535
            if extra > 0:
                self.h2.increment_flow_control_window(extra)
            pump = self.pump
            # our SETTINGS go first, before a GOAWAY queued by a drain that began earlier
            pump.outbox[:0] = self.h2.data_to_send()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._write)
                try:
                    pump.kick()
                    await self._read_loop()
                    with trio.move_on_after(CLOSE_FLUSH_TIMEOUT):
                        await pump.written()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # the client went away
                finally:
                    pump.close()
                    self._window_changed.unpark_all()
                    nursery.cancel_scope.cancel()
        finally:
            with trio.move_on_after(1.0, shield=True):
                await self.stream.aclose()
            await trio.aclose_forcefully(self.stream)

    def _done(self) -> bool:
        return self._goaway_last is not None and not self.streams

    async def _write(self) -> None:
        """The pump's task. It ends once closed or when a write failed (the client went
        away): either way the connection ends (``run`` cancels its stream tasks)."""
        await self.pump.run()
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()

    async def _read_loop(self) -> None:
        """Read and dispatch until the connection is over; what it queued (a GOAWAY) is
        written by the caller's final flush.

        One cancel scope serves the whole loop: its deadline is the idle timeout while no
        stream is open, and it is cancelled when a drain completes (:meth:`_finish_stream`).
        Either way the connection is over: an idle connection with no streams gets GOAWAY,
        after which it is done.
        """
        limits, pump = self.ctx.limits, self.pump
        never = float("inf")
        with trio.CancelScope() as scope:
            self._read_scope = scope
            while not self._done():
                if self.streams:
                    if scope.deadline != never:
                        scope.deadline = never
                else:
                    idle = limits.keepalive_timeout if self._any_request else limits.header_timeout
                    scope.deadline = trio.current_time() + idle
                data = await self.stream.receive_some(RECEIVE_SIZE)
                if not data:
                    return
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError as exc:
                    log.debug("HTTP/2 protocol error from %s: %s", self.client_address, exc)
                    self.ctx.stats["h2_protocol_errors"] += 1
                    pump.collect()  # h2 queued a GOAWAY
                    return
                for event in events:
                    if not self._on_event(event):
                        pump.collect()  # a GOAWAY we queued (ENHANCE_YOUR_CALM)
                        return
                if pump.collect():
                    # our answers to the client's frames (PING and SETTINGS acks, resets) pile
                    # up while it does not read: stop reading until the writer takes them
                    await pump.backoff()
        self._read_scope = None
        if scope.cancelled_caught and not self.streams and self._goaway_last is None:
            self.begin_drain()  # idle: say goodbye properly

    def _on_event(self, event: h2.events.Event) -> bool:
        """Handle one event; False when the connection is over."""
        if isinstance(event, h2.events.RequestReceived):
            self._start_stream(event)
            if event.stream_ended is not None:
                self._end_body(event.stream_id)
        elif isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.body is not None:
                stream.body.feed(event.data, event.flow_controlled_length)
            elif event.flow_controlled_length:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if event.stream_ended is not None:
                self._end_body(event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self._end_body(event.stream_id)
        elif isinstance(event, h2.events.TrailersReceived):
            # request trailers end the body and are not forwarded; a malformed section
            # resets the stream (docs/security.md)
            problem = check_trailers(event.headers or [])
            if problem is not None:
                self._malformed(event.stream_id, problem)
                # (our side may be closed already: an answer given before the body ended)
                self.reset_stream(event.stream_id, ErrorCodes.PROTOCOL_ERROR)
            else:
                self._end_body(event.stream_id)
        elif isinstance(event, MalformedStream):
            self._malformed(event.stream_id, event.reason)
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.abort("client reset the stream")
                if event.remote_reset and not stream.sink.finished:
                    self._reset_debt += 1
                    if self._reset_debt > self.ctx.limits.h2_max_reset_debt:
                        self._enhance_your_calm()
                        return False
            self._window_changed.unpark_all()
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self._window_changed.unpark_all()
        elif isinstance(event, h2.events.ConnectionTerminated):
            return False
        return True

    def _malformed(self, stream_id: int, reason: str) -> None:
        """A stream the engine or we reset as malformed (RFC 9113 8.1.1): counted, its
        request (if one started) aborted; the connection and its other streams go on."""
        self.ctx.stats["h2_malformed_streams"] += 1
        log.debug("HTTP/2 stream %d from %s reset as malformed: %s", stream_id, self.client_address, reason)
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.abort(f"malformed request: {reason}")

    def _enhance_your_calm(self) -> None:
        log.info("HTTP/2 client %s reset %d streams it did not let finish: GOAWAY(ENHANCE_YOUR_CALM)",
                 self.client_address, self._reset_debt)
        self.ctx.stats["h2_rapid_reset"] += 1
        self._goaway_last = self.h2.highest_inbound_stream_id
        self.h2.close_connection(ErrorCodes.ENHANCE_YOUR_CALM, last_stream_id=self._goaway_last)

    def _end_body(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None and stream.body is not None:
            stream.body.end()

    # --- streams ---

    def _start_stream(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        if self._goaway_last is not None and stream_id > self._goaway_last:
            self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        self._any_request = True
        body = None if event.stream_ended is not None else H2RequestBody(self, stream_id)
        head = split_pseudo(event.headers or [])
        limits = self.ctx.limits
        error = head if isinstance(head, ErrorResponse) else refusal(
            head, max_count=limits.max_headers_count, max_bytes=limits.max_headers_bytes, websocket=True)
        if error is None:
            assert isinstance(head, MultiplexedHead)
            request = build_request(head, body, protocol="HTTP/2", client_address=self.client_address, subject=self.subject,
                                    tls=self.tls)
        else:
            known = head if isinstance(head, MultiplexedHead) else None
            request = refused_request(known, protocol="HTTP/2", client_address=self.client_address)
        # extended CONNECT (WebSocket) and plain CONNECT: the stream's DATA is the tunnel
        connecting = isinstance(head, MultiplexedHead) and (head.protocol is not None or head.method == b"CONNECT")
        sink = H2ResponseSink(self, stream_id, body if connecting else None)
        stream = _Stream(stream_id, request, body, sink, error)
        self.streams[stream_id] = stream
        assert self._nursery is not None
        self._nursery.start_soon(self._serve_stream, stream)

    async def _serve_stream(self, stream: _Stream) -> None:
        try:
            with stream.cancel_scope:
                if stream.error is not None:
                    await self.ctx.reject(stream.request, stream.sink, stream.error)
                else:
                    await self.ctx.serve_request(stream.request, stream.sink)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            stream.sink.aborted = True
        finally:
            self._finish_stream(stream)

    def _finish_stream(self, stream: _Stream) -> None:
        stream_id = stream.stream_id
        self.streams.pop(stream_id, None)
        if self.pump.closed:
            return
        sink, body = stream.sink, stream.body
        if sink.finished and self._reset_debt:
            self._reset_debt -= 1
        if not sink.finished and not sink.aborted:
            self.reset_stream(stream_id, ErrorCodes.INTERNAL_ERROR)
        elif body is not None and not body.ended and not sink.aborted:
            # answered before the whole request arrived: ask the client to stop (RFC 9113 8.1)
            self.reset_stream(stream_id, ErrorCodes.NO_ERROR)
        if body is not None and body.unconsumed:
            self.h2.acknowledge_received_data(body.unconsumed, stream_id)
        if self._done() and self._read_scope is not None:
            self._read_scope.cancel()
        self.pump.collect()  # the acknowledgement, if h2 sends one (the resets kicked)

    # --- send path ---

    def call(self, stream_id: int, method: str, *args: object, **kwargs: object) -> None:
        """Call an ``H2Connection`` send method and wake the writer; a stream the client reset
        (or a closed connection) becomes :class:`trio.BrokenResourceError` for the pipeline."""
        stream = self.streams.get(stream_id)
        if self.pump.closed or (stream is not None and stream.sink.aborted):
            raise trio.BrokenResourceError("client stream or connection is gone")
        try:
            getattr(self.h2, method)(stream_id, *args, **kwargs)
        except h2.exceptions.ProtocolError as exc:
            raise trio.BrokenResourceError(f"cannot {method} on stream {stream_id}: {exc}") from exc
        self.pump.kick()

    def reset_stream(self, stream_id: int, code: ErrorCodes) -> None:
        """Queue RST_STREAM (unless the stream is already closed) and wake the writer."""
        try:
            self.h2.reset_stream(stream_id, code)
        except h2.exceptions.ProtocolError:
            return
        self.pump.kick()

    async def wait_window(self, stream_id: int) -> int:
        """Bytes we may send on the stream now (> 0), waiting for WINDOW_UPDATEs."""
        while True:
            stream = self.streams.get(stream_id)
            if self.pump.closed or stream is None or stream.sink.aborted:
                raise trio.BrokenResourceError("client stream or connection is gone")
            try:
                window = self.h2.local_flow_control_window(stream_id)
            except h2.exceptions.ProtocolError as exc:
                raise trio.BrokenResourceError(str(exc)) from exc
            if window > 0:
                return min(window, self.h2.max_outbound_frame_size)
            await self._window_changed.park()

    def body_consumed(self, stream_id: int, flow_length: int) -> None:
        """The pipeline took ``flow_length`` flow-controlled bytes: let the client send more."""
        if flow_length and not self.pump.closed:
            self.h2.acknowledge_received_data(flow_length, stream_id)
            self.pump.collect()  # small acknowledgements queue nothing

    async def wait_writer(self) -> None:
        """Wait until the writer took the queued DATA (below :data:`SEND_HIGH_WATER`)."""
        if not await self.pump.taken(SEND_HIGH_WATER):
            raise trio.BrokenResourceError("client connection is gone")

    async def wait_written(self) -> None:
        """Wait until everything queued so far was written; raises
        :class:`trio.BrokenResourceError` if the connection closed first."""
        if not await self.pump.written():
            raise trio.BrokenResourceError("client connection is gone")

    def begin_drain(self) -> None:
        """GOAWAY naming the last stream we accepted; close once those streams are done.

        h2's ``close_connection`` would forbid sending on the open streams, so the frame is
        written beside the library's state.
        """
        if self._goaway_last is not None:
            return
        self._goaway_last = self.h2.highest_inbound_stream_id
        self.pump.queue_frame(GoAwayFrame(stream_id=0, last_stream_id=self._goaway_last, error_code=0).serialize())
        if self._done() and self._read_scope is not None:
            self._read_scope.cancel()
