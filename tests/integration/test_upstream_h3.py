"""``upstream_protocol: h3`` through the real proxy: clients on HTTP/3 and HTTP/2 (and
HTTP/1.1) at the front, two independent HTTP/3 servers behind it (hypercorn on aioquic, and
ngtcp2's gtlsserver), real sockets and TLS on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import trio
import trustme

from spooky_trio.serving.server import Server
from tests.support.backends import Backend, pattern_bytes, run_backend
from tests.support.clients import proxy_clients
from tests.support.h3_servers import UdpRelay, run_gtlsserver
from tests.support.proxy import proxy_yaml, running_proxy

MiB = 1024 * 1024
# multi-MiB bodies through aioquic twice are CPU bound on a loaded 2-core machine: the
# timeouts leave room (what is tested is that they arrive byte-exact)
ROOMY = """
performance:
  max_request_body_bytes: 20000000
  backend_timeout_ms: 60000
  backend_body_idle_timeout_ms: 60000
  backend_body_total_timeout_ms: 60000
  backend_total_request_timeout_ms: 120000
"""


def h3_pool(port: int, certs_dir: Path, *, name: str = "api", protocol: str = "h3", tls: str | None = None, backends: int = 1,
            extra: str = "") -> str:
    tls = tls if tls is not None else f'ca_file: "{certs_dir / "ca.pem"}"'
    listed = "".join(f'        - id: "{name}-{i + 1}"\n          address: "https://localhost:{port}"\n' for i in range(backends))
    return f"""
    {name}:
      upstream_protocol: {protocol}
      route:
        path_prefix: "/"
      tls: {{{tls}}}
{extra}      backends:
{listed}"""


def tls_files(certs_dir: Path) -> dict[str, Path]:
    return {"certfile": certs_dir / "localhost.pem", "keyfile": certs_dir / "localhost.key"}


def sample(server: Server, name: str, **labels: str) -> float:
    return server.metrics.registry.get_sample_value(name, labels) or 0.0


def access(caplog: pytest.LogCaptureFixture) -> list[dict]:  # type: ignore[type-arg]
    return [r.access for r in caplog.records if r.name == "spooky.access"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("front", ["h3", "h2"])
async def test_five_mib_both_ways_byte_exact_over_http3(certs_dir: Path, front: str, caplog: pytest.LogCaptureFixture) -> None:
    """H3 -> H3 (and H2 -> H3): a 5 MiB upload streamed back and a 5 MiB download arrive
    byte-exact; the access log and the metrics name the upstream protocol."""
    caplog.set_level(logging.INFO, logger="spooky.access")
    payload = pattern_bytes(5 * MiB)
    async with run_backend(name="h3", tls=True, quic=True, **tls_files(certs_dir)) as backend:
        async with running_proxy(proxy_yaml(h3_pool(backend.port, certs_dir), certs_dir=certs_dir, extra=ROOMY)) as server:
            async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                r = await clients.request(front, "/echo?raw=1", method="POST", body=payload)
                assert r.status == 200 and hashlib.sha256(r.body).digest() == hashlib.sha256(payload).digest()
                r = await clients.request(front, f"/bytes/{5 * MiB}")
                assert r.status == 200 and r.body == payload
                r = await clients.request(front, "/echo")
                assert json.loads(r.body)["http_version"] == "3"
            assert {record["http_version"] for record in backend.requests} == {"3"}
            assert sample(server, "spooky_upstream_protocol_requests_total", upstream="api", protocol="HTTP/3") == 3
            assert sample(server, "spooky_upstream_h3_connections", backend=f"https://localhost:{backend.port}") == 1
    lines = [line for line in access(caplog) if line["pool"] == "api"]
    assert [line["upstream_protocol"] for line in lines] == ["HTTP/3"] * 3


async def test_gtlsserver_download_upload_and_trailers(certs_dir: Path, tmp_path: Path) -> None:
    """ngtcp2's server: a 5 MiB file byte-exact, a 5 MiB request body streamed to it, its
    trailers relayed to the client, on every front protocol that carries trailers."""
    big = pattern_bytes(5 * MiB)
    # the HTTP/3 client idles while the h2 and h1 rounds move 20 MiB: on a loaded box that
    # outlasts the default 5 s QUIC idle timeout and its last request meets a timed-out connection
    extra = ROOMY + "  quic_max_idle_timeout_ms: 60000\n"
    async with run_gtlsserver(certs_dir, tmp_path / "www", files={"big.bin": big, "small.txt": b"hello\n"}, args=["--send-trailers"]) as gtls:
        async with running_proxy(proxy_yaml(h3_pool(gtls.port, certs_dir), certs_dir=certs_dir, extra=extra)) as server:
            async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                for front in ("h3", "h2", "h1"):
                    r = await clients.request(front, "/big.bin")
                    assert r.status == 200 and r.body == big, front
                    r = await clients.request(front, "/small.txt", method="POST", body=big)
                    assert r.status == 200 and r.body == b"hello\n", front
                    assert r.header("server") == "nghttp3/ngtcp2 server"
                r = await clients._h3.request("GET", "/small.txt", authority="localhost")
                assert r.status == 200 and r.trailers, "gtlsserver --send-trailers sends a trailer section"
                h2 = await clients._h2.get(f"https://localhost:{clients.port}/small.txt", headers={"te": "trailers"})
                assert h2.status_code == 200 and h2.content == b"hello\n"


async def test_two_hundred_concurrent_requests_against_max_streams_ten(certs_dir: Path, tmp_path: Path) -> None:
    """A backend allowing 10 streams per connection: 200 concurrent requests all succeed,
    over several connections, none stalls in aioquic's queue (they wait, counted, in ours)."""
    pools = h3_pool(0, certs_dir).replace("localhost:0", "localhost:{port}")
    extra = ROOMY + "  h3_pool_max_connections_per_backend: 4\n  per_backend_inflight_limit: 1000\n  backend_connect_timeout_ms: 30000\n"
    async with run_gtlsserver(certs_dir, tmp_path / "www", files={"k.bin": pattern_bytes(16 * 1024)}, args=["--max-streams-bidi=10"]) as gtls:
        async with running_proxy(proxy_yaml(pools.replace("{port}", str(gtls.port)), certs_dir=certs_dir, extra=extra)) as server:
            statuses: list[int] = []
            async with proxy_clients(server.listeners[0].port, certs_dir) as clients:

                async def one() -> None:
                    r = await clients.request("h3", "/k.bin")
                    assert r.body == pattern_bytes(16 * 1024)
                    statuses.append(r.status)

                with trio.fail_after(60):
                    async with trio.open_nursery() as nursery:
                        for _ in range(200):
                            nursery.start_soon(one)
            assert statuses == [200] * 200
            address = f"https://localhost:{gtls.port}"
            assert sample(server, "spooky_upstream_h3_events_total", backend=address, event="dial") >= 2  # several connections
            assert sample(server, "spooky_upstream_h3_events_total", backend=address, event="stream_wait") >= 1
            for session in server.upstream.h3.sessions(server.reloads.generations.stable.pools["api"].backends[0].connect_target):
                assert session.active_streams == 0


