"""Scoped rate limits through the real proxy, over HTTP/3, HTTP/2 and HTTP/1.1: every scope
and key spec limits the traffic it names and no other, the 429 answer, exactness over real
time, a reload that keeps or changes a rule, ``/admin/runtime`` and the metrics.

Local buckets read a frozen clock here (``spooky_trio.proxy.ratelimit.clock``), so which
request is limited never depends on how fast the machine is; the exactness test uses real
time and bounds the count by the time it measured.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from spooky_trio.proxy import ratelimit
from tests.support.backends import run_backend
from tests.support.clients import PROTOCOLS, ProtocolClients, hammer, protocol_clients
from tests.support.proxy import free_udp_port, h1_pool, proxy_yaml, running_proxy

#: pool -> (rule scope and key, two requests with different keys: headers, source address, authority, method,
#: a path segment before /echo and a query)
SPECS: dict[str, tuple[str, dict[str, object], dict[str, object]]] = {
    "by-ip": ("scope: client", {"source": "127.0.0.1"}, {"source": "127.0.0.2"}),
    "by-client-ip": ("scope: client, key: client_ip", {"source": "127.0.0.1"}, {"source": "127.0.0.3"}),
    "by-header": ("scope: tenant, key: 'Header:X-Tenant'", {"headers": [("x-tenant", "acme")]}, {"headers": [("x-tenant", "other")]}),
    "by-cookie": ("scope: client, key: 'cookie:session'", {"headers": [("cookie", "a=1; session=s1")]},
                  {"headers": [("cookie", "session=s2")]}),
    "by-query": ("scope: client, key: 'query:tenant'", {"query": "?tenant=acme"}, {"query": "?x=1&tenant=other"}),
    "by-token": ("scope: token", {"headers": [("authorization", "Bearer t1")]}, {"headers": [("authorization", "Bearer t2")]}),
    "by-path": ("scope: client, key: path", {"inner": "/a", "query": "?x=1"}, {"inner": "/b"}),
    "by-authority": ("scope: client, key: authority", {"authority": "localhost"}, {"authority": "127.0.0.1"}),
    "by-method": ("scope: client, key: method", {"method": "GET"}, {"method": "POST"}),
}


class FrozenClock:
    """The local buckets' clock in these tests: moves only when the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> Iterator[FrozenClock]:
    clock = FrozenClock()
    monkeypatch.setattr(ratelimit, "clock", clock)
    yield clock


def pools(url: str) -> str:
    return "".join(h1_pool(url, f"/{name}", name) for name in [*SPECS, "by-route", "free"])


def rules() -> str:
    lines = [f"    - {{name: {name}-rule, {spec}, requests_per_sec: 1, burst: 1, route_allowlist: [{name}]}}"
             for name, (spec, _, _) in SPECS.items()]
    lines.append("    - {name: by-route-rule, scope: route, requests_per_sec: 1, burst: 2, route_allowlist: [' by-route ']}")
    return "resilience:\n  scoped_rate_limits:\n" + "\n".join(lines) + "\n"


async def call(clients: ProtocolClients, pool: str, variant: dict[str, object]) -> tuple[int | None, str]:
    reply = await clients.get(f"/{pool}{variant.get('inner', '')}/echo{variant.get('query', '')}",
                              headers=variant.get("headers", ()),  # type: ignore[arg-type]
                              source=str(variant.get("source", "127.0.0.1")), authority=str(variant.get("authority", "localhost")),
                              method=str(variant.get("method", "GET")))
    return reply.status, reply.body.decode("latin-1")


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_each_key_spec_limits_its_own_traffic_and_no_other(protocol: str, certs_dir: Path, frozen: FrozenClock) -> None:
    async with run_backend(name="b") as backend, running_proxy(proxy_yaml(pools(backend.url), certs_dir=certs_dir, extra=rules())) as server, \
            protocol_clients(server, certs_dir, protocol) as clients:
        for pool, (_, first, second) in SPECS.items():
            assert (await call(clients, pool, first))[0] == 200, pool
            status, body = await call(clients, pool, first)
            assert status == 429, pool
            assert body == f"429 Too Many Requests: request rate limited (rate_limited:{pool}-rule)\n", pool
            assert (await call(clients, pool, second))[0] == 200, pool  # another key: its own bucket
            assert (await call(clients, "free", first))[0] == 200, pool  # other pools: untouched
        # route scope: one bucket for the pool, whoever asks
        assert [(await call(clients, "by-route", v))[0] for v in ({}, {"source": "127.0.0.2"}, {})] == [200, 200, 429]
        frozen.now += 1.0  # one token back in every bucket
        assert (await call(clients, "by-ip", {}))[0] == 200
        text = server.metrics.render().decode()
        assert 'spooky_route_rate_limited_total{route="by-header"} 1.0' in text
        assert "spooky_request_rate_limited_total 10.0" in text
        assert 'spooky_rate_limit_decisions_total{outcome="limited",rule="by-route-rule"} 1.0' in text


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_missing_keys_fall_back_to_one_shared_bucket(protocol: str, certs_dir: Path, frozen: FrozenClock) -> None:
    extra = """
resilience:
  scoped_rate_limits:
    - {name: tenant, scope: tenant, key: "header:x-tenant", requests_per_sec: 1, burst: 2}
    - {name: token, scope: token, requests_per_sec: 1, burst: 2}
"""
    async with run_backend(name="b") as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir, extra=extra)) as server, \
            protocol_clients(server, certs_dir, protocol) as clients:
        # no tenant header and no bearer token: both rules key on the authority, from any client
        statuses = [(await clients.get("/echo", source=f"127.0.0.{i}")).status for i in (1, 2, 3)]
        assert statuses == [200, 200, 429]
        reply = await clients.get("/echo", headers=[("x-tenant", "t")], source="127.0.0.4")
        assert reply.status == 429 and b"rate_limited:token" in reply.body  # tenant t has its bucket, the token rule does not
        assert reply.header("retry-after") == "1"
        assert reply.header("ratelimit-policy") == '"token";q=2;w=2' and reply.header("ratelimit") == '"token";r=0;t=1'


