"""The shared rate-limit store (resilience/ratelimit_store.py) against a real redis-server:
the script's buckets, its clock, the deadline, the breaker, recovery, passwords and TLS."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme

from spooky_trio.config import RateLimitStoreConfig
from spooky_trio.resilience.ratelimit_script import script_arguments, split_reply
from spooky_trio.resilience.ratelimit_store import (
    DOWN,
    PROBE_BACKOFF_MAX,
    TRIP_AFTER,
    UP,
    RedisStore,
    StoreSettings,
    StoreUnavailable,
)
from tests.support.redis import running_redis

#: (rate, burst, idle ttl ms) of one rule
ARGS = (10.0, 3.0, 300_000.0)
SLOW = (0.01, 3.0, 300_000.0)


@asynccontextmanager
async def running_store(url: str, **config: object) -> AsyncIterator[RedisStore]:
    store = RedisStore(StoreSettings.from_config(RateLimitStoreConfig(kind="redis", url=url, **config)))  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        yield store
        nursery.cancel_scope.cancel()


def store_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "spooky.ratelimit"]


async def test_buckets_start_full_take_one_token_and_stop_at_the_first_empty_one() -> None:
    async with running_redis() as redis, running_store(redis.url) as store:
        assert store.state == UP
        # (a rate slow enough that no token comes back while a loaded box runs the test)
        balances = [await store.check([b"t:a"], SLOW, 1.0) for _ in range(4)]
        assert [b[0] // 1000 for b in balances[:3]] == [2, 1, 0]
        assert balances[3][0] < 0  # rejected: less than one token
        # two buckets in one call: the first is empty, so the second is not touched
        assert len(await store.check([b"t:a", b"t:b"], SLOW * 2, 1.0)) == 1
        assert (await store.check([b"t:b"], SLOW, 1.0))[0] // 1000 == 2
        assert await redis.command("HGET", "t:b", "t") == "2"
        # a bucket expires once it would be full again (at most its idle ttl)
        pttl = int(await redis.command("PTTL", "t:b"))
        assert 90_000 < pttl <= 100_000  # 1 token to refill at 0.01/s: 100 s
        await store.check([b"t:capped"], (0.01, 3.0, 5_000.0), 1.0)
        pttl = int(await redis.command("PTTL", "t:capped"))
        assert 0 < pttl <= 5_000  # ... but never longer than the idle ttl


async def test_concurrent_checks_share_script_calls_and_stay_exact() -> None:
    async with running_redis() as redis, running_store(redis.url) as store:
        results: list[list[int]] = []

        async def one(key: bytes) -> None:
            results.append(await store.check([key, b"batch:shared"], ARGS * 2, 5.0))

        async with trio.open_nursery() as nursery:
            for i in range(60):
                nursery.start_soon(one, b"batch:own%d" % i)
        # each check took its own bucket's token, then the shared bucket's (burst 3): exactly
        # three were admitted by both, the rest stopped at the shared one
        assert sorted(len(r) for r in results) == [2] * 60
        assert sum(r[1] >= 0 for r in results) == 3 and all(r[0] == 2000 for r in results)
        stats = await redis.command("INFO", "commandstats")
        calls = int(stats.split("cmdstat_evalsha:calls=")[1].split(",")[0])
        assert calls < 60 / 2, stats  # batched: far fewer script calls than checks


def test_script_arguments_and_reply_of_a_batch() -> None:
    keys, argv = script_arguments([([b"a"], [1.0, 2.0, 3.0]), ([b"b", b"c"], [4.0, 5.0, 6.0, 7.0, 8.0, 9.0])])
    assert keys == [b"a", b"b", b"c"] and argv == [2, 1, 1.0, 2.0, 3.0, 2, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    assert split_reply([1, 1000, 1, -500], 2) == [[1000], [-500]]
    with pytest.raises(ValueError):
        split_reply([2, 1000], 1)
    with pytest.raises(ValueError):
        split_reply(b"OK", 1)


async def test_refill_follows_the_redis_servers_clock() -> None:
    async with running_redis() as redis, running_store(redis.url) as store:
        for _ in range(3):
            await store.check([b"clock"], ARGS, 1.0)
        started = time.monotonic()
        await trio.sleep(0.25)
        [milli] = await store.check([b"clock"], ARGS, 1.0)
        elapsed = time.monotonic() - started
        # 10 tokens/s: 2.5 back after 0.25 s (Redis time, close to ours on one machine), one taken
        assert 1500 - 100 <= milli <= (elapsed * 10 - 1) * 1000 + 100


async def test_a_flushed_script_is_sent_again_within_the_same_check() -> None:
    async with running_redis() as redis, running_store(redis.url) as store:
        assert await redis.command("SCRIPT", "FLUSH") == "OK"
        assert (await store.check([b"k"], ARGS, 1.0))[0] == 2000


async def test_redis_killed_then_restarted_trips_the_breaker_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="spooky.ratelimit")
    async with running_redis() as redis, running_store(redis.url) as store:
        await store.check([b"k"], ARGS, 1.0)
        caplog.clear()
        await redis.stop()
        for _ in range(TRIP_AFTER):
            started = trio.current_time()
            with pytest.raises(StoreUnavailable) as info:
                await store.check([b"k"], ARGS, 0.2)
            assert info.value.reason in ("error", "timeout") and trio.current_time() - started < 0.2 + 0.1
        assert store.state == DOWN and store.outages == 1
        with pytest.raises(StoreUnavailable, match="down"), trio.testing.assert_no_checkpoints():
            await store.check([b"k"], ARGS, 0.2)  # no wait while down: not even a checkpoint
        await redis.start()
        with trio.fail_after(PROBE_BACKOFF_MAX + 3):
            while store.state != UP:
                await trio.sleep(0.02)
        assert (await store.check([b"k"], ARGS, 1.0))[0] == 2000  # an empty Redis: a full bucket
    messages = store_logs(caplog)
    assert sum("is down" in m for m in messages) == 1 and sum("is available" in m for m in messages) == 1


async def test_a_frozen_redis_costs_at_most_the_timeout_then_nothing(caplog: pytest.LogCaptureFixture) -> None:
    async with running_redis() as redis, running_store(redis.url) as store:
        await store.check([b"k"], ARGS, 1.0)
        redis.pause()
        try:
            waits = []
            for _ in range(TRIP_AFTER):
                started = trio.current_time()
                with pytest.raises(StoreUnavailable, match="timeout"):
                    await store.check([b"k"], ARGS, 0.05)
                waits.append(trio.current_time() - started)
            assert max(waits) < 0.05 + 0.05, waits
            assert store.state == DOWN
        finally:
            redis.resume()
        with trio.fail_after(PROBE_BACKOFF_MAX + 3):
            while store.state != UP:
                await trio.sleep(0.02)
        assert len(await store.check([b"k"], ARGS, 1.0)) == 1


async def test_a_store_started_while_redis_is_down_comes_up_when_it_starts(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="spooky.ratelimit")
    async with running_redis() as redis:
        await redis.stop()
        async with running_store(redis.url) as store:
            assert store.state == DOWN
            assert any("unavailable" in m for m in store_logs(caplog))
            await redis.start()
            with trio.fail_after(PROBE_BACKOFF_MAX + 3):
                while store.state != UP:
                    await trio.sleep(0.02)


async def test_password_in_the_url_or_a_file(tmp_path: Path) -> None:
    async with running_redis("--requirepass", "s3cret") as redis:
        async with running_store(f"redis://:s3cret@127.0.0.1:{redis.port}/2") as store:
            assert store.state == UP and (await store.check([b"k"], ARGS, 1.0))[0] == 2000
            assert "s3cret" not in repr(store.settings) and "s3cret" not in str(store.snapshot())
        secret = tmp_path / "redis.pass"
        secret.write_text("s3cret\n")
        async with running_store(redis.url, password_file=str(secret)) as store:
            assert store.state == UP
        async with running_store(f"redis://:wrong@127.0.0.1:{redis.port}/0") as store:
            assert store.state == DOWN and store.last_error is not None and "wrong" not in store.last_error


async def test_rediss_verifies_the_servers_certificate(certs_dir: Path) -> None:
    async with running_redis(tls=certs_dir) as redis:
        url = f"rediss://localhost:{redis.tls_port}/0"
        async with running_store(url, ca_file=str(certs_dir / "ca.pem")) as store:
            assert store.state == UP and (await store.check([b"k"], ARGS, 1.0))[0] == 2000
        async with running_store(url) as store:  # the system roots do not know the test CA
            assert store.state == DOWN and "CERTIFICATE_VERIFY_FAILED" in str(store.last_error)



async def test_rediss_checks_the_host_name(ca: trustme.CA, certs_dir: Path, tmp_path: Path) -> None:
    other = ca.issue_cert("redis.example")  # signed by the trusted CA, for another name
    other.private_key_pem.write_to_path(str(tmp_path / "localhost.key"))
    other.cert_chain_pems[0].write_to_path(str(tmp_path / "localhost.pem"))
    async with running_redis(tls=tmp_path) as redis:
        async with running_store(f"rediss://localhost:{redis.tls_port}/0", ca_file=str(certs_dir / "ca.pem")) as store:
            assert store.state == DOWN and "match" in str(store.last_error)


def test_equal_settings_share_a_store_and_the_password_never_shows() -> None:
    a = StoreSettings.from_config(RateLimitStoreConfig(kind="redis", url="redis://:pw@10.0.0.1:6380/1"))
    b = StoreSettings.from_config(RateLimitStoreConfig(kind="redis", url="redis://:pw@10.0.0.1:6380/1", timeout_ms=5))
    assert a == b and hash(a) == hash(b) and "pw" not in repr(a)
    assert RedisStore(a).name == "redis://10.0.0.1:6380/1"


async def test_a_failing_client_is_made_anew_never_raised(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A bug or an unexpected error inside the store's task must not reach the server's
    task tree: it is logged, the store is down meanwhile, and a new client takes over."""
    real_probe = RedisStore._probe
    calls = 0

    async def flaky_probe(self: RedisStore, client: object) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return await real_probe(self, client)  # type: ignore[arg-type]

    monkeypatch.setattr(RedisStore, "_probe", flaky_probe)
    async with running_redis() as redis, running_store(redis.url) as store:
        assert store.state == DOWN and "RuntimeError: boom" in str(store.last_error)
        assert any("starting a new one" in m for m in store_logs(caplog))
        with trio.fail_after(PROBE_BACKOFF_MAX + 3):
            while store.state != UP:
                await trio.sleep(0.02)
        assert (await store.check([b"k"], ARGS, 1.0))[0] == 2000
