"""aioquic subclasses for the server side: SNI certificate choice, consumption-based
stream windows and an RFC 9000 acknowledgement policy. They override private aioquic hooks;
tests cover each (SNI selection, slow-backend upload backpressure, tests/ingress/test_quic_acks.py),
and :mod:`spooky_trio.aioquic_compat` checks at import that the installed aioquic still has
them, so an aioquic upgrade that moves them fails loudly.

This module (with ``ingress/h3.py`` for the HTTP/3 layer) is the one place on the server
that reads aioquic's private QUIC state: the rest of ingress (``quic_connection.py``,
``quic.py``) asks :class:`SpookyQuicConnection`'s named methods (``stream_read_offset``,
``send_buffer_below``, ``all_sent_data_acked``, ``is_closing``);
``tests/unit/test_aioquic_boundary.py`` enforces it.
"""

from __future__ import annotations

from typing import Any

from aioquic import tls
from aioquic.buffer import Buffer
from aioquic.quic.connection import (
    MAX_STREAM_DATA_FRAME_CAPACITY,
    QuicConnection,
    QuicConnectionState,
    QuicReceiveContext,
)
from aioquic.quic.packet import QuicFrameType
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.recovery import QuicPacketRecovery, QuicPacketSpace

from spooky_trio.aioquic_compat import check_overrides, overrides, require_method
from spooky_trio.ingress.identities import IdentityStore

#: below this many bytes left in a packet, no STREAM frame worth building fits (its header
#: alone takes up to 19 bytes); skipping only defers the stream to the next packet
_MIN_STREAM_FRAME_SPACE = 32

#: how long a lone ack-eliciting 1-RTT packet may wait for its ACK (below the 25 ms
#: max_ack_delay aioquic advertises, leaving room for a late timer). aioquic's own 1 ms
#: means one ACK-only datagram and one timer wake-up per request, since a response rarely
#: leaves within a millisecond of its request.
ACK_DELAY = 0.015
#: ack-eliciting 1-RTT packets after which an ACK is due at once (RFC 9000 13.2.2: "SHOULD
#: send an ACK frame after receiving at least two ack-eliciting packets")
ACK_ELICITING_THRESHOLD = 2

#: frame types whose receipt asks for no immediate reply of ours: PADDING, ACK (its effects
#: are watched separately: declared losses, data waiting for the window it opens) and STREAM
#: (answered by the application, which schedules its own transmit; the ACK it elicits is
#: delayed anyway). Any other frame (PING, MAX_DATA, PATH_CHALLENGE, CRYPTO, ...) means
#: "transmit after this burst".
_QUIET_FRAME_TYPES = frozenset({0x00, 0x02, 0x03, *range(0x08, 0x10)})

#: connection states in which the connection is ending (see SpookyQuicConnection.is_closing);
#: a tuple, not a set: membership then compares identities, while a set would call the
#: Enum's Python-level __hash__ on every flush
_ENDING_STATES = (QuicConnectionState.CLOSING, QuicConnectionState.DRAINING, QuicConnectionState.TERMINATED)


