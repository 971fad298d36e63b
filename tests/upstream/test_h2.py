"""HTTP/2-over-TLS upstream engine against real hypercorn backends (and raw TLS/h2 servers)."""

from __future__ import annotations

import hashlib
import json
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
import trio
import trustme

from spooky_trio.upstream import (
    UpstreamConnectError,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamTLSError,
)
from spooky_trio.upstream.h2 import STREAM_WINDOW
from spooky_trio.upstream.h2_stream import H2Stream
from tests.support.backends import pattern_bytes, run_backend, run_raw_backend
from tests.upstream.conftest import chunks, fetch, h2_target, request

MiB = 1024 * 1024


def tls_backend(certs_dir: Path, name: str = "h2") -> object:
    return run_backend(name=name, tls=True, certfile=certs_dir / "localhost.pem", keyfile=certs_dir / "localhost.key")


async def test_many_concurrent_streams_share_one_connection(pool: UpstreamPool, certs_dir: Path) -> None:
    async with tls_backend(certs_dir) as backend:  # type: ignore[attr-defined]
        target = h2_target(backend.port, certs_dir)
        seen: dict[int, str] = {}

        async def one(i: int) -> None:
            r = await fetch(pool, target, request("GET", f"/echo?i={i}"))
            assert r.status == 200 and r.http_version == "2"
            seen[i] = json.loads(r.body)["query"]

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(one, i)
        assert seen == {i: f"i={i}" for i in range(50)}
        assert backend.connection_count == 1
        assert len(pool.h2_connections(target)) == 1
        assert pool.h2_connections(target)[0].active_streams == 0


async def test_five_mib_both_ways_and_trailers(pool: UpstreamPool, certs_dir: Path) -> None:
    payload = pattern_bytes(5 * MiB)[::-1]
    async with tls_backend(certs_dir) as backend:  # type: ignore[attr-defined]
        target = h2_target(backend.port, certs_dir)
        r = await fetch(pool, target, request("POST", "/echo?raw=1", body=chunks(payload), length=len(payload)))
        assert r.status == 200 and r.body == payload
        r = await fetch(pool, target, request("POST", "/echo", body=chunks(payload, 10_000)))
        info = json.loads(r.body)
        assert info["body_len"] == len(payload) and info["body_sha256"] == hashlib.sha256(payload).hexdigest()
        assert info["http_version"] == "2" and ["host", "backend.test"] in info["headers"]
        r = await fetch(pool, target, request("GET", f"/bytes/{5 * MiB}"))
        assert r.body == pattern_bytes(5 * MiB)
        r = await fetch(pool, target, request("GET", "/trailers"))
        assert r.body == b"trailer body"
        assert r.trailers == [(b"grpc-status", b"0"), (b"grpc-message", b"ok")]
        assert backend.connection_count == 1


async def test_wrong_certificate_name_fails_verification(pool: UpstreamPool, certs_dir: Path, ca: trustme.CA, tmp_path: Path) -> None:
    wrong = ca.issue_cert("other.example")
    wrong.private_key_pem.write_to_path(str(tmp_path / "wrong.key"))
    wrong.cert_chain_pems[0].write_to_path(str(tmp_path / "wrong.pem"))
    async with run_backend(tls=True, certfile=tmp_path / "wrong.pem", keyfile=tmp_path / "wrong.key") as backend:
        for server_name in ("localhost", None):  # ssl's own check, and our check without SNI
            with pytest.raises(UpstreamTLSError) as info:
                await fetch(pool, h2_target(backend.port, certs_dir, server_name=server_name), request("GET", "/echo"))
            assert "Hostname mismatch" in str(info.value) and "certificate verify failed" in str(info.value)
            assert info.value.reason == "tls_failed"
        with pytest.raises(UpstreamTLSError, match="IP address mismatch"):
            await fetch(pool, h2_target(backend.port, certs_dir, host="127.0.0.1", server_name=None), request("GET", "/echo"))
        # verification off: the same backend is reachable
        r = await fetch(pool, h2_target(backend.port, certs_dir, verify=False), request("GET", "/health"))
        assert r.body == b"ok"
        assert len(backend.requests) == 1


async def test_untrusted_ca_fails(pool: UpstreamPool, certs_dir: Path, tmp_path: Path) -> None:
    stranger = trustme.CA().issue_cert("localhost")
    stranger.private_key_pem.write_to_path(str(tmp_path / "s.key"))
    stranger.cert_chain_pems[0].write_to_path(str(tmp_path / "s.pem"))
    async with run_backend(tls=True, certfile=tmp_path / "s.pem", keyfile=tmp_path / "s.key") as backend:
        with pytest.raises(UpstreamTLSError, match="certificate verify failed"):
            await fetch(pool, h2_target(backend.port, certs_dir), request("GET", "/echo"))
        assert backend.requests == []


