"""Smooth weighted round-robin (the nginx algorithm).

Each pick adds every candidate's weight to its running score, picks the highest score
(first in backend order on a tie) and subtracts the candidates' total weight from the
winner. Over any run of ``sum(weights)`` picks with a stable candidate set each backend is
picked exactly ``weight`` times, and picks of a heavy backend are spread through the cycle
instead of bunched (weights 1:2:3 give c b a c b c ... not a b b c c c).
"""

from __future__ import annotations

from collections.abc import Sequence

from spooky_trio.balancing.base import BackendLoad, Balancer, PickRequest


class RoundRobin(Balancer):
    """Smooth weighted round-robin; see the module docstring."""

    def __init__(self, weights: Sequence[int], loads: Sequence[BackendLoad]) -> None:
        super().__init__(weights, loads)
        self._score = [0] * len(self.weights)

    def choose(self, candidates: Sequence[int], request: PickRequest) -> int:
        # Only candidates accumulate: an ejected backend neither earns nor is owed turns,
        # so it does not receive a burst of "catch-up" picks when it comes back.
        total = 0
        best = candidates[0]
        for index in candidates:
            weight = self.weights[index]
            total += weight
            self._score[index] += weight
            if self._score[index] > self._score[best]:
                best = index
        self._score[best] -= total
        return best
