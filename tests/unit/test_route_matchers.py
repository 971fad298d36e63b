"""Route matchers (extensions.md section 1; routing/matchers.py): the truth table of each
kind on each source, and their place in Spooky's precedence (routing/table.py)."""

from __future__ import annotations

import collections

import pytest

from spooky_trio.config.schema_traffic import MatcherConfig
from spooky_trio.http.messages import DownstreamRequest
from spooky_trio.routing.matchers import Matcher
from spooky_trio.routing.table import RouteEntry, RoutingTable


def req(path: bytes = b"/", headers: list[tuple[bytes, bytes]] | None = None) -> DownstreamRequest:
    return DownstreamRequest(method=b"GET", scheme=b"https", authority=b"a.example.com", path=path, headers=headers or [],
                             protocol="HTTP/2", client_address=("192.0.2.1", 1))


def m(source: str, name: str, **kind: object) -> Matcher:
    return Matcher(source, MatcherConfig(name=name, **kind))  # type: ignore[arg-type]


H = [(b"x-a", b"one"), (b"x-b", b"1"), (b"x-b", b"2"), (b"user-agent", b"Mozilla/5.0 (iPhone) Mobile Safari")]

# (matcher, request, expected)
TRUTH_TABLE = [
    # headers: any value, or the values joined with ", "; names in any case
    (m("header", "x-a", exact="one"), req(headers=H), True),
    (m("header", "X-A", exact="one"), req(headers=H), True),
    (m("header", "x-a", exact="ONE"), req(headers=H), False),  # values are case-sensitive
    (m("header", "x-b", exact="2"), req(headers=H), True),  # the second of two fields
    (m("header", "x-b", exact="1, 2"), req(headers=H), True),  # the joined value
    (m("header", "x-b", prefix="1, "), req(headers=H), True),
    (m("header", "x-b", suffix="2"), req(headers=H), True),
    (m("header", "x-b", exact="3"), req(headers=H), False),
    (m("header", "x-a", prefix="on"), req(headers=H), True),
    (m("header", "x-a", suffix="ne"), req(headers=H), True),
    (m("header", "x-a", suffix="on"), req(headers=H), False),
    # regex: the whole value (re.fullmatch), never a search
    (m("header", "user-agent", regex="Mobile"), req(headers=H), False),
    (m("header", "user-agent", regex=".*Mobile.*"), req(headers=H), True),
    (m("header", "user-agent", regex="^Mozilla"), req(headers=H), False),
    (m("header", "user-agent", regex="Mozilla.*"), req(headers=H), True),
    (m("header", "x-a", regex="o|one"), req(headers=H), True),
    # values are read as UTF-8: a byte that is not UTF-8 never equals a configured character
    (m("header", "x-a", regex="\xff"), req(headers=[(b"x-a", b"\xff")]), False),
    (m("header", "x-a", regex="\xff"), req(headers=[(b"x-a", "\xff".encode())]), True),
    # invert negates, a missing field included
    (m("header", "user-agent", regex=".*Mobile.*", invert=True), req(headers=H), False),
    (m("header", "user-agent", regex=".*Mobile.*", invert=True), req(), True),
    (m("header", "x-missing", exact="x"), req(headers=H), False),
    (m("header", "x-missing", exact="x", invert=True), req(headers=H), True),
    # present
    (m("header", "x-a", present=True), req(headers=H), True),
    (m("header", "x-a", present=True), req(headers=[(b"x-a", b"")]), True),  # an empty value is still there
    (m("header", "x-a", present=False), req(headers=H), False),
    (m("header", "x-z", present=False), req(headers=H), True),
    (m("header", "x-z", present=True, invert=True), req(headers=H), True),
    (m("header", "x-z", present=False, invert=True), req(headers=H), False),
    # query: pairs as sent (repeated keys: any value; no '=' means the empty value; names exact)
    (m("query", "a", exact="2"), req(b"/p?a=1&a=2"), True),
    (m("query", "a", exact="3"), req(b"/p?a=1&a=2"), False),
    (m("query", "debug", present=True), req(b"/p?debug"), True),
    (m("query", "debug", present=True), req(b"/p?debug="), True),
    (m("query", "debug", exact=""), req(b"/p?x=1&debug"), True),
    (m("query", "debug", present=True), req(b"/p?Debug=1"), False),  # names are case-sensitive
    (m("query", "debug", present=True), req(b"/p"), False),
    (m("query", "debug", present=True), req(b"/p?"), False),
    (m("query", "q", exact="a%20b"), req(b"/p?q=a%20b"), True),  # not percent-decoded
    (m("query", "q", exact="a b"), req(b"/p?q=a%20b"), False),
    (m("query", "a", exact="1=2"), req(b"/p?a=1=2"), True),  # the value is everything after the first '='
    (m("query", "v", regex="[0-9]+"), req(b"/p?v=12&v=x"), True),
    # cookies: every cookie field, "a=1; b=2", names exact, values trimmed, no-'=' pairs skipped
    (m("cookie", "b", exact="2"), req(headers=[(b"cookie", b"a=1; b=2")]), True),
    (m("cookie", "b", exact="2"), req(headers=[(b"cookie", b"a=1"), (b"cookie", b"b=2")]), True),  # HTTP/2 crumbs
    (m("cookie", "B", exact="2"), req(headers=[(b"cookie", b"a=1; b=2")]), False),
    (m("cookie", "a", exact="1"), req(headers=[(b"cookie", b"junk; a = 1 ;b=2")]), True),
    (m("cookie", "beta", prefix="on"), req(headers=[(b"cookie", b"beta=on-2; beta=off")]), True),
    (m("cookie", "beta", prefix="on"), req(headers=[(b"cookie", b"beta=off")]), False),
    (m("cookie", "beta", present=True), req(headers=[(b"cookie", b"beta")]), False),  # no '=': not a cookie
    (m("cookie", "s", present=True), req(headers=[(b"x-cookie", b"s=1")]), False),
]


