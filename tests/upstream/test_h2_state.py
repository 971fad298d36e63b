"""The upstream HTTP/2 connection's state table (upstream/h2_state.py), alone and as
H2Connection walks it against a scripted h2 server over trio.testing memory streams."""

from __future__ import annotations

import ssl

import h2.config
import h2.connection
import h2.events
import pytest
import trio
import trio.testing
from hyperframe.frame import GoAwayFrame

from spooky_trio.upstream.common import BackendTarget
from spooky_trio.upstream.h2 import H2Connection
from spooky_trio.upstream.h2_state import TRANSITIONS, ConnInput, ConnState, next_state
from tests.upstream.conftest import request

S, I = ConnState, ConnInput
settle = trio.testing.wait_all_tasks_blocked


def test_every_state_takes_settings_drain_and_fail() -> None:
    for state in ConnState:
        for event in (I.SETTINGS, I.DRAIN, I.FAIL):
            assert event in TRANSITIONS[state], (state, event)
        assert next_state(state, I.FAIL) is S.FAILED


def test_the_walk_and_what_each_input_does() -> None:
    assert next_state(S.STARTING, I.SETTINGS) is S.OPEN
    assert next_state(S.OPEN, I.SETTINGS) is S.OPEN
    assert next_state(S.STARTING, I.DRAIN) is S.DRAINING  # GOAWAY before SETTINGS
    assert next_state(S.OPEN, I.DRAIN) is S.DRAINING
    assert next_state(S.DRAINING, I.GOAWAY_SENT) is S.CLOSING
    assert next_state(S.CLOSING, I.DRAIN) is S.CLOSING  # a second close() sends nothing more
    assert {next_state(S.FAILED, event) for event in (I.SETTINGS, I.DRAIN, I.FAIL)} == {S.FAILED}


@pytest.mark.parametrize("state", [S.STARTING, S.OPEN, S.CLOSING, S.FAILED])
def test_goaway_is_sent_only_from_draining(state: ConnState) -> None:
    with pytest.raises(RuntimeError, match="GOAWAY_SENT in state"):
        next_state(state, I.GOAWAY_SENT)


class ScriptedServer:
    """The server end of a memory stream pair, driven by the test one step at a time."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.h2.initiate_connection()  # its SETTINGS wait until send()

    async def send(self, extra: bytes = b"") -> None:
        await self.stream.send_all(self.h2.data_to_send() + extra)
        await settle()

    async def events(self) -> list[h2.events.Event]:
        await settle()
        return self.h2.receive_data(await self.stream.receive_some())


async def test_a_connection_walks_starting_open_draining_closing_failed(nursery: trio.Nursery) -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    server = ScriptedServer(server_end)
    closed: list[H2Connection] = []
    target = BackendTarget(scheme="https", host="backend.test", port=443, ssl_context=ssl.create_default_context())
    conn = H2Connection(target, client_end, on_idle=lambda c: None, on_closed=closed.append)
    await nursery.start(conn.run)

    assert any(isinstance(e, h2.events.RemoteSettingsChanged) for e in await server.events())
    assert conn.state is S.STARTING and not conn.ready.is_set() and not conn.can_open_stream

    await server.send()  # the server's SETTINGS
    assert conn.state is S.OPEN and conn.ready.is_set() and conn.can_open_stream
    stream = conn.try_open_stream(request("GET", "/"))
    assert stream is not None and stream.stream_id == 1
    assert any(isinstance(e, h2.events.RequestReceived) for e in await server.events())

    # GOAWAY naming stream 1: it may finish, nothing new may start
    await server.send(GoAwayFrame(stream_id=0, last_stream_id=1, error_code=0).serialize())
    assert conn.state is S.DRAINING and not conn.can_open_stream
    assert conn.try_open_stream(request("GET", "/other")) is None

    server.h2.send_headers(1, [(b":status", b"200")], end_stream=True)
    await server.send()
    await stream.wait_head()
    assert stream.status == 200 and stream.complete

    conn.release(stream)  # the last stream: our GOAWAY, then the writer ends the connection
    assert conn.state is S.CLOSING
    assert any(isinstance(e, h2.events.ConnectionTerminated) for e in await server.events())
    await settle()
    assert closed == [conn] and conn.state is S.FAILED and conn.failure is not None


async def test_a_failure_before_settings_makes_the_connection_ready_and_failed(nursery: trio.Nursery) -> None:
    """The pool waits for ``ready``; a connection that dies first must wake it (and say why)."""
    client_end, server_end = trio.testing.memory_stream_pair()
    target = BackendTarget(scheme="https", host="backend.test", port=443, ssl_context=ssl.create_default_context())
    conn = H2Connection(target, client_end, on_idle=lambda c: None, on_closed=lambda c: None)
    await nursery.start(conn.run)
    await server_end.aclose()  # the server hangs up before its SETTINGS
    await conn.ready.wait()
    assert conn.state is S.FAILED and conn.failure is not None and not conn.can_open_stream
