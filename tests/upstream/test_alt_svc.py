"""Alt-Svc parsing (RFC 7838) and the alt-svc cache: learning with ``ma``, ``clear``, the
broken backoff (5 minutes, doubling, at most a day, reset by a success). Times are passed
in: no clock, no sleeping."""

from __future__ import annotations

from pathlib import Path

import pytest

from spooky_trio.upstream import BackendTarget, make_client_ssl_context
from spooky_trio.upstream.alt_svc import BROKEN_INITIAL, BROKEN_MAX, DEFAULT_MAX_AGE, AltSvcCache, Alternative, parse_alt_svc


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([b'h3=":443"'], [Alternative("h3", None, 443, DEFAULT_MAX_AGE)]),
        ([b'h3=":8443"; ma=60'], [Alternative("h3", None, 8443, 60)]),
        ([b'h3-29=":443"; ma=10, h3="alt.example:4433"; ma=3600; persist=1'],
         [Alternative("h3-29", None, 443, 10), Alternative("h3", "alt.example", 4433, 3600)]),
        ([b'h2=":443"', b'h3=":444"'], [Alternative("h2", None, 443, DEFAULT_MAX_AGE), Alternative("h3", None, 444, DEFAULT_MAX_AGE)]),
        ([b'h3="[::1]:443";ma="120"'], [Alternative("h3", "::1", 443, 120)]),
        ([b'h%33=":443"'], [Alternative("h3", None, 443, DEFAULT_MAX_AGE)]),  # a percent-encoded protocol id
        ([b'h3=":443"; ma=soon'], [Alternative("h3", None, 443, DEFAULT_MAX_AGE)]),  # a bad ma keeps the default
        ([b"clear"], "clear"),
        ([b""], None),
        ([b"h3=:443"], None),  # the authority must be quoted
        ([b'h3=":0"', b'h3=":99999"', b'h3="nohost"'], None),  # bad ports and authorities are skipped
        ([b'garbage, h3=":443"'], [Alternative("h3", None, 443, DEFAULT_MAX_AGE)]),  # one bad entry, not the field
    ],
)
def test_parse(values: list[bytes], expected: object) -> None:
    assert parse_alt_svc(values) == expected


@pytest.fixture
def origin(certs_dir: Path) -> BackendTarget:
    context = make_client_ssl_context(ca_file=str(certs_dir / "ca.pem"))
    return BackendTarget(scheme="https", host="backend.test", port=443, ssl_context=context, server_name="backend.test",
                         protocol="alt-svc", connect_host="10.0.0.5")


def test_learn_honours_ma_and_keeps_the_origin_identity(origin: BackendTarget) -> None:
    cache = AltSvcCache()
    assert cache.observe(origin, [(b"server", b"x")], now=0) is None  # no field: nothing changes
    learned = cache.observe(origin, [(b"alt-svc", b'h3=":8443"; ma=100')], now=1000)
    assert isinstance(learned, BackendTarget)
    assert (learned.protocol, learned.port, learned.host, learned.server_name, learned.connect_host) == ("h3", 8443, "backend.test", "backend.test", "10.0.0.5")
    assert learned.ssl_context is origin.ssl_context  # the pool's trust, and TLS names the origin
    assert cache.usable(origin, 1099.9) is learned
    assert cache.usable(origin, 1100) is None  # ma passed: HTTP/2 until it is advertised again
    again = cache.observe(origin, [(b"alt-svc", b'h3=":8443"; ma=100')], now=1100)
    assert again is learned and cache.usable(origin, 1150) is learned  # the same target object: sessions stay keyed
    other_host = cache.observe(origin, [(b"alt-svc", b'h3="quic.backend.test:9443"')], now=1200)
    assert isinstance(other_host, BackendTarget) and other_host.connect_host == "quic.backend.test" and other_host.host == "backend.test"


def test_clear_forgets_the_alternative(origin: BackendTarget) -> None:
    cache = AltSvcCache()
    assert cache.observe(origin, [(b"alt-svc", b"clear")], now=0) is None  # nothing to clear
    cache.observe(origin, [(b"alt-svc", b'h3=":8443"')], now=0)
    assert cache.observe(origin, [(b"alt-svc", b"clear")], now=1) == "clear"
    assert cache.usable(origin, 2) is None and cache.alternative(origin) is None


def test_only_h3_is_an_alternative(origin: BackendTarget) -> None:
    cache = AltSvcCache()
    assert cache.observe(origin, [(b"alt-svc", b'h3-29=":443", h2=":443"')], now=0) is None
    assert cache.usable(origin, 1) is None


def test_broken_backoff_doubles_to_a_day_and_a_success_resets_it(origin: BackendTarget) -> None:
    cache = AltSvcCache()
    cache.observe(origin, [(b"alt-svc", b'h3=":8443"; ma=10000000')], now=0)
    periods = []
    now = 0.0
    for _ in range(12):
        period = cache.mark_broken(origin, now)
        periods.append(period)
        assert cache.broken(origin, now) and cache.usable(origin, now) is None
        assert cache.usable(origin, now + period - 0.001) is None
        now += period
        assert cache.usable(origin, now) is not None  # the period is over: HTTP/3 is tried again
    assert periods[:4] == [BROKEN_INITIAL, 2 * BROKEN_INITIAL, 4 * BROKEN_INITIAL, 8 * BROKEN_INITIAL]
    assert periods[-1] == BROKEN_MAX == 86400 and BROKEN_INITIAL == 300
    cache.confirm(origin)  # a handshake worked
    assert cache.mark_broken(origin, now) == BROKEN_INITIAL
    assert cache.broken_until() == {str(origin): now + BROKEN_INITIAL}


def test_retain_keeps_the_alternatives_of_kept_origins(origin: BackendTarget) -> None:
    cache = AltSvcCache()
    learned = cache.observe(origin, [(b"alt-svc", b'h3=":8443"')], now=0)
    assert cache.retain({origin}) == {learned}
    assert cache.retain(set()) == set() and cache.alternative(origin) is None
