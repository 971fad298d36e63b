"""Hop-by-hop removal, X-Forwarded-* modes and host policy."""

from __future__ import annotations

from spooky_trio.http.headers import (
    build_upstream_headers,
    drop_connection_nominated,
    host_without_port,
    strip_hop_by_hop,
    strip_response_hop_by_hop,
    upstream_authority,
)


def test_hop_by_hop_and_connection_named_headers_removed() -> None:
    headers = [
        (b"connection", b"close, x-secret"),
        (b"x-secret", b"1"),
        (b"keep-alive", b"5"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"h2c"),
        (b"te", b"trailers"),
        (b"accept", b"*/*"),
    ]
    assert strip_hop_by_hop(drop_connection_nominated(headers)) == [(b"te", b"trailers"), (b"accept", b"*/*")]
    assert strip_response_hop_by_hop(headers) == [(b"accept", b"*/*")]
    # at the ingress the client's nominated fields go, hop-by-hop ones stay for the chain
    assert drop_connection_nominated(headers) == [h for h in headers if h[0] != b"x-secret"]
    plain = [(b"connection", b"keep-alive, Upgrade"), (b"upgrade", b"websocket")]
    assert drop_connection_nominated(plain) is plain


def test_a_client_cannot_strip_what_the_chain_adds() -> None:
    """A field the chain adds (a claim, trace context) under a name the client nominated in
    Connection reaches the backend: nomination is honoured where the request enters."""
    client = [(b"connection", b"x-user, traceparent"), (b"x-user", b"forged"), (b"accept", b"*/*")]
    request = drop_connection_nominated(client)
    assert request == [(b"connection", b"x-user, traceparent"), (b"accept", b"*/*")]
    request = [*request, (b"x-user", b"alice"), (b"traceparent", b"00-ab-cd-01")]  # the chain's
    out = build_upstream_headers(request, forwarded_mode="overwrite", client_ip="192.0.2.7", scheme=b"https", client_authority=b"h")
    assert (b"x-user", b"alice") in out and (b"traceparent", b"00-ab-cd-01") in out
    assert (b"x-user", b"forged") not in out and not any(n == b"connection" for n, _ in out)


def test_forwarded_modes() -> None:
    base = [(b"x-forwarded-for", b"10.0.0.1"), (b"host", b"h"), (b"x-forwarded-proto", b"http")]

    def xff(mode: str) -> list[bytes]:
        out = build_upstream_headers(base, forwarded_mode=mode, client_ip="192.0.2.7", scheme=b"https", client_authority=b"h")
        assert (b"x-forwarded-proto", b"https") in out
        assert (b"x-forwarded-host", b"h") in out
        assert not any(n == b"host" for n, _ in out)
        return [v for n, v in out if n == b"x-forwarded-for"]

    assert xff("overwrite") == [b"192.0.2.7"]
    assert xff("append") == [b"10.0.0.1, 192.0.2.7"]
    assert xff("preserve") == [b"10.0.0.1"]


def test_preserve_without_existing_sends_none() -> None:
    out = build_upstream_headers([], forwarded_mode="preserve", client_ip="192.0.2.7", scheme=b"https", client_authority=b"h")
    assert not any(n == b"x-forwarded-for" for n, _ in out)


def test_host_policy_modes() -> None:
    kw = dict(client_authority=b"client.example", rewrite_host="web.internal", backend_authority=b"10.0.0.5:8080")
    assert upstream_authority("pass-through", **kw) == b"client.example"
    assert upstream_authority("rewrite", **kw) == b"web.internal"
    assert upstream_authority("upstream", **kw) == b"10.0.0.5:8080"


def test_host_without_port() -> None:
    assert host_without_port(b"Example.COM:443") == b"example.com"
    assert host_without_port(b"[::1]:8443") == b"[::1]"
    assert host_without_port(b"example.com") == b"example.com"
