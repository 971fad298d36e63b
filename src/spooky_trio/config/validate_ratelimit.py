"""Rules for rate limiting: Spooky's ``scoped_rate_limits`` (every rule of ``spooky-head.md``
section 2) and our ``rate_limit_store`` (``extensions.md`` sections 3 and 7), plus the files
the store names (:func:`check_store_files`, run with the other file checks)."""

from __future__ import annotations

import ssl
import urllib.parse

import attrs

from spooky_trio.config.checks import Problems
from spooky_trio.config.issues import ConfigIssue, KeyPath, PositionMap
from spooky_trio.config.schema import Config
from spooky_trio.config.schema_ratelimit import U32_MAX, RateLimitStoreConfig, ScopedRateLimitConfig
from spooky_trio.config.schema_runtime import ResilienceConfig
from spooky_trio.http.request_keys import parse_key_spec

_U64_MAX = 2**64 - 1


@attrs.frozen
class RedisUrl:
    """The parts of a validated ``rate_limit_store.url``."""

    tls: bool
    host: str
    port: int
    db: int
    username: str | None
    password: str | None = attrs.field(repr=False)

    def redacted(self) -> str:
        """The URL without its credentials (logs, ``/admin/runtime``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'rediss' if self.tls else 'redis'}://{host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisUrl:
    """Parse ``redis://[user:password@]host[:port][/db]`` (``rediss://`` for TLS); raises
    ValueError with a message that never repeats the password."""
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in ("redis", "rediss"):
        raise ValueError("must be a redis:// or rediss:// URL")
    try:
        port = parsed.port or 6379
    except ValueError:
        raise ValueError("invalid port in the URL") from None
    if not parsed.hostname:
        raise ValueError("the URL names no host")
    if parsed.query or parsed.fragment:
        raise ValueError("query parameters and fragments are not supported in the URL")
    path = parsed.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"the path must be a database number (got /{path})")
    return RedisUrl(parsed.scheme == "rediss", parsed.hostname, port, int(path or 0),
                    urllib.parse.unquote(parsed.username) if parsed.username else None,
                    urllib.parse.unquote(parsed.password) if parsed.password else None)


def validate_rate_limits(out: Problems, res: ResilienceConfig) -> None:
    """Add every violation in the rate-limit keys of ``resilience`` to ``out``."""
    r: KeyPath = ("resilience",)
    store = res.rate_limit_store
    _store(out, r + ("rate_limit_store",), store)
    names: dict[str, int] = {}
    for index, rule in enumerate(res.scoped_rate_limits):
        path = r + ("scoped_rate_limits", index)
        _rule(out, path, rule, store)
        name = rule.name.strip()
        if name in names:
            out.add(path + ("name",), f"duplicate rule name {name!r} (also scoped_rate_limits[{names[name]}])")
        elif name:
            names[name] = index


def _store(out: Problems, path: KeyPath, store: RateLimitStoreConfig) -> None:
    out.positive(path + ("timeout_ms",), store.timeout_ms)
    for key in ("password_file", "ca_file"):
        value = getattr(store, key)
        if value is not None:
            out.not_empty(path + (key,), value)
    if store.url is None:
        if store.kind == "redis":
            out.add(path + ("url",), "required when kind is redis", path + ("kind",))
        return
    try:
        url = parse_redis_url(store.url)
    except ValueError as exc:
        out.add(path + ("url",), str(exc))
        return
    if url.password is not None and store.password_file is not None:
        out.add(path + ("password_file",), "the url already carries a password: give it in one place", path + ("url",))
    if store.ca_file is not None and not url.tls:
        out.add(path + ("ca_file",), "only used with a rediss:// (TLS) url", path + ("url",))


def _rule(out: Problems, path: KeyPath, rule: ScopedRateLimitConfig, store: RateLimitStoreConfig) -> None:
    out.not_empty(path + ("name",), rule.name)
    for key, high in (("requests_per_sec", U32_MAX), ("burst", U32_MAX), ("idle_ttl_secs", _U64_MAX)):
        value = getattr(rule, key)
        out.positive(path + (key,), value)
        if value > high:
            out.add(path + (key,), f"must be <= {high} (got {value})")
    if rule.key is not None:
        if rule.scope == "route":
            # Spooky: a route rule is keyed by the pool name, so a key is an error (a blank
            # one is taken as no key, spooky-head.md section 2)
            if rule.key.strip():
                out.add(path + ("key",), "not allowed with scope route (its buckets are keyed by the pool name)",
                        path + ("scope",))
        else:
            try:
                parse_key_spec(rule.key)
            except ValueError as exc:
                out.add(path + ("key",), str(exc))
    elif rule.scope == "tenant":
        out.add(path + ("key",), "required for scope tenant (e.g. header:x-tenant)", path + ("scope",))
    for index, pool in enumerate(rule.route_allowlist):
        out.not_empty(path + ("route_allowlist", index), pool)
    if rule.store == "redis" and store.kind != "redis":
        out.add(path + ("store",), f"store redis needs resilience.rate_limit_store.kind: redis (it is {store.kind})",
                ("resilience", "rate_limit_store", "kind"))


def read_password_file(path: str) -> str:
    """The password in ``path``: its first line without the line end. Raises OSError or
    ValueError (an empty file)."""
    with open(path, encoding="utf-8") as handle:
        password = handle.readline().rstrip("\r\n")
    if not password:
        raise ValueError(f"{path} holds no password (its first line is empty)")
    return password


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """The client TLS context of a ``rediss://`` store: system roots plus ``ca_file``,
    certificate and host name verified."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    return context


def check_store_files(config: Config) -> list[ConfigIssue]:
    """Problems with ``rate_limit_store.password_file`` and ``ca_file`` (read when a
    generation is built: a reload re-reads them)."""
    store = config.resilience.rate_limit_store
    if store.kind != "redis":
        return []
    positions = PositionMap(config.source_positions)
    path: KeyPath = ("resilience", "rate_limit_store")
    issues: list[ConfigIssue] = []
    if store.password_file is not None:
        try:
            read_password_file(store.password_file)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            issues.append(positions.issue(path + ("password_file",), f"cannot read {store.password_file}: {message}"))
    if store.ca_file is not None:
        try:
            tls_context(store.ca_file)
        except (OSError, ssl.SSLError) as exc:
            message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            issues.append(positions.issue(path + ("ca_file",), f"cannot load CA certificates from {store.ca_file}: {message}"))
    return issues
