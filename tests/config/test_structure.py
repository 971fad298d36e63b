"""Structuring: unknown keys, strict types, several errors at once, normalization, nulls."""

from __future__ import annotations

from pathlib import Path

import pytest

from spooky_trio.config import ConfigError, ConfigIssue, load_config, load_config_text
from tests.config.helpers import LISTEN, POOL, errors, issue_at, line_of, load

BASE = LISTEN + POOL


@pytest.mark.parametrize(
    ("text", "path", "needle"),
    [
        ("colour: red\n" + BASE, "colour", "colour"),
        (BASE.replace("listen:\n", "listen:\n  adress: 1.2.3.4\n"), "listen.adress", "adress"),
        (BASE.replace("    key: certs/k.pem\n", "    key: certs/k.pem\n    ciphers: x\n"), "listen.tls.ciphers", "ciphers"),
        (BASE + "        wieght: 5\n", "upstream.api.backends[0].wieght", "wieght"),
        (BASE + "resilience:\n  hedging:\n    delay: 5\n", "resilience.hedging.delay", "delay"),
        (BASE + "source_sha256: abc\n", "source_sha256", "source_sha256"),
    ],
)
def test_unknown_keys(text: str, path: str, needle: str) -> None:
    issue = issue_at(errors(text), path)
    assert issue.message.startswith(f"unknown key {path.rsplit('.', 1)[-1]!r}")
    assert issue.line == line_of(text, needle)
    assert issue.column == line_of_col(text, needle)


def line_of_col(text: str, needle: str) -> int:
    line = text.splitlines()[line_of(text, needle) - 1]
    return line.index(needle) + 1


def test_unknown_key_suggests_the_close_name() -> None:
    issue = issue_at(errors(BASE + "        wieght: 5\n"), "upstream.api.backends[0].wieght")
    assert "did you mean 'weight'" in issue.message


@pytest.mark.parametrize(
    ("snippet", "path", "expected"),
    [
        ("performance:\n  worker_threads: 'abc'\n", "performance.worker_threads", "expected an integer, got a string"),
        ("performance:\n  worker_threads: true\n", "performance.worker_threads", "expected an integer, got a boolean"),
        ("performance:\n  worker_threads: 2.5\n", "performance.worker_threads", "expected an integer, got a number"),
        ("performance:\n  reuseport: 1\n", "performance.reuseport", "expected true or false, got an integer"),
        ("performance:\n  reuseport: 'yes'\n", "performance.reuseport", "expected true or false, got a string"),
        ("performance:\n  reuseport: yes\n", "performance.reuseport", "expected true or false, got a string"),
        ("security:\n  privileges:\n    user: 1000\n", "security.privileges.user", "expected a string, got an integer"),
        ("performance:\n  backend_dns_nameservers: 8.8.8.8\n", "performance.backend_dns_nameservers", "expected a list"),
        ("resilience:\n  route_queue:\n    caps: [1, 2]\n", "resilience.route_queue.caps", "expected a mapping, got a list"),
        ("observability: [metrics]\n", "observability", "expected a mapping, got a list"),
        ("observability:\n  tracing:\n    sample_ratio: '0.5'\n", "observability.tracing.sample_ratio", "expected a number"),
        ("log:\n  level: loud\n", "log.level", "must be one of"),
        ("log:\n  format: xml\n", "log.format", "must be one of plain, json"),
    ],
)
def test_wrong_types(snippet: str, path: str, expected: str) -> None:
    text = BASE + snippet
    issue = issue_at(errors(text), path)
    assert expected in issue.message
    assert issue.line == line_of(text, path.rsplit(".", 1)[-1].split("[")[0] + ":")


def test_float_accepts_integers() -> None:
    assert load(BASE + "observability:\n  tracing:\n    sample_ratio: 0\n").observability.tracing.sample_ratio == 0.0


def test_list_for_map_at_pool_level() -> None:
    text = LISTEN + "upstream:\n  - api\n"
    issue = issue_at(errors(text), "upstream")
    assert "expected a mapping, got a list" in issue.message
    assert issue.line == line_of(text, "upstream:")


