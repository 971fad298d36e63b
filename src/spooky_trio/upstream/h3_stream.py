"""Per-stream state of the HTTP/3 transport (:mod:`spooky_trio.upstream.h3_transport`), and
the upstream pool's response object over it.

:class:`StreamState` is what the connection's driver task records for one request stream
(response head, body chunks, trailers, resets, failure); each user reads it through its own
response object (the upstream pool's :class:`H3Stream`, the client's
:class:`~spooky_trio.clients.h3_stream.H3StreamResponse`).
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

import trio

from spooky_trio.upstream.common import READ_CHUNK, UpstreamResponse
from spooky_trio.upstream.errors import UpstreamProtocolError

Headers = list[tuple[bytes, bytes]]


class StreamState:
    """What the connection's driver task has received for one request stream.

    The driver appends; the request's own task consumes. ``changed`` wakes waiters: it is
    set and replaced on every update, so waiters re-check their condition in a loop.
    Buffered data is bounded by the stream's receive window (see ``quic_engine.py``).
    """

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        self.status: int | None = None
        self.headers: Headers | None = None
        self.trailers: Headers = []
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.ended = False  # the response's FIN arrived (all data is in `chunks`)
        self.reset_code: int | None = None  # RESET_STREAM from the server
        self.stop_sending_code: int | None = None  # STOP_SENDING from the server
        self.send_done = False  # our FIN was queued
        self.error: BaseException | None = None  # connection-level failure
        self.send_error: BaseException | None = None  # the request body could not be sent
        self.sender_scope: trio.CancelScope | None = None  # the body-sending task's scope
        self.malformed: str | None = None
        #: the peer acknowledged some of the request (set when the connection failed)
        self.reached = False
        self._changed = trio.Event()

    @property
    def receive_finished(self) -> bool:
        """No more response data will arrive (FIN, reset or connection failure)."""
        return self.ended or self.reset_code is not None or self.error is not None

    @property
    def may_send(self) -> bool:
        """The request side may still be written."""
        return not (
            self.send_done
            or self.stop_sending_code is not None
            or self.reset_code is not None
            or self.error is not None
            or self.send_error is not None
        )

    def notify(self) -> None:
        """Wake every task waiting on this stream."""
        self._changed.set()
        self._changed = trio.Event()

    async def wait(self) -> None:
        """Sleep until the next :meth:`notify`; callers re-check their condition."""
        await self._changed.wait()

    def on_headers(self, headers: Headers, stream_ended: bool) -> None:
        """Record a HEADERS frame: the final response (1xx are skipped) or trailers."""
        if self.headers is None:
            status_raw = next((v for k, v in headers if k == b":status"), None)
            try:
                status = int(status_raw) if status_raw is not None else None
            except ValueError:
                status = None
            if status is None:
                self.malformed = "response without a valid :status"
            elif 100 <= status < 200:
                return  # interim response; the final one follows
            self.status = status
            self.headers = [(k, v) for k, v in headers if not k.startswith(b":")]
        else:
            self.trailers = list(headers)
        if stream_ended:
            self.ended = True

    def on_data(self, data: bytes, stream_ended: bool) -> None:
        """Buffer response body bytes."""
        if data:
            self.chunks.append(data)
            self.buffered += len(data)
        if stream_ended:
            self.ended = True

    def take(self, max_bytes: int) -> bytes:
        """Remove and return up to ``max_bytes`` buffered body bytes."""
        parts: list[bytes] = []
        size = 0
        while self.chunks and size < max_bytes:
            chunk = self.chunks.popleft()
            room = max_bytes - size
            if len(chunk) > room:
                self.chunks.appendleft(chunk[room:])
                chunk = chunk[:room]
            parts.append(chunk)
            size += len(chunk)
        self.buffered -= size
        return parts[0] if len(parts) == 1 else b"".join(parts)


class _Session(Protocol):
    """What an :class:`H3Stream` needs of its connection (``upstream/h3.py``'s session)."""

    def consumed(self, state: StreamState) -> None:
        """The application took data from ``state``: return receive credit when due."""


#: an H3 reset code meaning the server did no application processing (RFC 9114 8.1)
H3_REQUEST_REJECTED = 0x10B


class H3Stream(UpstreamResponse):
    """One HTTP/3 request stream to a backend; also the response the pool's exchange yields.

    The connection's driver fills ``state``; :meth:`receive` takes from it and returns
    receive credit only for what it took (the stream window bounds what one slow consumer
    buffers). ``replayable``: the request has no body and may be sent again when the
    backend provably did not process it (:meth:`wait_head` then raises
    :class:`NotProcessed`).
    """

    http_version = "3"

    def __init__(self, session: _Session, state: StreamState, *, replayable: bool, idempotent: bool) -> None:
        self._session = session
        self.state = state
        self.stream_id = state.stream_id
        self.status = 0
        self.headers: Headers = []
        self._replayable = replayable
        self._idempotent = idempotent

    @property
    def trailers(self) -> Headers:  # type: ignore[override]  # read from the driver's state
        return [(name, value) for name, value in self.state.trailers if not name.startswith(b":")]

    @property
    def complete(self) -> bool:
        return self.state.ended and not self.state.chunks

    @property
    def buffered_bytes(self) -> int:
        return self.state.buffered

    async def wait_head(self) -> None:
        """Wait for the final response head. Raises :class:`NotProcessed` (see the class
        docstring) or :class:`UpstreamProtocolError` when the stream or the connection
        failed first."""
        state = self.state
        while state.headers is None and not state.receive_finished and state.send_error is None:
            await state.wait()
        if state.headers is not None and state.status is not None and state.malformed is None:
            self.status, self.headers = state.status, state.headers
            return
        if state.malformed is not None:
            raise UpstreamProtocolError(f"stream {state.stream_id}: {state.malformed}")
        if state.reset_code is not None:
            if state.reset_code == H3_REQUEST_REJECTED and self._replayable:
                raise NotProcessed(f"the backend refused stream {state.stream_id} unprocessed (H3_REQUEST_REJECTED)", lost=False)
            raise UpstreamProtocolError(f"the backend reset stream {state.stream_id} (error 0x{state.reset_code:x})")
        if state.error is not None:
            # a lost connection: the request is sent again when the backend never got any
            # of it, or when it is idempotent (RFC 9110 9.2.2)
            if self._replayable and (self._idempotent or not state.reached):
                raise NotProcessed(str(state.error), lost=True)
            raise UpstreamProtocolError(str(state.error))
        if state.send_error is not None:
            raise UpstreamProtocolError(f"cannot send the request: {state.send_error}")
        raise UpstreamProtocolError("the backend ended the stream without a response")

    async def receive(self) -> bytes:
        """Next body chunk or b"" at the end; see :meth:`UpstreamResponse.receive`."""
        state = self.state
        while True:
            if state.chunks:
                data = state.take(READ_CHUNK)
                self._session.consumed(state)
                return data
            if state.ended:
                return b""
            if state.reset_code is not None:
                raise UpstreamProtocolError(f"the backend reset stream {state.stream_id} (error 0x{state.reset_code:x})")
            if state.error is not None:
                raise UpstreamProtocolError(str(state.error))
            await state.wait()

    def receive_nowait(self) -> bytes | None:
        state = self.state
        if state.chunks:
            data = state.take(READ_CHUNK)
            self._session.consumed(state)
            return data
        if state.ended:
            return b""
        return None


class NotProcessed(UpstreamProtocolError):
    """The backend provably did not process a bodiless request (it refused the stream, or
    the connection was lost before it acknowledged any of it, or the request is idempotent):
    the pool sends it again once on another connection (like HTTP/1.1's stale connection).
    ``lost``: the connection failed (not a refusal)."""

    def __init__(self, message: str, *, lost: bool) -> None:
        super().__init__(message)
        self.lost = lost
