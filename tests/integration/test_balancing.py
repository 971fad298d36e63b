"""Balancing through the real proxy: H3 client -> spooky-trio -> three hypercorn backends."""

from __future__ import annotations

import collections
import contextlib
import functools
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import trio
import trio.testing

from spooky_trio.clients.h3 import H3Client
from tests.support.backends import Backend, run_backend
from tests.support.proxy import proxy_yaml, running_proxy


@contextlib.asynccontextmanager
async def three_backends() -> AsyncIterator[list[Backend]]:
    async with run_backend(name="b1") as b1, run_backend(name="b2") as b2, run_backend(name="b3") as b3:
        yield [b1, b2, b3]


def pool(backends: Sequence[Backend], lb: str, key: str | None = None, weights: Sequence[int] | None = None) -> str:
    lines = ["app:", "  route:", '    path_prefix: "/"', "  load_balancing:", f"    type: {lb}"]
    if key is not None:
        lines.append(f'    key: "{key}"')
    lines.append("  backends:")
    for index, backend in enumerate(backends):
        lines += [f'    - id: "{backend.name}"', f'      address: "{backend.url}"']
        if weights is not None:
            lines.append(f"      weight: {weights[index]}")
    return "\n".join(lines)


def connect(server, certs_dir: Path):  # type: ignore[no-untyped-def]
    return H3Client.connect("127.0.0.1", server.listeners[0].port, server_name="localhost", cafile=str(certs_dir / "ca.pem"))


async def backend_of(client: H3Client, headers: Sequence[tuple[str, str]] = ()) -> str:
    response = await client.request("GET", "/echo", authority="localhost", headers=headers)
    assert response.status == 200, response.body
    return str(json.loads(response.body)["backend"])


async def test_round_robin_equal_weights_rotate(certs_dir: Path) -> None:
    async with three_backends() as backends, running_proxy(proxy_yaml(pool(backends, "round-robin"), certs_dir=certs_dir)) as server:
        async with connect(server, certs_dir) as client:
            seen = [await backend_of(client) for _ in range(9)]
    assert seen == ["b1", "b2", "b3"] * 3


async def test_weighted_round_robin_exact_over_each_cycle(certs_dir: Path) -> None:
    async with three_backends() as backends:
        async with running_proxy(proxy_yaml(pool(backends, "round-robin", weights=[1, 2, 3]), certs_dir=certs_dir)) as server:
            async with connect(server, certs_dir) as client:
                seen = [await backend_of(client) for _ in range(18)]
    for start in range(0, 18, 6):
        assert collections.Counter(seen[start : start + 6]) == {"b1": 1, "b2": 2, "b3": 3}


async def test_consistent_hash_on_header_is_stable_per_user(certs_dir: Path) -> None:
    async with three_backends() as backends:
        async with running_proxy(proxy_yaml(pool(backends, "consistent-hash", key="header:x-user"), certs_dir=certs_dir)) as server:
            async with connect(server, certs_dir) as client:
                owner: dict[str, str] = {}
                for round_ in range(3):
                    for user in range(20):
                        got = await backend_of(client, [("x-user", f"user-{user}")])
                        assert owner.setdefault(f"user-{user}", got) == got, (round_, user)
    assert len(set(owner.values())) == 3


async def test_sticky_cid_keeps_a_connection_on_one_backend(certs_dir: Path) -> None:
    async with three_backends() as backends:
        async with running_proxy(proxy_yaml(pool(backends, "sticky-cid"), certs_dir=certs_dir)) as server:
            async with connect(server, certs_dir) as client:
                assert len({await backend_of(client) for _ in range(50)}) == 1
            per_connection = []
            for _ in range(12):
                async with connect(server, certs_dir) as client:
                    chosen = {await backend_of(client) for _ in range(3)}
                    assert len(chosen) == 1
                    per_connection.append(chosen.pop())
    # connection IDs are random: all 12 on one of 3 equal backends has odds of ~1 in 177 000
    assert len(set(per_connection)) >= 2


async def test_least_connections_prefers_the_idle_backend(certs_dir: Path) -> None:
    async with three_backends() as backends:
        b1 = backends[0]
        async with running_proxy(proxy_yaml(pool(backends, "least-connections"), certs_dir=certs_dir)) as server:
            async with connect(server, certs_dir) as client, trio.open_nursery() as nursery:
                assert await backend_of(client) == "b1"  # all idle: ties go to config order
                nursery.start_soon(functools.partial(client.request, "POST", "/hold", body=b"x", authority="localhost"))
                await b1.wait_for_requests(2)
                # b1 holds one request in flight: the others are less loaded, in config order
                assert await backend_of(client) == "b2"
                # the client can see the response end before the proxy's request task has
                # released b2's in-flight slot: let every task settle before the next pick
                await trio.testing.wait_all_tasks_blocked()
                assert await backend_of(client) == "b2"
                b1.release_holds()
