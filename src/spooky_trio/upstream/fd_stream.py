"""A :class:`trio.SocketStream` whose bytes go straight to the socket's descriptor.

The one module that reads, writes or polls a socket descriptor itself. The HTTP/1.1 client
(:class:`~spooky_trio.upstream.h1.H1Connection`) wraps every plain TCP stream it is given in
:class:`FdSocketStream` and otherwise only calls the stream interface, so every byte still
goes through ``send_all``/``receive_some`` (WebSocket relays included, after ``detach``).

Why: ``trio.SocketStream`` wraps each call in a conflict detector and an error-translating
generator context manager, and yields to the scheduler once more after a syscall that
succeeded at once. This stream tries ``os.write``/``os.read`` first and waits with
:func:`trio.lowlevel.wait_writable`/``wait_readable`` only when the call would block.

Measured (A/B against wrapping nothing, i.e. plain ``trio.SocketStream``, everything else
equal, at ``7758515``; 2 cores shared with other jobs):

* cProfile, ``bench.run -s tiny_h1 --cprofile`` (one invocation, 2 runs each): 1324/1326 vs
  1387/1389 Python calls per proxied request (-63, -4.5%; deterministic);
* the pooled exchange alone (``python -m bench.h1_exchange``: tiny GETs to nginx, 8
  concurrent, 20,000 exchanges per run, 10 alternating runs): median 123 vs 132 us CPU per
  exchange (-7%), lower in 9 of 10 pairs (the inline version at ``53f509e``, 6 runs: 110 vs
  117 us);
* the whole proxy, ``bench.run -s tiny_h1 -r 4 -d 8``: 0.416 vs 0.439 ms CPU per request
  (loaded box; the unchanged base measured 0.434 in the same run) and, on a quiet box at
  ``53f509e``, 0.329 vs 0.330 ms: both within the run-to-run noise (+-4%); open loop at 400
  and 800 requests/s: no CPU difference either.

So the saving is real but small: about 9 us, some 2-3% of a proxied tiny request, below
what the whole-proxy bench resolves. Dropping this module is one line: stop wrapping in
``H1Connection.__init__``.

Contract differences from ``trio.SocketStream``:

* no conflict detection: at most one task may send and one task receive at a time (the
  HTTP/1.1 client sends from one task at a time; a relay has one task per direction);
* ``send_all`` that completes at once is not a checkpoint; ``receive_some`` always is (a
  fast peer cannot let a read loop run without yielding);
* OS errors become :class:`trio.BrokenResourceError`; after :meth:`aclose` every call raises
  :class:`trio.ClosedResourceError` and the descriptor is never touched again (its number may
  be reused); a task blocked in a wait is woken by the close.
"""

from __future__ import annotations

import os
import select

import trio

_READABLE = select.POLLIN | select.POLLPRI | getattr(select, "POLLRDHUP", 0)


class FdSocketStream(trio.abc.HalfCloseableStream):
    """``socket_stream``'s socket, read and written through its descriptor (module docstring)."""

    def __init__(self, socket_stream: trio.SocketStream) -> None:
        self.socket_stream = socket_stream
        self._fd = socket_stream.socket.fileno()
        self._closed = False
        self._poller: select.poll | None = None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data``, waiting only while the socket buffer is full."""
        view = memoryview(data)
        while view:
            if self._closed:  # checked right before each syscall: the number may be reused
                raise trio.ClosedResourceError("stream closed")
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._fd)
            except OSError as exc:
                raise trio.BrokenResourceError(exc) from exc

    async def wait_send_all_might_not_block(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        await trio.lowlevel.wait_writable(self._fd)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to ``max_bytes`` (64 KiB by default); b"" once the peer ended its direction."""
        waited = False
        while True:
            if self._closed:
                raise trio.ClosedResourceError("stream closed")
            try:
                data = os.read(self._fd, max_bytes or 65536)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._fd)
                waited = True
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(exc) from exc
            if not waited:
                await trio.lowlevel.checkpoint()
            return data

    async def send_eof(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        await self.socket_stream.send_eof()

    def is_readable(self) -> bool:
        """True if a read would not block right now: data, EOF or an error is pending (or
        the stream is closed). An idle HTTP/1.1 connection that is readable was closed by
        the server (or broke the protocol)."""
        if self._closed:
            return True
        if self._poller is None:
            self._poller = select.poll()
            self._poller.register(self._fd, _READABLE)
        try:
            return bool(self._poller.poll(0))
        except (OSError, ValueError):
            return True

    async def aclose(self) -> None:
        """Close the socket (waking any task waiting on it); idempotent."""
        self._closed = True
        await self.socket_stream.aclose()
