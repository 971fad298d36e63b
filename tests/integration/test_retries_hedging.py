"""Retries and hedging through the real proxy, with backends that refuse, break or stall."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import trio

from spooky_trio.clients.h3 import H3Client
from spooky_trio.serving.server import Server
from tests.support.backends import run_backend, run_raw_backend
from tests.support.proxy import proxy_yaml, running_proxy

#: a backend with this block is judged by the breaker alone: passive ejection needs 1000
#: consecutive failures and the (hourly) active probe cannot turn it unhealthy either
NO_EJECTION = "health_check: {interval: 3600000, failure_threshold: 1000, success_threshold: 1}"


def h3(server: Server, certs_dir: Path) -> H3Client:
    return H3Client.connect("127.0.0.1", server.listeners[0].port, server_name="localhost", cafile=str(certs_dir / "ca.pem"))


def sample(server: Server, name: str, **labels: str) -> float:
    return server.metrics.registry.get_sample_value(name, labels) or 0.0


def refused_url() -> str:
    """An http:// URL on a loopback port nobody listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def two_backend_pool(first: str, second: str) -> str:
    return f"""
app:
  route: {{path_prefix: /}}
  backends:
    - {{id: first, address: "{first}", {NO_EJECTION}}}
    - {{id: second, address: "{second}"}}
"""


async def test_retries_hide_a_refusing_backend_until_the_budget_is_exhausted(certs_dir: Path) -> None:
    extra = """
resilience:
  circuit_breaker: {enabled: false}
  retry_budget: {ratio_percent: 5}
"""
    async with run_backend(name="good") as good:
        config = proxy_yaml(two_backend_pool(refused_url(), good.url), certs_dir=certs_dir, extra=extra)
        async with running_proxy(config) as server, h3(server, certs_dir) as client:
            statuses = [(await client.request("GET", "/echo", authority="localhost")).status for _ in range(30)]
    # the budget starts with 5 retries (what 100 primaries earn at 5%) and earns 0.05 per
    # request: round-robin sends every other request to the refusing backend first
    assert statuses[:10] == [200] * 10
    errors = statuses.count(502)
    assert errors >= 5 and set(statuses) == {200, 502}
    retries = sample(server, "spooky_retries_total")
    assert retries == 30 - errors - 15 and retries >= 5
    assert sample(server, "spooky_retry_attempts_total", reason="connect_failed") == retries
    assert sample(server, "spooky_retry_denied_total", reason="budget") == errors
    assert len(good.requests) == 30 - errors  # each retry went to the other backend


async def test_idempotent_small_bodies_are_replayed_and_others_are_not(certs_dir: Path) -> None:
    taken: list[bytes] = []  # request lines the broken backend took (not its health probes)

    async def take_request_and_hang_up(stream: trio.SocketStream) -> None:
        head = await stream.receive_some(65536)  # the request reached the backend, no answer comes
        if not head.startswith(b"GET /health"):
            taken.append(head.split(b"\r\n", 1)[0])

    extra = "resilience:\n  circuit_breaker: {enabled: false}\n  retry_budget: {ratio_percent: 100}\n"
    body = b"x" * 20000
    digest = hashlib.sha256(body).hexdigest()
    async with run_raw_backend(take_request_and_hang_up) as broken, run_backend(name="good") as good:
        config = proxy_yaml(two_backend_pool(broken.url, good.url), certs_dir=certs_dir, extra=extra)
        async with running_proxy(config) as server, h3(server, certs_dir) as client:
            for _ in range(4):  # PUT is idempotent and its 20 kB body was buffered: replayed
                r = await client.request("PUT", "/echo", authority="localhost", body=body)
                assert r.status == 200 and json.loads(r.body)["body_sha256"] == digest
            replayed = len(taken)
            assert replayed >= 1 and set(taken) == {b"PUT /echo HTTP/1.1"} and sample(server, "spooky_retry_attempts_total", reason="protocol_error") == replayed
            posts = [(await client.request("POST", "/echo", authority="localhost", body=body)).status for _ in range(4)]
            refused = len(taken) - replayed  # POST is not idempotent: its failures are answered
            assert refused >= 1 and posts.count(502) == refused and posts.count(200) == 4 - refused
            assert sample(server, "spooky_retry_denied_total", reason="not_replayable") == refused


