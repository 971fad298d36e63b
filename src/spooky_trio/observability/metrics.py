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

import collections
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from spooky_trio.observability.collect import ServerCollector, ServingView
from spooky_trio.observability.discovery_metrics import DiscoveryCollector, DiscoveryView
from spooky_trio.observability.ratelimit_metrics import RateLimitCollector, RateLimitView
from spooky_trio.observability.traffic_metrics import TrafficCollector, TrafficCounters
from spooky_trio.observability.upstream_metrics import UpstreamH3Collector, UpstreamProtocolCollector, UpstreamView

#: upstream latency buckets, milliseconds
LATENCY_BUCKETS_MS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)

#: rate-limit store latency buckets, milliseconds (a healthy store answers in about 1 ms)
STORE_LATENCY_BUCKETS_MS = (0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250)

#: statuses the pipeline answers itself that count as request validation failures / policy denials
_VALIDATION_STATUSES = frozenset({400})
_POLICY_STATUSES = frozenset({403, 405, 408, 413, 431})

def status_class(status: int | None) -> str:
    """``2xx``..``5xx``, or ``none`` when no response status exists (transport failure)."""
    return f"{status // 100}xx" if status is not None and 100 <= status < 600 else "none"


class _ReasonCollector(Collector):
    """``spooky_requests_by_reason_total{reason,status_class}`` from :attr:`Metrics.reasons`."""

    def __init__(self, reasons: collections.Counter[tuple[str, int | None]]) -> None:
        self._reasons = reasons

    def describe(self) -> list[Metric]:
        return []  # collected only at scrape time

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("spooky_requests_by_reason", "Requests by the reason that decided the answer",
                                     labels=["reason", "status_class"])
        totals: collections.Counter[tuple[str, str]] = collections.Counter()
        for (reason, status), count in list(self._reasons.items()):
            totals[(reason, status_class(status))] += count
        for (reason, cls), count in sorted(totals.items()):
            family.add_metric([reason, cls], count)
        yield family


class _AuthDecisionCollector(Collector):
    """``spooky_auth_decisions_total{upstream,step,result}`` from :attr:`Metrics.auth_decisions`."""

    def __init__(self, decisions: collections.Counter[tuple[str, str, str]]) -> None:
        self._decisions = decisions

    def describe(self) -> list[Metric]:
        return []  # collected only at scrape time

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("spooky_auth_decisions", "Authentication steps by pool, step and result (allowed, fail_open or the refusal reason)",
                                     labels=["upstream", "step", "result"])
        for (pool, step, result), count in sorted(list(self._decisions.items())):
            family.add_metric([pool, step, result], count)
        yield family


