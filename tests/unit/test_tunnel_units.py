"""proxy/tunnel.py's WebSocket relay on the upstream HTTP/1.1 client, without sockets: the
backend is a scripted server on a memory stream (tests/upstream/h1_peer.py), the client a
memory stream behind a fake tunnel sink."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest
import trio
import trio.testing

from spooky_trio.http.messages import DownstreamRequest, Headers
from spooky_trio.proxy import tunnel
from spooky_trio.upstream import BackendTarget, UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout
from tests.upstream.h1_peer import FakeDialler, Handler, Peer

PERF = SimpleNamespace(backend_connect_timeout_ms=1000, backend_timeout_ms=2000)
POOL = SimpleNamespace(forwarded_headers=SimpleNamespace(mode="overwrite"), host_policy=SimpleNamespace(mode="pass-through", host=None))
_TARGET = BackendTarget(scheme="http", host="127.0.0.1", port=8080)
BACKEND = SimpleNamespace(target=_TARGET, connect_target=_TARGET, authority=b"127.0.0.1:8080")


class ClientSide:
    """A TunnelSink whose tunnel is one end of a memory stream; ``far`` is the client."""

    def __init__(self) -> None:
        self.near, self.far = trio.testing.memory_stream_pair()
        self.opened_with: Headers | None = None
        self.response: tuple[int, Headers] | None = None
        self.body = b""
        self.ended = False
        self.supports_half_close = True

    async def open_tunnel(self, headers: Headers) -> ClientSide:
        self.opened_with = headers
        return self

    async def receive_some(self) -> bytes:
        return await self.near.receive_some(65536)

    async def send_all(self, data: bytes) -> None:
        await self.near.send_all(data)

    async def send_eof(self) -> None:
        await self.near.send_eof()

    async def send_headers(self, status: int, headers: Headers) -> None:
        self.response = (status, headers)

    async def send_data(self, data: bytes, end_stream: bool = False) -> None:
        self.body += data
        self.ended = end_stream


def upgrade_request(*headers: tuple[bytes, bytes]) -> DownstreamRequest:
    return DownstreamRequest(
        method=b"GET", scheme=b"https", authority=b"example.test", path=b"/chat?room=1",
        headers=[(b"upgrade", b"websocket"), (b"connection", b"upgrade"), *headers],
        protocol="HTTP/2", client_address=("192.0.2.7", 5555),
    )


@contextlib.asynccontextmanager
async def backend(monkeypatch: pytest.MonkeyPatch, handler: Handler) -> AsyncIterator[FakeDialler]:
    async with trio.open_nursery() as nursery:
        dialler = FakeDialler(nursery, handler)
        monkeypatch.setattr(tunnel, "connect", dialler)
        yield dialler
        nursery.cancel_scope.cancel()


def accept_for(peer: Peer) -> bytes:
    key = dict(peer.requests[0].headers)[b"sec-websocket-key"]
    return tunnel.websocket_accept(key)


async def test_handshake_then_bytes_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    async def echo_backend(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
                        b"sec-websocket-accept: " + accept_for(peer) + b"\r\n\r\nhello from the backend")
        while data := await peer.stream.receive_some(65536):
            await peer.send(data.upper())
        await peer.stream.send_eof()

    client = ClientSide()
    async with backend(monkeypatch, echo_backend) as dialler:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tunnel.relay_tunnel, PERF, POOL, BACKEND, upgrade_request(), b"example.test", client)
            assert await client.far.receive_some(100) == b"hello from the backend"  # bytes after the 101
            await client.far.send_all(b"ping")
            assert await client.far.receive_some(100) == b"PING"
            await client.far.send_eof()
            assert await client.far.receive_some(100) == b""  # the backend ended: so does the client side
    sent = dialler.peers[0].requests[0]
    assert (sent.method, sent.target) == (b"GET", b"/chat?room=1")
    names = [name for name, _ in sent.headers]
    assert names[0] == b"host" and dict(sent.headers)[b"host"] == b"example.test"
    assert names[-2:] == [b"connection", b"upgrade"] and dict(sent.headers)[b"sec-websocket-version"] == b"13"
    assert dict(sent.headers)[b"x-forwarded-for"] == b"192.0.2.7"
    assert client.opened_with is not None and (b"upgrade", b"websocket") in client.opened_with


async def test_a_refusal_is_relayed_as_a_response(monkeypatch: pytest.MonkeyPatch) -> None:
    async def refuse(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 9\r\nconnection: keep-alive\r\n\r\nforbidden")

    client = ClientSide()
    async with backend(monkeypatch, refuse):
        await tunnel.relay_tunnel(PERF, POOL, BACKEND, upgrade_request(), b"example.test", client)
    assert client.response == (403, [(b"content-length", b"9")])  # hop-by-hop stripped
    assert (client.body, client.ended, client.opened_with) == (b"forbidden", True, None)


async def test_handshake_failures_are_upstream_errors(monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.abc.Clock) -> None:
    async def wrong_accept(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: bogus\r\n\r\n")
        await trio.sleep_forever()

    async def silent(peer: Peer) -> None:
        await peer.read_request()
        await trio.sleep_forever()

    async def garbage(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"SSH-2.0-OpenSSH\r\n\r\n")

    for handler, error in [(wrong_accept, UpstreamProtocolError), (silent, UpstreamTimeout), (garbage, UpstreamProtocolError)]:
        client = ClientSide()
        async with backend(monkeypatch, handler) as dialler:
            start = trio.current_time()
            with pytest.raises(error):
                await tunnel.relay_tunnel(PERF, POOL, BACKEND, upgrade_request(), b"example.test", client)
            if error is UpstreamTimeout:
                assert trio.current_time() - start == pytest.approx(2.0)  # backend_timeout_ms
            with pytest.raises((trio.BrokenResourceError, trio.ClosedResourceError)):
                await dialler.peers[0].stream.send_all(b"x")  # the backend connection was closed
        assert client.opened_with is None


async def test_connect_failures_come_from_the_shared_dialler() -> None:
    """No monkeypatching: a closed port fails in tls.open_backend_stream like a pooled dial."""
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    target = BackendTarget(scheme="http", host="127.0.0.1", port=port)
    closed = SimpleNamespace(target=target, connect_target=target, authority=b"x")
    with pytest.raises(UpstreamConnectError, match=r"connect to http://127\.0\.0\.1:\d+ failed"):
        await tunnel.relay_tunnel(PERF, POOL, closed, upgrade_request(), b"example.test", ClientSide())
