"""Helpers for the discovery tests: wait for a pool's backends, send requests over every
protocol and see which backend answered, read a metric."""

from __future__ import annotations

import json
from collections.abc import Callable

import trio

from spooky_trio.serving.server import Server
from tests.support.clients import PROTOCOLS, ProxyClients


def pool_ids(server: Server, pool: str = "app") -> list[str]:
    """The ids of the stable generation's backends of ``pool``, in order."""
    return [backend.id for backend in server.generation.pools[pool].backends]


async def wait_pool(server: Server, predicate: Callable[[list[str]], bool], pool: str = "app", timeout: float = 10.0) -> list[str]:
    """Wait (no polling: the state store wakes it on every pool change) until
    ``predicate(pool_ids)`` holds; returns the ids."""
    with trio.fail_after(timeout):
        await server.state.wait_for(lambda: predicate(pool_ids(server, pool)))
    return pool_ids(server, pool)


async def answered_by(clients: ProxyClients, count: int, path: str = "/echo") -> list[str]:
    """Send ``count`` requests, cycling HTTP/3, HTTP/2 and HTTP/1.1; each must be a 200 from
    a backend. Returns the answering backends' names in order."""
    names = []
    for index in range(count):
        reply = await clients.request(PROTOCOLS[index % len(PROTOCOLS)], path)
        assert reply.status == 200, (reply.status, reply.body)
        names.append(str(json.loads(reply.body)["backend"]))
    return names


def metric(server: Server, name: str, **labels: str) -> float:
    """One sample of the server's registry (0 when absent)."""
    return server.metrics.registry.get_sample_value(name, labels or None) or 0.0


async def wait_metric(server: Server, name: str, at_least: float, timeout: float = 10.0, **labels: str) -> float:
    """Wait until a counter reaches ``at_least``. A failed poll changes no pool, so there is
    no event to wait on: this checks every 20 ms, within ``timeout``."""
    with trio.fail_after(timeout):
        while (value := metric(server, name, **labels)) < at_least:
            await trio.sleep(0.02)
    return value
