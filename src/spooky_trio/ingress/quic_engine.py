"""aioquic subclasses for the server side: SNI certificate choice and consumption-based
stream windows. They override private aioquic hooks; tests/integration cover both (SNI
selection, slow-backend upload backpressure), so an aioquic upgrade that moves them fails loudly.
"""

from __future__ import annotations

from typing import Any

from aioquic import tls
from aioquic.buffer import Buffer
from aioquic.quic.connection import MAX_STREAM_DATA_FRAME_CAPACITY, QuicConnection
from aioquic.quic.packet import QuicFrameType

from spooky_trio.ingress.identities import IdentityStore


#: below this many bytes left in a packet, no STREAM frame worth building fits (its header
#: alone takes up to 19 bytes); skipping only defers the stream to the next packet
_MIN_STREAM_FRAME_SPACE = 32


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

    # aioquic's _write_application calls the two hooks below for every open stream in every
    # packet it builds: with 32 streams downloading, ~15 calls per packet. The early returns
    # keep that walk cheap (profile in docs/performance.md).

    def _write_stream_frame(self, builder, space, stream, max_offset) -> int:  # type: ignore[no-untyped-def]
        if builder.remaining_flight_space < _MIN_STREAM_FRAME_SPACE:
            return 0  # the packet is full: this stream is served by the next one
        return super()._write_stream_frame(builder, space, stream, max_offset)

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
