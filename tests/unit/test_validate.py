"""The one request-head validator (http/validate.py): every rule with the reason it answers.

Each case is what an ingress hands over (HTTP/1.1: ``multiplexed=False``; HTTP/2 and
HTTP/3: split by ``split_pseudo`` first). The accepted cases are the edges a stricter or a
looser rule would get wrong (obs-text, HTAB inside a value, ``*`` with OPTIONS, a repeated
equal ``content-length``).
"""

from __future__ import annotations

import pytest

from spooky_trio.http.errors import ErrorResponse
from spooky_trio.http.validate import MultiplexedHead, check_head, join_cookies, split_pseudo

H = list[tuple[bytes, bytes]]


def reason(method: bytes = b"GET", path: bytes | None = b"/", headers: H | None = None, *, multiplexed: bool = True,
           scheme: bytes | None = b"https", authority: bytes | None = b"example.com") -> str | None:
    error = check_head(method, path, headers or [], multiplexed=multiplexed, scheme=scheme if multiplexed else None,
                       authority=authority)
    assert error is None or error.status == 400
    return None if error is None else error.reason


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"method": b"G ET"}, "bad_method"),
    ({"method": b""}, "bad_method"),
    ({"method": b"GET\n"}, "bad_method"),
    ({"path": b"/a b"}, "bad_target"),
    ({"path": b"/a#frag"}, "bad_target"),
    ({"path": b"/caf\xc3\xa9"}, "bad_target"),
    ({"path": b"http://b.test/admin"}, "bad_target"),
    ({"path": b""}, "bad_target"),
    ({"path": b"*"}, "bad_target"),
    ({"scheme": b"http"}, "scheme_mismatch"),
    ({"scheme": b"https://evil.test/?"}, "scheme_mismatch"),
    ({"authority": b""}, "bad_authority"),
    ({"authority": b"user@host"}, "bad_authority"),
    ({"authority": b"a b"}, "bad_authority"),
    ({"headers": [(b"x(y", b"1")]}, "bad_field_name"),
    ({"headers": [(b"x y", b"1")]}, "bad_field_name"),  # fuzz_request_head: space_in_field_name
    ({"headers": [(b"a", b"1"), (b"x y", b"1"), (b"b", b"2")]}, "bad_field_name"),
    ({"headers": [(b"", b"1")]}, "bad_field_name"),
    ({"headers": [(b"X-Upper", b"1")]}, "bad_field_name"),
    ({"headers": [(b"x-a", b"a\x0bb")]}, "bad_field_value"),
    ({"headers": [(b"x-a", b"\x01")]}, "bad_field_value"),
    ({"headers": [(b"x-a", b"a\x7f")]}, "bad_field_value"),
    ({"headers": [(b"x-a", b"a\r\nb")]}, "bad_field_value"),
    ({"headers": [(b"x-a", b"\x00")]}, "bad_field_value"),
    ({"headers": [(b"x-a", b" lead")]}, "bad_field_value"),
    ({"headers": [(b"x-a", b"trail\t")]}, "bad_field_value"),
    ({"headers": [(b"connection", b"close")]}, "connection_specific_field"),
    ({"headers": [(b"transfer-encoding", b"chunked")]}, "connection_specific_field"),
    ({"headers": [(b"upgrade", b"websocket")]}, "connection_specific_field"),
    ({"headers": [(b"te", b"gzip")]}, "bad_te"),
    ({"headers": [(b"content-length", b"-1")]}, "bad_content_length"),
    ({"headers": [(b"content-length", b"1, 1")]}, "bad_content_length"),
    ({"headers": [(b"content-length", b"1"), (b"content-length", b"2")]}, "conflicting_content_length"),
    # fuzz_h2_frames (tab_in_host): Host is an authority, whatever the protocol
    ({"headers": [(b"host", b"a\tb")]}, "bad_host"),
    ({"headers": [(b"host", b"a b")]}, "bad_host"),
    ({"headers": [(b"host", b"user@example.com")]}, "bad_host"),
    ({"authority": None, "multiplexed": False, "headers": [(b"Host", b"a\tb")]}, "bad_host"),
])
def test_refused_heads(kwargs: dict[str, object], expected: str) -> None:
    assert reason(**kwargs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs", [
    {},
    {"method": b"OPTIONS", "path": b"*"},
    {"method": b"CONNECT", "path": None, "scheme": None, "authority": b"example.com:443"},
    {"path": b"/a?b=c&d=/../e%20"},
    {"authority": None, "headers": [(b"host", b"example.com")]},
    {"headers": [(b"x-name", b"caf\xc3\xa9")]},  # obs-text: opaque data (RFC 9110 5.5)
    {"headers": [(b"x-a", b"a\tb")]},
    {"headers": [(b"te", b"Trailers")]},
    {"headers": [(b"content-length", b"5"), (b"content-length", b"05")]},
    {"headers": [(b"x-a", b"")]},
])
def test_accepted_heads(kwargs: dict[str, object]) -> None:
    assert reason(**kwargs) is None  # type: ignore[arg-type]


