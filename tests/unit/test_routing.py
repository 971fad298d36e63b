"""Deterministic route selection: every tie-break rule of the spec, in order."""

from __future__ import annotations

import pytest

from spooky_trio.routing.table import RouteEntry, RoutingTable


def table(*entries: tuple[str, str | None, str | None, str | None]) -> RoutingTable:
    return RoutingTable(RouteEntry(pool=p, host=h, path_prefix=pp, method=m) for p, h, pp, m in entries)


def pool(t: RoutingTable, host: str, path: str, method: str = "GET") -> str | None:
    hit = t.match(host, path, method)
    return hit.pool if hit else None


def test_longest_prefix_wins() -> None:
    t = table(("root", None, "/", None), ("api", None, "/api", None), ("v1", None, "/api/v1", None))
    assert pool(t, "x", "/api/v1/users") == "v1"
    assert pool(t, "x", "/api/v2") == "api"
    assert pool(t, "x", "/other") == "root"


def test_host_specific_beats_agnostic_on_equal_prefix() -> None:
    t = table(("any", None, "/", None), ("site", "example.com", "/", None))
    assert pool(t, "example.com", "/") == "site"
    assert pool(t, "other.com", "/") == "any"


def test_longer_prefix_beats_host_specificity() -> None:
    t = table(("site", "example.com", "/", None), ("api", None, "/api", None))
    assert pool(t, "example.com", "/api/x") == "api"


def test_exact_host_beats_wildcard_and_longer_wildcard_beats_shorter() -> None:
    t = table(
        ("wild", "*.example.com", "/", None),
        ("deeper", "*.eu.example.com", "/", None),
        ("exact", "a.eu.example.com", "/", None),
    )
    assert pool(t, "a.eu.example.com", "/") == "exact"
    assert pool(t, "b.eu.example.com", "/") == "deeper"
    assert pool(t, "c.example.com", "/") == "wild"


def test_wildcard_does_not_match_apex() -> None:
    t = table(("wild", "*.example.com", "/", None))
    assert pool(t, "example.com", "/") is None


def test_method_specific_beats_agnostic_then_name_breaks_ties() -> None:
    t = table(("b", None, "/", None), ("a", None, "/", None), ("posts", None, "/", "POST"))
    assert pool(t, "x", "/", "POST") == "posts"
    assert pool(t, "x", "/", "GET") == "a"


def test_host_only_route_matches_any_path() -> None:
    t = table(("site", "example.com", None, None))
    assert pool(t, "example.com", "/anything") == "site"
    assert pool(t, "example.org", "/anything") is None


@pytest.mark.parametrize("order", [0, 1, 2])
def test_result_independent_of_declaration_order(order: int) -> None:
    entries = [("a", None, "/x", None), ("b", "h", "/x", None), ("c", "*.h", "/x", None)]
    entries = entries[order:] + entries[:order]
    assert pool(table(*entries), "h", "/x/y") == "b"
