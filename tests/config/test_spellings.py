"""Accepted spellings, with Spooky's case rules (spooky-head.md section 3), table-driven.

Every alias Spooky accepts loads and means its canonical value; every spelling Spooky
rejects (wrong case where the rule is exact, the listed near misses) is an error at its key.
"""

from __future__ import annotations

import pytest

from spooky_trio.config import ConfigError, load_config_text
from spooky_trio.http.request_keys import KeySpec, parse_key_spec
from tests.config.helpers import LISTEN, issue_at

BACKENDS = '    backends: [{id: a, address: "http://127.0.0.1:8080"}]\n'


def pool_config(body: str) -> str:
    return LISTEN + "upstream:\n  api:\n    route: {path_prefix: /}\n" + body + BACKENDS


LB_TYPES = [
    ("round-robin", "round-robin"),
    ("round_robin", "round-robin"),
    ("rr", "round-robin"),
    ("RR", "round-robin"),
    (" Round_Robin ", "round-robin"),
    ("consistent-hash", "consistent-hash"),
    ("consistent_hash", "consistent-hash"),
    ("ch", "consistent-hash"),
    ("CH", "consistent-hash"),
    ("random", "random"),
    ("RANDOM", "random"),
    ("least-connections", "least-connections"),
    ("least_connections", "least-connections"),
    ("lc", "least-connections"),
    ("Least_Connections", "least-connections"),
    ("latency-aware", "latency-aware"),
    ("latency_aware", "latency-aware"),
    ("la", "latency-aware"),
    ("sticky-cid", "sticky-cid"),
    ("sticky_cid", "sticky-cid"),
    ("cid-sticky", "sticky-cid"),
    ("cid_sticky", "sticky-cid"),
    ("CID-Sticky", "sticky-cid"),
]
LB_TYPES_REJECTED = ["roundrobin", "round robin", "r-r", "maglev", "least-conn", "sticky", "hash", "cid"]

HOST_MODES = [
    ("pass-through", "pass-through"),
    ("pass_through", "pass-through"),
    ("upstream", "upstream"),
    ("static_upstream", "upstream"),
    ("static-upstream", "upstream"),
    ("upstream-host", "upstream"),
]
HOST_MODES_REJECTED = ["Pass-Through", "PASS_THROUGH", "Upstream", "Static-Upstream", "upstream_host", "passthrough", "Rewrite"]

# (field path inside the config, YAML line that sets it, accepted spellings, rejected ones)
EXACT_ENUMS = [
    ("upstream.api.forwarded_headers.mode", "    forwarded_headers: {{mode: {}}}\n", ["overwrite", "append", "preserve"],
     ["APPEND", "Overwrite", "over-write", "over_write"]),
]

KEY_SPECS = [
    ("path", KeySpec("path")),
    ("PATH", KeySpec("path")),
    (" Authority ", KeySpec("authority")),
    ("method", KeySpec("method")),
    ("cid", KeySpec("cid")),
    ("sticky-cid", KeySpec("cid")),
    ("Sticky-CID", KeySpec("cid")),
    ("peer_ip", KeySpec("peer_ip")),
    ("client_ip", KeySpec("peer_ip")),
    ("CLIENT_IP", KeySpec("peer_ip")),
    ("bearer_token", KeySpec("bearer_token")),
    ("header:X-Tenant", KeySpec("header", "x-tenant")),
    ("Header:x-tenant", KeySpec("header", "x-tenant")),
    ("cookie:Session", KeySpec("cookie", "session")),
    ("QUERY:User_Id", KeySpec("query", "user_id")),
    (" header: x-user ", KeySpec("header", "x-user")),
]
KEY_SPECS_REJECTED = [
    ("sticky_cid", "did you mean 'sticky-cid'"),
    ("peer-ip", "did you mean 'peer_ip'"),
    ("client-ip", "did you mean 'client_ip'"),
    ("bearer-token", "did you mean 'bearer_token'"),
    ("header:", "needs a name"),
    ("cookie:   ", "needs a name"),
    ("query:", "needs a name"),
    ("body:user", "expected header:<name>"),
    ("header", "expected header:<name>"),
    ("tenant_id", "expected header:<name>"),
    ("hdr:x", "expected header:<name>"),
]


def load(text: str):  # type: ignore[no-untyped-def]
    return load_config_text(text)


