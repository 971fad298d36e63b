"""The HTTP/3 pool without the proxy: streams within the peer's MAX_STREAMS (waiting in our
queue, never in aioquic's), connections up to the configured count, idle close, GOAWAY,
resent refusals, trailers and request bodies, no 0-RTT. Real QUIC servers on 127.0.0.1:
ngtcp2's gtlsserver, hypercorn, and the scripted aioquic server of the client tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio

from spooky_trio.upstream import BackendTarget, UpstreamConnectError, UpstreamPool, UpstreamProtocolError, make_client_ssl_context
from spooky_trio.upstream.h2_state import ConnState
from spooky_trio.upstream.h3 import quic_configuration
from tests.clients.scripted_h3 import ScriptedH3Server
from tests.support.backends import pattern_bytes, run_backend
from tests.support.h3_servers import run_gtlsserver
from tests.upstream.conftest import chunks, fetch, request


def h3_target(port: int, certs_dir: Path, *, host: str = "localhost") -> BackendTarget:
    context = make_client_ssl_context(ca_file=str(certs_dir / "ca.pem"))
    return BackendTarget(scheme="https", host=host, port=port, ssl_context=context, server_name=host, protocol="h3")


@pytest.fixture
async def h3pool(nursery: trio.Nursery) -> AsyncIterator[UpstreamPool]:
    upstream = UpstreamPool()
    await nursery.start(upstream.run)
    yield upstream


def stat(pool: UpstreamPool, event: str, target: BackendTarget) -> int:
    return pool.h3.stats[(event, str(target))]


async def test_a_stream_beyond_max_streams_waits_in_the_pool_not_in_aioquic(h3pool: UpstreamPool, certs_dir: Path, tmp_path: Path) -> None:
    """One connection allowed, the backend allows 10 streams: with 10 uploads in progress
    (their streams open at the backend) an 11th request is not sent (the session opens no
    stream the peer has not allowed) and waits, counted; when one upload ends and the
    backend raises MAX_STREAMS it goes out."""
    h3pool.h3.max_connections = 1
    async with run_gtlsserver(certs_dir, tmp_path / "www", files={"a.txt": b"a"}, args=["--max-streams-bidi=10"]) as gtls:
        target = h3_target(gtls.port, certs_dir)
        async with trio.open_nursery() as nursery:
            release = [trio.Event() for _ in range(10)]

            async def upload(index: int) -> None:
                async def body() -> AsyncIterator[bytes]:
                    yield b"x"
                    await release[index].wait()

                result = await fetch(h3pool, target, request("POST", "/a.txt", body=body()), connect_timeout=5, response_timeout=5)
                assert result.status == 200 and result.http_version == "3"

            for index in range(10):
                nursery.start_soon(upload, index)
            with trio.fail_after(5):
                while not h3pool.h3.sessions(target) or h3pool.h3.sessions(target)[0].active_streams < 10:
                    await trio.sleep(0.01)
            (session,) = h3pool.h3.sessions(target)
            assert not session.can_open_stream
            done = trio.Event()

            async def eleventh() -> None:
                assert (await fetch(h3pool, target, request("GET", "/a.txt"), connect_timeout=10)).body == b"a"
                done.set()

            nursery.start_soon(eleventh)
            with trio.fail_after(5):
                while stat(h3pool, "stream_wait", target) == 0:
                    await trio.sleep(0.01)
            assert session.active_streams == 10 and not done.is_set()
            release[0].set()
            with trio.fail_after(10):
                await done.wait()
            for event in release:
                event.set()
        assert stat(h3pool, "dial", target) == 1


async def test_more_connections_up_to_the_limit_then_a_bounded_wait(h3pool: UpstreamPool, certs_dir: Path) -> None:
    """``max_streams`` 2 per connection, 2 connections: four exchanges use two sessions;
    a fifth waits at most the connect timeout and fails ``stream_wait`` (nothing sent)."""
    h3pool.h3.max_streams, h3pool.h3.max_connections = 2, 2
    async with run_backend(name="h3", tls=True, quic=True, certfile=certs_dir / "localhost.pem", keyfile=certs_dir / "localhost.key") as backend:
        target = h3_target(backend.port, certs_dir)
        async with trio.open_nursery() as nursery:
            release = trio.Event()
            opened = trio.Semaphore(0)

            async def hold() -> None:
                async with h3pool.exchange(target, request("GET", "/echo"), connect_timeout=5, response_timeout=5):
                    opened.release()
                    await release.wait()

            for _ in range(4):
                nursery.start_soon(hold)
            for _ in range(4):
                await opened.acquire()
            assert sorted(s.active_streams for s in h3pool.h3.sessions(target)) == [2, 2]
            with pytest.raises(UpstreamConnectError) as info:
                await fetch(h3pool, target, request("GET", "/echo"), connect_timeout=0.3)
            assert info.value.reason == "stream_wait"
            assert len(backend.requests) == 4
            release.set()
        assert (await fetch(h3pool, target, request("GET", "/echo"))).status == 200
        assert stat(h3pool, "dial", target) == 2


async def test_idle_sessions_close(certs_dir: Path, nursery: trio.Nursery) -> None:
    upstream = UpstreamPool()
    upstream.h3.idle_timeout = 0.2
    await nursery.start(upstream.run)
    async with run_backend(name="h3", tls=True, quic=True, certfile=certs_dir / "localhost.pem", keyfile=certs_dir / "localhost.key") as backend:
        target = h3_target(backend.port, certs_dir)
        assert (await fetch(upstream, target, request("GET", "/echo"))).status == 200
        (session,) = upstream.h3.sessions(target)
        with trio.fail_after(5):
            while upstream.h3.sessions(target):
                await trio.sleep(0.05)
        assert session.state in (ConnState.CLOSING, ConnState.FAILED)


async def test_goaway_drains_and_the_next_request_redials(h3pool: UpstreamPool, certs_dir: Path, nursery: trio.Nursery) -> None:
    server = ScriptedH3Server(certs_dir)
    await nursery.start(server.run)
    target = h3_target(server.port, certs_dir)
    assert (await fetch(h3pool, target, request("GET", "/goaway"))).body == b"ok"
    with trio.fail_after(5):
        while h3pool.h3.sessions(target):  # it leaves the pool once the GOAWAY is read
            await trio.sleep(0.01)
    assert (await fetch(h3pool, target, request("GET", "/echo"))).status == 200
    assert stat(h3pool, "dial", target) == 2 and stat(h3pool, "goaway", target) == 1


async def test_a_refused_stream_is_resent_once_on_another_connection(h3pool: UpstreamPool, certs_dir: Path, nursery: trio.Nursery) -> None:
    """H3_REQUEST_REJECTED means "not processed": a bodiless request goes out once more on
    a fresh connection; refused again, it fails. A POST with a body is never resent."""
    server = ScriptedH3Server(certs_dir)
    await nursery.start(server.run)
    target = h3_target(server.port, certs_dir)
    with pytest.raises(UpstreamProtocolError, match="REQUEST_REJECTED"):
        await fetch(h3pool, target, request("GET", "/reject"))
    assert server.paths == [b"/reject", b"/reject"]
    assert stat(h3pool, "resent", target) == 1 and stat(h3pool, "dial", target) == 2
    with pytest.raises(UpstreamProtocolError):
        await fetch(h3pool, target, request("POST", "/reject", body=chunks(b"abc"), length=3))
    assert server.paths.count(b"/reject") == 3


async def test_trailers_and_a_streamed_request_body(h3pool: UpstreamPool, certs_dir: Path, nursery: trio.Nursery) -> None:
    server = ScriptedH3Server(certs_dir)
    await nursery.start(server.run)
    target = h3_target(server.port, certs_dir)
    result = await fetch(h3pool, target, request("GET", "/trailers"))
    assert result.body == b"with trailers" and (b"grpc-status", b"0") in result.trailers
    payload = pattern_bytes(3 * 1024 * 1024)
    result = await fetch(h3pool, target, request("POST", "/echo", body=chunks(payload), length=len(payload)), response_timeout=30)
    assert result.body == payload


async def test_no_session_ticket_and_no_stream_before_the_handshake(certs_dir: Path) -> None:
    """0-RTT is never used: no ticket is offered, and a session opens streams only once
    its handshake completed (OPEN), so no request can be early data."""
    target = h3_target(443, certs_dir)
    config = quic_configuration(target, idle_timeout=30)
    assert config.session_ticket is None and config.alpn_protocols == ["h3"]
    assert config.server_name == "localhost" and config.cadata is not None and b"BEGIN CERTIFICATE" in config.cadata
    no_sni = attrs.evolve(target, server_name=None)
    assert quic_configuration(no_sni, idle_timeout=30).server_name is None


async def test_a_session_that_is_not_open_takes_no_stream(h3pool: UpstreamPool, certs_dir: Path, nursery: trio.Nursery) -> None:
    server = ScriptedH3Server(certs_dir)
    await nursery.start(server.run)
    target = h3_target(server.port, certs_dir)
    assert (await fetch(h3pool, target, request("GET", "/echo"))).status == 200
    (session,) = h3pool.h3.sessions(target)
    session.state = ConnState.STARTING  # as during the handshake
    assert session.try_open_stream(request("GET", "/echo")) is None
    session.state = ConnState.OPEN


async def test_a_raised_stream_budget_wakes_the_pool(h3pool: UpstreamPool, certs_dir: Path, nursery: trio.Nursery) -> None:
    """A MAX_STREAMS frame that raises the budget after streams were opened and released
    (the order a busy backend produces) still tells the pool, whose waiters retry."""
    server = ScriptedH3Server(certs_dir)
    await nursery.start(server.run)
    target = h3_target(server.port, certs_dir)
    assert (await fetch(h3pool, target, request("GET", "/echo"))).status == 200
    (session,) = h3pool.h3.sessions(target)
    told: list[object] = []
    pool_callback = session._on_change
    session._on_change = told.append  # type: ignore[method-assign]
    stream = session.try_open_stream(request("GET", "/echo"))
    assert stream is not None
    quic = session._quic
    budget = quic.bidi_streams_available()
    quic.bidi_streams_available = lambda: budget + 1  # type: ignore[method-assign]  # as after MAX_STREAMS
    session._process_events()
    assert told == [session]
    del quic.bidi_streams_available  # type: ignore[attr-defined]
    session._on_change = pool_callback  # type: ignore[method-assign]
    session.release(stream)
