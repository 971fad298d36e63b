"""Sticky by QUIC connection: consistent hashing on the original destination connection ID.

The client picks its original DCID once per connection and every request on that
connection carries it, so one connection keeps one backend for as long as the pool's
membership is stable, while different connections spread over the ring by weight. A
request without one (the TCP bootstrap listener has no QUIC connection) hashes the
configured ``load_balancing.key`` if it has one and the request carries it, else the
client's address *with its port*: that identifies the TCP connection, which keeps the
"one connection, one backend" meaning instead of pinning every connection from one host.
"""

from __future__ import annotations

from collections.abc import Sequence

from spooky_trio.balancing.base import BackendLoad, PickRequest
from spooky_trio.balancing.consistent_hash import ConsistentHash
from spooky_trio.balancing.keys import KeySource


class StickyCid(ConsistentHash):
    """See the module docstring. ``fallback`` is the configured key's source, if any."""

    def __init__(self, weights: Sequence[int], loads: Sequence[BackendLoad], ids: Sequence[str], fallback: KeySource | None = None) -> None:
        super().__init__(weights, loads, ids, key_source=lambda request: None)
        self._fallback = fallback

    def request_key(self, request: PickRequest) -> bytes:
        if request.quic_connection_id:
            return b"cid:" + request.quic_connection_id
        if self._fallback is not None:
            key = self._fallback(request)
            if key is not None:
                return b"key:" + key.encode("latin-1")
        host, port = request.client_address
        return f"addr:{host}:{port}".encode()
