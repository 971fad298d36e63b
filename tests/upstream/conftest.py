"""Fixtures and helpers for the upstream engine tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from spooky_trio.http.messages import Body, Headers, UpstreamRequest
from spooky_trio.upstream import BackendTarget, UpstreamPool, UpstreamResponse, make_client_ssl_context


@pytest.fixture
async def pool(nursery: trio.Nursery) -> AsyncIterator[UpstreamPool]:
    """A running pool; its run() task is cancelled when the test ends."""
    upstream = UpstreamPool()
    await nursery.start(upstream.run)
    yield upstream


def h1_target(port: int) -> BackendTarget:
    return BackendTarget(scheme="http", host="127.0.0.1", port=port)


def h2_target(port: int, certs_dir: Path, *, host: str = "localhost", server_name: str | None = "localhost", verify: bool = True) -> BackendTarget:
    ctx = make_client_ssl_context(verify=verify, ca_file=str(certs_dir / "ca.pem") if verify else None)
    return BackendTarget(scheme="https", host=host, port=port, ssl_context=ctx, server_name=server_name)


def request(method: str, path: str, *, body: Body | None = None, length: int | None = None, headers: Headers | None = None) -> UpstreamRequest:
    return UpstreamRequest(
        method=method.encode(), target=path.encode(), authority=b"backend.test", headers=headers or [], body=body, content_length=length
    )


async def read_all(response: UpstreamResponse) -> bytes:
    parts = []
    while chunk := await response.receive():
        parts.append(chunk)
    return b"".join(parts)


@attrs.frozen
class Result:
    status: int
    headers: Headers
    body: bytes
    trailers: Headers
    http_version: str

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n == name), None)


async def fetch(upstream: UpstreamPool, target: BackendTarget, req: UpstreamRequest, **timeouts: Any) -> Result:
    """One complete exchange; timeouts default to 2 s each."""
    async with upstream.exchange(
        target, req, connect_timeout=timeouts.get("connect_timeout", 2.0), response_timeout=timeouts.get("response_timeout", 2.0)
    ) as response:
        body = await read_all(response)
        return Result(response.status, response.headers, body, response.trailers, response.http_version)


async def chunks(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    """``data`` as an async iterable request body, yielding to the scheduler between chunks."""
    for offset in range(0, len(data), size):
        await trio.lowlevel.checkpoint()
        yield data[offset : offset + size]
