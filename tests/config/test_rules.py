"""Range and cross-field rules: each broken rule is reported at its key path and line."""

from __future__ import annotations

import pytest

from tests.config.helpers import LISTEN, POOL, errors, issue_at, line_of

BASE = LISTEN + POOL


def pool(body: str, name: str = "api") -> str:
    """A config whose only pool is ``name`` with the given (4-space indented) body."""
    return LISTEN + f"upstream:\n  {name}:\n" + body


BACKEND = "    backends:\n      - id: a\n        address: http://127.0.0.1:8080\n"

# (config text, issue path, text of the line the issue must point at, message fragment)
CASES = [
    ("version: 2\n" + BASE, "version", "version: 2", "unsupported version"),
    (pool("    route:\n      path_prefix: /\n" + BACKEND, name='"@connect"'), 'upstream["@connect"]', '"@connect":', "reserved"),
    (BASE.replace("listen:\n", "listen:\n  protocol: http2\n"), "listen.protocol", "protocol: http2", "http3"),
    (BASE.replace("listen:\n", "listen:\n  address: example.com\n"), "listen.address", "address: example", "IPv4 or IPv6"),
    (BASE.replace("listen:\n", "listen:\n  port: 0\n"), "listen.port", "port: 0", "65535"),
    (BASE.replace("listen:\n", "listen:\n  port: 70000\n"), "listen.port", "port: 70000", "65535"),
    (BASE.replace("    key: certs/k.pem\n", ""), "listen.tls.cert", "cert: certs/c.pem", "both or neither"),
    (BASE.replace("    cert: certs/c.pem\n", ""), "listen.tls.key", "key: certs/k.pem", "both or neither"),
    (
        BASE.replace("listen:\n", "listen:\n  port: 1\n").replace("    cert: certs/c.pem\n    key: certs/k.pem\n", "    {}\n"),
        "listen.tls",
        "tls:",
        "needs a certificate",
    ),
    (
        BASE.replace("    key: certs/k.pem\n", "    key: certs/k.pem\n    client_auth:\n      enabled: true\n"),
        "listen.tls.client_auth.ca_file",
        "enabled: true",
        "required when",
    ),
    (
        BASE.replace(
            "    key: certs/k.pem\n",
            "    key: certs/k.pem\n    certificates:\n      - {server_name: a.example.com, cert: a, key: b}\n"
            "      - {server_name: A.example.com, cert: a, key: b}\n",
        ),
        "listen.tls.certificates[1].server_name",
        "A.example.com",
        "duplicate server_name",
    ),
    (
        BASE.replace(
            "    key: certs/k.pem\n",
            "    key: certs/k.pem\n    certificates:\n      - {server_name: '*.example.com', cert: a, key: b}\n",
        ),
        "listen.tls.certificates[0].server_name",
        "*.example.com",
        "exact DNS host name",
    ),
    (
        "listeners:\n  - {address: 127.0.0.1, port: 443, tls: {cert: a, key: b}}\n"
        "  - {address: 127.0.0.1, port: 443, tls: {cert: a, key: b}}\n" + POOL,
        "listeners[1].port",
        ("  - {address: 127.0.0.1, port: 443, tls: {cert: a, key: b}}", 2),
        "duplicate listener bind",
    ),
    (LISTEN + "upstream: {}\n", "upstream", "upstream: {}", "at least one pool"),
    (pool("    route: {path_prefix: /}\n    backends: []\n"), "upstream.api.backends", "backends: []", "at least one backend"),
    (
        pool("    route: {path_prefix: /}\n" + BACKEND + "      - id: a\n        address: http://127.0.0.2:8080\n"),
        "upstream.api.backends[1].id",
        ("      - id: a", 2),
        "duplicate backend id",
    ),
    (
        pool("    route: {path_prefix: /}\n" + BACKEND + "        weight: 0\n"),
        "upstream.api.backends[0].weight",
        "weight: 0",
        ">= 1",
    ),
    (
        pool("    route: {path_prefix: /}\n    backends:\n      - id: a\n        address: ftp://x\n"),
        "upstream.api.backends[0].address",
        "ftp://x",
        "scheme",
    ),
    (pool("    route: {method: GET}\n" + BACKEND), "upstream.api.route", "route:", "host or path_prefix"),
    (pool("    route: {host: 'api.*.com'}\n" + BACKEND), "upstream.api.route.host", "api.*.com", "leading"),
    (pool("    route: {host: '*'}\n" + BACKEND), "upstream.api.route.host", "host: '*'", "wildcard"),
    (pool("    route: {path_prefix: v1}\n" + BACKEND), "upstream.api.route.path_prefix", "path_prefix: v1", "'/'"),
    (
        LISTEN
        + "upstream:\n  a:\n    route: {host: API.example.com, method: get}\n" + BACKEND
        + "  b:\n    route: {host: api.example.com, method: GET}\n" + BACKEND,
        "upstream.b.route",
        ("route:", 2),
        "same route as pool 'a'",
    ),
    (
        pool("    route: {path_prefix: /}\n    host_policy: {mode: rewrite}\n" + BACKEND),
        "upstream.api.host_policy.host",
        "host_policy:",
        "required when",
    ),
    (
        pool("    route: {path_prefix: /}\n    load_balancing:\n      type: consistent_hash\n      key: 'hdr:x'\n" + BACKEND),
        "upstream.api.load_balancing.key",
        "key: 'hdr:x'",
        "header:<name>",
    ),
    (BASE + "load_balancing:\n  key: 'header:'\n", "load_balancing.key", "key: 'header:'", "needs a name"),
    (
        pool("    route: {path_prefix: /}\n" + BACKEND + "        health_check:\n          interval: 0\n"),
        "upstream.api.backends[0].health_check.interval",
        "interval: 0",
        "> 0",
    ),
    (
        pool("    route: {path_prefix: /}\n" + BACKEND + "        health_check:\n          success_threshold: 0\n"),
        "upstream.api.backends[0].health_check.success_threshold",
        "success_threshold: 0",
        ">= 1",
    ),
    (
        pool("    route: {path_prefix: /}\n" + BACKEND + "        health_check:\n          timeout_ms: -5\n"),
        "upstream.api.backends[0].health_check.timeout_ms",
        "timeout_ms: -5",
        "> 0",
    ),
    (
        BASE + "performance:\n  backend_connect_timeout_ms: 3000\n",
        "performance.backend_connect_timeout_ms",
        "backend_connect_timeout_ms",
        "<= backend_timeout_ms",
    ),
    (
        BASE + "performance:\n  backend_timeout_ms: 5000\n",
        "performance.backend_body_idle_timeout_ms",
        "backend_timeout_ms: 5000",
        ">= backend_timeout_ms",
    ),
    (
        BASE + "performance:\n  backend_total_request_timeout_ms: 1000\n",
        "performance.backend_total_request_timeout_ms",
        "backend_total_request_timeout_ms",
        ">= backend_body_total_timeout_ms",
    ),
    (
        BASE + "performance:\n  quic_initial_max_stream_data: 20000000\n",
        "performance.quic_initial_max_stream_data",
        "quic_initial_max_stream_data",
        "<= quic_initial_max_data",
    ),
    (BASE + "performance:\n  worker_threads: 0\n", "performance.worker_threads", "worker_threads", ">= 1"),
    (
        BASE + "performance:\n  worker_threads: 4\n  reuseport: false\n",
        "performance.reuseport",
        "reuseport: false",
        "worker_threads > 1",
    ),
    (BASE + "performance:\n  max_request_body_bytes: 0\n", "performance.max_request_body_bytes", "max_request", "> 0"),
    (BASE + "performance:\n  global_inflight_limit: 0\n", "performance.global_inflight_limit", "global_inflight", "> 0"),
    (BASE + "performance:\n  inflight_acquire_wait_ms: -1\n", "performance.inflight_acquire_wait_ms", "inflight_acquire", ">= 0"),
    (
        BASE + "performance:\n  backend_dns_nameservers: ['8.8.8.8', '[::1]:53', 'dns.google']\n",
        "performance.backend_dns_nameservers[2]",
        "backend_dns_nameservers",
        "not an IP address",
    ),
    (
        BASE + "resilience:\n  adaptive_admission:\n    min_limit: 0\n",
        "resilience.adaptive_admission.min_limit",
        "min_limit: 0",
        "> 0",
    ),
    (
        BASE + "resilience:\n  adaptive_admission:\n    min_limit: 100\n    max_limit: 50\n",
        "resilience.adaptive_admission.max_limit",
        "max_limit: 50",
        ">= min_limit",
    ),
    (
        BASE + "resilience:\n  adaptive_admission:\n    max_limit: 5000\n",
        "resilience.adaptive_admission.max_limit",
        "max_limit: 5000",
        "global_inflight_limit",
    ),
    (BASE + "resilience:\n  retry_budget:\n    ratio_percent: 101\n", "resilience.retry_budget.ratio_percent", "ratio_percent", "0 and 100"),
    (
        BASE + "resilience:\n  retry_budget:\n    per_route_ratio_percent:\n      /api: 150\n",
        'resilience.retry_budget.per_route_ratio_percent["/api"]',
        "/api: 150",
        "0 and 100",
    ),
    (
        BASE + "resilience:\n  hedging:\n    enabled: true\n    delay_ms: 0\n",
        "resilience.hedging.delay_ms",
        "delay_ms: 0",
        "> 0",
    ),
    (
        BASE + "resilience:\n  brownout:\n    trigger_inflight_percent: 50\n",
        "resilience.brownout.recover_inflight_percent",
        "trigger_inflight_percent: 50",
        "< trigger_inflight_percent",
    ),
    (
        BASE + "resilience:\n  brownout:\n    trigger_inflight_percent: 120\n",
        "resilience.brownout.trigger_inflight_percent",
        "trigger_inflight_percent",
        "1 and 100",
    ),
    (BASE + "resilience:\n  route_queue:\n    global_cap: 0\n", "resilience.route_queue.global_cap", "global_cap", "> 0"),
    (
        BASE + "resilience:\n  route_queue:\n    caps:\n      /slow: 0\n",
        'resilience.route_queue.caps["/slow"]',
        "/slow: 0",
        ">= 1",
    ),
    (
        BASE + "resilience:\n  protocol:\n    connect_allowed_ports: [443, 0]\n",
        "resilience.protocol.connect_allowed_ports[1]",
        "connect_allowed_ports",
        "65535",
    ),
    (
        BASE + "resilience:\n  protocol:\n    denied_path_prefixes:\n      - admin\n",
        "resilience.protocol.denied_path_prefixes[0]",
        "- admin",
        "'/'",
    ),
    (
        BASE + "resilience:\n  watchdog:\n    restart_hook: 'systemctl restart spooky'\n",
        "resilience.watchdog.restart_hook",
        "restart_hook",
        "restart_command",
    ),
    (
        BASE + "resilience:\n  watchdog:\n    overload_inflight_percent: 101\n",
        "resilience.watchdog.overload_inflight_percent",
        "overload_inflight_percent",
        "0 and 100",
    ),
    (
        BASE + "observability:\n  tracing:\n    enabled: true\n    sample_ratio: 1.5\n",
        "observability.tracing.sample_ratio",
        "sample_ratio",
        "between 0.0 and 1.0",
    ),
    (
        BASE + "observability:\n  control_api:\n    enabled: true\n    address: 0.0.0.0\n",
        "observability.control_api.auth_token",
        "address: 0.0.0.0",
        "non-loopback",
    ),
    (
        BASE + "observability:\n  metrics:\n    enabled: true\n    port: 0\n",
        "observability.metrics.port",
        "port: 0",
        "65535",
    ),
    (
        BASE + "observability:\n  metrics:\n    enabled: true\n    port: 9902\n  control_api:\n    enabled: true\n",
        "observability.control_api.port",
        "port: 9902",
        "metrics already use",
    ),
    (
        BASE + "log:\n  file:\n    enabled: true\n    path: ''\n",
        "log.file.path",
        "path: ''",
        "must not be empty",
    ),
]


