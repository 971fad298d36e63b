"""QUIC connection-flood guards through the real proxy: token bucket, stateless Retry,
``max_active_connections``; an established connection keeps being served during a flood."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicPacketType, pull_quic_header

from spooky_trio.clients.errors import H3ConnectError
from spooky_trio.clients.h3 import H3Client
from tests.support.backends import run_backend
from tests.support.proxy import h1_pool, proxy_yaml, running_proxy

FLOOD = 300


def _flood_initials(port: int, count: int) -> list[bytes]:
    """``count`` genuine client Initials (fresh connection IDs each), as a flooder sends them."""
    datagrams = []
    for _ in range(count):
        quic = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=["h3"], verify_mode=ssl.CERT_NONE))
        quic.connect(("127.0.0.1", port), now=0.0)
        datagrams.extend(d for d, _ in quic.datagrams_to_send(now=0.0))
    return datagrams


async def _send_flood(port: int, datagrams: list[bytes], expected_retries: int, between: Callable[[], Awaitable[None]]) -> list[bytes]:
    """Send every datagram from one UDP socket, awaiting ``between()`` after every 50; return
    the replies once ``expected_retries`` Retry packets came back (or nothing came for 5 s)."""
    replies: list[bytes] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect(("127.0.0.1", port))

        def drain() -> None:
            while True:
                try:
                    replies.append(sock.recv(65536))
                except BlockingIOError:
                    return

        for index, data in enumerate(datagrams, 1):
            sock.send(data)
            drain()  # as we go, so our receive buffer never overflows
            if index % 50 == 0:
                await between()
        while _packet_types(replies).count(QuicPacketType.RETRY) < expected_retries:
            with trio.move_on_after(5.0) as scope:
                await trio.lowlevel.wait_readable(sock)
            if scope.cancelled_caught:
                break
            drain()
    return replies


def _packet_types(replies: list[bytes]) -> list[QuicPacketType]:
    return [pull_quic_header(Buffer(data=r), host_cid_length=8).packet_type for r in replies]


GUARD = """
performance:
  new_connections_per_sec: 1
  new_connections_burst: 3
"""


async def test_flood_gets_retry_and_established_client_is_served(certs_dir: Path) -> None:
    async with run_backend(name="app") as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir, extra=GUARD)) as server:
        listener = server.listeners[0]
        port = listener.port
        # wall time must not refill the bucket mid-test: the refill is the unit tests' business
        listener.guard.bucket.rate = 0
        ca = str(certs_dir / "ca.pem")
        async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=ca) as established:
            assert (await established.request("GET", "/echo")).status == 200
            flood = _flood_initials(port, FLOOD)
            before = len(listener.connections)
            served: list[int | None] = []

            async def established_request() -> None:
                # between flood bursts, with flood datagrams still queued at the proxy
                served.append((await established.request("GET", "/echo")).status)

            replies = await _send_flood(port, flood, FLOOD - 2, established_request)
            assert served == [200] * (FLOOD // 50)
            types = _packet_types(replies)
            retries = types.count(QuicPacketType.RETRY)
            # 2 tokens were left after the established client: at most 2 flood connections hold state
            assert len(listener.connections) - before <= 2
            assert retries == FLOOD - 2
            assert listener.guard.stats["rate_limited"] == retries
            assert (await established.request("GET", "/echo")).status == 200

            # a legitimate newcomer still connects: Retry, then its validated token admits it
            validated = listener.guard.stats["retry_validated"]
            async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=ca, connect_timeout=5) as newcomer:
                assert (await newcomer.request("GET", "/echo")).status == 200
            assert listener.guard.stats["retry_validated"] == validated + 1

        text = server.metrics.render().decode()
        assert f"spooky_ingress_rate_limited_total {float(retries) + 1}" in text  # the newcomer's first Initial too
        assert "spooky_ingress_retry_validated_total 1.0" in text


CAP = """
performance:
  max_active_connections: 1
"""


async def test_connection_cap_drops_new_initials(certs_dir: Path) -> None:
    async with run_backend(name="app") as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir, extra=CAP)) as server:
        port = server.listeners[0].port
        ca = str(certs_dir / "ca.pem")
        async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=ca) as first:
            with pytest.raises(H3ConnectError):
                async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=ca, connect_timeout=1):
                    pass
            assert (await first.request("GET", "/echo")).status == 200
        assert server.listeners[0].stats["cap_rejects"] >= 1
        assert "spooky_connection_cap_rejects_total" in server.metrics.render().decode()
