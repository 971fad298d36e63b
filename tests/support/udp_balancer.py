"""A test-only L4 UDP balancer that routes QUIC by QUIC-LB server ID (not a product component).

What docs/fleet.md asks of a real balancer, in a few dozen lines: a short-header packet goes
to the node whose server ID its DCID decodes to (whatever the client's address: a moved
client stays on its node); any other packet of a client address already seen goes where
that address went; a new client address (an Initial) goes to a *ready* node, chosen by its
4-tuple. Readiness is each node's control API ``/ready`` polled every 100 ms, so a node
draining after SIGTERM gets no new connections while its open ones still reach it by CID.

It is a UDP proxy (the nodes see the balancer's per-client socket as the client address and
answer through it), so one machine needs no routing tricks: the nodes listen on distinct
loopback addresses (127.0.0.2, 127.0.0.3, ...).
"""

from __future__ import annotations

import socket
import zlib
from collections import Counter

import httpx
import trio

from spooky_trio.ingress.quic_lb import QuicLbCodec

Addr = tuple[str, int]


class Node:
    def __init__(self, server_id: bytes, quic: Addr, ready_url: str) -> None:
        self.server_id = server_id
        self.quic = quic
        self.ready_url = ready_url
        self.ready = False


class UdpBalancer:
    """Route datagrams from clients to ``nodes``; ``decoder`` decodes the CIDs (any server ID
    of the right length, the shared key). ``stats`` counts ``by_server_id`` (short headers
    routed by CID), ``moved`` (of those, from a client address first seen with a short header:
    a migration or rebinding) and ``hash_would_misroute`` (of those, the ones a 4-tuple hash
    would have sent to another node), ``new:<server id>`` flows per node, ``unroutable``."""

    def __init__(self, nodes: list[Node], decoder: QuicLbCodec) -> None:
        self.nodes = {node.server_id: node for node in nodes}
        self.decoder = decoder
        self.sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.flows: dict[tuple[Addr, bytes], trio.socket.SocketType] = {}
        self.sticky: dict[Addr, bytes] = {}
        self.stats: Counter[str] = Counter()
        self.polled = trio.Event()
        #: new clients go to this node while it is ready (a test placing connections)
        self.pin: bytes | None = None

    async def bind(self) -> int:
        await self.sock.bind(("127.0.0.1", 0))
        port: int = self.sock.getsockname()[1]
        return port

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._poll_ready)
            await self.polled.wait()
            task_status.started()
            while True:
                data, client = await self.sock.recvfrom(65536)
                server_id = self._pick(data, client)
                if server_id is None:
                    self.stats["unroutable"] += 1
                    continue
                upstream = self.flows.get((client, server_id))
                if upstream is None:
                    upstream = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    await upstream.bind(("127.0.0.1", 0))
                    self.flows[(client, server_id)] = upstream
                    nursery.start_soon(self._relay_back, upstream, client)
                    self.stats[f"new:{server_id.hex()}"] += 1
                await upstream.sendto(data, self.nodes[server_id].quic)

    def _pick(self, data: bytes, client: Addr) -> bytes | None:
        if data and not data[0] & 0x80:  # short header: the DCID follows the first octet
            decoded = self.decoder.decode(data[1 : 1 + self.decoder.length])
            if decoded is not None and decoded[0] in self.nodes:
                self.stats["by_server_id"] += 1
                if client not in self.sticky:
                    self.stats["moved"] += 1
                    if self._hash_pick(client) != decoded[0]:
                        self.stats["hash_would_misroute"] += 1  # a 4-tuple balancer loses this one
                self.sticky.setdefault(client, decoded[0])
                return decoded[0]
            return None
        known = self.sticky.get(client)
        if known is not None and (self.nodes[known].ready or data[0] & 0x30 != 0x00):
            return known  # (an Initial, long type 0, from a reused port re-picks a ready node)
        if self.pin is not None and self.nodes[self.pin].ready:
            chosen: bytes | None = self.pin
        else:
            chosen = self._hash_pick(client)
        if chosen is not None:
            self.sticky[client] = chosen
        return chosen

    def _hash_pick(self, client: Addr) -> bytes | None:
        """The ready node a 4-tuple hash gives a new client address."""
        ready = sorted(sid for sid, node in self.nodes.items() if node.ready)
        return ready[zlib.crc32(repr(client).encode()) % len(ready)] if ready else None

    async def _relay_back(self, upstream: trio.socket.SocketType, client: Addr) -> None:
        while True:
            data = await upstream.recv(65536)
            await self.sock.sendto(data, client)

    async def _poll_ready(self) -> None:
        async with httpx.AsyncClient(timeout=0.5) as http:
            while True:
                for node in self.nodes.values():
                    try:
                        node.ready = (await http.get(node.ready_url)).status_code == 200
                    except httpx.HTTPError:
                        node.ready = False
                self.polled.set()
                await trio.sleep(0.1)