async def test_backend_restart_redials_and_resends_idempotent_requests(certs_dir: Path) -> None:
    """The backend dies under a GET and a POST it had acknowledged and another process
    takes its address (a relay in front keeps the address; the old connection's packets go
    nowhere, as after a restart): the GET is sent again on a new connection and answered,
    the POST (maybe processed) fails 502; later requests use the new connection."""
    extra = ROOMY.replace("backend_timeout_ms: 60000", "backend_timeout_ms: 20000")
    stop_before = trio.Event()
    async with trio.open_nursery() as nursery:
        before = await nursery.start(_serve_until, "before", certs_dir, stop_before)
        relay = UdpRelay(before.port)
        await nursery.start(relay.run)
        pools = h3_pool(relay.port, certs_dir)
        async with running_proxy(proxy_yaml(pools, certs_dir=certs_dir, extra=extra)) as server:
            async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                assert (await clients.request("h3", "/echo")).status == 200
                results: dict[str, int] = {}

                async def slow(method: str) -> None:
                    body = b"x" if method == "POST" else None
                    results[method] = (await clients.request("h3", "/slow/1500", method=method, body=body)).status

                with trio.fail_after(30):
                    async with trio.open_nursery() as requests:
                        requests.start_soon(slow, "GET")
                        requests.start_soon(slow, "POST")
                        await before.wait_for_requests(3)
                        stop_before.set()  # the backend dies with both requests in hand
                        after = await nursery.start(_serve_until, "after", certs_dir, trio.Event())
                        relay.target = after.port
                assert results == {"GET": 200, "POST": 502}
                assert [r["method"] for r in after.requests] == ["GET"]
                for _ in range(3):
                    assert (await clients.request("h3", "/echo")).status == 200
                address = f"https://localhost:{relay.port}"
                assert sample(server, "spooky_upstream_h3_events_total", backend=address, event="resent") == 1
                assert sample(server, "spooky_upstream_h3_events_total", backend=address, event="lost") == 1
                assert sample(server, "spooky_upstream_h3_events_total", backend=address, event="dial") == 2
        nursery.cancel_scope.cancel()


