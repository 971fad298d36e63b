"""HTTP/2 upstream engine: one h2 state machine per TLS connection, many streams.

Each :class:`H2Connection` runs a reader and a writer task (:meth:`H2Connection.run`, in the
pool's nursery). Exchanges never touch the socket: they change the h2 state synchronously
and kick the connection's :class:`~spooky_trio.http.h2_pump.H2WriterPump`, so cancelling an
exchange can never leave a half-written frame on a connection that other streams share. The
reader stops reading while 64 KiB of its own answers (PING/SETTINGS acks) wait for the
writer (the pump's ``backoff``). A closed pump is :class:`UpstreamProtocolError` for the
exchanges.

Flow control: streams advertise :data:`STREAM_WINDOW` and the connection
:data:`CONNECTION_WINDOW`; received data is acknowledged only when the consumer takes it
through :meth:`H2Stream.receive`, so a slow consumer stalls its backend stream after at most
one window. Request bodies wait for the peer's windows and for the writer to drain.

GOAWAY: h2 moves its state machine to CLOSED when it receives GOAWAY, refusing the frames of
streams the server still promised to finish (python-hyper/h2#1181). The connection installs a
state machine that ignores a received GOAWAY; this engine itself stops opening streams, fails
the streams above ``last_stream_id`` and closes the connection once the others are done.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import trio
from h2.errors import ErrorCodes

from spooky_trio.http.h2_frames import LazyReprH2Connection
from spooky_trio.http.h2_pump import H2WriterPump
from spooky_trio.http.messages import UpstreamRequest
from spooky_trio.upstream.common import (
    READ_CHUNK,
    BackendTarget,
    ExchangeControl,
    pump_body,
)
from spooky_trio.upstream.errors import UpstreamProtocolError, UpstreamTimeout
from spooky_trio.upstream.h2_state import ConnInput, ConnState, next_state
from spooky_trio.upstream.h2_stream import H2Stream, request_headers

#: receive window advertised for each stream (the most one slow response can buffer)
STREAM_WINDOW = 1 << 20
#: receive window of the whole connection
CONNECTION_WINDOW = 16 << 20
_MAX_HEADER_LIST = 64 * 1024
_H2_ERRORS = (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError, KeyError)


_STARTING, _OPEN, _DRAINING = ConnState.STARTING, ConnState.OPEN, ConnState.DRAINING
_RECV_GOAWAY = h2.connection.ConnectionInputs.RECV_GOAWAY
_CLOSED = h2.connection.ConnectionState.CLOSED
_process_input = h2.connection.H2ConnectionStateMachine.process_input


class _GoawayTolerantStateMachine(h2.connection.H2ConnectionStateMachine):
    """Keep the connection state open when a GOAWAY arrives (see the module docstring)."""

    def process_input(self, input_: h2.connection.ConnectionInputs) -> list[h2.events.Event]:
        # runs for every frame sent and received: module-level names, no super() lookup
        if input_ is _RECV_GOAWAY and self.state is not _CLOSED:
            return []
        return _process_input(self, input_)


class H2Connection:
    """An HTTP/2 connection to ``target`` over a handshaken TLS ``stream``.

    Callbacks: ``on_idle(conn)`` when its last stream is released, ``on_closed(conn)`` once
    when :meth:`run` ends. The pool runs :meth:`run` in its nursery and waits for
    :attr:`ready` before opening streams. :attr:`state` follows the table in
    upstream/h2_state.py; :attr:`failure` is set with FAILED.
    """

    def __init__(
        self,
        target: BackendTarget,
        stream: trio.abc.Stream,
        *,
        on_idle: Callable[[H2Connection], None],
        on_closed: Callable[[H2Connection], None],
    ) -> None:
        self.target = target
        self._stream = stream
        self._on_idle = on_idle
        self._on_closed = on_closed
        # request_headers() builds blocks that pass h2's outbound normalization and checks
        config = h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False
        )
        self._h2 = LazyReprH2Connection(config=config)  # h2's, without a repr per received frame
        self._h2.state_machine = _GoawayTolerantStateMachine()
        self._h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: _MAX_HEADER_LIST,
            },
        )
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self._streams: dict[int, H2Stream] = {}
        #: the only writer of ``stream``; the connection preface is pending
        self.pump = H2WriterPump(stream, self._h2.data_to_send)
        self.pump.kick()
        self._cancel_scope = trio.CancelScope()
        self.state = _STARTING
        #: set when the state leaves STARTING (SETTINGS arrived, or a drain or failure came first)
        self.ready = trio.Event()
        self.failure: UpstreamProtocolError | None = None
        self.idle_since = trio.current_time()
        self._send_wakeup = trio.Event()

    # -- pool-facing state --

    @property
    def active_streams(self) -> int:
        return len(self._streams)

    @property
    def can_open_stream(self) -> bool:
        """OPEN, and below the server's MAX_CONCURRENT_STREAMS.

        Counts our unreleased streams, a superset of h2's open ones (h2's own count walks
        every stream it knows; it still checks on send, see :meth:`try_open_stream`).
        """
        return self.state is _OPEN and len(self._streams) < self._h2.remote_settings.max_concurrent_streams

    def _advance(self, event: ConnInput) -> None:
        before, self.state = self.state, next_state(self.state, event)
        if before is _STARTING and self.state is not _STARTING:
            self.ready.set()

    def try_open_stream(self, request: UpstreamRequest) -> H2Stream | None:
        """Send the request headers on a new stream; None if this connection cannot take it.

        Raises :class:`UpstreamProtocolError` when h2 refuses to send: its outbound header
        validation is off (the ingress validator and ``request_headers`` make the head), so
        that is the connection's state, not the request's fault (unlike HTTP/1.1's
        :class:`~spooky_trio.upstream.errors.UnforwardableRequest`).
        """
        if not self.can_open_stream:
            return None
        try:
            stream_id = self._h2.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError:
            self._advance(ConnInput.DRAIN)
            return None
        try:
            self._h2.send_headers(stream_id, request_headers(request), end_stream=request.body is None)
        except h2.exceptions.TooManyStreamsError:
            return None  # h2 still counts a stream we released as open
        except h2.exceptions.ProtocolError as exc:
            raise UpstreamProtocolError(f"cannot send this request over HTTP/2: {exc}") from exc
        stream = H2Stream(self, stream_id)
        stream.request_ended = request.body is None
        self._streams[stream_id] = stream
        self.pump.collect()
        return stream

    async def start(self, stream: H2Stream, request: UpstreamRequest, *, nursery: trio.Nursery, control: ExchangeControl) -> None:
        """Start the body pump for ``stream`` in ``nursery`` and wait for the response head.

        Raises :class:`UpstreamTimeout` or :class:`UpstreamProtocolError`.
        """
        if request.body is None:
            control.request_done(complete=True)
        else:
            send_chunk = partial(self._send_chunk, stream)
            send_end = partial(self._send_end, stream)
            nursery.start_soon(pump_body, request.body, request.content_length, control, send_chunk, send_end)
        with control.head_scope:
            await stream.wait_head()
            return
        raise UpstreamTimeout(f"{self.target} sent no response headers within {control.response_timeout:g}s")

    def release(self, stream: H2Stream) -> None:
        """The exchange is over: reset the stream if unfinished and forget it (synchronous)."""
        if self._streams.pop(stream.stream_id, None) is None:
            return
        if not (stream.remote_ended and stream.request_ended) and not stream.send_closed and self.failure is None:
            try:
                self._h2.reset_stream(stream.stream_id, ErrorCodes.CANCEL)
            except _H2_ERRORS:
                pass
        stream.on_error(UpstreamProtocolError("the exchange is over"))
        self.acknowledge(stream.stream_id, stream.take_unconsumed())
        self.pump.collect()
        if not self._streams:
            self.idle_since = trio.current_time()
            if self.state is _DRAINING:
                self.close()
            else:
                self._on_idle(self)

    def close(self) -> None:
        """Stop taking streams; send GOAWAY and close once the active streams are released."""
        self._advance(ConnInput.DRAIN)
        if not self._streams and self.state is _DRAINING:
            self._advance(ConnInput.GOAWAY_SENT)
            try:
                self._h2.close_connection()
            except _H2_ERRORS:
                self._cancel_scope.cancel()
            self.pump.kick()
            self.pump.finish()  # the writer ends the connection once our GOAWAY is out

    def abort(self) -> None:
        """Close at once, failing every stream."""
        self._fail(UpstreamProtocolError(f"connection to {self.target} aborted"))

    # -- engine internals --

    def acknowledge(self, stream_id: int, size: int) -> None:
        """Return ``size`` consumed bytes of ``stream_id`` to the flow-control windows (only the
        connection's once the stream is closed; h2 rejects stream 0)."""
        if size <= 0 or self.failure is not None:
            return
        try:
            self._h2.acknowledge_received_data(size, stream_id)
        except _H2_ERRORS:
            return
        self.pump.collect()  # a small acknowledgement queues nothing

    def _wake_senders(self) -> None:
        event, self._send_wakeup = self._send_wakeup, trio.Event()
        event.set()

    def _fail(self, error: UpstreamProtocolError) -> None:
        if self.failure is None:
            self.failure = error
        self._advance(ConnInput.FAIL)
        for stream in list(self._streams.values()):
            stream.on_error(UpstreamProtocolError(str(error)))
        self._wake_senders()
        self.pump.close()
        self._cancel_scope.cancel()

    def _check_sendable(self, stream: H2Stream) -> None:
        if self.failure is not None:
            raise UpstreamProtocolError(str(self.failure))
        if stream.send_closed:
            raise UpstreamProtocolError("the stream is closed")

    async def _drained(self) -> None:
        if not await self.pump.written():
            raise UpstreamProtocolError(str(self.failure or f"connection to {self.target} closed"))

    async def _send_chunk(self, stream: H2Stream, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            self._check_sendable(stream)
            try:
                window = min(self._h2.local_flow_control_window(stream.stream_id), self._h2.max_outbound_frame_size)
                if window <= 0:
                    await self._send_wakeup.wait()
                    continue
                size = min(window, len(view))
                self._h2.send_data(stream.stream_id, view[:size].tobytes())
            except _H2_ERRORS as exc:
                raise UpstreamProtocolError(f"cannot send the request body: {exc!r}") from exc
            view = view[size:]
            self.pump.kick()
        await self._drained()

    async def _send_end(self, stream: H2Stream) -> None:
        self._check_sendable(stream)
        try:
            self._h2.end_stream(stream.stream_id)
        except _H2_ERRORS as exc:
            raise UpstreamProtocolError(f"cannot end the request body: {exc!r}") from exc
        stream.request_ended = True
        self.pump.kick()
        await self._drained()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drive the connection until it fails, is closed or is cancelled. Never raises
        anything but Cancelled; on exit every stream has failed and the socket is closed."""
        try:
            with self._cancel_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._reader)
                    nursery.start_soon(self._writer)
                    task_status.started()
        finally:
            self._fail(UpstreamProtocolError(f"connection to {self.target} closed"))
            await trio.aclose_forcefully(self._stream)
            self._on_closed(self)

    async def _writer(self) -> None:
        try:
            error = await self.pump.run()
        except Exception as exc:  # a bug must fail this connection, not the pool
            self._fail(UpstreamProtocolError(f"HTTP/2 writer failed: {exc!r}"))
            return
        if error is not None:
            self._fail(UpstreamProtocolError(f"connection to {self.target} lost while sending: {error!r}"))
        self._cancel_scope.cancel()  # failed, or finished: our GOAWAY is out

    async def _reader(self) -> None:
        try:
            while True:
                data = await self._stream.receive_some(READ_CHUNK)
                if not data:
                    self._fail(UpstreamProtocolError(f"{self.target} closed the HTTP/2 connection"))
                    return
                # h2 drops its unsent output when GOAWAY arrives: keep what is pending first
                self.pump.collect()
                try:
                    events = self._h2.receive_data(data)
                except h2.exceptions.ProtocolError as exc:
                    self._fail(UpstreamProtocolError(f"HTTP/2 protocol error from {self.target}: {exc}"))
                    return
                for event in events:
                    self._dispatch(event)
                if self.pump.collect():
                    await self.pump.backoff()  # a peer that does not read: stop reading too
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._fail(UpstreamProtocolError(f"connection to {self.target} lost: {exc!r}"))
        except Exception as exc:  # a bug must fail this connection, not the pool
            self._fail(UpstreamProtocolError(f"HTTP/2 reader failed: {exc!r}"))

    def _dispatch(self, event: h2.events.Event) -> None:
        # a response's events first (isinstance of an exact type is CPython's fast path)
        stream_id = getattr(event, "stream_id", None)
        stream = self._streams.get(stream_id) if stream_id else None
        if isinstance(event, h2.events.ResponseReceived):
            if stream is not None:
                stream.on_head(event.headers or [])
        elif isinstance(event, h2.events.DataReceived):
            if stream is None:
                self.acknowledge(event.stream_id, event.flow_controlled_length or 0)
            else:
                stream.on_data(event.data or b"", event.flow_controlled_length or 0)
        elif isinstance(event, h2.events.StreamEnded):
            if stream is not None:
                stream.on_end()
        elif isinstance(event, h2.events.TrailersReceived):
            if stream is not None:
                stream.on_trailers(event.headers or [])
        elif isinstance(event, h2.events.StreamReset):
            if stream is not None:
                code = event.error_code
                stream.on_error(UpstreamProtocolError(f"{self.target} reset the stream ({getattr(code, 'name', code)})"))
            self._wake_senders()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._advance(ConnInput.SETTINGS)
            self._wake_senders()
        elif isinstance(event, h2.events.WindowUpdated):
            self._wake_senders()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._on_goaway(event)

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        self._advance(ConnInput.DRAIN)
        last = event.last_stream_id if event.last_stream_id is not None else 0
        code = getattr(event.error_code, "name", event.error_code)
        for stream_id, stream in list(self._streams.items()):
            if stream_id > last:
                stream.on_error(UpstreamProtocolError(f"{self.target} sent GOAWAY ({code}) before processing the stream"))
        self._wake_senders()
        self.close()
