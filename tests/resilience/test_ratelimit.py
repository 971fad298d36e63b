"""Token buckets of the scoped rate limits (resilience/ratelimit.py), driven by an explicit clock."""

from __future__ import annotations

import math
import sys

import attrs

from spooky_trio.config import ScopedRateLimitConfig
from spooky_trio.resilience.ratelimit import MAX_BUCKETS, MAX_KEY_CHARS, PRUNE_FROM, RateLimitState, RuleState, bucket_key


def test_bucket_starts_full_and_refills_continuously_up_to_burst() -> None:
    rule = RuleState("r", rate=2.0, burst=3.0, idle_ttl=300.0)
    assert [rule.take("k", 10.0) >= 0 for _ in range(4)] == [True, True, True, False]
    assert rule.take("k", 10.4) < 0  # 0.8 of a token: rejected, nothing taken
    assert math.isclose(rule.take("k", 10.5), 0.0)  # 1.0 token: admitted, 0 left
    assert rule.take("k", 10.5) < 0
    assert math.isclose(rule.take("k", 100.0), 2.0)  # refilled to burst (3), one taken
    assert rule.take("other", 100.0) == 2.0  # each key has its own bucket


def test_balance_of_a_rejection_is_tokens_minus_one() -> None:
    rule = RuleState("r", rate=4.0, burst=1.0, idle_ttl=300.0)
    assert rule.take("k", 0.0) == 0.0
    assert math.isclose(rule.take("k", 0.1), 0.4 - 1.0)  # held 0.4 tokens
    assert math.isclose(rule.tokens("k", 0.1), 0.4)


def test_idle_buckets_are_pruned_only_once_a_rule_holds_64() -> None:
    rule = RuleState("r", rate=1.0, burst=1000.0, idle_ttl=10.0)
    rule.take("old", 0.0)
    for i in range(PRUNE_FROM - 2):
        rule.take(f"k{i}", 5.0)
    # 63 buckets: no pruning, even though "old" is idle for longer than the ttl and not yet full
    assert rule.take("x", 20.0) >= 0 and "old" in rule.buckets
    assert len(rule.buckets) == PRUNE_FROM
    # 64: the next take prunes buckets idle >= 10 s ("old", idle 20 s; the k*, idle 15 s)
    rule.take("y", 20.0)
    assert set(rule.buckets) == {"x", "y"}


def test_pruning_matches_spookys_for_a_partly_spent_bucket() -> None:
    """A bucket pruned for idleness starts full again (Spooky's behaviour), one that is not
    idle long enough keeps its spent tokens."""
    rule = RuleState("r", rate=0.001, burst=5.0, idle_ttl=60.0)
    for _ in range(5):
        rule.take("k", 0.0)
    for i in range(PRUNE_FROM):
        rule.take(f"f{i}", 30.0)
    assert rule.take("k", 59.0) < 0  # idle 59 s: kept, still empty
    for i in range(PRUNE_FROM):
        rule.take(f"g{i}", 100.0)
    assert rule.take("k", 118.0) < 0  # last seen at 59 s (a rejection counts as use): idle 59 s
    assert rule.take("k", 178.0) >= 0  # idle 60 s >= idle_ttl: pruned, starts full


def test_full_buckets_are_dropped_without_changing_any_decision() -> None:
    rule = RuleState("r", rate=10.0, burst=2.0, idle_ttl=300.0)
    for i in range(1000):
        assert rule.take(f"k{i}", i * 0.01) >= 0
    # a bucket refills from 1 to 2 tokens in 0.1 s: only the last ~10 keys are not full
    assert len(rule.buckets) <= PRUNE_FROM


def test_a_million_distinct_keys_stay_within_the_bucket_cap() -> None:
    """A flood of distinct keys inside the idle ttl and before any bucket refills: the rule
    holds at most MAX_BUCKETS, evicting the least recently used (counted), and its memory
    stays bounded."""
    rule = RuleState("flood", rate=1.0, burst=100.0, idle_ttl=300.0)
    for i in range(1_000_000):
        rule.take(f"198.51.{i >> 16}.{i & 0xFFFF}", i * 1e-6)
    assert len(rule.buckets) == MAX_BUCKETS
    assert rule.counters.evictions == 1_000_000 - MAX_BUCKETS
    held = sys.getsizeof(rule.buckets) + sum(sys.getsizeof(k) + sys.getsizeof(v) + 2 * sys.getsizeof(0.5)
                                             for k, v in rule.buckets.items())
    assert held < 40 * 1024 * 1024, held  # about 350 bytes per bucket
    # the most recent keys are the ones kept, and they are still limited
    last = f"198.51.{999_999 >> 16}.{999_999 & 0xFFFF}"
    assert last in rule.buckets and math.isclose(rule.tokens(last, 1.0), 99.0, abs_tol=1e-3)


def test_long_keys_are_kept_as_a_digest() -> None:
    short = "k" * MAX_KEY_CHARS
    assert bucket_key(short) == short
    long_key = "k" * 10_000
    digest = bucket_key(long_key)
    assert digest.startswith("~") and len(digest) == 33 and digest == bucket_key(long_key)
    assert bucket_key(long_key + "x") != digest


RULE = ScopedRateLimitConfig(name="per-ip", scope="client", requests_per_sec=5, burst=10)


def test_state_survives_a_reload_only_for_an_unchanged_rule() -> None:
    state = RateLimitState()
    first = state.rule(RULE)
    first.take("k", 0.0)
    assert state.rule(attrs.evolve(RULE)) is first  # equal config (a reload that keeps it)
    changed = state.rule(attrs.evolve(RULE, burst=11))
    assert changed is not first and not changed.buckets
    assert changed.counters is first.counters  # decision counters follow the rule's name
    del first, changed
    assert state.rules() == []  # nothing uses them any more
