"""Overload protection through the real proxy: inflight shedding, route queues, brownout, breaker."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import httpx
import trio

from spooky_trio.clients.h3 import H3Client
from spooky_trio.clients.h3_stream import H3Response
from spooky_trio.serving.server import Server
from tests.support.backends import run_backend
from tests.support.proxy import free_udp_port, h1_pool, proxy_yaml, running_proxy


def h3(server: Server, certs_dir: Path) -> H3Client:
    return H3Client.connect("127.0.0.1", server.listeners[0].port, server_name="localhost", cafile=str(certs_dir / "ca.pem"))


def sample(server: Server, name: str, **labels: str) -> float:
    return server.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_global_limit_4_sheds_exactly_16_of_20_concurrent_slow_requests(certs_dir: Path) -> None:
    extra = """
performance:
  global_inflight_limit: 4
resilience:
  adaptive_admission: {min_limit: 2}
  brownout: {core_routes: [app]}
  route_queue: {shed_retry_after_seconds: 3}
"""
    async with run_backend(name="slow") as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir, extra=extra)) as server:
        responses: list[H3Response] = []
        shed_done = trio.Event()
        async with h3(server, certs_dir) as client:

            async def one() -> None:
                response = await client.request("GET", "/hold", authority="localhost")
                responses.append(response)
                if sum(r.status == 503 for r in responses) == 16:
                    shed_done.set()

            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(one)
                await backend.wait_for_requests(4)
                await shed_done.wait()  # 16 answered while 4 are held at the backend
                assert len(responses) == 16 and len(backend.requests) == 4
                # the same answer on the TCP bootstrap listener (HTTP/2)
                ctx = ssl.create_default_context(cafile=str(certs_dir / "ca.pem"))
                async with httpx.AsyncClient(http2=True, http1=False, verify=ctx, timeout=10) as http:
                    r = await http.get(f"https://localhost:{server.bootstrap_listeners[0].port}/hold")
                assert r.status_code == 503 and r.headers["retry-after"] == "3" and b"global_inflight" in r.content
                backend.release_holds()
        assert sorted(r.status for r in responses) == [200] * 4 + [503] * 16
        for r in responses:
            if r.status == 503:
                assert r.header("retry-after") == "3"
                assert b"global_inflight" in r.body and b"too many requests in flight" in r.body
        assert len(backend.requests) == 4
        assert sample(server, "spooky_overload_shed_total") == 17
        assert sample(server, "spooky_overload_shed_by_reason_total", reason="global_inflight") == 17
        assert server.state.resilience.global_slots.held == 0


async def test_micro_wait_queues_then_admits_and_a_full_route_queue_sheds(certs_dir: Path) -> None:
    extra = """
performance:
  global_inflight_limit: 2
  inflight_acquire_wait_ms: 60000
resilience:
  adaptive_admission: {enabled: false, min_limit: 1}
  brownout: {enabled: false}
  route_queue: {default_cap: 1}
"""
    async with run_backend(name="slow") as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir, extra=extra)) as server:
        queues = server.state.resilience.queues
        statuses: list[int | None] = []
        async with h3(server, certs_dir) as client:

            async def one() -> None:
                statuses.append((await client.request("GET", "/hold", authority="localhost")).status)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(one)
                nursery.start_soon(one)
                await backend.wait_for_requests(2)
                nursery.start_soon(one)  # waits for a slot in the route queue of pool "app"
                await server.state.wait_for(lambda: queues.total == 1)
                shed = await client.request("GET", "/hold", authority="localhost")  # the queue is full
                assert shed.status == 503 and b"route_queue" in shed.body and shed.header("retry-after") == "1"
                backend.release_holds()
        assert statuses == [200, 200, 200]
        assert len(backend.requests) == 3 and queues.total == 0
        assert sample(server, "spooky_inflight_wait_admit_total", scope="global") == 1
        assert sample(server, "spooky_overload_shed_by_reason_total", reason="route_queue") == 1


BROWNOUT = """
performance:
  global_inflight_limit: 10
resilience:
  adaptive_admission: {enabled: false, min_limit: 1}
  brownout: {trigger_inflight_percent: 50, recover_inflight_percent: 20, core_routes: [core-a, core-b]}
