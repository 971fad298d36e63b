"""Configuration layer: YAML (schema version 1, ``docs/configuration.md``) -> frozen attrs classes.

Entry points: :func:`load_config` / :func:`load_config_text` (raise :class:`ConfigError`
carrying every :class:`ConfigIssue`), :func:`check_files` for the certificate, key and
CA files a loaded config names, and :func:`config_warnings` for what loads but deserves a
word to the operator. Relative file paths are resolved against the current
working directory.
"""

from __future__ import annotations

from spooky_trio.config.address import BackendAddress, parse_backend_address
from spooky_trio.config.files import certificate_covers, check_files
from spooky_trio.config.issues import ConfigError, ConfigIssue
from spooky_trio.config.load import load_config, load_config_text
from spooky_trio.config.notices import config_warnings
from spooky_trio.config.schema import (
    BackendConfig,
    ClientAuthConfig,
    Config,
    ForwardedHeadersConfig,
    HealthCheckConfig,
    HostPolicyConfig,
    ListenerConfig,
    ListenerTls,
    LoadBalancingConfig,
    LogConfig,
    LogFileConfig,
    PoolConfig,
    RouteConfig,
    SniCertificate,
    UpstreamTlsConfig,
)
from spooky_trio.config.schema_ratelimit import RateLimitStoreConfig, ScopedRateLimitConfig
from spooky_trio.config.schema_runtime import (
    AdaptiveAdmissionConfig,
    BrownoutConfig,
    CircuitBreakerConfig,
    ControlApiConfig,
    HedgingConfig,
    MetricsConfig,
    ObservabilityConfig,
    PerformanceConfig,
    PrivilegesConfig,
    ProtocolConfig,
    ResilienceConfig,
    RetryBudgetConfig,
    RouteQueueConfig,
    RoutingDecisionConfig,
    SecurityConfig,
    TracingConfig,
    WatchdogConfig,
)

__all__ = [
    "AdaptiveAdmissionConfig",
    "BackendAddress",
    "BackendConfig",
    "BrownoutConfig",
    "CircuitBreakerConfig",
    "ClientAuthConfig",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "ControlApiConfig",
    "ForwardedHeadersConfig",
    "HealthCheckConfig",
    "HedgingConfig",
    "HostPolicyConfig",
    "ListenerConfig",
    "ListenerTls",
    "LoadBalancingConfig",
    "LogConfig",
    "LogFileConfig",
    "MetricsConfig",
    "ObservabilityConfig",
    "PerformanceConfig",
    "PoolConfig",
    "PrivilegesConfig",
    "ProtocolConfig",
    "RateLimitStoreConfig",
    "ResilienceConfig",
    "RetryBudgetConfig",
    "RouteConfig",
    "RouteQueueConfig",
    "RoutingDecisionConfig",
    "ScopedRateLimitConfig",
    "SecurityConfig",
    "SniCertificate",
    "TracingConfig",
    "UpstreamTlsConfig",
    "WatchdogConfig",
    "certificate_covers",
    "check_files",
    "config_warnings",
    "load_config",
    "load_config_text",
    "parse_backend_address",
]
