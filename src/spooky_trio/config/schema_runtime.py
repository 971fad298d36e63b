"""Schema of the tuning sections: ``performance``, ``resilience``, ``observability``, ``security``.

Every class is a frozen attrs class whose field names are exactly the YAML keys and whose
defaults are Spooky's (``docs/configuration.md`` documents each key). Range and cross-field
rules live in :mod:`spooky_trio.config.validate_runtime`; these classes only describe shape,
defaults and markers (:mod:`spooky_trio.config.markers`).
Durations are integer milliseconds unless the key name says otherwise.
"""

from __future__ import annotations

from typing import Literal

import attrs

from spooky_trio.config.markers import COMPAT, EXT
from spooky_trio.config.normalize import pool_names, upper_list
from spooky_trio.config.schema_ratelimit import RateLimitStoreConfig, ScopedRateLimitConfig

_MIB = 1024 * 1024


@attrs.frozen(kw_only=True)
class PerformanceConfig:
    """``performance``: workers, inflight limits, timeouts, buffers and connection-flood guards."""

    worker_threads: int = 1
    control_plane_threads: int = attrs.field(default=2, metadata=COMPAT)
    reuseport: bool = True
    pin_workers: bool = False
    packet_shards_per_worker: int = attrs.field(default=1, metadata=COMPAT)
    packet_shard_queue_capacity: int = attrs.field(default=2048, metadata=COMPAT)
    packet_shard_queue_max_bytes: int = attrs.field(default=64 * _MIB, metadata=COMPAT)
    global_inflight_limit: int = 4096
    per_upstream_inflight_limit: int = 1024
    per_backend_inflight_limit: int = 64
    inflight_acquire_wait_ms: int = 0
    backend_connect_timeout_ms: int = 500
    backend_timeout_ms: int = 2000
    backend_body_idle_timeout_ms: int = 2000
    backend_body_total_timeout_ms: int = 30000
    backend_total_request_timeout_ms: int = 35000
    client_body_idle_timeout_ms: int = 10000
    shutdown_drain_timeout_ms: int = 5000
    udp_recv_buffer_bytes: int = 8 * _MIB
    udp_send_buffer_bytes: int = 8 * _MIB
    h2_pool_max_idle_per_backend: int = 256
    h2_pool_idle_timeout_ms: int = 90000
    #: (ext) QUIC connections per HTTP/3 backend; more requests wait for a stream
    h3_pool_max_connections_per_backend: int = attrs.field(default=2, metadata=EXT)
    #: (ext) requests in flight per HTTP/3 connection (never above the peer's MAX_STREAMS)
    h3_pool_max_streams_per_connection: int = attrs.field(default=100, metadata=EXT)
    #: (ext) an idle HTTP/3 connection is closed after this (also its QUIC idle timeout)
    h3_pool_idle_timeout_ms: int = attrs.field(default=90000, metadata=EXT)
    backend_dns_refresh_enabled: bool = False
    backend_dns_refresh_interval_ms: int = 30000
    #: (ext) resolvers as ``ip``, ``ip:port`` or ``[ipv6]:port``; empty means the system ones.
    backend_dns_nameservers: list[str] = attrs.field(factory=list, metadata=EXT)
    new_connections_per_sec: int = 2000
    new_connections_burst: int = 500
    max_active_connections: int = 20000
    quic_max_idle_timeout_ms: int = 5000
    quic_initial_max_data: int = 10_000_000
    quic_initial_max_stream_data: int = 1_000_000
    quic_initial_max_streams_bidi: int = 100
    quic_initial_max_streams_uni: int = 100
    max_request_body_bytes: int = 1_000_000
    max_response_body_bytes: int = 100 * _MIB
    request_buffer_global_cap_bytes: int = attrs.field(default=64 * _MIB, metadata=COMPAT)
    unknown_length_response_prebuffer_bytes: int = attrs.field(default=2 * _MIB, metadata=COMPAT)
    #: worker steering of QUIC packets (ingress/steering.py, docs/fleet.md): ``auto`` uses
    #: the kernel program where it attaches, else hands datagrams over; ``handover`` never
    #: attaches it
    quic_worker_steering: Literal["auto", "handover"] = attrs.field(default="auto", metadata=EXT)


