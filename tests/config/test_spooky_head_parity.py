"""Every difference the audit of spooky-head.md found between Spooky's rules and ours, one
row each (docs/configuration.md, "Where spooky-trio differs from Spooky").

A row is a config tail and what must happen to it: Spooky accepts it and so do we (``OK``),
Spooky rejects it and so do we (``ERROR`` at a key path), or we deliberately accept what
Spooky rejects and ``check --spooky-strict`` says so (``STRICT`` at a key path). Each row
failed before its fix; the table is the regression guard of the audit.
"""

from __future__ import annotations

import typing
from pathlib import Path

import attrs
import pytest

from spooky_trio.config import ConfigError, check_files, config_warnings, load_config_text
from spooky_trio.config.portability import spooky_strict_issues
from spooky_trio.config.schema import LoadBalancingConfig, LogConfig
from spooky_trio.config.schema_auth import ExternalAuthConfig
from spooky_trio.config.schema_ratelimit import RateLimitStoreConfig, ScopedRateLimitConfig
from spooky_trio.config.spellings import SPELLINGS
from tests.config.helpers import LISTEN, POOL

BASE = LISTEN + POOL
OK, ERROR, STRICT = "ok", "error", "strict"


def rule(body: str) -> str:
    return "resilience:\n  scoped_rate_limits:\n    - {name: r, requests_per_sec: 1, burst: 1, " + body + "}\n"


def auth(body: str) -> str:
    return ("  guarded:\n    route: {path_prefix: /g}\n    backends: [{id: g, address: 'http://127.0.0.1:8081'}]\n"
            "    auth: {external_auth: {" + body + "}}\n")


def pool(name: str, address: str, extra: str = "") -> str:
    return f"  {name}:\n    route: {{path_prefix: /{name}}}\n    backends: [{{id: x, address: '{address}'}}]\n" + extra


