"""Configuration schema (version 1): frozen attrs classes, documented key by key in
``docs/configuration.md`` (a test keeps the two in step).

Field names are exactly the YAML keys and defaults are Spooky's. Enumerated values
are stored in their canonical hyphen spelling (``round-robin``, ``pass-through``, ...), HTTP
method names upper-cased, log levels as ``off/error/warn/info/debug/trace``.

Paths to certificates, keys and CA bundles are stored as written; relative paths are resolved
against the process's current working directory when the files are opened.

Invariants that hold for a :class:`Config` returned by the loader (not for hand-built ones):
every ``PoolConfig.load_balancing`` is set (pool's own, else top-level ``load_balancing``,
else round-robin) and ``resilience.adaptive_admission.max_limit`` is an int (when omitted:
``max(performance.global_inflight_limit, min_limit)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import attrs

from spooky_trio.config.address import BackendAddress, parse_backend_address
from spooky_trio.config.issues import KeyPath, SourcePosition
from spooky_trio.config.normalize import empty_to_none, upper_optional
from spooky_trio.config.markers import EXT
from spooky_trio.config.schema_auth import AuthConfig
from spooky_trio.config.schema_quic_lb import QuicLbConfig
from spooky_trio.config.schema_runtime import (
    ObservabilityConfig,
    PerformanceConfig,
    ResilienceConfig,
    SecurityConfig,
)

ListenerProtocol = Literal["http3"]
BalancingType = Literal[
    "random", "round-robin", "consistent-hash", "least-connections", "latency-aware", "sticky-cid"
]
HostPolicyMode = Literal["pass-through", "rewrite", "upstream"]
ForwardedMode = Literal["overwrite", "append", "preserve"]
LogLevel = Literal["off", "error", "warn", "info", "debug", "trace"]
LogFormat = Literal["plain", "json"]

#: metadata flag for fields filled by the loader and not accepted from YAML
INTERNAL = "spooky_internal"


@attrs.frozen(kw_only=True)
class ClientAuthConfig:
    """Client certificates on the TCP bootstrap listener; ``ca_file`` is required when enabled."""

    enabled: bool = False
    require_client_cert: bool = False
    ca_file: str | None = attrs.field(default=None, converter=empty_to_none)


@attrs.frozen(kw_only=True)
class SniCertificate:
    """An SNI identity: used when the ClientHello's server name equals ``server_name``."""

    server_name: str
    cert: str
    key: str


@attrs.frozen(kw_only=True)
class ListenerTls:
    """Listener identities: default ``cert``/``key`` (both or neither) plus SNI ``certificates``."""

    cert: str | None = attrs.field(default=None, converter=empty_to_none)
    key: str | None = attrs.field(default=None, converter=empty_to_none)
    certificates: list[SniCertificate] = attrs.field(factory=list)
    client_auth: ClientAuthConfig = attrs.field(factory=ClientAuthConfig)


@attrs.frozen(kw_only=True)
class ListenerConfig:
    """One listener: QUIC on UDP ``port`` plus the TLS bootstrap listener on the same TCP port."""

    protocol: ListenerProtocol = "http3"
    address: str = "0.0.0.0"
    port: int = 9889
    tls: ListenerTls = attrs.field(factory=ListenerTls)
    #: QUIC-LB connection IDs (config/schema_quic_lb.py, docs/fleet.md)
    quic_lb: QuicLbConfig | None = attrs.field(default=None, metadata=EXT)


@attrs.frozen(kw_only=True)
class UpstreamTlsConfig:
    """TLS policy for ``https://`` backends (global ``upstream_tls`` or a pool's ``tls``)."""

    verify_certificates: bool = True
    strict_sni: bool = True
    ca_file: str | None = attrs.field(default=None, converter=empty_to_none)
    ca_dir: str | None = attrs.field(default=None, converter=empty_to_none)


@attrs.frozen(kw_only=True)
class RouteConfig:
    """Request matcher; at least one of ``host``/``path_prefix``. ``method`` is upper-cased."""

    host: str | None = None
    path_prefix: str | None = None
    method: str | None = attrs.field(default=None, converter=upper_optional)

    def matcher_key(self) -> tuple[str | None, str | None, str | None]:
        """The normalized matcher two pools must not share: (lower host, prefix, upper method)."""
        return (self.host.lower() if self.host else None, self.path_prefix, self.method)


@attrs.frozen(kw_only=True)
class HealthCheckConfig:
    """Active probing of one backend (GET ``path``; 2xx/3xx is success)."""

    path: str = "/health"
    interval: int = 5000
    timeout_ms: int = 1000
    failure_threshold: int = 3
    success_threshold: int = 2
    cooldown_ms: int = 5000


