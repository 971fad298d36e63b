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
from spooky_trio.config.markers import EXT
from spooky_trio.config.normalize import empty_to_none, upper_optional
from spooky_trio.config.markers import EXT
from spooky_trio.config.schema_auth import AuthConfig
from spooky_trio.config.schema_discovery import DiscoveryConfig
from spooky_trio.config.schema_health import HealthCheckConfig as HealthCheckConfig  # (moved; still importable here)
from spooky_trio.config.schema_traffic import MatcherConfig, TrafficPolicyConfig
from spooky_trio.config.schema_plugins import PluginConfig
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
#: (ext) how a pool talks to its backends; ``auto`` is Spooky's scheme rule (docs/upstream-protocols.md)
UpstreamProtocol = Literal["auto", "h1", "h2", "h3", "alt-svc"]

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
    """Request matcher; at least one of ``host``/``path_prefix``. ``method`` is upper-cased.
    ``headers``, ``query`` and ``cookies`` (ext, ``schema_traffic.py``) must all hold too."""

    host: str | None = None
    path_prefix: str | None = None
    method: str | None = attrs.field(default=None, converter=upper_optional)
    headers: list[MatcherConfig] = attrs.field(factory=list, metadata=EXT)
    query: list[MatcherConfig] = attrs.field(factory=list, metadata=EXT)
    cookies: list[MatcherConfig] = attrs.field(factory=list, metadata=EXT)

    def matcher_key(self) -> tuple[object, ...]:
        """The normalized matcher two pools must not share: (lower host, prefix, upper
        method) and the route's matchers, in any order (extensions.md section 1)."""
        return (self.host.lower() if self.host else None, self.path_prefix, self.method, frozenset(self.matcher_identities()))

    def matcher_identities(self) -> list[tuple[str, str, str, str | None, bool]]:
        """Each matcher as (source, name, kind, value, inverted), normalized: a header name
        lower-cased, ``present: false`` as an inverted ``present: true``."""
        out = []
        for source, matchers in (("header", self.headers), ("query", self.query), ("cookie", self.cookies)):
            for m in matchers:
                kinds = m.kinds()
                kind = kinds[0] if kinds else "present"
                value = None if kind == "present" else getattr(m, kind)
                invert = m.invert != (m.present is False) if kind == "present" else m.invert
                out.append((source, m.name.lower() if source == "header" else m.name, kind, value, invert))
        return out


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

    #: ext: may be omitted in a pool that another pool's ``traffic_policy`` splits or
    #: mirrors to (reachable only that way)
    route: RouteConfig | None = None
    #: may be empty in a pool that answers itself (``direct_response``, ``redirect``), has
    #: no route (extensions.md section 7) or has a ``discovery`` source
    backends: list[BackendConfig] = attrs.field(factory=list)
    load_balancing: LoadBalancingConfig | None = None
    host_policy: HostPolicyConfig = attrs.field(factory=HostPolicyConfig)
    forwarded_headers: ForwardedHeadersConfig = attrs.field(factory=ForwardedHeadersConfig)
    tls: UpstreamTlsConfig | None = None
    #: authentication and authorization of the requests this pool's route matches
    auth: AuthConfig | None = None
    #: ext: where the pool's backends come from (config/schema_discovery.py)
    discovery: DiscoveryConfig | None = attrs.field(default=None, metadata=EXT)
    #: ext: matchers aside, everything of extensions.md section 1 (``schema_traffic.py``)
    traffic_policy: TrafficPolicyConfig | None = attrs.field(default=None, metadata=EXT)
    #: (ext) the ``plugins`` entries whose filters run for this pool's requests, in order
    filters: list[str] = attrs.field(factory=list, metadata=EXT)
    #: (ext) the protocol to the backends: ``auto`` (``http://`` HTTP/1.1, ``https://``
    #: HTTP/2), ``h1``, ``h2`` (cleartext prior knowledge on ``http://``), ``h3``, ``alt-svc``
    upstream_protocol: UpstreamProtocol = attrs.field(default="auto", metadata=EXT)

    def effective_protocol(self, scheme: str) -> str:
        """The protocol spoken to a backend of ``scheme`` (``http``/``https``): ``h1``,
        ``h2``, ``h3`` or ``alt-svc``; ``auto`` resolves by Spooky's scheme rule."""
        if self.upstream_protocol == "auto":
            return "h1" if scheme == "http" else "h2"
        return self.upstream_protocol

    def scheme_error(self, scheme: str) -> str | None:
        """Why a backend of ``scheme`` cannot serve in this pool, or None: HTTP/3 (``h3``,
        and ``alt-svc``, which moves to it) exists only for ``https://`` origins (RFC 9114
        3.1). Config backends are refused at load; discovered and admin ones at their door."""
        if self.upstream_protocol in ("h3", "alt-svc") and scheme != "https":
            return f"upstream_protocol {self.upstream_protocol} needs https:// backends (HTTP/3 runs over TLS only)"
        return None

    def effective_load_balancing(self, config_level: LoadBalancingConfig | None = None) -> LoadBalancingConfig:
        """The pool's own policy, else ``config_level``, else round-robin."""
        return self.load_balancing or config_level or LoadBalancingConfig()

    def uses_tls(self) -> bool:
        """True when a backend is reached over TLS (``https://`` or a bare address): only
        then does a TLS policy apply to the pool (and only then does Spooky check it). A pool
        with ``discovery`` counts as one: its source may name ``https`` backends at any time
        (``dns_srv`` does by default), so its policy is checked when the config loads, not
        when the first such backend arrives."""
        if self.discovery is not None:
            return True
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
    #: (ext) filters in Python, named by pools' ``filters`` (config/schema_plugins.py)
    plugins: list[PluginConfig] = attrs.field(factory=list, metadata=EXT)
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
