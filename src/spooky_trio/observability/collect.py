"""The scrape-time collector: values the serving process's components keep anyway
(listener ``stats`` counters, TLS ``stats``, backend state, in-flight activity, the
generation number), read when Prometheus scrapes, so the hot datagram path pays nothing.

What it reads is :class:`ServingView`, a read-only structural view: the serving layer's
``Server`` satisfies it, and nothing here imports it (observability sits below).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence, Sized
from typing import Protocol

from cryptography import x509
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from spooky_trio.config import AdaptiveAdmissionConfig, Config

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




class _Identity(Protocol):
    @property
    def server_name(self) -> str | None: ...
    @property
    def certificate(self) -> x509.Certificate: ...


class _Identities(Protocol):
    def all(self) -> Sequence[_Identity]: ...


class QuicListenerView(Protocol):
    @property
    def address(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def stats(self) -> Mapping[str, int]: ...
    @property
    def connections(self) -> Sized: ...
    @property
    def identities(self) -> _Identities: ...
    @property
    def steering_mode(self) -> str: ...


class _TlsStats(Protocol):
    @property
    def stats(self) -> Mapping[str, int]: ...


class TcpListenerView(Protocol):
    @property
    def address(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def stats(self) -> Mapping[str, int]: ...
    @property
    def open_connections(self) -> int: ...
    @property
    def tls(self) -> _TlsStats: ...


class _BackendState(Protocol):
    def available(self, now: float) -> bool: ...


class _Backend(Protocol):
    @property
    def pool(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def state(self) -> _BackendState: ...


class _Pool(Protocol):
    @property
    def backends(self) -> Sequence[_Backend]: ...


class GenerationView(Protocol):
    @property
    def number(self) -> int: ...
    @property
    def config(self) -> Config: ...
    @property
    def pools(self) -> Mapping[str, _Pool]: ...


class _Admission(Protocol):
    def limit(self, config: AdaptiveAdmissionConfig) -> int: ...


class _Brownout(Protocol):
    @property
    def active(self) -> bool: ...


class _Resilience(Protocol):
    @property
    def admission(self) -> _Admission: ...
    @property
    def brownout(self) -> _Brownout: ...


class _State(Protocol):
    @property
    def resilience(self) -> _Resilience: ...


class _Activity(Protocol):
    @property
    def count(self) -> int: ...


class ServingView(Protocol):
    """What the collector reads of a serving process (read only)."""

    @property
    def listeners(self) -> Sequence[QuicListenerView]: ...

    @property
    def bootstrap_listeners(self) -> Sequence[TcpListenerView]: ...

    @property
    def activity(self) -> _Activity: ...

    @property
    def generation(self) -> GenerationView: ...

    @property
    def state(self) -> _State: ...


class ServerCollector(Collector):
    """Reads counters and gauges that the server's components keep anyway (see module doc)."""

    def __init__(self, view: ServingView) -> None:
        self._view = view

    def describe(self) -> list[Metric]:
        return []  # not described up front: collected only at scrape time

    def collect(self) -> Iterator[Metric]:
        server = self._view
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
        yield from _steering(quic)
        yield _gauge("spooky_inflight_requests", "Requests in flight", server.activity.count)
        yield _gauge("spooky_config_generation", "Number of the serving config generation", server.generation.number)
        yield from self._tls(server, tcp)
        yield from self._backends(server)
        yield from self._overload(server)

    @staticmethod
    def _overload(server: ServingView) -> Iterator[Metric]:
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
    def _tls(server: ServingView, tcp: list[TcpListenerView]) -> Iterator[Metric]:
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
    def _backends(server: ServingView) -> Iterator[Metric]:
        healthy = GaugeMetricFamily("spooky_backend_healthy", "Backend available for traffic (1/0)",
                                    labels=["upstream", "backend"])
        # (not in the spec; added with discovery) a pool's current set, whatever its origin
        size = GaugeMetricFamily("spooky_upstream_backends", "Backends of a pool now (config, discovery and admin API)",
                                 labels=["upstream"])
        now = _now()
        for name, pool in server.generation.pools.items():
            size.add_metric([name], len(pool.backends))
            for backend in pool.backends:
                healthy.add_metric([backend.pool, backend.id], 1.0 if backend.state.available(now) else 0.0)
        yield healthy
        yield size


#: (protocol, reason) label -> the listener ``stats`` key counting it (QUIC or TCP listener)
_PROTOCOL_ERRORS = {
    ("h3", "malformed_request"): "malformed_requests",
    ("h3", "excessive_load"): "excessive_load",
    ("h3", "control_stream_overflow"): "control_stream_overflow",
    ("h2", "malformed_request"): "h2_malformed_streams",
    ("h2", "protocol_error"): "h2_protocol_errors",
    ("h2", "rapid_reset"): "h2_rapid_reset",
}


def _protocol_errors(quic: list[QuicListenerView], tcp: list[TcpListenerView]) -> Metric:
    """``spooky_protocol_errors_total{protocol,reason}`` (not in the spec; added with the
    abuse suite): streams reset or connections closed by a protocol rule or abuse guard
    without a response. h3 ``malformed_request`` (H3_MESSAGE_ERROR) and ``excessive_load``
    (H3_EXCESSIVE_LOAD: oversized HEADERS frame / field section) are per stream,
    ``control_stream_overflow`` (a SETTINGS/MAX_PUSH_ID frame too large to buffer) per connection; h2
    ``malformed_request`` (RST_STREAM PROTOCOL_ERROR: a malformed head or trailers) per stream,
    ``protocol_error`` and ``rapid_reset`` (GOAWAY ENHANCE_YOUR_CALM) per connection."""
    family = CounterMetricFamily("spooky_protocol_errors", "Streams/connections closed by a protocol rule or abuse guard",
                                 labels=["protocol", "reason"])
    for (protocol, reason), key in _PROTOCOL_ERRORS.items():
        listeners = quic if protocol == "h3" else tcp
        family.add_metric([protocol, reason], sum(listener.stats[key] for listener in listeners))
    return family


#: spooky_quic_steering_packets_total{path}: the listener stats of worker steering
_STEERING_PATHS = ("steered", "handed_over", "handover_received", "handover_dropped")


def _steering(quic: list[QuicListenerView]) -> Iterator[Metric]:
    """Worker steering (ingress/steering.py, docs/fleet.md): ``steered`` datagrams of a
    connection that reached its owner directly from an address other than its first (the
    kernel program, or the 4-tuple hash by chance), ``handed_over`` to the owner by another
    worker, ``handover_received`` from another worker, ``handover_dropped`` (owner gone or
    its inbox full); and ``spooky_quic_steering_mode{listener,mode}`` = 1 for the mode in
    use (``kernel``, ``handover``, ``off`` with one process)."""
    packets = CounterMetricFamily("spooky_quic_steering_packets", "QUIC datagrams by how they reached their worker",
                                  labels=["path"])
    for path in _STEERING_PATHS:
        packets.add_metric([path], sum(listener.stats.get(path, 0) for listener in quic))
    mode = GaugeMetricFamily("spooky_quic_steering_mode", "Worker steering mode of each QUIC listener (1)",
                             labels=["listener", "mode"])
    for listener in quic:
        mode.add_metric([f"{listener.address}:{listener.port}", listener.steering_mode], 1)
    yield from (packets, mode)


def _certificate_expiry(quic_listeners: Sequence[QuicListenerView]) -> Iterator[Metric]:
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
