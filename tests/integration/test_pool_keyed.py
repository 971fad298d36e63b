"""Settings keyed by pool name match the pool that routed the request (spooky-head.md section 4).

Each config also holds a key that looks like a path prefix (``"/api"``), as Spooky's own doc
example does: it names no pool, so it never applies, whatever the request path.
"""

from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path

import httpx
import pytest
import trio

from spooky_trio.clients.h3 import H3Client
from spooky_trio.serving.server import Server
from tests.support.backends import run_backend
from tests.support.proxy import h1_pool, proxy_yaml, running_proxy


def h3(server: Server, certs_dir: Path) -> H3Client:
    return H3Client.connect("127.0.0.1", server.listeners[0].port, server_name="localhost", cafile=str(certs_dir / "ca.pem"))


async def h2_get(server: Server, certs_dir: Path, path: str) -> httpx.Response:
    ctx = ssl.create_default_context(cafile=str(certs_dir / "ca.pem"))
    async with httpx.AsyncClient(http2=True, http1=False, verify=ctx, timeout=10) as http:
        return await http.get(f"https://localhost:{server.bootstrap_listeners[0].port}{path}")


def refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


async def test_route_queue_caps_by_pool_name_over_h3_and_h2(certs_dir: Path) -> None:
    extra = """
performance:
  per_upstream_inflight_limit: 1
  inflight_acquire_wait_ms: 60000
resilience:
  adaptive_admission: {enabled: false}
  brownout: {enabled: false}
  route_queue: {default_cap: 1, caps: {api: 2, "/api": 50, "/": 50}}
"""
    async with run_backend(name="api") as api, run_backend(name="web") as web:
        upstream = h1_pool(api.url, "/api", "api") + h1_pool(web.url, "/", "web")
        async with running_proxy(proxy_yaml(upstream, certs_dir=certs_dir, extra=extra)) as server, h3(server, certs_dir) as client:
            queues = server.state.resilience.queues
            statuses: list[int] = []

            async def one(path: str) -> None:
                statuses.append((await client.request("GET", path, authority="localhost")).status)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(one, "/api/hold")
                await api.wait_for_requests(1)
                for _ in range(2):  # caps.api: two may wait for the pool's one slot
                    nursery.start_soon(one, "/api/hold")
                nursery.start_soon(one, "/hold")
                await web.wait_for_requests(1)
                nursery.start_soon(one, "/hold")  # pool web: default_cap 1
                await server.state.wait_for(lambda: queues.waiting == {"api": 2, "web": 1})
                for path in ("/api/hold", "/hold"):  # both queues are full: shed at once
                    shed = await client.request("GET", path, authority="localhost")
                    assert shed.status == 503 and b"route_queue" in shed.body, path
                    over_h2 = await h2_get(server, certs_dir, path)
                    assert over_h2.status_code == 503 and b"route_queue" in over_h2.content, path
                api.release_holds()
                web.release_holds()
        assert statuses == [200] * 5
        shed = server.metrics.registry.get_sample_value("spooky_overload_shed_by_reason_total", {"reason": "route_queue"})
        assert shed == 4


@pytest.mark.parametrize("protocol", ["h3", "h2"])
async def test_retry_budget_by_pool_name(certs_dir: Path, protocol: str) -> None:
    # two pools, each with a refusing backend first and a good one: the global budget (100%)
    # retries web's refusals; api's own ratio is 0 (its "/api" entry names no pool)
    extra = """
resilience:
  circuit_breaker: {enabled: false}
  retry_budget: {ratio_percent: 100, per_route_ratio_percent: {api: 0, "/api": 100}}
"""
    no_ejection = "health_check: {interval: 3600000, failure_threshold: 1000, success_threshold: 1}"
    async with run_backend(name="good") as good:
        upstream = "".join(
            f"""
{name}:
  route: {{path_prefix: "{prefix}"}}
  backends:
    - {{id: refused, address: "{refused_url()}", {no_ejection}}}
    - {{id: good, address: "{good.url}"}}
"""
            for name, prefix in (("api", "/api"), ("web", "/"))
        )
        async with running_proxy(proxy_yaml(upstream, certs_dir=certs_dir, extra=extra)) as server:
            statuses: dict[str, list[int]] = {"/api/echo": [], "/echo": []}
            for path, seen in statuses.items():
                for _ in range(4):  # round-robin: every other request meets the refusing backend first
                    if protocol == "h3":
                        async with h3(server, certs_dir) as client:
                            seen.append((await client.request("GET", path, authority="localhost")).status)
                    else:
                        seen.append((await h2_get(server, certs_dir, path)).status_code)
    assert sorted(statuses["/echo"]) == [200] * 4
    assert sorted(statuses["/api/echo"]) == [200, 200, 502, 502]


async def test_a_reload_logs_each_warning(certs_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    from tests.integration.test_observability import TOKEN, observability_yaml
    from tests.support.proxy import free_udp_port

    cport, mport = free_udp_port(), free_udp_port()
    async with run_backend(name="api") as api:
        base = proxy_yaml(h1_pool(api.url, "/", "api"), certs_dir=certs_dir, extra=observability_yaml(mport, cport))
        async with running_proxy(base) as server, httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{cport}", headers={"authorization": f"Bearer {TOKEN}"}
        ) as control:
            doc = base + 'resilience:\n  route_queue: {caps: {"/api": 128}}\n'
            checked = await control.post("/admin/config/validate", content=doc)
            assert checked.status_code == 200 and [w["path"] for w in checked.json()["warnings"]] == ['resilience.route_queue.caps["/api"]']
            with caplog.at_level(logging.WARNING, logger="spooky.reload"):
                r = await control.post("/admin/config/apply", content=doc)
            assert r.status_code == 200, r.text
            assert server.generation.number == 2
            (warning,) = r.json()["warnings"]
            assert warning["path"] == 'resilience.route_queue.caps["/api"]' and warning["line"] == doc.splitlines().index("  route_queue: {caps: {\"/api\": 128}}") + 1
    warned = [rec.getMessage() for rec in caplog.records if rec.name == "spooky.reload" and "config warning" in rec.getMessage()]
    assert len(warned) == 1
    assert 'resilience.route_queue.caps["/api"]' in warned[0] and "pool names, not path prefixes" in warned[0]
