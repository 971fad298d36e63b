"""Metrics endpoint and control API through the real proxy, scraped over real sockets."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from spooky_trio.clients.h3 import H3Client
from spooky_trio.config import load_config_text
from spooky_trio.serving.exits import StartupError
from spooky_trio.serving.server import Server
from tests.support.backends import run_backend
from tests.support.proxy import free_udp_port, h1_pool, proxy_yaml, running_proxy

TOKEN = "s3cret-token"


def observability_yaml(metrics_port: int, control_port: int, *, token: str | None = TOKEN, required: bool = False) -> str:
    token_line = f"    auth_token: {token}\n" if token else ""
    return (
        "observability:\n"
        "  metrics:\n"
        "    enabled: true\n"
        f"    required: {str(required).lower()}\n"
        "    address: 127.0.0.1\n"
        f"    port: {metrics_port}\n"
        "  control_api:\n"
        "    enabled: true\n"
        "    address: 127.0.0.1\n"
        f"    port: {control_port}\n" + token_line
    )


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def scrape(port: int) -> tuple[set[str], dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    async with httpx.AsyncClient() as http:
        r = await http.get(f"http://127.0.0.1:{port}/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    names = {family.name for family in text_string_to_metric_families(r.text)}
    return names, samples(r.text)


def h3(server: Server, certs_dir: Path) -> H3Client:
    return H3Client.connect("127.0.0.1", server.listeners[0].port, server_name="localhost", cafile=str(certs_dir / "ca.pem"))


async def test_metrics_count_real_traffic(certs_dir: Path) -> None:
    mport, cport = free_udp_port(), free_udp_port()
    config = proxy_yaml(h1_pool("{url}", prefix="/echo"), certs_dir=certs_dir, extra=observability_yaml(mport, cport))
    async with run_backend(name="h1") as backend, running_proxy(config.replace("{url}", backend.url)) as server:
        names, before = await scrape(mport)
        for family in (
            "spooky_requests", "spooky_requests_success", "spooky_requests_failure", "spooky_upstream_requests",
            "spooky_backend_requests", "spooky_upstream_request_latency_ms", "spooky_active_connections",
            "spooky_ingress_packets", "spooky_backend_healthy", "spooky_config_generation",
            "spooky_downstream_tls_handshake_success", "spooky_inflight_requests", "spooky_runtime_panics",
        ):
            assert family in names, family
        async with h3(server, certs_dir) as c:
            for _ in range(10):
                r = await c.request("GET", "/echo", authority="localhost")
                assert r.status == 200
            r = await c.request("GET", "/nowhere", authority="localhost")
            assert r.status == 404
        _, after = await scrape(mport)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("spooky_requests_total") == 11
    assert delta("spooky_requests_success_total") == 10
    assert delta("spooky_requests_failure_total") == 1
    assert delta("spooky_upstream_requests_total", upstream="app", status_class="2xx", outcome="success") == 10
    assert delta("spooky_backend_requests_total", upstream="app", backend="app-1", status_class="2xx", outcome="success") == 10
    assert delta("spooky_upstream_request_latency_ms_count", upstream="app", outcome="success") == 10
    assert delta("spooky_ingress_packets_total") > 0
    assert after[("spooky_backend_healthy", (("backend", "app-1"), ("upstream", "app")))] == 1
    assert after[("spooky_config_generation", ())] == 1


async def test_control_api_auth_ready_and_runtime(certs_dir: Path) -> None:
    mport, cport = free_udp_port(), free_udp_port()
    config = proxy_yaml(h1_pool("http://127.0.0.1:9"), certs_dir=certs_dir, extra=observability_yaml(mport, cport))
    async with running_proxy(config) as server, httpx.AsyncClient(base_url=f"http://127.0.0.1:{cport}") as http:
        assert (await http.get("/health")).status_code == 200
        assert (await http.get("/ready")).status_code == 200
        r = await http.get("/admin/runtime")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert (await http.get("/admin/runtime", headers={"authorization": "Bearer wrong"})).status_code == 403
        r = await http.get("/admin/runtime", headers={"authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200
        doc = r.json()
        assert doc["config_generation"] == 1 and doc["version"] and doc["uptime_seconds"] >= 0
        assert doc["listeners"][0]["port"] == server.listeners[0].port
        backend = doc["pools"]["app"]["backends"][0]
        assert backend["id"] == "app-1" and backend["healthy"] is True and backend["in_flight"] == 0
        assert {"latency_ewma_ms", "ejected", "available"} <= backend.keys()
        assert set(doc["connections"]) == {"quic", "tcp", "total"}
        server.draining = True  # what _drain sets first; a real drain below ends the server
        assert (await http.get("/ready")).status_code == 503
        server.draining = False
        assert (await http.get("/ready")).status_code == 200


async def test_ready_turns_503_during_real_drain(certs_dir: Path) -> None:
    mport, cport = free_udp_port(), free_udp_port()
    config = proxy_yaml(h1_pool("http://127.0.0.1:9"), certs_dir=certs_dir, extra=observability_yaml(mport, cport))
    async with running_proxy(config) as server, httpx.AsyncClient(base_url=f"http://127.0.0.1:{cport}") as http:
        server.activity.enter()  # hold the drain open as an in-flight request would
        server.request_drain()
        with trio.fail_after(5):
            while not server.draining:
                await trio.sleep(0.01)
        assert (await http.get("/ready")).status_code == 503
        assert (await http.get("/health")).status_code == 200
        server.activity.exit()


async def test_required_metrics_bind_failure_is_fatal(certs_dir: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = load_config_text(proxy_yaml(h1_pool("http://127.0.0.1:9"), certs_dir=certs_dir,
                                             extra=observability_yaml(port, free_udp_port(), required=True)))
        with pytest.raises(StartupError, match="metrics"):
            Server(config).bind()
        optional = load_config_text(proxy_yaml(h1_pool("http://127.0.0.1:9"), certs_dir=certs_dir,
                                               extra=observability_yaml(port, free_udp_port())))
        server = Server(optional)
        server.bind()  # logged, not fatal
        assert not server.endpoints[0][0].bound
        for q in server.listeners:
            q.sock.close()


async def test_control_api_connection_limit(certs_dir: Path) -> None:
    mport, cport = free_udp_port(), free_udp_port()
    extra = observability_yaml(mport, cport) + "    max_connections: 1\n"
    async with running_proxy(proxy_yaml(h1_pool("http://127.0.0.1:9"), certs_dir=certs_dir, extra=extra)) as server:
        first = await trio.open_tcp_stream("127.0.0.1", cport)
        await trio.sleep(0.05)
        second = await trio.open_tcp_stream("127.0.0.1", cport)
        await second.send_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        with trio.fail_after(5):
            assert await second.receive_some(100) == b""
        await first.send_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        assert b"200" in await first.receive_some(1000)
        await first.aclose()
        await second.aclose()
        assert server.metrics.control_api_drops._value.get() == 1
