"""The TCP bootstrap listener with real clients: httpx (HTTP/1.1, HTTP/2) -> spooky-trio ->
hypercorn backends, Alt-Svc on every response, and an HTTP/3 client that follows it."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import ssl
import struct
from pathlib import Path

import httpx
from hyperframe.frame import DataFrame, Frame, HeadersFrame
import pytest
import trio

from spooky_trio.clients.h3 import H3Client
from tests.support.backends import pattern_bytes, run_backend
from tests.support.proxy import h1_pool, h2_pool, proxy_yaml, running_proxy

MiB = 1024 * 1024


def tcp_port(server) -> int:  # type: ignore[no-untyped-def]
    return server.bootstrap_listeners[0].port


def http_client(certs_dir: Path, *, http2: bool) -> httpx.AsyncClient:
    ctx = ssl.create_default_context(cafile=str(certs_dir / "ca.pem"))
    return httpx.AsyncClient(http2=http2, http1=not http2, verify=ctx, timeout=10)


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "http2"])
async def test_httpx_to_http1_backend(certs_dir: Path, http2: bool) -> None:
    async with run_backend(name="h1") as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir)) as server:
        port = tcp_port(server)
        assert port == server.listeners[0].port  # same number as the QUIC listener
        async with http_client(certs_dir, http2=http2) as client:
            r = await client.get(f"https://localhost:{port}/echo?x=1")
            assert r.status_code == 200
            assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
            info = json.loads(r.content)
            assert info["backend"] == "h1" and info["query"] == "x=1"
            headers = dict(info["headers"])
            assert headers["host"] == f"localhost:{port}"
            assert headers["x-forwarded-proto"] == "https"
            assert r.headers["alt-svc"] == f'h3=":{port}"; ma=86400'
            body = pattern_bytes(300_000)
            r = await client.post(f"https://localhost:{port}/echo", content=body)
            info = json.loads(r.content)
            assert info["body_len"] == len(body) and info["body_sha256"] == hashlib.sha256(body).hexdigest()
            r = await client.get(f"https://localhost:{port}/nothing-here")
            assert r.status_code == 404  # the backend's own 404
            assert "alt-svc" in r.headers
        assert server.bootstrap_listeners[0].tls.stats[f"alpn.{'h2' if http2 else 'http/1.1'}"] >= 1


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "http2"])
async def test_httpx_to_http2_backend_streams_both_ways(certs_dir: Path, http2: bool) -> None:
    async with run_backend(name="h2", tls=True, certfile=certs_dir / "localhost.pem", keyfile=certs_dir / "localhost.key") as backend:
        extra = "performance:\n  max_request_body_bytes: 20000000\n"
        async with running_proxy(proxy_yaml(h2_pool(backend.port, certs_dir), certs_dir=certs_dir, extra=extra)) as server:
            port = tcp_port(server)
            async with http_client(certs_dir, http2=http2) as client:
                payload = pattern_bytes(3 * MiB)
                # /echo reads the whole body first: httpx sends the full request body before it
                # reads a response, so a streaming echo of this size would stall the client itself
                r = await client.post(f"https://localhost:{port}/echo", content=payload)
                info = json.loads(r.content)
                assert info["body_len"] == len(payload) and info["body_sha256"] == hashlib.sha256(payload).hexdigest()
                r = await client.post(f"https://localhost:{port}/echo?raw=1", content=pattern_bytes(20_000))
                assert r.status_code == 200 and r.content == pattern_bytes(20_000)
                r = await client.get(f"https://localhost:{port}/bytes/{2 * MiB}")
                assert r.content == pattern_bytes(2 * MiB)
                assert r.headers["content-length"] == str(2 * MiB)
                r = await client.get(f"https://localhost:{port}/echo")
                assert json.loads(r.content)["http_version"] == "2"

                async def one(i: int) -> None:
                    response = await client.get(f"https://localhost:{port}/echo?i={i}")
                    assert json.loads(response.content)["query"] == f"i={i}"

                async with trio.open_nursery() as nursery:
                    for i in range(20):
                        nursery.start_soon(one, i)


async def test_error_responses_carry_alt_svc(certs_dir: Path) -> None:
    async with run_backend(name="h1") as backend, running_proxy(proxy_yaml(h1_pool(backend.url, "/ok"), certs_dir=certs_dir)) as server:
        port = tcp_port(server)
        async with http_client(certs_dir, http2=True) as client:
            r = await client.get(f"https://localhost:{port}/unrouted")
            assert r.status_code == 404 and b"no_route" in r.content
            assert r.headers["alt-svc"] == f'h3=":{port}"; ma=86400'
        async with http_client(certs_dir, http2=False) as client:
            r = await client.get(f"https://localhost:{port}/unrouted")
            assert r.status_code == 404 and r.headers["alt-svc"] == f'h3=":{port}"; ma=86400'


async def test_http3_client_follows_alt_svc(certs_dir: Path) -> None:
    async with run_backend(name="h1") as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir)) as server:
        port = tcp_port(server)
        async with http_client(certs_dir, http2=False) as client:
            r = await client.get(f"https://localhost:{port}/echo")
        match = re.fullmatch(r'h3=":(\d+)"; ma=86400', r.headers["alt-svc"])
        assert match is not None
        h3_port = int(match.group(1))
        async with H3Client.connect("127.0.0.1", h3_port, server_name="localhost", cafile=str(certs_dir / "ca.pem")) as h3:
            r3 = await h3.request("GET", "/echo", authority=f"localhost:{h3_port}")
            assert r3.status == 200
            assert json.loads(r3.body)["backend"] == "h1"


async def test_http2_drain_sends_goaway_and_finishes_open_streams(certs_dir: Path) -> None:
    import h2.config
    import h2.connection
    import h2.events

    from tests.support.bootstrap import client_context, tls_connect

    async with run_backend(name="h1") as backend, running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir)) as server:
        stream = await tls_connect(tcp_port(server), client_context(certs_dir, alpn=["h2"]))
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        conn.send_headers(1, [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/slow/300"), (b":authority", b"localhost")], end_stream=True)
        await stream.send_all(conn.data_to_send())
        await backend.wait_for_requests(1)
        server.request_drain()
        goaway: h2.events.ConnectionTerminated | None = None
        raw = b""
        with trio.fail_after(5):
            while goaway is None:
                data = await stream.receive_some(65536)
                assert data
                for index, event in enumerate(events := conn.receive_data(data)):
                    if isinstance(event, h2.events.ConnectionTerminated):
                        goaway = event
                        assert not events[index + 1:]
            # python-h2 (like this client) refuses frames after GOAWAY; read the rest raw
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    break
                raw += data
        await trio.aclose_forcefully(stream)
        assert goaway.last_stream_id == 1 and goaway.error_code == 0
        frames = []
        while raw:
            frame, length = Frame.parse_frame_header(memoryview(raw[:9]))
            frame.parse_body(memoryview(raw[9:9 + length]))
            frames.append(frame)
            raw = raw[9 + length:]
        data_frames = [f for f in frames if isinstance(f, DataFrame) and f.stream_id == 1]
        assert b"".join(f.data for f in data_frames) == b"slow ok"
        assert "END_STREAM" in data_frames[-1].flags
        assert any(isinstance(f, HeadersFrame) and f.stream_id == 1 for f in frames)


async def test_http2_client_gets_a_valid_head_body_and_trailers(certs_dir: Path) -> None:
    """A strict h2 client (inbound validation on) reads head, body and trailers relayed from
    an HTTP/2 backend over the TCP listener: the blocks we build ourselves pass its checks."""
    import h2.config
    import h2.connection
    import h2.events

    from tests.support.bootstrap import client_context, tls_connect

    async with run_backend(name="h2", tls=True, certfile=certs_dir / "localhost.pem", keyfile=certs_dir / "localhost.key") as backend:
        async with running_proxy(proxy_yaml(h2_pool(backend.port, certs_dir), certs_dir=certs_dir)) as server:
            stream = await tls_connect(tcp_port(server), client_context(certs_dir, alpn=["h2"]))
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None, validate_inbound_headers=True))
            conn.initiate_connection()
            head = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/trailers"), (b":authority", b"localhost"), (b"te", b"trailers")]
            for stream_id in (1, 3):
                conn.send_headers(stream_id, head, end_stream=True)
            await stream.send_all(conn.data_to_send())
            heads: dict[int, dict[bytes, bytes]] = {}
            bodies: dict[int, bytes] = {1: b"", 3: b""}
            trailers: dict[int, list[tuple[bytes, bytes]]] = {}
            ended: set[int] = set()
            with trio.fail_after(5):
                while ended != {1, 3}:
                    data = await stream.receive_some(65536)
                    assert data
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.ResponseReceived):
                            heads[event.stream_id] = dict(event.headers)
                        elif isinstance(event, h2.events.DataReceived):
                            bodies[event.stream_id] += event.data
                            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                        elif isinstance(event, h2.events.TrailersReceived):
                            trailers[event.stream_id] = list(event.headers)
                        elif isinstance(event, h2.events.StreamEnded):
                            ended.add(event.stream_id)
                    await stream.send_all(conn.data_to_send())
            await trio.aclose_forcefully(stream)
    for stream_id in (1, 3):
        assert heads[stream_id][b":status"] == b"200"
        assert heads[stream_id][b"alt-svc"] == f'h3=":{tcp_port(server)}"; ma=86400'.encode()
        assert bodies[stream_id] == b"trailer body"
        assert trailers[stream_id] == [(b"grpc-status", b"0"), (b"grpc-message", b"ok")]


async def test_http2_client_vanishing_mid_download_frees_the_connection(certs_dir: Path) -> None:
    """The client stops reading a large download and then drops the TCP connection: the
    connection's writer fails, the connection ends, its request stops counting as in flight,
    and the listener serves the next client."""
    import h2.config
    import h2.connection
    import h2.events

    from tests.support.bootstrap import client_context, tls_connect

    async with run_backend(name="big") as backend:
        async with running_proxy(proxy_yaml(h1_pool(backend.url), certs_dir=certs_dir)) as server:
            listener = server.bootstrap_listeners[0]
            stream = await tls_connect(tcp_port(server), client_context(certs_dir, alpn=["h2"]))
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
            conn.initiate_connection()
            conn.send_headers(1, [(b":method", b"GET"), (b":scheme", b"https"), (b":path", f"/bytes/{64 * MiB}".encode()), (b":authority", b"localhost")], end_stream=True)
            await stream.send_all(conn.data_to_send())
            await backend.wait_for_requests(1)
            with trio.fail_after(5):
                while not any(isinstance(e, h2.events.ResponseReceived) for e in conn.receive_data(await stream.receive_some(65536))):
                    pass
            assert server.activity.count == 1 and len(listener.connections) == 1
            stream.transport_stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await trio.aclose_forcefully(stream)  # RST: the proxy's next write fails
            with trio.fail_after(10):
                await server.activity.wait_idle()
                while listener.connections:
                    await trio.sleep(0.01)
            async with http_client(certs_dir, http2=True) as client:
                r = await client.get(f"https://localhost:{tcp_port(server)}/bytes/1000")
                assert r.status_code == 200 and r.content == pattern_bytes(1000)
