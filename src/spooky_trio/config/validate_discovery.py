"""The rules of ``upstream.<pool>.discovery`` (ext; config/schema_discovery.py), and the
check of the files it names (etcd's CA, client certificate and key, password file).

Each kind takes its own keys and refuses the others' (a ``path`` on a ``dns_srv`` source is
a mistake, not a no-op): ``file`` needs ``path``; ``dns_srv`` needs ``name``; ``etcd``
needs ``endpoints`` (``http://`` or ``https://`` URLs, host and port, no path) and a
non-empty ``prefix``, and may take TLS files and a user with a password.
"""

from __future__ import annotations

import ssl
import urllib.parse

from spooky_trio.config.address import is_hostname, is_ip_literal
from spooky_trio.config.checks import Problems
from spooky_trio.config.issues import ConfigIssue, KeyPath, PositionMap
from spooky_trio.config.schema import Config
from spooky_trio.config.schema_discovery import DISCOVERY_KINDS, DISCOVERY_SCHEMES, DiscoveryConfig
from spooky_trio.config.validate_backend import validate_health_check
from spooky_trio.config.validate_ratelimit import read_password_file

#: shortest polling period / backoff cap: a smaller one would spin on a source
MIN_REFRESH_MS = 100
#: the keys only one kind takes (``scheme`` is read by dns_srv only but has a default)
_KIND_KEYS = {
    "file": ("path",),
    "dns_srv": ("name",),
    "etcd": ("endpoints", "prefix", "username", "password", "password_file", "ca_file", "cert_file", "key_file"),
}


def validate_discovery(out: Problems, path: KeyPath, discovery: DiscoveryConfig) -> None:
    """Add every rule violation of one pool's ``discovery`` block (at ``path``) to ``out``."""
    kind = discovery.kind
    if kind not in DISCOVERY_KINDS:
        out.add(path + ("kind",), f"invalid kind {kind!r}: must be one of {', '.join(DISCOVERY_KINDS)} (exact spelling)")
        return
    for other, keys in _KIND_KEYS.items():
        if other == kind:
            continue
        for key in keys:
            if getattr(discovery, key) not in (None, []):
                out.add(path + (key,), f"only used with kind {other} (this source is {kind})", path + ("kind",))
    if discovery.scheme not in DISCOVERY_SCHEMES:
        out.add(path + ("scheme",), f"invalid scheme {discovery.scheme!r}: must be http or https")
    out.at_least(path + ("refresh_ms",), discovery.refresh_ms, MIN_REFRESH_MS)
    out.positive(path + ("timeout_ms",), discovery.timeout_ms)
    defaults = discovery.backend_defaults
    out.at_least(path + ("backend_defaults", "weight"), defaults.weight, 1)
    if defaults.health_check is not None:
        validate_health_check(out, path + ("backend_defaults", "health_check"), defaults.health_check)
    if kind == "file":
        if discovery.path is None:
            out.add(path + ("path",), "required when kind is file", path + ("kind",))
    elif kind == "dns_srv":
        if discovery.name is None:
            out.add(path + ("name",), "required when kind is dns_srv", path + ("kind",))
        elif not is_hostname(discovery.name.removesuffix(".")):
            out.add(path + ("name",), f"invalid SRV name {discovery.name!r}: expected a DNS name like _api._tcp.example.com")
    else:
        _etcd(out, path, discovery)