async def test_no_sni_mode_verifies_and_works(pool: UpstreamPool, certs_dir: Path) -> None:
    async with tls_backend(certs_dir) as backend:  # type: ignore[attr-defined]
        for host in ("localhost", "127.0.0.1"):
            r = await fetch(pool, h2_target(backend.port, certs_dir, host=host, server_name=None), request("GET", "/health"))
            assert r.status == 200 and r.http_version == "2"


async def _raw_tls(certs_dir: Path, alpn: list[str], serve: Callable[[trio.SSLStream[trio.SocketStream]], Awaitable[None]]) -> Callable[[trio.SocketStream], Awaitable[None]]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(certs_dir / "localhost.pem"), str(certs_dir / "localhost.key"))
    ctx.set_alpn_protocols(alpn)

    async def handler(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, ctx, server_side=True)
        await tls.do_handshake()
        await serve(tls)

    return handler


async def test_alpn_without_h2_is_a_tls_error(pool: UpstreamPool, certs_dir: Path) -> None:
    async def idle(tls: trio.SSLStream[trio.SocketStream]) -> None:
        await trio.sleep(1)

    async with run_raw_backend(await _raw_tls(certs_dir, ["http/1.1"], idle)) as raw:
        with pytest.raises(UpstreamTLSError, match="ALPN"):
            await fetch(pool, h2_target(raw.port, certs_dir), request("GET", "/"))


async def test_connect_timeout_covers_the_tls_handshake(pool: UpstreamPool, certs_dir: Path) -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep(5)

    async with run_raw_backend(silent) as raw:
        start = trio.current_time()
        with pytest.raises(UpstreamConnectError, match="timed out") as info:
            await fetch(pool, h2_target(raw.port, certs_dir), request("GET", "/"), connect_timeout=0.3)
        assert not isinstance(info.value, UpstreamTLSError)
        assert trio.current_time() - start < 1.5


async def test_backpressure_holds_at_most_one_stream_window(pool: UpstreamPool, certs_dir: Path) -> None:
    async with tls_backend(certs_dir) as backend:  # type: ignore[attr-defined]
        target = h2_target(backend.port, certs_dir)
        async with pool.exchange(target, request("GET", f"/bytes/{20 * MiB}"), connect_timeout=2, response_timeout=2) as response:
            assert isinstance(response, H2Stream)
            total = len(await response.receive())
            await trio.sleep(0.3)  # a slow consumer: the backend may only fill the stream window
            assert 0 < response.buffered_bytes <= STREAM_WINDOW
            peak = 0
            while chunk := await response.receive():
                total += len(chunk)
                peak = max(peak, response.buffered_bytes)
            assert peak <= STREAM_WINDOW
        assert total == 20 * MiB


async def test_leaving_early_resets_only_the_stream(pool: UpstreamPool, certs_dir: Path) -> None:
    async with tls_backend(certs_dir) as backend:  # type: ignore[attr-defined]
        target = h2_target(backend.port, certs_dir)
        for _ in range(3):
            async with pool.exchange(target, request("GET", f"/bytes/{20 * MiB}"), connect_timeout=2, response_timeout=2) as response:
                assert await response.receive()
        conn = pool.h2_connections(target)[0]
        assert conn.active_streams == 0
        r = await fetch(pool, target, request("GET", f"/bytes/{3 * MiB}"))
        assert r.body == pattern_bytes(3 * MiB)
        assert backend.connection_count == 1 and pool.h2_connections(target) == [conn]


async def test_slow_backend_times_out(pool: UpstreamPool, certs_dir: Path) -> None:
    async with tls_backend(certs_dir) as backend:  # type: ignore[attr-defined]
        target = h2_target(backend.port, certs_dir)
        with pytest.raises(UpstreamTimeout):
            await fetch(pool, target, request("GET", "/slow/3000"), response_timeout=0.3)
        assert (await fetch(pool, target, request("GET", "/slowbody/300"), response_timeout=0.2)).body == b"slow body"


async def test_client_body_error_propagates_and_connection_survives(pool: UpstreamPool, certs_dir: Path) -> None:
    class ClientGone(Exception):
        pass

    async def failing_body():  # type: ignore[no-untyped-def]
        yield b"a" * 100_000
        raise ClientGone("reset by client")

    async with tls_backend(certs_dir) as backend:  # type: ignore[attr-defined]
        target = h2_target(backend.port, certs_dir)
        with pytest.raises(ClientGone):
            await fetch(pool, target, request("POST", "/echo", body=failing_body()))
        assert (await fetch(pool, target, request("GET", "/health"))).body == b"ok"
        assert backend.connection_count == 1


