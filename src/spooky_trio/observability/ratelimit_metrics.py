"""Scrape-time metrics of the scoped rate limits: per-rule decisions, buckets and the state
of the shared stores, read from the counters the rate-limit step keeps anyway (a labelled
Counter per decision would cost a lock on every request).

What it reads is :class:`RateLimitView`, a structural view of
``resilience/ratelimit.py``'s ``RateLimitState`` (observability sits beside resilience and
imports nothing of it).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class _Counters(Protocol):
    @property
    def allowed(self) -> int: ...
    @property
    def limited(self) -> int: ...
    @property
    def skipped(self) -> int: ...
    @property
    def evictions(self) -> int: ...
    @property
    def fallbacks(self) -> Mapping[str, int]: ...


class _Rule(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def buckets(self) -> Mapping[str, object]: ...


class _Store(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def outages(self) -> int: ...


class _Stores(Protocol):
    def running(self) -> Sequence[_Store]: ...


class RateLimitView(Protocol):
    """What the collector reads (``RateLimitState``)."""

    @property
    def counters(self) -> Mapping[str, _Counters]: ...
    @property
    def stores(self) -> _Stores: ...
    def rules(self) -> Sequence[_Rule]: ...


class RateLimitCollector(Collector):
    """``spooky_rate_limit_*`` at scrape time (docs/rate-limiting.md, "Metrics")."""

    def __init__(self, view: RateLimitView) -> None:
        self._view = view

    def describe(self) -> list[Metric]:
        return []  # collected only at scrape time

    def collect(self) -> Iterator[Metric]:
        view = self._view
        decisions = CounterMetricFamily("spooky_rate_limit_decisions", "Scoped rate limit decisions by rule and outcome",
                                        labels=["rule", "outcome"])
        fallbacks = CounterMetricFamily("spooky_rate_limit_fallbacks",
                                        "Decisions made by failure_mode while the shared store could not decide",
                                        labels=["rule", "mode"])
        evictions = CounterMetricFamily("spooky_rate_limit_bucket_evictions",
                                        "Buckets evicted because a rule held its maximum number of buckets", labels=["rule"])
        for name, counters in sorted(view.counters.items()):
            decisions.add_metric([name, "allowed"], counters.allowed)
            decisions.add_metric([name, "limited"], counters.limited)
            decisions.add_metric([name, "skipped"], counters.skipped)
            evictions.add_metric([name], counters.evictions)
            for mode, count in sorted(counters.fallbacks.items()):
                fallbacks.add_metric([name, mode], count)
        buckets: dict[str, int] = {}
        for rule in view.rules():
            buckets[rule.name] = buckets.get(rule.name, 0) + len(rule.buckets)
        held = GaugeMetricFamily("spooky_rate_limit_buckets", "Token buckets this process holds, by rule", labels=["rule"])
        for name, count in sorted(buckets.items()):
            held.add_metric([name], count)
        fallback = GaugeMetricFamily("spooky_rate_limit_store_fallback_active",
                                     "1 while the shared store is down and failure_mode decides", labels=["store"])
        outages = CounterMetricFamily("spooky_rate_limit_store_outages", "Times the shared store was marked down",
                                      labels=["store"])
        for store in view.stores.running():
            fallback.add_metric([store.name], 0.0 if store.state == "up" else 1.0)
            outages.add_metric([store.name], store.outages)
        yield from (decisions, fallbacks, evictions, held, fallback, outages)
