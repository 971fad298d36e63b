"""External auth of kind ``oidc``: token introspection (RFC 7662) after OIDC discovery
(spooky-head.md section 1, extensions.md section 4).

Per request: the bearer token (401 without one), the introspection endpoint from the
discovery document (:class:`DiscoveryCache`: fetched by a task of the
:class:`~spooky_trio.auth.store.AuthStore`, cached ``discovery_cache_secs``, the last good
document kept while a refresh fails), then the introspection POST from the request's task.
``timeout_ms`` bounds both steps together. An active answer that passed every check may be
reused for ``introspection_cache_secs`` (ext; default 0: never, Spooky's behaviour); an
inactive or refused one is never cached.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode, urlsplit

import attrs
import trio

from spooky_trio.auth.credentials import MALFORMED, MISSING, bearer_token
from spooky_trio.auth.external import DENY, ERROR, TIMEOUT, Verdict, status_class, subrequest_headers
from spooky_trio.auth.urls import redact_url
from spooky_trio.auth.outbound import OutboundClient, OutboundError, OutboundTimeout
from spooky_trio.config.address import is_loopback
from spooky_trio.config.schema_auth import ExternalAuthConfig
from spooky_trio.http.messages import DownstreamRequest, Headers

log = logging.getLogger("spooky.auth")

MAX_DISCOVERY_BYTES = 256 * 1024
MAX_INTROSPECTION_BYTES = 64 * 1024
#: after a failed discovery fetch, the next one starts no sooner than this (seconds)
DISCOVERY_RETRY_SECS = 1.0
#: introspection answers kept at most (oldest dropped first)
INTROSPECTION_CACHE_ENTRIES = 10_000

_BEARER = (b"www-authenticate", b"Bearer")
_TEXT = (b"content-type", b"text/plain; charset=utf-8")


def discovery_url(config: ExternalAuthConfig) -> str:
    """``discovery_url``, else ``issuer_url`` minus a trailing ``/`` plus the well-known path."""
    if config.discovery_url is not None and config.discovery_url.strip():
        return config.discovery_url.strip()
    assert config.issuer_url is not None
    return config.issuer_url.strip().rstrip("/") + "/.well-known/openid-configuration"


def introspection_endpoint_of(document: bytes) -> str:
    """The ``introspection_endpoint`` of a discovery document: https, or http to a loopback
    host; raises ``ValueError`` saying why not."""
    try:
        parsed: object = json.loads(document)
    except (ValueError, RecursionError):
        raise ValueError("the discovery document is not JSON") from None
    endpoint = parsed.get("introspection_endpoint") if isinstance(parsed, dict) else None
    if not isinstance(endpoint, str):
        raise ValueError("the discovery document has no introspection_endpoint")
    try:
        parts = urlsplit(endpoint)
        host = parts.hostname or ""
    except ValueError:
        raise ValueError("the introspection_endpoint is not a URL") from None
    if not (parts.scheme == "https" and host) and not (parts.scheme == "http" and is_loopback(host)):
        raise ValueError(f"introspection_endpoint {redact_url(endpoint)} is not https (or http to a loopback host)")
    return endpoint


class DiscoveryCache:
    """The introspection endpoint of one discovery URL (module docstring). ``cache_secs`` 0
    means every request waits for a fetch of its own (coalesced with concurrent ones)."""

    def __init__(self, url: str, cache_secs: float) -> None:
        self.url = url
        self.cache_secs = cache_secs
        self.endpoint: str | None = None
        self.fetched_at: float | None = None
        self.last_attempt: float | None = None
        self.last_error: str | None = None
        self.pending = False
        self.fetches = 0
        self.failures = 0
        #: the fetch the store's task runs (set by the store that made the cache)
        self.fetch: Callable[[], Awaitable[bytes]] | None = None
        self._done = trio.Event()

    def usable(self, since: float) -> bool:
        """Is there an endpoint a request that arrived at ``since`` may use? With caching on,
        the last good one (fresh, or stale while a refresh runs or fails); with
        ``cache_secs`` 0, only one fetched after the request arrived."""
        if self.endpoint is None or self.fetched_at is None:
            return False
        return self.cache_secs > 0 or self.fetched_at >= since

    def should_fetch(self, now: float) -> bool:
        """Start a fetch now? Not while one is underway, nor while the document is fresh,
        nor within :data:`DISCOVERY_RETRY_SECS` of the last attempt after a failure."""
        if self.pending:
            return False
        if self.fetched_at is not None and self.endpoint is not None and now < self.fetched_at + self.cache_secs:
            return False
        if self.last_error is not None and self.last_attempt is not None and now - self.last_attempt < DISCOVERY_RETRY_SECS:
            return False
        self.pending = True
        return True

    async def fetch_once(self, fetch: Callable[[], Awaitable[bytes]]) -> None:
        """One fetch (its own deadline inside ``fetch``); run by the store's nursery."""
        self.pending = True
        self.fetches += 1
        self.last_attempt = trio.current_time()
        try:
            self.endpoint = introspection_endpoint_of(await fetch())
            self.fetched_at, self.last_error = trio.current_time(), None
        except (ValueError, OutboundError) as exc:
            self.failures += 1
            self.last_error = str(exc)
            log.warning("OIDC discovery %s failed: %s%s", redact_url(self.url), exc,
                        "; keeping the last good document" if self.endpoint else "")
        finally:
            self.pending = False
            done, self._done = self._done, trio.Event()
            done.set()

    def fail(self, message: str) -> None:
        """A fetch could not even start (``message`` says why)."""
        self.pending = False
        self.failures += 1
        self.last_error = message
        self.last_attempt = trio.current_time()

    async def wait(self, timeout: float) -> None:
        """Wait for the fetch underway, at most ``timeout``."""
        if self.pending:
            done = self._done
            with trio.move_on_after(max(0.0, timeout)):
                await done.wait()

    def snapshot(self, now: float) -> dict[str, object]:
        return {"url": redact_url(self.url), "introspection_endpoint": None if self.endpoint is None else redact_url(self.endpoint),
                "age_seconds": None if self.fetched_at is None else round(now - self.fetched_at, 3),
                "fetches": self.fetches, "failures": self.failures, "last_error": self.last_error}


