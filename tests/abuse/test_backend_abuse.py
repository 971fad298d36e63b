"""Backends and clients that misbehave over time: a backend that sends an endless body, a
backend that never answers, a client that never reads its response (flow-control stall).

The misbehaving exchange is ended by the configured limit or timeout, a concurrent client on
another pool keeps getting 200s, traced memory stays bounded, and a scraped counter moved.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from aioquic.h3.connection import ErrorCode

from spooky_trio.clients.errors import H3StreamReset
from tests.abuse.helpers import MIB, abuse_proxy, h3_connect, h3_normal, memory_bound, while_serving
from tests.support.backends import run_backend, run_raw_backend
from tests.support.proxy import h1_pool


async def _endless_chunked_body(stream: trio.SocketStream) -> None:
    await stream.receive_some(65536)  # the request head
    await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (16384, b"z" * 16384)
    while True:
        await stream.send_all(chunk)


async def _never_answers(stream: trio.SocketStream) -> None:
    while await stream.receive_some(65536):
        pass  # reads the request and whatever follows, never writes


async def test_endless_backend_body_is_cut_at_the_response_limit(certs_dir: Path) -> None:
    async with run_backend(name="ok") as good, run_raw_backend(_endless_chunked_body) as endless:
        pools = h1_pool(good.url, prefix="/echo", name="ok") + h1_pool(endless.url, prefix="/endless", name="endless")
        async with abuse_proxy(pools, certs_dir, performance={"max_response_body_bytes": 300_000}) as (server, metrics):
            async with h3_connect(server, certs_dir) as normal_client, h3_connect(server, certs_dir) as abuser:

                async def abuse() -> tuple[int, int]:
                    received = 0
                    with pytest.raises(H3StreamReset) as reset:
                        async with abuser.stream_request("GET", "/endless", authority="localhost") as resp:
                            assert resp.status == 200  # unknown length: the head went out first
                            while chunk := await resp.receive():
                                received += len(chunk)
                    return received, reset.value.code

                failures_before = await metrics.value("spooky_requests_failure_total")
                with memory_bound(16 * MIB):
                    (received, code), normal = await while_serving(h3_normal(normal_client), abuse)
                assert received <= 300_000
                assert code == ErrorCode.H3_INTERNAL_ERROR
                assert set(normal) == {200}
                assert await metrics.value("spooky_requests_failure_total") == failures_before + 1


async def test_backend_that_never_answers_gets_504_while_others_are_served(certs_dir: Path) -> None:
    async with run_backend(name="ok") as good, run_raw_backend(_never_answers) as silent:
        pools = h1_pool(good.url, prefix="/echo", name="ok") + h1_pool(silent.url, prefix="/silent", name="silent")
        async with abuse_proxy(pools, certs_dir, performance={"backend_connect_timeout_ms": 500, "backend_timeout_ms": 500}) as (server, metrics):
            async with h3_connect(server, certs_dir) as normal_client, h3_connect(server, certs_dir) as abuser:

                async def abuse() -> list[int | None]:
                    statuses: list[int | None] = []

                    async def one() -> None:
                        statuses.append((await abuser.request("GET", "/silent", authority="localhost")).status)

                    async with trio.open_nursery() as nursery:
                        for _ in range(10):
                            nursery.start_soon(one)
                    return statuses

                with memory_bound(16 * MIB):
                    statuses, normal = await while_serving(h3_normal(normal_client), abuse)
                assert statuses == [504] * 10
                assert set(normal) == {200} and len(normal) >= 1
                assert await metrics.value("spooky_backend_timeouts_total") == 10
                assert await metrics.value("spooky_health_failures_total", reason="timeout") == 10
                assert silent.connections == 10


async def test_client_that_never_reads_backpressures_the_backend(certs_dir: Path) -> None:
    """The client opens no flow-control window after the first MiB: the proxy stops reading
    the backend (hypercorn's send waits), memory stays flat, and the total request timeout
    ends the exchange with a reset; other clients are served meanwhile."""
    size = 64 * MIB
    async with run_backend(name="ok") as backend:
        pool = h1_pool(backend.url, prefix="/", name="ok")
        async with abuse_proxy(pool, certs_dir, performance={"backend_body_total_timeout_ms": 2000, "backend_total_request_timeout_ms": 2000, "max_response_body_bytes": 2 * size}) as (server, metrics):
            async with h3_connect(server, certs_dir) as normal_client, h3_connect(server, certs_dir, max_stream_data=1 * MIB) as stalled:

                async def abuse() -> int | None:
                    timeouts_before = await metrics.value("spooky_backend_timeouts_total")
                    assert timeouts_before == 0
                    async with stalled.stream_request("GET", f"/bytes/{size}", authority="localhost") as resp:
                        assert resp.status == 200
                        # never read: wait for the proxy to give up on the stream
                        while resp.reset_code is None:
                            await resp._state.wait()
                        return resp.reset_code

                with memory_bound(24 * MIB):
                    code, normal = await while_serving(h3_normal(normal_client, "/echo"), abuse)
                assert code == ErrorCode.H3_INTERNAL_ERROR
                assert set(normal) == {200}
                sent = next(r["sent"] for r in backend.requests if r["path"].startswith("/bytes/"))
                assert sent < 16 * MIB, sent  # the backend was held back, not drained into memory
                assert await metrics.value("spooky_backend_timeouts_total") == 1


async def test_http2_client_that_never_reads_backpressures_the_backend(certs_dir: Path) -> None:
    """The same over HTTP/2: the client never sends WINDOW_UPDATE, so the proxy's sends stop
    at the 64 KiB initial window; the backend is held back and the total timeout resets the
    stream (RST_STREAM INTERNAL_ERROR); the connection itself stays usable."""
    from h2.errors import ErrorCodes

    from tests.abuse.test_h2_abuse import connect_h2, request_headers

    size = 64 * MIB
    async with run_backend(name="ok") as backend:
        pool = h1_pool(backend.url, prefix="/", name="ok")
        perf = {"backend_body_total_timeout_ms": 2000, "backend_total_request_timeout_ms": 2000, "max_response_body_bytes": 2 * size}
        async with abuse_proxy(pool, certs_dir, performance=perf) as (server, metrics):
            async with h3_connect(server, certs_dir) as normal_client:

                async def abuse() -> tuple[int | None, int | None]:
                    conn = await connect_h2(server, certs_dir)
                    resets: dict[int, int] = {}
                    async with trio.open_nursery() as nursery:
                        conn.h2.initiate_connection()
                        nursery.start_soon(conn.read)
                        conn.h2.send_headers(1, request_headers(f"/bytes/{size}"), end_stream=True)
                        assert await conn.send(conn.h2.data_to_send())
                        with trio.fail_after(15):
                            await conn.wait_until(lambda: conn.h2.streams.get(1) is None or conn.h2.streams[1].closed)
                        conn.h2.send_headers(3, request_headers("/echo"), end_stream=True)
                        assert await conn.send(conn.h2.data_to_send())
                        with trio.fail_after(10):
                            await conn.wait_response(3)
                        resets.update(conn.resets)
                        await trio.aclose_forcefully(conn.stream)
                    return resets.get(1), conn.responses.get(3)

                with memory_bound(24 * MIB):
                    (code, after), normal = await while_serving(h3_normal(normal_client, "/echo"), abuse)
                assert code == ErrorCodes.INTERNAL_ERROR
                assert after == 200
                assert set(normal) == {200}
                sent = next(r["sent"] for r in backend.requests if r["path"].startswith("/bytes/"))
                assert sent < 16 * MIB, sent
                assert await metrics.value("spooky_backend_timeouts_total") == 1
