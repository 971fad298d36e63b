"""Unit tests of resilience/policy.py: the order of checks and the CONNECT allowlists."""

from __future__ import annotations

import pytest

from spooky_trio.config.schema_runtime import ProtocolConfig
from spooky_trio.http.messages import DownstreamRequest
from spooky_trio.http.errors import ProxyError
from spooky_trio.resilience.policy import ConnectTarget, check_request, connect_permitted, parse_connect_authority


def _request(method: bytes = b"GET", path: bytes = b"/", authority: bytes = b"example.com", early: bool = False) -> DownstreamRequest:
    return DownstreamRequest(method=method, scheme=b"https", authority=authority, path=path, headers=[],
                             protocol="HTTP/3", client_address=("127.0.0.1", 1), early_data=early)


def _status(protocol: ProtocolConfig, request: DownstreamRequest) -> int | None:
    try:
        check_request(protocol, request)
    except ProxyError as exc:
        return exc.response.status
    return None


class _Counter:
    def __init__(self) -> None:
        self.n = 0

    def inc(self) -> None:
        self.n += 1


class _Metrics:
    def __init__(self) -> None:
        self.early_data_accepted = _Counter()


def test_defaults_allow_everything_but_connect() -> None:
    p = ProtocolConfig()
    assert _status(p, _request(b"DELETE", b"/x")) is None
    assert _status(p, _request(b"CONNECT", b"", b"example.com:443")) == 405


def test_method_then_path_then_early_data_order() -> None:
    p = ProtocolConfig(allowed_methods=["get", "POST"], denied_path_prefixes=["/admin"], allow_0rtt=True)
    assert p.allowed_methods == ["GET", "POST"]
    assert _status(p, _request(b"PUT", b"/admin", early=True)) == 405
    assert _status(p, _request(b"POST", b"/admin/x?y", early=True)) == 403
    assert _status(p, _request(b"POST", b"/ok", early=True)) == 425
    assert _status(p, _request(b"POST", b"/ok")) is None
    assert _status(p, _request(b"GET", b"/administrator")) == 403  # a literal prefix


def test_early_data_counts_accepted_and_needs_allow_0rtt() -> None:
    metrics = _Metrics()
    assert check_request(ProtocolConfig(allow_0rtt=True), _request(b"HEAD", early=True), metrics) is None
    assert metrics.early_data_accepted.n == 1
    with pytest.raises(ProxyError) as info:
        check_request(ProtocolConfig(allow_0rtt=False), _request(b"GET", early=True), metrics)
    assert info.value.response.status == 425
    assert metrics.early_data_accepted.n == 1


def test_connect_target_parsing() -> None:
    assert parse_connect_authority(b"Example.COM:8443") == ConnectTarget("example.com", 8443)
    assert parse_connect_authority(b"[::1]:22") == ConnectTarget("::1", 22)
    assert str(ConnectTarget("::1", 22)) == "[::1]:22"
    for bad in (b"example.com", b"example.com:", b":80", b"example.com:0", b"example.com:70000", b"user@host:22", b"h/x:1"):
        with pytest.raises(ProxyError) as info:
            parse_connect_authority(bad)
        assert info.value.response.status == 400


@pytest.mark.parametrize(
    ("ports", "authorities", "target", "allowed"),
    [
        ([], [], ConnectTarget("db.internal", 5432), False),  # both empty: never an open relay
        ([5432], [], ConnectTarget("db.internal", 5432), False),  # ports alone: any host, refused
        ([5432], [], ConnectTarget("127.0.0.1", 5432), False),
        ([5432], ["db.internal"], ConnectTarget("db.internal", 5432), True),
        ([5432], [], ConnectTarget("db.internal", 22), False),
        ([], ["db.internal"], ConnectTarget("DB.internal".lower(), 22), True),
        ([], ["db.internal:5432"], ConnectTarget("db.internal", 22), False),
        ([], ["db.internal:5432"], ConnectTarget("db.internal", 5432), True),
        ([], ["*.example.com"], ConnectTarget("a.b.example.com", 443), True),
        ([], ["*.example.com"], ConnectTarget("example.com", 443), False),
        ([], ["*.example.com"], ConnectTarget("badexample.com", 443), False),
        ([443], ["*.example.com"], ConnectTarget("a.example.com", 80), False),
        ([], ["[::1]:22"], ConnectTarget("::1", 22), True),
    ],
)
def test_connect_allowlists(ports: list[int], authorities: list[str], target: ConnectTarget, allowed: bool) -> None:
    p = ProtocolConfig(allow_connect=True, connect_allowed_ports=ports, connect_allowed_authorities=authorities)
    assert connect_permitted(p, target) is allowed
    status = _status(p, _request(b"CONNECT", b"", str(target).encode()))
    assert status == (None if allowed else 403)
