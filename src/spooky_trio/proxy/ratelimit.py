"""The ``rate_limit`` step: Spooky's scoped rate limits, local or shared through Redis.

Rules (``resilience.scoped_rate_limits``) run in list order for the pool the route chose;
a rule applies when its ``route_allowlist`` is empty or names that pool. Its key comes
from the scope (``route``: the pool name; ``client``, ``token``, ``tenant``: the key spec,
``http/request_keys.py``), falling back to the authority, path or method when the spec
yields nothing; an empty key skips the rule. Each applicable rule takes a token from its
bucket for that key; the first rule whose bucket is empty answers ``429`` with
``Retry-After`` (Spooky's ``max(1, ceil(1 / requests_per_sec))``), the
``RateLimit``/``RateLimit-Policy`` fields and the reason ``rate_limited:<rule>``; tokens
that earlier rules took stay taken (Spooky's semantics). With ``rate_limit_headers: true``
every answer of a request the step admitted carries the fields of the applicable rule with
the fewest tokens left.

``store: memory`` rules take tokens in this process (``resilience/ratelimit.py``); runs of
consecutive ``store: redis`` rules are decided by one script call to the shared store
(``resilience/ratelimit_store.py``) under ``rate_limit_store.timeout_ms``. When the store
cannot decide (down, error, timeout) ``failure_mode`` does: ``fail_open`` admits,
``fail_closed`` answers ``503`` (reason ``rate_limit_store_unavailable``), ``local`` takes
the token from the rule's bucket in this process instead.

A generation without Redis rules gets :class:`LocalRateLimit`, a step that never waits
(called without a coroutine); one with Redis rules gets :class:`RateLimit`. A generation
without rules has no ``rate_limit`` step at all. A CONNECT tunnel (no route) is never
rate limited.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import trio

from spooky_trio.config import Config, ScopedRateLimitConfig
from spooky_trio.http.errors import ProxyError
from spooky_trio.http.request_keys import KeyReader, fallback_key, key_reader, parse_key_spec
from spooky_trio.proxy.answers import Answer
from spooky_trio.proxy.context import RequestContext, ResponseHead
from spooky_trio.resilience.ratelimit import MAX_KEY_CHARS, RuleState, bucket_key
from spooky_trio.resilience.ratelimit_store import RedisStore, StoreUnavailable

if TYPE_CHECKING:
    from spooky_trio.observability.metrics import Metrics
    from spooky_trio.proxy.chain import Chain
    from spooky_trio.resilience.ratelimit import RateLimitState

#: the time source of local buckets (seconds); tests replace it before a chain is built
clock: Callable[[], float] = trio.current_time

_DEFAULT_SPEC = {"client": "peer_ip", "token": "bearer_token"}
_FIELDS = (b"ratelimit", b"ratelimit-policy")


def _sf_string(text: str) -> str:
    """``text`` as a structured-field string (RFC 9651 3.3.3): quoted, ``\\`` and ``"``
    escaped, characters outside printable ASCII replaced by ``?``."""
    safe = "".join(c if " " <= c <= "~" else "?" for c in text)
    return '"' + safe.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Rule:
    """One rule as a generation runs it: what it applies to, how its key is read, its
    buckets (:class:`~spooky_trio.resilience.ratelimit.RuleState`, kept across reloads),
    and the header values that do not change per request."""

    __slots__ = ("name", "state", "counters", "allow", "read", "redis_prefix", "args", "rate", "retry_after",
                 "sf_name", "policy")

    def __init__(self, config: ScopedRateLimitConfig, state: RuleState, key_prefix: str) -> None:
        self.name = config.name.strip()
        self.state = state
        self.counters = state.counters
        allow = frozenset(pool.strip() for pool in config.route_allowlist)
        #: pools it applies to, None: all
        self.allow: frozenset[str] | None = allow or None
        spec = config.key if config.key is not None else _DEFAULT_SPEC.get(config.scope)
        #: None: the ``route`` scope, keyed by the pool name
        self.read: KeyReader | None = None if config.scope == "route" or spec is None else key_reader(parse_key_spec(spec))
        #: ``{key_prefix}{rule}:`` of its Redis buckets; None for a ``memory`` rule
        self.redis_prefix: bytes | None = (key_prefix + self.name + ":").encode() if config.store == "redis" else None
        #: the script's arguments for this rule: rate, burst, idle ttl (ms)
        self.args = (float(config.requests_per_sec), float(config.burst), float(config.idle_ttl_secs * 1000))
        self.rate = float(config.requests_per_sec)
        self.retry_after = str(max(1, math.ceil(1 / config.requests_per_sec))).encode()
        self.sf_name = _sf_string(self.name)
        #: ``RateLimit-Policy``: quota ``q`` (the burst) per window ``w`` (seconds to refill it)
        self.policy = f"{self.sf_name};q={config.burst};w={math.ceil(config.burst / config.requests_per_sec)}".encode()

    def key(self, ctx: RequestContext, pool: str) -> str:
        """The request's bucket key for this rule, or its digest when it is long
        (``bucket_key``); "" when the rule does not apply: not for ``pool``, or an empty key
        (counted as ``skipped``)."""
        allow = self.allow
        if allow is not None and pool not in allow:
            return ""
        read = self.read
        if read is None:
            key = pool
        else:
            request = ctx.request
            key = read(request) or fallback_key(request)
            if not key:
                self.counters.skipped += 1
                return ""
        return key if len(key) <= MAX_KEY_CHARS else bucket_key(key)

    def fields(self, balance: float) -> list[tuple[bytes, bytes]]:
        """``RateLimit`` (tokens left ``r``, seconds until one token ``t``) and
        ``RateLimit-Policy`` after a take that left ``balance``."""
        tokens = balance if balance >= 0 else balance + 1.0
        wait = 0 if tokens >= 1 else math.ceil((1.0 - tokens) / self.rate)
        limit = f"{self.sf_name};r={math.floor(tokens)};t={wait}".encode()
        return [(b"ratelimit", limit), (b"ratelimit-policy", self.policy)]

    def reject(self, balance: float, pool: str, metrics: Metrics | None) -> ProxyError:
        """The 429 of this rule (counted; the caller raises it)."""
        self.counters.limited += 1
        if metrics is not None:
            metrics.request_rate_limited(pool)
        headers = [(b"retry-after", self.retry_after), *self.fields(balance)]
        return ProxyError(429, f"rate_limited:{self.name}", "request rate limited", headers)


class _Headers:
    """The response hook of one admitted request (``rate_limit_headers: true``): the
    fields of the rule with the fewest tokens left replace any the backend sent."""

    name = "rate_limit"
    __slots__ = ("fields",)

    def __init__(self, fields: list[tuple[bytes, bytes]]) -> None:
        self.fields = fields

    async def on_request(self, ctx: RequestContext) -> Answer | None:
        return None

    async def on_response(self, ctx: RequestContext, head: ResponseHead) -> None:
        head.headers = [h for h in head.headers if h[0] not in _FIELDS] + self.fields


def build_rules(config: Config, state: RateLimitState) -> list[Rule]:
    """The rules of ``config`` with their state from ``state`` (the StateStore's)."""
    prefix = config.resilience.rate_limit_store.key_prefix
    return [Rule(rule, state.rule(rule), prefix) for rule in config.resilience.scoped_rate_limits]


class LocalRateLimit:
    """The step when every rule is ``store: memory``: never waits (module docstring)."""

    name = "rate_limit"

    def __init__(self, config: Config, rules: Sequence[Rule], metrics: Metrics | None,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.rules = tuple(rules)
        self.headers = config.resilience.rate_limit_headers
        self.metrics = metrics
        self.clock = clock

    def on_request(self, ctx: RequestContext) -> Answer | None:
        pool = ctx.route_pool
        if pool is None:
            return None
        now = self.clock()
        best: Rule | None = None
        least = math.inf
        for rule in self.rules:
            key = rule.key(ctx, pool)
            if not key:
                continue
            balance = rule.state.take(key, now)
            if balance < 0:
                raise rule.reject(balance, pool, self.metrics)
            rule.counters.allowed += 1
            if balance < least:
                best, least = rule, balance
        if self.headers and best is not None:
            ctx.add_response_filter(_Headers(best.fields(least)))
        return None


class RateLimit:
    """The step when some rules are ``store: redis`` (module docstring)."""

    name = "rate_limit"

    def __init__(self, config: Config, rules: Sequence[Rule], store: RedisStore, metrics: Metrics | None,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.rules = tuple(rules)
        self.headers = config.resilience.rate_limit_headers
        settings = config.resilience.rate_limit_store
        self.store = store
        self.timeout = settings.timeout_ms / 1000
        self.failure_mode = settings.failure_mode
        self.metrics = metrics
        self.clock = clock

    async def on_request(self, ctx: RequestContext) -> Answer | None:
        pool = ctx.route_pool
        if pool is None:
            return None
        now = self.clock()
        #: (rule with the fewest tokens left, its balance)
        best: list[tuple[Rule, float]] = []
        shared: list[tuple[Rule, str]] = []  # consecutive redis rules, decided in one call
        for rule in self.rules:
            key = rule.key(ctx, pool)
            if not key:
                continue
            if rule.redis_prefix is not None:
                shared.append((rule, key))
                continue
            if shared:
                await self._shared(shared, pool, now, best)
                shared = []
            self._local(rule, key, pool, now, best)
        if shared:
            await self._shared(shared, pool, now, best)
        if self.headers and best:
            rule, balance = best[0]
            ctx.add_response_filter(_Headers(rule.fields(balance)))
        return None

    def _local(self, rule: Rule, key: str, pool: str, now: float, best: list[tuple[Rule, float]]) -> None:
        balance = rule.state.take(key, now)
        if balance < 0:
            raise rule.reject(balance, pool, self.metrics)
        rule.counters.allowed += 1
        if not best or balance < best[0][1]:
            best[:] = [(rule, balance)]

    async def _shared(self, shared: list[tuple[Rule, str]], pool: str, now: float, best: list[tuple[Rule, float]]) -> None:
        """Decide ``shared`` (rule, key) pairs through the store; ``failure_mode`` when it cannot."""
        keys = [rule.redis_prefix + key.encode() for rule, key in shared if rule.redis_prefix is not None]
        args = [value for rule, _ in shared for value in rule.args]
        try:
            balances = await self.store.check(keys, args, self.timeout)
        except StoreUnavailable:
            self._fallback(shared, pool, now, best)
            return
        for (rule, _), milli in zip(shared, balances):
            balance = milli / 1000
            if balance < 0:
                raise rule.reject(balance, pool, self.metrics)
            rule.counters.allowed += 1
            if not best or balance < best[0][1]:
                best[:] = [(rule, balance)]

    def _fallback(self, shared: list[tuple[Rule, str]], pool: str, now: float, best: list[tuple[Rule, float]]) -> None:
        mode = self.failure_mode
        for rule, _ in shared:
            rule.counters.fallbacks[mode] += 1
        if mode == "fail_closed":
            raise ProxyError(503, "rate_limit_store_unavailable", "the rate limit store is unavailable",
                             [(b"retry-after", b"1")])
        for rule, key in shared:
            if mode == "local":
                self._local(rule, key, pool, now, best)
            else:
                rule.counters.allowed += 1


def rate_limit_step(config: Config, state: RateLimitState, metrics: Metrics | None) -> LocalRateLimit | RateLimit | None:
    """The ``rate_limit`` step of a generation's chain, or None when it has no rules."""
    if not config.resilience.scoped_rate_limits:
        return None
    rules = build_rules(config, state)
    if all(rule.redis_prefix is None for rule in rules):
        return LocalRateLimit(config, rules, metrics, clock)
    store = state.stores.store(config.resilience.rate_limit_store, metrics)
    return RateLimit(config, rules, store, metrics, clock)



def stores_of(chain: Chain) -> list[RedisStore]:
    """The shared stores ``chain``'s rate-limit step uses (the Server runs them while a
    live generation does)."""
    return [step.store for step in chain.filters if isinstance(step, RateLimit)]
