"""Fuzz balancer hash-key extraction (``load_balancing.key``) over random requests.

Invariants: ``key_source`` accepts every key form the docs list (``http/request_keys.py``,
the grammar shared with the scoped rate limits) and raises only ``ValueError`` otherwise;
``request_key`` never raises and returns bytes; it is deterministic, and so is ``hash64`` (a
64-bit value). Spooky's extraction: ``header:<name>`` ignores the name's case and reads the
first field of that name only, when it is visible ASCII; ``cookie:<name>`` returns a trimmed
value without ``;``; ``query:<name>`` a non-empty value without ``&``, not decoded;
``authority`` is the authority as sent; ``path`` has no query; ``cid`` is the connection ID's
own bytes; an absent source falls back to Spooky's chain (authority, else full path, else
method).
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _runner import instrumented, run
from _fdp import Reader

with instrumented(__name__):
    from spooky_trio.balancing.keys import default_key, hash64, key_source, request_key
    from spooky_trio.http.request_keys import parse_key_spec


PLAIN = ("path", "authority", "method", "cid", "sticky-cid", "peer_ip", "client_ip", "bearer_token")
SPECS = [None, *PLAIN, "header:X-User", "header:x-user", " Header: x-user ", "cookie:sid", "Cookie:SID", "query:q",
         "query:a b", "header:", "cookie:", "bogus", "header:é", "header:€", "sticky_cid", "peer-ip"]
NAMES = [b"x-user", b"cookie", b"host", b"x-other"]
VALUES = [b"alice", b"sid=1; other=2", b"a=b;sid=\"q\"", b"sid", b"", b"bob, carol"]
PATHS = [b"/", b"/a?q=1&q=2", b"/a?x=1&q=%zz+y#frag", b"/a?a+b=%41", b"?q", b"", b"/a#?q=1"]


def test_one_input(data: bytes) -> None:
    r = Reader(data)
    spec = r.pick(SPECS) if r.byte() % 4 else r.bytes_(20).decode("utf-8", errors="replace")
    headers = []
    for _ in range(r.int_in_range(0, 8)):
        name = r.pick(NAMES) if r.boolean() else r.bytes_(10).lower()
        headers.append((name, r.pick(VALUES) if r.boolean() else r.bytes_(40)))
    request = SimpleNamespace(
        method=r.pick([b"GET", b"POST", b""]) if r.boolean() else r.bytes_(8),
        authority=r.pick([b"Example.COM", b"", b"a:1"]) if r.boolean() else r.bytes_(20),
        path=r.pick(PATHS) if r.boolean() else r.bytes_(60),
        headers=headers,
        client_address=("192.0.2.1", 1),
        quic_connection_id=r.pick([None, b"", b"\x01\x02\x03\x04"]) if r.boolean() else r.bytes_(20),
    )
    try:
        source = key_source(spec)
    except ValueError:
        assert spec is not None and spec.strip().lower() not in PLAIN
        return
    key = request_key(source, request)
    assert isinstance(key, bytes)
    assert key == request_key(source, request)
    assert 0 <= hash64(key) < 2**64 and hash64(key) == hash64(bytes(key))
    own = source(request)
    if own is None:
        assert key == default_key(request)
    else:
        assert own and key == own.encode("latin-1")
    parsed = parse_key_spec(spec) if spec is not None else None
    if parsed is None or own is None:
        return
    if parsed.kind == "header":
        first = next(v for n, v in headers if n == parsed.name.encode())
        assert own.encode("latin-1") == first and all(c == "\t" or " " <= c <= "~" for c in own)
    elif parsed.kind == "cookie":
        assert ";" not in own and own == own.strip()
    elif parsed.kind == "query":
        assert "&" not in own and own.encode("latin-1") in request.path.partition(b"?")[2]
    elif parsed.kind == "authority":
        assert own.encode("latin-1") == request.authority
    elif parsed.kind == "path":
        assert "?" not in own
    elif parsed.kind == "cid":
        assert own.encode("latin-1") == request.quic_connection_id


if __name__ == "__main__":
    run(test_one_input)
