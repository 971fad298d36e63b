"""Per-request state and response objects of the HTTP/3 client (:mod:`spooky_trio.clients.h3`)."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import attrs
import trio

from spooky_trio.clients.errors import H3ClientError, H3StreamReset

if TYPE_CHECKING:
    from spooky_trio.clients.h3_transport import H3Transport

Headers = list[tuple[bytes, bytes]]

#: Largest chunk :meth:`H3StreamResponse.receive` returns by default.
DEFAULT_RECEIVE_SIZE = 64 * 1024


def _header_value(headers: Headers, name: str) -> str | None:
    wanted = name.lower().encode("latin-1")
    for key, value in headers:
        if key.lower() == wanted:
            return value.decode("latin-1")
    return None


def _copy(error: BaseException) -> BaseException:
    """A fresh instance of a connection error shared by many waiting tasks (each raise
    then gets its own traceback instead of growing one shared object's)."""
    try:
        return type(error)(*error.args)
    except TypeError:
        return error


@attrs.define
class H3Response:
    """A complete HTTP/3 response (or the reset that replaced it).

    ``headers`` excludes pseudo-headers; ``status`` is ``None`` when the server reset the
    stream (``reset_code`` set) or ended it without a HEADERS frame.
    """

    status: int | None = None
    headers: Headers = attrs.Factory(list)
    body: bytes = b""
    trailers: Headers = attrs.Factory(list)
    reset_code: int | None = None

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), decoded as latin-1."""
        return _header_value(self.headers, name)


class StreamState:
    """What the connection's driver task has received for one request stream.

    The driver appends; the request's own task consumes. ``changed`` wakes waiters: it is
    set and replaced on every update, so waiters re-check their condition in a loop.
    Buffered data is bounded by the stream's receive window (see ``_quic.py``).
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


class H3StreamResponse:
    """A response whose body is read incrementally (yielded by ``H3Client.stream_request``).

    Reading slowly is safe: unread data is bounded by the stream's receive window, and
    each :meth:`receive` returns credit to the server as the data is consumed.
    """

    def __init__(self, client: H3Transport, state: StreamState) -> None:
        self._client = client
        self._state = state

    @property
    def stream_id(self) -> int:
        """The QUIC stream id of this request."""
        return self._state.stream_id

    @property
    def status(self) -> int | None:
        """The final response status (``None`` if the stream was reset before it)."""
        return self._state.status

    @property
    def headers(self) -> Headers:
        """Response headers without pseudo-headers."""
        return list(self._state.headers or [])

    @property
    def trailers(self) -> Headers:
        """Trailer fields; complete once :meth:`receive` has returned ``b""``."""
        return list(self._state.trailers)

    @property
    def reset_code(self) -> int | None:
        """The server's RESET_STREAM error code, if it reset the stream."""
        return self._state.reset_code

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), decoded as latin-1."""
        return _header_value(self._state.headers or [], name)

    async def receive(self, max_bytes: int = DEFAULT_RECEIVE_SIZE) -> bytes:
        """The next chunk of the body (at most ``max_bytes``), or ``b""`` at its end.

        Raises :class:`H3StreamReset` if the server reset the stream and
        :class:`H3ConnectionLost` if the connection failed.
        """
        state = self._state
        while True:
            if state.chunks:
                data = state.take(max_bytes)
                await self._client._consumed(state)
                return data
            if state.reset_code is not None:
                raise H3StreamReset(state.stream_id, state.reset_code)
            if state.ended:
                return b""
            if state.error is not None:
                raise _copy(state.error)
            if state.send_error is not None:
                raise state.send_error
            await state.wait()

    async def read_all(self) -> bytes:
        """Read the rest of the body into memory."""
        parts: list[bytes] = []
        while chunk := await self.receive(1 << 30):
            parts.append(chunk)
        return b"".join(parts)

    async def _wait_response_start(self) -> None:
        """Wait for the final response headers, a reset, the stream's end or a failure."""
        state = self._state
        while state.headers is None and not state.receive_finished and state.send_error is None:
            await state.wait()
        if state.headers is None and state.reset_code is None:
            if state.error is not None:
                raise _copy(state.error)
            if state.send_error is not None:
                raise state.send_error
        if state.malformed is not None:
            raise H3ClientError(f"stream {state.stream_id}: {state.malformed}")
