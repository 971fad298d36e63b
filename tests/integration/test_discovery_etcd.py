"""``discovery.kind: etcd`` against a real etcd (one member on loopback ports), requests
over HTTP/3, HTTP/2 and HTTP/1.1: a put and a delete are in the pool within a second; an
invalid value keeps the key's last valid one; compaction forces a re-read; etcd killed and
restarted while the proxy serves fails no request; the next listed endpoint is tried; TLS
with a client certificate and etcd's own auth."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import trio

from tests.support.backends import Backend, run_backend
from tests.support.clients import PROTOCOLS, proxy_clients
from tests.support.discovery import answered_by, metric, pool_ids, wait_metric, wait_pool
from tests.support.etcd import running_etcd
from tests.support.proxy import free_udp_port, proxy_yaml, running_proxy

PREFIX = "/spooky/upstreams/app/"


def value(backend: Backend, weight: int = 1) -> str:
    return json.dumps({"address": backend.url, "weight": weight})


def config(endpoints: list[str], certs_dir: Path, extra: str = "", refresh_ms: int = 400) -> str:
    listed = ", ".join(f'"{endpoint}"' for endpoint in endpoints)
    return proxy_yaml(f"""
        app:
          route: {{path_prefix: "/"}}
          discovery: {{kind: etcd, endpoints: [{listed}], prefix: "{PREFIX}", refresh_ms: {refresh_ms}, timeout_ms: 1000{extra}}}
        """, certs_dir=certs_dir)


async def test_put_delete_invalid_values_and_compaction(tmp_path: Path, certs_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "spooky.discovery")
    async with run_backend(name="a") as a, run_backend(name="b") as b, running_etcd(tmp_path / "etcd") as etcd:
        await etcd.put(PREFIX + "a", value(a))
        await etcd.put("/elsewhere/x", "not ours")  # outside the prefix: never read
        async with running_proxy(config([etcd.url], certs_dir)) as server, proxy_clients(server.listeners[0].port, certs_dir) as clients:
            assert pool_ids(server) == ["a"]
            assert await answered_by(clients, 3) == ["a"] * 3

            await etcd.put(PREFIX + "b", value(b, 3))
            await wait_pool(server, lambda ids: ids == ["a", "b"], timeout=1.0)  # seen within a second
            assert sorted(await answered_by(clients, 8)) == ["a"] * 2 + ["b"] * 6

            await etcd.delete(PREFIX + "a")
            await wait_pool(server, lambda ids: ids == ["b"], timeout=1.0)
            assert await answered_by(clients, 3) == ["b"] * 3

            await etcd.put(PREFIX + "b", "{not json")  # b keeps its last valid value
            await etcd.put(PREFIX + "bad", json.dumps({"address": "ftp://x"}))  # a new invalid key is ignored
            await wait_metric(server, "spooky_discovery_errors_total", 2, upstream="app", source="etcd", reason="invalid")
            assert pool_ids(server) == ["b"] and server.generation.pools["app"].backends[0].weight == 3

            await etcd.delete(PREFIX + "b")  # the last key: an empty prefix keeps the last good set
            await wait_metric(server, "spooky_discovery_errors_total", 1, upstream="app", source="etcd", reason="empty")
            assert pool_ids(server) == ["b"] and await answered_by(clients, 3) == ["b"] * 3

            # the store moves on and compacts its history: the watch renewed from the last
            # revision it saw is refused, and the source reads the prefix again
            for n in range(5):
                revision = await etcd.put("/elsewhere/x", str(n))
            await etcd.compact(revision)
            with trio.fail_after(5):  # the next renewal (within refresh_ms) finds its revision compacted
                while not any("compacted; reading the prefix again" in r.getMessage() for r in caplog.records):
                    await trio.sleep(0.05)
            await etcd.put(PREFIX + "a", value(a))  # and the watch after the re-read sees what follows
            await wait_pool(server, lambda ids: ids == ["a"], timeout=1.0)
            assert await answered_by(clients, 3) == ["a"] * 3
    lines = [r.getMessage() for r in caplog.records if r.name == "spooky.discovery"]
    label = f"pool app (etcd {PREFIX} {etcd.url})"
    assert f"{label}: backend b added ({b.url}, weight 3)" in lines
    assert f"{label}: backend a removed ({a.url}): it takes no new requests, its requests in flight finish" in lines
    assert any(line.startswith(f"{label}: key 'b': invalid value:") and "keeping its last valid value" in line for line in lines)


async def test_etcd_killed_and_restarted_while_serving_fails_no_request(tmp_path: Path, certs_dir: Path) -> None:
    dead = f"http://127.0.0.1:{free_udp_port()}"  # listed first: nothing listens there
    async with run_backend(name="a") as a, run_backend(name="b") as b, running_etcd(tmp_path / "etcd") as etcd:
        await etcd.put(PREFIX + "a", value(a))
        async with running_proxy(config([dead, etcd.url], certs_dir)) as server, proxy_clients(server.listeners[0].port, certs_dir) as clients:
            assert pool_ids(server) == ["a"]  # the second endpoint answered
            assert metric(server, "spooky_discovery_errors_total", upstream="app", source="etcd", reason="unreachable") >= 1
            statuses: list[int] = []

            async def traffic(stop: trio.Event) -> None:
                index = 0
                while not stop.is_set():
                    reply = await clients.request(PROTOCOLS[index % 3], "/echo")
                    statuses.append(reply.status)
                    index += 1

            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(traffic, stop)
                failures = metric(server, "spooky_discovery_errors_total", upstream="app", source="etcd", reason="unreachable")
                await etcd.stop()  # killed: the watch breaks
                await wait_metric(server, "spooky_discovery_errors_total", failures + 3, upstream="app", source="etcd",
                                  reason="unreachable")
                assert pool_ids(server) == ["a"]  # last known good while etcd is down
                await etcd.start()  # the same data, the same ports
                await etcd.put(PREFIX + "b", value(b))
                await wait_pool(server, lambda ids: ids == ["a", "b"], timeout=10.0)
                await answered_by(clients, 3)
                stop.set()
            assert statuses and set(statuses) == {200}, collections_summary(statuses)
            assert sorted(await answered_by(clients, 4)) == ["a", "a", "b", "b"]


def collections_summary(statuses: list[int]) -> dict[int, int]:
    return {status: statuses.count(status) for status in set(statuses)}


async def test_tls_with_a_client_certificate_and_etcd_auth(tmp_path: Path, certs_dir: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "spooky.discovery")
    tls = (certs_dir / "ca.pem", certs_dir / "localhost.pem", certs_dir / "localhost.key")
    (tmp_path / "etcd-password").write_text("s3cret-pw\n")
    # tokens that expire 1-2 s after their last use (etcd checks every second), while the
    # watch is renewed every 2.5 s: each renewal meets an expired token and must log in
    # again, without counting a failure and without taking it for compaction (a re-read)
    async with (run_backend(name="a") as a, run_backend(name="b") as b,
                running_etcd(tmp_path / "etcd", tls=tls, extra=["--auth-token-ttl", "1"]) as etcd):
        await etcd.enable_auth("s3cret-pw")
        await etcd.put(PREFIX + "a", value(a))
        files = f", ca_file: '{tls[0]}', cert_file: '{tls[1]}', key_file: '{tls[2]}', username: root"
        good = config([etcd.url], certs_dir, files + f", password_file: '{tmp_path / 'etcd-password'}'", refresh_ms=2500)
        async with running_proxy(good) as server, proxy_clients(server.listeners[0].port, certs_dir) as clients:
            assert pool_ids(server) == ["a"] and await answered_by(clients, 3) == ["a"] * 3
            await trio.sleep(5.5)  # (real time, etcd's clock: two renewals with an expired token)
            await etcd.put(PREFIX + "b", value(b))
            await wait_pool(server, lambda ids: ids == ["a", "b"], timeout=1.0)
            assert metric(server, "spooky_discovery_errors_total", upstream="app", source="etcd", reason="auth") == 0
            assert not [r for r in caplog.records if "reading the prefix again" in r.getMessage()]
            described = json.dumps(server.control_api.snapshot() if server.control_api else {})
            assert "s3cret" not in described
        wrong = config([etcd.url], certs_dir, files + ", password: wrong-pw")
        async with running_proxy(wrong) as server:
            assert pool_ids(server) == []
            assert metric(server, "spooky_discovery_errors_total", upstream="app", source="etcd", reason="auth") >= 1
            status = server.state.discovery.describe("app", server.generation.pools["app"].config)
            assert status is not None and "wrong-pw" not in json.dumps(status)