@attrs.frozen(kw_only=True)
class AdaptiveAdmissionConfig:
    """Latency-driven global limit moving between ``min_limit`` and ``max_limit``.

    ``max_limit`` is ``None`` only in the raw schema; the loader replaces an omitted value
    with ``max(performance.global_inflight_limit, min_limit)`` (Spooky's effective ceiling),
    so a loaded config always has an int here. The global limit still bounds admission.
    """

    enabled: bool = True
    min_limit: int = 64
    max_limit: int | None = None
    decrease_step: int = 16
    increase_step: int = 16
    high_latency_ms: int = 500


@attrs.frozen(kw_only=True)
class CircuitBreakerConfig:
    """Per-backend breaker: opens after ``failure_threshold`` consecutive failures."""

    enabled: bool = True
    failure_threshold: int = 3
    open_ms: int = 30000
    half_open_max_probes: int = 1


@attrs.frozen(kw_only=True)
class RetryBudgetConfig:
    """Retries allowed per 100 primary requests, globally and per pool.

    ``per_route_ratio_percent`` is keyed by pool name (exact; spooky-head.md section 4).
    """

    enabled: bool = True
    ratio_percent: int = 10
    per_route_ratio_percent: dict[str, int] = attrs.field(factory=dict)


def _default_safe_methods() -> list[str]:
    return ["GET", "HEAD"]


@attrs.frozen(kw_only=True)
class HedgingConfig:
    """Send a second attempt after ``delay_ms`` for safe methods.

    ``route_allowlist``: pool names (trimmed, blanks dropped); empty means every pool.
    """

    enabled: bool = False
    delay_ms: int = 100
    safe_methods: list[str] = attrs.field(factory=_default_safe_methods, converter=upper_list)
    route_allowlist: list[str] = attrs.field(factory=list, converter=pool_names)


@attrs.frozen(kw_only=True)
class BrownoutConfig:
    """Shed non-core pools with 503 while inflight is above the trigger percentage.

    ``core_routes``: pool names (trimmed, blanks dropped) that are never shed.
    """

    enabled: bool = True
    trigger_inflight_percent: int = 90
    recover_inflight_percent: int = 60
    core_routes: list[str] = attrs.field(factory=list, converter=pool_names)


@attrs.frozen(kw_only=True)
class RouteQueueConfig:
    """Queue caps: per pool name (``caps``, exact), ``default_cap`` for other pools, and global."""

    default_cap: int = 512
    global_cap: int = 2048
    shed_retry_after_seconds: int = 1
    caps: dict[str, int] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class ProtocolConfig:
    """Request-level protocol policy (0-RTT, header limits, CONNECT, method/path filters)."""

    allow_0rtt: bool = False
    early_data_safe_methods: list[str] = attrs.field(factory=_default_safe_methods, converter=upper_list)
    max_headers_count: int = 128
    max_headers_bytes: int = 16384
    enforce_authority_host_match: bool = True
    allow_connect: bool = False
    connect_allowed_ports: list[int] = attrs.field(factory=list)
    connect_allowed_authorities: list[str] = attrs.field(factory=list)
    #: empty means every method is allowed
    allowed_methods: list[str] = attrs.field(factory=list, converter=upper_list)
    #: requests whose path starts with one of these get 403
    denied_path_prefixes: list[str] = attrs.field(factory=list)
    # -- ours (extensions): the path every check sees (http/paths.py, docs/security.md) --
    #: resolve ``.``/``..``, decode percent-escaped unreserved characters
    normalize_path: bool = attrs.field(default=True, metadata=EXT)
    #: collapse runs of ``/``
    merge_slashes: bool = attrs.field(default=True, metadata=EXT)
    #: ``%2F``/``%5C``: ``keep`` (data), ``reject`` (400) or ``unescape`` (decoded)
    escaped_slashes: Literal["keep", "reject", "unescape"] = attrs.field(default="keep", metadata=EXT)
    #: forward the normalized path (true) or the client's own (false) to the backend
    forward_normalized_path: bool = attrs.field(default=True, metadata=EXT)


