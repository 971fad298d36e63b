"""``discovery.kind: file`` through the real proxy, over HTTP/3, HTTP/2 and HTTP/1.1: a
backend added, reweighted and removed by rewriting the file; a corrupt file keeps the last
good set (logged, counted, shown); a restored file applies; requests in flight on a
removed backend finish while new ones never reach it; per-backend state follows identity."""

from __future__ import annotations

import collections
import logging
import os
from pathlib import Path

import pytest
import trio

from spooky_trio.serving.server import Server
from tests.support.backends import Backend, run_backend
from tests.support.clients import proxy_clients
from tests.support.discovery import answered_by, metric, pool_ids, wait_metric, wait_pool
from tests.support.proxy import proxy_yaml, running_proxy


def write_atomic(path: Path, text: str) -> None:
    """How a deployment tool should write the file: a temporary file renamed over it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def listing(*backends: tuple[str, Backend, int]) -> str:
    return "".join(f"- {{id: {name}, address: '{backend.url}', weight: {weight}}}\n" for name, backend, weight in backends)


def config(path: Path, certs_dir: Path, seed: str = "") -> str:
    return proxy_yaml(f"""
        app:
          route: {{path_prefix: "/"}}
          {seed}
          discovery: {{kind: file, path: "{path}", refresh_ms: 100, backend_defaults: {{weight: 1}}}}
        """, certs_dir=certs_dir)


async def test_add_reweight_corrupt_restore_and_remove(tmp_path: Path, certs_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "spooky.discovery")
    path = tmp_path / "backends.yaml"
    async with run_backend(name="a") as a, run_backend(name="b") as b, run_backend(name="c") as c:
        write_atomic(path, listing(("a", a, 1), ("b", b, 1)))
        async with running_proxy(config(path, certs_dir)) as server, proxy_clients(server.listeners[0].port, certs_dir) as clients:
            assert pool_ids(server) == ["a", "b"]  # the first read finished before the server was ready
            assert collections.Counter(await answered_by(clients, 6)) == {"a": 3, "b": 3}

            write_atomic(path, listing(("a", a, 1), ("b", b, 1), ("c", c, 2)))  # add
            await wait_pool(server, lambda ids: ids == ["a", "b", "c"])
            assert collections.Counter(await answered_by(clients, 8)) == {"a": 2, "b": 2, "c": 4}

            state_c = server.generation.pools["app"].backends[2].state
            write_atomic(path, listing(("a", a, 1), ("b", b, 1), ("c", c, 6)))  # reweight: same identity, same state
            await wait_pool(server, lambda ids: server.generation.pools["app"].backends[2].weight == 6)
            assert server.generation.pools["app"].backends[2].state is state_c
            assert collections.Counter(await answered_by(clients, 16)) == {"a": 2, "b": 2, "c": 12}

            path.write_text("- {id: a, address: 'http://127.0.0.1:1'\n")  # corrupt (and written in place)
            await wait_metric(server, "spooky_discovery_errors_total", 1, upstream="app", source="file", reason="invalid")
            assert pool_ids(server) == ["a", "b", "c"]  # last known good
            assert collections.Counter(await answered_by(clients, 8)) == {"a": 1, "b": 1, "c": 6}
            source = _source(server)
            assert source["failing"] is True and "invalid" in str(source["last_error"])
            assert [entry["id"] for entry in source["backends"]] == ["a", "b", "c"]  # type: ignore[union-attr]

            write_atomic(path, listing(("b", b, 1), ("c", c, 1)))  # restored, without a
            await wait_pool(server, lambda ids: ids == ["b", "c"])
            assert collections.Counter(await answered_by(clients, 6)) == {"b": 3, "c": 3}
            assert _source(server)["failing"] is False
            assert metric(server, "spooky_discovery_backends", upstream="app", source="file") == 2
            assert metric(server, "spooky_upstream_backends", upstream="app") == 2
            assert metric(server, "spooky_discovery_updates_total", upstream="app", source="file") == 4
    lines = [r.getMessage() for r in caplog.records if r.name == "spooky.discovery"]
    label = f"pool app (file {path})"
    assert f"{label}: backend c added ({c.url}, weight 2)" in lines
    assert f"{label}: backend c changed ({c.url}, weight 2 -> {c.url}, weight 6)" in lines
    assert f"{label}: backend a removed ({a.url}): it takes no new requests, its requests in flight finish" in lines
    assert sum("discovery failed (invalid" in line for line in lines) == 1  # once, not at every poll
    assert sum("backend c added" in line for line in lines) == 1


def _source(server: Server) -> dict[str, object]:
    described = server.state.discovery.describe("app", server.generation.pools["app"].config)
    assert described is not None
    source = described["source"]
    assert isinstance(source, dict)
    return source


async def test_in_flight_requests_on_a_removed_backend_finish_and_new_ones_never_reach_it(tmp_path: Path, certs_dir: Path) -> None:
    path = tmp_path / "backends.yaml"
    async with run_backend(name="old") as old, run_backend(name="new") as new:
        write_atomic(path, listing(("old", old, 1)))
        async with running_proxy(config(path, certs_dir)) as server, proxy_clients(server.listeners[0].port, certs_dir) as clients:
            target = server.generation.pools["app"].backends[0].target
            slow: dict[str, int] = {}

            async def slow_request(protocol: str) -> None:
                reply = await clients.request(protocol, "/slow/700")
                slow[protocol] = reply.status

            async with trio.open_nursery() as nursery:
                for protocol in ("h3", "h2", "h1"):
                    nursery.start_soon(slow_request, protocol)
                await old.wait_for_requests(3)  # all three are in flight on "old"
                write_atomic(path, listing(("new", new, 1)))
                await wait_pool(server, lambda ids: ids == ["new"])
                seen_by_old = len(old.requests)
                assert await answered_by(clients, 6) == ["new"] * 6
            assert slow == {"h3": 200, "h2": 200, "h1": 200}  # the in-flight ones finished on "old"
            assert len(old.requests) == seen_by_old == 3  # and nothing new reached it
            assert server.upstream.idle_h1_connections(target) == 0  # its connections were not pooled again
            assert server.state.get(server.generation.pools["app"].backends[0].key) is not None
            assert all(state.label != "app/old" for state in server.state)  # its long-lived state was dropped


async def test_the_seed_serves_until_the_first_good_answer(tmp_path: Path, certs_dir: Path) -> None:
    path = tmp_path / "missing.yaml"
    async with run_backend(name="seed") as seed, run_backend(name="found") as found:
        seed_yaml = f"backends: [{{id: seed, address: '{seed.url}'}}]"
        async with running_proxy(config(path, certs_dir, seed_yaml)) as server, proxy_clients(server.listeners[0].port, certs_dir) as clients:
            assert pool_ids(server) == ["seed"] and _source(server)["failing"] is True
            assert await answered_by(clients, 3) == ["seed"] * 3
            assert metric(server, "spooky_discovery_errors_total", upstream="app", source="file", reason="not_found") >= 1
            write_atomic(path, listing(("found", found, 1)))
            await wait_pool(server, lambda ids: ids == ["found"])
            assert await answered_by(clients, 3) == ["found"] * 3
