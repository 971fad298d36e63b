"""Mirror copies through the real proxy (traffic_policy ``mirror``; proxy/mirror.py): the copy
is the request the primary backend got, on every protocol, with ``-shadow`` on the host;
a slow or dead shadow never slows the primary; ``max_inflight`` drops are counted; a drain
waits for copies no longer than their own timeout."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import trio

from spooky_trio.serving.server import Server
from tests.support.backends import Backend, run_backend
from tests.support.clients import PROTOCOLS, proxy_clients
from tests.support.proxy import free_udp_port, proxy_yaml, running_proxy


def metric(server: Server, name: str, **labels: str) -> float:
    return server.metrics.registry.get_sample_value(name, labels) or 0.0


class HoldingShadow:
    """An HTTP/1.1 shadow that reads each request head, then holds it ``hold`` seconds
    before answering (a shadow that "sleeps")."""

    def __init__(self, hold: float) -> None:
        self.hold = hold
        self.heads: list[bytes] = []
        self.port = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            data += chunk
        self.heads.append(data)
        await trio.sleep(self.hold)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")


async def settled(check: Callable[[], bool]) -> None:
    """Wait (at most 10 s) until ``check()`` holds: a copy runs after the primary answered,
    so what it did is read once it is done, never at a fixed moment."""
    with trio.fail_after(10):
        while not check():
            await trio.sleep(0.01)


async def copies_of(shadow: Backend, count: int) -> list[dict[str, object]]:
    """The shadow's first ``count`` records once each has its whole body."""
    with trio.fail_after(10):
        while len(shadow.requests) < count or any(r.get("body_sha256") is None for r in shadow.requests[:count]):
            await trio.sleep(0.01)
    return shadow.requests[:count]


async def test_the_copy_is_the_primarys_request_with_a_shadow_host(certs_dir: Path) -> None:
    pools = """
    api:
      route: {path_prefix: /}
      backends: [{id: a, address: "{a}"}]
      traffic_policy:
        request_headers: {set: {x-env: prod}}
        mirror: {pool: shadow, max_body_bytes: 100000}
    shadow:
      backends: [{id: s, address: "{s}"}]
    """
    async with run_backend(name="a") as a, run_backend(name="s") as s:
        text = proxy_yaml(pools, certs_dir=certs_dir).replace("{a}", a.url).replace("{s}", s.url)
        async with running_proxy(text) as server, proxy_clients(server.listeners[0].port, certs_dir) as clients:
            body = bytes(range(256)) * 200  # 51200 bytes: several chunks on every protocol
            for index, protocol in enumerate(PROTOCOLS):
                reply = await clients.request(protocol, f"/echo?n={index}", method="POST", body=body,
                                              headers=[("x-a", "1"), ("x-env", "dev"), ("cookie", "k=v")])
                assert reply.status == 200 and json.loads(reply.body)["body_len"] == len(body)
                primary = a.requests[index]
                (copy,) = (await copies_of(s, index + 1))[index:]
                assert (copy["method"], copy["path"], copy["query"]) == (primary["method"], primary["path"], primary["query"]) == (
                    "POST", "/echo", f"n={index}"), protocol
                assert copy["body_sha256"] == primary["body_sha256"] and copy["body_len"] == len(body)
                host = next(v for n, v in primary["headers"] if n == "host")
                assert host == f"localhost:{server.listeners[0].port}" or host == "localhost", (protocol, host)
                expected = [[n, v.replace(host, host.replace("localhost", "localhost-shadow", 1)) if n == "host" else v]
                            for n, v in primary["headers"]]
                assert copy["headers"] == expected, protocol
                assert ["x-env", "prod"] in copy["headers"]
            # bodiless requests are copied too (Traefik once mirrored no GET with a body limit)
            assert (await clients.request("h3", "/status/204")).status == 204
            await copies_of(s, 4)
            assert s.requests[3]["method"] == "GET" and s.requests[3]["body_len"] == 0
            await settled(lambda: metric(server, "spooky_mirror_copies_total", upstream="api", shadow="shadow", result="completed") >= 4)
            assert metric(server, "spooky_mirror_copies_total", upstream="api", shadow="shadow", result="completed") == 4


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(0, int(len(ordered) * 0.99) - 1)]


