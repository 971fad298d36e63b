"""Fuzz forwarded-header and Host handling (``spooky_trio.http.headers``).

Input: request headers as an ingress hands them over (lowercase names; values that h11,
h2 and aioquic would accept: any bytes but CR, LF and NUL), a forwarded mode, a client IP,
a scheme and an authority; plus host-policy inputs.

Invariants: ``build_upstream_headers`` never raises; its output names are lowercase, no
value holds CR, LF or NUL; no hop-by-hop field and no field named in ``Connection``
survives (except ``te: trailers``); no ``host``; exactly one ``x-forwarded-proto`` (the
scheme); ``x-forwarded-host`` exactly when there is an authority; at most one
``x-forwarded-for`` following the mode; other headers keep their order.
``upstream_authority`` follows ``host_policy.mode``; ``host_without_port`` returns a
lowercase prefix of the stripped authority with no ``:port``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _runner import instrumented, run
from _fdp import Reader

with instrumented(__name__):
    from spooky_trio.http.headers import (
        HOP_BY_HOP,
        build_upstream_headers,
        drop_connection_nominated,
        host_without_port,
        strip_response_hop_by_hop,
        upstream_authority,
    )


NAMES = [b"connection", b"keep-alive", b"te", b"transfer-encoding", b"upgrade", b"host", b"x-forwarded-for",
         b"x-forwarded-proto", b"x-forwarded-host", b"x-a", b"cookie", b"proxy-authorization", b"trailer"]
VALUES = [b"close", b"keep-alive, x-a", b"X-A, TE", b"trailers", b"Trailers ", b"gzip", b"10.0.0.1", b"1.2.3.4, 5.6.7.8",
          b"example.com", b"", b"x-forwarded-for"]
IPS = ["192.0.2.1", "2001:db8::1", "::ffff:10.0.0.1", "127.0.0.1"]
_BAD = b"\r\n\x00"
_OURS = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host")


def _value(r: Reader) -> bytes:
    raw = r.pick(VALUES) if r.boolean() else r.bytes_(40)
    return bytes(c for c in raw if c not in _BAD)


def _clean(value: bytes) -> bool:
    return not any(c in value for c in _BAD)


def test_one_input(data: bytes) -> None:
    r = Reader(data)
    headers = []
    for _ in range(r.int_in_range(0, 12)):
        name = r.pick(NAMES) if r.boolean() else bytes(c for c in r.bytes_(12).lower() if 0x20 < c < 0x7F and c != 0x3A)
        if name:
            headers.append((name, _value(r)))
    mode = r.pick(["overwrite", "append", "preserve"])
    client_ip = r.pick(IPS)
    scheme = r.pick([b"https", b"http"])
    authority = _value(r)

    # the HTTP/1.1 ingress drops what the client's Connection names, the forward step the rest
    out = build_upstream_headers(drop_connection_nominated(headers), forwarded_mode=mode, client_ip=client_ip, scheme=scheme,
                                 client_authority=authority)
    named = {t.strip().lower() for n, v in headers if n == b"connection" for t in v.split(b",")} - {b""}
    for name, value in out:
        assert name == name.lower(), name
        assert _clean(value), (name, value)
        if name in _OURS:
            continue  # set by the proxy itself, after the client's Connection list applied
        if name in HOP_BY_HOP or name in named:
            assert name == b"te" and value.strip().lower() == b"trailers", (name, value)
    names = [n for n, _ in out]
    assert b"host" not in names
    assert [v for n, v in out if n == b"x-forwarded-proto"] == [scheme]
    assert [v for n, v in out if n == b"x-forwarded-host"] == ([authority] if authority else [])
    xff = [v for n, v in out if n == b"x-forwarded-for"]
    assert len(xff) <= 1
    existing = [v for n, v in headers if n == b"x-forwarded-for" and n not in named]
    if mode == "overwrite" or (mode == "append" and not existing):
        assert xff == [client_ip.encode()]
    elif mode == "append":
        assert xff[0].endswith(b", " + client_ip.encode())
    elif existing:
        assert xff == [b", ".join(existing)]
    else:
        assert xff == []
    kept = [(n, v) for n, v in out if n not in (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host")]
    original = [(n, v) for n, v in headers if n not in (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"host")]
    it = iter(original)
    assert all(any(h == o for o in it) for h in kept), "order changed"

    for name, value in strip_response_hop_by_hop(headers):
        assert name not in HOP_BY_HOP and name not in named

    # Host policy
    backend = r.pick([b"10.0.0.2:8080", b"[2001:db8::2]:443", b"backend.internal"])
    rewrite = r.pick([None, "", "rewritten.example"])
    host_mode = r.pick(["pass-through", "rewrite", "upstream"])
    chosen = upstream_authority(host_mode, client_authority=authority, rewrite_host=rewrite, backend_authority=backend)
    if host_mode == "rewrite" and rewrite:
        assert chosen == rewrite.encode()
    elif host_mode == "upstream":
        assert chosen == backend
    else:
        assert chosen == authority
    assert _clean(chosen)

    host = host_without_port(authority)
    stripped = authority.strip().lower()
    assert host == host.lower() and stripped.startswith(host) and _clean(host)
    rest = stripped[len(host) :]
    assert rest == b"" or (rest[:1] == b":" and rest[1:].isdigit()) or stripped.startswith(b"["), (authority, host)


if __name__ == "__main__":
    run(test_one_input)
