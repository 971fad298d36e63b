"""Active and passive health through the real proxy, with real hypercorn backends."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from spooky_trio.clients.h3 import H3Client
from spooky_trio.serving.server import Server
from tests.support.backends import Backend, run_backend
from tests.support.proxy import free_udp_port, proxy_yaml, running_proxy


def connect(server: Server, certs_dir: Path):  # type: ignore[no-untyped-def]
    return H3Client.connect("127.0.0.1", server.listeners[0].port, server_name="localhost", cafile=str(certs_dir / "ca.pem"))


def state_of(server: Server, backend_id: str):  # type: ignore[no-untyped-def]
    return next(b.state for b in server.generation.pools["app"].backends if b.id == backend_id)


def health_probes(backend: Backend, *, failing: bool) -> int:
    """Probes the backend answered with a failing (or a good) status so far."""
    return sum(1 for r in backend.requests if r["path"] == "/health" and "status" in r and (r["status"] >= 400) == failing)


async def echo(client: H3Client) -> tuple[int, str | None]:
    response = await client.request("GET", "/echo", authority="localhost")
    if response.status != 200:
        return response.status, None
    return 200, json.loads(response.body)["backend"]


async def test_active_check_removes_and_restores_without_client_errors(certs_dir: Path) -> None:
    upstream = """
    app:
      route: {path_prefix: "/"}
      backends:
        - id: b1
          address: "URL1"
          health_check: {interval: 50, timeout_ms: 1000, failure_threshold: 2, success_threshold: 2, cooldown_ms: 1000}
        - id: b2
          address: "URL2"
    """
    async with run_backend(name="b1") as b1, run_backend(name="b2") as b2:
        yaml = proxy_yaml(upstream.replace("URL1", b1.url).replace("URL2", b2.url), certs_dir=certs_dir)
        async with running_proxy(yaml) as server, connect(server, certs_dir) as client:
            state = state_of(server, "b1")
            outcomes: list[tuple[int, str | None]] = []
            stop = trio.Event()

            async def traffic() -> None:
                while not stop.is_set():
                    outcomes.append(await echo(client))

            with trio.fail_after(15):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(traffic)
                    assert state.healthy  # checked backends start healthy
                    b1.health_status = 503
                    await server.state.wait_for(lambda: not state.healthy)
                    # exactly failure_threshold failed probes (the cooldown pauses the next one)
                    assert health_probes(b1, failing=True) == 2
                    removed_at = len(outcomes)
                    only_b2 = [await echo(client) for _ in range(10)]
                    assert only_b2 == [(200, "b2")] * 10
                    good_before = health_probes(b1, failing=False)
                    b1.health_status = 200
                    await server.state.wait_for(lambda: state.healthy)
                    assert health_probes(b1, failing=False) - good_before >= 2  # success_threshold
                    stop.set()
            # alone on the connection now (round-robin would split it with the background loop)
            back = {await echo(client) for _ in range(6)}
            assert back == {(200, "b1"), (200, "b2")}
    assert outcomes and all(status == 200 for status, _ in outcomes)
    # after the removal, background traffic (one request at a time) stayed off b1
    assert (200, "b1") not in outcomes[removed_at + 1 : removed_at + 10]
    assert state.failures["5xx"] >= 2


async def test_passive_ejection_of_a_failing_backend_and_recovery(certs_dir: Path) -> None:
    upstream = """
    app:
      route: {path_prefix: "/"}
      backends:
        - id: b1
          address: "URL1"
          # thresholds for passive ejection; probing so rare it stays out of the way
          health_check: {interval: 600000, failure_threshold: 2, cooldown_ms: 400}
        - id: b2
          address: "URL2"
    """
    async with run_backend(name="b1") as b1, run_backend(name="b2") as b2:
        yaml = proxy_yaml(upstream.replace("URL1", b1.url).replace("URL2", b2.url), certs_dir=certs_dir)
        async with running_proxy(yaml) as server, connect(server, certs_dir) as client:
            state = state_of(server, "b1")
            await b1.wait_for_requests(1)  # the startup probe, before b1 starts failing
            b1.fail_status = 502
            # round-robin: b1, b2, b1 -> the second consecutive b1 failure ejects it
            assert [await echo(client) for _ in range(3)] == [(502, None), (200, "b2"), (502, None)]
            assert not state.available(trio.current_time())
            assert state.passive.ejections == 1 and state.failures["5xx"] >= 2
            assert [await echo(client) for _ in range(8)] == [(200, "b2")] * 8
            b1.fail_status = None
            await trio.sleep_until(state.passive.ejected_until)  # the cooldown is a timer, not a race
            seen = {await echo(client) for _ in range(4)}
            assert seen == {(200, "b1"), (200, "b2")}
            assert not state.passive.probation  # the first success restored it for good


async def test_unreachable_backend_is_ejected_for_transport_errors(certs_dir: Path) -> None:
    dead_port = free_udp_port()  # nothing listens on TCP there (the UDP probe socket is closed)
    upstream = f"""
    app:
      route: {{path_prefix: "/"}}
      backends:
        - id: dead
          address: "http://127.0.0.1:{dead_port}"
          health_check: {{interval: 600000, failure_threshold: 1, cooldown_ms: 60000}}
        - id: live
          address: "URL"
    """
    async with run_backend(name="live") as live:
        async with running_proxy(proxy_yaml(upstream.replace("URL", live.url), certs_dir=certs_dir)) as server:
            async with connect(server, certs_dir) as client:
                first = await echo(client)
                # the startup probe may already have marked it unhealthy; otherwise the first
                # request hits the dead backend once (502) and passive ejection takes it out
                assert first in {(502, None), (200, "live")}
                assert [await echo(client) for _ in range(6)] == [(200, "live")] * 6
            state = state_of(server, "dead")
            assert state.failures["transport"] >= 1


async def test_no_healthy_backend_is_a_503_that_says_so(certs_dir: Path) -> None:
    upstream = """
    app:
      route: {path_prefix: "/"}
      backends:
        - id: b1
          address: "URL"
          health_check: {interval: 50, failure_threshold: 1, cooldown_ms: 60000}
    """
    async with run_backend(name="b1") as b1:
        b1.health_status = 500
        async with running_proxy(proxy_yaml(upstream.replace("URL", b1.url), certs_dir=certs_dir)) as server:
            state = state_of(server, "b1")
            with trio.fail_after(10):
                await server.state.wait_for(lambda: not state.healthy)
            async with connect(server, certs_dir) as client:
                response = await client.request("GET", "/echo", authority="localhost")
    assert response.status == 503
    assert b"no healthy backend" in response.body and b"no_healthy_backend" in response.body
    assert all(r["path"] == "/health" for r in b1.requests)  # no silent fallback to it
