"""The authentication steps of the request chain (docs/auth.md; spooky-head.md section 1,
extensions.md sections 0 and 4), for the pool the route chose (``ctx.route_pool``).

* ``auth`` (right after ``body_limit``): removes the client's copies of the headers auth
  may set (``forward_claims`` names, the external auth allowlist), then ``api_key`` (401
  ``ApiKey``), ``jwt`` (401 ``Bearer``; scopes and roles 401, or 403 with
  ``insufficient_scope_status``) and adds the ``forward_claims`` headers. Synchronous unless
  a pool verifies with JWKS keys, where an unknown ``kid`` may wait (at most
  ``jwks_timeout_ms``) for one coalesced refetch.
* ``external_auth`` (after brownout and rate limits, before admission): kind ``http`` or
  ``oidc`` (``proxy/external_auth.py``).

A pool without ``auth`` costs one dict lookup per request; a generation without any auth
block has neither step in its chain.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from spooky_trio.auth.claims import forwarded_claims, rbac_refusal
from spooky_trio.auth.credentials import ApiKeyCheck, bearer_token
from spooky_trio.auth.external import injectable, strip_headers
from spooky_trio.auth.store import AuthStore
from spooky_trio.auth.tokens import JWKS_UNAVAILABLE, JwtVerifier, ParsedToken, TokenRefused
from spooky_trio.config.schema_auth import AuthConfig
from spooky_trio.core.generation import Generation
from spooky_trio.proxy.answers import Answer
from spooky_trio.proxy.context import RequestContext

if TYPE_CHECKING:
    from spooky_trio.observability.metrics import Metrics

_TEXT = (b"content-type", b"text/plain; charset=utf-8")
#: Spooky's answers for a refused credential (spooky-head.md section 1)
_UNAUTHORIZED = b"unauthorized\n"
_API_KEY_CHALLENGE = (b"www-authenticate", b"ApiKey")
_BEARER_CHALLENGE = (b"www-authenticate", b"Bearer")
#: RFC 6750 section 3.1, with ``insufficient_scope_status: 403``
_SCOPE_CHALLENGE = (b"www-authenticate", b'Bearer error="insufficient_scope"')


class PoolLocalAuth:
    """The ``auth`` step of one pool (module docstring), built once per generation."""

    __slots__ = ("pool", "strip", "api_key", "jwt", "scopes", "roles", "claims", "scope_status", "metrics")

    def __init__(self, pool: str, auth: AuthConfig, store: AuthStore, metrics: Metrics | None) -> None:
        self.pool = pool
        self.metrics = metrics
        strip = {header.strip().lower().encode("ascii") for header in auth.forward_claims.values()}
        if auth.external_auth is not None and auth.external_auth.kind == "http":
            strip |= injectable(auth.external_auth.response_header_allowlist)
        self.strip = frozenset(strip)
        self.api_key = ApiKeyCheck(auth.api_key.header_name, auth.api_key.keys) if auth.api_key is not None else None
        jwt = auth.jwt
        self.jwt = JwtVerifier(jwt, store.jwks_cache(jwt) if jwt.jwks_uri is not None else None) if jwt is not None else None
        self.scopes = frozenset(auth.required_scopes)
        self.roles = frozenset(auth.required_roles)
        self.claims = tuple((claim, header.strip().lower().encode("ascii")) for claim, header in auth.forward_claims.items())
        self.scope_status = auth.insufficient_scope_status

    @property
    def needed(self) -> bool:
        """Has this pool anything to do in the ``auth`` step?"""
        return bool(self.strip) or self.api_key is not None or self.jwt is not None

    def check(self, ctx: RequestContext) -> Answer | ParsedToken | None:
        """Everything that never waits: None (admitted), a refusal, or the parsed token
        whose JWKS key is not known yet (the async step waits for a refetch)."""
        request = ctx.request
        if self.strip:
            request.headers = strip_headers(request.headers, self.strip)
        if self.api_key is not None:
            refusal = self.api_key.refusal(request.headers)
            self._count("api_key", refusal or "allowed")
            if refusal is not None:
                return Answer(401, refusal, _UNAUTHORIZED, (_TEXT, _API_KEY_CHALLENGE))
        if self.jwt is None:
            return None
        token, why = bearer_token(request.headers)
        if token is None:
            return self._refused(why)
        try:
            parsed = self.jwt.parse(token)
            keys = self.jwt.keys_for(parsed)
        except TokenRefused as exc:
            return self._refused(exc.reason)
        if not keys and self.jwt.jwks is not None and not parsed.hmac:
            return parsed
        return self.finish(ctx, parsed)

    def finish(self, ctx: RequestContext, parsed: ParsedToken) -> Answer | None:
        """Verify ``parsed`` with the keys known now, then scopes, roles and claims."""
        jwt = self.jwt
        assert jwt is not None
        try:
            claims = jwt.verify(parsed, jwt.keys_for(parsed))
        except TokenRefused as exc:
            return self._refused(exc.reason)
        if jwt.jwks is not None and not parsed.hmac and self.metrics is not None and jwt.jwks.stale(trio.current_time()):
            self.metrics.jwks_stale_served()
        refusal = rbac_refusal(claims, self.scopes, self.roles)
        if refusal is not None:
            self._count("jwt", refusal)
            if self.scope_status == 403:
                return Answer(403, refusal, b"insufficient scope\n", (_TEXT, _SCOPE_CHALLENGE))
            return Answer(401, refusal, _UNAUTHORIZED, (_TEXT, _BEARER_CHALLENGE))
        if self.claims:
            ctx.request.headers.extend(forwarded_claims(claims, self.claims, self.pool))
        ctx.claims = claims
        self._count("jwt", "allowed")
        return None

    def _refused(self, reason: str) -> Answer:
        self._count("jwt", reason)
        if reason == JWKS_UNAVAILABLE:  # the keys could not be fetched: not the client's fault
            return Answer(503, reason, b"authentication keys unavailable\n", (_TEXT, (b"retry-after", b"1")))
        return Answer(401, reason, _UNAUTHORIZED, (_TEXT, _BEARER_CHALLENGE))

    def _count(self, step: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.auth_decision(self.pool, step, result)


class LocalAuth:
    """The ``auth`` step when no pool waits for JWKS keys: never blocks (a SyncFilter)."""

    name = "auth"

    def __init__(self, pools: dict[str, PoolLocalAuth]) -> None:
        self.pools = pools

    def on_request(self, ctx: RequestContext) -> Answer | None:
        pool = self.pools.get(ctx.route_pool) if ctx.route_pool is not None else None
        if pool is None:
            return None
        result = pool.check(ctx)
        assert not isinstance(result, ParsedToken)  # only pools with jwks_uri return one
        return result


class JwksLocalAuth:
    """The ``auth`` step when some pool verifies with JWKS keys: an unknown ``kid`` asks for a
    refetch and waits for it at most ``jwks_timeout_ms`` (``auth/jwks.py``)."""

    name = "auth"

    def __init__(self, pools: dict[str, PoolLocalAuth]) -> None:
        self.pools = pools

    async def on_request(self, ctx: RequestContext) -> Answer | None:
        pool = self.pools.get(ctx.route_pool) if ctx.route_pool is not None else None
        if pool is None:
            return None
        result = pool.check(ctx)
        if not isinstance(result, ParsedToken):
            return result
        assert pool.jwt is not None and pool.jwt.jwks is not None
        cache = pool.jwt.jwks
        if cache.want_refetch(trio.current_time()):
            await cache.wait_fetch(cache.settings.timeout)
        return pool.finish(ctx, result)


def local_auth_filter(generation: Generation, store: AuthStore, metrics: Metrics | None) -> LocalAuth | JwksLocalAuth | None:
    """The ``auth`` step of ``generation``, or None when no pool has anything for it."""
    pools: dict[str, PoolLocalAuth] = {}
    for name, pool in generation.config.upstream.items():
        if pool.auth is not None:
            local = PoolLocalAuth(name, pool.auth, store, metrics)
            if local.needed:
                pools[name] = local
    if not pools:
        return None
    if any(p.jwt is not None and p.jwt.jwks is not None for p in pools.values()):
        return JwksLocalAuth(pools)
    return LocalAuth(pools)