"""


async def test_brownout_turns_on_at_trigger_and_off_at_recover(certs_dir: Path) -> None:
    async with run_backend(name="a") as a, run_backend(name="b") as b, run_backend(name="web") as web:
        upstream = h1_pool(a.url, "/a", "core-a") + h1_pool(b.url, "/b", "core-b") + h1_pool(web.url, "/", "web")
        async with running_proxy(proxy_yaml(upstream, certs_dir=certs_dir, extra=BROWNOUT)) as server, h3(server, certs_dir) as client:
            brownout = server.state.resilience.brownout
            slots = server.state.resilience.global_slots

            async def get(path: str) -> H3Response:
                return await client.request("GET", path, authority="localhost")

            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(get, "/a/hold")
                nursery.start_soon(get, "/b/hold")
                await a.wait_for_requests(3)
                await b.wait_for_requests(1)
                assert not brownout.active  # 40%
                assert (await get("/echo")).status == 200
                nursery.start_soon(get, "/b/hold")
                await b.wait_for_requests(2)
                assert brownout.active  # 50%: on
                assert b"spooky_brownout_active 1.0" in server.metrics.render()
                shed = await get("/echo")
                assert shed.status == 503 and b"brownout" in shed.body and shed.header("retry-after") == "1"
                assert (await get("/a/echo")).status == 200  # core routes are served
                b.release_holds()
                await server.state.wait_for(lambda: slots.held == 3)
                assert brownout.active  # 30%: above recover, still on (hysteresis)
                assert (await get("/echo")).status == 503
                a.release_holds()
                await server.state.wait_for(lambda: slots.held == 0)
            assert not brownout.active and brownout.activations == 1
            assert (await get("/echo")).status == 200
            assert b"spooky_brownout_active 0.0" in server.metrics.render()
            assert sample(server, "spooky_overload_shed_by_reason_total", reason="brownout") == 2


async def test_breaker_opens_routes_around_then_half_opens_and_closes(certs_dir: Path) -> None:
    cport = free_udp_port()
    extra = f"""
resilience:
  circuit_breaker: {{failure_threshold: 2, open_ms: 60000}}
observability:
  control_api: {{enabled: true, address: 127.0.0.1, port: {cport}}}
"""
    async with run_backend(name="bad") as bad, run_backend(name="good") as good:
        bad.fail_status = 500
        upstream = f"""
app:
  route: {{path_prefix: /}}
  backends:
    - {{id: bad, address: "{bad.url}"}}
    - {{id: good, address: "{good.url}"}}
"""
        async with running_proxy(proxy_yaml(upstream, certs_dir=certs_dir, extra=extra)) as server, h3(server, certs_dir) as client:
            bad_state = server.generation.pools["app"].backends[0].state
            statuses = []
            while bad_state.breaker.state != "open":
                statuses.append((await client.request("GET", "/echo", authority="localhost")).status)
                assert len(statuses) <= 4
            assert statuses.count(500) == 2  # two consecutive failures opened it
            seen_by_bad = len(bad.requests)
            for _ in range(6):
                r = await client.request("GET", "/echo", authority="localhost")
                assert r.status == 200 and json.loads(r.body)["backend"] == "good"
            assert len(bad.requests) == seen_by_bad  # the balancer avoided the open breaker
            async with httpx.AsyncClient() as http:
                doc = (await http.get(f"http://127.0.0.1:{cport}/admin/runtime")).json()
            breaker = doc["pools"]["app"]["backends"][0]["circuit_breaker"]
            assert breaker["state"] == "open" and breaker["opens"] == 1 and 0 < breaker["half_open_in_seconds"] <= 60
            assert doc["pools"]["app"]["backends"][1]["circuit_breaker"]["state"] == "closed"
            assert doc["overload"]["brownout"]["active"] is False and doc["overload"]["adaptive_admission"]["limit"] == 4096

            bad.fail_status = None  # the backend heals; move its open period into the past
            bad_state.breaker.opened_at -= 60.0  # (open_ms is 60 s: no real waiting in a test)
            for _ in range(4):
                if len(bad.requests) > seen_by_bad:
                    break
                assert (await client.request("GET", "/echo", authority="localhost")).status == 200
            assert len(bad.requests) == seen_by_bad + 1  # exactly one half-open probe
            assert bad_state.breaker.state == "closed"
            backends = {json.loads((await client.request("GET", "/echo", authority="localhost")).body)["backend"] for _ in range(4)}
            assert backends == {"bad", "good"}


async def test_adaptive_admission_lowers_the_limit_after_slow_responses(certs_dir: Path) -> None:
    extra = """
performance:
  global_inflight_limit: 10
resilience:
  adaptive_admission: {min_limit: 2, decrease_step: 4, increase_step: 1, high_latency_ms: 50}
  brownout: {enabled: false}
"""
    async with run_backend(name="slow") as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir, extra=extra)) as server:
        admission = server.state.resilience.admission
        cfg = server.config.resilience.adaptive_admission
        async with h3(server, certs_dir) as client:
            assert admission.limit(cfg) == 10
            for expected in (6, 2):  # the backend takes 200 ms to answer: above high_latency_ms
                assert (await client.request("GET", "/slow/200", authority="localhost")).status == 200
                assert admission.limit(cfg) == expected
            assert b"spooky_adaptive_admission_limit 2.0" in server.metrics.render()
            statuses: list[int | None] = []

            async def held() -> None:
                statuses.append((await client.request("GET", "/hold", authority="localhost")).status)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(held)
                nursery.start_soon(held)
                await backend.wait_for_requests(4)
                shed = await client.request("GET", "/echo", authority="localhost")  # 2 in flight: at the limit
                assert shed.status == 503 and b"adaptive_admission" in shed.body and shed.header("retry-after") == "1"
                backend.release_holds()
            assert statuses == [200, 200]
        assert sample(server, "spooky_overload_shed_by_reason_total", reason="adaptive_admission") == 1
