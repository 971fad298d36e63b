"""Consistent hashing on a weighted ring (ketama style).

Each backend owns ``round(POINTS_PER_BACKEND * weight / mean_weight)`` points on a 64-bit
ring, placed by hashing its *id* (not its position), so adding, removing or reordering
other backends in the config does not move its points. A key is hashed onto the ring and
served by the owner of the next point clockwise that is a candidate. An unavailable
backend's keys therefore move to the owners of the following points, spread over the
others, while every other key stays put: when one of N backends leaves (ejected, unhealthy
or removed) about 1/N of the keys move, and the same keys move back when it returns.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from spooky_trio.balancing.base import BackendLoad, Balancer, PickRequest
from spooky_trio.balancing.keys import KeySource, hash64, request_key

#: ring points of a backend of average weight; ~160 keeps shares within a few percent
POINTS_PER_BACKEND = 160


class HashRing:
    """A weighted ring over backend ids; :meth:`lookup` maps a key to a backend index."""

    def __init__(self, ids: Sequence[str], weights: Sequence[int]) -> None:
        if len(ids) != len(weights) or not ids:
            raise ValueError("a ring needs one weight per backend id, and at least one backend")
        mean = sum(weights) / len(weights)
        points: list[tuple[int, int]] = []
        for index, (backend_id, weight) in enumerate(zip(ids, weights, strict=True)):
            for replica in range(max(1, round(POINTS_PER_BACKEND * weight / mean))):
                points.append((hash64(f"{backend_id}#{replica}".encode()), index))
        points.sort()  # ties (practically impossible with 64 bits) broken by index: deterministic
        self._hashes = [h for h, _ in points]
        self._owners = [i for _, i in points]
        self._size = len(ids)

    def lookup(self, key: bytes, candidates: Sequence[int]) -> int:
        """The first candidate clockwise from ``hash64(key)``; ``candidates`` is non-empty."""
        start = bisect.bisect_right(self._hashes, hash64(key))
        count = len(self._owners)
        if len(candidates) == self._size:
            return self._owners[start % count]
        allowed = set(candidates)
        for step in range(count):
            owner = self._owners[(start + step) % count]
            if owner in allowed:
                return owner
        return candidates[0]  # unreachable: every backend owns at least one point


class ConsistentHash(Balancer):
    """Hash ``key_source``'s key (see :mod:`.keys`) onto a :class:`HashRing` of ``ids``."""

    def __init__(self, weights: Sequence[int], loads: Sequence[BackendLoad], ids: Sequence[str], key_source: KeySource) -> None:
        super().__init__(weights, loads)
        self.ring = HashRing(ids, self.weights)
        self._key_source = key_source

    def request_key(self, request: PickRequest) -> bytes:
        """The bytes this balancer hashes for ``request``."""
        return request_key(self._key_source, request)

    def choose(self, candidates: Sequence[int], request: PickRequest) -> int:
        return self.ring.lookup(self.request_key(request), candidates)
