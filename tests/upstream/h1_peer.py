"""A scripted HTTP/1.1 server on the far end of a trio memory stream (no sockets), and a
dialler that hands the pool such connections: unit tests of the HTTP/1.1 client path."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs
import h11
import trio
import trio.testing

from spooky_trio.upstream.common import BackendTarget
from spooky_trio.upstream.h1 import H1Connection


@attrs.frozen
class ReceivedRequest:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


class Peer:
    """The server side: parses requests with h11, answers with raw bytes (so tests can send
    anything, malformed included)."""

    def __init__(self, stream: trio.abc.HalfCloseableStream) -> None:
        self.stream = stream
        self.requests: list[ReceivedRequest] = []

    async def read_head(self) -> tuple[h11.Connection, h11.Request]:
        """Read up to the end of the next request head (the body may still be coming);
        EOFError when the client closed instead."""
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Request):
                return conn, event
            elif isinstance(event, h11.ConnectionClosed):
                raise EOFError("the client closed the connection")
            else:
                raise AssertionError(f"unexpected {event!r} before a request head")

    async def read_request(self) -> ReceivedRequest:
        """The next whole request (head and body)."""
        conn, head = await self.read_head()
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise AssertionError(f"unexpected {event!r} in a request body")
        request = ReceivedRequest(head.method, head.target, [(bytes(n), bytes(v)) for n, v in head.headers], bytes(body))
        self.requests.append(request)
        return request

    async def send(self, raw: bytes) -> None:
        await self.stream.send_all(raw)


Handler = Callable[[Peer], Awaitable[None]]


def connection_pair(peer_name: str = "http://backend.test:80") -> tuple[H1Connection, Peer]:
    """A client connection and its scripted server, joined by memory streams."""
    client, server = trio.testing.memory_stream_pair()
    return H1Connection(client, peer_name), Peer(server)


class FakeDialler:
    """Stands in for ``upstream.h1.connect`` in the pool: every dial makes a memory-stream
    connection whose server side runs ``handler`` in ``nursery``."""

    def __init__(self, nursery: trio.Nursery, handler: Handler) -> None:
        self.nursery = nursery
        self.handler = handler
        self.peers: list[Peer] = []

    async def __call__(self, target: BackendTarget, *, timeout: float) -> H1Connection:
        connection, peer = connection_pair(str(target))
        self.peers.append(peer)
        self.nursery.start_soon(self.handler, peer)
        return connection