class IntrospectionCache:
    """Active, accepted introspection answers by token digest, each until the earlier of
    ``ttl`` seconds (Trio clock) and the token's ``exp`` (wall clock); bounded."""

    def __init__(self, ttl: float, max_entries: int = INTROSPECTION_CACHE_ENTRIES) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: collections.OrderedDict[bytes, tuple[float, float | None]] = collections.OrderedDict()

    def hit(self, digest: bytes, now: float, wall: float) -> bool:
        entry = self._entries.get(digest)
        if entry is None:
            return False
        until, exp = entry
        if now >= until or (exp is not None and wall >= exp):
            del self._entries[digest]
            return False
        return True

    def store(self, digest: bytes, now: float, exp: float | None) -> None:
        self._entries[digest] = (now + self.ttl, exp)
        self._entries.move_to_end(digest)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def _deny(status: int, reason: str, body: bytes, *, bearer: bool = False) -> Verdict:
    headers: Headers = [_TEXT, _BEARER] if bearer else [_TEXT]
    return Verdict(DENY, status, headers, body, reason=reason)


#: runs a discovery fetch in the store's nursery (never in the request's task)
Spawn = Callable[[DiscoveryCache], None]


class OidcIntrospection:
    """``external_auth`` of kind ``oidc`` for one pool, built once per generation."""

    def __init__(self, config: ExternalAuthConfig, client: OutboundClient, discovery: DiscoveryCache, spawn: Spawn,
                 client_secret: str | None) -> None:
        assert config.client_id is not None
        self.timeout = config.timeout_ms / 1000
        self.client = client
        self.discovery = discovery
        self.spawn = spawn
        self.fail_open = config.fail_open
        self.issuer = config.issuer_url.strip() if config.issuer_url and config.issuer_url.strip() else None
        self.audience = config.audience
        self.scopes = frozenset(config.scopes or ())
        self.form = [("client_id", config.client_id)]
        if client_secret is not None:
            self.form.append(("client_secret", client_secret))
        if config.audience is not None:
            self.form.append(("audience", config.audience))
        self.config_headers: Headers = [(h.name.strip().lower().encode("ascii"), h.value.encode("utf-8")) for h in config.request_headers]
        ttl = config.introspection_cache_secs or 0
        self.cache = IntrospectionCache(ttl) if ttl > 0 else None

    async def check(self, request: DownstreamRequest, pool: str) -> Verdict:
        """Introspect the request's bearer token, discovery and introspection together
        within ``timeout_ms``."""
        token, why = bearer_token(request.headers)
        if token is None:
            if why == MISSING:
                return _deny(401, MISSING, b"missing bearer token\n", bearer=True)
            return _deny(401, MALFORMED, b"invalid bearer token\n", bearer=True)
        digest = hashlib.sha256(token.encode("ascii")).digest()
        if self.cache is not None and self.cache.hit(digest, trio.current_time(), time.time()):
            return Verdict("allow", 200)
        started = trio.current_time()
        deadline = started + self.timeout
        endpoint = await self._endpoint(started, deadline)
        if isinstance(endpoint, Verdict):
            return endpoint
        headers = [(n, v) for n, v in subrequest_headers(request, self.config_headers, pool) if n != b"content-type"]
        headers.append((b"content-type", b"application/x-www-form-urlencoded"))
        headers.append((b"accept", b"application/json"))
        body = urlencode([("token", token), *self.form]).encode("ascii")
        try:
            response = await self.client.request("POST", endpoint, headers=headers, content=body,
                                                 timeout=max(0.0, deadline - trio.current_time()), max_body=MAX_INTROSPECTION_BYTES)
        except OutboundError as exc:
            kind = TIMEOUT if isinstance(exc, OutboundTimeout) else ERROR
            return Verdict(kind, detail=f"introspection: {exc.reason}: {exc}", called=True, seconds=trio.current_time() - started,
                           call_result=exc.reason)
        verdict, exp = self._judge(response.status, response.body)
        if verdict.kind == "allow" and self.cache is not None:
            self.cache.store(digest, trio.current_time(), exp)
        return attrs.evolve(verdict, called=True, seconds=response.elapsed, call_result=status_class(response.status))

    async def _endpoint(self, started: float, deadline: float) -> str | Verdict:
        """The introspection endpoint, or the verdict when discovery failed in time."""
        discovery = self.discovery
        if discovery.should_fetch(started):
            self.spawn(discovery)  # a stale document is still used meanwhile (cache on)
        if not discovery.usable(started):
            await discovery.wait(deadline - trio.current_time())
        now = trio.current_time()
        if discovery.endpoint is not None and discovery.usable(started):
            return discovery.endpoint
        if discovery.pending or now >= deadline:
            return Verdict(TIMEOUT, detail="OIDC discovery did not finish within timeout_ms")
        return Verdict(ERROR, detail=f"OIDC discovery: {discovery.last_error or 'no document'}")

    def _judge(self, status: int, body: bytes) -> tuple[Verdict, float | None]:
        """An introspection answer as Spooky reads it; the ``exp`` of an accepted one."""
        if 400 <= status < 500:
            return _deny(403, "oidc_rejected", b"oidc token rejected\n"), None
        if not 200 <= status < 300:
            return Verdict(ERROR, status, detail=f"introspection answered {status}"), None
        try:
            answer: object = json.loads(body)
        except (ValueError, RecursionError):
            return Verdict(ERROR, status, detail="the introspection answer is not JSON"), None
        if not isinstance(answer, dict):
            return Verdict(ERROR, status, detail="the introspection answer is not a JSON object"), None
        if answer.get("active") is not True:
            return _deny(403, "oidc_inactive", b"inactive oidc token\n"), None
        # iss and aud are optional in RFC 7662: checked when the answer has them (an IdP that
        # omits them is trusted as the issuer the discovery named; docs/auth.md)
        iss = answer.get("iss")
        if self.issuer is not None and iss is not None and (not isinstance(iss, str) or iss.rstrip("/") != self.issuer.rstrip("/")):
            return _deny(403, "oidc_issuer", b"unexpected oidc issuer\n"), None
        aud = answer.get("aud")
        if self.audience is not None and aud is not None and not (aud == self.audience or (isinstance(aud, list) and self.audience in aud)):
            return _deny(403, "oidc_audience", b"unexpected oidc audience\n"), None
        if self.scopes:
            scope = answer.get("scope")
            granted = set(scope.split()) if isinstance(scope, str) else set()
            if not self.scopes <= granted:
                return _deny(403, "oidc_scope", b"missing oidc scopes\n"), None
        exp = answer.get("exp")
        return Verdict("allow", status), float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None
