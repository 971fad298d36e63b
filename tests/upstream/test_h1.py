"""HTTP/1.1 upstream engine against real hypercorn backends (and a few raw misbehaving ones)."""

from __future__ import annotations

import hashlib
import json

import pytest
import trio

from spooky_trio.upstream import (
    UpstreamConnectError,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from spooky_trio.upstream.common import READ_CHUNK
from spooky_trio.upstream.errors import UnforwardableRequest, UpstreamError
from tests.support.backends import pattern_bytes, run_backend, run_raw_backend
from tests.upstream.conftest import chunks, fetch, h1_target, read_all, request

MiB = 1024 * 1024


async def test_keep_alive_reuses_one_connection(pool: UpstreamPool) -> None:
    async with run_backend(name="h1") as backend:
        target = h1_target(backend.port)
        for i in range(5):
            r = await fetch(pool, target, request("GET", f"/echo?i={i}"))
            assert r.status == 200 and r.http_version == "1.1"
            info = json.loads(r.body)
            assert info["query"] == f"i={i}" and info["method"] == "GET"
            assert ["host", "backend.test"] in info["headers"]
        r = await fetch(pool, target, request("POST", "/echo", body=chunks(b"hello body"), length=10))
        info = json.loads(r.body)
        assert info["body_len"] == 10 and info["body_sha256"] == hashlib.sha256(b"hello body").hexdigest()
        assert ["content-length", "10"] in info["headers"]
        assert backend.connection_count == 1
        assert pool.idle_h1_connections(target) == 1


async def test_unknown_length_body_is_chunked(pool: UpstreamPool) -> None:
    payload = pattern_bytes(300_000)
    async with run_backend() as backend:
        r = await fetch(pool, h1_target(backend.port), request("PUT", "/echo", body=chunks(payload, 7000)))
    info = json.loads(r.body)
    assert info["body_len"] == len(payload) and info["body_sha256"] == hashlib.sha256(payload).hexdigest()
    assert ["transfer-encoding", "chunked"] in info["headers"]


async def test_five_mib_both_ways_byte_exact(pool: UpstreamPool) -> None:
    payload = pattern_bytes(5 * MiB)[::-1]
    async with run_backend() as backend:
        target = h1_target(backend.port)
        r = await fetch(pool, target, request("POST", "/echo?raw=1", body=chunks(payload), length=len(payload)))
        assert r.status == 200 and r.body == payload
        r = await fetch(pool, target, request("GET", f"/bytes/{5 * MiB}"))
        assert r.body == pattern_bytes(5 * MiB) and r.header(b"content-length") == str(5 * MiB).encode()
        assert backend.connection_count == 1


async def test_chunked_response(pool: UpstreamPool) -> None:
    async with run_backend() as backend:
        r = await fetch(pool, h1_target(backend.port), request("GET", f"/chunked/{3 * MiB}"))
    assert r.status == 200 and r.body == pattern_bytes(3 * MiB)
    assert r.header(b"content-length") is None and r.header(b"transfer-encoding") == b"chunked"


async def test_head_and_status_without_body(pool: UpstreamPool) -> None:
    async with run_backend() as backend:
        target = h1_target(backend.port)
        r = await fetch(pool, target, request("HEAD", "/bytes/1000"))
        assert r.status == 200 and r.body == b"" and r.header(b"content-length") == b"1000"
        r = await fetch(pool, target, request("GET", "/status/204"))
        assert r.status == 204 and r.body == b""
        r = await fetch(pool, target, request("GET", "/status/503"))
        assert r.status == 503
        assert backend.connection_count == 1


async def test_idle_connection_closed_by_server_is_not_used(pool: UpstreamPool) -> None:
    async with run_backend(keep_alive_timeout=0.1) as backend:
        target = h1_target(backend.port)
        assert (await fetch(pool, target, request("GET", "/health"))).body == b"ok"
        assert pool.idle_h1_connections(target) == 1
        await trio.sleep(0.4)  # hypercorn closes the idle connection meanwhile
        assert (await fetch(pool, target, request("GET", "/health"))).body == b"ok"
        assert backend.connection_count == 2


async def test_stale_connection_race_is_retried_for_bodiless_requests(pool: UpstreamPool) -> None:
    """The server closes a kept-alive connection just as the next request arrives."""

    async def handler(stream: trio.SocketStream) -> None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += await stream.receive_some(4096)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await stream.receive_some(4096)  # the next request: close without answering

    async with run_raw_backend(handler) as raw:
        target = h1_target(raw.port)
        assert (await fetch(pool, target, request("GET", "/a"))).body == b"ok"
        assert (await fetch(pool, target, request("GET", "/b"))).body == b"ok"
        assert raw.connections == 2
        # with a body the request cannot be replayed: the failure is reported
        with pytest.raises(UpstreamProtocolError):
            await fetch(pool, target, request("POST", "/c", body=chunks(b"x"), length=1))


async def test_leaving_early_closes_the_connection(pool: UpstreamPool) -> None:
    async with run_backend() as backend:
        target = h1_target(backend.port)
        async with pool.exchange(target, request("GET", f"/bytes/{4 * MiB}"), connect_timeout=1, response_timeout=1) as response:
            assert len(await response.receive()) > 0
        assert pool.idle_h1_connections(target) == 0
        assert (await fetch(pool, target, request("GET", "/health"))).status == 200
        assert backend.connection_count == 2


async def test_backpressure_bounds_buffering(pool: UpstreamPool) -> None:
    async with run_backend() as backend:
        target = h1_target(backend.port)
        async with pool.exchange(target, request("GET", f"/bytes/{20 * MiB}"), connect_timeout=1, response_timeout=1) as response:
            total = len(await response.receive())
            await trio.sleep(0.2)  # a slow consumer: nothing is read meanwhile
            assert response.buffered_bytes <= READ_CHUNK
            while chunk := await response.receive():
                assert len(chunk) <= READ_CHUNK and response.buffered_bytes <= READ_CHUNK
                total += len(chunk)
        assert total == 20 * MiB


async def test_connect_refused_is_quick() -> None:
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    upstream = UpstreamPool()  # HTTP/1.1 works without run()
    start = trio.current_time()
    with pytest.raises(UpstreamConnectError) as info:
        await fetch(upstream, h1_target(port), request("GET", "/"), connect_timeout=2)
    assert trio.current_time() - start < 1.0
    assert info.value.reason == "connect_failed"


async def test_slow_response_head_times_out(pool: UpstreamPool) -> None:
    async with run_backend() as backend:
        target = h1_target(backend.port)
        start = trio.current_time()
        with pytest.raises(UpstreamTimeout):
            await fetch(pool, target, request("GET", "/slow/3000"), response_timeout=0.3)
        assert trio.current_time() - start < 1.5
        # a slow body is not a response-head timeout
        r = await fetch(pool, target, request("GET", "/slowbody/400"), response_timeout=0.3)
        assert r.body == b"slow body"


async def test_client_body_error_propagates_unchanged(pool: UpstreamPool) -> None:
    class ClientGone(Exception):
        pass

    async def failing_body():  # type: ignore[no-untyped-def]
        yield b"a" * 1000
        await trio.sleep(0.05)
        raise ClientGone("client reset the stream")

    async with run_backend() as backend:
        target = h1_target(backend.port)
        with pytest.raises(ClientGone):
            await fetch(pool, target, request("POST", "/echo", body=failing_body()))
        assert pool.idle_h1_connections(target) == 0
        assert (await fetch(pool, target, request("GET", "/health"))).status == 200


async def test_backend_closing_mid_body_is_a_protocol_error(pool: UpstreamPool) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")

    async with run_raw_backend(handler) as raw:
        async with pool.exchange(h1_target(raw.port), request("GET", "/"), connect_timeout=1, response_timeout=1) as response:
            assert await response.receive() == b"0123456789"
            with pytest.raises(UpstreamProtocolError):
                await response.receive()


async def test_informational_responses_are_skipped_and_trailers_kept(pool: UpstreamPool) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)
        await stream.send_all(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n"
            b"5\r\nhello\r\n0\r\nx-sum: 42\r\n\r\n"
        )
        await stream.receive_some(4096)

    async with run_raw_backend(handler) as raw:
        r = await fetch(pool, h1_target(raw.port), request("GET", "/"))
    assert r.status == 200 and r.body == b"hello" and r.trailers == [(b"x-sum", b"42")]


