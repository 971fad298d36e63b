"""Clients and a backend for the edge-hygiene tests (tests/abuse/test_edge_hygiene.py).

* :class:`H2Probe`: an HTTP/2 client that sends exactly the fields it is given (h2's own
  outbound validation and normalization off, as an attacker's client would) and records,
  per stream, the status, headers, body and reset code, and the connection's GOAWAY.
* :func:`recording_backend`: an HTTP/1.1 backend that keeps the exact bytes of every
  request head it receives and answers from a script keyed by path (so a test can send a
  response framed twice, or framed inconsistently).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import attrs
import h2.config
import h2.connection
import h2.events
import trio

from spooky_trio.serving.server import Server
from tests.support.backends import run_raw_backend
from tests.support.bootstrap import client_context, tls_connect

OK = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"


@attrs.define
class StreamResult:
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = attrs.Factory(list)
    body: bytes = b""
    reset: int | None = None
    ended: bool = False


class H2Probe:
    """See the module docstring; use :func:`h2_probe` to open one."""

    def __init__(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        self.stream = stream
        config = h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False,
            validate_inbound_headers=False,
        )
        self.h2 = h2.connection.H2Connection(config)
        self.streams: dict[int, StreamResult] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = trio.Event()
        self._changed = trio.Event()
        self._send_lock = trio.Lock()

    async def flush(self) -> None:
        """Send what the h2 state machine queued (one writer at a time)."""
        async with self._send_lock:
            if out := self.h2.data_to_send():
                await self.stream.send_all(out)

    async def start(self, nursery: trio.Nursery) -> None:
        self.h2.initiate_connection()
        await self.flush()
        nursery.start_soon(self._read)

    async def request(self, fields: list[tuple[bytes, bytes]], body: bytes | None = None) -> int:
        """Send ``fields`` (pseudo-headers included, as given) on a new stream; its id."""
        stream_id = self.h2.get_next_available_stream_id()
        self.streams[stream_id] = StreamResult()
        self.h2.send_headers(stream_id, fields, end_stream=body is None)
        if body is not None:
            self.h2.send_data(stream_id, body, end_stream=True)
        await self.flush()
        return stream_id

    async def result(self, stream_id: int) -> StreamResult:
        """The stream's outcome once it ended, was reset, or the connection closed."""
        result = self.streams[stream_id]
        while not (result.ended or result.reset is not None or self.closed.is_set()):
            await self._changed.wait()
        return result

    async def _read(self) -> None:
        try:
            while data := await self.stream.receive_some(65536):
                for event in self.h2.receive_data(data):
                    self._on(event)
                await self.flush()
                self._changed.set()
                self._changed = trio.Event()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.closed.set()
            self._changed.set()

    def _on(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            result = self.streams[event.stream_id]
            fields = list(event.headers or [])
            result.status = int(dict(fields)[b":status"])
            result.headers = [(n, v) for n, v in fields if n[:1] != b":"]
        elif isinstance(event, h2.events.DataReceived):
            self.streams[event.stream_id].body += event.data or b""
            self.h2.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.streams[event.stream_id].ended = True
        elif isinstance(event, h2.events.StreamReset):
            self.streams[event.stream_id].reset = int(event.error_code or 0)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event


@contextlib.asynccontextmanager
async def h2_probe(server: Server, certs_dir: Path) -> AsyncIterator[H2Probe]:
    stream = await tls_connect(server.bootstrap_listeners[0].port, client_context(certs_dir, alpn=["h2"]))
    probe = H2Probe(stream)
    async with trio.open_nursery() as nursery:
        await probe.start(nursery)
        try:
            yield probe
        finally:
            # no checkpoint after the cancel: its Cancelled would replace (and the nursery
            # then swallow) a failing test's AssertionError on its way out
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
            nursery.cancel_scope.cancel()


def h2_fields(path: bytes = b"/", *, method: bytes = b"GET", scheme: bytes = b"https", authority: bytes | None = b"localhost",
              extra: list[tuple[bytes, bytes]] | None = None) -> list[tuple[bytes, bytes]]:
    fields = [(b":method", method), (b":scheme", scheme)]
    if authority is not None:
        fields.append((b":authority", authority))
    fields.append((b":path", path))
    return fields + (extra or [])


@attrs.define(eq=False)
class RecordingBackend:
    """What :func:`recording_backend` serves: its URL and every request head it received."""

    url: str
    heads: list[bytes] = attrs.Factory(list)

    def header_values(self, index: int, name: bytes) -> list[bytes]:
        """The values of field ``name`` (case-insensitive) in request head ``index``."""
        lines = self.heads[index].split(b"\r\n")[1:]
        return [line.partition(b":")[2].strip() for line in lines if line.partition(b":")[0].strip().lower() == name]

    def target(self, index: int) -> bytes:
        return self.heads[index].split(b" ", 2)[1]


@contextlib.asynccontextmanager
async def recording_backend(answers: dict[bytes, bytes] | None = None, default: bytes = OK) -> AsyncIterator[RecordingBackend]:
    """A keep-alive HTTP/1.1 backend that records each raw head, skips the body (a
    content-length one, or a chunked one without trailers) and answers ``answers[path]``
    (the path without query), else ``default``."""
    script = answers or {}
    holder: list[RecordingBackend] = []

    async def serve(stream: trio.SocketStream) -> None:
        buffer = b""

        async def until(done: Callable[[bytes], bool]) -> bool:
            nonlocal buffer
            while not done(buffer):
                data = await stream.receive_some(65536)
                if not data:
                    return False
                buffer += data
            return True

        while True:
            if not await until(lambda b: b"\r\n\r\n" in b):
                return
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            backend = holder[0]
            backend.heads.append(head)
            index = len(backend.heads) - 1
            length = int((backend.header_values(index, b"content-length") or [b"0"])[0])
            if backend.header_values(index, b"transfer-encoding"):
                if not await until(lambda b: b"0\r\n\r\n" in b):
                    return
                buffer = buffer.partition(b"0\r\n\r\n")[2]
            elif not await until(lambda b: len(b) >= length):
                return
            else:
                buffer = buffer[length:]
            path = head.split(b" ", 2)[1].partition(b"?")[0]
            await stream.send_all(script.get(path, default))

    async with run_raw_backend(serve) as raw:
        backend = RecordingBackend(raw.url)
        holder.append(backend)
        yield backend
