"""aioquic subclasses of the HTTP/3 client transport (:mod:`spooky_trio.upstream.h3_transport`),
which the upstream HTTP/3 pool (:mod:`spooky_trio.upstream.h3`) and the operator's client
(:mod:`spooky_trio.clients.h3`) both drive.

aioquic is sans-IO and mostly configurable, but two behaviours the client needs are not
exposed publicly, so they are added here by overriding (version-pinned) private hooks:

* **Receive flow control that follows the application.** Stock aioquic doubles a stream's
  MAX_STREAM_DATA whenever the peer has used half of it, no matter whether the application
  has read anything, so a slow reader makes the client buffer without bound.
  :class:`FlowControlledQuicConnection` instead grants credit for *tracked* streams as
  ``consumed + window`` where ``consumed`` is the stream offset handed to the HTTP/3 layer
  minus the payload bytes the application has not read yet. A slow reader therefore holds
  the server back after at most ``window`` bytes per stream. (Connection-level MAX_DATA keeps
  aioquic's automatic growth: the per-stream windows already bound the buffering.)
* **Send-buffer visibility.** aioquic accepts unlimited writes and buffers them;
  :meth:`FlowControlledQuicConnection.unsent_bytes` reports how much written data has not
  been put on the wire yet, so the client can stop writing until the buffer drains.
* **GOAWAY.** aioquic's :class:`H3Connection` validates GOAWAY but emits no event;
  :class:`GoawayAwareH3Connection` records that one arrived.

* **Stream budget and liveness.** aioquic queues a stream opened beyond the peer's
  MAX_STREAMS silently and grows no event when the peer raises it; the pool reads
  :meth:`FlowControlledQuicConnection.bidi_streams_available` so that a request never waits
  there unseen. :attr:`~FlowControlledQuicConnection.probe_timeouts` (consecutive probe
  timeouts without an acknowledgement) tells a dead peer from a slow one long before the
  idle timeout, and :meth:`~FlowControlledQuicConnection.stream_data_acked` whether the peer
  acknowledged any byte of a request stream.

This is the transport's one module that touches aioquic internals: the rest of
:mod:`spooky_trio.upstream` and :mod:`spooky_trio.clients` uses the named methods and
properties below (``peer_cid``, ``close_event``, ``peer_certificate``, ``unsent_bytes``, ...), and
``tests/unit/test_aioquic_boundary.py`` enforces it. :mod:`spooky_trio.aioquic_compat` checks
at import that the installed aioquic still has the hooks overridden here.
"""

from __future__ import annotations

from typing import Any

from aioquic.h3.connection import FrameType, H3Connection, H3Stream
from aioquic.quic.connection import MAX_STREAM_DATA_FRAME_CAPACITY, QuicConnection
from aioquic.quic.events import ConnectionTerminated
from aioquic.quic.packet import QuicFrameType
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.recovery import QuicPacketSpace
from aioquic.quic.stream import QuicStream
from cryptography import x509

from spooky_trio.aioquic_compat import check_overrides, install_fast_header_checks, overrides, require_method