async def test_early_response_while_uploading(pool: UpstreamPool) -> None:
    """The backend answers 413 after the head and stops reading; the response still arrives."""

    async def handler(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)
        await stream.send_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 3\r\nconnection: close\r\n\r\nbig")
        await trio.sleep(0.5)

    async def endless():  # type: ignore[no-untyped-def]
        while True:
            await trio.sleep(0)
            yield b"z" * 65536

    async with run_raw_backend(handler) as raw:
        with trio.fail_after(3):
            r = await fetch(pool, h1_target(raw.port), request("POST", "/upload", body=endless()))
    assert r.status == 413 and r.body == b"big"
    assert pool.idle_h1_connections(h1_target(raw.port)) == 0


async def test_idle_limits_and_reaper(nursery: trio.Nursery) -> None:
    upstream = UpstreamPool(idle_timeout=0.2, max_idle_per_backend=2)
    await nursery.start(upstream.run)
    async with run_backend() as backend:
        target = h1_target(backend.port)

        async def one() -> None:
            await fetch(upstream, target, request("GET", "/slow/100"))

        async with trio.open_nursery() as inner:
            for _ in range(4):
                inner.start_soon(one)
        assert backend.connection_count == 4
        assert upstream.idle_h1_connections(target) == 2
        await trio.sleep(0.5)
        assert upstream.idle_h1_connections(target) == 0


