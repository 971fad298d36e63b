"""The one interface every balancing algorithm implements, and what it may look at.

A :class:`Balancer` belongs to one pool of one generation. It is built with the pool's
backends in config order (their weights, and a live :class:`BackendLoad` view of each one's
in-flight count and latency) and answers :meth:`Balancer.choose`: given the indices of the
backends that may take traffic right now (healthy and not ejected, decided by the caller),
which one takes this request. Balancers never see unavailable backends as candidates, so
"no silent fallback to a dead backend" is enforced in one place, :meth:`PoolRuntime.pick`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Protocol

from spooky_trio.http.request_keys import KeyRequest


class BackendLoad(Protocol):
    """The live load signals of one backend (kept in the long-lived state store)."""

    @property
    def in_flight(self) -> int:
        """Requests currently being exchanged with the backend."""

    @property
    def latency(self) -> float | None:
        """Smoothed time to response headers in seconds, or None before the first sample."""


#: the request attributes balancers may hash on: those key specs read
#: (:mod:`spooky_trio.http.request_keys`); :class:`DownstreamRequest` has them all
PickRequest = KeyRequest


class Balancer(abc.ABC):
    """Chooses one backend of a pool for each request.

    ``weights[i]`` (>= 1) is backend ``i``'s relative share; ``loads[i]`` its live load.
    Both sequences are aligned with the pool's backends and fixed for the balancer's life.
    """

    def __init__(self, weights: Sequence[int], loads: Sequence[BackendLoad]) -> None:
        if len(weights) != len(loads):
            raise ValueError("weights and loads must be aligned with the pool's backends")
        if any(w < 1 for w in weights):
            raise ValueError("every weight must be >= 1")
        self.weights = list(weights)
        self.loads = loads

    @abc.abstractmethod
    def choose(self, candidates: Sequence[int], request: PickRequest) -> int:
        """Return one element of ``candidates``.

        ``candidates`` is non-empty, holds distinct backend indices in ascending order, and
        lists exactly the backends that may take traffic now. Must not block or raise.
        """
