"""Latency-aware: the lowest expected wait, ``latency_ewma * (in_flight + 1) / weight``.

A backend's EWMA of time-to-response-headers estimates how long one request takes; the
in-flight factor estimates how many requests it is already working through, so a fast
backend stops winning once it queues up. Backends with no latency sample yet and nothing
in flight are probed first (in config order): without a sample the algorithm cannot rank
them, and one request is enough to get one. An unsampled backend that is already serving
its probe is scored with the mean latency of the sampled candidates, so a burst of
concurrent requests does not pile onto it while the probe is outstanding.
"""

from __future__ import annotations

from collections.abc import Sequence

from spooky_trio.balancing.base import Balancer, PickRequest


class LatencyAware(Balancer):
    """See the module docstring. Ties go to the earlier backend in config order."""

    def choose(self, candidates: Sequence[int], request: PickRequest) -> int:
        sampled: list[float] = []
        for index in candidates:
            load = self.loads[index]
            if load.latency is None:
                if load.in_flight == 0:
                    return index
            else:
                sampled.append(load.latency)
        default = sum(sampled) / len(sampled) if sampled else 1.0
        best, best_score = candidates[0], float("inf")
        for index in candidates:
            load = self.loads[index]
            latency = load.latency if load.latency is not None else default
            score = latency * (load.in_flight + 1) / self.weights[index]
            if score < best_score:
                best, best_score = index, score
        return best
