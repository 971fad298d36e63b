"""One HTTP/3 load-generator process: aioquic on asyncio, C connections x S concurrent streams.

Run by bench/run.py, several at once (one per core is typical). Protocol on stdio, so the
orchestrator can measure the server over exactly the load phase of every process:

1. connect all connections (and, in ``load`` mode, run a short warm-up), print ``READY``;
2. wait for a line on stdin (``GO``);
3. ``load``: keep S requests in flight on every connection until ``--requests`` completed or
   ``--duration`` elapsed; ``idle``: do nothing, the connections just stay open;
4. print one JSON line: completed requests, errors, latencies (microseconds, sorted), bytes.

Latency is measured from ``send_headers`` to the end of the response body (closed loop: a
stream slot issues its next request when the previous one ends).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import ssl
import sys
import time

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamReset


class _Pending:
    __slots__ = ("future", "status", "received")

    def __init__(self, future: asyncio.Future) -> None:
        self.future = future
        self.status = 0
        self.received = 0


class H3LoadProtocol(QuicConnectionProtocol):
    """Minimal HTTP/3 client: one future per request stream, body bytes counted, not kept.

    The bench's one user of aioquic internals (``_quic``, ``_transport``): the functions
    below ask the named methods (tests/unit/test_aioquic_boundary.py)."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.pending: dict[int, _Pending] = {}
        #: sent on every request after the pseudo-headers (``--header``)
        self.extra_headers: list[tuple[bytes, bytes]] = []

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated):
            for p in self.pending.values():
                if not p.future.done():
                    p.future.set_exception(ConnectionError(f"connection closed: {event.reason_phrase}"))
            self.pending.clear()
            return
        if isinstance(event, StreamReset):
            p = self.pending.pop(event.stream_id, None)
            if p is not None and not p.future.done():
                p.future.set_exception(ConnectionError(f"stream reset {event.error_code:#x}"))
            return
        for h3_event in self.h3.handle_event(event):
            p = self.pending.get(getattr(h3_event, "stream_id", -1))
            if p is None:
                continue
            if isinstance(h3_event, HeadersReceived):
                for name, value in h3_event.headers:
                    if name == b":status":
                        p.status = int(value)
            elif isinstance(h3_event, DataReceived):
                p.received += len(h3_event.data)
            if h3_event.stream_ended:  # type: ignore[union-attr]
                del self.pending[h3_event.stream_id]  # type: ignore[union-attr]
                if not p.future.done():
                    p.future.set_result((p.status, p.received))

    def closing(self) -> bool:
        """The connection is closing or closed: aioquic records the close at once, but
        reports ConnectionTerminated only after the closing period (three PTOs)."""
        return self._quic._close_event is not None

    def grow_buffers(self) -> None:
        """Large socket buffers: with the default ~200 KiB, a burst of a 1 MiB response
        overflows the receive queue while this process is busy, and loss recovery then
        dominates the run."""
        sock = self._transport.get_extra_info("socket")  # type: ignore[union-attr]
        if sock is None:
            return
        for force, plain in ((getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF), (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF)):
            for opt in (force, plain):
                if opt is None:
                    continue
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, 8 * 1024 * 1024)
                    break
                except OSError:
                    continue

    async def request(self, method: bytes, authority: bytes, path: bytes, body: bytes) -> tuple[int, int]:
        stream_id = self._quic.get_next_available_stream_id()
        headers = [(b":method", method), (b":scheme", b"https"), (b":authority", authority), (b":path", path), *self.extra_headers]
        if body:
            headers.append((b"content-length", str(len(body)).encode()))
        fut = self._loop.create_future()
        self.pending[stream_id] = _Pending(fut)
        self.h3.send_headers(stream_id, headers, end_stream=not body)
        if body:
            self.h3.send_data(stream_id, body, end_stream=True)
        self.transmit()
        return await fut


class Stats:
    def __init__(self) -> None:
        self.latencies_us: list[int] = []
        self.errors = 0
        self.error_samples: list[str] = []
        self.bytes_received = 0
        #: open loop: requests not sent because every stream slot was busy
        self.skipped = 0

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(what)


async def _one(proto: H3LoadProtocol, args: argparse.Namespace, body: bytes, stats: Stats, start: float) -> bool:
    """One request; latency counted from ``start`` (perf_counter). False: the connection died."""
    try:
        status, received = await asyncio.wait_for(
            proto.request(args.method.encode(), args.authority.encode(), args.path.encode(), body), args.timeout
        )
    except Exception as exc:  # any failure is an error of the run, counted and sampled
        stats.error(f"{type(exc).__name__}: {exc}")
        return not proto.closing()
    if status != 200:
        stats.error(f"status {status}")
    elif args.expect_bytes >= 0 and received != args.expect_bytes:
        stats.error(f"received {received} bytes, expected {args.expect_bytes}")
    else:
        stats.latencies_us.append(int((time.perf_counter() - start) * 1e6))
        stats.bytes_received += received
    return True


