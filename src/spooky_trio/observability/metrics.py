"""Prometheus metrics (names from spec/metrics.md), one registry per :class:`Server`.

Two kinds of metric live in the registry a :class:`Metrics` owns:

* event counters and the latency histogram, incremented where the event happens (the proxy
  pipeline, health probes, DNS refreshes) through the methods below;
* values other components already count or hold (listener ``stats`` counters, TLS
  ``stats``, backend state, in-flight activity, the generation number), read at scrape time
  by :class:`ServerCollector`, so the hot datagram path pays nothing extra.

A metric whose feature does not exist yet (buffers, route latency quantiles...) is not
defined at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

#: upstream latency buckets, milliseconds
LATENCY_BUCKETS_MS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)

#: statuses the pipeline answers itself that count as request validation failures / policy denials
_VALIDATION_STATUSES = frozenset({400})
_POLICY_STATUSES = frozenset({403, 405, 408, 413, 431})

#: BootstrapTls failure reason -> spec reason label
_TLS_REASONS = {
    "missing": "missing_client_cert",
    "expired": "expired_client_cert",
    "not_yet_valid": "invalid_client_cert",
    "invalid": "invalid_client_cert",
    "unknown_issuer": "unknown_issuer",
    "no_shared_protocol": "alpn",
    "timeout": "handshake",
    "handshake_failed": "handshake",
}


def status_class(status: int | None) -> str:
    """``2xx``..``5xx``, or ``none`` when no response status exists (transport failure)."""
    return f"{status // 100}xx" if status is not None and 100 <= status < 600 else "none"


class Metrics:
    """Every event metric, defined once in ``self.registry`` (never the global registry)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        #: (pool, backend, status class, outcome) -> label children (see backend_exchange)
        self._exchange_children: dict[tuple[str, str, str, str], tuple[Any, Any, Any]] = {}
        self.requests = Counter("spooky_requests", "Requests handled by the pipeline", registry=r)
        self.requests_success = Counter("spooky_requests_success", "Requests answered below 400", registry=r)
        self.requests_failure = Counter("spooky_requests_failure", "Requests answered 400+ or reset", registry=r)
        # (not in the spec; added with the filter chain) every request once, by the step that
        # decided its answer: ``ok`` for a backend's answer, else the proxy's reason
        self.requests_by_reason = Counter(
            "spooky_requests_by_reason", "Requests by the reason that decided the answer", ["reason", "status_class"], registry=r
        )
        #: (reason, status class) -> label child (see request_done)
        self._reason_children: dict[tuple[str, str], Any] = {}
        self.validation_rejects = Counter("spooky_request_validation_rejects", "Requests rejected as malformed (400)", registry=r)
        self.policy_denied = Counter("spooky_policy_denied", "Requests denied by policy (403/405/408/413/431)", registry=r)
        self.early_data_accepted = Counter("spooky_early_data_accepted", "Requests served from QUIC 0-RTT early data", registry=r)
        self.early_data_rejected = Counter("spooky_early_data_rejected", "0-RTT requests answered 425 Too Early", registry=r)
        self.upstream_requests = Counter(
            "spooky_upstream_requests", "Requests forwarded per upstream pool",
            ["upstream", "status_class", "outcome"], registry=r,
        )
        self.backend_requests = Counter(
            "spooky_backend_requests", "Requests forwarded per backend",
            ["upstream", "backend", "status_class", "outcome"], registry=r,
        )
        self.upstream_latency = Histogram(
            "spooky_upstream_request_latency_ms", "Time to the backend's response head (ms)",
            ["upstream", "outcome"], buckets=LATENCY_BUCKETS_MS, registry=r,
        )
        self.backend_timeouts = Counter("spooky_backend_timeouts", "Backend exchanges that timed out", registry=r)
        self.backend_errors = Counter("spooky_backend_errors", "Backend exchanges that failed (not timeouts)", registry=r)
        self.health_checks = Counter("spooky_health_checks", "Active health probes", registry=r)
        self.health_checks_success = Counter("spooky_health_checks_success", "Successful health probes", registry=r)
        self.health_checks_failure = Counter("spooky_health_checks_failure", "Failed health probes", registry=r)
        self.health_failures = Counter(
            "spooky_health_failures", "Backend failures (probes and traffic) by reason", ["reason"], registry=r
        )
        self.control_api_drops = Counter(
            "spooky_control_api_connection_limit_drops", "Control API connections closed at max_connections", registry=r
        )
        self.watchdog_degraded_windows = Counter("spooky_watchdog_degraded_windows", "Watchdog windows judged unhealthy", registry=r)
        self.watchdog_restart_requests = Counter(
            "spooky_watchdog_restart_requests", "Restarts the watchdog asked for (past the cooldown)", registry=r
        )
        self.watchdog_restart_hooks = Counter("spooky_watchdog_restart_hooks", "Runs of resilience.watchdog.restart_command", registry=r)
        self.dns_success = Counter("spooky_backend_dns_refresh_success", "Successful backend DNS refreshes", registry=r)
        self.dns_failure = Counter("spooky_backend_dns_refresh_failure", "Failed backend DNS refreshes", registry=r)
        self.dns_changes = Counter(
            "spooky_backend_dns_address_set_changes", "Backend DNS refreshes that changed the address set", registry=r
        )
        # overload protection and resilience (resilience/*.py)
        self.shed = Counter("spooky_overload_shed", "Requests shed with 503 by overload protection", registry=r)
        self.shed_by_reason = Counter(
            "spooky_overload_shed_by_reason", "Requests shed with 503, by the check that refused them", ["reason"], registry=r
        )
        self.wait_admit = Counter(
            "spooky_inflight_wait_admit", "Requests admitted after waiting for an inflight slot", ["scope"], registry=r
        )
        self.breaker_rejected = Counter(
            "spooky_circuit_breaker_rejected", "Requests refused because every candidate backend's breaker was open", registry=r
        )
        self.retries = Counter("spooky_retries", "Retries sent to another backend", registry=r)
        self.retry_denied = Counter("spooky_retry_denied", "Retries wanted but not sent, by reason", ["reason"], registry=r)
        self.retry_attempts = Counter(
            "spooky_retry_attempts", "Retries sent, by the failure of the attempt they replace", ["reason"], registry=r
        )
        self.hedge_triggered = Counter("spooky_hedge_triggered", "Hedge attempts started", registry=r)
        self.hedge_won = Counter("spooky_hedge_won", "Hedge attempts whose response won", registry=r)
        self.hedge_wasted = Counter("spooky_hedge_wasted", "Hedge attempts that did not win (cancelled or failed)", registry=r)
        self.hedge_primary_won = Counter(
            "spooky_hedge_primary_won_after_trigger", "Primary attempts that won after a hedge was started", registry=r
        )
        #: reload transactions (file re-read, SIGHUP, apply, rollback, promote) by result:
        #: success, invalid (the document was rejected), failed (build, bind or write failed)
        self.config_reloads = Counter("spooky_config_reload", "Configuration reloads by result", ["result"], registry=r)
        for result in ("success", "invalid", "failed"):
            self.config_reloads.labels(result=result)

    # -- event hooks --

    def request_done(self, status: int | None, reason: str) -> None:
        """One request finished with ``status`` (None: reset without an answer), decided by
        ``reason`` (the access log's field)."""
        self.requests.inc()
        if status is not None and status < 400:
            self.requests_success.inc()
        else:
            self.requests_failure.inc()
        key = (reason, status_class(status))
        child = self._reason_children.get(key)
        if child is None:
            child = self._reason_children[key] = self.requests_by_reason.labels(*key)
        child.inc()

    def request_rejected(self, status: int) -> None:
        """The pipeline answered ``status`` itself before forwarding (validation / policy)."""
        if status in _VALIDATION_STATUSES:
            self.validation_rejects.inc()
        elif status in _POLICY_STATUSES:
            self.policy_denied.inc()
        elif status == 425:
            self.early_data_rejected.inc()

    def backend_exchange(self, pool: str, backend: str, status: int | None, failure: str | None, latency_ms: float | None) -> None:
        """One forwarded exchange ended: ``failure`` is the upstream failure reason or None."""
        outcome = "failure" if failure is not None or (status is not None and status >= 500) else "success"
        cls = status_class(status)
        # labels() costs a lock and a tuple per call; children never go away (labels are not
        # removed), so the three for one (pool, backend, class, outcome) are looked up once
        key = (pool, backend, cls, outcome)
        children = self._exchange_children.get(key)
        if children is None:
            children = self._exchange_children[key] = (
                self.upstream_requests.labels(pool, cls, outcome),
                self.backend_requests.labels(pool, backend, cls, outcome),
                self.upstream_latency.labels(pool, outcome),
            )
        children[0].inc()
        children[1].inc()
        if latency_ms is not None:
            children[2].observe(latency_ms)
        if failure is not None:
            (self.backend_timeouts if failure == "timeout" else self.backend_errors).inc()
            self.health_failures.labels(failure).inc()
        elif status is not None and status >= 500:
            self.health_failures.labels("5xx").inc()

    def overload_shed(self, reason: str) -> None:
        """A request was shed (503) by the check named ``reason``."""
        self.shed.inc()
        self.shed_by_reason.labels(reason).inc()

    def inflight_wait_admit(self, scope: str) -> None:
        """A request got a ``global``/``upstream``/``backend`` slot after waiting for it."""
        self.wait_admit.labels(scope).inc()

    def circuit_breaker_rejected(self) -> None:
        self.breaker_rejected.inc()

    def retry(self, reason: str) -> None:
        """A retry was sent after an attempt failed with ``reason``."""
        self.retries.inc()
        self.retry_attempts.labels(reason).inc()

    def retry_denial(self, reason: str) -> None:
        """A failed attempt was not retried: ``budget``, ``no_backend``, ``not_replayable``, ``attempts``."""
        self.retry_denied.labels(reason).inc()

    def hedge(self, event: str) -> None:
        """``triggered``, ``won`` (the hedge won), ``primary_won`` (after a trigger), ``wasted``."""
        {"triggered": self.hedge_triggered, "won": self.hedge_won, "wasted": self.hedge_wasted,
         "primary_won": self.hedge_primary_won}[event].inc()

    def health_probe(self, reason: str | None) -> None:
        """One active probe finished (``reason`` None on success)."""
        self.health_checks.inc()
        if reason is None:
            self.health_checks_success.inc()
        else:
            self.health_checks_failure.inc()
            self.health_failures.labels(reason).inc()

    def dns_refresh(self, ok: bool, changed: bool) -> None:
        """One DNS refresh finished."""
        (self.dns_success if ok else self.dns_failure).inc()
        if changed:
            self.dns_changes.inc()

    def render(self) -> bytes:
        """The text exposition of the registry."""
        return generate_latest(self.registry)

    def attach(self, server: Any) -> None:
        """Register the scrape-time collector reading ``server``'s components."""
        self.registry.register(ServerCollector(lambda: server))


