"""Every default of every section, checked against the tables of spec/config.md."""

from __future__ import annotations

import attrs
import pytest

from spooky_trio.config import (
    ClientAuthConfig,
    Config,
    HealthCheckConfig,
    ListenerConfig,
    LoadBalancingConfig,
    UpstreamTlsConfig,
)
from tests.config.helpers import LISTEN, POOL, load

MIN = LISTEN + POOL


@pytest.fixture(scope="module")
def config() -> Config:
    return load(MIN)


def test_top_level(config: Config) -> None:
    assert config.version == 1
    assert config.listeners == []
    assert config.load_balancing is None
    assert list(config.upstream) == ["api"]
    assert config.effective_listeners() == [config.listen]
    assert len(config.source_sha256) == 64


def test_listener(config: Config) -> None:
    listen = config.listen
    assert listen.protocol == "http3"
    assert listen.address == "0.0.0.0"
    assert listen.port == 9889
    assert listen.tls.cert == "certs/c.pem"
    assert listen.tls.key == "certs/k.pem"
    assert listen.tls.certificates == []
    assert listen.tls.client_auth == ClientAuthConfig(enabled=False, require_client_cert=False, ca_file=None)


def test_upstream_tls(config: Config) -> None:
    assert config.upstream_tls == UpstreamTlsConfig(
        verify_certificates=True, strict_sni=True, ca_file=None, ca_dir=None
    )


def test_pool_and_backend(config: Config) -> None:
    pool = config.upstream["api"]
    assert pool.route.host is None
    assert pool.route.path_prefix == "/"
    assert pool.route.method is None
    assert pool.load_balancing == LoadBalancingConfig(type="round-robin", key=None)
    assert pool.host_policy.mode == "pass-through"
    assert pool.host_policy.host is None
    assert pool.forwarded_headers.mode == "overwrite"
    assert pool.tls is None
    (backend,) = pool.backends
    assert backend.id == "a"
    assert backend.weight == 100
    assert backend.health_check is None
    assert backend.parsed_address.scheme == "http"
    assert backend.parsed_address.port == 8080


def test_health_check_defaults() -> None:
    config = load(
        LISTEN
        + """\
upstream:
  api:
    route: {path_prefix: /}
    backends:
      - {id: a, address: "http://127.0.0.1:8080", health_check: {}}
"""
    )
    assert config.upstream["api"].backends[0].health_check == HealthCheckConfig(
        path="/health", interval=5000, timeout_ms=1000, failure_threshold=3, success_threshold=2, cooldown_ms=5000
    )


def test_log(config: Config) -> None:
    assert config.log.level == "info"
    assert config.log.format == "plain"
    assert config.log.file.enabled is False
    assert config.log.file.path == "/var/log/spooky/spooky.log"


PERFORMANCE = {
    "worker_threads": 1,
    "control_plane_threads": 2,
    "reuseport": True,
    "pin_workers": False,
    "packet_shards_per_worker": 1,
    "packet_shard_queue_capacity": 2048,
    "packet_shard_queue_max_bytes": 64 * 1024 * 1024,
    "global_inflight_limit": 4096,
    "per_upstream_inflight_limit": 1024,
    "per_backend_inflight_limit": 64,
    "inflight_acquire_wait_ms": 0,
    "backend_connect_timeout_ms": 500,
    "backend_timeout_ms": 2000,
    "backend_body_idle_timeout_ms": 2000,
    "backend_body_total_timeout_ms": 30000,
    "backend_total_request_timeout_ms": 35000,
    "client_body_idle_timeout_ms": 10000,
    "shutdown_drain_timeout_ms": 5000,
    "udp_recv_buffer_bytes": 8388608,
    "udp_send_buffer_bytes": 8388608,
    "h2_pool_max_idle_per_backend": 256,
    "h2_pool_idle_timeout_ms": 90000,
    "h3_pool_max_connections_per_backend": 2,
    "h3_pool_max_streams_per_connection": 100,
    "h3_pool_idle_timeout_ms": 90000,
    "backend_dns_refresh_enabled": False,
    "backend_dns_refresh_interval_ms": 30000,
    "backend_dns_nameservers": [],
    "new_connections_per_sec": 2000,
    "new_connections_burst": 500,
    "max_active_connections": 20000,
    "quic_max_idle_timeout_ms": 5000,
    "quic_initial_max_data": 10000000,
    "quic_initial_max_stream_data": 1000000,
    "quic_initial_max_streams_bidi": 100,
    "quic_initial_max_streams_uni": 100,
    "max_request_body_bytes": 1000000,
    "max_response_body_bytes": 104857600,
    "request_buffer_global_cap_bytes": 67108864,
    "unknown_length_response_prebuffer_bytes": 2097152,
    "quic_worker_steering": "auto",
}


