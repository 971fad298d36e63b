"""One request API over HTTP/3 (H3Client), HTTP/2 and HTTP/1.1 (httpx), for end-to-end tests
that run the same scenario on every ingress protocol.

``async with ProtocolClients(server, certs_dir, "h3") as clients:`` then
``await clients.get("/path", headers=..., source="127.0.0.2", authority=..., method=...)``
returns a :class:`Reply`. One connection per (source address, authority) is opened on first
use and reused; ``source`` binds the client to another loopback address, so the proxy sees
another peer IP.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import attrs
import httpx
import trio

from spooky_trio.clients.h3 import H3Client
from spooky_trio.serving.server import Server

PROTOCOLS = ("h3", "h2", "h1")


@attrs.frozen
class Reply:
    status: int | None
    headers: dict[str, str]
    body: bytes


class ProtocolClients:
    """Clients of one protocol to ``server``'s first listener (module docstring)."""

    def __init__(self, port: int, certs_dir: Path, protocol: str, stack: AsyncExitStack) -> None:
        self.port = port
        self.cafile = str(certs_dir / "ca.pem")
        self.protocol = protocol
        self._stack = stack
        self._h3: dict[tuple[str, str], H3Client] = {}
        self._http: dict[str, httpx.AsyncClient] = {}

    async def open(self, source: str = "127.0.0.1", authority: str = "localhost") -> None:
        """Open the client of ``source`` (and ``authority``, HTTP/3) now: a task that shares
        this object with others must open it itself (it holds a nursery), not a child task."""
        if self.protocol == "h3":
            if (source, authority) not in self._h3:
                self._h3[(source, authority)] = await self._stack.enter_async_context(
                    H3Client.connect("127.0.0.1", self.port, server_name="localhost", cafile=self.cafile, local_host=source))
        elif source not in self._http:
            transport = httpx.AsyncHTTPTransport(verify=ssl.create_default_context(cafile=self.cafile), local_address=source,
                                                 http2=self.protocol == "h2", http1=self.protocol == "h1")
            self._http[source] = await self._stack.enter_async_context(httpx.AsyncClient(transport=transport, timeout=20))

    async def get(self, path: str, *, headers: Sequence[tuple[str, str]] = (), source: str = "127.0.0.1",
                  authority: str = "localhost", method: str = "GET") -> Reply:
        await self.open(source, authority)
        if self.protocol == "h3":
            response = await self._h3[(source, authority)].request(method, path, headers=headers, authority=f"{authority}:{self.port}")
            return Reply(response.status, {n.decode(): v.decode("latin-1") for n, v in response.headers}, response.body)
        http = self._http[source]
        response = await http.request(method, f"https://{authority}:{self.port}{path}", headers=list(headers))
        expected = "HTTP/2" if self.protocol == "h2" else "HTTP/1.1"
        assert response.http_version == expected, response.http_version
        return Reply(response.status_code, dict(response.headers), response.content)


@asynccontextmanager
async def protocol_clients(server: Server, certs_dir: Path, protocol: str) -> AsyncIterator[ProtocolClients]:
    async with AsyncExitStack() as stack:
        yield ProtocolClients(server.listeners[0].port, certs_dir, protocol, stack)


@attrs.define
class Window:
    """Statuses of requests sent in a loop for a while, and the bounds of the time between
    the first and the last rate-limit check they met (see :func:`hammer`)."""

    statuses: list[int | None] = attrs.Factory(list)
    first_sent: float = 0.0
    first_answered: float = float("inf")
    last_sent: float = 0.0
    last_answered: float = 0.0

    @property
    def shortest(self) -> float:
        """The checks of the first answer and of the last request sent are at least this far apart."""
        return self.last_sent - self.first_answered

    @property
    def longest(self) -> float:
        return self.last_answered - self.first_sent


async def hammer(targets: Sequence[ProtocolClients], seconds: float, path: str = "/echo", concurrency: int = 4) -> Window:
    """``concurrency`` request loops per target for ``seconds``: many more requests than a
    small rate admits, even on a loaded machine."""
    for clients in targets:
        await clients.open()
    window = Window(first_sent=time.monotonic())

    async def loop(clients: ProtocolClients) -> None:
        while time.monotonic() - window.first_sent < seconds:
            window.last_sent = max(window.last_sent, time.monotonic())
            window.statuses.append((await clients.get(path)).status)
            now = time.monotonic()
            window.first_answered = min(window.first_answered, now)
            window.last_answered = max(window.last_answered, now)

    async with trio.open_nursery() as nursery:
        for clients in targets:
            for _ in range(concurrency):
                nursery.start_soon(loop, clients)
    return window
