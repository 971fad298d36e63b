"""Least connections, weight-aware: the fewest in-flight requests per unit of weight.

The score is ``(in_flight + 1) / weight``: the load a backend would carry *after* taking
this request. Using ``in_flight / weight`` instead would make every idle backend tie at 0
whatever its weight; with ``+ 1`` an idle heavy backend beats an idle light one, and under
load the in-flight counts settle in proportion to the weights. Ties go to the earlier
backend in config order, so the choice is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

from spooky_trio.balancing.base import Balancer, PickRequest


class LeastConnections(Balancer):
    """See the module docstring."""

    def choose(self, candidates: Sequence[int], request: PickRequest) -> int:
        best = candidates[0]
        best_load, best_weight = self.loads[best].in_flight + 1, self.weights[best]
        for index in candidates[1:]:
            load, weight = self.loads[index].in_flight + 1, self.weights[index]
            # load/weight < best_load/best_weight, cross-multiplied to stay in integers
            if load * best_weight < best_load * weight:
                best, best_load, best_weight = index, load, weight
        return best