class _SniContext(tls.Context):
    """aioquic TLS context that picks the certificate from the ClientHello's SNI."""

    identities: IdentityStore
    #: the ClientHello's SNI (None: none, or no hello yet)
    requested_server_name: str | None = None

    @overrides
    def _server_handle_hello(self, input_buf: Buffer, initial_buf: Buffer, handshake_buf: Buffer) -> None:
        start = input_buf.tell()
        try:
            hello = tls.pull_client_hello(input_buf)
            server_name = hello.server_name
        except Exception:  # malformed hello: let aioquic raise its own alert below
            server_name = None
        input_buf.seek(start)
        self.requested_server_name = server_name
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
        self._ack_delay = ACK_DELAY
        #: ack-eliciting 1-RTT packets received since our last ACK frame in that space
        self._eliciting_unacked = 0
        #: stream data was queued since the last datagrams_to_send: a pending ACK rides along
        self._data_queued = False
        #: something arrived since the last datagrams_to_send that may want an answer
        self._reply_due = True
        self._skip_idle_transmits = self._watch_frames()
        self._identities = identities
        self._stream_window = self._configuration.max_stream_data
        #: stream id -> stream offset the application has consumed up to
        self.consumed_offsets: dict[int, int] = {}
        for limit, value in ((self._local_max_streams_bidi, max_streams_bidi), (self._local_max_streams_uni, max_streams_uni)):
            limit.value = limit.sent = value

    @overrides
    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        self.tls.__class__ = _SniContext
        self.tls.identities = self._identities  # type: ignore[attr-defined]

    @overrides
    def _discard_epoch(self, epoch: tls.Epoch) -> None:
        super()._discard_epoch(epoch)
        # aioquic keeps a 16 KiB TLS output buffer per epoch for the connection's whole life.
        # Once an epoch's keys are discarded nothing is written there again (aioquic moves
        # TLS output to the crypto stream right after each message, before it discards, and
        # a discarded epoch's packets are neither decrypted nor sent), so the two handshake
        # epochs' buffers become empty ones: 32 KiB of allocations and ~8 KiB of resident
        # memory (the pages the handshake wrote) less per idle connection, 98 -> 90 KiB
        # (docs/performance.md "Round two"). A write there would raise, not corrupt.
        if epoch is tls.Epoch.INITIAL or epoch is tls.Epoch.HANDSHAKE:
            self._crypto_buffers[epoch] = Buffer(capacity=0)

    # --- acknowledgements (RFC 9000 13.2): delay a lone ACK, piggyback it on responses,
    # send one at once after every second ack-eliciting packet ---

    @overrides
    def _payload_received(self, context: QuicReceiveContext, plain: bytes, crypto_frame_required: bool = False) -> tuple[bool, bool]:
        is_ack_eliciting, is_probing = super()._payload_received(context, plain, crypto_frame_required=crypto_frame_required)
        if is_ack_eliciting and context.epoch == tls.Epoch.ONE_RTT:
            self._eliciting_unacked += 1
            if self._eliciting_unacked >= ACK_ELICITING_THRESHOLD:
                # due now: aioquic only sets ack_at when it is None, so this one stands
                self._spaces[tls.Epoch.ONE_RTT].ack_at = context.time
        return is_ack_eliciting, is_probing

    @overrides
    def _write_ack_frame(self, builder: QuicPacketBuilder, space: QuicPacketSpace, now: float) -> None:
        super()._write_ack_frame(builder, space, now)
        if space is self._spaces.get(tls.Epoch.ONE_RTT):
            self._eliciting_unacked = 0

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        super().send_stream_data(stream_id, data, end_stream)
        if data or end_stream:  # (aioquic's H3 layer also "sends" b"" on its QPACK streams)
            self._data_queued = True

    # --- transmit only when something may be sent (see needs_transmit) ---

    def _watch_frames(self) -> bool:
        """Mark a reply due whenever a frame outside _QUIET_FRAME_TYPES is handled or a
        packet is declared lost. False (never skip a transmit) if aioquic's internals moved."""
        handlers = getattr(self, "_QuicConnection__frame_handlers", None)
        original_lost = getattr(self._loss, "_on_packets_lost", None)
        if not isinstance(handlers, dict) or original_lost is None:
            return False

        def loud(handler: Any) -> Any:
            def handle(context: QuicReceiveContext, frame_type: int, buf: Buffer) -> Any:
                self._reply_due = True
                return handler(context, frame_type, buf)

            return handle

        for frame_type, (handler, epochs) in list(handlers.items()):
            if frame_type not in _QUIET_FRAME_TYPES:
                handlers[frame_type] = (loud(handler), epochs)

        def on_packets_lost(*, packets: Any, **kwargs: Any) -> None:
            packets = list(packets)
            if packets:  # their frames are queued again: retransmit
                self._reply_due = True
            original_lost(packets=packets, **kwargs)

        self._loss._on_packets_lost = on_packets_lost  # type: ignore[method-assign]
        return True

    def needs_transmit(self, now: float) -> bool:
        """Whether datagrams_to_send(now) may have anything to send after a receive burst.

        False only when the burst brought nothing but STREAM/ACK/PADDING frames and nothing
        is waiting to go out: the common case of a request (its ACK is delayed, the response
        comes later) and of the client's ACK of a response. Skipping then saves a full walk
        of aioquic's packet builder over every stream; the caller still updates the timer.
        Conservative: any doubt (handshake, closing, pending frames or stream data, an ACK
        due) answers True.
        """
        if (
            self._reply_due
            or not self._skip_idle_transmits
            or self._data_queued
            or self._state is not QuicConnectionState.CONNECTED
            or not self._handshake_complete
            or self._close_pending
            or self._probe_pending
            or self._ping_pending
            or self._handshake_done_pending
            or self._retire_connection_ids
            or self._streams_blocked_pending
            or self._datagrams_pending
        ):
            return True
        for space in self._spaces.values():
            if space.ack_at is not None and space.ack_at <= now:
                return True
        for stream in self._streams.values():
            sender = stream.sender
            if len(sender._pending) or sender._pending_eof or sender.reset_pending or stream.receiver.stop_pending:
                return True
        return False

    # --- named reads of aioquic's stream and connection state, for quic_connection.py and
    # quic.py (which touch no aioquic internals). Plain methods, no properties: the first two
    # run per received DATA frame and per response chunk. ---

    def stream_read_offset(self, stream_id: int) -> int:
        """The highest offset received so far on ``stream_id`` (what a DATA event's bytes
        reach up to); 0 for a stream aioquic does not hold (never opened, or discarded)."""
        stream = self._streams.get(stream_id)
        return stream.receiver.highest_offset if stream is not None else 0

    def send_buffer_below(self, stream_id: int, limit: int) -> bool:
        """Whether a writer of ``stream_id`` may go on: fewer than ``limit`` bytes written to it
        are still unacknowledged (sent or not), or there is nothing to wait for (aioquic does
        not hold the stream, or a RESET_STREAM is waiting to go out)."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return True
        sender = stream.sender
        return sender._buffer_stop - sender._buffer_start < limit or sender.reset_pending

    def all_sent_data_acked(self) -> bool:
        """True when the peer acknowledged every byte written on every stream aioquic holds
        (``close()`` discards unacknowledged stream data, so a graceful close waits for this)."""
        for stream in self._streams.values():
            sender = stream.sender
            if sender._buffer_start != sender._buffer_stop:
                return False
        return True

    def server_name(self) -> str | None:
        """The SNI of the client's ClientHello (None: it sent none, or no hello arrived yet)."""
        context = self.tls
        return context.requested_server_name if isinstance(context, _SniContext) else None

    def is_closing(self) -> bool:
        """A close was asked for (sent with the next transmit) or the connection is closing,
        draining or terminated: its ConnectionTerminated event is due or already queued."""
        return self._close_pending or self._state in _ENDING_STATES

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        self._reply_due = False
        if self._data_queued:
            self._data_queued = False
            space = self._spaces.get(tls.Epoch.ONE_RTT)
            if space is not None and space.ack_at is not None and space.ack_at > now:
                space.ack_at = now  # a pending ACK goes out with the data instead of on its own
        return super().datagrams_to_send(now)

    # aioquic's _write_application calls the two hooks below for every open stream in every
    # packet it builds: with 32 streams downloading, ~15 calls per packet. The early returns
    # keep that walk cheap (profile in docs/performance.md).

    @overrides
    def _write_stream_frame(self, builder, space, stream, max_offset) -> int:  # type: ignore[no-untyped-def]
        if builder.remaining_flight_space < _MIN_STREAM_FRAME_SPACE:
            return 0  # the packet is full: this stream is served by the next one
        return super()._write_stream_frame(builder, space, stream, max_offset)

    @overrides
    def _write_stream_limits(self, builder, space, stream) -> None:  # type: ignore[no-untyped-def]
        if stream.receiver._final_size is not None:
            return  # the peer sent FIN: no MAX_STREAM_DATA once the final size is known (RFC 9000 3.2)
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


# an aioquic that moved a hook above fails here, at import (spooky_trio/aioquic_compat.py)
check_overrides(_SniContext)
check_overrides(SpookyQuicConnection)
require_method(QuicConnection, "_on_max_stream_data_delivery", ("delivery", "stream"))
require_method(QuicPacketRecovery, "_on_packets_lost", ("congestion_event", "now", "packets", "persistent_congestion", "space"))
