"""Spooky's request key grammar and extraction (http/request_keys.py, the one home of both for
the config validator, the balancer and the scoped rate limits): what config accepts and what
each spec reads from a request, fallbacks left to the caller."""

from __future__ import annotations

import pytest

from spooky_trio.http.messages import DownstreamRequest
from spooky_trio.http.request_keys import KeySpec, bearer_token, fallback_key, key_reader, parse_key_spec


def req(path: bytes = b"/p?x=1", headers: list[tuple[bytes, bytes]] | None = None, authority: bytes = b"api.example",
        method: bytes = b"GET", client: str = "198.51.100.7") -> DownstreamRequest:
    return DownstreamRequest(method=method, scheme=b"https", authority=authority, path=path, headers=headers or [],
                             protocol="HTTP/3", client_address=(client, 4433))


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("path", KeySpec("path")),
        (" Authority ", KeySpec("authority")),
        ("METHOD", KeySpec("method")),
        ("cid", KeySpec("cid")),
        ("sticky-cid", KeySpec("cid")),
        ("peer_ip", KeySpec("peer_ip")),
        ("Client_IP", KeySpec("peer_ip")),
        ("bearer_token", KeySpec("bearer_token")),
        ("Header:X-Tenant", KeySpec("header", "x-tenant")),
        ("header: x y ", KeySpec("header", "x y")),  # Spooky checks only that the name is not blank
        ("cookie:Session", KeySpec("cookie", "session")),
        ("QUERY:tenant", KeySpec("query", "tenant")),
    ],
)
def test_specs_spooky_accepts(text: str, spec: KeySpec) -> None:
    assert parse_key_spec(text) == spec


@pytest.mark.parametrize("text", ["", "  ", "peer-ip", "client-ip", "bearer-token", "sticky_cid", "header:", "cookie: ",
                                  "body:x", "host", "query", "header :x"])
def test_specs_spooky_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid key"):
        parse_key_spec(text)


def read(spec: str, request: DownstreamRequest) -> str | None:
    return key_reader(parse_key_spec(spec))(request)


def test_plain_specs() -> None:
    r = req(path=b"/a/b?q=1", authority=b"API.example:443", method=b"POST")
    assert read("path", r) == "/a/b"
    assert read("authority", r) == "API.example:443"  # as sent, as Spooky
    assert read("method", r) == "POST"
    assert read("peer_ip", r) == read("client_ip", r) == "198.51.100.7"
    assert read("cid", r) is None and read("sticky-cid", r) is None  # Spooky: always the fallback


def test_cid_is_read_only_for_balancing() -> None:
    # the one reader that differs: a rate limit keyed on cid always falls back (Spooky never
    # hands the connection ID to that resolver), a hashing balancer reads the ID's bytes
    r = req()
    r.quic_connection_id = b"\x00\xfe"
    for text in ("cid", "sticky-cid"):
        assert key_reader(parse_key_spec(text))(r) is None
        assert key_reader(parse_key_spec(text), connection_ids=True)(r) == "\x00\xfe"
    assert key_reader(parse_key_spec("cid"), connection_ids=True)(req()) is None  # the TCP listener has none
    assert key_reader(parse_key_spec("header:x"), connection_ids=True)(req(headers=[(b"x", b"1")])) == "1"


def test_a_name_outside_ascii_is_accepted_and_builds_a_reader() -> None:
    # the validator accepts it (as Spooky does); building its reader must not raise either
    assert parse_key_spec("header:x-€") == KeySpec("header", "x-€")
    assert read("header:x-€", req(headers=[(b"x", b"1")])) is None


def test_peer_ip_never_reads_forwarded_headers() -> None:
    r = req(headers=[(b"x-forwarded-for", b"203.0.113.1"), (b"forwarded", b"for=203.0.113.1")], client="2001:db8::1")
    assert read("client_ip", r) == "2001:db8::1"


def test_header_first_field_visible_ascii_only() -> None:
    r = req(headers=[(b"x-tenant", b"acme"), (b"x-tenant", b"other")])
    assert read("header:X-Tenant", r) == "acme"
    assert read("header:x-missing", r) is None
    assert read("header:x-t", req(headers=[(b"x-t", b"caf\xc3\xa9")])) is None
    assert read("header:x-t", req(headers=[(b"x-t", b"")])) is None
    assert read("header:x-t", req(headers=[(b"x-t", b"a\tb")])) == "a\tb"


def test_bearer_token() -> None:
    assert read("bearer_token", req(headers=[(b"authorization", b"Bearer  tok-1 ")])) == "tok-1"
    assert read("bearer_token", req(headers=[(b"authorization", b"bearer\tx.y.z")])) == "x.y.z"
    assert read("bearer_token", req(headers=[(b"authorization", b"Basic dXNlcg==")])) is None
    assert read("bearer_token", req(headers=[(b"authorization", b"Bearer")])) is None
    assert read("bearer_token", req()) is None
    # only the first Authorization field counts
    assert read("bearer_token", req(headers=[(b"authorization", b"Basic a"), (b"authorization", b"Bearer b")])) is None
    assert bearer_token(b"  BEARER abc  ") == "abc"


def test_cookie() -> None:
    r = req(headers=[(b"cookie", b"a=1; Session=s1"), (b"cookie", b"b=2")])
    assert read("cookie:session", r) == "s1"
    assert read("cookie:b", r) == "2"  # a second cookie field is read too (HTTP/2 and HTTP/3 split them)
    assert read("cookie:c", r) is None
    assert read("cookie:a", req(headers=[(b"cookie", b"a= ")])) is None  # empty value
    assert read("cookie:b", req(headers=[(b"cookie", b"flag; b=2")])) is None  # Spooky's parser stops at a pair without '='


def test_query() -> None:
    assert read("query:Tenant", req(path=b"/x?a=1&tenant=acme&tenant=b")) == "acme"
    assert read("query:t", req(path=b"/x?t=&t=2")) == "2"  # empty values are skipped
    assert read("query:t", req(path=b"/x?t=a%20b")) == "a%20b"  # not decoded, as Spooky
    assert read("query:t", req(path=b"/x")) is None
    assert read("query:t", req(path=b"/x?flag&t=1")) is None  # Spooky's parser stops at a pair without '='


def test_fallback_is_authority_then_path_then_method() -> None:
    assert fallback_key(req(authority=b"h.example")) == "h.example"
    assert fallback_key(req(authority=b"", path=b"/a?b")) == "/a?b"
    assert fallback_key(req(authority=b"", path=b"", method=b"GET")) == "GET"