async def test_a_slow_or_dead_shadow_never_slows_the_primary(certs_dir: Path) -> None:
    """Requests mirrored to a shadow that holds every request 5 s, or to one that refuses
    connections, interleaved with requests that are not mirrored: their p99 stays within
    noise of the plain requests' (at most the plain p99 plus the larger of it and 250 ms,
    where a primary that waited for its copy would take 5 s), statuses and bodies equal."""
    closed = free_udp_port()  # nothing listens there: connections are refused
    shadow = HoldingShadow(5.0)
    pools = """
    slowmirror:
      route: {path_prefix: /a}
      backends: [{id: a, address: "{a}"}]
      traffic_policy: {mirror: {pool: slow, max_inflight: 1000, timeout_ms: 8000}}
    deadmirror:
      route: {path_prefix: /d}
      backends: [{id: a, address: "{a}"}]
      traffic_policy: {mirror: {pool: dead, timeout_ms: 8000}}
    plain:
      route: {path_prefix: /b}
      backends: [{id: a, address: "{a}"}]
    capped:
      route: {path_prefix: /m}
      backends: [{id: a, address: "{a}"}]
      traffic_policy: {mirror: {pool: slow, max_inflight: 2, timeout_ms: 8000}}
    slow:
      backends: [{id: s, address: "http://127.0.0.1:{hold}"}]
    dead:
      backends: [{id: x, address: "http://127.0.0.1:{closed}"}]
    """
    async with trio.open_nursery() as nursery:
        await nursery.start(shadow.run)
        async with run_backend(name="a") as a:
            text = (proxy_yaml(pools, certs_dir=certs_dir).replace("{a}", a.url).replace("{hold}", str(shadow.port))
                    .replace("{closed}", str(closed)))
            async with running_proxy(text) as server, proxy_clients(server.listeners[0].port, certs_dir) as clients:
                latency: dict[str, list[float]] = {"a": [], "d": [], "b": []}
                for round_ in range(60):
                    protocol = PROTOCOLS[round_ % 3]
                    for route in ("a", "d", "b"):
                        started = time.monotonic()
                        reply = await clients.request(protocol, f"/{route}/echo")
                        latency[route].append(time.monotonic() - started)
                        assert reply.status == 200 and json.loads(reply.body)["path"] == f"/{route}/echo"
                plain = p99(latency["b"])
                for route in ("a", "d"):
                    assert p99(latency[route]) < plain + max(plain, 0.25), (route, p99(latency[route]), plain)
                # every copy reaches the holding shadow (none answered yet); every dead one fails
                await settled(lambda: len(shadow.heads) >= 60)
                await settled(lambda: metric(server, "spooky_mirror_copies_total", upstream="deadmirror", shadow="dead", result="failed") >= 60)
                assert len(shadow.heads) == 60
                assert metric(server, "spooky_mirror_copies_total", upstream="deadmirror", shadow="dead", result="failed") == 60
                # max_inflight: two copies hold their places, the other eight are dropped and counted
                for _ in range(10):
                    assert (await clients.request("h2", "/m/echo")).status == 200
                assert metric(server, "spooky_mirror_copies_total", upstream="capped", shadow="slow", result="dropped_max_inflight") == 8
                assert server.state.shadows.running["capped"] == 2
            # the drain waited for the held copies (5 s < their 8 s timeout): all completed
            assert metric(server, "spooky_mirror_copies_total", upstream="slowmirror", shadow="slow", result="completed") == 60
        nursery.cancel_scope.cancel()


async def test_drain_waits_for_copies_no_longer_than_their_timeout(certs_dir: Path) -> None:
    shadow = HoldingShadow(30.0)
    pools = """
    api:
      route: {path_prefix: /}
      backends: [{id: a, address: "{a}"}]
      traffic_policy: {mirror: {pool: slow, timeout_ms: 500}}
    slow:
      backends: [{id: s, address: "http://127.0.0.1:{hold}"}]
    """
    async with trio.open_nursery() as nursery:
        await nursery.start(shadow.run)
        async with run_backend(name="a") as a:
            text = proxy_yaml(pools, certs_dir=certs_dir).replace("{a}", a.url).replace("{hold}", str(shadow.port))
            async with running_proxy(text) as server:
                async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                    for protocol in PROTOCOLS:
                        assert (await clients.request(protocol, "/echo")).status == 200
                with trio.fail_after(10):
                    while len(shadow.heads) < 3:
                        await trio.sleep(0.01)
                started = time.monotonic()
            drained = time.monotonic() - started
        nursery.cancel_scope.cancel()
    assert drained < 10, drained  # the shadow holds 30 s; each copy gives up after 0.5 s
    assert metric(server, "spooky_mirror_copies_total", upstream="api", shadow="slow", result="timeout") == 3
    assert server.state.shadows.running == {}
