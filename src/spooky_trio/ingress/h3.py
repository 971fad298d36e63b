"""HTTP/3 request streams: validation, the request body reader and the response sink.

aioquic's H3Connection treats a malformed request as a connection error; RFC 9114 section
4.1.2 makes it a stream error (H3_MESSAGE_ERROR) so the connection's other streams keep
working. :class:`StreamScopedH3Connection` narrows it accordingly.

It also bounds what a HEADERS frame may cost before QPACK decodes it (aioquic has no such
limit): a frame longer than ``max_field_section_bytes`` is refused as soon as its length is
known, instead of being buffered until complete (a 2^62-byte HEADERS frame would otherwise
grow the stream buffer for as long as the client sends), and a field section with more than
``max_field_lines`` field lines is refused without decoding it. The latter mattered most while
the dynamic table was on (one byte could reference a ~4 KiB entry: a 100 KB frame decoded to
400 MB in 2 s); QPACK now runs without a dynamic table (see ``_init_connection``), so a line
decodes to at most a static entry. A stream blocked on the QPACK encoder stream (impossible
without a table) may buffer no more than ``max_field_section_bytes`` either. All are stream errors with H3_EXCESSIVE_LOAD (RFC 9114 10.5).
A control-stream frame (SETTINGS) that would be buffered past :data:`MAX_UNI_STREAM_BUFFER` is
a connection error with the same code.

This module is the one place on the server that reads aioquic's private H3 state (with
``quic_engine.py`` for QUIC): others ask :class:`StreamScopedH3Connection`'s named methods
(``expected_content_length``); ``tests/unit/test_aioquic_boundary.py`` enforces it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import pylsqpack
import trio
from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import (
    ErrorCode,
    FrameType,
    H3Connection,
    MessageError,
    ProtocolError,
    encode_frame,
)
from aioquic.h3.events import H3Event

from spooky_trio.aioquic_compat import check_overrides, install_fast_header_checks, overrides
from spooky_trio.http.messages import Headers, StreamTunnel
from spooky_trio.ingress.request_body import QueuedRequestBody

if TYPE_CHECKING:
    from spooky_trio.ingress.quic_connection import QuicConnectionTask

#: Unacknowledged response bytes buffered in aioquic per stream before ``send_data`` waits.
SEND_BUFFER_HIGH_WATER = 256 * 1024
#: queued request-body chunks handed to the pipeline together, up to about this many bytes
BODY_COALESCE_BYTES = 64 * 1024


@attrs.define(slots=True)
class MalformedRequest(H3Event):
    """Synthetic event: the request on ``stream_id`` broke RFC 9114 (or a header-size bound,
    ``excessive_load``) and was reset."""

    stream_id: int
    reason: str
    excessive_load: bool = False


#: bytes a unidirectional stream (in practice the control stream, whose SETTINGS frame aioquic
#: buffers until complete) may hold unprocessed; real SETTINGS frames are a few dozen bytes
MAX_UNI_STREAM_BUFFER = 16 * 1024


class ControlStreamOverflow(ProtocolError):
    """A control-stream frame aioquic would buffer past :data:`MAX_UNI_STREAM_BUFFER`."""

    error_code = ErrorCode.H3_EXCESSIVE_LOAD


class _ExcessiveLoad(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason_phrase = reason


def _prefix_int(data: bytes, pos: int, bits: int) -> tuple[int, int]:
    """Decode an HPACK/QPACK prefix integer at ``pos``; returns (value, next pos).
    Truncated input ends the scan (position past the end)."""
    mask = (1 << bits) - 1
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while pos < len(data):
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80 or shift > 62:
            return value, pos
    return value, len(data) + 1


def count_field_lines(block: bytes, stop_after: int) -> int:
    """Field lines in a QPACK field section (RFC 9204 4.5), counting at most ``stop_after + 1``.

    Only the representations' lengths are read; nothing is decoded or looked up. A malformed
    section stops the count early: the QPACK decoder reports it properly afterwards.
    """
    n = len(block)
    if n < 2:
        return 0
    _, pos = _prefix_int(block, 0, 8)  # required insert count
    if pos >= n:
        return 0
    _, pos = _prefix_int(block, pos, 7)  # sign + delta base
    lines = 0
    while pos < n and lines <= stop_after:
        first = block[pos]
        lines += 1
        if first & 0x80:  # indexed field line
            _, pos = _prefix_int(block, pos, 6)
            continue
        if first & 0x40:  # literal with name reference
            _, pos = _prefix_int(block, pos, 4)
        elif first & 0x20:  # literal with literal name
            length, pos = _prefix_int(block, pos, 3)
            pos += length
        elif first & 0x10:  # indexed field line with post-base index
            _, pos = _prefix_int(block, pos, 4)
            continue
        else:  # literal with post-base name reference
            _, pos = _prefix_int(block, pos, 3)
        if pos >= n:
            break
        length, pos = _prefix_int(block, pos, 7)  # the value
        pos += length
    return lines


class _StaticTableEncoder:
    """pylsqpack's encoder told the peer allows no dynamic table, whatever its SETTINGS say
    (an encoder may always use less than the decoder's capacity, RFC 9204 3.2.3)."""

    __slots__ = ("_encoder", "encode", "feed_decoder")

    def __init__(self) -> None:
        self._encoder = pylsqpack.Encoder()
        self.encode = self._encoder.encode
        self.feed_decoder = self._encoder.feed_decoder

    def apply_settings(self, max_table_capacity: int, blocked_streams: int) -> bytes:
        return self._encoder.apply_settings(max_table_capacity=0, blocked_streams=0)


class StreamScopedH3Connection(H3Connection):
    """H3Connection whose message errors reset one stream instead of closing the connection."""

    def __init__(self, quic, *, max_field_section_bytes: int = 4 * 16384 + 64 * 128,  # type: ignore[no-untyped-def]
                 max_field_lines: int = 2 * 128 + 16, **kwargs) -> None:
        super().__init__(quic, **kwargs)
        self.malformed_streams: set[int] = set()
        self.max_request_stream_id = -4
        #: connections closed by :class:`ControlStreamOverflow` (0 or 1; read for metrics)
        self.control_stream_overflows = 0
        #: HEADERS frames longer than this are refused unread (see the module docstring)
        self.max_field_section_bytes = max_field_section_bytes
        #: field sections with more lines than this are refused undecoded
        self.max_field_lines = max_field_lines

    @overrides
    def _init_connection(self) -> None:
        # QPACK without the dynamic table, both ways (like quic-go, Caddy's HTTP/3 stack). With
        # it, every request costs an extra datagram each way: the decoder's Section
        # Acknowledgment for a field section that referenced the table (RFC 9204 4.4.1) goes
        # out at once on its own, and so does the client's for our response. Capacity 0 also
        # takes the dynamic-table amplification attacks off the table and saves ~8 KiB per
        # connection; field sections grow by a few literal bytes.
        self._max_table_capacity = 0
        self._blocked_streams = 0
        self._decoder = pylsqpack.Decoder(0, 0)
        self._encoder = _StaticTableEncoder()  # type: ignore[assignment]  # duck-types pylsqpack.Encoder
        super()._init_connection()

    @overrides
    def _receive_stream_data_uni(self, stream, data, stream_ended):  # type: ignore[no-untyped-def]
        # aioquic waits for a whole SETTINGS / MAX_PUSH_ID frame and grows the stream's window
        # as data arrives: a SETTINGS frame announcing 2^40 bytes grew the buffer for as long
        # as the client sent (10 MB in a test). A connection error (RFC 9114 7.2.4.1 lets an
        # endpoint refuse oversized SETTINGS); handle_event turns it into CONNECTION_CLOSE.
        events = super()._receive_stream_data_uni(stream, data, stream_ended)
        if len(stream.buffer) > MAX_UNI_STREAM_BUFFER:
            stream.buffer = b""
            self.control_stream_overflows += 1
            raise ControlStreamOverflow(f"unidirectional stream {stream.stream_id} buffered more than {MAX_UNI_STREAM_BUFFER} bytes")
        return events

    @overrides
    def _receive_request_or_push_data(self, stream, data, stream_ended):  # type: ignore[no-untyped-def]
        if stream.stream_id in self.malformed_streams:
            stream.buffer = b""  # reset: what the client still sends is dropped, not buffered
            return []
        events = super()._receive_request_or_push_data(stream, data, stream_ended)
        if stream.stream_id in self.malformed_streams:
            return events
        # What stays buffered is a HEADERS frame still arriving or, on a stream blocked on
        # the QPACK encoder stream, everything sent after its HEADERS frame (aioquic grows
        # the window of a stream without a request as data arrives, so that is unbounded).
        pending = stream.frame_size if stream.frame_type == FrameType.HEADERS and stream.frame_size is not None else 0
        if pending + len(stream.buffer) > self.max_field_section_bytes:
            stream.buffer = b""
            reason = "blocked stream buffered too much" if stream.blocked else "HEADERS frame too large"
            events.append(self._stream_error(stream.stream_id, _ExcessiveLoad(reason)))
        return events

    @overrides
    def _handle_request_or_push_frame(self, frame_type, frame_data, stream, stream_ended):  # type: ignore[no-untyped-def]
        stream_id = stream.stream_id
        if stream_id in self.malformed_streams:
            if frame_data is None:  # reset while blocked: let the decoder drop the section
                try:
                    self._decoder.resume_header(stream_id)
                except Exception:  # noqa: BLE001 - only freeing decoder state
                    pass
            return []
        try:
            if frame_type == FrameType.HEADERS and frame_data is not None:
                if len(frame_data) > self.max_field_section_bytes:
                    raise _ExcessiveLoad("HEADERS frame too large")
                if count_field_lines(frame_data, self.max_field_lines) > self.max_field_lines:
                    raise _ExcessiveLoad("too many field lines")
            events = super()._handle_request_or_push_frame(frame_type, frame_data, stream, stream_ended)
        except (MessageError, _ExcessiveLoad) as exc:
            return [self._stream_error(stream_id, exc)]
        if stream_id > self.max_request_stream_id and stream_id % 4 == 0:
            self.max_request_stream_id = stream_id
        return events

    def _stream_error(self, stream_id: int, exc: MessageError | _ExcessiveLoad) -> MalformedRequest:
        excessive = isinstance(exc, _ExcessiveLoad)
        code = ErrorCode.H3_EXCESSIVE_LOAD if excessive else ErrorCode.H3_MESSAGE_ERROR
        self.malformed_streams.add(stream_id)
        try:
            self._quic.reset_stream(stream_id, code)
            self._quic.stop_stream(stream_id, code)
        except ValueError:  # the QUIC stream is already gone
            pass
        return MalformedRequest(stream_id=stream_id, reason=exc.reason_phrase, excessive_load=excessive)

    def send_goaway(self) -> None:
        """GOAWAY naming the first request stream we will not serve (RFC 9114 5.2)."""
        next_id = self.max_request_stream_id + 4
        assert self._local_control_stream_id is not None  # opened with the connection
        self._quic.send_stream_data(
            self._local_control_stream_id,
            encode_frame(FrameType.GOAWAY, encode_uint_var(next_id)),
        )

    def expected_content_length(self, stream_id: int) -> int | None:
        """The request's ``content-length`` as aioquic validated it from the HEADERS frame
        (aioquic checks the DATA against it); None without one or for an unknown stream."""
        stream = self._stream.get(stream_id)
        return stream.expected_content_length if stream is not None else None


check_overrides(StreamScopedH3Connection)  # an aioquic that moved a hook fails at import
install_fast_header_checks()


class H3RequestBody(QueuedRequestBody):
    """The body of one request stream, fed by the connection's receive path.

    ``receive`` hands chunks to the pipeline and reports the stream offset consumed, so the
    QUIC connection opens the client's flow-control window only as far as the pipeline read.
    """

    _conn: QuicConnectionTask

    def feed(self, data: bytes, end: bool, offset: int) -> None:
        """Queue ``data``, received up to QUIC stream ``offset``; ``end`` marks the last chunk."""
        if self._error is not None or self.ended:
            return
        if data:
            self._chunks.append((data, offset))
        if end:
            self.ended = True
        self._wakeup.set()

    def _take(self) -> bytes:
        chunk, offset = self._chunks.popleft()
        if self._chunks:
            # a receive burst queues one chunk per QUIC packet (~1.2 KB): hand over what is
            # queued at once, so the upstream side writes once per burst
            parts = [chunk]
            size = len(chunk)
            while self._chunks and size < BODY_COALESCE_BYTES:
                chunk, offset = self._chunks.popleft()
                parts.append(chunk)
                size += len(chunk)
            chunk = b"".join(parts)
        self._conn.body_consumed(self._stream_id, offset)
        return chunk


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

    async def open_tunnel(self, headers: Headers) -> StreamTunnel:
        """Accept a CONNECT (RFC 9114 4.4): 200, then the stream's DATA both ways."""
        if self._tunnel_body is None:
            raise trio.BrokenResourceError("only a CONNECT stream can become a tunnel")
        await self.send_headers(200, headers)
        return StreamTunnel(self, self._tunnel_body)