async def _serve_until(name: str, certs_dir: Path, stop: trio.Event, *, task_status: trio.TaskStatus[Backend]) -> None:
    async with run_backend(name=name, tls=True, quic=True, **tls_files(certs_dir)) as backend:
        task_status.started(backend)
        await stop.wait()


@pytest.mark.parametrize("front", ["h3", "h2"])
async def test_wrong_certificate_and_name_answer_502(certs_dir: Path, tmp_path: Path, ca: trustme.CA, front: str) -> None:
    """A backend certificate from another CA, or for another name, fails the QUIC
    handshake: 502 ``tls_failed``; with verification off the first is served."""
    foreign = _identity(tmp_path / "foreign", trustme.CA(), "localhost")
    other_name = _identity(tmp_path / "other", ca, "other.example")
    async with run_backend(name="foreign", tls=True, quic=True, **foreign) as foreign_backend, \
            run_backend(name="named", tls=True, quic=True, **other_name) as named_backend:
        pools = (h3_pool(foreign_backend.port, certs_dir)
                 + _prefixed(h3_pool(foreign_backend.port, certs_dir, name="open", tls="verify_certificates: false"), "/open")
                 + _prefixed(h3_pool(named_backend.port, certs_dir, name="named"), "/named"))
        async with running_proxy(proxy_yaml(pools, certs_dir=certs_dir)) as server:
            async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                r = await clients.request(front, "/echo")
                assert r.status == 502 and b"tls_failed" in r.body
                r = await clients.request(front, "/named/echo")
                assert r.status == 502 and b"tls_failed" in r.body
                r = await clients.request(front, "/open/echo")
                assert r.status == 200 and json.loads(r.body)["http_version"] == "3"


def _identity(directory: Path, ca: trustme.CA, *names: str) -> dict[str, Path]:
    directory.mkdir()
    leaf = ca.issue_cert(*names)
    leaf.private_key_pem.write_to_path(str(directory / "k.pem"))
    leaf.cert_chain_pems[0].write_to_path(str(directory / "c.pem"))
    return {"certfile": directory / "c.pem", "keyfile": directory / "k.pem"}


def _prefixed(pool: str, prefix: str) -> str:
    return pool.replace('path_prefix: "/"', f'path_prefix: "{prefix}"')


