"""The other upstream protocols and what HTTP/3 upstream must work with, through the real
proxy: ``alt-svc`` (learn, move to HTTP/3, fall back to HTTP/2 when UDP is blocked), h2c
(``h2`` on ``http://``), HTTP/1.1 over TLS (``h1`` on ``https://``), health checks over the
pool's protocol, a reload switching a pool between HTTP/2 and HTTP/3, and balancing,
retries, hedging and the breaker on HTTP/3 pools."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import pytest
import trio

from spooky_trio.serving.server import Server
from tests.support.backends import Backend, run_backend
from tests.support.clients import proxy_clients
from tests.support.h3_servers import UdpRelay
from tests.support.proxy import proxy_yaml, running_proxy


def tls_files(certs_dir: Path) -> dict[str, Path]:
    return {"certfile": certs_dir / "localhost.pem", "keyfile": certs_dir / "localhost.key"}


def sample(server: Server, name: str, **labels: str) -> float:
    return server.metrics.registry.get_sample_value(name, labels) or 0.0


def pool(protocol: str, *addresses: str, certs_dir: Path, extra: str = "", name: str = "api") -> str:
    listed = "".join(f'        - {{id: "b{i + 1}", address: "{a}"{extra}}}\n' for i, a in enumerate(addresses))
    return f"""
    {name}:
      upstream_protocol: {protocol}
      route:
        path_prefix: "/"
      tls: {{ca_file: "{certs_dir / 'ca.pem'}"}}
      backends:
{listed}"""


def versions(backend: Backend, path: str = "/echo") -> list[str]:
    return [r["http_version"] for r in backend.requests if r["path"] == path]


@pytest.mark.parametrize("front", ["h3", "h2"])
async def test_alt_svc_moves_to_http3_and_falls_back_when_udp_is_blocked(
    certs_dir: Path, front: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A backend answering on HTTP/2 with ``Alt-Svc: h3=":port"``: later requests go over
    HTTP/3 once the QUIC connection the first answer triggered is ready; with its UDP port
    blocked, requests fall back to HTTP/2 without errors and HTTP/3 is marked broken."""
    caplog.set_level(logging.INFO)
    async with trio.open_nursery() as nursery:
        relay = UdpRelay(0)
        await nursery.start(relay.run)
        alt_svc = [f'h3=":{relay.port}"; ma=3600']
        async with run_backend(name="alt", tls=True, quic=True, alt_svc=alt_svc, **tls_files(certs_dir)) as backend:
            relay.target = backend.port  # hypercorn serves HTTP/3 on the TCP port's number
            origin = f"https://localhost:{backend.port}"
            async with running_proxy(proxy_yaml(pool("alt-svc", origin, certs_dir=certs_dir), certs_dir=certs_dir)) as server:
                async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                    first = await clients.request(front, "/echo")
                    assert first.status == 200 and json.loads(first.body)["http_version"] == "2"
                    with trio.fail_after(10):  # "within about a second on loopback"
                        while json.loads((await clients.request(front, "/echo")).body)["http_version"] != "3":
                            await trio.sleep(0.02)
                    for _ in range(5):
                        assert json.loads((await clients.request(front, "/echo")).body)["http_version"] == "3"
                    assert sample(server, "spooky_upstream_h3_events_total", backend=origin, event="alt_svc_learned") == 1
                    assert sample(server, "spooky_upstream_protocol_requests_total", upstream="api", protocol="HTTP/3") >= 6
                    assert sample(server, "spooky_upstream_h3_broken", backend=origin) == 0

                    relay.block()  # a firewall drops the UDP port from now on
                    before = len(versions(backend))
                    with trio.fail_after(20):
                        statuses = [(await clients.request(front, "/echo")).status for _ in range(10)]
                    assert statuses == [200] * 10  # no errors: the request that met the loss went over HTTP/2
                    assert versions(backend)[before:] == ["2"] * 10
                    assert sample(server, "spooky_upstream_h3_events_total", backend=origin, event="broken") == 1
                    assert sample(server, "spooky_upstream_h3_events_total", backend=origin, event="fallback") >= 1
                    assert sample(server, "spooky_upstream_h3_broken", backend=origin) == 1
                    assert "marked broken for 300s, using HTTP/2" in caplog.text
                    relay.unblock()  # still broken for 5 minutes: HTTP/2 stays
                    assert json.loads((await clients.request(front, "/echo")).body)["http_version"] == "2"
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("front", ["h3", "h2", "h1"])
async def test_h2c_and_http1_over_tls(certs_dir: Path, front: str) -> None:
    """``h2`` on ``http://`` speaks cleartext HTTP/2 with prior knowledge; ``h1`` on
    ``https://`` speaks HTTP/1.1 over TLS to a server that would prefer h2 (ALPN)."""
    async with run_backend(name="plain") as plain, run_backend(name="tls", tls=True, **tls_files(certs_dir)) as tls:
        pools = pool("h2", plain.url, certs_dir=certs_dir) + pool("h1", tls.url, certs_dir=certs_dir, name="web").replace(
            'path_prefix: "/"', 'path_prefix: "/web"')
        async with running_proxy(proxy_yaml(pools, certs_dir=certs_dir)) as server:
            async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                r = await clients.request(front, "/echo", method="POST", body=b"body")
                assert r.status == 200 and json.loads(r.body)["http_version"] == "2" and json.loads(r.body)["body_len"] == 4
                r = await clients.request(front, "/web/echo")
                assert r.status == 200 and json.loads(r.body)["http_version"] == "1.1"
            assert sample(server, "spooky_upstream_protocol_requests_total", upstream="api", protocol="HTTP/2") == 1
            assert sample(server, "spooky_upstream_protocol_requests_total", upstream="web", protocol="HTTP/1.1") == 1


