"""FdSocketStream: the descriptor-level stream the HTTP/1.1 client uses for plain TCP, on a
local socket pair (no network)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from spooky_trio.upstream.fd_stream import FdSocketStream


@pytest.fixture
async def pair() -> AsyncIterator[tuple[FdSocketStream, trio.SocketStream]]:
    """(our FdSocketStream, a plain trio SocketStream as the peer)."""
    a, b = trio.socket.socketpair()
    ours, peer = FdSocketStream(trio.SocketStream(a)), trio.SocketStream(b)
    yield ours, peer
    await ours.aclose()
    await peer.aclose()


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(65536)
        assert chunk, "EOF before the expected bytes"
        data += chunk
    return bytes(data)


async def test_bytes_flow_both_ways_and_a_full_buffer_waits(pair: tuple[FdSocketStream, trio.SocketStream]) -> None:
    ours, peer = pair
    payload = bytes(range(256)) * 16 * 1024  # 4 MiB: far more than the socket buffers hold
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ours.send_all, payload)
        assert await receive_exactly(peer, len(payload)) == payload
    await peer.send_all(b"pong")
    assert await receive_exactly(ours, 4) == b"pong"


async def test_eof_each_way(pair: tuple[FdSocketStream, trio.SocketStream]) -> None:
    ours, peer = pair
    await ours.send_all(b"last")
    await ours.send_eof()
    assert await receive_exactly(peer, 4) == b"last"
    assert await peer.receive_some(100) == b""
    await peer.send_all(b"reply after our eof")
    assert await receive_exactly(ours, 19) == b"reply after our eof"
    await peer.send_eof()
    assert await ours.receive_some(100) == b""


async def test_receive_is_always_a_checkpoint(pair: tuple[FdSocketStream, trio.SocketStream]) -> None:
    """Data already waiting must not let a read loop run without yielding."""
    ours, peer = pair
    await peer.send_all(b"ready")
    await trio.testing.wait_all_tasks_blocked()
    with trio.testing.assert_checkpoints():
        assert await ours.receive_some(100) == b"ready"


async def test_close_wakes_a_blocked_reader_and_later_calls_fail(pair: tuple[FdSocketStream, trio.SocketStream]) -> None:
    ours, _peer = pair
    errors: list[BaseException] = []

    async def reader() -> None:
        try:
            await ours.receive_some(100)
        except trio.ClosedResourceError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        await ours.aclose()
    assert len(errors) == 1
    for call in (ours.receive_some(1), ours.send_all(b"x"), ours.send_eof(), ours.wait_send_all_might_not_block()):
        with pytest.raises(trio.ClosedResourceError):
            await call
    await ours.aclose()  # idempotent


async def test_peer_gone_is_a_broken_resource(pair: tuple[FdSocketStream, trio.SocketStream]) -> None:
    ours, peer = pair
    await peer.aclose()
    with pytest.raises(trio.BrokenResourceError):
        for _ in range(100):  # the first writes may still be buffered
            await ours.send_all(b"x" * 65536)


async def test_is_readable_tells_an_idle_socket_from_a_closed_one() -> None:
    a, b = trio.socket.socketpair()
    ours, peer = FdSocketStream(trio.SocketStream(a)), trio.SocketStream(b)
    assert not ours.is_readable()
    await peer.send_all(b"unsolicited")
    assert ours.is_readable()
    await ours.receive_some(100)
    assert not ours.is_readable()
    peer.socket.shutdown(socket.SHUT_WR)
    assert ours.is_readable()  # EOF pending
    await ours.aclose()
    assert ours.is_readable()  # closed: never "idle and fine"
    await peer.aclose()