async def test_hedge_wins_against_a_stalling_backend_and_cancels_its_stream(certs_dir: Path) -> None:
    extra = """
resilience:
  hedging: {enabled: true, delay_ms: 200}
"""
    ca = certs_dir / "ca.pem"
    tls = {"tls": True, "certfile": certs_dir / "localhost.pem", "keyfile": certs_dir / "localhost.key"}
    async with run_backend(name="stall", **tls) as stall, run_backend(name="fast", **tls) as fast:  # type: ignore[arg-type]
        fast.release_holds()  # /hold answers at once on "fast" and never on "stall"
        upstream = f"""
app:
  route: {{path_prefix: /}}
  tls: {{ca_file: "{ca}"}}
  backends:
    - {{id: stall, address: "{stall.url}"}}
    - {{id: fast, address: "{fast.url}"}}
"""
        async with running_proxy(proxy_yaml(upstream, certs_dir=certs_dir, extra=extra)) as server, h3(server, certs_dir) as client:
            for _ in range(4):
                r = await client.request("GET", "/hold", authority="localhost")
                assert r.status == 200 and r.body == b"0"
            # every request "stall" saw was a stalled primary (its hedge on "fast" won) or, on a
            # slow machine, a hedge sent while "fast" was the primary (wasted: the primary won)
            won, wasted = sample(server, "spooky_hedge_won_total"), sample(server, "spooky_hedge_wasted_total")
            assert won >= 1  # round-robin made "stall" the primary at least once
            assert sample(server, "spooky_hedge_triggered_total") == len(stall.requests) == won + wasted
            assert sample(server, "spooky_hedge_primary_won_after_trigger_total") == wasted
            # the losers' upstream streams are gone: RST_STREAM sent, nothing in flight
            stall_backend = server.generation.pools["app"].backends[0]
            connections = server.upstream.h2_connections(stall_backend.connect_target)
            assert connections and all(c.active_streams == 0 for c in connections)
            assert stall_backend.state.in_flight == 0 and stall_backend.state.slots.held == 0
            assert stall_backend.state.breaker.state == "closed"  # cancelled: no verdict on it


async def test_bodyless_post_that_reached_the_backend_is_not_replayed(certs_dir: Path) -> None:
    """A POST without a body that a backend took (then hung up on) is answered with an error,
    never sent to the other backend: it may have been processed (found in review: bodiless
    requests used to count as replayable whatever their method)."""
    taken: list[bytes] = []

    async def take_request_and_hang_up(stream: trio.SocketStream) -> None:
        head = await stream.receive_some(65536)
        if not head.startswith(b"GET /health"):
            taken.append(head.split(b"\r\n", 1)[0])

    extra = "resilience:\n  circuit_breaker: {enabled: false}\n  retry_budget: {ratio_percent: 100}\n"
    async with run_raw_backend(take_request_and_hang_up) as broken, run_backend(name="good") as good:
        config = proxy_yaml(two_backend_pool(broken.url, good.url), certs_dir=certs_dir, extra=extra)
        async with running_proxy(config) as server, h3(server, certs_dir) as client:
            statuses = [(await client.request("POST", "/echo", authority="localhost")).status for _ in range(4)]
            gets = [(await client.request("GET", "/echo", authority="localhost")).status for _ in range(4)]
    assert taken and statuses.count(502) == sum(line.startswith(b"POST") for line in taken), (statuses, taken)
    assert [r["method"] for r in good.requests].count("POST") == statuses.count(200)
    assert gets == [200] * 4  # an idempotent GET the broken backend took is retried on the good one