def _etcd(out: Problems, path: KeyPath, discovery: DiscoveryConfig) -> None:
    if not discovery.endpoints:
        out.add(path + ("endpoints",), "at least one etcd endpoint is required when kind is etcd", path + ("kind",))
    schemes = set()
    for index, endpoint in enumerate(discovery.endpoints):
        error = endpoint_error(endpoint)
        if error is not None:
            out.add(path + ("endpoints", index), error)
        else:
            schemes.add(urllib.parse.urlsplit(endpoint).scheme)
    if discovery.prefix is None or not discovery.prefix.strip():
        out.add(path + ("prefix",), "required when kind is etcd (an empty prefix would be the whole key space)", path + ("kind",))
    if discovery.password is not None and discovery.password_file is not None:
        out.add(path + ("password_file",), "give the password in one place: password or password_file", path + ("password",))
    has_password = discovery.password is not None or discovery.password_file is not None
    if discovery.username is not None and not has_password:
        out.add(path + ("username",), "needs password or password_file")
    elif discovery.username is None and has_password:
        key = "password" if discovery.password is not None else "password_file"
        out.add(path + (key,), "needs username")
    if (discovery.cert_file is None) != (discovery.key_file is None):
        present = "cert_file" if discovery.cert_file is not None else "key_file"
        out.add(path + (present,), "cert_file and key_file go together (a client certificate and its key)")
    if schemes == {"http"}:
        for key in ("ca_file", "cert_file", "key_file"):
            if getattr(discovery, key) is not None:
                out.add(path + (key,), "only used with https:// endpoints", path + ("endpoints",))


def endpoint_error(endpoint: str) -> str | None:
    """Why ``endpoint`` is not an etcd client URL (``http[s]://host:port``), or None."""
    try:
        url = urllib.parse.urlsplit(endpoint)
        port = url.port
    except ValueError as exc:
        return f"invalid endpoint {endpoint!r}: {exc}"
    if url.scheme not in ("http", "https"):
        return f"invalid endpoint {endpoint!r}: must start with http:// or https://"
    host = url.hostname or ""
    if not (is_hostname(host) or is_ip_literal(host)):
        return f"invalid endpoint {endpoint!r}: no valid host"
    if port is None:
        return f"invalid endpoint {endpoint!r}: give the port (etcd's client port is usually 2379)"
    if url.path not in ("", "/") or url.query or url.fragment or url.username or url.password:
        return f"invalid endpoint {endpoint!r}: only scheme, host and port (no path, query or userinfo)"
    return None


def etcd_tls_context(discovery: DiscoveryConfig) -> ssl.SSLContext:
    """The client TLS context of ``https://`` etcd endpoints: the system roots plus
    ``ca_file``, and the client certificate when given (reads the files now)."""
    context = ssl.create_default_context()
    if discovery.ca_file is not None:
        context.load_verify_locations(cafile=discovery.ca_file)
    if discovery.cert_file is not None and discovery.key_file is not None:
        context.load_cert_chain(discovery.cert_file, discovery.key_file)
    return context


def etcd_password(discovery: DiscoveryConfig) -> str | None:
    """The etcd password (``password``, else the first line of ``password_file``, read
    now), or None without auth. Raises OSError or ValueError for an unusable file."""
    if discovery.password is not None:
        return str(discovery.password)
    if discovery.password_file is not None:
        return read_password_file(discovery.password_file)
    return None


def check_discovery_files(config: Config) -> list[ConfigIssue]:
    """Problems with the files etcd sources name (read again at every reload)."""
    positions = PositionMap(config.source_positions)
    issues: list[ConfigIssue] = []
    for name, pool in config.upstream.items():
        discovery = pool.discovery
        if discovery is None or discovery.kind != "etcd":
            continue
        path: KeyPath = ("upstream", name, "discovery")
        try:
            etcd_password(discovery)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            message = _why(exc) if isinstance(exc, OSError) else str(exc)
            issues.append(positions.issue(path + ("password_file",), f"cannot read {discovery.password_file}: {message}"))
        context = ssl.create_default_context()
        if discovery.ca_file is not None:
            try:
                context.load_verify_locations(cafile=discovery.ca_file)
            except (OSError, ssl.SSLError) as exc:
                issues.append(positions.issue(path + ("ca_file",), f"cannot load CA certificates from {discovery.ca_file}: {_why(exc)}"))
        if discovery.cert_file is not None and discovery.key_file is not None:
            try:
                context.load_cert_chain(discovery.cert_file, discovery.key_file)
            except (OSError, ssl.SSLError) as exc:
                issues.append(positions.issue(path + ("cert_file",), f"cannot load the client certificate and key: {_why(exc)}"))
    return issues


def _why(exc: OSError) -> str:
    return exc.strerror if not isinstance(exc, ssl.SSLError) and exc.strerror else str(exc)