def test_performance(config: Config) -> None:
    assert attrs.asdict(config.performance) == PERFORMANCE


RESILIENCE = {
    "adaptive_admission": {
        "enabled": True,
        "min_limit": 64,
        "max_limit": 4096,  # global_inflight_limit
        "decrease_step": 16,
        "increase_step": 16,
        "high_latency_ms": 500,
    },
    "circuit_breaker": {"enabled": True, "failure_threshold": 3, "open_ms": 30000, "half_open_max_probes": 1},
    "retry_budget": {"enabled": True, "ratio_percent": 10, "per_route_ratio_percent": {}},
    "hedging": {"enabled": False, "delay_ms": 100, "safe_methods": ["GET", "HEAD"], "route_allowlist": []},
    "brownout": {"enabled": True, "trigger_inflight_percent": 90, "recover_inflight_percent": 60, "core_routes": []},
    "route_queue": {"default_cap": 512, "global_cap": 2048, "shed_retry_after_seconds": 1, "caps": {}},
    "protocol": {
        "allow_0rtt": False,
        "early_data_safe_methods": ["GET", "HEAD"],
        "max_headers_count": 128,
        "max_headers_bytes": 16384,
        "enforce_authority_host_match": True,
        "allow_connect": False,
        "connect_allowed_ports": [],
        "connect_allowed_authorities": [],
        "allowed_methods": [],
        "denied_path_prefixes": [],
        "normalize_path": True,
        "merge_slashes": True,
        "escaped_slashes": "keep",
        "forward_normalized_path": True,
    },
    "watchdog": {
        "enabled": False,
        "check_interval_ms": 1000,
        "poll_stall_timeout_ms": 5000,
        "timeout_error_rate_percent": 60,
        "min_requests_per_window": 20,
        "overload_inflight_percent": 95,
        "unhealthy_consecutive_windows": 3,
        "drain_grace_ms": 8000,
        "restart_cooldown_ms": 120000,
        "restart_command": [],
    },
    "scoped_rate_limits": [],
    "rate_limit_store": {
        "kind": "memory",
        "url": None,
        "password_file": None,
        "ca_file": None,
        "key_prefix": "spooky:rl:",
        "timeout_ms": 25,
        "failure_mode": "local",
    },
    "rate_limit_headers": False,
}


def test_resilience(config: Config) -> None:
    assert attrs.asdict(config.resilience) == RESILIENCE


def test_adaptive_max_limit_follows_global_limit() -> None:
    config = load(MIN + "performance:\n  global_inflight_limit: 100\n")
    assert config.resilience.adaptive_admission.max_limit == 100
    config = load(MIN + "resilience:\n  adaptive_admission:\n    max_limit: 1000\n")
    assert config.resilience.adaptive_admission.max_limit == 1000


OBSERVABILITY = {
    "metrics": {
        "enabled": False,
        "required": False,
        "address": "127.0.0.1",
        "port": 9901,
        "path": "/metrics",
        "max_connections": 512,
        "connection_timeout_ms": 30000,
    },
    "control_api": {
        "enabled": False,
        "required": False,
        "address": "127.0.0.1",
        "port": 9902,
        "health_path": "/health",
        "ready_path": "/ready",
        "runtime_path": "/admin/runtime",
        "restart_path": "/admin/runtime/restart",
        "reload_path": "/admin/runtime/reload",
        "reload_certs_path": "/admin/runtime/reload-certs",
        "auth_token": None,
        "max_connections": 256,
        "connection_timeout_ms": 30000,
    },
    "routing": {
        "enabled": False,
        "include_reason": True,
        "expose_header": False,
        "header_name": "x-spooky-route-decision",
    },
    "tracing": {"enabled": False, "service_name": "spooky", "otlp_endpoint": None, "sample_ratio": 1.0},
}


def test_observability(config: Config) -> None:
    assert attrs.asdict(config.observability) == OBSERVABILITY


def test_security(config: Config) -> None:
    privileges = config.security.privileges
    assert (privileges.enabled, privileges.user, privileges.group) == (True, "nobody", "nogroup")


def test_class_defaults_match_loaded_defaults(config: Config) -> None:
    """Hand-built objects (used by other modules' tests) get the same defaults."""
    assert ListenerConfig().port == 9889
    assert attrs.evolve(config.listen, tls=ListenerConfig().tls) == ListenerConfig()
    assert LoadBalancingConfig().type == "round-robin"


def test_listeners_replace_listen() -> None:
    config = load(
        """\
listen:
  port: 1000
listeners:
  - address: 127.0.0.1
    port: 2000
    tls: {cert: a.pem, key: a.key}
  - address: "::1"
    port: 2000
    tls: {cert: a.pem, key: a.key}
"""
        + POOL
    )
    assert [(item.address, item.port) for item in config.effective_listeners()] == [("127.0.0.1", 2000), ("::1", 2000)]
