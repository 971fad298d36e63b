"""HTTP/2 per-stream state: the response object of one HTTP/2 exchange.

The connection's reader task feeds an :class:`H2Stream` (``on_*`` methods); the exchange's
consumer drains it with :meth:`H2Stream.receive`, which returns flow-control credit to the
connection only for data actually taken (backpressure).
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

import trio
from hpack import NeverIndexedHeaderTuple

from spooky_trio.http.messages import Headers, UpstreamRequest
from spooky_trio.upstream.common import UpstreamResponse
from spooky_trio.upstream.errors import UpstreamProtocolError

_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host", b"content-length"}
)
#: never added to HPACK tables (h2's own rule for these, with cookies shorter than 20 bytes)
_NEVER_INDEXED = frozenset({b"authorization", b"proxy-authorization"})


class _FlowControl(Protocol):
    def acknowledge(self, stream_id: int, size: int) -> None:
        """Return ``size`` consumed bytes of ``stream_id`` to the flow-control windows."""


def request_headers(request: UpstreamRequest) -> Headers:
    """HTTP/2 (and HTTP/3: RFC 9114 4.2 has the same rules) request headers: pseudo-headers first, connection-specific fields dropped,
    ``content-length`` from the request, and ``te: trailers`` (trailers are relayed).

    The result is what h2's outbound normalization and validation would let through, which
    the connection therefore switches off (they cost a chain of generators per field):
    exactly the four request pseudo-headers, first; names lowercased and values stripped of
    surrounding whitespace; no connection-specific field, no ``host`` (so ``:authority``
    stands alone), ``te`` only as ``trailers``; ``authorization``, ``proxy-authorization``
    and short cookies never indexed. Raises :class:`UpstreamProtocolError` for a request
    h2 would reject: CONNECT (tunnels never use this engine) or an empty path.
    """
    if request.method == b"CONNECT" or not request.target:
        raise UpstreamProtocolError(f"cannot send {request.method!r} {request.target!r} over HTTP/2")
    headers: Headers = [
        (b":method", request.method),
        (b":scheme", request.scheme),  # http for cleartext HTTP/2 (h2c)
        (b":authority", request.authority),
        (b":path", request.target),
    ]
    has_te = False
    for raw_name, raw_value in request.headers:
        name = raw_name.lower().strip()
        if name in _CONNECTION_SPECIFIC or name.startswith(b":"):
            continue
        value = raw_value.strip()
        if name == b"te":
            if value.lower() == b"trailers":
                headers.append((b"te", b"trailers"))
                has_te = True
            continue
        if name in _NEVER_INDEXED or (name == b"cookie" and len(value) < 20):
            headers.append(NeverIndexedHeaderTuple(name, value))
            continue
        headers.append((name, value))
    if request.body is not None and request.content_length is not None:
        headers.append((b"content-length", str(request.content_length).encode("ascii")))
    if not has_te:
        headers.append((b"te", b"trailers"))  # we relay trailers, so say that we accept them
    return headers


class H2Stream(UpstreamResponse):
    """One request/response stream; also the response object handed to the caller."""

    http_version = "2"

    def __init__(self, connection: _FlowControl, stream_id: int) -> None:
        self._connection = connection
        self.stream_id = stream_id
        self.status = 0
        self.headers: Headers = []
        self.trailers: Headers = []
        self._head = trio.Event()
        self._chunks: deque[tuple[bytes, int]] = deque()
        self._buffered = 0
        self._data_event = trio.Event()
        self._ended = False
        self._error: UpstreamProtocolError | None = None
        #: we sent END_STREAM
        self.request_ended = False
        #: the stream was reset (by either side) or released: nothing more may be sent
        self.send_closed = False

    @property
    def complete(self) -> bool:
        return self._ended and not self._chunks

    @property
    def remote_ended(self) -> bool:
        """The backend ended the stream (the body may still be buffered here)."""
        return self._ended

    @property
    def buffered_bytes(self) -> int:
        return self._buffered

    async def wait_head(self) -> None:
        """Wait for the final response head; raise the stream's failure if it came first."""
        await self._head.wait()
        if self.status == 0:
            assert self._error is not None
            raise UpstreamProtocolError(str(self._error))

    async def receive(self) -> bytes:
        """Next body chunk or b"" at the end; see :meth:`UpstreamResponse.receive`."""
        while True:
            if self._chunks:
                data, flow = self._chunks.popleft()
                self._buffered -= len(data)
                self._connection.acknowledge(self.stream_id, flow)
                if data:
                    return data
                continue
            if self._ended:
                return b""
            if self._error is not None:
                raise UpstreamProtocolError(str(self._error))
            self._data_event = trio.Event()
            await self._data_event.wait()

    # -- called by the connection's reader --

    def on_head(self, raw: list[tuple[bytes, bytes]]) -> None:
        status = b""
        headers: Headers = []
        for name, value in raw:
            name, value = bytes(name), bytes(value)
            if name == b":status":
                status = value
            elif not name.startswith(b":"):
                headers.append((name, value))
        if not (len(status) == 3 and status.isdigit()):
            self.on_error(UpstreamProtocolError(f"malformed :status {status!r} from the backend"))
            return
        self.status, self.headers = int(status), headers
        self._head.set()

    def on_data(self, data: bytes, flow: int) -> None:
        self._chunks.append((data, flow))
        self._buffered += len(data)
        self._data_event.set()

    def on_trailers(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.trailers = [(bytes(n), bytes(v)) for n, v in raw if not bytes(n).startswith(b":")]

    def on_end(self) -> None:
        self._ended = True
        if self.status == 0:
            self.on_error(UpstreamProtocolError("the backend ended the stream without a response"))
        self._data_event.set()

    def on_error(self, error: UpstreamProtocolError) -> None:
        """Fail the stream unless its response already arrived in full."""
        self.send_closed = True
        if self._ended and self.status:
            return
        if self._error is None:
            self._error = error
        self._head.set()
        self._data_event.set()

    def take_unconsumed(self) -> int:
        """Drop buffered data; return its flow-controlled size (to be acknowledged)."""
        total = sum(flow for _, flow in self._chunks)
        self._chunks.clear()
        self._buffered = 0
        return total
