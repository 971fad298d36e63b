"""Requests to the proxy under test over each ingress protocol (HTTP/3, HTTP/2, HTTP/1.1),
answered as a :class:`Reply`: tests of a feature that must behave the same on every listener
loop over :data:`PROTOCOLS`.

* :func:`proxy_clients`: one connection per protocol, ``await clients.request("h2", path)``;
* :func:`protocol_clients`: clients of one protocol that can bind another loopback source
  address (the proxy sees another peer IP) or name another authority:
  ``await clients.get("/path", headers=..., source="127.0.0.2", authority=..., method=...)``;
  one connection per (source address, authority), opened on first use and reused;
  :func:`hammer` sends requests in loops through them for a while (rate-limit tests).
"""

from __future__ import annotations

import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from spooky_trio.clients.h3 import H3Client
from spooky_trio.serving.server import Server

PROTOCOLS = ("h3", "h2", "h1")


@attrs.frozen
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.values(name)
        return values[0] if values else None

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]

    def echoed(self, name: str) -> list[str]:
        """The values of request header ``name`` the test backend's ``/echo`` saw."""
        return [v for n, v in json.loads(self.body)["headers"] if n == name]


class ProxyClients:
    """A connection per protocol to the proxy at ``port`` (``localhost``, the test CA)."""

    def __init__(self, h3: H3Client, h2: httpx.AsyncClient, h1: httpx.AsyncClient, port: int) -> None:
        self._h3, self._h2, self._h1, self.port = h3, h2, h1, port

    async def request(self, protocol: str, path: str, headers: Sequence[tuple[str, str]] = (), method: str = "GET",
                      body: bytes | None = None) -> Reply:
        if protocol == "h3":
            r = await self._h3.request(method, path, authority="localhost", headers=list(headers), body=body)
            assert r.status is not None, f"stream reset {r.reset_code}"
            return Reply(r.status, [(n.decode("latin-1"), v.decode("latin-1")) for n, v in r.headers], r.body)
        client = self._h2 if protocol == "h2" else self._h1
        response = await client.request(method, f"https://localhost:{self.port}{path}", headers=list(headers), content=body)
        assert response.http_version == ("HTTP/2" if protocol == "h2" else "HTTP/1.1")
        return Reply(response.status_code, [(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in response.headers.raw],
                     response.content)


@contextlib.asynccontextmanager
async def proxy_clients(port: int, certs_dir: Path, **httpx_kwargs: Any) -> AsyncIterator[ProxyClients]:
    context = ssl.create_default_context(cafile=str(certs_dir / "ca.pem"))
    async with (
        H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=str(certs_dir / "ca.pem")) as h3,
        httpx.AsyncClient(http2=True, verify=context, timeout=20, **httpx_kwargs) as h2,
        httpx.AsyncClient(http1=True, http2=False, verify=context, timeout=20, **httpx_kwargs) as h1,
    ):
        yield ProxyClients(h3, h2, h1, port)


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
            r = await self._h3[(source, authority)].request(method, path, headers=headers, authority=f"{authority}:{self.port}")
            assert r.status is not None, f"stream reset {r.reset_code}"
            return Reply(r.status, [(n.decode("latin-1"), v.decode("latin-1")) for n, v in r.headers], r.body)
        http = self._http[source]
        response = await http.request(method, f"https://{authority}:{self.port}{path}", headers=list(headers))
        expected = "HTTP/2" if self.protocol == "h2" else "HTTP/1.1"
        assert response.http_version == expected, response.http_version
        return Reply(response.status_code, [(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in response.headers.raw],
                     response.content)


@contextlib.asynccontextmanager
async def protocol_clients(server: Server, certs_dir: Path, protocol: str) -> AsyncIterator[ProtocolClients]:
    async with AsyncExitStack() as stack:
        yield ProtocolClients(server.listeners[0].port, certs_dir, protocol, stack)


@attrs.define
class Window:
    """Statuses of requests sent in a loop for a while, and the bounds of the time between
    the first and the last rate-limit check they met (see :func:`hammer`)."""

    statuses: list[int] = attrs.Factory(list)
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
