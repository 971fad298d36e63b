"""Token buckets of the scoped rate limits, per rule and key, in this process.

Spooky's bucket (``spooky-head.md`` section 2): ``burst`` tokens, starting full, refilled
continuously at ``requests_per_sec`` up to ``burst``; a request takes one token, and a
bucket holding less than one rejects it (nothing taken). Once a rule holds
:data:`PRUNE_FROM` buckets, buckets idle for ``idle_ttl_secs`` or more are pruned (a pruned
bucket starts full again). Time comes from the caller (``now``, seconds; the Trio clock in
production, ``MockClock`` in tests): plain synchronous code, like ``breaker.py``.

Memory stays bounded under a flood of distinct keys:

* buckets are kept in least-recently-used order, so Spooky's idle pruning is a pop from
  the front (amortized O(1), where Spooky scans every bucket), and a bucket at the front
  that has refilled to ``burst`` is dropped too: a full bucket and a missing one behave
  the same, so this changes no decision;
* a rule holds at most :data:`MAX_BUCKETS` buckets: past that the least recently used one
  is evicted (counted; its key starts full again, the only way this differs from Spooky,
  which grows without bound);
* keys longer than :data:`MAX_KEY_CHARS` are kept as a digest (:func:`bucket_key`).

:class:`RateLimitState` lives in the server's StateStore: a rule keeps its buckets across a
reload as long as its every field is unchanged (its ``identity``).
"""

from __future__ import annotations

import collections
import hashlib
import weakref

from spooky_trio.config import ResilienceConfig, ScopedRateLimitConfig
from spooky_trio.resilience.ratelimit_stores import RedisStores

#: Spooky prunes idle buckets once a rule holds this many
PRUNE_FROM = 64
#: buckets one rule holds at most in one process (about 350 bytes each, 35 MB in all)
MAX_BUCKETS = 100_000
#: keys longer than this are kept as a digest
MAX_KEY_CHARS = 128


def bucket_key(key: str) -> str:
    """``key`` as buckets store it: itself, or ``~`` + a 128-bit BLAKE2b digest when it is
    longer than :data:`MAX_KEY_CHARS` (a client cannot make one bucket cost kilobytes)."""
    if len(key) <= MAX_KEY_CHARS:
        return key
    return "~" + hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()


class RuleCounters:
    """Decisions of one rule name, kept across reloads (``spooky_rate_limit_decisions_total``)."""

    __slots__ = ("allowed", "limited", "skipped", "evictions", "fallbacks")

    def __init__(self) -> None:
        self.allowed = 0
        self.limited = 0
        #: the rule's key was empty: the rule did not apply
        self.skipped = 0
        #: buckets evicted at :data:`MAX_BUCKETS`
        self.evictions = 0
        #: failure mode -> decisions made by it while the shared store was unavailable
        self.fallbacks: collections.Counter[str] = collections.Counter()