def test_http1_rules_are_the_looser_field_rules() -> None:
    h1 = {"multiplexed": False, "authority": None}
    assert reason(headers=[(b"X-Upper", b"1"), (b"Connection", b"keep-alive"), (b"TE", b"gzip")], **h1) is None  # type: ignore[arg-type]
    # fuzz_request_head (leading_space_value): h11 strips it when parsing, and refuses to send it
    assert reason(headers=[(b"x-a", b" lead")], **h1) == "bad_field_value"  # type: ignore[arg-type]
    assert reason(headers=[(b"x y", b"1")], **h1) == "bad_field_name"  # type: ignore[arg-type]
    assert reason(headers=[(b"x-a", b"a\x0bb")], **h1) == "bad_field_value"  # type: ignore[arg-type]
    # fuzz_request_head (content_length_in_any_case): HTTP/1.1 names are case-insensitive
    conflicting = [(b"content-length", b"1"), (b"Content-Length", b"2")]
    assert reason(headers=conflicting, **h1) == "conflicting_content_length"  # type: ignore[arg-type]
    assert reason(headers=[(b"CONTENT-LENGTH", b"x")], **h1) == "bad_content_length"  # type: ignore[arg-type]


GET = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"example.com"), (b":path", b"/")]


@pytest.mark.parametrize(("fields", "expected"), [
    ([GET[0], (b"x", b"1"), *GET[1:]], "pseudo_header_order"),
    ([*GET, (b"x", b"1"), (b":path", b"/x")], "pseudo_header_order"),
    ([*GET[:3], (b":path", b"/"), (b":path", b"/x")], "duplicate_pseudo_header"),
    (GET, None),
    ([(b":status", b"200"), *GET], "bad_pseudo_header"),
    (GET[1:], "missing_method"),
    (GET[:3], "missing_scheme_or_path"),
    ([(b":method", b"CONNECT"), (b":authority", b"a:443"), (b":path", b"/")], "bad_connect"),
    ([GET[0], (b":protocol", b"websocket"), *GET[1:]], "bad_protocol"),
])
def test_pseudo_header_rules(fields: H, expected: str | None) -> None:
    head = split_pseudo(fields)
    if expected is None:
        assert isinstance(head, MultiplexedHead) and head.method == b"GET" and head.path == b"/"
    else:
        assert isinstance(head, ErrorResponse) and head.status == 400 and head.reason == expected


def test_extended_connect_and_plain_connect_split() -> None:
    ws = split_pseudo([(b":method", b"CONNECT"), (b":protocol", b"websocket"), *GET[1:], (b"x", b"1")])
    assert isinstance(ws, MultiplexedHead) and ws.protocol == b"websocket" and ws.headers == [(b"x", b"1")]
    plain = split_pseudo([(b":method", b"CONNECT"), (b":authority", b"a:443")])
    assert isinstance(plain, MultiplexedHead) and plain.path is None and plain.scheme is None


def test_cookie_crumbs_join_at_the_first_place() -> None:
    headers = [(b"a", b"1"), (b"cookie", b"x=1"), (b"b", b"2"), (b"cookie", b"y=2"), (b"cookie", b"z=3")]
    assert join_cookies(headers) == [(b"a", b"1"), (b"cookie", b"x=1; y=2; z=3"), (b"b", b"2")]
    one = [(b"cookie", b"x=1")]
    assert join_cookies(one) is one
    # empty crumbs add nothing (fuzz_h3_headers: "/; " has trailing whitespace h11 refuses)
    assert join_cookies([(b"cookie", b"/"), (b"cookie", b"")]) == [(b"cookie", b"/")]
    assert join_cookies([(b"cookie", b""), (b"a", b"1"), (b"cookie", b"")]) == [(b"a", b"1")]
