"""Range and cross-field rules for ``performance``, ``resilience``, ``observability``, ``security``."""

from __future__ import annotations

from spooky_trio.config.address import is_loopback, is_token, parse_nameserver
from spooky_trio.config.checks import Problems
from spooky_trio.config.issues import KeyPath
from spooky_trio.config.schema import Config
from spooky_trio.config.schema_runtime import (
    ControlApiConfig,
    MetricsConfig,
    PerformanceConfig,
    ResilienceConfig,
)
from spooky_trio.config.validate_ratelimit import validate_rate_limits

#: HTTP/3 peers open three unidirectional streams (control, QPACK encoder, QPACK decoder).
MIN_UNI_STREAMS = 3

_PERF_POSITIVE = (
    "packet_shard_queue_capacity",
    "packet_shard_queue_max_bytes",
    "global_inflight_limit",
    "per_upstream_inflight_limit",
    "per_backend_inflight_limit",
    "backend_connect_timeout_ms",
    "backend_timeout_ms",
    "backend_body_idle_timeout_ms",
    "backend_body_total_timeout_ms",
    "backend_total_request_timeout_ms",
    "client_body_idle_timeout_ms",
    "udp_recv_buffer_bytes",
    "udp_send_buffer_bytes",
    "h2_pool_idle_timeout_ms",
    "h3_pool_max_connections_per_backend",
    "h3_pool_max_streams_per_connection",
    "h3_pool_idle_timeout_ms",
    "backend_dns_refresh_interval_ms",
    "new_connections_per_sec",
    "new_connections_burst",
    "max_active_connections",
    "quic_max_idle_timeout_ms",
    "quic_initial_max_data",
    "quic_initial_max_stream_data",
    "quic_initial_max_streams_bidi",
    "max_request_body_bytes",
    "max_response_body_bytes",
    "request_buffer_global_cap_bytes",
    "unknown_length_response_prebuffer_bytes",
)
_PERF_NON_NEGATIVE = ("inflight_acquire_wait_ms", "shutdown_drain_timeout_ms", "h2_pool_max_idle_per_backend")


def validate_runtime(out: Problems, config: Config) -> None:
    """Add every violation in the runtime sections of ``config`` to ``out``."""
    _performance(out, config.performance)
    _resilience(out, config.resilience, config.performance)
    validate_rate_limits(out, config.resilience)
    _observability(out, config)
    privileges = config.security.privileges
    if privileges.enabled:
        out.not_empty(("security", "privileges", "user"), privileges.user)
        out.not_empty(("security", "privileges", "group"), privileges.group)


def _performance(out: Problems, perf: PerformanceConfig) -> None:
    p: KeyPath = ("performance",)
    out.at_least(p + ("worker_threads",), perf.worker_threads, 1)
    out.at_least(p + ("control_plane_threads",), perf.control_plane_threads, 1)
    out.at_least(p + ("packet_shards_per_worker",), perf.packet_shards_per_worker, 1)
    for name in _PERF_POSITIVE:
        out.positive(p + (name,), getattr(perf, name))
    for name in _PERF_NON_NEGATIVE:
        out.at_least(p + (name,), getattr(perf, name), 0)
    if perf.quic_initial_max_streams_uni < MIN_UNI_STREAMS:
        out.add(
            p + ("quic_initial_max_streams_uni",),
            f"must be >= {MIN_UNI_STREAMS}: HTTP/3 clients open control and QPACK streams "
            f"(got {perf.quic_initial_max_streams_uni})",
        )
    if perf.worker_threads > 1 and not perf.reuseport:
        out.add(p + ("reuseport",), "must be true when worker_threads > 1", p + ("worker_threads",))
    # Spooky's cross-checks (spooky-head.md section 5): the timeout chain connect <=
    # response head <= body idle <= body total <= whole request, the QUIC windows, and the
    # buffer sizes against the body sizes. Its "max_request_body_bytes <=
    # quic_initial_max_stream_data" is only reported by --spooky-strict (config/portability.py):
    # we stream request bodies, so a larger body needs no larger window here.
    rules = (
        ("backend_connect_timeout_ms", "<=", "backend_timeout_ms"),
        ("backend_body_idle_timeout_ms", ">=", "backend_timeout_ms"),
        ("backend_body_idle_timeout_ms", "<=", "backend_body_total_timeout_ms"),
        ("backend_total_request_timeout_ms", ">=", "backend_body_total_timeout_ms"),
        ("quic_initial_max_stream_data", "<=", "quic_initial_max_data"),
        ("request_buffer_global_cap_bytes", ">=", "max_request_body_bytes"),
        ("unknown_length_response_prebuffer_bytes", "<=", "max_response_body_bytes"),
    )
    for left, op, right in rules:
        a, b = getattr(perf, left), getattr(perf, right)
        if (op == "<=" and a > b) or (op == ">=" and a < b):
            out.add(p + (left,), f"must be {op} {right} ({a} vs {b})", p + (right,))
    for index, server in enumerate(perf.backend_dns_nameservers):
        try:
            parse_nameserver(server)
        except ValueError as exc:
            out.add(p + ("backend_dns_nameservers", index), str(exc))