@attrs.frozen(kw_only=True)
class BackendConfig:
    """One backend of a pool. ``address`` syntax: see :func:`parse_backend_address`."""

    id: str
    address: str
    weight: int = 100
    health_check: HealthCheckConfig | None = None

    @property
    def parsed_address(self) -> BackendAddress:
        """The parsed ``address``; never raises for a loaded config (the loader validated it)."""
        return parse_backend_address(self.address)


@attrs.frozen(kw_only=True)
class LoadBalancingConfig:
    """Balancing algorithm; ``key`` only matters for ``consistent-hash`` and ``sticky-cid``."""

    type: BalancingType = "round-robin"
    key: str | None = None


@attrs.frozen(kw_only=True)
class HostPolicyConfig:
    """Upstream Host: client's (``pass-through``), ``host`` (``rewrite``) or backend's (``upstream``)."""

    mode: HostPolicyMode = "pass-through"
    host: str | None = None


@attrs.frozen(kw_only=True)
class ForwardedHeadersConfig:
    """X-Forwarded-For handling: ``overwrite``, ``append`` or ``preserve``."""

    mode: ForwardedMode = "overwrite"


@attrs.frozen(kw_only=True)
class PoolConfig:
    """A pool (``upstream.<name>``). After loading, ``load_balancing`` is never ``None``."""

    route: RouteConfig
    backends: list[BackendConfig]
    load_balancing: LoadBalancingConfig | None = None
    host_policy: HostPolicyConfig = attrs.field(factory=HostPolicyConfig)
    forwarded_headers: ForwardedHeadersConfig = attrs.field(factory=ForwardedHeadersConfig)
    tls: UpstreamTlsConfig | None = None
    #: authentication and authorization of the requests this pool's route matches
    auth: AuthConfig | None = None

    def effective_load_balancing(self, config_level: LoadBalancingConfig | None = None) -> LoadBalancingConfig:
        """The pool's own policy, else ``config_level``, else round-robin."""
        return self.load_balancing or config_level or LoadBalancingConfig()

    def uses_tls(self) -> bool:
        """True when a backend is reached over TLS (``https://`` or a bare address): only
        then does a TLS policy apply to the pool (and only then does Spooky check it)."""
        for backend in self.backends:
            try:
                if parse_backend_address(backend.address).scheme == "https":
                    return True
            except ValueError:
                continue  # reported at the address
        return False


@attrs.frozen(kw_only=True)
class LogFileConfig:
    """Log to ``path`` instead of stderr when ``enabled``."""

    enabled: bool = False
    path: str = "/var/log/spooky/spooky.log"


@attrs.frozen(kw_only=True)
class LogConfig:
    """``log``: ``level`` is canonical (Spooky aliases are mapped when loading)."""

    level: LogLevel = "info"
    format: LogFormat = "plain"
    file: LogFileConfig = attrs.field(factory=LogFileConfig)


@attrs.frozen(kw_only=True)
class Config:
    """The whole configuration file.

    ``source_sha256`` (hex digest of the source text) and ``source_positions`` (key path ->
    where it was written) are filled by the loader and are not YAML keys.
    """

    version: int = 1
    listen: ListenerConfig = attrs.field(factory=ListenerConfig)
    listeners: list[ListenerConfig] = attrs.field(factory=list)
    upstream_tls: UpstreamTlsConfig = attrs.field(factory=UpstreamTlsConfig)
    upstream: dict[str, PoolConfig]
    load_balancing: LoadBalancingConfig | None = None
    log: LogConfig = attrs.field(factory=LogConfig)
    performance: PerformanceConfig = attrs.field(factory=PerformanceConfig)
    resilience: ResilienceConfig = attrs.field(factory=ResilienceConfig)
    observability: ObservabilityConfig = attrs.field(factory=ObservabilityConfig)
    security: SecurityConfig = attrs.field(factory=SecurityConfig)
    source_sha256: str = attrs.field(default="", metadata={INTERNAL: True})
    source_positions: Mapping[KeyPath, SourcePosition] = attrs.field(
        factory=dict, eq=False, repr=False, metadata={INTERNAL: True}
    )

    def effective_listeners(self) -> list[ListenerConfig]:
        """``listeners`` when non-empty, else ``[listen]``."""
        return list(self.listeners) if self.listeners else [self.listen]

    def tls_policies_in_use(self) -> list[tuple[KeyPath, UpstreamTlsConfig]]:
        """The upstream TLS policies some backend uses, with their key paths: each TLS pool's
        own ``tls``, and ``upstream_tls`` when a TLS pool has none (spooky-head.md section 6:
        a policy no backend uses is not checked, its files not read)."""
        out: list[tuple[KeyPath, UpstreamTlsConfig]] = []
        global_used = False
        for name, pool in self.upstream.items():
            if not pool.uses_tls():
                continue
            if pool.tls is not None:
                out.append((("upstream", name, "tls"), pool.tls))
            else:
                global_used = True
        if global_used:
            out.insert(0, (("upstream_tls",), self.upstream_tls))
        return out
