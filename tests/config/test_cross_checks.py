"""Adaptive admission bounds and Spooky's performance cross-checks (spooky-head.md section 5).

One row per rule: a config that breaks it (the issue's key path, the line it points at, a
message fragment) and the same config at the boundary, which loads.
"""

from __future__ import annotations

import pytest

from spooky_trio.config import load_config_text
from tests.config.helpers import LISTEN, POOL, errors, issue_at, line_of

BASE = LISTEN + POOL

# (section text that breaks the rule, issue path, line needle, fragment, the same at the boundary)
RULES = [
    (
        "performance:\n  worker_threads: 2\n  reuseport: false\n",
        "performance.reuseport", "reuseport: false", "must be true when worker_threads > 1",
        "performance:\n  worker_threads: 1\n  reuseport: false\n",
    ),
    (
        "performance:\n  backend_connect_timeout_ms: 2001\n",
        "performance.backend_connect_timeout_ms", "backend_connect_timeout_ms", "<= backend_timeout_ms",
        "performance:\n  backend_connect_timeout_ms: 2000\n",
    ),
    (
        "performance:\n  backend_timeout_ms: 2001\n",
        "performance.backend_body_idle_timeout_ms", "backend_timeout_ms", ">= backend_timeout_ms",
        "performance:\n  backend_timeout_ms: 2000\n",
    ),
    (
        "performance:\n  backend_body_idle_timeout_ms: 30001\n",
        "performance.backend_body_idle_timeout_ms", "backend_body_idle_timeout_ms", "<= backend_body_total_timeout_ms",
        "performance:\n  backend_body_idle_timeout_ms: 30000\n",
    ),
    (
        "performance:\n  backend_body_total_timeout_ms: 35001\n",
        "performance.backend_total_request_timeout_ms", "backend_body_total_timeout_ms", ">= backend_body_total_timeout_ms",
        "performance:\n  backend_body_total_timeout_ms: 35000\n",
    ),
    (
        "performance:\n  quic_initial_max_stream_data: 10000001\n  max_request_body_bytes: 1000\n",
        "performance.quic_initial_max_stream_data", "quic_initial_max_stream_data", "<= quic_initial_max_data",
        "performance:\n  quic_initial_max_stream_data: 10000000\n  max_request_body_bytes: 1000\n",
    ),
    (
        "performance:\n  request_buffer_global_cap_bytes: 999999\n",
        "performance.request_buffer_global_cap_bytes", "request_buffer_global_cap_bytes", ">= max_request_body_bytes",
        "performance:\n  request_buffer_global_cap_bytes: 1000000\n",
    ),
    (
        "performance:\n  unknown_length_response_prebuffer_bytes: 104857601\n",
        "performance.unknown_length_response_prebuffer_bytes", "unknown_length_response_prebuffer_bytes",
        "<= max_response_body_bytes",
        "performance:\n  unknown_length_response_prebuffer_bytes: 104857600\n",
    ),
    (
        "performance:\n  global_inflight_limit: 32\nresilience:\n  adaptive_admission: {min_limit: 16, max_limit: 40}\n",
        "resilience.adaptive_admission.max_limit", "max_limit: 40", "<= performance.global_inflight_limit",
        "performance:\n  global_inflight_limit: 32\nresilience:\n  adaptive_admission: {min_limit: 16, max_limit: 32}\n",
    ),
    (
        "resilience:\n  adaptive_admission: {min_limit: 100, max_limit: 99}\n",
        "resilience.adaptive_admission.max_limit", "max_limit: 99", ">= min_limit",
        "resilience:\n  adaptive_admission: {min_limit: 100, max_limit: 100}\n",
    ),
    (
        "resilience:\n  adaptive_admission: {min_limit: 0}\n",
        "resilience.adaptive_admission.min_limit", "min_limit: 0", "> 0",
        "resilience:\n  adaptive_admission: {min_limit: 1}\n",
    ),
    (
        "resilience:\n  adaptive_admission: {min_limit: 1, max_limit: 0}\n",
        "resilience.adaptive_admission.max_limit", "max_limit: 0", "> 0",
        "resilience:\n  adaptive_admission: {min_limit: 1, max_limit: 1}\n",
    ),
    (
        "resilience:\n  adaptive_admission: {decrease_step: 0}\n",
        "resilience.adaptive_admission.decrease_step", "decrease_step: 0", ">= 1",
        "resilience:\n  adaptive_admission: {decrease_step: 1}\n",
    ),
    (
        "resilience:\n  adaptive_admission: {increase_step: 0}\n",
        "resilience.adaptive_admission.increase_step", "increase_step: 0", ">= 1",
        "resilience:\n  adaptive_admission: {increase_step: 1}\n",
    ),
]