async def test_health_checks_use_the_pool_protocol(certs_dir: Path) -> None:
    """Active probes of an h3 pool go over HTTP/3 and take a failing backend out; passive
    health ejects a backend whose QUIC port refuses, the other one serves."""
    check = ", health_check: {path: /health, interval: 100, timeout_ms: 1000, failure_threshold: 1, success_threshold: 1, cooldown_ms: 100}"
    async with run_backend(name="one", tls=True, quic=True, **tls_files(certs_dir)) as one, \
            run_backend(name="two", tls=True, quic=True, **tls_files(certs_dir)) as two:
        pools = pool("h3", one.url, two.url, certs_dir=certs_dir, extra=check)
        async with running_proxy(proxy_yaml(pools, certs_dir=certs_dir)) as server:
            async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                with trio.fail_after(10):
                    while not versions(one, "/health"):
                        await trio.sleep(0.02)
                assert set(versions(one, "/health")) == {"3"}
                one.health_status = 503
                with trio.fail_after(10):
                    while server.reloads.generations.stable.pools["api"].backends[0].state.healthy:
                        await trio.sleep(0.02)
                answered = [json.loads((await clients.request("h3", "/echo")).body) for _ in range(4)]
                assert {r["http_version"] for r in answered} == {"3"} and len(versions(two)) == 4 and not versions(one)


