"""HTTP/3 request streams: validation, the request body reader and the response sink.

aioquic's H3Connection treats a malformed request as a connection error; RFC 9114 section
4.1.2 makes it a stream error (H3_MESSAGE_ERROR) so the connection's other streams keep
working. :class:`StreamScopedH3Connection` narrows it accordingly.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import attrs
import trio
from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import (
    ErrorCode,
    FrameType,
    H3Connection,
    MessageError,
    encode_frame,
)
from aioquic.h3.events import H3Event

from spooky_trio.http.messages import Headers, RequestBodyError

if TYPE_CHECKING:
    from spooky_trio.ingress.quic_connection import QuicConnectionTask

#: Unacknowledged response bytes buffered in aioquic per stream before ``send_data`` waits.
SEND_BUFFER_HIGH_WATER = 256 * 1024


@attrs.define(slots=True)
class MalformedRequest(H3Event):
    """Synthetic event: the request on ``stream_id`` broke RFC 9114 and was reset."""

    stream_id: int
    reason: str


class StreamScopedH3Connection(H3Connection):
    """H3Connection whose message errors reset one stream instead of closing the connection."""

    def __init__(self, quic, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(quic, **kwargs)
        self.malformed_streams: set[int] = set()
        self.max_request_stream_id = -4

    def _handle_request_or_push_frame(self, frame_type, frame_data, stream, stream_ended):  # type: ignore[no-untyped-def, override]
        stream_id = stream.stream_id
        if stream_id in self.malformed_streams:
            return []
        try:
            events = super()._handle_request_or_push_frame(frame_type, frame_data, stream, stream_ended)
        except MessageError as exc:
            self.malformed_streams.add(stream_id)
            self._quic.reset_stream(stream_id, ErrorCode.H3_MESSAGE_ERROR)
            self._quic.stop_stream(stream_id, ErrorCode.H3_MESSAGE_ERROR)
            return [MalformedRequest(stream_id=stream_id, reason=exc.reason_phrase)]
        if stream_id > self.max_request_stream_id and stream_id % 4 == 0:
            self.max_request_stream_id = stream_id
        return events

    def send_goaway(self) -> None:
        """GOAWAY naming the first request stream we will not serve (RFC 9114 5.2)."""
        next_id = self.max_request_stream_id + 4
        self._quic.send_stream_data(
            self._local_control_stream_id,
            encode_frame(FrameType.GOAWAY, encode_uint_var(next_id)),
        )


def parse_request_head(headers: Headers) -> tuple[dict[bytes, bytes], Headers]:
    """Split validated request headers into pseudo-headers and regular headers.

    aioquic already enforced RFC 9114 4.3.1 syntax (lowercase names, pseudo-headers first,
    no duplicates, no connection-specific fields). Here the rules it leaves to the
    application: ``:scheme`` and ``:path`` are required except for CONNECT.
    Raises :class:`MessageError`.
    """
    pseudo: dict[bytes, bytes] = {}
    regular: Headers = []
    for name, value in headers:
        if name[:1] == b":":
            pseudo[name] = value
        else:
            regular.append((name, value))
    if pseudo.get(b":method") != b"CONNECT":
        if b":scheme" not in pseudo or b":path" not in pseudo:
            raise MessageError("request lacks :scheme or :path")
        if b":protocol" in pseudo:
            raise MessageError(":protocol is only valid with CONNECT")
    return pseudo, regular


class H3RequestBody:
    """The body of one request stream, fed by the connection's receive path.

    ``receive`` hands chunks to the pipeline and reports the stream offset consumed, so the
    QUIC connection opens the client's flow-control window only as far as the pipeline read.
    """

    def __init__(self, conn: QuicConnectionTask, stream_id: int) -> None:
        self._conn = conn
        self._stream_id = stream_id
        self._chunks: deque[tuple[bytes, int]] = deque()
        self.ended = False
        self._error: RequestBodyError | None = None
        self._wakeup = trio.Event()

    def feed(self, data: bytes, end: bool, offset: int) -> None:
        """Queue ``data``, received up to QUIC stream ``offset``; ``end`` marks the last chunk."""
        if self._error is not None or self.ended:
            return
        if data:
            self._chunks.append((data, offset))
        if end:
            self.ended = True
        self._wakeup.set()

    def fail(self, error: RequestBodyError) -> None:
        if self._error is None:
            self._error = error
        self._wakeup.set()

    async def receive(self) -> bytes:
        while True:
            if self._error is not None:
                raise self._error
            if self._chunks:
                chunk, offset = self._chunks.popleft()
                self._conn.body_consumed(self._stream_id, offset)
                return chunk
            if self.ended:
                return b""
            self._wakeup = trio.Event()
            await self._wakeup.wait()


class H3ResponseSink:
    """Writes one response to an HTTP/3 stream, bounded by :data:`SEND_BUFFER_HIGH_WATER`.

    A CONNECT stream's sink (``tunnel_body`` given) can :meth:`open_tunnel`."""

    def __init__(self, conn: QuicConnectionTask, stream_id: int, tunnel_body: H3RequestBody | None = None) -> None:
        self._conn = conn
        self._stream_id = stream_id
        self._tunnel_body = tunnel_body
        self.headers_sent = False
        self.finished = False
        self.aborted = False

    def _check(self) -> None:
        if self.aborted:
            raise trio.BrokenResourceError("client reset the stream")

    async def send_headers(self, status: int, headers: Headers, *, end_stream: bool = False) -> None:
        self._check()
        head = [(b":status", str(status).encode("ascii")), *headers]
        self._conn.h3.send_headers(self._stream_id, head, end_stream=end_stream)
        self.headers_sent = True
        self.finished = end_stream
        self._conn.schedule_transmit()

    async def send_data(self, data: bytes, *, end_stream: bool = False) -> None:
        self._check()
        self._conn.h3.send_data(self._stream_id, data, end_stream)
        self.finished = end_stream
        self._conn.schedule_transmit()
        await self._conn.wait_send_buffer_below(self._stream_id, SEND_BUFFER_HIGH_WATER)
        self._check()

    async def send_trailers(self, trailers: Headers) -> None:
        self._check()
        self._conn.h3.send_headers(self._stream_id, trailers, end_stream=True)
        self.finished = True
        self._conn.schedule_transmit()

    def reset(self, reason: str) -> None:
        if self.finished or self.aborted:
            return
        self.aborted = True
        self._conn.reset_stream(self._stream_id, ErrorCode.H3_INTERNAL_ERROR)

    async def open_tunnel(self, headers: Headers) -> H3Tunnel:
        """Accept a CONNECT (RFC 9114 4.4): 200, then the stream's DATA both ways."""
        if self._tunnel_body is None:
            raise trio.BrokenResourceError("only a CONNECT stream can become a tunnel")
        await self.send_headers(200, headers)
        return H3Tunnel(self, self._tunnel_body)


class H3Tunnel:
    """The client side of a CONNECT relay: DATA frames on one request stream."""

    supports_half_close = True

    def __init__(self, sink: H3ResponseSink, body: H3RequestBody) -> None:
        self._sink = sink
        self._body = body

    async def receive_some(self) -> bytes:
        try:
            return await self._body.receive()
        except RequestBodyError:
            return b""

    async def send_all(self, data: bytes) -> None:
        await self._sink.send_data(data)

    async def send_eof(self) -> None:
        if not self._sink.finished and not self._sink.aborted:
            await self._sink.send_data(b"", end_stream=True)