@pytest.mark.parametrize(("bad", "path", "needle", "fragment", "boundary"), RULES, ids=[row[1] + ":" + row[3] for row in RULES])
def test_rule(bad: str, path: str, needle: str, fragment: str, boundary: str) -> None:
    text = BASE + bad
    issue = issue_at(errors(text), path)
    assert fragment in issue.message
    assert issue.line == line_of(text, needle)
    load_config_text(BASE + boundary)


def test_request_body_beyond_the_stream_window_loads() -> None:
    # Spooky's rule, reported only by --spooky-strict (tests/cli/test_spooky_strict.py): we
    # stream request bodies and grow the stream window as they are consumed
    config = load_config_text(BASE + "performance:\n  max_request_body_bytes: 20000000\n")
    assert config.performance.max_request_body_bytes == 20_000_000


@pytest.mark.parametrize("enabled", ["true", "false"])
def test_min_limit_above_the_global_limit_without_max_limit_is_accepted(enabled: str) -> None:
    # Spooky accepts it (the issue's report: "global_inflight_limit: 4" was rejected here)
    config = load_config_text(BASE + f"performance:\n  global_inflight_limit: 4\nresilience:\n  adaptive_admission: {{enabled: {enabled}}}\n")
    assert config.resilience.adaptive_admission.max_limit == 64  # max(4, min_limit 64)
    assert config.performance.global_inflight_limit == 4


def test_effective_max_is_max_of_global_limit_and_min_limit() -> None:
    config = load_config_text(BASE + "performance:\n  global_inflight_limit: 500\nresilience:\n  adaptive_admission: {min_limit: 10}\n")
    assert config.resilience.adaptive_admission.max_limit == 500
    config = load_config_text(BASE + "resilience:\n  adaptive_admission: {min_limit: 10, max_limit: 20}\n")
    assert config.resilience.adaptive_admission.max_limit == 20


def test_acceptance_example_7() -> None:
    # spooky-head.md: accepted (adaptive max 64; "/legacy" and "ghost" never match);
    # max_limit: 40 would be an error
    text = BASE + """\
performance: {global_inflight_limit: 32}
resilience:
  adaptive_admission: {min_limit: 64}
  route_queue: {caps: {api: 64, "/legacy": 8}}
  brownout: {core_routes: [api]}
  hedging: {enabled: true, route_allowlist: [api, ghost]}
"""
    config = load_config_text(text)
    assert config.resilience.adaptive_admission.max_limit == 64
    from spooky_trio.config import config_warnings

    assert sorted(w.message.split(",")[0] for w in config_warnings(config)) == [
        "no pool is named '/legacy'", "no pool is named 'ghost'",
    ]
    bad = text.replace("{min_limit: 64}", "{min_limit: 64, max_limit: 40}")
    messages = [i.message for i in errors(bad) if i.path == "resilience.adaptive_admission.max_limit"]
    assert any("<= performance.global_inflight_limit (40 vs 32)" in m for m in messages)


async def test_admission_with_min_limit_above_the_global_limit_still_sheds_at_the_global_limit() -> None:
    from spooky_trio.core.generation import Generation
    from spooky_trio.core.state import StateStore
    from spooky_trio.http.errors import ShedError
    from spooky_trio.proxy.admission import OverloadGuard

    config = load_config_text(BASE + "performance:\n  global_inflight_limit: 4\nresilience:\n  brownout: {enabled: false}\n")
    store = StateStore()
    generation = Generation.build(config, state=store)
    guard = OverloadGuard(store.resilience)
    for _ in range(4):
        await guard.admit(generation.config, "api")
    with pytest.raises(ShedError) as info:
        await guard.admit(generation.config, "api")
    assert info.value.response.reason == "global_inflight"
