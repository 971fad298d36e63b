"""The auth layer's state that outlives a generation, and the task that owns its outbound work.

:class:`AuthStore` lives in the server's :class:`~spooky_trio.core.state.StateStore`; the
server runs :meth:`AuthStore.run` in its root nursery (docs/architecture.md, the task tree)::

    AuthStore.run   the auth nursery
    ├─ one JWKS refresher per jwks_uri setting (auth/jwks.py)
    ├─ OIDC discovery fetches, started when a request needs a document
    └─ the closing of HTTP clients no live generation uses (after a grace period)

Request filters (``proxy/auth.py``) are built once per generation and take from here what
survives reloads: a :class:`~spooky_trio.auth.jwks.JwksCache` per JWKS setting (so a reload
keeps the keys), a :class:`~spooky_trio.auth.oidc.DiscoveryCache` per discovery URL, and an
:class:`~spooky_trio.auth.outbound.OutboundClient` per CA bundle content (a CA file rewritten
in place is trusted from the next generation on). :meth:`AuthStore.follow` drops what no live
generation names any more.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from typing import TYPE_CHECKING

import trio

from spooky_trio.auth.metrics import AuthMetrics
from spooky_trio.auth.outbound import OutboundClient, OutboundError, client_ssl_context
from spooky_trio.config import Config
from spooky_trio.config.schema_auth import DEFAULT_DISCOVERY_CACHE_SECS, ExternalAuthConfig, JwtAuthConfig

if TYPE_CHECKING:  # imported where used: they load PyJWT, which a config without auth never needs
    from spooky_trio.auth.jwks import JwksCache, JwksSettings
    from spooky_trio.auth.oidc import DiscoveryCache

log = logging.getLogger("spooky.auth")

#: a client no live generation uses is closed this long after (requests of an old
#: generation may still be using it)
CLIENT_GRACE_SECS = 60.0

_JSON = [(b"accept", b"application/json")]


def _jwks_group(settings: JwksSettings) -> tuple[str, str | None, float, float, float]:
    """A JWKS setting as a config names it (without the CA content)."""
    return (settings.uri, settings.ca_file, settings.cache_secs, settings.min_refresh_secs, settings.timeout)


def _ca_digest(ca_file: str | None) -> str:
    if ca_file is None:
        return ""
    with open(ca_file, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


class AuthStore:
    """See the module docstring. Usable before :meth:`run` (a generation's chain is built
    first): refreshers of caches made meanwhile start when it runs."""

    def __init__(self) -> None:
        self._nursery: trio.Nursery | None = None
        self.metrics: AuthMetrics | None = None
        #: settings -> (cache, the cancel scope of its refresher)
        self._jwks: dict[JwksSettings, tuple[JwksCache, trio.CancelScope]] = {}
        self._discovery: dict[tuple[str, str | None, str, float, float], DiscoveryCache] = {}
        #: (ca_file, CA content digest) -> client
        self._clients: dict[tuple[str | None, str], OutboundClient] = {}
        self._started: set[JwksSettings] = set()

    # -- what a chain build takes --

    def client(self, ca_file: str | None) -> tuple[OutboundClient, str]:
        """The client trusting the system roots plus ``ca_file`` as its content is now
        (read now: raises ``OSError``/``ssl.SSLError`` for a bad file), and that content's digest."""
        digest = _ca_digest(ca_file)
        key = (ca_file, digest)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = OutboundClient(client_ssl_context(ca_file))
        return client, digest

    def jwks_cache(self, config: JwtAuthConfig) -> JwksCache:
        """The cache of ``config.jwks_uri`` with these settings, its refresher started."""
        from spooky_trio.auth.jwks import JwksCache, JwksSettings

        assert config.jwks_uri is not None
        client, digest = self.client(config.ca_file)
        settings = JwksSettings(config.jwks_uri, config.ca_file, digest, float(config.jwks_cache_secs),
                                float(config.jwks_min_refresh_secs), config.jwks_timeout_ms / 1000)
        entry = self._jwks.get(settings)
        if entry is None:
            cache = JwksCache(settings)
            for other, _scope in self._jwks.values():  # a changed setting keeps the keys it had
                if other.settings.uri == settings.uri and other.has_keys and not cache.has_keys:
                    cache.adopt(other)
            entry = self._jwks[settings] = (cache, trio.CancelScope())
            self._start_refresher(settings, client)
        return entry[0]

    def discovery(self, config: ExternalAuthConfig, url: str) -> tuple[DiscoveryCache, OutboundClient]:
        """The discovery cache of ``url`` (one per URL, CA and cache setting) and the client
        of ``config.ca_file``."""
        from spooky_trio.auth.oidc import MAX_DISCOVERY_BYTES, DiscoveryCache

        client, digest = self.client(config.ca_file)
        cache_secs = float(config.discovery_cache_secs if config.discovery_cache_secs is not None else DEFAULT_DISCOVERY_CACHE_SECS)
        key = (url, config.ca_file, digest, cache_secs, config.timeout_ms / 1000)
        cache = self._discovery.get(key)
        if cache is None:
            cache = self._discovery[key] = DiscoveryCache(url, cache_secs)
            cache.fetch = self._fetcher("oidc_discovery", client, url, config.timeout_ms / 1000, MAX_DISCOVERY_BYTES)
        return cache, client

    def spawn_discovery(self, cache: DiscoveryCache) -> None:
        """Fetch ``cache``'s document in the auth nursery (the caller marked it pending)."""
        if self._nursery is None or cache.fetch is None:
            cache.fail("the auth store is not running")
            return
        self._nursery.start_soon(cache.fetch_once, cache.fetch)

    # -- the task --

    async def run(self, metrics: AuthMetrics | None = None, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the refreshers, fetches and clients until cancelled. Started once every JWK
        Set known now was fetched once or failed (each within its ``jwks_timeout_ms``), so
        the first requests find the keys."""
        self.metrics = metrics
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for settings in list(self._jwks):
                    self._start_refresher(settings, self._clients[(settings.ca_file, settings.ca_digest)])
                for cache, _scope in list(self._jwks.values()):
                    if cache.pending:
                        await cache.wait_fetch(cache.settings.timeout + 0.1)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._started.clear()
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                for client in self._clients.values():
                    await client.aclose()

    def _start_refresher(self, settings: JwksSettings, client: OutboundClient) -> None:
        from spooky_trio.auth.jwks import MAX_JWKS_BYTES

        if self._nursery is None or settings in self._started:
            return
        self._started.add(settings)
        cache, scope = self._jwks[settings]
        fetch = self._fetcher("jwks", client, settings.uri, settings.timeout, MAX_JWKS_BYTES)

        async def refresh() -> None:
            with scope:
                await cache.refresh_loop(fetch)

        self._nursery.start_soon(refresh)

    def _fetcher(self, kind: str, client: OutboundClient, url: str, timeout: float, max_body: int) -> Callable[[], Awaitable[bytes]]:
        """A GET of ``url`` answering the 2xx body, counted as ``kind``; raises OutboundError."""

        async def fetch() -> bytes:
            started = time.monotonic()
            try:
                response = await client.request("GET", url, headers=_JSON, timeout=timeout, max_body=max_body)
            except OutboundError as exc:
                self._count(kind, exc.reason, started)
                raise
            self._count(kind, f"{response.status // 100}xx", started)
            if not 200 <= response.status < 300:
                raise OutboundError("status", f"answered {response.status}")
            return response.body

        return fetch

    def _count(self, kind: str, result: str, started: float) -> None:
        if self.metrics is not None:
            self.metrics.auth_call(kind, result, time.monotonic() - started)

    # -- reloads --

    def follow(self, configs: Iterable[Config]) -> None:
        """Keep what the live generations' configs name; stop the refreshers of the rest
        and close the clients nothing names (after :data:`CLIENT_GRACE_SECS`)."""
        from spooky_trio.auth.oidc import discovery_url

        jwks_wanted: set[tuple[str, str | None, float, float, float]] = set()
        discovery_urls: set[str] = set()
        ca_files: set[str | None] = set()
        for config in configs:
            for pool in config.upstream.values():
                auth = pool.auth
                if auth is None:
                    continue
                jwt = auth.jwt
                if jwt is not None and jwt.jwks_uri is not None:
                    jwks_wanted.add((jwt.jwks_uri, jwt.ca_file, float(jwt.jwks_cache_secs), float(jwt.jwks_min_refresh_secs),
                                     jwt.jwks_timeout_ms / 1000))
                    ca_files.add(jwt.ca_file)
                ext = auth.external_auth
                if ext is not None:
                    ca_files.add(ext.ca_file)
                    if ext.kind == "oidc":
                        discovery_urls.add(discovery_url(ext))
        # per setting, the cache made last (a CA file rewritten in place made a new one)
        newest_jwks: dict[tuple[str, str | None, float, float, float], JwksSettings] = {}
        for settings in self._jwks:  # insertion order: the last one made is the newest
            newest_jwks[_jwks_group(settings)] = settings
        for settings in list(self._jwks):
            group = _jwks_group(settings)
            if group not in jwks_wanted or newest_jwks[group] != settings:
                _cache, scope = self._jwks.pop(settings)
                scope.cancel()
                self._started.discard(settings)
        newest_client: dict[str | None, tuple[str | None, str]] = {}
        for key in self._clients:
            newest_client[key[0]] = key
        for key in list(self._clients):
            if key[0] not in ca_files or newest_client[key[0]] != key:
                client = self._clients.pop(key)
                if self._nursery is not None:
                    self._nursery.start_soon(self._close_later, client)
        for gone in [k for k in self._discovery if k[0] not in discovery_urls or k[1] not in ca_files]:
            del self._discovery[gone]

    @staticmethod
    async def _close_later(client: OutboundClient) -> None:
        await trio.sleep(CLIENT_GRACE_SECS)
        await client.aclose()

    def jwks_caches(self) -> list[JwksCache]:
        """The JWKS caches in use (tests, the control API)."""
        return [cache for cache, _scope in self._jwks.values()]

    def snapshot(self) -> dict[str, object]:
        """For ``/admin/runtime``: the JWKS caches and discovery documents (no key material,
        URLs without credentials)."""
        now = trio.current_time()
        return {
            "jwks": [cache.snapshot(now) for cache, _scope in self._jwks.values()],
            "oidc_discovery": [cache.snapshot(now) for cache in self._discovery.values()],
        }
