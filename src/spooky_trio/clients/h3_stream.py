"""Response objects of the HTTP/3 client (:mod:`spooky_trio.clients.h3`); the per-stream state the
transport fills is :class:`~spooky_trio.upstream.h3_stream.StreamState`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from spooky_trio.clients.errors import H3ClientError, H3StreamReset
from spooky_trio.upstream.h3_stream import Headers, StreamState

if TYPE_CHECKING:
    from spooky_trio.upstream.h3_transport import H3Transport

__all__ = ["DEFAULT_RECEIVE_SIZE", "H3Response", "H3StreamResponse", "Headers", "StreamState"]

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
