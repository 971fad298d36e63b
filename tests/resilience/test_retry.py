"""Retry safety classification and the retry budget."""

from __future__ import annotations

import trio

from spooky_trio.config.schema_runtime import RetryBudgetConfig
from spooky_trio.http.messages import RequestBodyError
from spooky_trio.resilience.retry import RetryBudget, RetryBudgets, retry_reason
from spooky_trio.upstream.errors import UpstreamConnectError, UpstreamError, UpstreamProtocolError, UpstreamTimeout, UpstreamTLSError


def test_connect_failures_are_always_safe() -> None:
    assert retry_reason(UpstreamConnectError("refused"), replayable=False) == ("connect_failed", None)
    assert retry_reason(UpstreamTLSError("bad cert"), replayable=False) == ("tls_failed", None)


def test_failures_after_sending_need_a_replayable_request() -> None:
    assert retry_reason(UpstreamTimeout("slow"), replayable=True) == ("response_timeout", None)
    assert retry_reason(UpstreamProtocolError("reset"), replayable=True) == ("protocol_error", None)
    assert retry_reason(UpstreamTimeout("slow"), replayable=False) == (None, "not_replayable")
    assert retry_reason(UpstreamProtocolError("reset"), replayable=False) == (None, "not_replayable")


def test_non_backend_failures_are_not_candidates() -> None:
    assert retry_reason(UpstreamError("stall", reason="body_timeout"), replayable=True) == (None, None)
    assert retry_reason(RequestBodyError("client reset"), replayable=True) == (None, None)
    assert retry_reason(trio.TooSlowError(), replayable=True) == (None, None)
    assert retry_reason(trio.BrokenResourceError(), replayable=True) == (None, None)


def test_budget_starts_full_earns_ratio_per_primary_and_is_capped() -> None:
    b = RetryBudget(20)  # 20 retries per 100 primaries; starts with what 100 primaries earn
    assert sum(b.try_withdraw(20) for _ in range(25)) == 20
    assert b.denied == 5
    for _ in range(4):
        b.deposit(20)
    assert not b.try_withdraw(20)  # 0.8 retries earned
    b.deposit(20)
    assert b.try_withdraw(20)  # the fifth primary completes one retry
    for _ in range(10_000):
        b.deposit(20)
    assert b.credit == 2000  # capped at 20 retries


def test_zero_ratio_means_no_retries() -> None:
    b = RetryBudget(0)
    b.deposit(0)
    assert not b.try_withdraw(0)


def test_reload_to_a_lower_ratio_caps_the_credit() -> None:
    b = RetryBudget(50)
    b.deposit(5)
    assert b.ratio == 5 and b.credit == 500


def test_per_route_budgets_are_keyed_by_pool_name() -> None:
    cfg = RetryBudgetConfig(ratio_percent=10, per_route_ratio_percent={"api": 50, "slow": 0, "/web": 90})
    budgets = RetryBudgets()
    g, ratio = budgets.for_pool("web", cfg)  # "/web" is not a pool name: the global budget
    assert ratio == 10 and g is budgets.global_budget
    api, ratio = budgets.for_pool("api", cfg)
    assert ratio == 50 and api is budgets.routes["api"]
    slow, ratio = budgets.for_pool("slow", cfg)
    assert ratio == 0 and not slow.try_withdraw(ratio)
    assert budgets.for_pool("api", cfg)[0] is api  # the same budget every time
    assert budgets.for_pool("API", cfg)[0] is g  # names are exact