async def test_identity_checked_without_sni(certs_dir: Path, tmp_path: Path, ca: trustme.CA, caplog: pytest.LogCaptureFixture) -> None:
    """``strict_sni: false`` sends no SNI; the certificate must still name the backend host."""
    other_name = _identity(tmp_path / "named", ca, "other.example")
    async with run_backend(name="named", tls=True, quic=True, **other_name) as wrong, \
            run_backend(name="right", tls=True, quic=True, **tls_files(certs_dir)) as right:
        no_sni = f'ca_file: "{certs_dir / "ca.pem"}", strict_sni: false'
        pools = h3_pool(wrong.port, certs_dir, tls=no_sni) + _prefixed(h3_pool(right.port, certs_dir, name="ok", tls=no_sni), "/ok")
        async with running_proxy(proxy_yaml(pools, certs_dir=certs_dir)) as server:
            async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                r = await clients.request("h3", "/echo")
                assert r.status == 502 and b"tls_failed" in r.body
                assert "certificate is not valid for 'localhost'" in caplog.text  # our check: aioquic had no name to check
                assert (await clients.request("h3", "/ok/echo")).status == 200


@pytest.mark.parametrize("front", ["h3", "h2", "h1"])
async def test_slow_backend_answers_504_and_a_closed_port_502(certs_dir: Path, front: str) -> None:
    extra = "performance:\n  backend_connect_timeout_ms: 1000\n  backend_timeout_ms: 1000\n"
    async with run_backend(name="slow", tls=True, quic=True, **tls_files(certs_dir)) as backend:
        dead_port = backend.port  # the same port number on another loopback address: nothing listens there
        dead = h3_pool(dead_port, certs_dir, name="dead", tls="verify_certificates: false").replace("https://localhost:", "https://127.0.0.3:")
        pools = h3_pool(backend.port, certs_dir) + _prefixed(dead, "/dead")
        async with running_proxy(proxy_yaml(pools, certs_dir=certs_dir, extra=extra)) as server:
            async with proxy_clients(server.listeners[0].port, certs_dir) as clients:
                with trio.fail_after(20):
                    r = await clients.request(front, "/slow/3000")
                    assert r.status == 504
                    r = await clients.request(front, "/dead/echo")
                    assert r.status == 502 and b"connect_failed" in r.body


async def test_slow_reader_bounds_a_hundred_mib_download(certs_dir: Path, tmp_path: Path) -> None:
    """H3 -> H3, 100 MiB from ngtcp2's server (which honours flow control): while the client
    reads nothing the proxy holds at most one stream window from the backend; read to the
    end, this process (proxy and client) grows by a few MiB, not by the body."""
    from spooky_trio.clients.h3 import H3Client
    from spooky_trio.upstream.h3 import STREAM_WINDOW

    total = 100 * MiB
    async with run_gtlsserver(certs_dir, tmp_path / "www", args=["--max-dyn-length=200M"]) as gtls:
        async with running_proxy(proxy_yaml(h3_pool(gtls.port, certs_dir), certs_dir=certs_dir, extra=ROOMY)) as server:
            port = server.listeners[0].port
            async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=str(certs_dir / "ca.pem")) as c:
                async with c.stream_request("GET", f"/{total}", authority="localhost") as resp:
                    assert resp.status == 200
                    target = server.reloads.generations.stable.pools["api"].backends[0].connect_target
                    (session,) = server.upstream.h3.sessions(target)
                    (upstream,) = session.active.values()
                    last, still = -1, 0
                    with trio.fail_after(30):
                        while still < 6:  # settled: the backend may send no more
                            await trio.sleep(0.05)
                            still, last = (still + 1 if upstream.buffered_bytes == last else 0), upstream.buffered_bytes
                    assert 0 < last <= STREAM_WINDOW, last
                    baseline = _rss()
                    received, peak_rss, peak_buffered = 0, baseline, 0
                    with trio.fail_after(300):
                        while chunk := await resp.receive():
                            assert not chunk.strip(b"\0"), "gtlsserver's dynamic content is zeros"
                            received += len(chunk)
                            peak_buffered = max(peak_buffered, upstream.buffered_bytes)
                            if received % (4 * MiB) < len(chunk):
                                peak_rss = max(peak_rss, _rss())
                    assert received == total
                    assert peak_buffered <= STREAM_WINDOW, peak_buffered
                    assert peak_rss - baseline < 32 * MiB, (peak_rss - baseline) // MiB


def _rss() -> int:
    """This process's resident set size in bytes."""
    with open("/proc/self/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return kib * 1024