def _methods(out: Problems, path: KeyPath, methods: list[str]) -> None:
    for index, method in enumerate(methods):
        if not is_token(method):
            out.add(path + (index,), f"invalid method {method!r}")


def _pool_map(out: Problems, path: KeyPath, mapping: dict[str, int], low: int, high: int | None) -> None:
    """Values of a map keyed by pool name; the names are not checked (an unknown one is a
    warning: :mod:`spooky_trio.config.pool_keyed`)."""
    for name, value in mapping.items():
        if high is None:
            out.at_least(path + (name,), value, low)
        else:
            out.between(path + (name,), value, low, high)


def _resilience(out: Problems, res: ResilienceConfig, perf: PerformanceConfig) -> None:
    r: KeyPath = ("resilience",)
    aa, aa_path = res.adaptive_admission, r + ("adaptive_admission",)
    global_path = ("performance", "global_inflight_limit")
    out.positive(aa_path + ("min_limit",), aa.min_limit)
    out.at_least(aa_path + ("decrease_step",), aa.decrease_step, 1)
    out.at_least(aa_path + ("increase_step",), aa.increase_step, 1)
    # Spooky checks no range here: 0 means every sample with any latency lowers the limit
    out.at_least(aa_path + ("high_latency_ms",), aa.high_latency_ms, 0)
    limit = perf.global_inflight_limit
    # spooky-head.md section 5: max_limit is checked only when set (unset, the ceiling is
    # max(global_inflight_limit, min_limit), filled by the loader), whether or not enabled
    if aa.max_limit is not None and aa.max_limit <= 0:
        out.positive(aa_path + ("max_limit",), aa.max_limit)
    elif aa.max_limit is not None:
        if aa.max_limit < aa.min_limit:
            out.add(aa_path + ("max_limit",), f"must be >= min_limit ({aa.max_limit} vs {aa.min_limit})", aa_path + ("min_limit",))
        if aa.max_limit > limit:
            out.add(
                aa_path + ("max_limit",),
                f"must be <= performance.global_inflight_limit ({aa.max_limit} vs {limit})",
                global_path,
            )

    cb, cb_path = res.circuit_breaker, r + ("circuit_breaker",)
    out.at_least(cb_path + ("failure_threshold",), cb.failure_threshold, 1)
    out.positive(cb_path + ("open_ms",), cb.open_ms)
    out.at_least(cb_path + ("half_open_max_probes",), cb.half_open_max_probes, 1)

    rb, rb_path = res.retry_budget, r + ("retry_budget",)
    out.between(rb_path + ("ratio_percent",), rb.ratio_percent, 0, 100)
    _pool_map(out, rb_path + ("per_route_ratio_percent",), rb.per_route_ratio_percent, 0, 100)

    hd, hd_path = res.hedging, r + ("hedging",)
    if hd.enabled:
        out.positive(hd_path + ("delay_ms",), hd.delay_ms)
    else:
        out.at_least(hd_path + ("delay_ms",), hd.delay_ms, 0)
    _methods(out, hd_path + ("safe_methods",), hd.safe_methods)

    bo, bo_path = res.brownout, r + ("brownout",)
    out.between(bo_path + ("trigger_inflight_percent",), bo.trigger_inflight_percent, 1, 100)
    # 0: brownout turns off only when nothing is in flight (Spooky: <= 100 and < trigger)
    out.between(bo_path + ("recover_inflight_percent",), bo.recover_inflight_percent, 0, 100)
    if bo.recover_inflight_percent >= bo.trigger_inflight_percent:
        out.add(
            bo_path + ("recover_inflight_percent",),
            f"must be < trigger_inflight_percent ({bo.recover_inflight_percent} vs {bo.trigger_inflight_percent})",
            bo_path + ("trigger_inflight_percent",),
        )

    rq, rq_path = res.route_queue, r + ("route_queue",)
    out.positive(rq_path + ("default_cap",), rq.default_cap)
    out.positive(rq_path + ("global_cap",), rq.global_cap)
    out.at_least(rq_path + ("shed_retry_after_seconds",), rq.shed_retry_after_seconds, 0)
    _pool_map(out, rq_path + ("caps",), rq.caps, 1, None)

    pr, pr_path = res.protocol, r + ("protocol",)
    _methods(out, pr_path + ("early_data_safe_methods",), pr.early_data_safe_methods)
    _methods(out, pr_path + ("allowed_methods",), pr.allowed_methods)
    out.positive(pr_path + ("max_headers_count",), pr.max_headers_count)
    out.positive(pr_path + ("max_headers_bytes",), pr.max_headers_bytes)
    for index, port in enumerate(pr.connect_allowed_ports):
        out.port(pr_path + ("connect_allowed_ports", index), port)
    for index, authority in enumerate(pr.connect_allowed_authorities):
        out.not_empty(pr_path + ("connect_allowed_authorities", index), authority)
    for index, prefix in enumerate(pr.denied_path_prefixes):
        out.http_path(pr_path + ("denied_path_prefixes", index), prefix)

    wd, wd_path = res.watchdog, r + ("watchdog",)
    out.positive(wd_path + ("check_interval_ms",), wd.check_interval_ms)
    out.positive(wd_path + ("poll_stall_timeout_ms",), wd.poll_stall_timeout_ms)
    # Spooky: <= 100, 0 included (any window with enough requests is then unhealthy)
    out.between(wd_path + ("timeout_error_rate_percent",), wd.timeout_error_rate_percent, 0, 100)
    out.at_least(wd_path + ("min_requests_per_window",), wd.min_requests_per_window, 1)
    out.between(wd_path + ("overload_inflight_percent",), wd.overload_inflight_percent, 0, 100)
    out.at_least(wd_path + ("unhealthy_consecutive_windows",), wd.unhealthy_consecutive_windows, 1)
    out.at_least(wd_path + ("drain_grace_ms",), wd.drain_grace_ms, 0)
    out.at_least(wd_path + ("restart_cooldown_ms",), wd.restart_cooldown_ms, 0)
    if wd.restart_command and not wd.restart_command[0].strip():
        out.add(wd_path + ("restart_command", 0), "the program name must not be empty")