@pytest.mark.parametrize(("matcher", "request_", "expected"), TRUTH_TABLE, ids=lambda v: repr(v)[:60])
def test_truth_table(matcher: Matcher, request_: DownstreamRequest, expected: bool) -> None:
    assert matcher.matches(request_) is expected


def test_identity_normalizes_present_false_and_header_case() -> None:
    assert m("header", "X-A", present=False) == m("header", "x-a", present=True, invert=True)
    assert m("cookie", "A", present=True) != m("cookie", "a", present=True)
    assert m("header", "x-a", exact="1").label == "header:x-a"
    assert m("query", "debug", present=True).describe() == "query debug present"
    assert m("header", "x-a", exact="1", invert=True).describe() == "not header x-a"


def entry(pool: str, prefix: str | None = "/", host: str | None = None, method: str | None = None, *matchers: Matcher) -> RouteEntry:
    return RouteEntry(pool, host, prefix, method, tuple(matchers))


CANARY = m("header", "x-canary", exact="1")
BETA = m("cookie", "beta", present=True)


def test_more_matchers_win_after_spookys_order() -> None:
    table = RoutingTable([entry("plain"), entry("canary", "/", None, None, CANARY), entry("both", "/", None, None, CANARY, BETA)])
    canary = req(headers=[(b"x-canary", b"1")])
    both = req(headers=[(b"x-canary", b"1"), (b"cookie", b"beta=1")])
    assert table.match("a.example.com", "/x", "GET", req()).pool == "plain"  # type: ignore[union-attr]
    assert table.match("a.example.com", "/x", "GET", canary).pool == "canary"  # type: ignore[union-attr]
    assert table.match("a.example.com", "/x", "GET", both).pool == "both"  # type: ignore[union-attr]
    # without a request (the fuzz harness of old, or a caller that has none) matchers never hold
    assert table.match("a.example.com", "/x", "GET").pool == "plain"  # type: ignore[union-attr]


def test_spookys_criteria_come_first() -> None:
    # a longer prefix, a host, an exact host, a method: each beats any number of matchers
    canary = req(headers=[(b"x-canary", b"1")])
    for specific in (entry("s", "/api"), entry("s", "/", "a.example.com"), entry("s", "/", None, "GET")):
        table = RoutingTable([specific, entry("m", "/", None, None, CANARY)])
        assert table.match("a.example.com", "/api", "GET", canary).pool == "s"  # type: ignore[union-attr]
    exact = RoutingTable([entry("exact", "/", "a.example.com"), entry("wild", "/", "*.example.com", None, CANARY)])
    assert exact.match("a.example.com", "/", "GET", canary).pool == "exact"  # type: ignore[union-attr]
    # equal everything, equal matcher count: the pool name
    tie = RoutingTable([entry("b", "/", None, None, CANARY), entry("a", "/", None, None, BETA)])
    assert tie.match("h", "/", "GET", req(headers=[(b"x-canary", b"1"), (b"cookie", b"beta=x")])).pool == "a"  # type: ignore[union-attr]


def test_explain_names_the_matchers_that_decided() -> None:
    table = RoutingTable([entry("plain"), entry("canary", "/", None, None, CANARY), entry("both", "/", None, None, CANARY, BETA)])
    misses: collections.Counter[tuple[str, str]] = collections.Counter()
    winner, reason = table.explain("h", "/", "GET", req(headers=[(b"x-canary", b"1"), (b"cookie", b"beta=1")]), misses)
    assert winner is not None and winner.pool == "both"
    assert reason == "more matchers (2); matched header x-canary, cookie beta present"
    winner, reason = table.explain("h", "/", "GET", req(headers=[(b"x-canary", b"1")]), misses)
    assert winner is not None and winner.pool == "canary"
    assert reason == "more matchers (1); matched header x-canary; both not taken: cookie beta present did not match"
    winner, reason = table.explain("h", "/", "GET", req(), misses)
    assert winner is not None and winner.pool == "plain"
    assert reason == "only match; both not taken: header x-canary did not match"
    assert misses == {("both", "cookie:beta"): 1, ("both", "header:x-canary"): 1, ("canary", "header:x-canary"): 1}
    counted: collections.Counter[tuple[str, str]] = collections.Counter()
    table.match("h", "/", "GET", req(), counted)
    assert counted == {("both", "header:x-canary"): 1, ("canary", "header:x-canary"): 1}
    assert RoutingTable([entry("canary", "/", None, None, CANARY)]).explain("h", "/", "GET", req()) == (
        None, "no match; canary not taken: header x-canary did not match")
