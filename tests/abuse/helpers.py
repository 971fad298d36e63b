"""Shared pieces of the abuse suite: a tiny-limits proxy with its metrics endpoint, a scrape
helper, a memory bound, a normal client that must keep getting 200s, and raw HTTP/3 streams.

Memory is measured with :mod:`tracemalloc` around the abuse (the proxy runs in-process, so
every allocation of the proxy, the backends and the clients counts): the bound is the peak
of traced memory above what was traced when the block started.
"""

from __future__ import annotations

import contextlib
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pylsqpack
import trio
from aioquic.h3.connection import FrameType, encode_frame
from prometheus_client.parser import text_string_to_metric_families

from spooky_trio.clients.h3 import H3Client
from spooky_trio.clients.h3_stream import H3StreamResponse, StreamState
from spooky_trio.serving.server import Server
from tests.support.proxy import free_udp_port, proxy_yaml, running_proxy

T = TypeVar("T")
MIB = 1024 * 1024

#: the limits every abuse test runs with (small, so abuse is cheap to produce)
MAX_HEADERS_COUNT = 16
MAX_HEADERS_BYTES = 1024
MAX_STREAMS = 16


#: performance keys every abuse test runs with (tests override some through ``performance``)
PERFORMANCE = {
    "quic_initial_max_streams_bidi": MAX_STREAMS,
    "client_body_idle_timeout_ms": 200,
    "backend_connect_timeout_ms": 1000,
    "backend_timeout_ms": 1000,
    "backend_body_idle_timeout_ms": 1000,
    "backend_body_total_timeout_ms": 5000,
    "backend_total_request_timeout_ms": 6000,
    "max_response_body_bytes": 2000000,
    # no effect here, but Spooky's cross-check wants it <= max_response_body_bytes
    "unknown_length_response_prebuffer_bytes": 65536,
}


def abuse_yaml(upstream: str, certs_dir: Path, metrics_port: int, performance: dict[str, int] | None = None) -> str:
    perf = {**PERFORMANCE, **(performance or {})}
    extra = (
        "performance:\n"
        + "".join(f"  {key}: {value}\n" for key, value in perf.items())
        + "resilience:\n"
        "  protocol:\n"
        f"    max_headers_count: {MAX_HEADERS_COUNT}\n"
        f"    max_headers_bytes: {MAX_HEADERS_BYTES}\n"
        "observability:\n"
        "  metrics:\n"
        "    enabled: true\n"
        "    address: 127.0.0.1\n"
        f"    port: {metrics_port}\n"
    )
    return proxy_yaml(upstream, certs_dir=certs_dir, extra=extra)


@contextlib.asynccontextmanager
async def abuse_proxy(upstream: str, certs_dir: Path, *, performance: dict[str, int] | None = None) -> AsyncIterator[tuple[Server, Metrics]]:
    port = free_udp_port()
    async with running_proxy(abuse_yaml(upstream, certs_dir, port, performance)) as server:
        yield server, Metrics(port)


class Metrics:
    """Scrapes the proxy's Prometheus endpoint over HTTP."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with httpx.AsyncClient() as http:
            r = await http.get(f"http://127.0.0.1:{self.port}/metrics")
        assert r.status_code == 200
        out = {}
        for family in text_string_to_metric_families(r.text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    async def value(self, name: str, **labels: str) -> float:
        return (await self.scrape()).get((name, tuple(sorted(labels.items()))), 0.0)


@contextlib.contextmanager
def memory_bound(limit: int) -> Iterator[None]:
    """Assert that traced memory never grew more than ``limit`` bytes inside the block."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        if started:
            tracemalloc.stop()
    assert peak - base < limit, f"memory grew by {(peak - base) / MIB:.1f} MiB (bound {limit / MIB:.1f} MiB)"


async def while_serving(normal: Callable[[], Awaitable[int]], abuse: Callable[[], Awaitable[T]]) -> tuple[T, list[int]]:
    """Run ``abuse`` while another task keeps making normal requests (at least one, and
    until the abuse is over); returns the abuse's result and the normal statuses."""
    statuses: list[int] = []
    done = trio.Event()
    result: list[T] = []

    async def normal_loop() -> None:
        while not done.is_set() or not statuses:
            statuses.append(await normal())

    async def run_abuse() -> None:
        result.append(await abuse())
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(normal_loop)
        nursery.start_soon(run_abuse)
    return result[0], statuses


def h3_connect(server: Server, certs_dir: Path, **kwargs: Any) -> Any:
    return H3Client.connect("127.0.0.1", server.listeners[0].port, server_name="localhost",
                            cafile=str(certs_dir / "ca.pem"), **kwargs)


def h3_normal(client: H3Client, path: str = "/echo") -> Callable[[], Awaitable[int]]:
    async def one() -> int:
        r = await client.request("GET", path, authority="localhost")
        return r.status or 0

    return one


# --- raw HTTP/3 streams (frames the client library would never produce) ---


def static_block(headers: list[tuple[bytes, bytes]]) -> bytes:
    """A QPACK field section using only the static table and literals (valid whatever the
    peer's dynamic table holds)."""
    return pylsqpack.Encoder().encode(0, headers)[1]


def qpack_int(value: int, bits: int, first: int = 0) -> bytes:
    mask = (1 << bits) - 1
    if value < mask:
        return bytes([first | value])
    out = bytearray([first | mask])
    value -= mask
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def insert_literal(name: bytes, value: bytes) -> bytes:
    """QPACK encoder instruction: Insert With Literal Name (RFC 9204 4.3.3)."""
    return qpack_int(len(name), 5, 0x40) + name + qpack_int(len(value), 7) + value


GET = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"localhost"), (b":path", b"/echo")]


async def raw_stream(client: H3Client, payload: bytes, *, end: bool = True, transmit: bool = True) -> H3StreamResponse:
    """Open a request stream, write ``payload`` (whole frames, or not) and register it so the
    client records the answer or reset; the caller awaits ``_wait_response_start``."""
    quic = client._quic
    stream_id = quic.get_next_available_stream_id()
    state = StreamState(stream_id)
    client._streams[stream_id] = state
    quic.track_stream(stream_id)
    quic.send_stream_data(stream_id, payload, end)
    if transmit:
        await client._transmit()
    return H3StreamResponse(client, state)


async def raw_exchange(client: H3Client, payload: bytes, *, end: bool = True) -> StreamState:
    response = await raw_stream(client, payload, end=end)
    await response._wait_response_start()
    return response._state


def encoder_stream(client: H3Client, data: bytes) -> None:
    """Write raw instructions on the client's QPACK encoder stream (the client's own encoder
    no longer knows the table afterwards: send only :func:`static_block` sections then)."""
    client._quic.send_stream_data(client._h3._local_encoder_stream_id, data)


def headers_frame(block: bytes) -> bytes:
    return encode_frame(FrameType.HEADERS, block)