def _endpoint(out: Problems, path: KeyPath, cfg: MetricsConfig | ControlApiConfig) -> None:
    out.bind_address(path + ("address",), cfg.address, allow_localhost=True)
    out.port(path + ("port",), cfg.port)
    out.positive(path + ("max_connections",), cfg.max_connections)
    out.positive(path + ("connection_timeout_ms",), cfg.connection_timeout_ms)


def _observability(out: Problems, config: Config) -> None:
    # As Spooky, each block's values are checked only when it is enabled: a disabled
    # endpoint, decision header or tracer uses none of them (spooky-head.md section 6).
    obs, o = config.observability, ("observability",)
    metrics, m_path = obs.metrics, o + ("metrics",)
    if metrics.enabled:
        _endpoint(out, m_path, metrics)
        out.http_path(m_path + ("path",), metrics.path)

    api, a_path = obs.control_api, o + ("control_api",)
    if api.enabled:
        _endpoint(out, a_path, api)
        seen: dict[str, str] = {}
        for name in ("health_path", "ready_path", "runtime_path", "restart_path", "reload_path", "reload_certs_path"):
            value = getattr(api, name)
            out.http_path(a_path + (name,), value)
            if value in seen:
                out.add(a_path + (name,), f"same path as {seen[value]} ({value!r})")
            seen.setdefault(value, name)
        token_missing = api.auth_token is None or not api.auth_token.strip()
        if token_missing and not is_loopback(api.address):
            out.add(
                a_path + ("auth_token",),
                f"required when the control API listens on a non-loopback address ({api.address})",
                a_path + ("address",),
            )
    if metrics.enabled and api.enabled and metrics.port == api.port and metrics.address == api.address:
        out.add(a_path + ("port",), f"metrics already use {api.address}:{api.port}", m_path + ("port",))

    routing = obs.routing
    if routing.expose_header and not routing.header_name.strip():
        out.add(o + ("routing", "header_name"), "must not be blank when expose_header is true", o + ("routing", "expose_header"))

    tracing, t_path = obs.tracing, o + ("tracing",)
    if tracing.enabled:
        out.not_empty(t_path + ("service_name",), tracing.service_name)
        out.between(t_path + ("sample_ratio",), tracing.sample_ratio, 0.0, 1.0)
        endpoint = tracing.otlp_endpoint
        # Spooky requires only a non-blank endpoint; we also require the scheme, which says
        # whether the export uses TLS (docs/configuration.md)
        if endpoint is not None and not endpoint.startswith(("http://", "https://")):
            out.add(t_path + ("otlp_endpoint",), f"must be an http:// or https:// URL (got {endpoint!r})")