# (spooky-head.md section, what, config tail (after LISTEN + POOL), outcome, key path, message fragment)
ROWS = [
    ("1", "external_auth.kind exact", auth("kind: Http, endpoint: 'http://a/'"), ERROR,
     "upstream.guarded.auth.external_auth.kind", "did you mean 'http'"),
    ("1", "external_auth.failure_mode exact", auth("kind: http, endpoint: 'http://a/', failure_mode: fail-open"), ERROR,
     "upstream.guarded.auth.external_auth.failure_mode", "did you mean 'fail_open'"),
    ("2", "a route rule takes no key", rule("scope: route, key: path"), ERROR,
     "resilience.scoped_rate_limits[0].key", "not allowed with scope route"),
    ("2", "a blank key of a route rule is no key", rule("scope: route, key: ' '"), OK, "", ""),
    ("2", "scope exact", rule("scope: Client"), ERROR, "resilience.scoped_rate_limits[0].scope", "did you mean 'client'"),
    ("3", "load_balancing.type: Spooky's validator does not trim",
     "load_balancing: {type: ' rr '}\n", STRICT, "load_balancing.type", "whitespace"),
    ("3", "log.level: Spooky's validator does not trim", "log: {level: ' Spooky'}\n", STRICT, "log.level", "whitespace"),
    ("5", "high_latency_ms 0", "resilience:\n  adaptive_admission: {high_latency_ms: 0}\n", OK, "", ""),
    ("5", "brownout recover 0", "resilience:\n  brownout: {recover_inflight_percent: 0}\n", OK, "", ""),
    ("5", "watchdog percentages 0",
     "resilience:\n  watchdog: {timeout_error_rate_percent: 0, overload_inflight_percent: 0}\n", OK, "", ""),
    ("5", "shutdown_drain_timeout_ms 0", "performance: {shutdown_drain_timeout_ms: 0}\n", STRICT,
     "performance.shutdown_drain_timeout_ms", "Spooky requires > 0"),
    ("5", "h2_pool_max_idle_per_backend 0", "performance: {h2_pool_max_idle_per_backend: 0}\n", STRICT,
     "performance.h2_pool_max_idle_per_backend", "Spooky requires > 0"),
    ("5", "shed_retry_after_seconds 0", "resilience:\n  route_queue: {shed_retry_after_seconds: 0}\n", STRICT,
     "resilience.route_queue.shed_retry_after_seconds", "Spooky requires > 0"),
    ("5", "watchdog drain_grace_ms 0", "resilience:\n  watchdog: {drain_grace_ms: 0}\n", STRICT,
     "resilience.watchdog.drain_grace_ms", "Spooky requires > 0"),
    ("5", "watchdog restart_cooldown_ms 0", "resilience:\n  watchdog: {restart_cooldown_ms: 0}\n", STRICT,
     "resilience.watchdog.restart_cooldown_ms", "Spooky requires > 0"),
    ("5", "health_check cooldown_ms 0",
     "  hc:\n    route: {path_prefix: /hc}\n    backends:\n      - {id: h, address: 'http://127.0.0.1:8082', "
     "health_check: {cooldown_ms: 0}}\n", STRICT, "upstream.hc.backends[0].health_check.cooldown_ms", "Spooky requires > 0"),
    ("5", "worker_threads above 1024", "performance: {worker_threads: 1025}\n", STRICT,
     "performance.worker_threads", "Spooky requires <= 1024"),
    ("5", "control_plane_threads above 1024", "performance: {control_plane_threads: 1025}\n", STRICT,
     "performance.control_plane_threads", "Spooky requires <= 1024"),
    ("5", "packet_shards_per_worker above 256", "performance: {packet_shards_per_worker: 257}\n", STRICT,
     "performance.packet_shards_per_worker", "Spooky requires <= 256"),
    ("6", "a pool without TLS backends: its tls is not checked",
     pool("plain", "http://127.0.0.1:8083", "    tls: {ca_file: ' ', ca_dir: ' '}\n"), OK, "", ""),
    ("6", "no TLS backend at all: upstream_tls is not checked", "upstream_tls: {ca_file: ' '}\n", OK, "", ""),
    ("6", "a TLS pool's own tls still is", pool("secure", "https://127.0.0.1:8443", "    tls: {ca_file: ' '}\n"), ERROR,
     "upstream.secure.tls.ca_file", "must not be empty"),
    ("6", "tracing off: its values are not checked",
     "observability:\n  tracing: {service_name: '', sample_ratio: 2.0, otlp_endpoint: collector}\n", OK, "", ""),
    ("6", "tracing on: they are", "observability:\n  tracing: {enabled: true, sample_ratio: 2.0}\n", ERROR,
     "observability.tracing.sample_ratio", "between 0.0 and 1.0"),
    ("6", "routing header not exposed: any name", "observability:\n  routing: {header_name: ' '}\n", OK, "", ""),
    ("6", "routing header exposed: not blank", "observability:\n  routing: {expose_header: true, header_name: ' '}\n",
     ERROR, "observability.routing.header_name", "must not be blank when expose_header is true"),
    ("6", "routing header exposed: any non-blank name (a warning when it is no token)",
     "observability:\n  routing: {expose_header: true, header_name: 'x route'}\n", OK, "", ""),
    ("ranges", "a disabled metrics endpoint is not checked",
     "observability:\n  metrics: {port: 0, address: metrics.internal, path: metrics, max_connections: 0}\n", OK, "", ""),
    ("ranges", "a disabled control API is not checked",
     "observability:\n  control_api: {address: 0.0.0.0, health_path: health, ready_path: health, connection_timeout_ms: 0}\n",
     OK, "", ""),
    ("ranges", "an enabled one is", "observability:\n  metrics: {enabled: true, path: metrics}\n", ERROR,
     "observability.metrics.path", "starting with '/'"),
]