class ServerCollector(Collector):
    """Reads counters and gauges that the server's components keep anyway (see module doc)."""

    def __init__(self, server: Callable[[], Any]) -> None:
        self._server = server

    def describe(self) -> list[Metric]:
        return []  # not described up front: collected only at scrape time

    def collect(self) -> Iterator[Metric]:
        server = self._server()
        quic = list(server.listeners)
        tcp = list(server.bootstrap_listeners)

        def qsum(key: str) -> int:
            return sum(listener.stats[key] for listener in quic)

        yield _gauge("spooky_active_connections", "Open client connections (QUIC + TCP)",
                     sum(len(q.connections) for q in quic) + sum(t.open_connections for t in tcp))
        yield _counter("spooky_connection_cap_rejects", "Connections refused at max_active_connections",
                       qsum("cap_rejects") + sum(t.stats["cap_rejects"] for t in tcp))
        yield _counter("spooky_ingress_packets", "UDP datagrams received", qsum("datagrams"))
        yield _counter("spooky_ingress_bad_header", "Datagrams without a parsable QUIC header", qsum("bad_headers"))
        yield _counter("spooky_ingress_unroutable", "Datagrams matching no connection and not a new one", qsum("unroutable"))
        yield _counter("spooky_ingress_rate_limited", "New-connection Initials answered with a Retry (token bucket empty)",
                       qsum("rate_limited"))
        yield _counter("spooky_ingress_retry_validated", "Connections admitted on a valid Retry token (extension)",
                       qsum("retry_validated"))
        yield _counter("spooky_ingress_retry_invalid_token", "Initials closed with INVALID_TOKEN (extension)",
                       qsum("retry_invalid"))
        yield _counter("spooky_ingress_draining_drops", "New QUIC connections refused while draining", qsum("refused_draining"))
        yield _counter("spooky_runtime_panics", "Unexpected exceptions caught at a task boundary",
                       qsum("panics") + sum(t.stats["panics"] for t in tcp))
        yield _protocol_errors(quic, tcp)
        yield _gauge("spooky_inflight_requests", "Requests in flight", server.activity.count)
        yield _gauge("spooky_config_generation", "Number of the serving config generation", server.generation.number)
        yield from self._tls(server, tcp)
        yield from self._backends(server)
        yield from self._overload(server)

    @staticmethod
    def _overload(server: Any) -> Iterator[Metric]:
        state = server.state.resilience
        config = server.generation.config
        admission = config.resilience.adaptive_admission
        limit = config.performance.global_inflight_limit
        if admission.enabled:
            limit = min(limit, state.admission.limit(admission))
        active = config.resilience.brownout.enabled and state.brownout.active
        yield _gauge("spooky_brownout_active", "Brownout is shedding non-core routes (1/0)", 1.0 if active else 0.0)
        yield _gauge("spooky_adaptive_admission_limit", "Effective global inflight limit (adaptive admission)", limit)

    @staticmethod
    def _tls(server: Any, tcp: list[Any]) -> Iterator[Metric]:
        ok = CounterMetricFamily("spooky_downstream_tls_handshake_success", "Completed TLS handshakes (TCP and QUIC listeners)")
        fail = CounterMetricFamily("spooky_downstream_tls_handshake_failure", "Failed TLS handshakes", labels=["listener", "reason"])
        sel = CounterMetricFamily("spooky_downstream_tls_certificate_selection", "Certificate selections",
                                  labels=["listener", "selection"])
        alpn = CounterMetricFamily("spooky_downstream_tls_alpn", "Negotiated ALPN protocols", labels=["listener", "protocol"])
        total_ok = 0
        failures: dict[tuple[str, str], int] = {}
        for listener in tcp:
            name = f"{listener.address}:{listener.port}"
            for key, value in listener.tls.stats.items():
                kind, _, detail = key.partition(".")
                if kind == "alpn":
                    total_ok += value
                    alpn.add_metric([name, detail], value)
                elif kind == "sni":
                    sel.add_metric([name, detail], value)
                elif kind == "handshake_failed":
                    reason = _TLS_REASONS.get(detail, "handshake")
                    failures[(name, reason)] = failures.get((name, reason), 0) + value
        for quic in server.listeners:  # QUIC: counted in quic_connection.py, ALPN is always h3
            name = f"{quic.address}:{quic.port}"
            total_ok += quic.stats["handshake_success"]
            alpn.add_metric([name, "h3"], quic.stats["handshake_success"])
            if quic.stats["handshake_failure"]:
                failures[(name, "handshake")] = failures.get((name, "handshake"), 0) + quic.stats["handshake_failure"]
        for (name, reason), value in failures.items():
            fail.add_metric([name, reason], value)
        ok.add_metric([], total_ok)
        yield from (ok, fail, sel, alpn)
        yield from _certificate_expiry(server.listeners)

    @staticmethod
    def _backends(server: Any) -> Iterator[Metric]:
        healthy = GaugeMetricFamily("spooky_backend_healthy", "Backend available for traffic (1/0)",
                                    labels=["upstream", "backend"])
        now = _now()
        for pool in server.generation.pools.values():
            for backend in pool.backends:
                healthy.add_metric([backend.pool, backend.id], 1.0 if backend.state.available(now) else 0.0)
        yield healthy


