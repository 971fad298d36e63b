"""Stateless replies to a client's Initial packet (refusing a connection while draining)."""

from __future__ import annotations

from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE
from aioquic.quic.connection import TRANSPORT_CLOSE_FRAME_CAPACITY
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import QuicFrameType, QuicHeader, QuicPacketType
from aioquic.quic.packet_builder import QuicPacketBuilder


def encode_initial_close(header: QuicHeader, error_code: int, reason: str) -> bytes:
    """An Initial packet carrying CONNECTION_CLOSE (RFC 9000 10.2.3) without keeping state.

    Keys derive from the client's chosen destination CID, so no connection object is built;
    aioquic's client reports the error code promptly instead of timing out.
    """
    assert header.version is not None, "only long-header (Initial) packets are answered"
    crypto = CryptoPair()
    crypto.setup_initial(cid=header.destination_cid, is_client=False, version=header.version)
    builder = QuicPacketBuilder(
        host_cid=header.destination_cid,
        is_client=False,
        max_datagram_size=SMALLEST_MAX_DATAGRAM_SIZE,
        peer_cid=header.source_cid,
        version=header.version,
    )
    builder.start_packet(QuicPacketType.INITIAL, crypto)
    phrase = reason.encode("ascii")[:64]
    buf = builder.start_frame(QuicFrameType.TRANSPORT_CLOSE, capacity=TRANSPORT_CLOSE_FRAME_CAPACITY + len(phrase))
    buf.push_uint_var(error_code)
    buf.push_uint_var(QuicFrameType.PADDING)
    buf.push_uint_var(len(phrase))
    buf.push_bytes(phrase)
    datagrams, _ = builder.flush()
    return datagrams[0]
