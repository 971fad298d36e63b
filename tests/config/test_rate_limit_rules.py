"""``resilience.scoped_rate_limits`` (every rule of spooky-head.md section 2) and our
``rate_limit_store`` keys: each broken rule at its key path and line; what Spooky accepts
loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from spooky_trio.config import check_files
from tests.config.helpers import LISTEN, POOL, errors, issue_at, line_of, load

BASE = LISTEN + POOL


def rules(*lines: str, store: str = "") -> str:
    return BASE + "resilience:\n" + store + "  scoped_rate_limits:\n" + "".join(f"    - {line}\n" for line in lines)


OK = "{name: ok, scope: client, requests_per_sec: 1, burst: 1}"
REDIS = '  rate_limit_store: {kind: redis, url: "redis://127.0.0.1:6379/0"}\n'

# (config text, issue path, text of the line the issue must point at, message fragment)
CASES = [
    (rules("{name: ' ', scope: client, requests_per_sec: 1, burst: 1}"), "resilience.scoped_rate_limits[0].name",
     "name: ' '", "must not be empty"),
    (rules(OK, "{name: ' ok ', scope: route, requests_per_sec: 1, burst: 1}"), "resilience.scoped_rate_limits[1].name",
     "name: ' ok '", "duplicate rule name 'ok'"),
    (rules("{name: a, scope: Client, requests_per_sec: 1, burst: 1}"), "resilience.scoped_rate_limits[0].scope",
     "scope: Client", "exact spelling"),
    (rules("{name: a, scope: ip, requests_per_sec: 1, burst: 1}"), "resilience.scoped_rate_limits[0].scope", "scope: ip",
     "route, client, tenant, token"),
    (rules("{name: a, scope: client, requests_per_sec: 0, burst: 1}"), "resilience.scoped_rate_limits[0].requests_per_sec",
     "requests_per_sec: 0", "must be > 0"),
    (rules("{name: a, scope: client, requests_per_sec: 1, burst: 4294967296}"), "resilience.scoped_rate_limits[0].burst",
     "burst: 4294967296", "<= 4294967295"),
    (rules("{name: a, scope: client, requests_per_sec: 1, burst: 1, idle_ttl_secs: 0}"),
     "resilience.scoped_rate_limits[0].idle_ttl_secs", "idle_ttl_secs: 0", "must be > 0"),
    (rules("{name: a, scope: route, key: anything, requests_per_sec: 1, burst: 1}"), "resilience.scoped_rate_limits[0].key",
     "key: anything", "not allowed with scope route"),
    (rules("{name: a, scope: client, key: '', requests_per_sec: 1, burst: 1}"), "resilience.scoped_rate_limits[0].key",
     "key: ''", "invalid key"),
    (rules("{name: a, scope: token, key: bearer-token, requests_per_sec: 1, burst: 1}"),
     "resilience.scoped_rate_limits[0].key", "key: bearer-token", "invalid key"),
    (rules("{name: a, scope: tenant, requests_per_sec: 1, burst: 1}"), "resilience.scoped_rate_limits[0].key",
     "scope: tenant", "required for scope tenant"),
    (rules("{name: a, scope: tenant, key: 'cookie: ', requests_per_sec: 1, burst: 1}"),
     "resilience.scoped_rate_limits[0].key", "key: 'cookie: '", "needs a name"),
    (rules("{name: a, scope: client, requests_per_sec: 1, burst: 1, route_allowlist: [api, ' ']}"),
     "resilience.scoped_rate_limits[0].route_allowlist[1]", "route_allowlist", "must not be empty"),
    (rules("{name: a, scope: client, requests_per_sec: 1, burst: 1, store: redis}"), "resilience.scoped_rate_limits[0].store",
     "store: redis", "needs resilience.rate_limit_store.kind: redis"),
    (rules("{name: a, scope: client, requests_per_sec: 1, burst: 1, store: disk}"), "resilience.scoped_rate_limits[0].store",
     "store: disk", "memory, redis"),
    (rules(OK, store="  rate_limit_store: {kind: redis}\n"), "resilience.rate_limit_store.url", "kind: redis",
     "required when kind is redis"),
    (rules(OK, store="  rate_limit_store: {kind: etcd}\n"), "resilience.rate_limit_store.kind", "kind: etcd", "memory, redis"),
    (rules(OK, store='  rate_limit_store: {kind: redis, url: "http://r:6379"}\n'), "resilience.rate_limit_store.url",
     "url:", "redis:// or rediss://"),
    (rules(OK, store='  rate_limit_store: {kind: redis, url: "redis://r:6379/x"}\n'), "resilience.rate_limit_store.url",
     "url:", "database number"),
    (rules(OK, store='  rate_limit_store: {kind: redis, url: "redis://:pw@r:99999"}\n'), "resilience.rate_limit_store.url",
     "url:", "invalid port"),
    (rules(OK, store='  rate_limit_store: {kind: redis, url: "redis://:pw@r", password_file: /p}\n'),
     "resilience.rate_limit_store.password_file", "password_file", "one place"),
    (rules(OK, store='  rate_limit_store: {kind: redis, url: "redis://r", ca_file: /ca.pem}\n'),
     "resilience.rate_limit_store.ca_file", "ca_file", "rediss://"),
    (rules(OK, store=REDIS.replace("}", ", timeout_ms: 0}")), "resilience.rate_limit_store.timeout_ms", "timeout_ms: 0",
     "must be > 0"),
    (rules(OK, store=REDIS.replace("}", ", failure_mode: fail-open}")), "resilience.rate_limit_store.failure_mode",
     "failure_mode: fail-open", "fail_open, fail_closed, local"),
]


@pytest.mark.parametrize(("text", "path", "needle", "fragment"), CASES, ids=[f"{c[1]}:{c[3]}" for c in CASES])
def test_rule(text: str, path: str, needle: str, fragment: str) -> None:
    issue = issue_at(errors(text), path)
    assert fragment in issue.message, issue
    assert issue.line == line_of(text, needle), str(issue)


def test_the_password_is_never_in_an_error_or_a_repr() -> None:
    text = rules(OK, store='  rate_limit_store: {kind: redis, url: "redis://:hunter2@r:99999"}\n')
    assert all("hunter2" not in str(issue) for issue in errors(text))
    config = load(rules(OK, store='  rate_limit_store: {kind: redis, url: "redis://u:hunter2@r:6380/1"}\n'))
    assert "hunter2" not in repr(config) and "redis://***@r:6380/1" in repr(config.resilience.rate_limit_store)
    # the url is a Secret: alone its repr is ***, and a mistyped one is not quoted either
    assert repr(config.resilience.rate_limit_store.url) == "'***'"
    mistyped = rules(OK, store="  rate_limit_store: {kind: redis, url: [redis://:hunter2@r]}\n")
    assert all("hunter2" not in str(issue) for issue in errors(mistyped))


def test_spooky_head_example_5_and_every_default() -> None:
    config = load(rules("{name: per-ip, scope: client, requests_per_sec: 1, burst: 2}",
                        '{name: tenant, scope: tenant, key: "Header:X-Tenant", requests_per_sec: 100, burst: 100, '
                        'route_allowlist: [api]}'))
    per_ip, tenant = config.resilience.scoped_rate_limits
    assert (per_ip.key, per_ip.route_allowlist, per_ip.idle_ttl_secs, per_ip.store) == (None, [], 300, "memory")
    assert tenant.key == "Header:X-Tenant" and tenant.route_allowlist == ["api"]
    # pool names in route_allowlist are never checked to exist (Spooky accepts them)
    load(rules("{name: a, scope: route, requests_per_sec: 4294967295, burst: 4294967295, "
               "route_allowlist: [ghost, ' api ']}"))
    # every key spec Spooky accepts
    for spec in ("path", "authority", "method", "cid", "sticky-cid", "peer_ip", "client_ip", "bearer_token",
                 "HEADER:x", "cookie: s ", "query:q"):
        load(rules(f"{{name: a, scope: client, key: '{spec}', requests_per_sec: 1, burst: 1}}"))


def test_the_store_files_are_checked(tmp_path: Path) -> None:
    missing = load(rules(OK, store=f'  rate_limit_store: {{kind: redis, url: "rediss://r", password_file: {tmp_path}/none, '
                                   f'ca_file: {tmp_path}/none.pem}}\n'))
    paths = {issue.path: issue.message for issue in check_files(missing)}
    assert "No such file" in paths["resilience.rate_limit_store.password_file"]
    assert "cannot load CA certificates" in paths["resilience.rate_limit_store.ca_file"]
    (tmp_path / "empty").write_text("\n")
    empty = load(rules(OK, store=f'  rate_limit_store: {{kind: redis, url: "redis://r", password_file: {tmp_path}/empty}}\n'))
    assert "holds no password" in str(check_files(empty))
