"""Traffic policy through the real proxy (extensions.md section 1; docs/traffic-policy.md):
matchers, rewrites, direct responses and redirects on HTTP/3, HTTP/2 and HTTP/1.1; the
split's statistics and stickiness across a reload; faults and what they never touch; a
canary generation's policy. Mirror copies are in test_traffic_mirror.py."""

from __future__ import annotations

import json
import logging
import math
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from spooky_trio.proxy.split import key_bucket
from spooky_trio.serving.server import Server
from tests.integration.test_observability import TOKEN
from tests.support.backends import run_backend
from tests.support.clients import PROTOCOLS, protocol_clients, proxy_clients
from tests.support.proxy import free_udp_port, proxy_yaml, running_proxy


def binomial_bound(n: int, p: float, sigmas: float = 5.0) -> tuple[float, float]:
    """Mean -/+ 5 standard deviations of Binomial(n, p) (normal approximation): a correct
    split lands outside with probability < 6e-7."""
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    return mean - sigmas * sd, mean + sigmas * sd


def metric(server: Server, name: str, **labels: str) -> float:
    return server.metrics.registry.get_sample_value(name, labels) or 0.0


def access_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.access for r in caplog.records if r.name == "spooky.access"]  # type: ignore[attr-defined]


POLICY_POOLS = """
canary:
  route:
    path_prefix: /
    headers: [{name: x-canary, exact: "1"}]
  backends: [{id: b, address: "{b}"}]
beta:
  route:
    path_prefix: /
    query: [{name: debug, present: true}]
    cookies: [{name: beta, prefix: "on"}]
  backends: [{id: c, address: "{c}"}]
web:
  route: {path_prefix: /}
  backends: [{id: a, address: "{a}"}]
api:
  route: {path_prefix: /v1}
  backends: [{id: a, address: "{a}"}]
  traffic_policy:
    request_headers: {set: {x-env: prod}, add: {via: edge}, remove: [x-debug]}
    response_headers: {set: {strict-transport-security: "max-age=31536000"}, remove: [x-backend-secret]}
    rewrite: {path_prefix: /internal/v1}
maintenance:
  route: {path_prefix: /maintenance}
  traffic_policy:
    direct_response: {status: 503, body: "maintenance\\n", headers: {retry-after: "120"}}
old:
  route: {path_prefix: /old}
  traffic_policy:
    redirect: {status: 308, location: "https://new.example.com{uri}"}
"""


async def test_matchers_rewrites_and_local_answers_on_every_protocol(certs_dir: Path) -> None:
    extra = "observability:\n  routing:\n    enabled: true\n    expose_header: true\n"
    async with run_backend(name="a") as a, run_backend(name="b") as b, run_backend(name="c") as c:
        text = proxy_yaml(POLICY_POOLS, certs_dir=certs_dir, extra=extra).replace("{a}", a.url).replace("{b}", b.url).replace("{c}", c.url)
        async with running_proxy(text) as server, proxy_clients(server.listeners[0].port, certs_dir) as clients:
            for protocol in PROTOCOLS:
                plain = await clients.request(protocol, "/echo")
                assert json.loads(plain.body)["backend"] == "a", protocol
                # beta (two matchers) is the most specific route on "/": the first turned away
                assert plain.header("x-spooky-route-decision") == 'pool=web; reason="only match; beta not taken: query debug present did not match"'
                canary = await clients.request(protocol, "/echo", headers=[("x-canary", "1")])
                assert json.loads(canary.body)["backend"] == "b", protocol
                assert canary.header("x-spooky-route-decision") == ('pool=canary; reason="more matchers (1); matched header x-canary; '
                                                                      'beta not taken: query debug present did not match"')
                assert json.loads((await clients.request(protocol, "/echo", headers=[("x-canary", "2")])).body)["backend"] == "a"
                beta = await clients.request(protocol, "/echo?debug", headers=[("cookie", "session=1; beta=on")])
                assert json.loads(beta.body)["backend"] == "c", protocol
                assert json.loads((await clients.request(protocol, "/echo?debug", headers=[("cookie", "beta=off")])).body)["backend"] == "a"
                # request and path rewrites, response rewrites
                reply = await clients.request(protocol, "/v1/echo?x=1", headers=[("x-env", "dev"), ("x-debug", "1"), ("via", "client")])
                echo = json.loads(reply.body)
                assert (echo["path"], echo["query"]) == ("/internal/v1/echo", "x=1"), protocol
                assert reply.echoed("x-env") == ["prod"] and reply.echoed("x-debug") == []
                assert sorted(reply.echoed("via")) == ["client", "edge"]
                assert reply.header("strict-transport-security") == "max-age=31536000"
                # a maintenance page and a redirect, answered by the proxy itself
                down = await clients.request(protocol, "/maintenance/x")
                assert (down.status, down.body, down.header("retry-after")) == (503, b"maintenance\n", "120"), protocol
                assert down.header("content-type") == "text/plain; charset=utf-8"
                moved = await clients.request(protocol, "/old/page?id=7")
                assert (moved.status, moved.header("location")) == (308, "https://new.example.com/old/page?id=7"), protocol
            assert metric(server, "spooky_route_matcher_misses_total", upstream="canary", matcher="header:x-canary") > 0
    # read after the drain: the record step runs after the answer's last byte went out, and
    # the drain waits for every request in flight to be recorded
    assert metric(server, "spooky_requests_by_reason_total", reason="direct_response", status_class="5xx") == 3
    assert metric(server, "spooky_requests_by_reason_total", reason="redirect", status_class="3xx") == 3
    assert not [r for r in a.requests + b.requests + c.requests if "maintenance" in r["path"] or "/old" in r["path"]]