@pytest.mark.parametrize("protocol", ["h3", "h2"])
async def test_admitted_count_is_burst_plus_rate_times_time(protocol: str, certs_dir: Path) -> None:
    burst, rate = 20, 10  # burst / rate = 2 s: a stall of the loaded test machine shorter than that costs no token
    extra = f"""
resilience:
  scoped_rate_limits:
    - {{name: exact, scope: route, requests_per_sec: {rate}, burst: {burst}}}
"""
    async with run_backend(name="b") as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir, extra=extra)) as server, \
            protocol_clients(server, certs_dir, protocol) as clients:
        window = await hammer([clients], 1.5)
        admitted = window.statuses.count(200)
        assert set(window.statuses) <= {200, 429} and window.statuses.count(429) > 0
        assert burst + rate * window.shortest - 1 <= admitted <= burst + rate * window.longest + 1, (admitted, window)


@pytest.mark.parametrize("protocol", ["h3", "h2"])
async def test_a_reload_keeps_an_unchanged_rules_bucket_and_a_changed_rule_starts_fresh(
        protocol: str, certs_dir: Path, tmp_path: Path, frozen: FrozenClock) -> None:
    cport = free_udp_port()
    rule = "    - {name: per-ip, scope: client, requests_per_sec: 1, burst: 2}\n"

    def config(rules: str, extra_key: str = "") -> str:
        return f"""
resilience:
  scoped_rate_limits:
{rules}{extra_key}observability:
  control_api: {{enabled: true, port: {cport}}}
"""
    async with run_backend(name="b") as backend:
        upstream = h1_pool(backend.url)
        path = tmp_path / "spooky.yaml"
        async with running_proxy(proxy_yaml(upstream, certs_dir=certs_dir, extra=config(rule)), config_path=path) as server, \
                protocol_clients(server, certs_dir, protocol) as clients, httpx.AsyncClient(base_url=f"http://127.0.0.1:{cport}") as api:
            port = server.listeners[0].port

            async def statuses(n: int) -> list[int | None]:
                return [(await clients.get("/echo")).status for _ in range(n)]

            assert await statuses(3) == [200, 200, 429]
            # another change (rate_limit_headers), the rule unchanged: the bucket is kept
            path.write_text(proxy_yaml(upstream, certs_dir=certs_dir, port=port,
                                       extra=config(rule, "  rate_limit_headers: true\n")))
            assert (await api.post("/admin/runtime/reload")).status_code == 200
            assert server.generation.number == 2
            assert await statuses(1) == [429]
            # the rule changed (burst 3): a fresh bucket
            path.write_text(proxy_yaml(upstream, certs_dir=certs_dir, port=port, extra=config(rule.replace("burst: 2", "burst: 3"))))
            assert (await api.post("/admin/runtime/reload")).status_code == 200
            assert await statuses(4) == [200, 200, 200, 429]
            runtime = (await api.get("/admin/runtime")).json()["rate_limits"]
            [shown] = runtime["rules"]
            assert shown["name"] == "per-ip" and shown["burst"] == 3 and shown["buckets"] == 1
            assert shown["allowed"] == 5 and shown["limited"] == 3  # counted by rule name, across reloads
            assert runtime["store"]["kind"] == "memory" and runtime["stores"] == []


async def test_one_bucket_per_process_whatever_the_protocol(certs_dir: Path, frozen: FrozenClock) -> None:
    """One bucket per process whatever the protocol: an HTTP/3 request and an HTTP/2 one from
    the same address share it."""
    extra = """
resilience:
  scoped_rate_limits:
    - {name: per-ip, scope: client, requests_per_sec: 1, burst: 2}
"""
    async with run_backend(name="b") as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir, extra=extra)) as server:
        async with protocol_clients(server, certs_dir, "h3") as h3, protocol_clients(server, certs_dir, "h2") as h2, \
                protocol_clients(server, certs_dir, "h1") as h1:
            assert (await h3.get("/echo")).status == 200
            assert (await h2.get("/echo")).status == 200
            assert (await h1.get("/echo")).status == 429
            await trio.lowlevel.checkpoint()
        assert server.metrics.registry.get_sample_value("spooky_rate_limit_buckets", {"rule": "per-ip"}) == 1
