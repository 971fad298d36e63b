"""HTTP/3 abuse against the real proxy: header floods, oversized and QPACK-bomb header
blocks, dynamic-table abuse, hundreds of streams that never finish.

Each test: the offending stream gets the right answer or reset, a concurrent normal client
keeps getting 200s, traced memory stays under a bound, and a scraped counter moved.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import ErrorCode, FrameType, encode_frame

from spooky_trio.clients.errors import H3ConnectionLost
from tests.abuse.helpers import (
    GET,
    MAX_HEADERS_BYTES,
    MAX_HEADERS_COUNT,
    MIB,
    abuse_proxy,
    encoder_stream,
    h3_connect,
    h3_normal,
    headers_frame,
    insert_literal,
    qpack_int,
    raw_exchange,
    raw_stream,
    static_block,
    while_serving,
    memory_bound,
)
from tests.support.backends import run_backend, run_raw_backend
from tests.support.proxy import h1_pool

PROTOCOL_ERRORS = "spooky_protocol_errors_total"


async def test_header_flood_and_oversized_headers_get_431_and_the_connection_lives(certs_dir: Path) -> None:
    async with run_backend(name="app") as backend, abuse_proxy(h1_pool(backend.url), certs_dir) as (server, metrics):
        async with h3_connect(server, certs_dir) as normal_client, h3_connect(server, certs_dir) as abuser:

            async def abuse() -> list[int | None]:
                statuses = []
                for _ in range(10):
                    flood = [(b"x-h%d" % i, b"v") for i in range(MAX_HEADERS_COUNT + 5)]
                    statuses.append((await abuser.send_raw_headers([*GET, *flood])).status)
                    big = [(b"x-big", b"v" * (MAX_HEADERS_BYTES + 1))]
                    statuses.append((await abuser.send_raw_headers([*GET, *big])).status)
                return statuses

            denied_before = await metrics.value("spooky_policy_denied_total")
            with memory_bound(8 * MIB):
                statuses, normal = await while_serving(h3_normal(normal_client), abuse)
            assert statuses == [431, 431] * 10
            assert set(normal) == {200}
            assert await metrics.value("spooky_policy_denied_total") == denied_before + 20
            # the abusing connection itself is still usable: the 431s were per request
            assert (await abuser.request("GET", "/echo", authority="localhost")).status == 200
            assert len(backend.requests) == len(normal) + 1  # no flood reached the backend


async def test_header_block_far_over_the_limit_is_a_stream_reset_without_decoding(certs_dir: Path) -> None:
    async with run_backend(name="app") as backend, abuse_proxy(h1_pool(backend.url), certs_dir) as (server, metrics):
        async with h3_connect(server, certs_dir) as normal_client, h3_connect(server, certs_dir) as abuser:

            async def abuse() -> list[int | None]:
                codes = []
                for _ in range(10):
                    # 600 KB of literal fields: over 4 * max_headers_bytes + 64 * max_headers_count
                    flood = [(b"x-h%d" % i, b"v" * 600) for i in range(1000)]
                    state = await raw_exchange(abuser, headers_frame(static_block([*GET, *flood])))
                    codes.append(state.reset_code)
                return codes

            with memory_bound(24 * MIB):
                codes, normal = await while_serving(h3_normal(normal_client), abuse)
            assert codes == [ErrorCode.H3_EXCESSIVE_LOAD] * 10
            assert set(normal) == {200}
            assert await metrics.value(PROTOCOL_ERRORS, protocol="h3", reason="excessive_load") == 10
            state = await raw_exchange(abuser, headers_frame(static_block(GET)))
            assert state.status == 200


async def test_qpack_bomb_and_dynamic_table_abuse(certs_dir: Path) -> None:
    """The proxy allows no QPACK dynamic table (QPACK_MAX_TABLE_CAPACITY 0), so the classic
    bomb (one ~4 KiB entry referenced by 200 000 one-byte lines, ~800 MB decoded) cannot be
    built: the insert itself is a QPACK_ENCODER_STREAM_ERROR that closes only the abuser's
    connection. 200 000 one-byte static-table references are refused by counting lines."""
    async with run_backend(name="app") as backend, abuse_proxy(h1_pool(backend.url), certs_dir) as (server, metrics):
        async with h3_connect(server, certs_dir) as normal_client, h3_connect(server, certs_dir) as abuser, \
                h3_connect(server, certs_dir) as inserter:

            async def abuse() -> tuple[int | None, str]:
                bomb = await raw_exchange(abuser, headers_frame(qpack_int(0, 8) + qpack_int(0, 7) + b"\xd1" * 200_000))
                encoder_stream(inserter, insert_literal(b"x-big", b"v" * 3900))
                with pytest.raises(H3ConnectionLost) as lost:
                    await raw_exchange(inserter, headers_frame(static_block(GET)))
                return bomb.reset_code, str(lost.value)

            with memory_bound(24 * MIB):
                (bomb, inserted), normal = await while_serving(h3_normal(normal_client), abuse)
            assert bomb == ErrorCode.H3_EXCESSIVE_LOAD
            assert "error 0x201" in inserted  # QPACK_ENCODER_STREAM_ERROR
            assert set(normal) == {200}
            assert await metrics.value(PROTOCOL_ERRORS, protocol="h3", reason="excessive_load") >= 1
            assert server.listeners[0].stats["panics"] == 0
            assert (await normal_client.request("GET", "/echo", authority="localhost")).status == 200
            # the abuser's connection keeps serving after its stream was refused
            assert (await raw_exchange(abuser, headers_frame(static_block(GET)))).status == 200


async def test_references_to_a_table_that_does_not_exist_close_only_that_connection(certs_dir: Path) -> None:
    """With a dynamic table, header sections referencing inserts that never come would block
    their streams (and aioquic would buffer what follows). With none, such a section is a
    QPACK_DECOMPRESSION_FAILED connection error at once: nothing blocks or buffers, and only
    the offending connection closes."""
    async with run_backend(name="app") as backend, abuse_proxy(h1_pool(backend.url), certs_dir) as (server, metrics):
        async with h3_connect(server, certs_dir) as normal_client, h3_connect(server, certs_dir) as abuser:

            async def abuse() -> str:
                prefix = qpack_int(5 + 1, 8) + qpack_int(0, 7)  # requires 5 inserts
                body = encode_frame(FrameType.DATA, b"x" * 100_000)
                with pytest.raises(H3ConnectionLost) as lost:
                    for _ in range(10):
                        await raw_exchange(abuser, headers_frame(prefix + b"\x80") + body, end=False)
                return str(lost.value)

            with memory_bound(16 * MIB):
                lost, normal = await while_serving(h3_normal(normal_client), abuse)
            assert "error 0x200" in lost  # QPACK_DECOMPRESSION_FAILED
            assert set(normal) == {200}
            assert server.listeners[0].stats["panics"] == 0

async def _read_forever(stream: trio.SocketStream) -> None:
    while await stream.receive_some(65536):
        pass


async def test_hundreds_of_streams_never_finished_on_one_connection(certs_dir: Path) -> None:
    """200 requests whose bodies never come: at most quic_initial_max_streams_bidi reach the
    proxy at a time (QUIC stream credit), each ends with 408 after client_body_idle_timeout_ms."""
    streams = 40
    async with run_backend(name="app") as backend, run_raw_backend(_read_forever) as sink_backend:
        pools = h1_pool(backend.url, prefix="/echo", name="app") + h1_pool(sink_backend.url, prefix="/upload", name="sink")
        async with abuse_proxy(pools, certs_dir, performance={"quic_initial_max_streams_bidi": streams}) as (server, metrics):
            async with h3_connect(server, certs_dir) as normal_client, h3_connect(server, certs_dir) as abuser:
                peak = 0

                async def abuse() -> list[int | None]:
                    nonlocal peak
                    head = [(b":method", b"POST"), *GET[1:3], (b":path", b"/upload"), (b"content-length", b"10")]
                    block = headers_frame(static_block(head))
                    responses = [await raw_stream(abuser, block, end=False, transmit=False) for _ in range(200)]
                    await abuser._transmit()
                    statuses = []
                    for response in responses:
                        peak = max(peak, *(len(c.streams) for c in server.listeners[0].connections))
                        await response._wait_response_start()
                        statuses.append(response.status)
                    return statuses

                denied_before = await metrics.value("spooky_policy_denied_total")
                with memory_bound(24 * MIB):
                    statuses, normal = await while_serving(h3_normal(normal_client), abuse)
                assert statuses == [408] * 200
                assert 0 < peak <= streams
                assert set(normal) == {200}
                assert await metrics.value("spooky_policy_denied_total") == denied_before + 200


async def test_endless_control_stream_frame_closes_the_connection(certs_dir: Path) -> None:
    """aioquic buffers a control-stream MAX_PUSH_ID/SETTINGS frame until it is complete and
    grows the stream's window as data arrives: a frame announcing 2^40 bytes was buffered
    for as long as the client sent. Past 16 KiB the connection closes with
    H3_EXCESSIVE_LOAD."""
    async with run_backend(name="app") as backend, abuse_proxy(h1_pool(backend.url), certs_dir) as (server, metrics):
        async with h3_connect(server, certs_dir) as normal_client:

            async def abuse() -> str:
                async with h3_connect(server, certs_dir) as abuser:
                    control = abuser._h3._local_control_stream_id
                    abuser._quic.send_stream_data(control, encode_uint_var(FrameType.MAX_PUSH_ID) + encode_uint_var(1 << 40))
                    for _ in range(200):  # up to 20 MB, far past the bound
                        abuser._quic.send_stream_data(control, b"\x01" * 100_000)
                        await abuser._transmit()
                        if abuser._error is not None:
                            break
                        await abuser._progress.wait()
                    assert isinstance(abuser._error, H3ConnectionLost)
                    return str(abuser._error)

            with memory_bound(24 * MIB):
                error, normal = await while_serving(h3_normal(normal_client), abuse)
            assert "error 0x107" in error  # H3_EXCESSIVE_LOAD
            assert set(normal) == {200}
            assert await metrics.value(PROTOCOL_ERRORS, protocol="h3", reason="control_stream_overflow") == 1