def rejected(text: str, path: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config_text(text)
    return issue_at(info.value.issues, path).message


@pytest.mark.parametrize(("written", "canonical"), LB_TYPES)
def test_load_balancing_type_aliases(written: str, canonical: str) -> None:
    config = load(pool_config(f"    load_balancing: {{type: '{written}'}}\n"))
    assert config.upstream["api"].load_balancing.type == canonical
    top = load(LISTEN + f"load_balancing: {{type: '{written}'}}\n" + "upstream:\n  api:\n    route: {path_prefix: /}\n" + BACKENDS)
    assert top.upstream["api"].load_balancing.type == canonical


@pytest.mark.parametrize("written", LB_TYPES_REJECTED)
def test_load_balancing_type_rejects_other_spellings(written: str) -> None:
    message = rejected(pool_config(f"    load_balancing: {{type: '{written}'}}\n"), "upstream.api.load_balancing.type")
    assert "round-robin (or round_robin, rr)" in message and "any case" in message


@pytest.mark.parametrize(("written", "canonical"), HOST_MODES)
def test_host_policy_mode_aliases(written: str, canonical: str) -> None:
    config = load(pool_config(f"    host_policy: {{mode: {written}}}\n"))
    assert config.upstream["api"].host_policy.mode == canonical


def test_host_policy_rewrite() -> None:
    config = load(pool_config("    host_policy: {mode: rewrite, host: web.internal}\n"))
    assert config.upstream["api"].host_policy.mode == "rewrite"


@pytest.mark.parametrize("written", HOST_MODES_REJECTED)
def test_host_policy_mode_is_exact_case(written: str) -> None:
    message = rejected(pool_config(f"    host_policy: {{mode: {written}, host: h}}\n"), "upstream.api.host_policy.mode")
    assert "pass-through (or pass_through)" in message and "any case" not in message


@pytest.mark.parametrize(
    ("path", "line", "written", "ok"),
    [(p, line, w, True) for p, line, good, _ in EXACT_ENUMS for w in good]
    + [(p, line, w, False) for p, line, _, bad in EXACT_ENUMS for w in bad],
)
def test_exact_enums(path: str, line: str, written: str, ok: bool) -> None:
    text = pool_config(line.format(written))
    if ok:
        assert load(text).upstream["api"].forwarded_headers.mode == written
    else:
        assert "must be one of overwrite, append, preserve" in rejected(text, path)


@pytest.mark.parametrize(
    ("text", "path"),
    [
        (LISTEN + "log: {format: JSON}\n", "log.format"),
        (LISTEN + "log: {format: Plain}\n", "log.format"),
        (LISTEN.replace("listen:\n", "listen:\n  protocol: HTTP3\n"), "listen.protocol"),
    ],
)
def test_other_enums_have_no_aliases(text: str, path: str) -> None:
    text += "upstream:\n  api:\n    route: {path_prefix: /}\n" + BACKENDS
    rejected(text, path)


@pytest.mark.parametrize(("written", "spec"), KEY_SPECS)
def test_key_specs(written: str, spec: KeySpec) -> None:
    assert parse_key_spec(written) == spec
    # accepted for every balancing type, as Spooky checks the key whatever the type
    for kind in ("consistent-hash", "sticky-cid", "round-robin"):
        config = load(pool_config(f"    load_balancing: {{type: {kind}, key: '{written}'}}\n"))
        assert config.upstream["api"].load_balancing.key == written  # kept as written


@pytest.mark.parametrize(("written", "fragment"), KEY_SPECS_REJECTED)
def test_key_specs_rejected_for_any_type(written: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_key_spec(written)
    for kind in ("consistent-hash", "random"):
        message = rejected(pool_config(f"    load_balancing: {{type: {kind}, key: '{written}'}}\n"), "upstream.api.load_balancing.key")
        assert fragment in message


def test_top_level_load_balancing_is_copied_whole() -> None:
    # spooky-head.md acceptance example 6
    config = load(
        LISTEN
        + """\
load_balancing: {type: CH, key: "cookie:Session"}
upstream:
  a: {route: {host: a.example}, load_balancing: {type: cid_sticky}, backends: [{id: a1, address: "http://10.0.0.1:80"}]}
  b: {route: {host: b.example}, host_policy: {mode: static-upstream}, backends: [{id: b1, address: "http://10.0.0.2:80"}]}
"""
    )
    a, b = config.upstream["a"], config.upstream["b"]
    assert (a.load_balancing.type, a.load_balancing.key) == ("sticky-cid", None)  # its own block, whole
    assert (b.load_balancing.type, b.load_balancing.key) == ("consistent-hash", "cookie:Session")
    assert b.host_policy.mode == "upstream"