#: (protocol, reason) label -> the listener ``stats`` key counting it (QUIC or TCP listener)
_PROTOCOL_ERRORS = {
    ("h3", "malformed_request"): "malformed_requests",
    ("h3", "excessive_load"): "excessive_load",
    ("h3", "control_stream_overflow"): "control_stream_overflow",
    ("h2", "protocol_error"): "h2_protocol_errors",
    ("h2", "rapid_reset"): "h2_rapid_reset",
}


def _protocol_errors(quic: list[Any], tcp: list[Any]) -> Metric:
    """``spooky_protocol_errors_total{protocol,reason}`` (not in the spec; added with the
    abuse suite): streams reset or connections closed by a protocol rule or abuse guard
    without a response. h3 ``malformed_request`` (H3_MESSAGE_ERROR) and ``excessive_load``
    (H3_EXCESSIVE_LOAD: oversized HEADERS frame / field section) are per stream,
    ``control_stream_overflow`` (a SETTINGS/MAX_PUSH_ID frame too large to buffer) per connection; h2
    ``protocol_error`` and ``rapid_reset`` (GOAWAY ENHANCE_YOUR_CALM) per connection."""
    family = CounterMetricFamily("spooky_protocol_errors", "Streams/connections closed by a protocol rule or abuse guard",
                                 labels=["protocol", "reason"])
    for (protocol, reason), key in _PROTOCOL_ERRORS.items():
        listeners = quic if protocol == "h3" else tcp
        family.add_metric([protocol, reason], sum(listener.stats[key] for listener in listeners))
    return family