async def test_request_body_length_mismatch_is_a_client_error(pool: UpstreamPool) -> None:
    from spooky_trio.http.messages import RequestBodyError

    async with run_backend() as backend:
        with pytest.raises(RequestBodyError):
            await fetch(pool, h1_target(backend.port), request("POST", "/echo", body=chunks(b"only5"), length=10))
        await trio.sleep(0.05)
    assert [r for r in backend.requests if r["body_len"] is not None and r["method"] == "POST"] == []


async def test_response_reading_helper_consumes_everything(pool: UpstreamPool) -> None:
    async with run_backend() as backend:
        async with pool.exchange(h1_target(backend.port), request("GET", "/health"), connect_timeout=1, response_timeout=1) as response:
            assert await read_all(response) == b"ok"
            assert await response.receive() == b""


class _CallerError(Exception):
    pass


async def test_caller_exception_inside_exchange_propagates_unchanged(pool: UpstreamPool) -> None:
    """Leaving the block with an error mid-body must re-raise that error, not swallow it
    (the connection clean-up runs in the cancelled pump scope)."""
    async with run_backend() as backend:
        target = h1_target(backend.port)
        with pytest.raises(_CallerError):
            async with pool.exchange(target, request("GET", "/bytes/300000"), connect_timeout=2, response_timeout=2) as response:
                assert response.status == 200
                raise _CallerError
        with pytest.raises(_CallerError):
            async with pool.exchange(target, request("POST", "/echo", body=chunks(b"x" * 100_000, 1000)), connect_timeout=2, response_timeout=2):
                raise _CallerError
        # the aborted connections were closed, not pooled; the next request works
        assert (await fetch(pool, target, request("GET", "/echo"))).status == 200


async def test_retired_target_busy_connection_is_not_pooled_again(pool: UpstreamPool) -> None:
    """A reload removed the backend while an exchange was running: when it ends, the
    connection closes instead of going back to the idle list (both finish paths)."""
    async with run_backend(name="h1") as backend:
        target = h1_target(backend.port)
        await fetch(pool, target, request("GET", "/echo"))
        assert pool.idle_h1_connections(target) == 1
        async with pool.exchange(target, request("GET", "/echo"), connect_timeout=5, response_timeout=5) as response:
            assert await pool.retire(keep=set()) == 0  # the only connection is busy
            await read_all(response)
        assert pool.idle_h1_connections(target) == 0
        assert await pool.retire(keep={target}) == 0  # kept again: it pools once more
        await fetch(pool, target, request("GET", "/echo"))
        assert pool.idle_h1_connections(target) == 1


@pytest.mark.parametrize("bad", [[(b"x(y", b"1")], [(b"x-a", b"a\x0bb")], [(b"x-a", b"a\r\nb")]])
async def test_a_head_h11_refuses_is_unforwardable_and_the_connection_is_not_reused(
        pool: UpstreamPool, bad: list[tuple[bytes, bytes]]) -> None:
    """The last line of defence behind the ingress validator (issue 24): the serializer's
    refusal is the request's fault (not an UpstreamError), and the h11 connection it left
    in ERROR never serves another request."""
    async with run_backend() as backend:
        target = h1_target(backend.port)
        assert (await fetch(pool, target, request("GET", "/echo"))).status == 200
        with pytest.raises(UnforwardableRequest) as info:
            await fetch(pool, target, request("GET", "/echo", headers=bad))
        assert not isinstance(info.value, UpstreamError)
        assert (await fetch(pool, target, request("GET", "/echo"))).status == 200
        assert len(backend.requests) == 2  # the refused head never reached the backend
