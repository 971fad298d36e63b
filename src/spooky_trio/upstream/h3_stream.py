"""Per-stream state of the HTTP/3 transport (:mod:`spooky_trio.upstream.h3_transport`).

:class:`StreamState` is what the connection's driver task records for one request stream
(response head, body chunks, trailers, resets, failure); each user reads it through its own
response object (the upstream pool's :class:`~spooky_trio.upstream.h3.H3Stream`, the
client's :class:`~spooky_trio.clients.h3_stream.H3StreamResponse`).
"""

from __future__ import annotations

from collections import deque

import trio

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