def test_all_errors_reported_together() -> None:
    text = """\
version: 1
listen:
  port: "abc"
  tls: {cert: a.pem, key: a.key}
upstream:
  api:
    route: {path_prefix: /}
    backends:
      - id: a
        address: "ftp://x"
        weight: 0
      - id: b
        address: http://h
        weight: true
      - address: http://h2
  web:
    route: {path_prefix: /}
    backends: [{id: w, address: "http://w"}]
log:
  level: shout
performance:
  backend_connect_timeout_ms: 3000
resilience:
  brownout: {recover_inflight_percent: 95}
colour: red
"""
    issues = errors(text)
    expected = {
        "listen.port": "port: \"abc\"",
        "upstream.api.backends[0].address": "ftp://x",
        "upstream.api.backends[0].weight": "weight: 0",
        "upstream.api.backends[1].weight": "weight: true",
        "upstream.api.backends[2].id": "address: http://h2",
        "upstream.web.route": ("route: {path_prefix: /}", 2),
        "log.level": "level: shout",
        "performance.backend_connect_timeout_ms": "backend_connect_timeout_ms",
        "resilience.brownout.recover_inflight_percent": "brownout:",
        "colour": "colour",
    }
    assert sorted(i.path for i in issues) == sorted(expected)
    for path, needle in expected.items():
        needle_text, occurrence = needle if isinstance(needle, tuple) else (needle, 1)
        assert issue_at(issues, path).line == line_of(text, needle_text, occurrence), path
    lines = [i.line for i in issues]
    assert lines == sorted(lines), "issues are listed in file order"


def test_rule_on_a_value_that_failed_to_parse_is_not_reported() -> None:
    # backend_timeout_ms is invalid, so comparing connect timeout with its default would mislead
    issues = errors(BASE + "performance:\n  backend_connect_timeout_ms: 3000\n  backend_timeout_ms: 2s\n")
    assert [i.path for i in issues] == ["performance.backend_timeout_ms"]


def test_spelling_normalization() -> None:
    config = load(
        LISTEN
        + """\
upstream:
  a:
    route: {path_prefix: /a, method: post}
    load_balancing: {type: Least_Connections}
    host_policy: {mode: pass_through}
    backends: [{id: x, address: "http://x"}]
  b:
    route: {path_prefix: /b}
    load_balancing: {type: sticky_cid, key: cid}
    host_policy: {mode: rewrite, host: b.internal}
    forwarded_headers: {mode: append}
    backends: [{id: x, address: "http://x"}]
  c:
    route: {path_prefix: /c}
    load_balancing: {type: latency-aware}
    backends: [{id: x, address: "http://x"}]
resilience:
  hedging: {safe_methods: [get, options]}
  protocol: {allowed_methods: [get, Post], early_data_safe_methods: [head]}
"""
    )
    a, b, c = config.upstream.values()
    assert a.load_balancing.type == "least-connections"
    assert a.host_policy.mode == "pass-through"
    assert a.route.method == "POST"
    assert b.load_balancing.type == "sticky-cid"
    assert b.forwarded_headers.mode == "append"
    assert c.load_balancing.type == "latency-aware"
    assert config.resilience.hedging.safe_methods == ["GET", "OPTIONS"]
    assert config.resilience.protocol.allowed_methods == ["GET", "POST"]
    assert config.resilience.protocol.early_data_safe_methods == ["HEAD"]


@pytest.mark.parametrize(
    ("written", "level"),
    [
        ("silence", "off"),
        ("poltergeist", "error"),
        ("scream", "warn"),
        ("spooky", "info"),
        ("haunt", "debug"),
        ("whisper", "trace"),
        ("warning", "warn"),
        ("WARN", "warn"),
        ("debug", "debug"),
        ("off", "off"),
    ],
)
def test_log_level_aliases(written: str, level: str) -> None:
    assert load(BASE + f"log:\n  level: {written}\n").log.level == level


def test_null_means_default() -> None:
    config = load(
        BASE
        + """\
listeners: null
upstream_tls:
  ca_file: null
  ca_dir: null
  verify_certificates: null
log:
  level: null
  file: null
performance:
  global_inflight_limit: null
resilience:
  adaptive_admission:
    max_limit: null
"""
    )
    assert config.listeners == []
    assert config.upstream_tls.ca_file is None
    assert config.upstream_tls.verify_certificates is True
    assert config.log.level == "info"
    assert config.log.file.enabled is False
    assert config.performance.global_inflight_limit == 4096
    assert config.resilience.adaptive_admission.max_limit == 4096