class Metrics:
    """Every event metric, defined once in ``self.registry`` (never the global registry)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        #: (pool, backend, status class, outcome) -> label children (see backend_exchange)
        self._exchange_children: dict[tuple[str, str, str, str], tuple[Counter, Counter, Histogram]] = {}
        self.requests = Counter("spooky_requests", "Requests handled by the pipeline", registry=r)
        self.requests_success = Counter("spooky_requests_success", "Requests answered below 400", registry=r)
        self.requests_failure = Counter("spooky_requests_failure", "Requests answered 400+ or reset", registry=r)
        # (not in the spec; added with the filter chain) every request once, by the step that
        # decided its answer: ``ok`` for a backend's answer, else the proxy's reason
        # counted in a plain dict and exposed at scrape time (a labelled Counter's inc takes a
        # lock and two checks: measurable once per request)
        #: (reason, status) -> requests answered so (``spooky_requests_by_reason_total``)
        self.reasons: collections.Counter[tuple[str, int | None]] = collections.Counter()
        r.register(_ReasonCollector(self.reasons))
        #: (pool, protocol) -> backend exchanges (``spooky_upstream_protocol_requests_total``)
        self.upstream_protocols: collections.Counter[tuple[str, str]] = collections.Counter()
        r.register(UpstreamProtocolCollector(self.upstream_protocols))
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
        # scoped rate limits (Spooky's names; per-rule decisions and store state are read at
        # scrape time: observability/ratelimit_metrics.py)
        self.rate_limited = Counter("spooky_request_rate_limited", "Requests answered 429 by a scoped rate limit", registry=r)
        self.route_rate_limited = Counter(
            "spooky_route_rate_limited", "Requests answered 429 by a scoped rate limit, by route (pool)", ["route"], registry=r
        )
        self.rate_limit_store_errors = Counter(
            "spooky_rate_limit_store_errors", "Shared rate-limit store checks that failed, by kind (timeout, error)",
            ["kind"], registry=r,
        )
        self.rate_limit_store_latency = Histogram(
            "spooky_rate_limit_store_latency_ms", "Time of a successful shared rate-limit store check (ms)",
            buckets=STORE_LATENCY_BUCKETS_MS, registry=r,
        )
        # (not in the spec; added with discovery) answers that changed a pool's backends and
        # failed or refused answers, by pool and source (file, dns_srv, etcd; admin for the
        # admin API); set sizes and last good answers are read at scrape time
        # (observability/discovery_metrics.py)
        self.discovery_updates = Counter(
            "spooky_discovery_updates", "Discovery answers (and admin API calls) that changed a pool's backends",
            ["upstream", "source"], registry=r,
        )
        self.discovery_errors = Counter(
            "spooky_discovery_errors", "Discovery answers that failed, were empty or were refused (the last good set stays)",
            ["upstream", "source", "reason"], registry=r,
        )
        #: reload transactions (file re-read, SIGHUP, apply, rollback, promote) by result:
        #: success, invalid (the document was rejected), failed (build, bind or write failed)
        self.config_reloads = Counter("spooky_config_reload", "Configuration reloads by result", ["result"], registry=r)
        for result in ("success", "invalid", "failed"):
            self.config_reloads.labels(result=result)
        # observability.tracing (observability/tracing.py, trace_export.py): extensions
        self.tracing_spans_exported = Counter("spooky_tracing_spans_exported", "Spans delivered to the OTLP collector", registry=r)
        self.tracing_spans_dropped = Counter(
            "spooky_tracing_spans_dropped", "Spans dropped before export, by reason", ["reason"], registry=r
        )
        self.tracing_exports = Counter("spooky_tracing_exports", "OTLP export calls, by result", ["result"], registry=r)
        #: reason -> child, resolved once (a drop is counted per span while the queue is full)
        self._tracing_dropped = {
            reason: self.tracing_spans_dropped.labels(reason) for reason in ("queue_full", "export_failed", "no_exporter")
        }
        for result in ("success", "failure", "timeout"):
            self.tracing_exports.labels(result)
        # authentication (auth/, proxy/auth.py; docs/auth.md). Decisions happen once per
        # request of an authenticated pool: a plain dict exposed at scrape time, like reasons
        #: (pool, step, result) -> requests (``spooky_auth_decisions_total``)
        self.auth_decisions: collections.Counter[tuple[str, str, str]] = collections.Counter()
        r.register(_AuthDecisionCollector(self.auth_decisions))
        self.auth_calls = Counter(
            "spooky_auth_outbound_calls", "Outbound calls of the auth layer (jwks, oidc_discovery, oidc_introspection, "
            "external_http) by result (2xx..5xx for an answer, else timeout, connect, tls, too_large, ...)", ["kind", "result"], registry=r,
        )
        self.auth_call_latency = Histogram(
            "spooky_auth_outbound_latency_ms", "Duration of the auth layer's outbound calls (ms)", ["kind"],
            buckets=LATENCY_BUCKETS_MS, registry=r,
        )
        self.jwks_stale = Counter(
            "spooky_auth_jwks_stale_served", "Tokens verified with JWKS keys kept past jwks_cache_secs because refreshes failed",
            registry=r,
        )
        # traffic policy (route matchers, splits, mirror copies, faults: docs/traffic-policy.md),
        # counted in plain dicts and exposed at scrape time (observability/traffic_metrics.py)
        self.traffic = TrafficCounters()
        r.register(TrafficCollector(self.traffic))
        # plugins (proxy/plugins.py; docs/plugins.md)
        self.plugin_errors = Counter(
            "spooky_plugin_errors", "Plugin failures by plugin and kind (exception, timeout, invalid: a request answered 500; "
            "background: its task failed)", ["plugin", "kind"], registry=r,
        )
        self.plugin_loop_stalls = Counter(
            "spooky_plugin_event_loop_stalls", "Plugin hook or background-task steps that held the event loop 50 ms or more "
            "without yielding",
            ["plugin"], registry=r,
        )

    # -- event hooks --

    def request_done(self, status: int | None, reason: str) -> None:
        """One request finished with ``status`` (None: reset without an answer), decided by
        ``reason`` (the access log's field)."""
        self.requests.inc()
        if status is not None and status < 400:
            self.requests_success.inc()
        else:
            self.requests_failure.inc()
        self.reasons[(reason, status)] += 1

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

    def upstream_protocol(self, pool: str, protocol: str) -> None:
        """An exchange with a backend of ``pool`` got its response head over ``protocol``."""
        self.upstream_protocols[(pool, protocol)] += 1

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

    def request_rate_limited(self, route: str) -> None:
        """A scoped rate limit answered 429 for a request routed to ``route``."""
        self.rate_limited.inc()
        self.route_rate_limited.labels(route).inc()

    def rate_limit_store_check(self, latency_ms: float | None, error: str | None) -> None:
        """One shared-store check ended: its latency, or the error kind (``timeout``, ``error``)."""
        if error is not None:
            self.rate_limit_store_errors.labels(error).inc()
        elif latency_ms is not None:
            self.rate_limit_store_latency.observe(latency_ms)

    def tracing_dropped(self, reason: str, spans: int) -> None:
        """``spans`` finished spans were not exported: ``queue_full`` (the bounded queue was
        full when they ended), ``export_failed`` (their batch failed or timed out),
        ``no_exporter`` (no usable exporter: see the log)."""
        self._tracing_dropped[reason].inc(spans)

    def tracing_export(self, result: str, spans: int) -> None:
        """One export call of ``spans`` spans ended: ``success``, ``failure`` or ``timeout``."""
        self.tracing_exports.labels(result).inc()
        if result == "success":
            self.tracing_spans_exported.inc(spans)

    def auth_decision(self, pool: str, step: str, result: str) -> None:
        """``step`` (api_key, jwt, external_http, oidc) of ``pool`` decided ``result``."""
        self.auth_decisions[(pool, step, result)] += 1

    def auth_call(self, kind: str, result: str, seconds: float) -> None:
        """One outbound call of the auth layer ended (``result`` ``ok`` or why not)."""
        self.auth_calls.labels(kind, result).inc()
        self.auth_call_latency.labels(kind).observe(seconds * 1000)

    def jwks_stale_served(self) -> None:
        self.jwks_stale.inc()

    def discovery_update(self, pool: str, source: str) -> None:
        """An answer (or an admin API call) changed ``pool``'s backends."""
        self.discovery_updates.labels(pool, source).inc()

    def discovery_error(self, pool: str, source: str, reason: str) -> None:
        """A discovery answer failed, was empty or was (partly) refused."""
        self.discovery_errors.labels(pool, source, reason).inc()

    def plugin_error(self, plugin: str, kind: str) -> None:
        """Plugin ``plugin`` failed: ``exception``, ``timeout``, ``invalid`` or ``background``."""
        self.plugin_errors.labels(plugin, kind).inc()

    def plugin_loop_stall(self, plugin: str) -> None:
        """A hook or background-task step of ``plugin`` held the event loop past the stall threshold."""
        self.plugin_loop_stalls.labels(plugin).inc()

    def render(self) -> bytes:
        """The text exposition of the registry."""
        return generate_latest(self.registry)

    def attach(self, view: ServingView) -> None:
        """Register the scrape-time collector reading ``view`` (the serving process's
        listeners, activity, generation and state: ``observability/collect.py``)."""
        self.registry.register(ServerCollector(view))

    def attach_upstream(self, view: UpstreamView) -> None:
        """Register the scrape-time collector of the HTTP/3 pool and the alt-svc marks
        (``view``: the Server's UpstreamPool)."""
        self.registry.register(UpstreamH3Collector(view))

    def attach_rate_limits(self, view: RateLimitView) -> None:
        """Register the scrape-time collector of the scoped rate limits (``view``: the
        StateStore's ``rate_limits``)."""
        self.registry.register(RateLimitCollector(view))

    def attach_discovery(self, view: DiscoveryView) -> None:
        """Register the scrape-time gauges of discovery (``view``: the StateStore's ``discovery``)."""
        self.registry.register(DiscoveryCollector(view))
