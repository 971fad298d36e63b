"""Fuzz the one request-head validator and path normalization (``http/validate.py``,
``http/paths.py``): what every ingress protocol checks before anything else runs.

Input: a method, a request target, a field list (names and values biased towards the
troublesome: non-tokens, control characters, obs-text, connection-specific fields, odd
content-lengths), an optional ``:scheme``/``:authority``, the multiplexed flag, and the
normalization options.

Invariants:

* ``check_head`` and ``split_pseudo`` return a 400 or accept; nothing escapes;
* an accepted head is what HTTP/1.1 backends accept: h11's client serializer sends it
  (with the proxy's X-Forwarded-* fields and the authority as Host), and, multiplexed, its
  field names are lowercase; ``content-length`` values are digits and agree;
* ``normalize_path`` raises only ``PathError``; its result starts with ``/``, has no ``.``
  or ``..`` segment, no ``//`` when merging, only upper-case hex in the escapes it kept, no
  escape of an unreserved character, no escaped slash unless kept, and normalizing it again
  changes nothing (idempotent); a path without ``%``, ``/.`` and ``//`` comes back as is.
"""

from __future__ import annotations

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _fdp import Reader
from _runner import instrumented, run

with instrumented(__name__):
    import h11

    from spooky_trio.http.errors import ErrorResponse
    from spooky_trio.http.headers import build_upstream_headers
    from spooky_trio.http.paths import ESCAPED_SLASH_ACTIONS, PathError, normalize_path
    from spooky_trio.http.validate import check_head, split_pseudo


METHODS = [b"GET", b"POST", b"OPTIONS", b"CONNECT", b"G ET", b"get", b"", b"M\x00", b"PATCH"]
TARGETS = [b"/", b"*", b"/a?b=c", b"//admin", b"/./x/../y", b"/%61%2e%2E/%2f%5C", b"/a b", b"http://h/x", b"/a#f",
           b"/\x80", b"", b"/%", b"/%zz", b"/%7e~", b"/a/..//b/./c/"]
NAMES = [b"host", b"x-a", b"X-A", b"x(y", b"content-length", b"transfer-encoding", b"te", b"connection", b"cookie",
         b"", b"x y", b":path", b"x\x00"]
VALUES = [b"1", b"a b", b" lead", b"trail ", b"a\tb", b"a\x0bb", b"\x7f", b"caf\xc3\xa9", b"trailers", b"12", b"012",
          b"-1", b"", b"a\r\nb", b"x\x00"]
SCHEMES = [None, b"https", b"http", b"HTTPS"]
AUTHORITIES = [None, b"localhost", b"", b"a b", b"user@host", b"example.com:8443", b"[::1]:443"]
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_UNRESERVED = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _field(r: Reader, options: list[bytes]) -> bytes:
    return r.pick(options) if r.boolean() else r.bytes_(24)


def test_one_input(data: bytes) -> None:
    r = Reader(data)
    method, target = _field(r, METHODS), _field(r, TARGETS)
    headers = [(_field(r, NAMES), _field(r, VALUES)) for _ in range(r.int_in_range(0, 12))]
    scheme, authority = r.pick(SCHEMES), r.pick(AUTHORITIES)
    multiplexed = r.boolean()
    merge, action = r.boolean(), r.pick(ESCAPED_SLASH_ACTIONS)

    # pseudo-header rules on the same material, as an HTTP/2 or HTTP/3 field section
    fields = [(b":method", method), (b":path", target)] + headers
    split = split_pseudo(fields if r.boolean() else list(reversed(fields)))
    assert isinstance(split, ErrorResponse) and split.status == 400 or not isinstance(split, ErrorResponse)

    error = check_head(method, target if method != b"CONNECT" else None, headers, multiplexed=multiplexed,
                       scheme=scheme, authority=authority)
    if error is None and method != b"CONNECT":
        _accepted(method, target, headers, multiplexed, authority)
    elif error is not None:
        assert error.status == 400 and error.reason

    path = target.partition(b"?")[0]
    if path[:1] == b"/":
        _normalized(path, merge, action)


def _accepted(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], multiplexed: bool, authority: bytes | None) -> None:
    if multiplexed:
        assert all(name == name.lower() for name, _ in headers)
    lengths = {value for name, value in headers if name.lower() == b"content-length"}
    assert all(value.isdigit() for value in lengths) and len({int(v) for v in lengths}) <= 1
    host = authority or next((v for n, v in headers if n.lower() == b"host"), b"example.com") or b"example.com"
    lowered = [(name.lower(), value) for name, value in headers if name.lower() not in (b"content-length", b"transfer-encoding")]
    upstream = build_upstream_headers(lowered, forwarded_mode="append", client_ip="192.0.2.1", scheme=b"https", client_authority=host)
    h11.Connection(h11.CLIENT).send(h11.Request(method=method, target=target, headers=[(b"host", host), *upstream]))


def _normalized(path: bytes, merge: bool, action: str) -> None:
    try:
        out = normalize_path(path, merge_slashes=merge, escaped_slashes=action)
    except PathError as exc:
        assert exc.reason in ("bad_path_escape", "escaped_slash"), exc.reason
        return
    if b"%" not in path and b"/." not in path and b"//" not in path:
        assert out is path
    assert out[:1] == b"/", out
    segments = out.split(b"/")[1:]
    assert b"." not in segments and b".." not in segments, out
    if merge:
        assert b"//" not in out, out
    for match in _ESCAPE.finditer(out):
        digits = match.group(1)
        assert digits == digits.upper(), out
        assert int(digits, 16) not in _UNRESERVED, out
        if action != "keep":
            assert digits not in (b"2F", b"5C"), out
    assert normalize_path(out, merge_slashes=merge, escaped_slashes=action) == out, (path, out)


if __name__ == "__main__":
    run(test_one_input)
