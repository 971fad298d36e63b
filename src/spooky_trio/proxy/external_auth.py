"""The ``external_auth`` step of the request chain (docs/auth.md; spooky-head.md section 1):
kind ``http`` (``auth/external.py``) and ``oidc`` (``auth/oidc.py``) for the pool the route
chose, on every listener (Spooky skips it on its TCP listener; we never do).

An *error* (5xx, 3xx without ``Location``, transport failure, a body over 64 KiB) answers
``503 external auth unavailable``, a *timeout* ``504 external auth timeout``; with
``failure_mode: fail_open`` both admit the request unchanged (the client's copies of the
allowlisted headers are gone all the same: the ``auth`` step removed them). A circuit
breaker per pool and generation (``resilience/breaker.py``: 5 failed calls in a row open it
for a second, then one probe) turns a dead service into an immediate *error* instead of a
wait of ``timeout_ms`` per request.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

import trio

from spooky_trio.auth.external import ALLOW, DENY, TIMEOUT, HttpExternalAuth, Verdict, strip_headers
from spooky_trio.auth.urls import redact_url
from spooky_trio.auth.oidc import OidcIntrospection, discovery_url
from spooky_trio.auth.store import AuthStore
from spooky_trio.config import CircuitBreakerConfig
from spooky_trio.config.files import read_secret_file
from spooky_trio.config.schema_auth import ExternalAuthConfig
from spooky_trio.core.generation import Generation
from spooky_trio.http.messages import DownstreamRequest
from spooky_trio.proxy.answers import Answer
from spooky_trio.proxy.context import RequestContext
from spooky_trio.resilience.breaker import CircuitBreaker

if TYPE_CHECKING:
    from spooky_trio.observability.metrics import Metrics

log = logging.getLogger("spooky.auth")

_TEXT = (b"content-type", b"text/plain; charset=utf-8")
#: the breaker every external auth pool uses (module docstring)
BREAKER = CircuitBreakerConfig(enabled=True, failure_threshold=5, open_ms=1000, half_open_max_probes=1)
#: an auth service failure is logged at most this often per pool (seconds)
_LOG_EVERY = 5.0


class Checker(Protocol):
    """``HttpExternalAuth`` or ``OidcIntrospection``."""

    async def check(self, request: DownstreamRequest, pool: str) -> Verdict: ...


class PoolExternalAuth:
    """``external_auth`` of one pool, built once per generation."""

    def __init__(self, pool: str, config: ExternalAuthConfig, checker: Checker, allowlist: frozenset[bytes], target: str,
                 metrics: Metrics | None) -> None:
        self.pool = pool
        self.checker = checker
        self.step = "external_http" if config.kind == "http" else "oidc"
        #: the outbound call's kind in ``spooky_auth_outbound_calls_total``
        self.call_kind = "external_http" if config.kind == "http" else "oidc_introspection"
        self.fail_open = config.fail_open
        self.allowlist = allowlist
        #: the endpoint or discovery URL as logs show it
        self.target = redact_url(target)
        self.metrics = metrics
        self.breaker = CircuitBreaker()
        self._logged_at = -_LOG_EVERY
        self._suppressed = 0

    async def check(self, ctx: RequestContext) -> Answer | None:
        breaker_open = not self.breaker.permits(trio.current_time(), BREAKER)
        if breaker_open:
            verdict = Verdict("error", detail="circuit breaker open (the last calls failed)")
        else:
            probe = self.breaker.begin()
            verdict = await self.checker.check(ctx.request, self.pool)
            if not verdict.called:
                self.breaker.abandon(probe)
            elif verdict.kind in (ALLOW, DENY):
                self.breaker.success(probe)
            else:
                self.breaker.failure(probe, trio.current_time(), BREAKER)
            if verdict.called and self.metrics is not None:
                self.metrics.auth_call(self.call_kind, verdict.call_result, verdict.seconds)
        if verdict.kind == ALLOW:
            if verdict.inject:
                ctx.request.headers = [*strip_headers(ctx.request.headers, self.allowlist), *verdict.inject]
            self._count("allowed")
            return None
        if verdict.kind == DENY:
            reason = verdict.reason or ("ext_auth_redirect" if verdict.status < 400 else "ext_auth_denied")
            self._count(reason)
            return Answer(verdict.status, reason, verdict.body, tuple(verdict.headers))
        self._log_failure(verdict)
        if self.fail_open:
            self._count("fail_open")
            return None
        if verdict.kind == TIMEOUT:
            self._count("ext_auth_timeout")
            return Answer(504, "ext_auth_timeout", b"external auth timeout\n", (_TEXT,), rejection=False)
        reason = "ext_auth_breaker_open" if breaker_open else "ext_auth_error"
        self._count(reason)
        return Answer(503, reason, b"external auth unavailable\n", (_TEXT,), rejection=False)

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.auth_decision(self.pool, self.step, result)

    def _log_failure(self, verdict: Verdict) -> None:
        now = trio.current_time()
        if now - self._logged_at < _LOG_EVERY:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more since the last report)" if self._suppressed else ""
        log.warning("pool %s: external auth %s %s: %s%s; %s", self.pool, self.target, verdict.kind, verdict.detail, more,
                    "admitting (fail_open)" if self.fail_open else "refusing (fail_closed)")
        self._logged_at, self._suppressed = now, 0


class ExternalAuth:
    """The ``external_auth`` step (module docstring)."""

    name = "external_auth"

    def __init__(self, pools: dict[str, PoolExternalAuth]) -> None:
        self.pools = pools

    async def on_request(self, ctx: RequestContext) -> Answer | None:
        pool = self.pools.get(ctx.route_pool) if ctx.route_pool is not None else None
        if pool is None:
            return None
        return await pool.check(ctx)


def external_auth_filter(generation: Generation, store: AuthStore, metrics: Metrics | None) -> ExternalAuth | None:
    """The ``external_auth`` step of ``generation``, or None when no pool has one. Reads the
    CA bundles and client secret files now (a reload re-reads them); raises ``OSError``,
    ``ssl.SSLError`` or ``ValueError`` for a file that cannot be used."""
    pools: dict[str, PoolExternalAuth] = {}
    for name, pool in generation.config.upstream.items():
        ext = pool.auth.external_auth if pool.auth is not None else None
        if ext is None:
            continue
        checker: Checker
        if ext.kind == "http":
            assert ext.endpoint is not None
            client, _digest = store.client(ext.ca_file)
            http = HttpExternalAuth(ext, client)
            checker, allowlist, target = http, http.allowlist, ext.endpoint
        else:
            target = discovery_url(ext)
            discovery, client = store.discovery(ext, target)
            secret = read_secret_file(ext.client_secret_file) if ext.client_secret_file is not None else ext.client_secret
            checker, allowlist = OidcIntrospection(ext, client, discovery, store.spawn_discovery, secret), frozenset()
        pools[name] = PoolExternalAuth(name, ext, checker, allowlist, target, metrics)
    return ExternalAuth(pools) if pools else None