async def test_passive_health_ejects_a_backend_whose_quic_port_refuses(certs_dir: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    passive = ", health_check: {interval: 3600000, failure_threshold: 2, success_threshold: 1, cooldown_ms: 60000}"
    async with run_backend(name="alive", tls=True, quic=True, **tls_files(certs_dir)) as alive:
        pools = pool("h3", f"https://localhost:{dead_port}", alive.url, certs_dir=certs_dir, extra=passive)
        async with running_proxy(proxy_yaml(pools, certs_dir=certs_dir)) as server:
            async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                statuses = [(await clients.request("h3", "/echo")).status for _ in range(10)]
            assert statuses == [200] * 10  # each failed dial was retried on the other backend
            dead = server.reloads.generations.stable.pools["api"].backends[0]
            assert dead.state.passive.ejected(trio.current_time())  # two transport failures ejected it
            assert sample(server, "spooky_health_failures_total", reason="transport") >= 2  # (the first probe too)
            assert len(versions(alive)) == 10


async def test_reload_switches_a_pool_between_http2_and_http3_and_drains_the_old_connections(certs_dir: Path, tmp_path: Path) -> None:
    async with run_backend(name="both", tls=True, quic=True, **tls_files(certs_dir)) as backend:
        text = proxy_yaml(pool("auto", backend.url, certs_dir=certs_dir), certs_dir=certs_dir)
        path = tmp_path / "spooky.yaml"
        async with running_proxy(text, config_path=path) as server:
            async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                assert json.loads((await clients.request("h3", "/echo")).body)["http_version"] == "2"
                h2_target = server.reloads.generations.stable.pools["api"].backends[0].connect_target
                assert len(server.upstream.h2_connections(h2_target)) == 1
                path.write_text(text.replace("upstream_protocol: auto", "upstream_protocol: h3"))
                assert (await server.reloads.reload_file()).status == 200
                assert json.loads((await clients.request("h3", "/echo")).body)["http_version"] == "3"
                h3_target = server.reloads.generations.stable.pools["api"].backends[0].connect_target
                with trio.fail_after(5):  # the HTTP/2 connection drains and closes
                    while server.upstream.h2_connections(h2_target):
                        await trio.sleep(0.02)
                assert len(server.upstream.h3.sessions(h3_target)) == 1
                path.write_text(text)
                assert (await server.reloads.reload_file()).status == 200
                assert json.loads((await clients.request("h3", "/echo")).body)["http_version"] == "2"
                with trio.fail_after(5):
                    while server.upstream.h3.sessions(h3_target):
                        await trio.sleep(0.02)
            # health, breaker and latency follow the backend across the switches (same identity)
            backends = server.reloads.generations.stable.pools["api"].backends
            assert backends[0].state.latency is not None


async def test_balancing_retries_hedging_and_the_breaker_on_http3(certs_dir: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    no_ejection = ", health_check: {interval: 3600000, failure_threshold: 1000, success_threshold: 1}"
    async with run_backend(name="a", tls=True, quic=True, **tls_files(certs_dir)) as a, \
            run_backend(name="b", tls=True, quic=True, **tls_files(certs_dir)) as b:
        # round-robin over two HTTP/3 backends
        async with running_proxy(proxy_yaml(pool("h3", a.url, b.url, certs_dir=certs_dir), certs_dir=certs_dir)) as server:
            async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                for _ in range(6):
                    assert (await clients.request("h3", "/echo")).status == 200
        assert len(versions(a)) == len(versions(b)) == 3 and set(versions(a) + versions(b)) == {"3"}
        # a refusing QUIC port: each failure is retried on the other backend
        retries = "resilience:\n  circuit_breaker: {enabled: false}\n  retry_budget: {ratio_percent: 100}\n"
        dead = f"https://localhost:{dead_port}"
        async with running_proxy(proxy_yaml(pool("h3", dead, a.url, certs_dir=certs_dir, extra=no_ejection), certs_dir=certs_dir,
                                            extra=retries)) as server:
            async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                assert [(await clients.request("h3", "/echo")).status for _ in range(6)] == [200] * 6
            assert sample(server, "spooky_retry_attempts_total", reason="connect_failed") == 3
        # hedging: a stalled primary loses to a hedge on the other backend
        b.release_holds()  # /hold answers at once on b and never on a
        hedging = "resilience:\n  hedging: {enabled: true, delay_ms: 200}\n"
        async with running_proxy(proxy_yaml(pool("h3", a.url, b.url, certs_dir=certs_dir), certs_dir=certs_dir, extra=hedging)) as server:
            async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                for _ in range(4):
                    r = await clients.request("h3", "/hold")
                    assert r.status == 200 and r.body == b"0"
            assert sample(server, "spooky_hedge_won_total") >= 1
        # the breaker opens on a backend that keeps failing (no retries: each failure answers 502)
        breaker = ("resilience:\n  circuit_breaker: {enabled: true, failure_threshold: 2, open_ms: 60000}\n"
                   "  retry_budget: {enabled: false}\n")
        async with running_proxy(proxy_yaml(pool("h3", dead, a.url, certs_dir=certs_dir, extra=no_ejection), certs_dir=certs_dir,
                                            extra=breaker)) as server:
            async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                statuses = [(await clients.request("h3", "/echo")).status for _ in range(10)]
            assert statuses.count(502) == 2 and statuses[-4:] == [200] * 4
            assert server.reloads.generations.stable.pools["api"].backends[0].state.breaker.state == "open"


@pytest.mark.parametrize("front", ["h3", "h2"])
async def test_per_backend_inflight_limit_sheds_and_releases_on_http3(certs_dir: Path, front: str) -> None:
    """Overload protection sits before the exchange and its lease ends with the HTTP/3
    stream: with ``per_backend_inflight_limit: 2`` two held requests reach the backend over
    HTTP/3, the other three are shed (503 ``backend_inflight``), and once the two are
    answered both slots are free again."""
    limit = "performance:\n  per_backend_inflight_limit: 2\n"
    async with run_backend(name="held", tls=True, quic=True, **tls_files(certs_dir)) as backend:
        async with running_proxy(proxy_yaml(pool("h3", backend.url, certs_dir=certs_dir), certs_dir=certs_dir, extra=limit)) as server:
            async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                statuses: list[int] = []
                shed = trio.Event()

                async def one() -> None:
                    r = await clients.request(front, "/hold")
                    statuses.append(r.status)
                    if r.status == 503:
                        assert b"backend_inflight" in r.body
                    if statuses.count(503) == 3:
                        shed.set()

                with trio.fail_after(20):
                    async with trio.open_nursery() as nursery:
                        for _ in range(5):
                            nursery.start_soon(one)
                        await backend.wait_for_requests(2)
                        await shed.wait()  # three answered while two are held at the backend
                        backend.release_holds()
                assert sorted(statuses) == [200] * 2 + [503] * 3
                assert (await clients.request(front, "/echo")).status == 200
            assert {r["http_version"] for r in backend.requests} == {"3"}
            assert sample(server, "spooky_overload_shed_by_reason_total", reason="backend_inflight") == 3
            assert server.reloads.generations.stable.pools["api"].backends[0].state.slots.held == 0
