"""Scrape-time metrics of the upstream protocols (docs/upstream-protocols.md, "Metrics").

* ``spooky_upstream_protocol_requests_total{upstream,protocol}``: exchanges with a backend
  that got a response head, by the protocol spoken (``HTTP/1.1``, ``HTTP/2``, ``HTTP/3``),
  from a plain counter the forward step bumps (a labelled Counter costs a lock per request);
* ``spooky_upstream_h3_events_total{backend,event}``: what the HTTP/3 pool and the alt-svc
  logic did per backend address (``dial``, ``dial_failed``, ``stream_wait``, ``resent``,
  ``lost``, ``goaway``, ``alt_svc_learned``, ``alt_svc_changed``, ``alt_svc_cleared``,
  ``broken``, ``fallback``);
* ``spooky_upstream_h3_connections{backend}``: open HTTP/3 connections per backend address;
* ``spooky_upstream_h3_broken{backend}``: 1 while HTTP/3 of an alt-svc backend is marked
  broken (requests then go over HTTP/2).

What it reads of the pool is :class:`UpstreamView` (structural; observability sits above
upstream and imports nothing of it).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Mapping
from typing import Protocol

import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class _H3Pool(Protocol):
    @property
    def stats(self) -> Mapping[tuple[str, str], int]: ...
    def connection_counts(self) -> Mapping[str, int]: ...


class _AltSvcCache(Protocol):
    def broken_until(self) -> Mapping[str, float]: ...


class _AltSvc(Protocol):
    @property
    def cache(self) -> _AltSvcCache: ...


class UpstreamView(Protocol):
    """What the collector reads (``upstream/pool.py``'s ``UpstreamPool``)."""

    @property
    def h3(self) -> _H3Pool: ...
    @property
    def alt_svc(self) -> _AltSvc: ...


class UpstreamProtocolCollector(Collector):
    """``spooky_upstream_protocol_requests_total`` from :attr:`Metrics.upstream_protocols`."""

    def __init__(self, counts: collections.Counter[tuple[str, str]]) -> None:
        self._counts = counts

    def describe(self) -> list[Metric]:
        return []  # collected only at scrape time

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("spooky_upstream_protocol_requests", "Backend exchanges by the protocol spoken",
                                     labels=["upstream", "protocol"])
        for (pool, protocol), count in sorted(list(self._counts.items())):
            family.add_metric([pool, protocol], count)
        yield family


class UpstreamH3Collector(Collector):
    """The HTTP/3 pool's events, connections and broken marks (module docstring)."""

    def __init__(self, view: UpstreamView) -> None:
        self._view = view

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        h3 = self._view.h3
        events = CounterMetricFamily("spooky_upstream_h3_events", "HTTP/3 pool and Alt-Svc events per backend address",
                                     labels=["backend", "event"])
        for (event, backend), count in sorted(list(h3.stats.items())):
            events.add_metric([backend, event], count)
        yield events
        connections = GaugeMetricFamily("spooky_upstream_h3_connections", "Open HTTP/3 connections per backend address",
                                        labels=["backend"])
        for backend, count in sorted(h3.connection_counts().items()):
            connections.add_metric([backend], count)
        yield connections
        broken = GaugeMetricFamily("spooky_upstream_h3_broken", "1 while HTTP/3 of an alt-svc backend is marked broken",
                                   labels=["backend"])
        now = trio.current_time()  # the pool's clock (scrapes run in the serving process's trio loop)
        for backend, until in sorted(self._view.alt_svc.cache.broken_until().items()):
            broken.add_metric([backend], 1.0 if now < until else 0.0)
        yield broken
