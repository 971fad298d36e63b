"""Weighted random choice: backend ``i`` is picked with probability ``w_i / sum(w)``."""

from __future__ import annotations

import random
from collections.abc import Sequence

from spooky_trio.balancing.base import BackendLoad, Balancer, PickRequest


class WeightedRandom(Balancer):
    """Independent weighted draws; ``rng`` is injectable so tests are deterministic."""

    def __init__(self, weights: Sequence[int], loads: Sequence[BackendLoad], rng: random.Random | None = None) -> None:
        super().__init__(weights, loads)
        self._rng = rng if rng is not None else random.Random()

    def choose(self, candidates: Sequence[int], request: PickRequest) -> int:
        total = sum(self.weights[i] for i in candidates)
        # integer draw: no float rounding can push the point past the last backend
        point = self._rng.randrange(total)
        for index in candidates:
            point -= self.weights[index]
            if point < 0:
                return index
        return candidates[-1]  # unreachable: point < total