def _certificate_expiry(quic_listeners: list[Any]) -> Iterator[Metric]:
    """``not_after`` and days remaining of every listener certificate now in use (after a
    certificate reload: the new ones); ``server_name`` is ``default`` for ``cert``/``key``."""
    not_after = GaugeMetricFamily("spooky_downstream_tls_certificate_not_after_seconds",
                                  "Listener certificate notAfter (Unix seconds)", labels=["listener", "server_name"])
    days = GaugeMetricFamily("spooky_downstream_tls_certificate_days_remaining",
                             "Days until the listener certificate expires (negative: expired)", labels=["listener", "server_name"])
    now = time.time()
    for quic in quic_listeners:
        name = f"{quic.address}:{quic.port}"
        for identity in quic.identities.all():
            expires = identity.certificate.not_valid_after_utc.timestamp()
            labels = [name, identity.server_name or "default"]
            not_after.add_metric(labels, expires)
            days.add_metric(labels, round((expires - now) / 86400, 3))
    yield from (not_after, days)


def _now() -> float:
    import trio

    try:
        return trio.current_time()
    except RuntimeError:  # scraped outside Trio (tests calling render() directly)
        return float("inf")


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


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


#: gauges whose per-worker values add up; ``spooky_brownout_active`` takes the max, every
#: other gauge the min (config generation, backend health, certificate expiry: a worker
#: lagging behind shows)
_SUMMED_GAUGES = frozenset({"spooky_active_connections", "spooky_inflight_requests", "spooky_adaptive_admission_limit"})
_MAX_GAUGES = frozenset({"spooky_brownout_active"})


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
