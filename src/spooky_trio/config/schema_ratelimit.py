"""Schema of rate limiting: Spooky's ``resilience.scoped_rate_limits`` and our store keys.

``scoped_rate_limits`` is Spooky's rule language (``spooky-head.md`` section 2);
``rate_limit_store`` (every key of it), ``rate_limit_headers`` and a rule's ``store`` are ours
(``extensions.md`` section 3), marked :data:`~spooky_trio.config.markers.EXT` so that
``check --spooky-strict`` reports them and the reference marks them ``(ext)``. Enumerated
values (``scope``, ``kind``, ``store``, ``failure_mode``) are ``Literal`` types read by the
loader like every other enum (:mod:`spooky_trio.config.spellings`): none has an alias, so
each takes exactly its values, as Spooky takes ``scope`` (spooky-head.md section 3: "No
other aliases exist"), and ours follow the same rule. The cross-field rules are in
:mod:`spooky_trio.config.validate_ratelimit`; the rules themselves run in
``resilience/ratelimit.py`` and ``proxy/ratelimit.py``; docs/rate-limiting.md is the
operator's guide.
"""

from __future__ import annotations

from typing import Literal

import attrs

from spooky_trio.config.markers import EXT
from spooky_trio.config.schema_auth import Secret

RateLimitScope = Literal["route", "client", "tenant", "token"]
StoreKind = Literal["memory", "redis"]
StoreFailureMode = Literal["fail_open", "fail_closed", "local"]
#: the largest value of Spooky's u32 fields
U32_MAX = 2**32 - 1


@attrs.frozen(kw_only=True)
class ScopedRateLimitConfig:
    """One rule: a token bucket per (rule, key) of ``burst`` tokens refilled at
    ``requests_per_sec``. ``key`` defaults per scope (``route``: the pool name, ``client``:
    ``peer_ip``, ``token``: ``bearer_token``; ``tenant`` requires one). ``route_allowlist``
    names the pools it applies to (empty: all). ``store`` (ext): ``memory`` (this process)
    or ``redis`` (``resilience.rate_limit_store``, shared by every proxy using it)."""

    name: str
    scope: RateLimitScope
    requests_per_sec: int
    burst: int
    key: str | None = None
    route_allowlist: list[str] = attrs.field(factory=list)
    idle_ttl_secs: int = 300
    store: StoreKind = attrs.field(default="memory", metadata=EXT)

    def identity(self) -> tuple[object, ...]:
        """What a reload compares: a rule whose every field is unchanged keeps its buckets."""
        return (self.name, self.scope, self.requests_per_sec, self.burst, self.key, tuple(self.route_allowlist),
                self.idle_ttl_secs, self.store)


def _redacted_url(url: Secret | None) -> str:
    """``url`` for a repr: the userinfo (which may hold the password) replaced by ``***``."""
    if url is None:
        return "None"
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    return repr(f"{scheme}{sep}***@{host}" if at else url)


@attrs.frozen(kw_only=True)
class RateLimitStoreConfig:
    """``resilience.rate_limit_store`` (ext): where ``store: redis`` rules keep their buckets.

    ``url`` is ``redis://[user:password@]host[:port][/db]`` or ``rediss://`` (TLS, verified
    against the system roots plus ``ca_file``); ``password_file`` holds the password (first
    line) instead of the URL. ``timeout_ms`` bounds the whole store check of one request;
    after it, or while the store is known to be down, ``failure_mode`` decides.

    ``url`` is a :class:`~spooky_trio.config.schema_auth.Secret`, since it may hold the
    password: the loader's type errors never quote it, its own repr is ``***`` and this
    class's repr shows it without the userinfo; logs and ``/admin/runtime`` show
    :meth:`~spooky_trio.config.validate_ratelimit.RedisUrl.redacted`.
    """

    kind: StoreKind = attrs.field(default="memory", metadata=EXT)
    url: Secret | None = attrs.field(default=None, repr=_redacted_url, metadata=EXT)
    password_file: str | None = attrs.field(default=None, metadata=EXT)
    ca_file: str | None = attrs.field(default=None, metadata=EXT)
    key_prefix: str = attrs.field(default="spooky:rl:", metadata=EXT)
    timeout_ms: int = attrs.field(default=25, metadata=EXT)
    failure_mode: StoreFailureMode = attrs.field(default="local", metadata=EXT)
