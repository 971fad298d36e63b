"""H3Client against a real HTTP/3 server (hypercorn on Trio over aioquic)."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trustme

from spooky_trio.clients.h3 import H3Client, H3ConnectError, H3ConnectionLost, H3StreamReset
from tests.clients.conftest import MiB, Server, pattern_bytes
from tests.clients.scripted_h3 import ScriptedH3Server

H3_MESSAGE_ERROR = 0x10E
H3_INTERNAL_ERROR = 0x102


def connect(server: Server, **kwargs: object) -> H3Client:  # type: ignore[return-value]
    return H3Client.connect("127.0.0.1", server.port, server_name="localhost", cafile=server.cafile, **kwargs)  # type: ignore[arg-type]


async def test_get(server: Server) -> None:
    async with connect(server) as client:
        assert client.alpn_protocol == "h3"
        assert len(client.original_destination_connection_id) >= 8 and client.connection_id
        r = await client.request("GET", "/echo?x=1", headers=[("X-Test", "yes")])
        assert r.status == 200 and r.reset_code is None
        assert r.header("Content-Type") == "application/json"
        info = json.loads(r.body)
        assert info["method"] == "GET" and info["path"] == "/echo" and info["query"] == "x=1"
        assert info["http_version"] == "3" and ["x-test", "yes"] in info["headers"]


async def test_post_one_mib_byte_exact_both_ways(server: Server) -> None:
    payload = pattern_bytes(MiB)
    async with connect(server) as client:
        r = await client.request("POST", "/raw", body=payload)
        assert r.status == 201 and r.body == payload
        assert json.loads(r.header("x-info") or "{}")["body_len"] == MiB
        r = await client.request("GET", f"/bytes/{MiB}")
        assert r.status == 200 and r.body == payload

        async def chunks():  # a streamed body of unknown length
            for offset in range(0, len(payload), 100_000):
                yield payload[offset : offset + 100_000]

        r = await client.request("POST", "/raw", body=chunks())
        assert r.status == 201 and r.body == payload


async def test_fifty_concurrent_requests_on_one_connection(server: Server) -> None:
    results: dict[int, bytes] = {}
    async with connect(server) as client:

        async def one(i: int) -> None:
            r = await client.request("POST", f"/raw?i={i}", body=b"%d" % i * 1000)
            assert r.status == 201
            results[i] = r.body

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(one, i)
        assert results == {i: b"%d" % i * 1000 for i in range(50)}
        assert (await client.request("GET", "/echo")).status == 200


async def test_stream_request_reads_five_mib_slowly_with_bounded_buffering(server: Server) -> None:
    window = 256 * 1024
    size = 5 * MiB
    expected = pattern_bytes(size)
    async with connect(server, max_stream_data=window) as client:
        async with client.stream_request("GET", f"/bytes/{size}") as resp:
            assert resp.status == 200 and resp.header("content-length") == str(size)
            state = resp._state
            quic_stream = client._quic._streams[resp.stream_id]
            # Not reading: the server fills the window, then flow control stops it.
            with trio.fail_after(10):
                while state.buffered < window // 2:
                    await state.wait()
            assert quic_stream.max_stream_data_local_sent <= window
            received = bytearray()
            while chunk := await resp.receive(16 * 1024):
                assert len(chunk) <= 16 * 1024
                received += chunk
                # what we buffer, and the credit we granted beyond what was read, stay bounded
                assert state.buffered <= window
                consumed = quic_stream.receiver.starting_offset() - state.buffered
                assert quic_stream.max_stream_data_local_sent - consumed <= window
            assert received == expected
            assert resp.trailers == []


async def test_send_raw_headers(server: Server) -> None:
    async with connect(server) as client:
        head = [(b":method", b"POST"), (b":path", b"/raw"), (b":scheme", b"https"), (b":authority", b"localhost")]
        r = await client.send_raw_headers(head, body=b"raw body")
        assert r.status == 201 and r.body == b"raw body"
        # aioquic's server rejects an uppercase field name by closing the connection
        bad = [*head, (b"X-Upper", b"1")]
        with pytest.raises(H3ConnectionLost, match="0x10e"):
            await client.send_raw_headers(bad)
        with pytest.raises(H3ConnectionLost):
            await client.request("GET", "/echo")


async def test_wrong_ca_fails_handshake(server: Server, tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    with trio.fail_after(10):
        with pytest.raises(H3ConnectError, match="handshake") as info:
            async with H3Client.connect("127.0.0.1", server.port, server_name="localhost", cafile=str(other)):
                pytest.fail("handshake should not succeed")
    assert "certificate" in str(info.value).lower() or "issuer" in str(info.value).lower()
    # ...and without verification the same server is reachable
    async with H3Client.connect("127.0.0.1", server.port, server_name="localhost", verify=False) as client:
        assert (await client.request("GET", "/echo")).status == 200


async def test_closed_udp_port_is_refused_quickly() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with trio.fail_after(5):
        with pytest.raises(H3ConnectError, match="refused"):
            async with H3Client.connect("127.0.0.1", port, connect_timeout=4):
                pass


async def test_silent_peer_times_out() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # bound, never answers
        start = trio.current_time()
        with pytest.raises(H3ConnectError, match="timed out"):
            async with H3Client.connect("127.0.0.1", silent.getsockname()[1], connect_timeout=0.5):
                pass
        assert trio.current_time() - start < 3


async def test_errors_inside_the_block_are_not_wrapped(server: Server) -> None:
    with pytest.raises(KeyError):
        async with connect(server):
            raise KeyError("mine")


@pytest.fixture
async def scripted(certs_dir: Path) -> AsyncIterator[ScriptedH3Server]:
    server = ScriptedH3Server(certs_dir)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        yield server
        nursery.cancel_scope.cancel()


def connect_scripted(server: ScriptedH3Server, certs_dir: Path) -> H3Client:  # type: ignore[return-value]
    return H3Client.connect("127.0.0.1", server.port, server_name="localhost", cafile=str(certs_dir / "ca.pem"))  # type: ignore[return-value]


async def test_stream_reset_is_reported(scripted: ScriptedH3Server, certs_dir: Path) -> None:
    async with connect_scripted(scripted, certs_dir) as client:
        r = await client.send_raw_headers([(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"x"), (b":path", b"/reset")])
        assert r.status is None and r.reset_code == H3_MESSAGE_ERROR
        r = await client.request("GET", "/reset")
        assert r.status is None and r.reset_code == H3_MESSAGE_ERROR
        with pytest.raises(H3StreamReset) as info:
            async with client.stream_request("GET", "/reset"):
                pytest.fail("no response expected")
        assert info.value.code == H3_MESSAGE_ERROR
        r = await client.request("GET", "/partial-reset")
        assert r.status == 200 and r.reset_code == H3_INTERNAL_ERROR and r.body in (b"", b"partial")
        # the connection is unaffected
        r = await client.request("GET", "/")
        assert (r.status, r.body, r.reset_code) == (200, b"ok", None)


async def test_trailers(scripted: ScriptedH3Server, certs_dir: Path) -> None:
    async with connect_scripted(scripted, certs_dir) as client:
        r = await client.request("GET", "/trailers")
        assert r.status == 200 and r.body == b"with trailers"
        assert r.trailers == [(b"grpc-status", b"0"), (b"x-checksum", b"abc")]
        async with client.stream_request("GET", "/trailers") as resp:
            assert await resp.read_all() == b"with trailers"
            assert (b"grpc-status", b"0") in resp.trailers


async def test_goaway(scripted: ScriptedH3Server, certs_dir: Path) -> None:
    async with connect_scripted(scripted, certs_dir) as client:
        assert not client.goaway_received.is_set()
        r = await client.request("GET", "/goaway")
        assert r.status == 200
        with trio.fail_after(5):
            await client.goaway_received.wait()
        with pytest.raises(H3ConnectionLost, match="GOAWAY"):
            await client.request("GET", "/")


async def test_leaving_stream_request_early_keeps_connection_usable(scripted: ScriptedH3Server, certs_dir: Path) -> None:
    async with connect_scripted(scripted, certs_dir) as client:
        async with client.stream_request("GET", f"/bytes/{4 * MiB}") as resp:
            assert resp.status == 200 and len(await resp.receive()) > 0
        assert client._streams == {}
        r = await client.request("POST", "/echo", body=b"still fine")
        assert (r.status, r.body) == (200, b"still fine")


async def test_body_iterator_error_propagates(scripted: ScriptedH3Server, certs_dir: Path) -> None:
    async with connect_scripted(scripted, certs_dir) as client:

        async def broken():
            yield b"partial"
            raise ValueError("source failed")

        with pytest.raises(ValueError, match="source failed"):
            await client.request("POST", "/echo", body=broken())
        r = await client.request("POST", "/echo", body=b"next")
        assert (r.status, r.body) == (200, b"next")
