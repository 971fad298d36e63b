"""``upstream.<pool>.upstream_protocol`` and the ``h3_pool_*`` settings: the rules, and what a
generation makes of them (the target's protocol and the ALPN its TLS context offers)."""

from __future__ import annotations

import pytest

from spooky_trio.core.generation import Generation
from tests.config.helpers import LISTEN, errors, issue_at, line_of, load


def config(protocol: str, address: str, extra: str = "") -> str:
    return LISTEN + f"""\
upstream:
  api:
    upstream_protocol: {protocol}
    route:
      path_prefix: /
    backends:
      - id: a
        address: "{address}"
""" + extra


@pytest.mark.parametrize("protocol", ["h3", "alt-svc"])
def test_http3_needs_https_backends(protocol: str) -> None:
    text = config(protocol, "http://127.0.0.1:8080")
    issue = issue_at(errors(text), "upstream.api.backends[0].address")
    assert f"upstream_protocol {protocol} needs https://" in issue.message
    assert issue.line == line_of(text, "address:")


def test_an_unknown_protocol_names_the_choices() -> None:
    text = config("h4", "https://127.0.0.1:8443")
    issue = issue_at(errors(text), "upstream.api.upstream_protocol")
    assert "alt-svc" in issue.message and issue.line == line_of(text, "upstream_protocol")


@pytest.mark.parametrize("key", ["h3_pool_max_connections_per_backend", "h3_pool_max_streams_per_connection", "h3_pool_idle_timeout_ms"])
def test_h3_pool_settings_are_positive(key: str) -> None:
    text = config("h3", "https://127.0.0.1:8443", f"performance:\n  {key}: 0\n")
    assert "must be > 0" in issue_at(errors(text), f"performance.{key}").message


@pytest.mark.parametrize(
    ("protocol", "address", "expected"),
    [
        ("auto", "http://127.0.0.1:8080", "h1"),
        ("auto", "https://127.0.0.1:8443", "h2"),
        ("h1", "https://127.0.0.1:8443", "h1"),
        ("h2", "http://127.0.0.1:8080", "h2"),  # h2c, prior knowledge
        ("h3", "https://127.0.0.1:8443", "h3"),
        ("alt-svc", "https://127.0.0.1:8443", "alt-svc"),  # starts on HTTP/2
    ],
)
def test_the_generation_speaks_the_pool_protocol(protocol: str, address: str, expected: str) -> None:
    target = Generation.build(load(config(protocol, address))).pools["api"].backends[0].target
    assert target.protocol == expected
    assert (target.ssl_context is None) == address.startswith("http://")


def test_http1_over_tls_offers_its_own_alpn() -> None:
    """An SSLContext does not show its ALPN list; an ``h1`` pool's context is another one
    than an ``h2`` pool's with the same TLS policy (it offers http/1.1: tests/integration/
    test_upstream_h3.py proves it against a server that prefers h2)."""
    text = config("h1", "https://127.0.0.1:8443") + "  web:\n    route: {path_prefix: /w}\n    backends: [{id: b, address: 'https://127.0.0.1:8444'}]\n"
    pools = Generation.build(load(text)).pools
    assert pools["api"].backends[0].target.ssl_context is not pools["web"].backends[0].target.ssl_context


def test_switching_protocol_keeps_the_backend_identity_but_not_the_target() -> None:
    """A reload from h2 to h3 keeps health and breaker state (same key) while the pool
    drains the old connections (a different target)."""
    h2 = Generation.build(load(config("auto", "https://127.0.0.1:8443"))).pools["api"].backends[0]
    h3 = Generation.build(load(config("h3", "https://127.0.0.1:8443"))).pools["api"].backends[0]
    assert h2.key == h3.key and h2.target != h3.target