async def test_idle_h2_connections_are_reaped(nursery: trio.Nursery, certs_dir: Path) -> None:
    upstream = UpstreamPool(idle_timeout=0.2)
    await nursery.start(upstream.run)
    async with tls_backend(certs_dir) as backend:  # type: ignore[attr-defined]
        target = h2_target(backend.port, certs_dir)
        await fetch(upstream, target, request("GET", "/health"))
        assert len(upstream.h2_connections(target)) == 1
        await trio.sleep(0.6)
        assert upstream.h2_connections(target) == []
        await fetch(upstream, target, request("GET", "/health"))
        assert backend.connection_count == 2


async def test_max_concurrent_streams_opens_more_connections(pool: UpstreamPool, certs_dir: Path) -> None:
    """A raw h2 server allowing 2 streams: 5 concurrent requests need 3 connections."""

    async def serve(tls: trio.SSLStream[trio.SocketStream]) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.local_settings = h2.settings.Settings(client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 2})
        conn.initiate_connection()
        await tls.send_all(conn.data_to_send())
        while data := await tls.receive_some(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    await trio.sleep(0.1)
                    conn.send_headers(event.stream_id, [(b":status", b"200")])
                    conn.send_data(event.stream_id, b"hi", end_stream=True)
            await tls.send_all(conn.data_to_send())

    async with run_raw_backend(await _raw_tls(certs_dir, ["h2"], serve)) as raw:
        target = h2_target(raw.port, certs_dir)
        results = []

        async def one() -> None:
            results.append((await fetch(pool, target, request("GET", "/"))).body)

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(one)
        assert results == [b"hi"] * 5
        assert raw.connections == 3


async def test_goaway_fails_later_streams_and_finishes_earlier_ones(pool: UpstreamPool, certs_dir: Path) -> None:
    """After two requests the server sends GOAWAY(last_stream_id=1), then answers stream 1."""

    async def serve(tls: trio.SSLStream[trio.SocketStream]) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        await tls.send_all(conn.data_to_send())
        pending: list[int] = []
        while data := await tls.receive_some(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    pending.append(event.stream_id)
            await tls.send_all(conn.data_to_send())
            if len(pending) == 2:
                # h2 (server side) also closes its state on GOAWAY: write the frames by hand
                await tls.send_all(bytes.fromhex("000008070000000000") + (1).to_bytes(4, "big") + (0).to_bytes(4, "big"))
                conn.send_headers(1, [(b":status", b"200")])
                conn.send_data(1, b"finished", end_stream=True)
                await tls.send_all(conn.data_to_send())
                await trio.sleep(0.5)
                return

    async with run_raw_backend(await _raw_tls(certs_dir, ["h2"], serve)) as raw:
        target = h2_target(raw.port, certs_dir)
        outcome: dict[str, object] = {}

        async def first() -> None:
            outcome["first"] = (await fetch(pool, target, request("GET", "/one"))).body

        async def second() -> None:
            await trio.sleep(0.05)
            with pytest.raises(UpstreamProtocolError, match="GOAWAY"):
                await fetch(pool, target, request("GET", "/two"))
            outcome["second"] = "failed"

        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            nursery.start_soon(second)
        assert outcome == {"first": b"finished", "second": "failed"}
        with trio.fail_after(2):  # the connection closes once its last stream is done
            while pool.h2_connections(target):
                await trio.sleep(0.01)


async def test_leaving_with_a_buffered_body_returns_its_window(pool: UpstreamPool, certs_dir: Path) -> None:
    """The whole response (head, body, end) arrives in one write; the exchange ends without
    reading the body. Releasing the stream hands the buffered bytes back to the connection
    window (h2 rejects stream id 0 there) and the connection keeps serving."""
    body = b"x" * 10_000  # one DATA frame

    async def serve(tls: trio.SSLStream[trio.SocketStream]) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        await tls.send_all(conn.data_to_send())
        while data := await tls.receive_some(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    conn.send_headers(event.stream_id, [(b":status", b"200")])
                    conn.send_data(event.stream_id, body, end_stream=True)
            await tls.send_all(conn.data_to_send())

    async with run_raw_backend(await _raw_tls(certs_dir, ["h2"], serve)) as raw:
        target = h2_target(raw.port, certs_dir)
        for _ in range(3):
            async with pool.exchange(target, request("GET", "/"), connect_timeout=2, response_timeout=2) as response:
                assert isinstance(response, H2Stream)
                assert response.status == 200 and response.buffered_bytes == len(body)
        conn = pool.h2_connections(target)[0]
        assert conn.active_streams == 0 and conn.failure is None
        assert (await fetch(pool, target, request("GET", "/"))).body == body
        assert raw.connections == 1


async def test_request_heads_are_normalized_on_our_side(pool: UpstreamPool, certs_dir: Path) -> None:
    """h2's outbound normalization is off (request_headers does it): what the backend decodes
    is lowercased, stripped, free of connection-specific fields, with te only as trailers
    and credentials never indexed in HPACK; requests h2 would refuse fail cleanly."""
    from hpack import NeverIndexedHeaderTuple

    seen: list[list[tuple[bytes, bytes]]] = []
    never_indexed: list[list[bytes]] = []

    async def serve(tls: trio.SSLStream[trio.SocketStream]) -> None:
        # inbound validation on (it checks the block), normalization off: cookies stay apart
        config = h2.config.H2Configuration(client_side=False, header_encoding=None, normalize_inbound_headers=False)
        conn = h2.connection.H2Connection(config)
        conn.initiate_connection()
        await tls.send_all(conn.data_to_send())
        while data := await tls.receive_some(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    seen.append([(bytes(n), bytes(v)) for n, v in event.headers])
                    never_indexed.append([bytes(v) for n, v in (h for h in event.headers if isinstance(h, NeverIndexedHeaderTuple))])
                    conn.send_headers(event.stream_id, [(b":status", b"204")], end_stream=True)
            await tls.send_all(conn.data_to_send())

    sent = [
        (b"X-Mixed-Case", b"  padded value \t"),
        (b"connection", b"keep-alive, x-hop"),
        (b"keep-alive", b"timeout=5"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"h2c"),
        (b"host", b"other.test"),
        (b"te", b"gzip"),
        (b"authorization", b"Bearer secret-token-value"),
        (b"cookie", b"a=1"),
        (b"cookie", b"session=a-long-enough-cookie-value"),
    ]
    async with run_raw_backend(await _raw_tls(certs_dir, ["h2"], serve)) as raw:
        target = h2_target(raw.port, certs_dir)
        assert (await fetch(pool, target, request("GET", "/p?q=1", headers=sent))).status == 204
        assert (await fetch(pool, target, request("GET", "/p", headers=[(b"TE", b" Trailers ")]))).status == 204
        for method, path in (("CONNECT", "/"), ("GET", "")):
            with pytest.raises(UpstreamProtocolError):
                await fetch(pool, target, request(method, path))
        assert (await fetch(pool, target, request("GET", "/again"))).status == 204
    first, second = seen[0], seen[1]
    assert first[:4] == [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"backend.test"), (b":path", b"/p?q=1")]
    assert first[4:] == [
        (b"x-mixed-case", b"padded value"),
        (b"authorization", b"Bearer secret-token-value"),
        (b"cookie", b"a=1"),
        (b"cookie", b"session=a-long-enough-cookie-value"),
        (b"te", b"trailers"),
    ]
    assert never_indexed[0] == [b"Bearer secret-token-value", b"a=1"]
    assert second[4:] == [(b"te", b"trailers")]
    assert len(seen) == 3 and raw.connections == 1


async def test_ping_flood_from_a_backend_that_does_not_read_stalls_the_connection(pool: UpstreamPool, certs_dir: Path) -> None:
    """Each PING queues an ACK; a backend that floods PINGs and never reads makes the
    connection stop reading once the ACKs back up, instead of queueing without bound."""
    from hyperframe.frame import PingFrame

    from spooky_trio.http.h2_pump import OUTBOX_LIMIT
    from tests.integration.test_backpressure import _wait_until_stalled

    sent = 0

    async def serve(tls: trio.SSLStream[trio.SocketStream]) -> None:
        nonlocal sent
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        await tls.send_all(conn.data_to_send())
        pings = PingFrame(0, opaque_data=b"12345678").serialize() * 4096
        while True:
            await tls.send_all(pings)
            sent += len(pings)

    async with run_raw_backend(await _raw_tls(certs_dir, ["h2"], serve)) as raw:
        target = h2_target(raw.port, certs_dir)

        async def waiting_exchange() -> None:
            with pytest.raises((UpstreamProtocolError, UpstreamTimeout)):
                await fetch(pool, target, request("GET", "/"), response_timeout=60)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiting_exchange)
            stalled_at = await _wait_until_stalled(lambda: sent, limit=30.0)
            (conn,) = pool.h2_connections(target)
            queued = len(conn.pump.outbox)  # the bound under test
            nursery.cancel_scope.cancel()
        assert stalled_at > 0 and conn.failure is None
        assert queued < OUTBOX_LIMIT + 128 * 1024, queued
