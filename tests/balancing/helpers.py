"""Builders for balancer unit tests: requests and settable backend loads."""

from __future__ import annotations

import attrs

from spooky_trio.http.messages import DownstreamRequest, Headers


@attrs.define
class Load:
    """A settable :class:`~spooky_trio.balancing.base.BackendLoad`."""

    in_flight: int = 0
    latency: float | None = None


def loads(n: int) -> list[Load]:
    return [Load() for _ in range(n)]


def request(
    *,
    path: bytes = b"/",
    authority: bytes = b"example.com",
    method: bytes = b"GET",
    headers: Headers | None = None,
    cid: bytes | None = None,
    client: tuple[str, int] = ("192.0.2.1", 50000),
) -> DownstreamRequest:
    return DownstreamRequest(
        method=method,
        scheme=b"https",
        authority=authority,
        path=path,
        headers=headers or [],
        protocol="h3",
        client_address=client,
        quic_connection_id=cid,
    )
