"""parse_backend_address and the backend address rule."""

from __future__ import annotations

import pytest

from spooky_trio.config import BackendAddress, parse_backend_address
from tests.config.helpers import LISTEN, errors, issue_at, load


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("http://127.0.0.1:8080", BackendAddress("http", "127.0.0.1", 8080)),
        ("http://127.0.0.1", BackendAddress("http", "127.0.0.1", 80)),
        ("http://app.internal/", BackendAddress("http", "app.internal", 80)),
        ("HTTP://App.Internal:81", BackendAddress("http", "App.Internal", 81)),
        ("https://api-a.internal:8443", BackendAddress("https", "api-a.internal", 8443)),
        ("https://api-a.internal", BackendAddress("https", "api-a.internal", 443)),
        ("api-a.internal:8443", BackendAddress("https", "api-a.internal", 8443)),
        ("localhost:8080", BackendAddress("https", "localhost", 8080)),
        ("api-a.internal", BackendAddress("https", "api-a.internal", 443)),
        ("10.0.0.1", BackendAddress("https", "10.0.0.1", 443)),
        ("[::1]:8443", BackendAddress("https", "::1", 8443)),
        ("[::1]", BackendAddress("https", "::1", 443)),
        ("http://[2001:db8::1]:8080", BackendAddress("http", "2001:db8::1", 8080)),
        ("https://[fe80::1]/", BackendAddress("https", "fe80::1", 443)),
        ("my_service:9000", BackendAddress("https", "my_service", 9000)),
    ],
)
def test_valid(address: str, expected: BackendAddress) -> None:
    assert parse_backend_address(address) == expected


@pytest.mark.parametrize(
    ("address", "fragment"),
    [
        ("", "empty"),
        ("ftp://host", "unsupported scheme"),
        ("ws://host:80", "unsupported scheme"),
        ("http://host/api", "path"),
        ("http://user:pw@host", "userinfo"),
        ("user@host:80", "userinfo"),
        ("http://host:0", "1-65535"),
        ("http://host:65536", "1-65535"),
        ("http://host:abc", "invalid port"),
        ("http://host:", "invalid port"),
        ("http://:80", "no host"),
        ("::1", "brackets"),
        ("http://::1:80", "brackets"),
        ("[::1", "']'"),
        ("[example.com]:80", "not an IPv6"),
        ("http://ho st", "whitespace"),
        ("http://host?x=1", "query"),
        ("http://host#x", "fragment"),
        ("http://bad..name", "not a valid host"),
        ("http://-bad.name", "not a valid host"),
    ],
)
def test_invalid(address: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_backend_address(address)
    assert fragment in str(info.value)


def test_backend_properties() -> None:
    parsed = parse_backend_address("[::1]:8443")
    assert parsed.authority == "[::1]:8443" and parsed.is_ip
    assert parse_backend_address("api.internal").authority == "api.internal:443"
    assert not parse_backend_address("api.internal").is_ip


def test_every_backend_address_is_validated() -> None:
    text = LISTEN + (
        "upstream:\n"
        "  a:\n"
        "    route: {path_prefix: /}\n"
        "    backends:\n"
        "      - {id: ok, address: 'http://x'}\n"
        "      - {id: bad, address: 'http://x/path'}\n"
        "  b:\n"
        "    route: {path_prefix: /b}\n"
        "    backends:\n"
        "      - {id: bad, address: '::1'}\n"
    )
    issues = errors(text)
    assert {i.path for i in issues} == {"upstream.a.backends[1].address", "upstream.b.backends[0].address"}
    assert issue_at(issues, "upstream.b.backends[0].address").line == 14


def test_parsed_address_on_loaded_backend() -> None:
    config = load(LISTEN + "upstream:\n  a:\n    route: {path_prefix: /}\n    backends: [{id: x, address: 'svc:8443'}]\n")
    assert config.upstream["a"].backends[0].parsed_address == BackendAddress("https", "svc", 8443)
