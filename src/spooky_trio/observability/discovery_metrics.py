"""Scrape-time gauges of backend discovery, read from the state the discovery sources keep
(``discovery/membership.py``'s ``DiscoveryState``, seen through :class:`DiscoveryView`:
observability sits below discovery and imports nothing of it). The counters of updates and
errors are event metrics in ``metrics.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class DiscoveryView(Protocol):
    def gauges(self) -> Iterable[tuple[str, str, int, float | None]]:
        """(pool, source, backends in its set, Unix time of its last good answer or None)
        for each pool's current source, and ``admin`` for the admin API's backends."""
        ...


class DiscoveryCollector(Collector):
    """``spooky_discovery_backends{upstream,source}`` and
    ``spooky_discovery_last_success_seconds{upstream,source}``."""

    def __init__(self, view: DiscoveryView) -> None:
        self._view = view

    def describe(self) -> list[Metric]:
        return []  # collected only at scrape time

    def collect(self) -> Iterator[Metric]:
        size = GaugeMetricFamily("spooky_discovery_backends", "Backends in a pool's discovered set (last good answer) or added by the admin API",
                                 labels=["upstream", "source"])
        success = GaugeMetricFamily("spooky_discovery_last_success_seconds", "Unix time of a discovery source's last good answer",
                                    labels=["upstream", "source"])
        for pool, source, count, last_success in self._view.gauges():
            size.add_metric([pool, source], count)
            if last_success is not None:
                success.add_metric([pool, source], last_success)
        yield size
        yield success