@attrs.frozen(kw_only=True)
class WatchdogConfig:
    """Self-health watchdog; ``restart_command`` is an argv list run without a shell.

    Spooky's ``restart_hook`` (a shell string) is deliberately not part of the schema and is
    rejected by the loader with a dedicated message.
    """

    enabled: bool = False
    check_interval_ms: int = 1000
    poll_stall_timeout_ms: int = 5000
    timeout_error_rate_percent: int = 60
    min_requests_per_window: int = 20
    overload_inflight_percent: int = 95
    unhealthy_consecutive_windows: int = 3
    drain_grace_ms: int = 8000
    restart_cooldown_ms: int = 120000
    restart_command: list[str] = attrs.field(factory=list)


@attrs.frozen(kw_only=True)
class ResilienceConfig:
    """``resilience``: admission, breaker, retries, hedging, brownout, queues, protocol, watchdog,
    rate limits."""

    adaptive_admission: AdaptiveAdmissionConfig = attrs.field(factory=AdaptiveAdmissionConfig)
    circuit_breaker: CircuitBreakerConfig = attrs.field(factory=CircuitBreakerConfig)
    retry_budget: RetryBudgetConfig = attrs.field(factory=RetryBudgetConfig)
    hedging: HedgingConfig = attrs.field(factory=HedgingConfig)
    brownout: BrownoutConfig = attrs.field(factory=BrownoutConfig)
    route_queue: RouteQueueConfig = attrs.field(factory=RouteQueueConfig)
    protocol: ProtocolConfig = attrs.field(factory=ProtocolConfig)
    watchdog: WatchdogConfig = attrs.field(factory=WatchdogConfig)
    #: Spooky's rules (config/schema_ratelimit.py, docs/rate-limiting.md)
    scoped_rate_limits: list[ScopedRateLimitConfig] = attrs.field(factory=list)
    #: (ext) where ``store: redis`` rules keep their buckets
    rate_limit_store: RateLimitStoreConfig = attrs.field(factory=RateLimitStoreConfig, metadata=EXT)
    #: (ext) ``RateLimit`` / ``RateLimit-Policy`` on every answer, not only on 429s
    rate_limit_headers: bool = attrs.field(default=False, metadata=EXT)


@attrs.frozen(kw_only=True)
class MetricsConfig:
    """Prometheus endpoint (``required``: failing to bind it is fatal instead of logged)."""

    enabled: bool = False
    required: bool = False
    address: str = "127.0.0.1"
    port: int = 9901
    path: str = "/metrics"
    max_connections: int = 512
    connection_timeout_ms: int = 30000


@attrs.frozen(kw_only=True)
class ControlApiConfig:
    """Control API; ``auth_token`` (bearer) is mandatory when ``address`` is not loopback."""

    enabled: bool = False
    required: bool = False
    address: str = "127.0.0.1"
    port: int = 9902
    health_path: str = "/health"
    ready_path: str = "/ready"
    runtime_path: str = "/admin/runtime"
    restart_path: str = "/admin/runtime/restart"
    reload_path: str = "/admin/runtime/reload"
    reload_certs_path: str = "/admin/runtime/reload-certs"
    auth_token: str | None = None
    max_connections: int = 256
    connection_timeout_ms: int = 30000


@attrs.frozen(kw_only=True)
class RoutingDecisionConfig:
    """``observability.routing``: log (and optionally expose) each route decision."""

    enabled: bool = False
    include_reason: bool = True
    expose_header: bool = False
    header_name: str = "x-spooky-route-decision"


@attrs.frozen(kw_only=True)
class TracingConfig:
    """Tracing export; ``sample_ratio`` is 0..1."""

    enabled: bool = False
    service_name: str = "spooky"
    otlp_endpoint: str | None = None
    sample_ratio: float = 1.0


@attrs.frozen(kw_only=True)
class ObservabilityConfig:
    """``observability``: metrics, control API, routing transparency, tracing."""

    metrics: MetricsConfig = attrs.field(factory=MetricsConfig)
    control_api: ControlApiConfig = attrs.field(factory=ControlApiConfig)
    routing: RoutingDecisionConfig = attrs.field(factory=RoutingDecisionConfig)
    tracing: TracingConfig = attrs.field(factory=TracingConfig)


@attrs.frozen(kw_only=True)
class PrivilegesConfig:
    """Drop to ``user``/``group`` after binding when started as root."""

    enabled: bool = True
    user: str = "nobody"
    group: str = "nogroup"


@attrs.frozen(kw_only=True)
class SecurityConfig:
    """``security``."""

    privileges: PrivilegesConfig = attrs.field(factory=PrivilegesConfig)