class RuleState:
    """The buckets of one rule in this process (module docstring). For a ``store: redis``
    rule they are only the ``failure_mode: local`` stand-in."""

    __slots__ = ("name", "rate", "burst", "idle_ttl", "max_buckets", "buckets", "counters", "__weakref__")

    def __init__(self, name: str, rate: float, burst: float, idle_ttl: float, counters: RuleCounters | None = None,
                 max_buckets: int = MAX_BUCKETS) -> None:
        self.name = name
        self.rate = rate
        self.burst = burst
        self.idle_ttl = idle_ttl
        self.max_buckets = max_buckets
        #: key -> [tokens, last refill time], least recently used first
        self.buckets: collections.OrderedDict[str, list[float]] = collections.OrderedDict()
        self.counters = counters if counters is not None else RuleCounters()

    def take(self, key: str, now: float) -> float:
        """Take one token from ``key``'s bucket at ``now``. Returns the balance: the tokens
        left after the take (>= 0: admitted), or the tokens held minus one (< 0: rejected,
        nothing taken)."""
        buckets = self.buckets
        if len(buckets) >= PRUNE_FROM:
            self._prune(now)
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= self.max_buckets:
                buckets.popitem(last=False)
                self.counters.evictions += 1
            balance = self.burst - 1.0
            buckets[key] = [balance, now]
            return balance
        buckets.move_to_end(key)
        tokens = bucket[0]
        elapsed = now - bucket[1]
        if elapsed > 0:
            tokens += elapsed * self.rate
            if tokens > self.burst:
                tokens = self.burst
        bucket[1] = now
        balance = tokens - 1.0
        bucket[0] = balance if balance >= 0 else tokens
        return balance

    def _prune(self, now: float) -> None:
        """Drop buckets from the least recently used end while they are idle for
        ``idle_ttl`` or more (Spooky's pruning) or have refilled to ``burst``."""
        buckets = self.buckets
        idle_ttl, rate, burst = self.idle_ttl, self.rate, self.burst
        while buckets:
            key = next(iter(buckets))
            tokens, last = buckets[key]
            elapsed = now - last
            if elapsed < idle_ttl and tokens + elapsed * rate < burst:
                return
            del buckets[key]

    def tokens(self, key: str, now: float) -> float:
        """The tokens ``key``'s bucket holds at ``now`` (``burst`` when it has none); takes nothing."""
        bucket = self.buckets.get(key)
        if bucket is None:
            return self.burst
        return min(self.burst, bucket[0] + max(0.0, now - bucket[1]) * self.rate)


class RateLimitState:
    """Every rule's state in this process, by rule identity; kept in the StateStore.

    A rule's :class:`RuleState` lives as long as a chain of a generation uses it (a weak
    map): a reload that keeps a rule unchanged finds the same buckets, a changed rule (any
    field) gets fresh ones, a removed one is freed with the last generation using it.
    Decision counters are kept by rule name for the life of the process. The Redis stores
    the generations use are here too (:class:`~spooky_trio.resilience.ratelimit_store.RedisStores`).
    """

    def __init__(self) -> None:
        self._rules: weakref.WeakValueDictionary[tuple[object, ...], RuleState] = weakref.WeakValueDictionary()
        #: rule name -> its decision counters (names ever configured: a small set)
        self.counters: dict[str, RuleCounters] = {}
        #: the shared stores of ``store: redis`` rules (run by the Server's task tree)
        self.stores = RedisStores()

    def rule(self, config: ScopedRateLimitConfig) -> RuleState:
        """The state of the rule ``config`` (created on first use)."""
        identity = config.identity()
        state = self._rules.get(identity)
        if state is None:
            name = config.name
            counters = self.counters.get(name)
            if counters is None:
                counters = self.counters[name] = RuleCounters()
            state = RuleState(name, float(config.requests_per_sec), float(config.burst), float(config.idle_ttl_secs), counters)
            self._rules[identity] = state
        return state

    def rules(self) -> list[RuleState]:
        """The rule states in use now."""
        return list(self._rules.values())

    def snapshot(self, config: ResilienceConfig) -> dict[str, object]:
        """For ``/admin/runtime``: the rules of ``config`` (the stable generation's) with
        their decisions and buckets, the store settings and the running stores' state
        (never a password)."""
        rules: list[dict[str, object]] = []
        for rule in config.scoped_rate_limits:
            state = self.rule(rule)
            counters = state.counters
            rules.append({
                "name": rule.name.strip(), "scope": rule.scope, "key": rule.key, "requests_per_sec": rule.requests_per_sec,
                "burst": rule.burst, "idle_ttl_secs": rule.idle_ttl_secs, "route_allowlist": list(rule.route_allowlist),
                "store": rule.store, "buckets": len(state.buckets), "allowed": counters.allowed, "limited": counters.limited,
                "skipped": counters.skipped, "evictions": counters.evictions, "fallbacks": dict(counters.fallbacks),
            })
        store = config.rate_limit_store
        return {
            "rules": rules,
            "headers": config.rate_limit_headers,
            "store": {"kind": store.kind, "key_prefix": store.key_prefix, "timeout_ms": store.timeout_ms,
                      "failure_mode": store.failure_mode},
            "stores": [running.snapshot() for running in self.stores.running()],
        }
