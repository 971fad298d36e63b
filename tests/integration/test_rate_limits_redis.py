"""Rate limits shared through a real redis-server: two proxy processes share one limit
exactly, each failure mode while Redis is frozen and then killed (no request waits longer
than ``timeout_ms`` plus a margin), shared limiting back once Redis returns, reloads,
``/admin/runtime`` and the metrics. Over HTTP/3 and HTTP/2."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from spooky_trio.proxy import ratelimit
from spooky_trio.serving.server import Server
from tests.support.backends import run_backend
from tests.support.clients import ProtocolClients, hammer, protocol_clients
from tests.support.proxy import free_udp_port, h1_pool, proxy_yaml, running_proxy
from tests.support.redis import RedisServer, running_redis

#: the margin over timeout_ms a request may take on a loaded machine (client to proxy and back)
MARGIN = 0.5


def redis_rules(url: str, *, burst: int, rate: int = 1, failure_mode: str = "local", timeout_ms: int = 100,
                control_port: int | None = None) -> str:
    control = f"observability:\n  control_api: {{enabled: true, port: {control_port}}}\n" if control_port else ""
    return f"""
resilience:
  rate_limit_store: {{kind: redis, url: "{url}", timeout_ms: {timeout_ms}, failure_mode: {failure_mode}}}
  scoped_rate_limits:
    - {{name: shared, scope: route, requests_per_sec: {rate}, burst: {burst}, store: redis}}
{control}"""


@asynccontextmanager
async def proxy_process(config: Path, control_port: int) -> AsyncIterator[trio.Process]:
    """``spooky-trio run`` in its own process, ready (its control API answers /ready)."""
    log = open(config.with_suffix(".log"), "wb")  # noqa: SIM115 - closed below
    proc = await trio.lowlevel.open_process([sys.executable, "-m", "spooky_trio", "run", "--config", str(config)],
                                            stdout=log, stderr=subprocess.STDOUT)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{control_port}", timeout=2) as api:
            with trio.fail_after(30):
                while True:
                    try:
                        if (await api.get("/ready")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert proc.returncode is None, config.with_suffix(".log").read_text()
                    await trio.sleep(0.05)
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(10):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        log.close()


@pytest.mark.parametrize("protocol", ["h3", "h2"])
async def test_two_proxy_processes_share_one_limit_exactly(protocol: str, certs_dir: Path, tmp_path: Path) -> None:
    burst, rate = 10, 5  # burst / rate = 2 s: a stall of the loaded test machine shorter than that costs no token
    async with running_redis() as redis, run_backend(name="b") as backend:
        # fail_closed and a long timeout: a store check that failed on a loaded machine shows
        # as a 503, never as a token taken from a local stand-in bucket
        extra = redis_rules(redis.url, burst=burst, rate=rate, failure_mode="fail_closed", timeout_ms=5000)
        other_port, control_port = free_udp_port(), free_udp_port()
        config = tmp_path / "other.yaml"
        config.write_text(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir, port=other_port,
                                     extra=extra + f"observability:\n  control_api: {{enabled: true, port: {control_port}}}\n"))
        async with running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir, extra=extra)) as server, \
                proxy_process(config, control_port), protocol_clients(server, certs_dir, protocol) as here:
            there = ProtocolClients(other_port, certs_dir, protocol, here._stack)
            window = await hammer([here, there], 2.0)  # both proxies at once
            admitted = window.statuses.count(200)
            assert set(window.statuses) <= {200, 429} and window.statuses.count(429) > 0
            # one bucket for both: the same total as one proxy, not twice as much
            assert burst + rate * window.shortest - 1 <= admitted <= burst + rate * window.longest + 1, (admitted, window)
            here_admitted = server.metrics.registry.get_sample_value("spooky_rate_limit_decisions_total",
                                                                     {"rule": "shared", "outcome": "allowed"})
            assert 0 < (here_admitted or 0) < admitted  # the other process admitted the rest
            assert await redis.command("EXISTS", "spooky:rl:shared:app") == "1"  # {key_prefix}{rule}:{key}


async def wait_store(server: Server, state: str) -> None:
    with trio.fail_after(10):
        while True:
            stores = server.state.rate_limits.stores.running()
            if stores and stores[0].state == state:
                return
            await trio.sleep(0.02)


async def timed(clients: ProtocolClients, n: int) -> list[tuple[int | None, float, bytes]]:
    """``n`` requests one after the other: (status, seconds taken, body)."""
    out = []
    for _ in range(n):
        started = trio.current_time()
        reply = await clients.get("/echo")
        out.append((reply.status, trio.current_time() - started, reply.body))
    return out


@pytest.mark.parametrize("protocol", ["h3", "h2"])
@pytest.mark.parametrize("failure_mode", ["fail_open", "fail_closed", "local"])
async def test_redis_frozen_then_killed_then_back(failure_mode: str, protocol: str, certs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ratelimit, "clock", lambda: 1000.0)  # the local stand-in buckets never refill here
    timeout = 0.25  # long enough that a loaded machine does not trip it by itself
    async with running_redis() as redis, run_backend(name="b") as backend:
        extra = redis_rules(redis.url, burst=3, failure_mode=failure_mode, timeout_ms=int(timeout * 1000))
        async with running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir, extra=extra)) as server, \
                protocol_clients(server, certs_dir, protocol) as clients:
            await wait_store(server, "up")
            assert [s for s, _, _ in await timed(clients, 2)] == [200, 200]  # one token left in Redis
            redis.pause()
            # each request waits for Redis at most timeout_ms; after 3 failures the store is
            # marked down and failure_mode decides at once
            frozen = await timed(clients, 3)
            await wait_store(server, "down")
            down = await timed(clients, 3)
            await redis.stop()  # killed (while still frozen) during the outage: nothing changes for the requests
            killed = await timed(clients, 2)
            results = frozen + down + killed
            assert all(took < timeout + MARGIN for _, took, _ in results), [took for _, took, _ in results]
            assert all(took < MARGIN for _, took, _ in down + killed)  # no wait for Redis any more
            statuses = [s for s, _, _ in results]
            if failure_mode == "fail_open":
                assert statuses == [200] * 8
            elif failure_mode == "fail_closed":
                assert statuses == [503] * 8
                assert all(b"(rate_limit_store_unavailable)" in body for _, _, body in results)
            else:  # a bucket of 3 in this process meanwhile
                assert statuses == [200] * 3 + [429] * 5
            text = server.metrics.render().decode()
            assert 'spooky_rate_limit_store_fallback_active{store="' + redis.url + '"} 1.0' in text
            assert f'spooky_rate_limit_fallbacks_total{{mode="{failure_mode}",rule="shared"}} 8.0' in text
            assert 'spooky_rate_limit_store_errors_total{kind="timeout"} 3.0' in text
            # Redis restarted (empty): shared limiting resumes with a full bucket
            await redis.start()
            await wait_store(server, "up")
            assert [s for s, _, _ in await timed(clients, 4)] == [200, 200, 200, 429]
            assert f'spooky_rate_limit_fallbacks_total{{mode="{failure_mode}",rule="shared"}} 8.0' in server.metrics.render().decode()


async def test_runtime_shows_the_store_without_its_password_and_a_reload_keeps_or_moves_it(certs_dir: Path, tmp_path: Path) -> None:
    cport = free_udp_port()
    async with running_redis("--requirepass", "s3cret") as redis, run_backend(name="b") as backend:
        url = f"redis://:s3cret@127.0.0.1:{redis.port}/0"
        path = tmp_path / "spooky.yaml"
        upstream = h1_pool(backend.url)
        async with running_proxy(proxy_yaml(upstream, certs_dir=certs_dir, extra=redis_rules(url, burst=2, control_port=cport)),
                                 config_path=path) as server, \
                protocol_clients(server, certs_dir, "h3") as clients, httpx.AsyncClient(base_url=f"http://127.0.0.1:{cport}") as api:
            port = server.listeners[0].port
            await wait_store(server, "up")
            assert [s for s, _, _ in await timed(clients, 3)] == [200, 200, 429]
            body = (await api.get("/admin/runtime")).text
            assert "s3cret" not in body
            runtime = (await api.get("/admin/runtime")).json()["rate_limits"]
            [store] = runtime["stores"]
            assert store["url"] == f"redis://127.0.0.1:{redis.port}/0" and store["state"] == "up"
            assert runtime["store"]["failure_mode"] == "local" and runtime["rules"][0]["limited"] == 1
            [before] = server.state.rate_limits.stores.running()
            # a reload that keeps the store settings and the rule: same connection, same bucket
            path.write_text(proxy_yaml(upstream, certs_dir=certs_dir, port=port,
                                       extra=redis_rules(url, burst=2, timeout_ms=50, control_port=cport)))
            assert (await api.post("/admin/runtime/reload")).status_code == 200
            assert server.state.rate_limits.stores.running() == [before]
            assert [s for s, _, _ in await timed(clients, 1)] == [429]
            # another database: another store; the old one stops once no live generation uses it
            path.write_text(proxy_yaml(upstream, certs_dir=certs_dir, port=port,
                                       extra=redis_rules(url.replace("/0", "/1"), burst=2, control_port=cport)))
            assert (await api.post("/admin/runtime/reload")).status_code == 200
            [after] = server.state.rate_limits.stores.running()
            assert after is not before and after.state == "up" and before.state == "down"
            assert [s for s, _, _ in await timed(clients, 3)] == [200, 200, 429]
