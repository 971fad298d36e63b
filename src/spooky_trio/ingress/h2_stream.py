"""One HTTP/2 stream of the bootstrap listener: its request body reader, its response sink
and the one-pass header block builder (h2's outbound normalization is off, see
:func:`header_block`). The connection (reader, flow control) is in ingress/h2.py, its writer
in http/h2_pump.py."""

from __future__ import annotations

from typing import TYPE_CHECKING

from h2.errors import ErrorCodes
from hpack import NeverIndexedHeaderTuple

from spooky_trio.http.headers import HOP_BY_HOP
from spooky_trio.http.messages import Headers, StreamTunnel
from spooky_trio.ingress.request_body import QueuedRequestBody

if TYPE_CHECKING:
    from spooky_trio.ingress.h2 import H2ServerConnection

#: the connection's socket read size; response DATA larger than this is sliced through a
#: memoryview instead of copied per slice
RECEIVE_SIZE = 64 * 1024
#: queued DATA bytes (not yet taken by the writer) above which a response waits for the writer
SEND_HIGH_WATER = 64 * 1024
_WS_RESPONSE_DROP = frozenset({b"sec-websocket-accept"}) | HOP_BY_HOP
#: fields an HTTP/2 response or trailer block must not carry (RFC 9113 8.2.2, and ``te``,
#: which only requests may carry); h2's outbound normalization would drop or refuse them
_RESPONSE_DROP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te"})
#: never added to HPACK tables (h2's own rule for these, with cookies shorter than 20 bytes)
_NEVER_INDEXED = frozenset({b"authorization", b"proxy-authorization"})


def header_block(block: Headers, fields: Headers) -> Headers:
    """``block`` (the ``:status`` of a head, empty for trailers) plus ``fields`` as h2's
    outbound normalization and validation would pass them, in one pass: names lowercased,
    values stripped of surrounding whitespace, pseudo-headers and connection-specific fields
    dropped, credentials and short cookies never indexed. The connection switches h2's own
    (a chain of generators per field) off."""
    for raw_name, raw_value in fields:
        name = raw_name.lower().strip()
        if name in _RESPONSE_DROP or name[:1] == b":":
            continue
        value = raw_value.strip()
        if name in _NEVER_INDEXED or (name == b"cookie" and len(value) < 20):
            block.append(NeverIndexedHeaderTuple(name, value))
        else:
            block.append((name, value))
    return block


class H2RequestBody(QueuedRequestBody):
    """A stream's request body; ``receive`` acknowledges flow control as it hands data out."""

    _conn: H2ServerConnection

    @property
    def unconsumed(self) -> int:
        return sum(n for _, n in self._chunks)

    def feed(self, data: bytes, flow_length: int) -> None:
        self._chunks.append((data, flow_length))
        self._wakeup.set()

    def end(self) -> None:
        self.ended = True
        self._wakeup.set()

    def _take(self) -> bytes:
        chunk, flow_length = self._chunks.popleft()
        self._conn.body_consumed(self._stream_id, flow_length)
        return chunk


class H2ResponseSink:
    """Writes one response stream, never past the client's flow-control window."""

    def __init__(self, conn: H2ServerConnection, stream_id: int, body: H2RequestBody | None = None) -> None:
        self._conn = conn
        self._stream_id = stream_id
        self._tunnel_body = body
        self.headers_sent = False
        self.finished = False
        self.aborted = False

    async def send_headers(self, status: int, headers: Headers, *, end_stream: bool = False) -> None:
        head = header_block([(b":status", str(status).encode("ascii"))], self._conn.ctx.response_headers(headers))
        self._conn.call(self._stream_id, "send_headers", head, end_stream=end_stream)
        self.headers_sent = True
        self.finished = end_stream
        if end_stream:
            await self._conn.wait_written()

    async def send_data(self, data: bytes, *, end_stream: bool = False) -> None:
        """Queue ``data`` as DATA frames within the client's windows; the last frame carries
        END_STREAM (no separate empty frame), and with it we wait until the writer wrote the
        response's end (the response is over for drain and accounting only then)."""
        conn, stream_id, pump = self._conn, self._stream_id, self._conn.pump
        total = len(data)
        if not total:
            if end_stream:
                conn.call(stream_id, "end_stream")
                self.finished = True
                await conn.wait_written()
            return
        view = memoryview(data) if total > RECEIVE_SIZE else None
        offset = 0
        while offset < total:
            window = await conn.wait_window(stream_id)
            end = offset + window
            last = end >= total
            if view is None:
                chunk = data if offset == 0 and last else data[offset:end]
            else:
                chunk = view[offset:end].tobytes()
            conn.call(stream_id, "send_data", chunk, end_stream=end_stream and last)
            offset = end
            pump.unsent += len(chunk)
            if end_stream and last:
                self.finished = True
                await conn.wait_written()
            elif pump.unsent >= SEND_HIGH_WATER:
                await conn.wait_writer()

    async def send_trailers(self, trailers: Headers) -> None:
        self._conn.call(self._stream_id, "send_headers", header_block([], trailers), end_stream=True)
        self.finished = True
        await self._conn.wait_written()

    def reset(self, reason: str) -> None:
        if self.finished or self.aborted:
            return
        self.aborted = True
        self._conn.reset_stream(self._stream_id, ErrorCodes.INTERNAL_ERROR)

    async def open_tunnel(self, headers: Headers) -> StreamTunnel:
        """Accept an extended CONNECT: 200 with the backend's 101 headers minus the HTTP/1.1
        handshake fields, then a byte stream of DATA frames both ways."""
        assert self._tunnel_body is not None, "not an extended CONNECT stream"
        await self.send_headers(200, [(n, v) for n, v in headers if n not in _WS_RESPONSE_DROP])
        return StreamTunnel(self, self._tunnel_body)