async def _worker(proto: H3LoadProtocol, args: argparse.Namespace, body: bytes, stats: Stats, budget: list[int], deadline: float) -> None:
    """Closed loop: one stream slot, next request when the previous one ended."""
    while budget[0] > 0 and time.monotonic() < deadline:
        budget[0] -= 1
        if not await _one(proto, args, body, stats, time.perf_counter()):
            return


async def _open_loop(protos: list[H3LoadProtocol], args: argparse.Namespace, body: bytes, stats: Stats, total: int, deadline: float) -> None:
    """Open loop at ``args.rate`` requests/s over all connections, at most ``streams`` in
    flight per connection. Latency counts from the scheduled start (no coordinated omission);
    a request due while every slot is busy is skipped and counted."""
    interval = 1.0 / args.rate
    inflight = [0] * len(protos)
    tasks: set[asyncio.Task] = set()

    async def run_one(k: int, scheduled: float) -> None:
        try:
            await _one(protos[k], args, body, stats, scheduled)
        finally:
            inflight[k] -= 1

    begin = time.perf_counter()
    i = 0
    while i < total and time.monotonic() < deadline and protos:
        scheduled = begin + i * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        k = min(range(len(protos)), key=inflight.__getitem__)
        if inflight[k] >= args.streams:
            stats.skipped += 1
        else:
            inflight[k] += 1
            task = asyncio.ensure_future(run_one(k, scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        i += 1
    if tasks:
        await asyncio.gather(*tasks)


async def main_async(args: argparse.Namespace) -> dict:
    configuration = QuicConfiguration(
        is_client=True,
        alpn_protocols=H3_ALPN,
        server_name=args.server_name,
        idle_timeout=120.0,
        max_stream_data=4 * 1024 * 1024,
        max_data=64 * 1024 * 1024,
    )
    if args.cafile:
        configuration.load_verify_locations(args.cafile)
    else:
        configuration.verify_mode = ssl.CERT_NONE
    body = b"u" * args.body_bytes
    extra = [(name.strip().lower().encode(), value.strip().encode()) for name, _, value in (h.partition(":") for h in args.header)]
    managers = []
    protos: list[H3LoadProtocol] = []
    connect_errors = 0
    for _ in range(args.connections):
        cm = connect(args.host, args.port, configuration=configuration, create_protocol=H3LoadProtocol, wait_connected=True)
        try:
            proto = await asyncio.wait_for(cm.__aenter__(), args.timeout)
        except Exception as exc:
            connect_errors += 1
            print(f"connect failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        proto.grow_buffers()  # type: ignore[attr-defined]
        proto.extra_headers = extra  # type: ignore[attr-defined]
        managers.append(cm)
        protos.append(proto)  # type: ignore[arg-type]

    if args.mode == "load" and args.warmup > 0:
        warm = Stats()
        await asyncio.gather(*(
            _worker(p, args, body, warm, [args.warmup], time.monotonic() + 30) for p in protos for _ in range(args.streams)
        ))

    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)

    stats = Stats()
    stats.errors = connect_errors
    started = time.monotonic()
    if args.mode == "load":
        budget = [args.requests if args.requests > 0 else 1 << 60]
        deadline = started + (args.duration if args.duration > 0 else 1e9)
        if args.rate > 0:
            await _open_loop(protos, args, body, stats, budget[0], deadline)
        else:
            await asyncio.gather(*(
                _worker(p, args, body, stats, budget, deadline) for p in protos for _ in range(args.streams)
            ))
    elapsed = time.monotonic() - started
    async def close(cm) -> None:  # type: ignore[no-untyped-def]
        try:
            await asyncio.wait_for(cm.__aexit__(None, None, None), 5)
        except Exception:
            pass

    await asyncio.gather(*(close(cm) for cm in managers))
    stats.latencies_us.sort()
    return {
        "requests": len(stats.latencies_us),
        "errors": stats.errors,
        "error_samples": stats.error_samples,
        "elapsed_s": elapsed,
        "bytes_received": stats.bytes_received,
        "connections": len(protos),
        "skipped": stats.skipped,
        "latencies_us": stats.latencies_us,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--server-name", default="localhost")
    p.add_argument("--authority", default="localhost")
    p.add_argument("--cafile", default="")
    p.add_argument("--mode", choices=("load", "idle"), default="load")
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--method", default="GET")
    p.add_argument("--path", default="/")
    p.add_argument("--body-bytes", type=int, default=0)
    p.add_argument("--expect-bytes", type=int, default=-1, help="response body size to check (-1: any)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load (0: until --requests)")
    p.add_argument("--requests", type=int, default=0, help="stop after this many requests (0: duration only)")
    p.add_argument("--rate", type=float, default=0.0, help="open loop at this many requests/s (0: closed loop)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up requests per stream slot before READY")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--header", action="append", default=[], metavar="NAME:VALUE", help="a request header (repeatable)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = asyncio.run(main_async(args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
