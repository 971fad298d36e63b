"""HTTP/2 abuse against the real proxy's TCP bootstrap listener: rapid reset
(CVE-2023-44487), header blocks past the HPACK bound and CONTINUATION floods, and thousands
of streams opened past MAX_CONCURRENT_STREAMS and never finished.

A raw client (h2 for the well-formed part, hand-serialized frames for the rest) reads the
server's frames in a background task, so the GOAWAY and its error code are observed.
"""

from __future__ import annotations

from pathlib import Path

import h2.config
import h2.connection
import h2.events
import hpack
import trio
from h2.errors import ErrorCodes

from tests.abuse.helpers import MAX_STREAMS, MIB, abuse_proxy, h3_connect, h3_normal, memory_bound, while_serving
from tests.support.backends import run_backend
from tests.support.bootstrap import client_context, tls_connect
from tests.support.proxy import h1_pool

PROTOCOL_ERRORS = "spooky_protocol_errors_total"


def frame(frame_type: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([frame_type, flags]) + stream_id.to_bytes(4, "big") + payload


def request_headers(path: str, method: str = "GET") -> list[tuple[str, str]]:
    return [(":method", method), (":scheme", "https"), (":authority", "localhost"), (":path", path)]


class RawH2:
    """A TLS connection speaking HTTP/2 with an ``h2`` client state machine beside it; a
    reader task records the server's events until it closes."""

    def __init__(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        self.stream = stream
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.terminated: h2.events.ConnectionTerminated | None = None
        #: error code of the server's GOAWAY, read from the raw frames
        self.goaway_code: int | None = None
        self.closed = trio.Event()
        self.responses: dict[int, int] = {}
        #: stream id -> error code of the server's RST_STREAM
        self.resets: dict[int, int] = {}
        self._send_lock = trio.Lock()
        self._changed = trio.Event()

    async def read(self) -> None:
        raw = bytearray()
        broken = False
        try:
            while data := await self.stream.receive_some(65536):
                raw += data
                self._scan_goaway(raw)
                if broken:
                    continue  # our h2 state machine gave up on the server's frames; keep scanning
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError:
                    broken = True
                    continue
                for event in events:
                    if isinstance(event, h2.events.ConnectionTerminated):
                        self.terminated = event
                    elif isinstance(event, h2.events.StreamReset):
                        self.resets[event.stream_id] = event.error_code
                    elif isinstance(event, h2.events.ResponseReceived):
                        self.responses[event.stream_id] = int(dict(event.headers)[b":status"])
                        self._changed.set()
                        self._changed = trio.Event()
                await self.send(self.h2.data_to_send())
                self._changed.set()
                self._changed = trio.Event()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.closed.set()
            self._changed.set()

    def _scan_goaway(self, raw: bytearray) -> None:
        """Find GOAWAY in the raw frames (server preface skipped: frames start at offset 0)."""
        pos = 0
        while len(raw) - pos >= 9:
            length = int.from_bytes(raw[pos : pos + 3], "big")
            if len(raw) - pos < 9 + length:
                break
            if raw[pos + 3] == 0x7 and length >= 8:
                self.goaway_code = int.from_bytes(raw[pos + 13 : pos + 17], "big")
            pos += 9 + length
        del raw[:pos]

    async def wait_response(self, stream_id: int) -> None:
        await self.wait_until(lambda: stream_id in self.responses)

    async def wait_until(self, predicate) -> None:  # type: ignore[no-untyped-def]
        """Re-check ``predicate`` after every batch the server sends, until it holds or the
        connection is closed."""
        while not predicate() and not self.closed.is_set():
            await self._changed.wait()

    async def send(self, data: bytes) -> bool:
        """False once the server closed the connection."""
        if not data:
            return True
        async with self._send_lock:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
        return True


async def connect_h2(server, certs_dir: Path) -> RawH2:  # type: ignore[no-untyped-def]
    stream = await tls_connect(server.bootstrap_listeners[0].port, client_context(certs_dir, alpn=["h2"]))
    assert stream.selected_alpn_protocol() == "h2"
    return RawH2(stream)


async def test_rapid_reset_gets_goaway_enhance_your_calm(certs_dir: Path) -> None:
    async with run_backend(name="app") as backend, abuse_proxy(h1_pool(backend.url), certs_dir) as (server, metrics):
        async with h3_connect(server, certs_dir) as normal_client:

            async def abuse() -> tuple[int, RawH2]:
                conn = await connect_h2(server, certs_dir)
                pairs = 0
                async with trio.open_nursery() as nursery:
                    conn.h2.initiate_connection()
                    await conn.send(conn.h2.data_to_send())
                    nursery.start_soon(conn.read)
                    for stream_id in range(1, 4000, 2):  # up to 2000 HEADERS + RST_STREAM pairs
                        if conn.terminated is not None or conn.closed.is_set():
                            break
                        conn.h2.send_headers(stream_id, request_headers("/slow/2000"), end_stream=True)
                        conn.h2.reset_stream(stream_id, ErrorCodes.CANCEL)
                        pairs += 1
                        if stream_id % 40 == 39 and not await conn.send(conn.h2.data_to_send()):
                            break
                    with trio.fail_after(10):
                        await conn.closed.wait()
                await trio.aclose_forcefully(conn.stream)
                return pairs, conn

            with memory_bound(16 * MIB):
                (pairs, conn), normal = await while_serving(h3_normal(normal_client), abuse)
            assert conn.goaway_code == ErrorCodes.ENHANCE_YOUR_CALM
            assert pairs < 2000  # cut off long before the loop ended
            assert set(normal) == {200}
            assert await metrics.value(PROTOCOL_ERRORS, protocol="h2", reason="rapid_reset") == 1
            # the work done for the resets is bounded: few requests ever reached the backend
            assert sum(1 for r in backend.requests if r["path"].startswith("/slow")) <= 3 * MAX_STREAMS


async def test_responses_that_finish_keep_a_resetting_client_below_the_threshold(certs_dir: Path) -> None:
    """A client that cancels some requests but lets others finish is never cut off."""
    async with run_backend(name="app") as backend, abuse_proxy(h1_pool(backend.url), certs_dir) as (server, metrics):
        conn = await connect_h2(server, certs_dir)
        async with trio.open_nursery() as nursery:
            conn.h2.initiate_connection()
            await conn.send(conn.h2.data_to_send())
            nursery.start_soon(conn.read)
            stream_id = 1
            for _ in range(3 * MAX_STREAMS):  # more resets in total than the threshold (2 x 16)
                conn.h2.send_headers(stream_id, request_headers("/slow/2000"), end_stream=True)
                conn.h2.reset_stream(stream_id, ErrorCodes.CANCEL)
                conn.h2.send_headers(stream_id + 2, request_headers("/echo"), end_stream=True)
                assert await conn.send(conn.h2.data_to_send())
                with trio.fail_after(10):
                    await conn.wait_response(stream_id + 2)
                stream_id += 4
            assert conn.terminated is None
            await trio.aclose_forcefully(conn.stream)
        assert set(conn.responses.values()) == {200}
        assert await metrics.value(PROTOCOL_ERRORS, protocol="h2", reason="rapid_reset") == 0


async def test_header_block_past_the_hpack_bound_and_continuation_flood_close_the_connection(certs_dir: Path) -> None:
    async with run_backend(name="app") as backend, abuse_proxy(h1_pool(backend.url), certs_dir) as (server, metrics):
        async with h3_connect(server, certs_dir) as normal_client:

            async def abuse() -> list[int]:
                codes = []
                encoder = hpack.Encoder()
                # 75 KB of fields: past the 64 KiB list h2's HPACK decoder accepts (DenialOfServiceError)
                big = encoder.encode([(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"localhost"),
                                      (b":path", b"/echo"), *[(b"x-h%d" % i, b"%03d" % i + b"v" * 500) for i in range(150)]],
                                     huffman=False)
                chunks = [big[i : i + 16000] for i in range(0, len(big), 16000)]
                oversized = frame(0x1, 0x1, 1, chunks[0]) + b"".join(
                    frame(0x9, 0x4 if i == len(chunks) - 1 else 0x0, 1, c) for i, c in enumerate(chunks[1:], 1))
                flood = frame(0x1, 0x0, 1, hpack.Encoder().encode(request_headers("/echo")))  # no END_HEADERS
                flood += b"".join(frame(0x9, 0x0, 1, b"\x00" * 100) for _ in range(100))  # CONTINUATION, never END_HEADERS
                for payload in (oversized, flood):
                    conn = await connect_h2(server, certs_dir)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(conn.read)
                        conn.h2.initiate_connection()
                        await conn.send(conn.h2.data_to_send() + payload)
                        with trio.fail_after(10):
                            await conn.closed.wait()
                    await trio.aclose_forcefully(conn.stream)
                    codes.append(conn.goaway_code if conn.goaway_code is not None else -1)
                return codes

            errors_before = await metrics.value(PROTOCOL_ERRORS, protocol="h2", reason="protocol_error")
            with memory_bound(16 * MIB):
                codes, normal = await while_serving(h3_normal(normal_client), abuse)
            # hpack refuses the list past MAX_HEADER_LIST_SIZE; h2 caps CONTINUATION frames
            assert codes == [ErrorCodes.ENHANCE_YOUR_CALM, ErrorCodes.PROTOCOL_ERROR]
            assert set(normal) == {200}
            assert await metrics.value(PROTOCOL_ERRORS, protocol="h2", reason="protocol_error") == errors_before + 2
            assert not any(r["path"] == "/echo" and len(r["headers"]) > 20 for r in backend.requests)


async def test_thousands_of_streams_past_max_concurrent_streams(certs_dir: Path) -> None:
    """1000 HEADERS without END_STREAM on one connection: the ones within
    MAX_CONCURRENT_STREAMS wait for a body that never comes, the first one past it is a
    connection error (h2 counts open streams), and the waiting ones end with the connection."""
    async with run_backend(name="app") as backend, abuse_proxy(h1_pool(backend.url), certs_dir) as (server, metrics):
        async with h3_connect(server, certs_dir) as normal_client:

            async def abuse() -> RawH2:
                conn = await connect_h2(server, certs_dir)
                encoder = hpack.Encoder()
                head = [*request_headers("/echo", "POST"), ("content-length", "10")]
                frames = b"".join(frame(0x1, 0x4, sid, encoder.encode(head)) for sid in range(1, 2000, 2))
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(conn.read)
                    conn.h2.initiate_connection()
                    await conn.send(conn.h2.data_to_send() + frames)
                    with trio.fail_after(10):
                        await conn.closed.wait()
                await trio.aclose_forcefully(conn.stream)
                return conn

            errors_before = await metrics.value(PROTOCOL_ERRORS, protocol="h2", reason="protocol_error")
            with memory_bound(16 * MIB):
                conn, normal = await while_serving(h3_normal(normal_client), abuse)
            assert conn.goaway_code == ErrorCodes.PROTOCOL_ERROR
            assert set(normal) == {200}
            assert await metrics.value(PROTOCOL_ERRORS, protocol="h2", reason="protocol_error") == errors_before + 1
            assert server.bootstrap_listeners[0].stats["panics"] == 0


async def test_streams_never_finished_within_the_limit_end_with_408_and_the_connection_serves_on(certs_dir: Path) -> None:
    """MAX_CONCURRENT_STREAMS requests whose bodies never come: each ends with 408 after
    client_body_idle_timeout_ms, which frees its slot; the same connection then serves."""
    async with run_backend(name="app") as backend, abuse_proxy(h1_pool(backend.url), certs_dir) as (server, metrics):
        async with h3_connect(server, certs_dir) as normal_client:

            async def abuse() -> RawH2:
                conn = await connect_h2(server, certs_dir)
                async with trio.open_nursery() as nursery:
                    conn.h2.initiate_connection()
                    nursery.start_soon(conn.read)
                    stream_ids = list(range(1, 2 * MAX_STREAMS, 2))
                    for sid in stream_ids:
                        conn.h2.send_headers(sid, [*request_headers("/echo", "POST"), ("content-length", "10")])
                    assert await conn.send(conn.h2.data_to_send())
                    with trio.fail_after(10):
                        for sid in stream_ids:
                            await conn.wait_response(sid)
                    with trio.fail_after(10):  # the server's RST_STREAM(NO_ERROR) closes our halves
                        await conn.wait_until(lambda: conn.h2.open_outbound_streams == 0)
                    last = stream_ids[-1] + 2
                    conn.h2.send_headers(last, request_headers("/echo"), end_stream=True)
                    assert await conn.send(conn.h2.data_to_send())
                    with trio.fail_after(10):
                        await conn.wait_response(last)
                    await trio.aclose_forcefully(conn.stream)
                return conn

            denied_before = await metrics.value("spooky_policy_denied_total")
            with memory_bound(16 * MIB):
                conn, normal = await while_serving(h3_normal(normal_client), abuse)
            statuses = sorted(conn.responses.items())
            assert [s for _, s in statuses[:-1]] == [408] * MAX_STREAMS and statuses[-1][1] == 200
            assert conn.goaway_code is None
            assert set(normal) == {200}
            assert await metrics.value("spooky_policy_denied_total") == denied_before + MAX_STREAMS


async def test_ping_flood_from_a_client_that_does_not_read_stalls_the_connection(certs_dir: Path) -> None:
    """Each PING queues an ACK; a client that floods PINGs and never reads must be met with
    a connection that stops reading once the ACKs back up, not with an ever-growing queue."""
    from hyperframe.frame import PingFrame

    from tests.integration.test_backpressure import _wait_until_stalled

    async with run_backend(name="app") as backend, abuse_proxy(h1_pool(backend.url), certs_dir) as (server, _metrics):
        listener = server.bootstrap_listeners[0]
        conn = await connect_h2(server, certs_dir)
        conn.h2.initiate_connection()
        await conn.send(conn.h2.data_to_send())
        pings = PingFrame(0, opaque_data=b"12345678").serialize() * 4096
        sent = 0

        async def flood() -> None:
            nonlocal sent
            while True:
                await conn.stream.send_all(pings)
                sent += len(pings)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood)
            stalled_at = await _wait_until_stalled(lambda: sent, limit=30.0)
            (h2conn,) = listener.connections
            queued = len(h2conn.pump.outbox)  # the bound under test
            nursery.cancel_scope.cancel()
        # socket buffers hold the rest; what the proxy itself queued stays near the bound
        assert queued < 256 * 1024, queued
        assert stalled_at > 0
        await trio.aclose_forcefully(conn.stream)
