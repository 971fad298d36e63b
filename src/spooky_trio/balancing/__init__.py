"""Load balancing: one small module per algorithm behind :class:`~.base.Balancer`.

:func:`make_balancer` builds the configured algorithm for one pool of one generation.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from spooky_trio.balancing.base import BackendLoad, Balancer, PickRequest
from spooky_trio.balancing.consistent_hash import ConsistentHash, HashRing
from spooky_trio.balancing.keys import key_source
from spooky_trio.balancing.latency_aware import LatencyAware
from spooky_trio.balancing.least_connections import LeastConnections
from spooky_trio.balancing.round_robin import RoundRobin
from spooky_trio.balancing.sticky_cid import StickyCid
from spooky_trio.balancing.weighted_random import WeightedRandom

__all__ = [
    "BackendLoad",
    "Balancer",
    "ConsistentHash",
    "HashRing",
    "LatencyAware",
    "LeastConnections",
    "PickRequest",
    "RoundRobin",
    "StickyCid",
    "WeightedRandom",
    "make_balancer",
]


def make_balancer(
    kind: str,
    key: str | None,
    *,
    ids: Sequence[str],
    weights: Sequence[int],
    loads: Sequence[BackendLoad],
    rng: random.Random | None = None,
) -> Balancer:
    """The balancer for ``load_balancing.type`` ``kind`` (canonical or underscore spelling).

    ``key`` is ``load_balancing.key``; only the hashing algorithms use it. ``ids``,
    ``weights`` and ``loads`` are aligned with the pool's backends. Raises ValueError for an
    unknown type or key (the config validator rejects both earlier).
    """
    kind = kind.replace("_", "-")
    if kind == "round-robin":
        return RoundRobin(weights, loads)
    if kind == "random":
        return WeightedRandom(weights, loads, rng)
    if kind == "least-connections":
        return LeastConnections(weights, loads)
    if kind == "latency-aware":
        return LatencyAware(weights, loads)
    if kind == "consistent-hash":
        return ConsistentHash(weights, loads, ids, key_source(key))
    if kind == "sticky-cid":
        return StickyCid(weights, loads, ids, key_source(key) if key is not None else None)
    raise ValueError(f"unknown load_balancing.type {kind!r}")
