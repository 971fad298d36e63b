"""upstream/h1_head.py: the two-pass field check accepts exactly what h11's per-field check
accepts, and request_head gives the same event or the same refusal as h11.Request."""

from __future__ import annotations

import h11
import pytest

from spooky_trio.http.messages import Headers
from spooky_trio.upstream.h1_head import fields_valid, request_head

# every single octet, alone, inside a value, at its edges, and in a name
_OCTETS = [bytes([i]) for i in range(256)]
_VALUES = (
    [b"", b"a", b"a b", b"a\tb", b"a  \t b", b"\x80\xff", b"x" * 300]
    + [o for o in _OCTETS]
    + [b"a" + o + b"b" for o in _OCTETS]
    + [o + b"a" for o in _OCTETS]
    + [b"a" + o for o in _OCTETS]
)
_NAMES = [b"x-a", b"X-Mixed_Case", b"!#$%&'*+.^_`|~09az"] + [b"x" + o for o in _OCTETS] + [o for o in _OCTETS] + [b""]


def _h11_accepts(headers: Headers) -> bool:
    try:
        h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"h"), *headers])
    except h11.LocalProtocolError:
        return False
    return True


@pytest.mark.parametrize("value", _VALUES)
def test_a_value_passes_exactly_when_h11_accepts_it(value: bytes) -> None:
    headers: Headers = [(b"host", b"h"), (b"x-v", value)]
    assert fields_valid(headers) == _h11_accepts([(b"x-v", value)])
    # and the same in the middle of other fields (the separators must not hide it)
    headers = [(b"host", b"h"), (b"a", b"1"), (b"x-v", value), (b"b", b"")]
    assert fields_valid(headers) == _h11_accepts([(b"a", b"1"), (b"x-v", value), (b"b", b"")])


@pytest.mark.parametrize("name", _NAMES)
def test_a_name_passes_exactly_when_h11_accepts_it(name: bytes) -> None:
    headers: Headers = [(b"host", b"h"), (name, b"v"), (b"z", b"1")]
    assert fields_valid(headers) == _h11_accepts([(name, b"v"), (b"z", b"1")])


def test_a_separator_inside_a_field_is_not_two_fields() -> None:
    assert not fields_valid([(b"host", b"h"), (b"a b", b"1")])
    assert not fields_valid([(b"host", b"h"), (b"a", b"1\x002")])
    assert not fields_valid([])
    assert not fields_valid([(b"host", "h")])  # type: ignore[list-item]  # a str: h11 decides


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        (b"GET", b"/a?b=c", [(b"host", b"h"), (b"X-Up", b"v"), (b"content-length", b"0")]),
        (b"POST", b"/", [(b"host", b"h"), (b"content-length", b"3, 3")]),
        (b"POST", b"/", [(b"host", b"h"), (b"transfer-encoding", b"Chunked")]),
    ],
)
def test_request_head_builds_the_event_h11_builds(method: bytes, target: bytes, headers: Headers) -> None:
    assert request_head(method, target, headers) == h11.Request(method=method, target=target, headers=headers)


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        (b"GET", b"/", [(b"host", b"h"), (b"x", b"a\r\nInjected: 1")]),  # field check (the slow path)
        (b"GET", b"/", [(b"host", b"h"), (b"bad name", b"1")]),
        (b"GET", b"/", [(b"x", b"1")]),  # no Host: still h11's own check
        (b"GET", b"/", [(b"host", b"h"), (b"host", b"i")]),
        (b"G ET", b"/", [(b"host", b"h")]),  # method and target: h11 checks them on both paths
        (b"GET", b"/a b", [(b"host", b"h")]),
        (b"POST", b"/", [(b"host", b"h"), (b"content-length", b"1"), (b"content-length", b"2")]),
        (b"POST", b"/", [(b"host", b"h"), (b"transfer-encoding", b"gzip")]),
    ],
)
def test_request_head_refuses_what_h11_refuses_with_its_message(method: bytes, target: bytes, headers: Headers) -> None:
    with pytest.raises(h11.LocalProtocolError) as ours:
        request_head(method, target, headers)
    with pytest.raises(h11.LocalProtocolError) as theirs:
        h11.Request(method=method, target=target, headers=headers)
    assert str(ours.value) == str(theirs.value)
