"""The supervisor's own metrics (``performance.worker_threads > 1``) and the merge of its
workers' expositions into one (``serving/workers.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class SupervisorMetrics:
    """The supervisor's own metrics when ``performance.worker_threads > 1`` (serving/workers.py)."""

    def __init__(self, workers: int, serving: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.worker_restarts = Counter(
            "spooky_worker_restarts", "Worker processes restarted by the supervisor, by reason (crash, restart_requested)",
            ["reason"], registry=r,
        )
        for reason in ("crash", "restart_requested"):
            self.worker_restarts.labels(reason)
        self.scrape_errors = Counter("spooky_worker_scrape_errors", "Serving workers whose metrics could not be scraped", registry=r)
        self.control_api_drops = Counter(
            "spooky_control_api_connection_limit_drops", "Control API connections closed at max_connections", registry=r
        )
        self.registry.register(_WorkerGauges(workers, serving))
        #: families the supervisor reports itself: dropped from the workers' merged output
        #: (a worker's own control API drops concern its private endpoint)
        self.own_families = frozenset({"spooky_control_api_connection_limit_drops"})

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _WorkerGauges(Collector):
    def __init__(self, workers: int, serving: Callable[[], int]) -> None:
        self._workers = workers
        self._serving = serving

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield _gauge("spooky_workers", "Configured worker processes (performance.worker_threads)", self._workers)
        yield _gauge("spooky_workers_serving", "Worker processes serving now", self._serving())


#: gauges whose per-worker values add up; ``spooky_brownout_active`` and a rate-limit
#: store's fallback state take the max (one worker in it shows), every other gauge the min
#: (config generation, backend health, certificate expiry: a worker lagging behind shows)
_SUMMED_GAUGES = frozenset({"spooky_active_connections", "spooky_inflight_requests", "spooky_adaptive_admission_limit",
                            "spooky_rate_limit_buckets",
                            "spooky_quic_steering_mode"})  # (merged: how many workers steer in each mode)
_MAX_GAUGES = frozenset({"spooky_brownout_active", "spooky_rate_limit_store_fallback_active"})


def merge_expositions(texts: list[str], exclude: frozenset[str] = frozenset()) -> bytes:
    """Merge the workers' Prometheus text expositions into one: samples with the same name
    and labels are added (counters, histogram buckets/sums/counts, the gauges in
    ``_SUMMED_GAUGES``), ``*_created`` and other gauges take the min (brownout: the max).
    Families named in ``exclude`` are dropped (the supervisor reports its own)."""
    from prometheus_client.parser import text_string_to_metric_families

    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name in exclude or family.name.removesuffix("_created") in exclude:
                continue  # (the text format exposes a counter's ``_created`` as its own gauge family)
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            merged = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in merged:
                    merged[key] = sample.value
                elif sample.name.endswith("_created") or (family.type == "gauge" and family.name not in _SUMMED_GAUGES | _MAX_GAUGES):
                    merged[key] = min(merged[key], sample.value)
                elif family.name in _MAX_GAUGES:
                    merged[key] = max(merged[key], sample.value)
                else:
                    merged[key] = merged[key] + sample.value
    out = CollectorRegistry(auto_describe=False)
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    out.register(_Fixed(list(families.values())))
    return generate_latest(out)


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families
