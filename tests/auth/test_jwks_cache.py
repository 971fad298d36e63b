"""The JWKS cache state machine on a MockClock (auth/jwks.py): first fetch, refresh every
jwks_cache_secs, unknown-kid refetch at most every jwks_min_refresh_secs (coalesced),
stale keys kept while refreshes fail, backoff after failures."""

from __future__ import annotations

import trio
import trio.testing

from spooky_trio.auth.jwks import JwksCache, JwksSettings
from spooky_trio.auth.outbound import OutboundError
from tests.support.tokens import jwks, private_key, public_jwk

KEY = private_key("ES256")


class FakeIdp:
    """A JWKS endpoint: ``documents`` in turn (the last one repeats), ``down`` fails every fetch."""

    def __init__(self, *kids: str) -> None:
        self.kids = list(kids)
        self.down = False
        self.fetch_times: list[float] = []
        self.delay = 0.0

    async def fetch(self) -> bytes:
        self.fetch_times.append(trio.current_time())
        await trio.sleep(self.delay)
        if self.down:
            raise OutboundError("connect", "connection refused")
        return jwks(*(public_jwk(KEY, kid) for kid in self.kids))


def cache(cache_secs: float = 300, min_refresh: float = 30, timeout: float = 1) -> JwksCache:
    return JwksCache(JwksSettings("https://idp/jwks", None, "", cache_secs, min_refresh, timeout))


async def test_first_fetch_then_refresh_every_cache_secs(autojump_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    idp, keys = FakeIdp("a"), cache(cache_secs=300)
    assert keys.pending and not keys.has_keys
    nursery.start_soon(keys.refresh_loop, idp.fetch)
    await keys.wait_fetch(1)
    assert keys.kids == ["a"] and not keys.pending
    assert keys.lookup("a", "ES256") and not keys.lookup("a", "RS256") and not keys.lookup("b", "ES256")
    await trio.sleep(299)
    assert len(idp.fetch_times) == 1
    idp.kids = ["b"]
    await trio.sleep(2)
    assert len(idp.fetch_times) == 2 and keys.kids == ["b"]


async def test_unknown_kid_refetch_is_coalesced_and_rate_limited(autojump_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    idp, keys = FakeIdp("a"), cache(min_refresh=30)
    idp.delay = 0.2
    nursery.start_soon(keys.refresh_loop, idp.fetch)
    await keys.wait_fetch(1)
    idp.kids = ["a", "new"]
    assert keys.want_refetch(trio.current_time())  # asked: a fetch starts

    results: list[bool] = []

    async def request(kid: str) -> None:
        if keys.want_refetch(trio.current_time()):
            await keys.wait_fetch(1)
        results.append(bool(keys.lookup(kid, "ES256")))

    async with trio.open_nursery() as requests:  # many waiters, one fetch
        for _ in range(20):
            requests.start_soon(request, "new")
    assert results == [True] * 20
    assert len(idp.fetch_times) == 2
    # a flood of random kids within min_refresh: refused at once, nothing fetched
    for i in range(100):
        assert not keys.want_refetch(trio.current_time())
        assert not keys.lookup(f"random-{i}", "ES256")
    await trio.sleep(10)
    assert not keys.want_refetch(trio.current_time())
    assert len(idp.fetch_times) == 2
    await trio.sleep(21)  # 30 s after the last asked-for refetch
    assert keys.want_refetch(trio.current_time())
    await keys.wait_fetch(1)
    assert len(idp.fetch_times) == 3


async def test_a_wait_is_bounded_by_the_timeout(autojump_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    idp, keys = FakeIdp("a"), cache(timeout=1)
    nursery.start_soon(keys.refresh_loop, idp.fetch)
    await keys.wait_fetch(1)
    idp.delay = 60  # the next fetch hangs (its own deadline is the fetcher's business)
    started = trio.current_time()
    assert keys.want_refetch(started)
    await keys.wait_fetch(keys.settings.timeout)
    assert trio.current_time() - started == 1.0
    assert keys.kids == ["a"]


async def test_stale_keys_are_kept_while_refreshes_fail_with_backoff(autojump_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    idp, keys = FakeIdp("a"), cache(cache_secs=10, min_refresh=8)
    nursery.start_soon(keys.refresh_loop, idp.fetch)
    await keys.wait_fetch(1)
    idp.down = True
    await trio.sleep(10.5)  # the refresh at 10 s failed
    assert keys.kids == ["a"] and keys.failures == 1
    assert keys.lookup("a", "ES256")
    assert keys.stale(trio.current_time())
    await trio.sleep(60)
    gaps = [b - a for a, b in zip(idp.fetch_times[1:], idp.fetch_times[2:])]
    assert gaps[:4] == [1, 2, 4, 8] and set(gaps[4:]) == {8}  # doubling, capped at min_refresh
    assert keys.kids == ["a"]
    idp.down = False
    await trio.sleep(8)
    assert not keys.stale(trio.current_time()) and keys.last_error is None


async def test_no_keys_yet_waits_for_the_first_fetch_only(autojump_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    idp, keys = FakeIdp("a"), cache()
    idp.down = True
    assert keys.want_refetch(trio.current_time())  # the first fetch is pending: worth waiting for
    nursery.start_soon(keys.refresh_loop, idp.fetch)
    await keys.wait_fetch(1)
    assert not keys.has_keys
    # no keys and no fetch underway: the refresher's schedule applies, requests do not trigger
    assert not keys.want_refetch(trio.current_time())
    assert len(idp.fetch_times) == 1
