"""Range and cross-field rules for the listener, upstream and log sections.

:func:`validate` is the entry point for a structured (not yet resolved) :class:`Config`: it
runs the rules here and those of :mod:`spooky_trio.config.validate_runtime` and returns every
violation as a :class:`~spooky_trio.config.checks.Problem`. It never raises.
"""

from __future__ import annotations

import ipaddress

from spooky_trio.config.address import is_hostname, is_token
from spooky_trio.config.checks import (
    Problem,
    Problems,
    authority_error,
    route_host_error,
)
from spooky_trio.config.issues import KeyPath, format_path
from spooky_trio.config.schema import (
    Config,
    ListenerConfig,
    LoadBalancingConfig,
    PoolConfig,
    UpstreamTlsConfig,
)
from spooky_trio.config.validate_auth import validate_auth
from spooky_trio.config.validate_backend import validate_backend_fields
from spooky_trio.config.validate_discovery import validate_discovery
from spooky_trio.config.validate_plugins import validate_plugins
from spooky_trio.config.validate_quic_lb import validate_quic_lb
from spooky_trio.config.validate_runtime import validate_runtime
from spooky_trio.http.request_keys import parse_key_spec
from spooky_trio.config.validate_traffic import backends_optional, referenced_pools, validate_traffic

SUPPORTED_VERSION = 1


def validate(config: Config) -> list[Problem]:
    """Every rule violation in ``config`` (empty list when the config is valid)."""
    out = Problems()
    if config.version != SUPPORTED_VERSION:
        out.add(("version",), f"unsupported version {config.version}: only version {SUPPORTED_VERSION} exists")
    _validate_listener(out, ("listen",), config.listen)
    for index, listener in enumerate(config.listeners):
        _validate_listener(out, ("listeners", index), listener)
    _validate_effective_listeners(out, config)
    for tls_path, tls in config.tls_policies_in_use():
        _validate_upstream_tls(out, tls_path, tls)
    if config.load_balancing is not None:
        _validate_load_balancing(out, ("load_balancing",), config.load_balancing)
    _validate_pools(out, config)
    validate_traffic(out, config)
    if config.log.file.enabled:
        out.not_empty(("log", "file", "path"), config.log.file.path)
    validate_runtime(out, config)
    validate_plugins(out, config)
    validate_quic_lb(out, config)
    return out.items


def _validate_listener(out: Problems, path: KeyPath, listener: ListenerConfig) -> None:
    out.bind_address(path + ("address",), listener.address)
    out.port(path + ("port",), listener.port)
    tls = listener.tls
    tls_path = path + ("tls",)
    if (tls.cert is None) != (tls.key is None):
        missing, present = ("key", "cert") if tls.key is None else ("cert", "key")
        out.add(tls_path + (present,), f"tls.{present} is set but tls.{missing} is not: give both or neither")
    seen_names: dict[str, int] = {}
    for index, entry in enumerate(tls.certificates):
        entry_path = tls_path + ("certificates", index)
        name = entry.server_name.lower()
        if not is_hostname(name, allow_underscore=False):
            out.add(
                entry_path + ("server_name",),
                f"invalid server_name {entry.server_name!r}: must be an exact DNS host name (SNI matching is exact)",
            )
        elif name in seen_names:
            out.add(
                entry_path + ("server_name",),
                f"duplicate server_name {entry.server_name!r} (already used by certificates[{seen_names[name]}])",
            )
        else:
            seen_names[name] = index
        out.not_empty(entry_path + ("cert",), entry.cert)
        out.not_empty(entry_path + ("key",), entry.key)
    auth = tls.client_auth
    if auth.enabled and auth.ca_file is None:
        out.add(tls_path + ("client_auth", "ca_file"), "required when client_auth.enabled is true", tls_path + ("client_auth", "enabled"))


def _validate_effective_listeners(out: Problems, config: Config) -> None:
    base: KeyPath = ("listeners",) if config.listeners else ("listen",)
    seen: dict[tuple[str, int], KeyPath] = {}
    for index, listener in enumerate(config.effective_listeners()):
        path = base + (index,) if config.listeners else base
        tls = listener.tls
        if tls.cert is None and tls.key is None and not tls.certificates:
            out.add(path + ("tls",), "a listener needs a certificate: set tls.cert and tls.key, or tls.certificates")
        try:
            address = str(ipaddress.ip_address(listener.address))
        except ValueError:
            continue  # reported by _validate_listener
        bind = (address, listener.port)
        if bind in seen:
            out.add(
                path + ("port",),
                f"duplicate listener bind {listener.address}:{listener.port} (also used by {format_path(seen[bind])})",
                path + ("address",),
            )
        else:
            seen[bind] = path


