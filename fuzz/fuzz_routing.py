"""Fuzz routing-table matching: random route sets and random host/path/method requests.

Routes are built with ``RoutingTable.from_pools`` (so host/method normalization is covered),
requests go through the pipeline's own preparation (``host_without_port`` on the authority,
path without query, method upper-cased).

Invariants: ``match`` never raises; the result does not depend on the order the pools are
listed in; it equals a brute-force reading of the spec ("Route selection is deterministic"):
among the routes that match, the longest ``path_prefix``, then host-specific over
host-agnostic, exact host over wildcard, longer wildcard suffix over shorter,
method-specific over method-agnostic, then the smaller pool name. A wildcard ``*.d`` matches
only proper subdomains of ``d``; host matching ignores case and a ``:port``.
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _runner import instrumented, run
from _fdp import Reader

with instrumented(__name__):
    from spooky_trio.http.headers import host_without_port
    from spooky_trio.routing.table import RouteEntry, RoutingTable


HOSTS = [None, "example.com", "*.example.com", "*.api.example.com", "API.example.com", "api.example.com", "*.com", "[::1]"]
PREFIXES = [None, "/", "/api", "/api/", "/api/v1", "/static", ""]
METHODS = [None, "GET", "get", "POST", "DELETE"]
REQ_HOSTS = [b"example.com", b"api.example.com", b"API.Example.COM:8443", b"x.api.example.com", b"com", b".example.com",
             b"[::1]:443", b"example.com.", b""]
REQ_PATHS = [b"/", b"/api", b"/api/v1/x?y=1", b"/apix", b"/static/a.css", b"", b"*"]
REQ_METHODS = [b"GET", b"get", b"POST", b"HEAD", b"DELETE"]


def _text(r: Reader, options: list, max_len: int):  # type: ignore[no-untyped-def]
    return r.pick(options) if r.byte() % 4 else r.bytes_(max_len).decode("latin-1")


def _spec_key(e: RouteEntry) -> tuple:  # type: ignore[type-arg]
    """The spec's order, written out independently of RouteEntry.sort_key."""
    host = e.host
    wildcard = host is not None and host.startswith("*.")
    return (
        -len(e.path_prefix or ""),
        host is None,
        wildcard or host is None,
        -(len(host) if wildcard and host else 0),
        e.method is None,
        e.pool,
    )


def _spec_matches(e: RouteEntry, host: str, path: str, method: str) -> bool:
    if e.method is not None and e.method != method:
        return False
    if e.path_prefix is not None and path[: len(e.path_prefix)] != e.path_prefix:
        return False
    if e.host is None:
        return True
    if e.host.startswith("*."):
        domain = e.host[2:]
        return host.endswith("." + domain) and len(host) > len(domain) + 1
    return host == e.host


def test_one_input(data: bytes) -> None:
    r = Reader(data)
    pools = {}
    for i in range(r.int_in_range(0, 8)):
        route = SimpleNamespace(host=_text(r, HOSTS, 20), path_prefix=_text(r, PREFIXES, 12), method=_text(r, METHODS, 8))
        pools[f"p{r.byte() % 6}{i}"] = SimpleNamespace(route=route)
    authority = r.pick(REQ_HOSTS) if r.byte() % 4 else r.bytes_(30)
    target = r.pick(REQ_PATHS) if r.byte() % 4 else r.bytes_(30)
    raw_method = r.pick(REQ_METHODS) if r.byte() % 4 else r.bytes_(8)
    # what ProxyPipeline._route does with the request
    host = host_without_port(authority).decode("latin-1")
    path = target.split(b"?", 1)[0].decode("latin-1")
    method = raw_method.decode("latin-1").upper()

    table = RoutingTable.from_pools(pools)
    reversed_table = RoutingTable.from_pools(dict(reversed(list(pools.items()))))
    got = table.match(host, path, method)
    assert got == reversed_table.match(host, path, method)
    assert got == table.match(host, path, method)
    candidates = [e for e in table.entries if _spec_matches(e, host, path, method)]
    expected = min(candidates, key=_spec_key) if candidates else None
    assert got == expected, (got, expected)
    for e in table.entries:
        assert e.matches(host, path, method) == _spec_matches(e, host, path, method), e
    # case and port of the authority do not matter
    if authority.isascii() and not authority.startswith(b"["):
        base = authority.rsplit(b":", 1)[0] if b":" in authority and authority.rsplit(b":", 1)[1].isdigit() else authority
        for variant in (base.upper() + b":443", base.lower()):
            assert table.match(host_without_port(variant).decode("latin-1"), path, method) == got, variant


if __name__ == "__main__":
    run(test_one_input)