SPLIT_POOLS = """
api:
  route: {path_prefix: /}
  backends: [{id: a, address: "{a}"}]
  traffic_policy:
    split: [{pool: v2, percent: PERCENT}]
    KEY
v2:
  backends: [{id: b, address: "{b}"}]
"""


def split_yaml(certs_dir: Path, port: int, a: str, b: str, percent: float, key: str = "") -> str:
    pools = SPLIT_POOLS.replace("PERCENT", str(percent)).replace("KEY", f"split_key: '{key}'" if key else "")
    return proxy_yaml(pools, certs_dir=certs_dir, port=port).replace("{a}", a).replace("{b}", b)


async def requests_over_h2(port: int, certs_dir: Path, count: int, workers: int = 16) -> None:
    context = ssl.create_default_context(cafile=str(certs_dir / "ca.pem"))
    async with httpx.AsyncClient(http2=True, verify=context, timeout=30) as client:
        async def worker() -> None:
            for _ in range(count // workers):
                assert (await client.get(f"https://localhost:{port}/status/200")).status_code == 200

        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(worker)


async def test_split_10000_requests_at_5_percent_and_a_reload_to_50(certs_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """10,000 requests at 5 %: the split side holds 500 +/- 109 of them (5 standard deviations
    of Binomial(10000, 0.05)); after a reload to 50 %, 1,000 requests give 500 +/- 79."""
    caplog.set_level(logging.INFO, logger="spooky.access")
    port = free_udp_port()
    async with run_backend(name="a") as a, run_backend(name="b") as b:
        async with running_proxy(split_yaml(certs_dir, port, a.url, b.url, 5.0)) as server:
            await requests_over_h2(port, certs_dir, 10000)
            moved = len(b.requests)
            assert len(a.requests) + moved == 10000
            low, high = binomial_bound(10000, 0.05)
            assert low < moved < high, moved
            assert metric(server, "spooky_traffic_split_total", upstream="api", target="v2") == moved
            outcome = await server.reloads.apply(split_yaml(certs_dir, port, a.url, b.url, 50.0).encode())
            assert outcome.status == 200
            await requests_over_h2(port, certs_dir, 1000)
            after = len(b.requests) - moved
            low, high = binomial_bound(1000, 0.5)
            assert low < after < high, after
    lines = access_records(caplog)
    assert {line["split"] for line in lines} == {"api->api", "api->v2"}
    assert all(line["pool"] == line["split"].split("->")[1] for line in lines)


async def test_sticky_split_never_flips_on_any_protocol_or_across_a_reload(certs_dir: Path) -> None:
    port = free_udp_port()
    async with run_backend(name="a") as a, run_backend(name="b") as b:
        async with running_proxy(split_yaml(certs_dir, port, a.url, b.url, 20.0, "cookie:session")) as server:
            sides: dict[str, set[str]] = {}

            async def one_round() -> None:
                for protocol in PROTOCOLS:
                    async with protocol_clients(server, certs_dir, protocol) as clients:
                        for user in range(40):
                            reply = await clients.get("/echo", headers=[("cookie", f"theme=x; session=user-{user}")])
                            sides.setdefault(f"user-{user}", set()).add(json.loads(reply.body)["backend"])

            await one_round()
            await one_round()
            assert all(len(side) == 1 for side in sides.values()), sides  # the same key, the same side, every time
            split = {user for user, side in sides.items() if side == {"b"}}
            assert split == {user for user in sides if key_bucket(user) < 2000}
            # raising the percent moves keys only from staying to the split side
            assert (await server.reloads.apply(split_yaml(certs_dir, port, a.url, b.url, 60.0, "cookie:session").encode())).status == 200
            sides.clear()
            await one_round()
            now_split = {user for user, side in sides.items() if side == {"b"}}
            assert split <= now_split and now_split == {user for user in sides if key_bucket(user) < 6000}


FAULT_POOLS = """
api:
  route: {path_prefix: /}
  backends: [{id: a, address: "{a}", health_check: {interval: 3600000, failure_threshold: 3}}]
  traffic_policy:
    fault:
      delay: {fixed_ms: 300, percent: 10}
      abort: {status: 503, percent: 25}
chaos:
  route: {path_prefix: /chaos}
  backends: [{id: a, address: "{a}"}]
  traffic_policy:
    fault: {header_control: true}
"""


async def test_fault_rates_and_health_breakers_retries_ignore_them(certs_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """400 requests: 25 % aborted (100 +/- 43) and 10 % delayed (40 +/- 30), 5 standard
    deviations; each delayed request took at least its 300 ms (a lower bound: no load makes
    a request faster)."""
    caplog.set_level(logging.INFO, logger="spooky.access")
    async with run_backend(name="a") as a:
        text = proxy_yaml(FAULT_POOLS, certs_dir=certs_dir).replace("{a}", a.url)
        async with running_proxy(text) as server, proxy_clients(server.listeners[0].port, certs_dir) as clients:
            durations: list[tuple[int, float]] = []

            async def worker(protocol: str) -> None:
                for _ in range(50):
                    started = time.monotonic()
                    reply = await clients.request(protocol, "/status/200")
                    durations.append((reply.status, time.monotonic() - started))
                    if reply.status == 503:
                        assert reply.body == b"503 Service Unavailable: fault injected (fault_abort)\n"

            async with trio.open_nursery() as nursery:
                for protocol in PROTOCOLS * 2 + ("h2", "h2"):
                    nursery.start_soon(worker, protocol)
            # the backend saw exactly the requests that were not aborted, and judged nothing
            aborts = sum(1 for status, _ in durations if status == 503)
            assert len([r for r in a.requests if r["path"] == "/status/200"]) == 400 - aborts
            state = server.generation.pools["api"].backends[0].state
            assert state.healthy and not state.passive.ejected(trio.current_time()) and state.passive.ejections == 0
            assert not state.failures and state.breaker.state == "closed"
            assert metric(server, "spooky_retries_total") == 0
            assert metric(server, "spooky_upstream_requests_total", upstream="api", status_class="5xx", outcome="failure") == 0
            assert metric(server, "spooky_fault_injections_total", upstream="api", kind="abort") == aborts
            # header control, where a pool turned it on, on every protocol
            for protocol in PROTOCOLS:
                forced = await clients.request(protocol, "/chaos/status/200", headers=[("x-spooky-fault-abort", "429")])
                assert forced.status == 429, protocol
    # the access log is read after the drain: a request's line is written after its answer went out
    lines = [line for line in access_records(caplog) if line["path"] == "/status/200"]
    assert len(lines) == 400
    aborted = [line for line in lines if line["reason"] == "fault_abort"]
    delayed = [line for line in lines if "delay:300ms" in line.get("fault", "")]
    low, high = binomial_bound(400, 0.25)
    assert low < len(aborted) < high and aborts == len(aborted)
    low, high = binomial_bound(400, 0.10)
    assert low < len(delayed) < high
    assert all(line["duration_ms"] >= 300 for line in delayed)
    assert all(line["status"] == 503 and line["backend"] is None for line in aborted)


async def test_a_canary_generation_applies_its_policy_and_runtime_explains_both(certs_dir: Path) -> None:
    port, control = free_udp_port(), free_udp_port()
    extra = f"observability:\n  control_api:\n    enabled: true\n    address: 127.0.0.1\n    port: {control}\n    auth_token: {TOKEN}\n"
    plain = "api:\n  route: {path_prefix: /}\n  backends: [{id: a, address: \"{a}\"}]\n"
    down = plain + "  traffic_policy: {direct_response: {status: 503, body: canary}}\n"
    async with run_backend(name="a") as a:
        async with running_proxy(proxy_yaml(plain, certs_dir=certs_dir, port=port, extra=extra).replace("{a}", a.url)) as server:
            canary = proxy_yaml(down, certs_dir=certs_dir, port=port, extra=extra).replace("{a}", a.url)
            assert (await server.reloads.apply(canary.encode(), canary_percent=100.0)).status == 200
            async with proxy_clients(port, certs_dir) as clients:
                for protocol in PROTOCOLS:
                    reply = await clients.request(protocol, "/echo")
                    assert (reply.status, reply.body) == (503, b"canary"), protocol
            async with httpx.AsyncClient() as http:
                runtime = (await http.get(f"http://127.0.0.1:{control}/admin/runtime",
                                          headers={"authorization": f"Bearer {TOKEN}"})).json()
            assert runtime["traffic_policy"] == {}
            assert runtime["canary_traffic_policy"] == {"api": ["direct response: every request is answered 503 by the proxy (6-byte body)"]}
            assert runtime["mirror_copies_in_flight"] == {}
            assert (await server.reloads.promote()).status == 200