def _validate_upstream_tls(out: Problems, path: KeyPath, tls: UpstreamTlsConfig) -> None:
    if tls.ca_file is not None:
        out.not_empty(path + ("ca_file",), tls.ca_file)
    if tls.ca_dir is not None:
        out.not_empty(path + ("ca_dir",), tls.ca_dir)


def _validate_load_balancing(out: Problems, path: KeyPath, lb: LoadBalancingConfig) -> None:
    # Checked for every type, as Spooky does; a key on an algorithm that does not hash is
    # then ignored.
    if lb.key is not None:
        try:
            parse_key_spec(lb.key)
        except ValueError as exc:
            out.add(path + ("key",), str(exc))


def _validate_pools(out: Problems, config: Config) -> None:
    if not config.upstream:
        out.add(("upstream",), "must define at least one pool")
        return
    matchers: dict[tuple[object, ...], str] = {}
    referenced = referenced_pools(config)
    for name, pool in config.upstream.items():
        path: KeyPath = ("upstream", name)
        if not name.strip():
            out.add(path, "pool name must not be empty")
        elif name.startswith("@"):
            out.add(path, "pool names starting with '@' are reserved (CONNECT tunnels are admitted as pool '@connect')")
        _validate_pool(out, path, pool)
        route = pool.route
        if route is None:
            if name not in referenced:
                out.add(path + ("route",), "required key is missing (only a pool that another pool's traffic_policy "
                        "splits or mirrors to may have no route)")
            continue
        if route.host is None and route.path_prefix is None:
            continue
        key = route.matcher_key()
        if key in matchers:
            out.add(path + ("route",), f"pool {name!r} has the same route as pool {matchers[key]!r}")
        else:
            matchers[key] = name


def _validate_pool(out: Problems, path: KeyPath, pool: PoolConfig) -> None:
    route, route_path = pool.route, path + ("route",)
    if route is not None:
        if route.host is None and route.path_prefix is None:
            out.add(route_path, "a route needs at least host or path_prefix")
        if route.host is not None:
            error = route_host_error(route.host)
            if error:
                out.add(route_path + ("host",), error)
        if route.path_prefix is not None:
            out.http_path(route_path + ("path_prefix",), route.path_prefix)
        if route.method is not None and not is_token(route.method):
            out.add(route_path + ("method",), f"invalid method {route.method!r}")
    if pool.load_balancing is not None:
        _validate_load_balancing(out, path + ("load_balancing",), pool.load_balancing)
    policy = pool.host_policy
    if policy.mode == "rewrite":
        if policy.host is None or not policy.host.strip():
            out.add(path + ("host_policy", "host"), "required when host_policy.mode is rewrite", path + ("host_policy", "mode"))
        else:
            error = authority_error(policy.host)
            if error:
                out.add(path + ("host_policy", "host"), error)
    elif policy.host is not None:
        out.add(path + ("host_policy", "host"), f"only allowed when host_policy.mode is rewrite (mode is {policy.mode})")
    if pool.auth is not None:
        validate_auth(out, path + ("auth",), pool.auth)
    if pool.discovery is not None:
        validate_discovery(out, path + ("discovery",), pool.discovery)
    _validate_backends(out, path, pool)


def _validate_backends(out: Problems, pool_path: KeyPath, pool: PoolConfig) -> None:
    discovery = pool.discovery
    if discovery is not None and discovery.kind == "dns_srv":
        problem = pool.scheme_error(discovery.scheme)
        if problem is not None:
            out.add(pool_path + ("discovery", "scheme"), problem, pool_path + ("upstream_protocol",))
    if not pool.backends:
        if discovery is None and not backends_optional(pool):  # extensions.md section 7 (config/validate_traffic.py)
            out.add(pool_path + ("backends",), "a pool needs at least one backend (or a discovery source)")
        return
    ids: dict[str, int] = {}
    for index, backend in enumerate(pool.backends):
        path = pool_path + ("backends", index)
        if not backend.id.strip():
            out.add(path + ("id",), "must not be empty")
        elif backend.id in ids:
            out.add(path + ("id",), f"duplicate backend id {backend.id!r} (also backends[{ids[backend.id]}])")
        else:
            ids[backend.id] = index
        validate_backend_fields(out, path, backend)
        try:
            scheme = backend.parsed_address.scheme
        except ValueError:
            continue  # validate_backend_fields reported it
        _validate_protocol(out, pool_path, path, pool, scheme)


def _validate_protocol(out: Problems, pool_path: KeyPath, path: KeyPath, pool: PoolConfig, scheme: str) -> None:
    """A backend whose scheme the pool's ``upstream_protocol`` cannot speak (:meth:`PoolConfig.scheme_error`)."""
    problem = pool.scheme_error(scheme)
    if problem is not None:
        out.add(path + ("address",), problem, pool_path + ("upstream_protocol",))