@pytest.mark.parametrize(("section", "what", "tail", "outcome", "path", "fragment"), ROWS,
                         ids=[f"s{row[0]}-{row[1]}" for row in ROWS])
def test_row(section: str, what: str, tail: str, outcome: str, path: str, fragment: str) -> None:
    text = BASE + tail
    if outcome == ERROR:
        with pytest.raises(ConfigError) as info:
            load_config_text(text)
        assert any(i.path == path and fragment in i.message for i in info.value.issues), info.value.issues
        return
    config = load_config_text(text)
    strict = [i for i in spooky_strict_issues(config, text) if i.path == path and fragment in i.message]
    assert len(strict) == (1 if outcome == STRICT else 0), spooky_strict_issues(config, text)


def _literal(cls: type, name: str) -> object:
    hint = typing.get_type_hints(cls)[name]
    assert typing.get_origin(hint) is typing.Literal, (cls.__name__, name, hint)
    return hint


@pytest.mark.parametrize(
    ("cls", "name", "values"),
    [
        (ScopedRateLimitConfig, "scope", ("route", "client", "tenant", "token")),
        (ScopedRateLimitConfig, "store", ("memory", "redis")),
        (RateLimitStoreConfig, "kind", ("memory", "redis")),
        (RateLimitStoreConfig, "failure_mode", ("fail_open", "fail_closed", "local")),
        (ExternalAuthConfig, "kind", ("http", "oidc")),
        (ExternalAuthConfig, "failure_mode", ("fail_closed", "fail_open")),
    ],
)
def test_enums_are_literals_without_aliases(cls: type, name: str, values: tuple[str, ...]) -> None:
    """spooky-head.md section 3: these are exact (no alias, no other case), read by the
    loader like every other enum."""
    hint = _literal(cls, name)
    assert typing.get_args(hint) == values and hint not in SPELLINGS
    assert attrs.fields_dict(cls)[name].type != "str"


def test_the_aliased_enums_keep_their_spelling_tables() -> None:
    assert _literal(LoadBalancingConfig, "type") in SPELLINGS and _literal(LogConfig, "level") in SPELLINGS


def test_tls_files_are_read_only_for_a_policy_in_use(tmp_path: Path) -> None:
    def upstream_issues(text: str) -> set[str]:  # the listener's certificate files do not exist here
        return {issue.path for issue in check_files(load_config_text(text)) if not issue.path.startswith("listen")}

    head = f"upstream_tls: {{ca_file: {tmp_path / 'missing.pem'}}}\n" + BASE
    plain = head + pool("plain", "http://127.0.0.1:8083", f"    tls: {{ca_dir: {tmp_path / 'nodir'}}}\n")
    assert upstream_issues(plain) == set()
    secure = plain.replace("http://127.0.0.1:8083", "https://127.0.0.1:8443") + pool("bare", "127.0.0.1:8444")
    # the pool's own tls replaces upstream_tls; a bare address means https and uses upstream_tls
    assert upstream_issues(secure) == {"upstream.plain.tls.ca_dir", "upstream_tls.ca_file"}


def test_a_routing_header_name_that_is_no_token_is_a_warning() -> None:
    text = BASE + "observability:\n  routing: {enabled: true, expose_header: true, header_name: 'x route'}\n"
    (warning,) = config_warnings(load_config_text(text))
    assert warning.path == "observability.routing.header_name" and "never sent" in warning.message
    assert config_warnings(load_config_text(text.replace("x route", " X-Route "))) == []


def test_listeners_without_listen_is_reported_for_spooky() -> None:
    listeners = "listeners:\n  - port: 9443\n    tls: {cert: certs/c.pem, key: certs/k.pem}\n"
    text = listeners + POOL
    assert [i.path for i in spooky_strict_issues(load_config_text(text), text)] == ["listeners"]
    with_listen = "listen: {}\n" + text
    assert spooky_strict_issues(load_config_text(with_listen), with_listen) == []
