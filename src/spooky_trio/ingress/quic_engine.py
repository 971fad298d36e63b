"""aioquic subclasses for the server side: SNI certificate choice, consumption-based
stream windows, an RFC 9000 acknowledgement policy and our connection IDs (``cid_source``:
worker steering and QUIC-LB, ingress/cids.py; ``rotate_cids`` with Retire Prior To). They
override private aioquic hooks; tests cover each (SNI selection, slow-backend upload
backpressure, tests/ingress/test_quic_acks.py, tests/ingress/test_quic_cids.py), and
:mod:`spooky_trio.aioquic_compat` checks at import that the installed aioquic still has them,
so an aioquic upgrade that moves them fails loudly. (About 420 lines: every override of
the server's QuicConnection belongs in this one checked module, by the boundary rule.)

This module (with ``ingress/h3.py`` for the HTTP/3 layer) is the one place on the server
that reads aioquic's private QUIC state: the rest of ingress (``quic_connection.py``,
``quic.py``) asks :class:`SpookyQuicConnection`'s named methods (``stream_read_offset``,
``send_buffer_below``, ``all_sent_data_acked``, ``is_closing``);
``tests/unit/test_aioquic_boundary.py`` enforces it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from aioquic import tls
from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.connection import (
    MAX_STREAM_DATA_FRAME_CAPACITY,
    NEW_CONNECTION_ID_FRAME_CAPACITY,
    Limit,
    QuicConnection,
    QuicConnectionId,
    QuicConnectionState,
    QuicReceiveContext,
    stream_is_client_initiated,
    stream_is_unidirectional,
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
#: one copy of each set of epochs a frame type is allowed in (see _watch_frames)
_EPOCH_SETS: dict[frozenset[tls.Epoch], frozenset[tls.Epoch]] = {}


class _Loud:
    """A frame handler that marks a reply due first (see ``_watch_frames``); a slotted
    object, a third of the memory of a closure (~20 per connection)."""

    __slots__ = ("conn", "handler")

    def __init__(self, conn: SpookyQuicConnection, handler: Callable[[QuicReceiveContext, int, Buffer], Any]) -> None:
        self.conn = conn
        self.handler = handler

    def __call__(self, context: QuicReceiveContext, frame_type: int, buf: Buffer) -> Any:
        self.conn._reply_due = True
        return self.handler(context, frame_type, buf)


#: connection states in which the connection is ending (see SpookyQuicConnection.is_closing);
#: a tuple, not a set: membership then compares identities, while a set would call the
#: Enum's Python-level __hash__ on every flush
_ENDING_STATES = (QuicConnectionState.CLOSING, QuicConnectionState.DRAINING, QuicConnectionState.TERMINATED)


def _announces_streams(limit: Limit, freed: int) -> bool:
    """Whether the next transmit sends MAX_STREAMS for ``limit`` once it discarded ``freed``
    finished streams (each raises the limit by one): aioquic's batching rule in
    ``_write_connection_limits``, which holds an update back while the peer has at least
    as many streams left to open as the update would add."""
    value = limit.value + freed
    return value != limit.sent and limit.sent - limit.used < value - limit.sent


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

    def __init__(
        self, *, identities: IdentityStore, max_streams_bidi: int, max_streams_uni: int,
        cid_source: Callable[[], bytes] | None = None, **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        #: where our connection IDs come from (None: aioquic's os.urandom); see new_host_cid
        self._cid_source = cid_source
        #: the Retire Prior To our NEW_CONNECTION_ID frames carry (aioquic always sends 0)
        self._retire_prior_to = 0
        if cid_source is not None:
            # the initial CID is aioquic's until here: nothing was sent with it yet
            first = self._host_cids[0]
            first.cid = self.host_cid = self._local_initial_source_connection_id = cid_source()
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

    # --- connection IDs: ours come from cid_source (worker steering, QUIC-LB), and a new
    # source retires every CID of the old one (RFC 9000 5.1.2 Retire Prior To) ---

    def new_host_cid(self) -> bytes:
        """A connection ID of ours: from ``cid_source``, else random as aioquic makes them."""
        if self._cid_source is None:
            return os.urandom(self._configuration.connection_id_length)
        return self._cid_source()

    @overrides
    def _replenish_connection_ids(self) -> None:
        # aioquic's loop, with our generator in place of os.urandom
        while len(self._host_cids) < min(8, self._remote_active_connection_id_limit):
            self._host_cids.append(
                QuicConnectionId(cid=self.new_host_cid(), sequence_number=self._host_cid_seq, stateless_reset_token=os.urandom(16))
            )
            self._host_cid_seq += 1

    def rotate_cids(self, cid_source: Callable[[], bytes]) -> list[bytes]:
        """Issue CIDs from ``cid_source`` from now on and ask the peer to retire every CID
        issued before (a reload changed the QUIC-LB config): as many new ones as the peer
        accepts, each NEW_CONNECTION_ID carrying Retire Prior To = the first new sequence
        number; exceeding the peer's limit meanwhile is allowed by RFC 9000 5.1.1. The old
        CIDs keep routing to this connection until the peer retires them, so nothing drops.

        Returns the new CIDs: the caller routes them at once, since the peer uses one in its
        very next packet (aioquic's ConnectionIdIssued event comes only with the next events)."""
        self._cid_source = cid_source
        if not self._handshake_complete or self._state is not QuicConnectionState.CONNECTED:
            return []  # a connection still in its handshake keeps the CIDs it has
        self._retire_prior_to = self._host_cid_seq
        issued = []
        for _ in range(min(8, self._remote_active_connection_id_limit)):
            issued.append(self.new_host_cid())
            self._host_cids.append(
                QuicConnectionId(cid=issued[-1], sequence_number=self._host_cid_seq, stateless_reset_token=os.urandom(16))
            )
            self._host_cid_seq += 1
        self._reply_due = True
        return issued

    @overrides
    def _write_new_connection_id_frame(self, builder: QuicPacketBuilder, connection_id: QuicConnectionId) -> None:
        if self._retire_prior_to == 0:
            return super()._write_new_connection_id_frame(builder, connection_id)
        # aioquic's frame with our Retire Prior To in place of its constant 0
        buf = builder.start_frame(
            QuicFrameType.NEW_CONNECTION_ID,
            capacity=NEW_CONNECTION_ID_FRAME_CAPACITY,
            handler=self._on_new_connection_id_delivery,
            handler_args=(connection_id,),
        )
        buf.push_uint_var(connection_id.sequence_number)
        buf.push_uint_var(self._retire_prior_to)
        buf.push_uint8(len(connection_id.cid))
        buf.push_bytes(connection_id.cid)
        buf.push_bytes(connection_id.stateless_reset_token)
        connection_id.was_sent = True
        self._events.append(events.ConnectionIdIssued(connection_id=connection_id.cid))
        return None

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
        # The server discards HANDSHAKE when the client's Finished completes the handshake,
        # after the one ONE_RTT message a server writes (the session ticket) has gone to the
        # crypto stream; TLS writes nothing later (a post-handshake message from the client
        # is an unexpected_message alert before any output), so that buffer goes too.
        if epoch is tls.Epoch.INITIAL or epoch is tls.Epoch.HANDSHAKE:
            self._crypto_buffers[epoch] = Buffer(capacity=0)
        if epoch is tls.Epoch.HANDSHAKE and self._handshake_complete:
            self._crypto_buffers[tls.Epoch.ONE_RTT] = Buffer(capacity=0)

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

        for frame_type, (handler, epochs) in list(handlers.items()):
            # aioquic builds a new frozenset of epochs per frame type per connection (~3 KiB
            # of an idle connection); equal sets are shared instead
            epochs = _EPOCH_SETS.setdefault(epochs, epochs)
            handlers[frame_type] = (handler if frame_type in _QUIET_FRAME_TYPES else _Loud(self, handler), epochs)

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
        due, stream credit to announce) answers True.

        Stream credit: aioquic discards a finished stream, and grants the client a new one
        for it, only while building packets (``_write_application``). The ACK that
        finishes a response's stream is often the last datagram of an exchange: without a
        transmit then, a client that used all its credit waits for MAX_STREAMS until the
        idle timeout. So the finished streams count, as aioquic would announce them.
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
        freed_bidi = freed_uni = 0
        for stream_id, stream in self._streams.items():
            sender = stream.sender
            if len(sender._pending) or sender._pending_eof or sender.reset_pending or stream.receiver.stop_pending:
                return True
            if sender.is_finished and stream.receiver.is_finished and stream_is_client_initiated(stream_id) != self._is_client:
                if stream_is_unidirectional(stream_id):
                    freed_uni += 1
                else:
                    freed_bidi += 1
        return _announces_streams(self._local_max_streams_bidi, freed_bidi) or _announces_streams(self._local_max_streams_uni, freed_uni)

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
require_method(QuicConnection, "_on_new_connection_id_delivery", ("delivery", "connection_id"))
require_method(QuicPacketRecovery, "_on_packets_lost", ("congestion_event", "now", "packets", "persistent_congestion", "space"))
