"""One request over each ingress protocol (HTTP/3, HTTP/2, HTTP/1.1) to the proxy under
test, answered as a :class:`Reply`: tests of a feature that must behave the same on every
listener loop over :data:`PROTOCOLS`."""

from __future__ import annotations

import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import httpx

from spooky_trio.clients.h3 import H3Client

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
