"""Metrics of the traffic policy (route matchers, splits, mirror copies, faults;
docs/traffic-policy.md), counted in plain dicts where they happen and exposed at scrape
time, like ``spooky_requests_by_reason_total`` (a labelled Counter's ``inc`` takes a lock:
measurable once per request).

* ``spooky_route_matcher_misses_total{upstream,matcher}``: requests a pool's route matched
  by host, path and method that one of its matchers (the first that failed) turned away;
* ``spooky_traffic_split_total{upstream,target}``: split decisions of a pool with a
  ``split``, by the pool that served (``target`` is the pool itself when the request stayed);
* ``spooky_mirror_copies_total{upstream,shadow,result}``: mirror copies by how they ended:
  ``completed`` (the shadow answered; the answer is discarded), ``failed``, ``timeout``, or
  not sent: ``dropped_max_inflight``, ``dropped_body_too_large``,
  ``dropped_body_incomplete`` (the request ended before its body was read),
  ``dropped_no_backend``, ``dropped_draining``;
* ``spooky_fault_injections_total{upstream,kind}`` (``delay``, ``abort``) and
  ``spooky_fault_max_active_skips_total{upstream}`` (a fault was due but ``max_active``
  requests were already in one).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector


class TrafficCounters:
    """The counts of the module docstring, written by the traffic-policy steps."""

    __slots__ = ("matcher_misses", "splits", "mirror", "faults", "fault_skips")

    def __init__(self) -> None:
        #: (pool, matcher label) -> requests turned away (``routing/table.py`` fills it)
        self.matcher_misses: collections.Counter[tuple[str, str]] = collections.Counter()
        #: (route pool, serving pool) -> requests
        self.splits: collections.Counter[tuple[str, str]] = collections.Counter()
        #: (route pool, shadow pool, result) -> copies
        self.mirror: collections.Counter[tuple[str, str, str]] = collections.Counter()
        #: (pool, kind) -> faults injected
        self.faults: collections.Counter[tuple[str, str]] = collections.Counter()
        #: pool -> faults skipped at max_active
        self.fault_skips: collections.Counter[str] = collections.Counter()


class TrafficCollector(Collector):
    """The families of the module docstring, from :class:`TrafficCounters`."""

    def __init__(self, counters: TrafficCounters) -> None:
        self._counters = counters

    def describe(self) -> list[Metric]:
        return []  # collected only at scrape time

    def collect(self) -> Iterator[Metric]:
        c = self._counters
        misses = CounterMetricFamily("spooky_route_matcher_misses", "Requests a route matched by host, path and method "
                                     "that one of its matchers turned away", labels=["upstream", "matcher"])
        for (pool, matcher), count in sorted(list(c.matcher_misses.items())):
            misses.add_metric([pool, matcher], count)
        splits = CounterMetricFamily("spooky_traffic_split", "Split decisions by the pool the route chose and the pool "
                                     "that served", labels=["upstream", "target"])
        for (pool, target), count in sorted(list(c.splits.items())):
            splits.add_metric([pool, target], count)
        mirror = CounterMetricFamily("spooky_mirror_copies", "Mirror copies by how they ended (sent or dropped)",
                                     labels=["upstream", "shadow", "result"])
        for (pool, shadow, result), count in sorted(list(c.mirror.items())):
            mirror.add_metric([pool, shadow, result], count)
        faults = CounterMetricFamily("spooky_fault_injections", "Faults injected, by kind (delay, abort)",
                                     labels=["upstream", "kind"])
        for (pool, kind), count in sorted(list(c.faults.items())):
            faults.add_metric([pool, kind], count)
        skips = CounterMetricFamily("spooky_fault_max_active_skips", "Faults not injected because max_active requests "
                                    "were already in one", labels=["upstream"])
        for pool, count in sorted(list(c.fault_skips.items())):
            skips.add_metric([pool], count)
        yield from (misses, splits, mirror, faults, skips)
