"""The request body of a multiplexed stream (HTTP/2, HTTP/3), fed by its connection's reader.

The reader queues chunks, each with the number the connection needs back once the pipeline
has read it (HTTP/2: the flow-controlled length to acknowledge; HTTP/3: the stream offset
consumed), marks the end or a failure; :meth:`QueuedRequestBody.receive` hands chunks out
and lets the subclass report the consumption, so windows open only as the backend accepts.
"""

from __future__ import annotations

import abc
from collections import deque

import trio

from spooky_trio.http.messages import RequestBodyError


class QueuedRequestBody(abc.ABC):
    """Chunks queued by the connection, read by the pipeline; see the module docstring.

    Subclasses implement :meth:`_take`: remove queued chunks, report their consumption to
    the connection, return the bytes to hand out (b"" to look again)."""

    def __init__(self, conn: object, stream_id: int) -> None:
        self._conn = conn
        self._stream_id = stream_id
        self._chunks: deque[tuple[bytes, int]] = deque()
        self.ended = False
        self._error: RequestBodyError | None = None
        self._wakeup = trio.Event()

    def fail(self, error: RequestBodyError) -> None:
        if self._error is None:
            self._error = error
        self._wakeup.set()

    @abc.abstractmethod
    def _take(self) -> bytes:
        """Remove queued chunks (at least one), report their consumption, return their bytes."""

    async def receive(self) -> bytes:
        """The next non-empty chunk, b"" at the end; raises the failure, if any."""
        while True:
            if self._error is not None:
                raise self._error
            if self._chunks:
                chunk = self._take()
                if chunk:
                    return chunk
                continue
            if self.ended:
                return b""
            self._wakeup = trio.Event()
            await self._wakeup.wait()
