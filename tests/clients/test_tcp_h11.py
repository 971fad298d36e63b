"""``spooky-trio request --http 1.1`` on the upstream HTTP/1.1 client: clients.tcp.exchange_h11
against a scripted server on a memory stream (no sockets)."""

from __future__ import annotations

import pytest
import trio

from spooky_trio.clients.errors import TcpClientError
from spooky_trio.clients.tcp import Headers, exchange_h11
from tests.upstream.h1_peer import Peer, ReceivedRequest


class Collected:
    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def start(self, http_version: str, status: int, headers: Headers) -> None:
        self.events.append(("start", http_version, status, headers))

    def data(self, chunk: bytes) -> None:
        self.events.append(("data", chunk))

    def end(self, trailers: Headers) -> None:
        self.events.append(("end", trailers))


async def run(answer: bytes, *, method: str = "GET", headers: Headers | None = None, body: bytes | None = None) -> tuple[ReceivedRequest, Collected]:
    client, server = trio.testing.memory_stream_pair()
    peer, sink = Peer(server), Collected()

    async def serve() -> None:
        await peer.read_request()
        await peer.send(answer)
        await peer.stream.aclose()

    failure: TcpClientError | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        try:
            await exchange_h11(client, "proxy.test:443", method, "proxy.test", "/p?q=1", headers or [], body, sink)
        except TcpClientError as exc:  # raised below, outside the nursery
            failure = exc
    if failure is not None:
        raise failure
    return peer.requests[0], sink


async def test_request_head_and_streamed_response() -> None:
    sent, sink = await run(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nx-t: 1\r\n\r\n",
        headers=[(b"x-probe", b"1")],
    )
    assert (sent.method, sent.target) == (b"GET", b"/p?q=1")
    assert sent.headers == [(b"host", b"proxy.test"), (b"x-probe", b"1"), (b"connection", b"close")]
    assert sink.events == [("start", "1.1", 200, [(b"transfer-encoding", b"chunked")]), ("data", b"hi"), ("end", [(b"x-t", b"1")])]


async def test_body_framing_and_overrides() -> None:
    sent, _ = await run(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n", method="POST", body=b"payload")
    assert sent.body == b"payload" and (b"content-length", b"7") in sent.headers
    sent, _ = await run(
        b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n",
        method="PUT",
        body=b"payload",
        headers=[(b"Host", b"other.test"), (b"Transfer-Encoding", b"chunked"), (b"Connection", b"keep-alive")],
    )
    assert sent.body == b"payload" and sent.headers[0] == (b"host", b"other.test")
    assert (b"transfer-encoding", b"chunked") in sent.headers and (b"connection", b"close") not in sent.headers


@pytest.mark.parametrize("answer", [b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", b"garbage\r\n\r\n", b""])
async def test_broken_answers_are_one_line_client_errors(answer: bytes) -> None:
    with pytest.raises(TcpClientError) as info:
        await run(answer)
    assert "proxy.test:443" in str(info.value) and "\n" not in str(info.value)