class FlowControlledQuicConnection(QuicConnection):
    """A :class:`QuicConnection` whose tracked streams get receive credit only as the
    application consumes data (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._window = self.configuration.max_stream_data
        # stream id -> payload bytes delivered to the application but not read yet
        self._backlog: dict[int, int] = {}

    @property
    def peer_cid(self) -> bytes:
        """The connection ID this endpoint currently sends to (issued by the peer)."""
        return self._peer_cid.cid

    @property
    def close_event(self) -> ConnectionTerminated | None:
        """How the connection was (or is being) closed, as soon as the close starts.

        aioquic only emits :class:`ConnectionTerminated` after the closing/draining period
        (three PTOs); a client that is about to stop using the connection need not wait.
        """
        return self._close_event

    @property
    def peer_certificate(self) -> x509.Certificate | None:
        """The server's leaf certificate from the handshake (None before it arrived)."""
        context = getattr(self, "tls", None)  # aioquic creates the TLS context in connect()
        return context._peer_certificate if context is not None else None

    # -- application bookkeeping ---------------------------------------------------------

    def track_stream(self, stream_id: int) -> None:
        """Manage the receive window of ``stream_id`` from application consumption."""
        self._backlog[stream_id] = 0

    def untrack_stream(self, stream_id: int) -> None:
        """Stop tracking ``stream_id`` (its state is gone; aioquic's default applies)."""
        self._backlog.pop(stream_id, None)

    def set_backlog(self, stream_id: int, unread: int) -> None:
        """Record how many received payload bytes of ``stream_id`` are still unread."""
        if stream_id in self._backlog:
            self._backlog[stream_id] = unread

    def credit_due(self, stream_id: int) -> bool:
        """Whether reading has freed enough window that a MAX_STREAM_DATA is worth sending."""
        stream = self._streams.get(stream_id)
        if stream is None or stream_id not in self._backlog or stream.receiver.is_finished:
            return False
        return self._credit_target(stream) - stream.max_stream_data_local_sent >= self._window // 2

    def unsent_bytes(self, stream_id: int) -> int:
        """Bytes written to ``stream_id`` that have not been transmitted even once."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.sender.buffer_is_empty:
            return 0
        return max(0, stream.sender._buffer_stop - stream.sender.highest_offset)

    def bidi_streams_available(self) -> int:
        """Request streams the peer's MAX_STREAMS still allows us to open (0 before its
        transport parameters arrived). aioquic would queue a stream beyond it unseen."""
        return max(0, self._remote_max_streams_bidi - self._local_next_stream_id_bidi // 4)

    @property
    def probe_timeouts(self) -> int:
        """Consecutive probe timeouts (PTO) since the peer last acknowledged anything."""
        return self._loss._pto_count

    def stream_data_acked(self, stream_id: int) -> bool:
        """Whether the peer acknowledged any byte (or the FIN) we sent on ``stream_id``."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return False
        sender = stream.sender
        return sender._buffer_start > 0 or len(sender._acked) > 0 or sender._acked_fin  # (RangeSet has no truth value)

    def abort_stream(self, stream_id: int, error_code: int, *, stop_receiving: bool, reset_sending: bool) -> None:
        """Send STOP_SENDING and/or RESET_STREAM for a stream aioquic still knows about."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if stop_receiving and not stream.receiver.is_finished:
            stream.receiver.stop(error_code)
        if reset_sending:
            stream.sender.reset(error_code)

    # -- aioquic hooks ---------------------------------------------------------------------

    def _credit_target(self, stream: QuicStream) -> int:
        consumed = stream.receiver.starting_offset() - self._backlog.get(stream.stream_id or 0, 0)
        return max(stream.max_stream_data_local, consumed + self._window)

    @overrides
    def _write_stream_limits(self, builder: QuicPacketBuilder, space: QuicPacketSpace, stream: QuicStream) -> None:
        """Raise MAX_STREAM_DATA by consumption for tracked streams; defer to aioquic otherwise."""
        if stream.stream_id not in self._backlog:
            super()._write_stream_limits(builder=builder, space=space, stream=stream)
            return
        if stream.receiver.is_finished:
            return
        target = self._credit_target(stream)
        # Batch updates (half a window at a time); a lost frame resets `..._sent` to 0,
        # which makes the difference large and re-sends it.
        if target - stream.max_stream_data_local_sent < self._window // 2:
            return
        stream.max_stream_data_local = target
        buf = builder.start_frame(
            QuicFrameType.MAX_STREAM_DATA,
            capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
            handler=self._on_max_stream_data_delivery,
            handler_args=(stream,),
        )
        buf.push_uint_var(stream.stream_id)
        buf.push_uint_var(target)
        stream.max_stream_data_local_sent = target
        if self._quic_logger is not None and builder.quic_logger_frames is not None:
            builder.quic_logger_frames.append(
                self._quic_logger.encode_max_stream_data_frame(maximum=target, stream_id=stream.stream_id)
            )


class GoawayAwareH3Connection(H3Connection):
    """An :class:`H3Connection` that notes when the server's control stream carries GOAWAY,
    and knows a response to HEAD has no body.

    aioquic 1.7 skips GOAWAY payloads without a hook, so the frame is detected when its
    type is validated; the identifier it carries is not needed by the client. It also holds
    every response to its declared ``content-length``, a HEAD response included (whose
    length is the GET's, RFC 9110 9.3.2), and closes the connection over it: the streams in
    :attr:`head_requests` are exempt.
    """

    def __init__(self, quic: QuicConnection) -> None:
        super().__init__(quic)
        self.goaway_seen = False
        #: request streams whose method is HEAD (the client adds and removes them)
        self.head_requests: set[int] = set()

    @overrides
    def _check_content_length(self, stream: H3Stream) -> None:
        if stream.stream_id not in self.head_requests:
            super()._check_content_length(stream)

    @overrides
    def _check_control_frame_type(self, frame_type: int) -> None:
        super()._check_control_frame_type(frame_type)  # raises for frames not allowed there
        if frame_type == FrameType.GOAWAY:
            self.goaway_seen = True


# an aioquic that moved a hook above fails here, at import (spooky_trio/aioquic_compat.py)
check_overrides(FlowControlledQuicConnection)
check_overrides(GoawayAwareH3Connection)
install_fast_header_checks()  # aioquic validates response fields too
require_method(QuicConnection, "_on_max_stream_data_delivery", ("delivery", "stream"))
