"""DNS refresh: address choice, failure handling, and the refresh loop on a MockClock."""

from __future__ import annotations

from typing import Any

import attrs
import dns.resolver
import pytest
import trio
import trio.testing

from spooky_trio.health.dns import DnsRefresher, choose_address, make_resolver, resolve_addresses
from spooky_trio.core.state import StateStore


@attrs.define
class Record:
    address: str


@attrs.define
class FakeResolver:
    """``answers[rdtype]``: a list of addresses, or an exception to raise."""

    answers: dict[str, Any]
    queries: list[tuple[float, str]] = attrs.Factory(list)

    async def resolve(self, host: str, rdtype: str, search: bool) -> list[Record]:
        self.queries.append((trio.current_time(), rdtype))
        answer = self.answers[rdtype]
        if isinstance(answer, BaseException):
            raise answer
        return [Record(a) for a in answer]


def test_choose_address_keeps_current_else_lowest_ipv4_first() -> None:
    assert choose_address(frozenset({"10.0.0.9", "10.0.0.10"}), None) == "10.0.0.9"
    assert choose_address(frozenset({"::1", "192.0.2.1"}), None) == "192.0.2.1"
    assert choose_address(frozenset({"10.0.0.9", "10.0.0.10"}), "10.0.0.10") == "10.0.0.10"
    assert choose_address(frozenset({"10.0.0.9"}), "10.0.0.10") == "10.0.0.9"


def test_make_resolver_uses_configured_nameservers() -> None:
    resolver = make_resolver(["127.0.0.1:5353", "[::1]:53", "192.0.2.53"], lifetime=1.5)
    assert [(n.address, n.port) for n in resolver.nameservers] == [("127.0.0.1", 5353), ("::1", 53), ("192.0.2.53", 53)]  # type: ignore[union-attr]
    assert resolver.lifetime == 1.5


async def test_resolve_unions_a_and_aaaa_and_tolerates_no_aaaa() -> None:
    both = FakeResolver({"A": ["192.0.2.1"], "AAAA": ["2001:db8::1"]})
    assert await resolve_addresses(both, "x") == {"192.0.2.1", "2001:db8::1"}  # type: ignore[arg-type]
    v4 = FakeResolver({"A": ["192.0.2.1"], "AAAA": dns.resolver.NoAnswer()})
    assert await resolve_addresses(v4, "x") == {"192.0.2.1"}  # type: ignore[arg-type]


async def test_refresh_loop_moves_the_target_and_keeps_it_on_failure(autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    store = StateStore()
    state = store.backend("k", "app/a")
    resolver = FakeResolver({"A": ["127.0.0.1"], "AAAA": dns.resolver.NoAnswer()})
    refresher = DnsRefresher(state=state, host="app.test", resolver=resolver, interval=2.0)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(refresher.run)
        # started only after the first resolution: the first request already dials the address
        assert state.connect_address == "127.0.0.1" and trio.current_time() == 0
        resolver.answers["A"] = ["127.0.0.2"]
        await store.wait_for(lambda: state.connect_address == "127.0.0.2")
        assert trio.current_time() == pytest.approx(2.0)
        resolver.answers["A"] = dns.resolver.NXDOMAIN()
        resolver.answers["AAAA"] = dns.resolver.NXDOMAIN()
        await trio.sleep(6.5)  # refreshes at t=4, 6, 8 fail
        assert state.dns_failures == 3
        assert state.connect_address == "127.0.0.2" and state.addresses == {"127.0.0.2"}
        resolver.answers["A"] = ["127.0.0.2", "127.0.0.3"]
        resolver.answers["AAAA"] = dns.resolver.NoAnswer()
        await store.wait_for(lambda: len(state.addresses) == 2)
        assert state.connect_address == "127.0.0.2"  # still valid: no needless reconnects
        nursery.cancel_scope.cancel()
    assert caplog.text.count("failed") == 1  # one warning per failure streak
    assert [t for t, rdtype in resolver.queries if rdtype == "A"] == pytest.approx([0, 2, 4, 6, 8, 10])
