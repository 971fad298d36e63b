"""The HTTP/1.1 client path without sockets: H1Connection and the pool's HTTP/1.1 exchange
(bodiless and with a body) against scripted servers on trio memory streams."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
import trio

from spooky_trio.upstream import UpstreamPool, UpstreamProtocolError, UpstreamTimeout
from spooky_trio.upstream import pool as pool_module
from spooky_trio.upstream.common import ExchangeControl
from spooky_trio.upstream.h1 import StaleConnection
from tests.upstream.conftest import chunks, h1_target, read_all, request
from tests.upstream.h1_peer import FakeDialler, Handler, Peer, connection_pair

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
TARGET = h1_target(8080)


def control(timeout: float = 5.0) -> ExchangeControl:
    return ExchangeControl(trio.CancelScope(), timeout)


# -- H1Connection --


async def test_request_head_is_derived_from_the_request_and_the_response_is_streamed() -> None:
    connection, peer = connection_pair()
    req = request("POST", "/submit?x=1", headers=[(b"host", b"spoofed"), (b"content-length", b"99"), (b"x-trace", b"1")])
    async with trio.open_nursery() as nursery:

        async def serve() -> None:
            await peer.read_request()
            await peer.send(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-sum: 7\r\n\r\n")

        nursery.start_soon(serve)
        response = await connection.start(req, nursery=None, control=control())
        assert (response.status, response.http_version) == (201, "1.1")
        assert await read_all(response) == b"abc" and response.trailers == [(b"x-sum", b"7")]
    sent = peer.requests[0]
    assert (sent.method, sent.target, sent.body) == (b"POST", b"/submit?x=1", b"")
    # Host first, from the authority; the caller's framing headers replaced by the engine's
    assert sent.headers == [(b"host", b"backend.test"), (b"x-trace", b"1"), (b"content-length", b"0")]
    assert response.complete and connection.reusable


async def test_no_response_head_in_time_is_a_timeout(autojump_clock: trio.abc.Clock) -> None:
    connection, peer = connection_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.read_request)  # and never answers
        start = trio.current_time()
        with pytest.raises(UpstreamTimeout, match="within 3s"):
            await connection.start(request("GET", "/"), nursery=None, control=control(3.0))
        assert trio.current_time() - start == pytest.approx(3.0)
    assert not connection.reusable


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"HTTP/1.1 abc nonsense\r\n\r\n", "malformed HTTP/1.1 response"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", "without sending complete message body"),
    ],
)
async def test_broken_answers_are_protocol_errors(answer: bytes, message: str) -> None:
    connection, peer = connection_pair()
    async with trio.open_nursery() as nursery:

        async def serve() -> None:
            await peer.read_request()
            await peer.send(answer)
            await peer.stream.aclose()

        nursery.start_soon(serve)
        with pytest.raises(UpstreamProtocolError, match=message) as info:
            response = await connection.start(request("GET", "/"), nursery=None, control=control())
            await read_all(response)
    assert not isinstance(info.value, StaleConnection)  # a fresh connection is never "stale"
    assert not connection.reusable


async def test_a_reused_connection_closed_before_answering_is_stale() -> None:
    connection, peer = connection_pair()
    async with trio.open_nursery() as nursery:

        async def serve() -> None:
            await peer.read_request()
            await peer.send(OK)
            await peer.read_head()
            await peer.stream.aclose()  # the keep-alive race: closed instead of answering

        nursery.start_soon(serve)
        response = await connection.start(request("GET", "/a"), nursery=None, control=control())
        assert await read_all(response) == b"ok"
        connection.prepare_reuse()
        with pytest.raises(StaleConnection):
            await connection.start(request("GET", "/b"), nursery=None, control=control())


UPGRADE_HEADERS = [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]


async def test_upgrade_returns_the_101_and_detach_hands_over_the_stream() -> None:
    connection, peer = connection_pair()
    async with trio.open_nursery() as nursery:

        async def serve() -> None:
            await peer.read_request()
            # the first tunnel bytes arrive in the same read as the 101
            await peer.send(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nearly")

        nursery.start_soon(serve)
        response = await connection.upgrade(request("GET", "/chat", headers=UPGRADE_HEADERS), response_timeout=5)
    assert response.status == 101 and response.complete and (b"upgrade", b"websocket") in response.headers
    assert (b"upgrade", b"websocket") in peer.requests[0].headers and peer.requests[0].headers[0] == (b"host", b"backend.test")
    stream, leftover = connection.detach()
    assert leftover == b"early" and not connection.reusable
    await peer.send(b"later")
    assert await stream.receive_some(100) == b"later"
    await stream.send_all(b"to the backend")
    assert await peer.stream.receive_some(100) == b"to the backend"
    await connection.aclose()
    assert await peer.stream.receive_some(100) == b""  # closing the connection closes the stream


async def test_a_refused_upgrade_is_an_ordinary_response() -> None:
    connection, peer = connection_pair()
    async with trio.open_nursery() as nursery:

        async def serve() -> None:
            await peer.read_request()
            await peer.send(b"HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 403 Forbidden\r\ncontent-length: 9\r\n\r\nforbidden")

        nursery.start_soon(serve)
        response = await connection.upgrade(request("GET", "/ws", headers=UPGRADE_HEADERS), response_timeout=5)
        assert (response.status, await read_all(response)) == (403, b"forbidden")
    with pytest.raises(RuntimeError, match="101"):
        connection.detach()


async def test_upgrade_errors_are_the_clients_own(autojump_clock: trio.abc.Clock) -> None:
    connection, peer = connection_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.read_request)  # never answers
        with pytest.raises(UpstreamTimeout):
            await connection.upgrade(request("GET", "/ws", headers=UPGRADE_HEADERS), response_timeout=2)
    with pytest.raises(ValueError):
        await connection.upgrade(request("POST", "/ws", body=chunks(b"x"), headers=UPGRADE_HEADERS), response_timeout=2)
    # a 101 to a request that proposed no switch is a protocol error, not a tunnel
    connection, peer = connection_pair()
    async with trio.open_nursery() as nursery:

        async def serve() -> None:
            await peer.read_request()
            await peer.send(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")

        nursery.start_soon(serve)
        with pytest.raises(UpstreamProtocolError):
            await connection.upgrade(request("GET", "/ws"), response_timeout=2)


# -- the pool's HTTP/1.1 exchange (bodiless and with a body) --


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    yield UpstreamPool()  # HTTP/1.1 needs no run()


def dial_with(monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery, handler: Handler) -> FakeDialler:
    dialler = FakeDialler(nursery, handler)
    monkeypatch.setattr(pool_module, "connect", dialler)
    return dialler


async def answer_each_request(peer: Peer) -> None:
    """Keep-alive server: answers every request with its body echoed."""
    while True:
        try:
            received = await peer.read_request()
        except (trio.BrokenResourceError, trio.ClosedResourceError, EOFError):
            return
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(received.body), received.body))


async def test_bodiless_and_bodied_exchanges_share_one_keep_alive_connection(
    pool: UpstreamPool, monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery
) -> None:
    dialler = dial_with(monkeypatch, nursery, answer_each_request)
    payload = bytes(range(256)) * 1000
    for req, expected in [
        (request("GET", "/one"), b""),
        (request("POST", "/two", body=chunks(payload, 7000), length=len(payload)), payload),
        (request("PUT", "/three", body=chunks(b"chunked body", 5)), b"chunked body"),
        (request("GET", "/four"), b""),
    ]:
        async with pool.exchange(TARGET, req, connect_timeout=1, response_timeout=1) as response:
            assert response.status == 200 and await read_all(response) == expected
    assert len(dialler.peers) == 1 and pool.idle_h1_connections(TARGET) == 1
    headers = [dict(r.headers) for r in dialler.peers[0].requests]
    assert headers[1][b"content-length"] == str(len(payload)).encode() and headers[2][b"transfer-encoding"] == b"chunked"


async def test_a_bodiless_exchange_opens_no_pump_nursery(pool: UpstreamPool, monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery) -> None:
    """The fast path: only a request with a body pays for a nursery."""
    dial_with(monkeypatch, nursery, answer_each_request)

    class NoNursery:
        def __init__(self, *args: object) -> None:
            raise AssertionError("a pump nursery was opened")

    monkeypatch.setattr(pool_module, "PumpNursery", NoNursery)
    async with pool.exchange(TARGET, request("GET", "/"), connect_timeout=1, response_timeout=1) as response:
        assert response.status == 200
    with pytest.raises(AssertionError, match="pump nursery"):
        async with pool.exchange(TARGET, request("POST", "/", body=chunks(b"x"), length=1), connect_timeout=1, response_timeout=1):
            pass


class ClientGone(Exception):
    pass


class CallerError(Exception):
    pass


async def test_a_failing_request_body_propagates_unwrapped(pool: UpstreamPool, monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery) -> None:
    heads = trio.Event()

    async def read_and_wait(peer: Peer) -> None:
        await peer.read_head()
        heads.set()
        await trio.sleep_forever()

    dial_with(monkeypatch, nursery, read_and_wait)

    async def failing_body() -> AsyncIterator[bytes]:
        yield b"first part"
        await heads.wait()
        raise ClientGone("the client reset its stream")

    with pytest.raises(ClientGone):  # itself, not an ExceptionGroup
        async with pool.exchange(TARGET, request("POST", "/", body=failing_body()), connect_timeout=1, response_timeout=1):
            raise AssertionError("no response can have arrived")
    assert pool.idle_h1_connections(TARGET) == 0


async def test_leaving_a_bodied_exchange_with_an_error_closes_the_connection(
    pool: UpstreamPool, monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery
) -> None:
    dialler = dial_with(monkeypatch, nursery, answer_each_request)
    with pytest.raises(CallerError):
        async with pool.exchange(TARGET, request("POST", "/", body=chunks(b"abc"), length=3), connect_timeout=1, response_timeout=1) as response:
            assert response.status == 200
            raise CallerError  # the body is not read: the connection cannot be reused
    assert pool.idle_h1_connections(TARGET) == 0
    async with pool.exchange(TARGET, request("GET", "/"), connect_timeout=1, response_timeout=1) as response:
        assert response.status == 200
    assert len(dialler.peers) == 2


async def test_an_early_answer_stops_the_body_pump(pool: UpstreamPool, monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery) -> None:
    """The backend answers 413 after the head and never reads the body."""

    async def refuse(peer: Peer) -> None:
        await peer.read_head()
        await peer.send(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 3\r\nconnection: close\r\n\r\nbig")
        await trio.sleep_forever()

    dial_with(monkeypatch, nursery, refuse)
    sent_after_exit = 0
    exited = False

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent_after_exit
        while True:
            sent_after_exit += exited
            yield b"z" * 1024

    with trio.fail_after(5):
        async with pool.exchange(TARGET, request("POST", "/upload", body=endless()), connect_timeout=1, response_timeout=1) as response:
            assert (response.status, await read_all(response)) == (413, b"big")
            exited = True  # from here on (closing the connection included) nothing is pulled
    await trio.testing.wait_all_tasks_blocked()
    assert sent_after_exit == 0 and pool.idle_h1_connections(TARGET) == 0


async def test_a_stale_idle_connection_is_replaced_for_bodiless_requests_only(
    pool: UpstreamPool, monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery
) -> None:
    async def answer_once_then_close(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(OK)
        await peer.read_head()
        await peer.stream.aclose()

    dialler = dial_with(monkeypatch, nursery, answer_once_then_close)
    for path in ("/a", "/b"):
        async with pool.exchange(TARGET, request("GET", path), connect_timeout=1, response_timeout=1) as response:
            assert await read_all(response) == b"ok"
    assert len(dialler.peers) == 2  # /b went to a fresh connection after the stale one
    with pytest.raises(UpstreamProtocolError):  # a body cannot be replayed: reported
        async with pool.exchange(TARGET, request("POST", "/c", body=chunks(b"x"), length=1), connect_timeout=1, response_timeout=1):
            pass


async def test_a_bodied_exchange_times_out_and_cancels_cleanly(
    pool: UpstreamPool, monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    async def never_answer(peer: Peer) -> None:
        with contextlib.suppress(EOFError):
            while True:
                await peer.read_request()

    dialler = dial_with(monkeypatch, nursery, never_answer)
    with pytest.raises(UpstreamTimeout):
        async with pool.exchange(TARGET, request("POST", "/", body=chunks(b"abc"), length=3), connect_timeout=1, response_timeout=2):
            pass
    with trio.move_on_after(1) as scope:  # cancelled from outside while waiting for the head
        async with pool.exchange(TARGET, request("POST", "/", body=chunks(b"abc"), length=3), connect_timeout=1, response_timeout=100):
            pass
    assert scope.cancelled_caught
    assert pool.idle_h1_connections(TARGET) == 0 and len(dialler.peers) == 2
    for peer in dialler.peers:  # both connections were closed
        with pytest.raises((trio.BrokenResourceError, trio.ClosedResourceError)):
            await peer.stream.send_all(b"x")