@pytest.mark.parametrize(("text", "path", "needle", "fragment"), CASES, ids=[c[1] for c in CASES])
def test_rule(text: str, path: str, needle: str | tuple[str, int], fragment: str) -> None:
    issues = errors(text)
    issue = issue_at(issues, path)
    assert fragment in issue.message
    needle_text, occurrence = needle if isinstance(needle, tuple) else (needle, 1)
    assert issue.line == line_of(text, needle_text, occurrence), str(issue)
    assert issue.column is not None and issue.column >= 1


def test_issue_rendering_matches_spec_example() -> None:
    text = pool(
        "    route: {path_prefix: /}\n"
        "    backends:\n"
        "      - id: a\n"
        "        address: http://127.0.0.1:8080\n"
        "      - id: b\n"
        "        address: http://127.0.0.1:8081\n"
        "        weight: 0\n"
    )
    (issue,) = errors(text)
    assert str(issue) == f"upstream.api.backends[1].weight: line {line_of(text, 'weight: 0')} col 17: must be >= 1 (got 0)"


def test_control_api_on_loopback_needs_no_token() -> None:
    from tests.config.helpers import load

    config = load(BASE + "observability:\n  control_api:\n    enabled: true\n    address: '::1'\n")
    assert config.observability.control_api.auth_token is None


def test_key_on_non_hashing_balancer_is_accepted() -> None:
    from tests.config.helpers import load

    config = load(pool("    route: {path_prefix: /}\n    load_balancing: {type: random, key: 'header:x'}\n" + BACKEND))
    assert config.upstream["api"].load_balancing.key == "header:x"