def test_null_on_a_required_key_is_missing() -> None:
    text = BASE.replace("        address: http://127.0.0.1:8080\n", "        address: null\n")
    issue = issue_at(errors(text), "upstream.api.backends[0].address")
    assert issue.message == "required key: null is not allowed here"
    assert issue.line == line_of(text, "address: null")


def test_missing_upstream() -> None:
    issue = issue_at(errors(LISTEN), "upstream")
    assert issue.message == "required key is missing"


def test_top_level_load_balancing_fallback() -> None:
    config = load(
        LISTEN
        + """\
load_balancing:
  type: consistent_hash
  key: "header:x-tenant"
upstream:
  own:
    route: {path_prefix: /own}
    load_balancing: {type: random}
    backends: [{id: x, address: "http://x"}]
  inherited:
    route: {path_prefix: /}
    backends: [{id: x, address: "http://x"}]
"""
    )
    assert config.load_balancing is not None
    assert config.load_balancing.type == "consistent-hash"
    assert config.upstream["own"].load_balancing.type == "random"
    assert config.upstream["inherited"].load_balancing == config.load_balancing


def test_pool_order_is_file_order() -> None:
    text = LISTEN + "upstream:\n" + "".join(
        f"  {name}:\n    route: {{path_prefix: /{name}}}\n    backends: [{{id: x, address: 'http://x'}}]\n"
        for name in ("zeta", "alpha", "mid")
    )
    assert list(load(text).upstream) == ["zeta", "alpha", "mid"]


def test_empty_document() -> None:
    for text in ("", "# only a comment\n"):
        with pytest.raises(ConfigError) as info:
            load_config_text(text)
        (issue,) = info.value.issues
        assert "empty" in issue.message


def test_top_level_not_a_mapping() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text("- a\n- b\n")
    (issue,) = info.value.issues
    assert "must be a mapping" in issue.message
    assert issue.line == 1


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("listen:\n  port: [1\nupstream: {}\n", 3, "flow sequence"),
        ("a: b: c\n", 1, "invalid YAML"),
    ],
)
def test_yaml_syntax_error(text: str, line: int, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(text)
    (issue,) = info.value.issues
    assert fragment in issue.message
    assert issue.line == line
    assert issue.column is not None
    assert str(issue).startswith(f"line {line} col {issue.column}: invalid YAML")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    (issue,) = info.value.issues
    assert issue.path == "" and issue.line is None
    assert "cannot read config file" in issue.message and "nope.yaml" in issue.message
    assert "Traceback" not in str(info.value)


def test_load_config_from_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(BASE)
    config = load_config(path)
    assert config == load_config_text(BASE)
    import hashlib

    assert config.source_sha256 == hashlib.sha256(BASE.encode()).hexdigest()


def test_error_rendering() -> None:
    issue = ConfigIssue("a.b[1].c", 23, 17, "must be >= 1")
    assert str(issue) == "a.b[1].c: line 23 col 17: must be >= 1"
    assert str(ConfigIssue("a", None, None, "bad")) == "a: bad"
    error = ConfigError([issue, ConfigIssue("x", 1, 2, "y")])
    assert str(error).splitlines() == ["a.b[1].c: line 23 col 17: must be >= 1", "x: line 1 col 2: y"]


def test_config_is_frozen() -> None:
    import attrs

    config = load(BASE)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.version = 2  # type: ignore[misc]


def test_missing_required_key_keeps_siblings_checked() -> None:
    text = LISTEN + (
        "upstream:\n"
        "  api:\n"
        "    route: {path_prefix: /}\n"
        "    backends:\n"
        "      - {address: 'http://x'}\n"
        "      - {id: b, address: null, weight: 0}\n"
    )
    issues = errors(text)
    assert {i.path: i.message for i in issues} == {
        "upstream.api.backends[0].id": "required key is missing",
        "upstream.api.backends[1].address": "required key: null is not allowed here",
        "upstream.api.backends[1].weight": "must be >= 1 (got 0)",
    }
