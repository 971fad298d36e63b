"""ingress/quic_engine.py: a connection past its handshake holds no TLS output buffer (the
handshake epochs' are discarded, the 1-RTT one has written the session ticket), shares the
per-frame-type epoch sets, and still works (sans-IO, a real aioquic client in memory)."""

from __future__ import annotations

from pathlib import Path

import pytest
from aioquic import tls
from aioquic.quic.events import ConnectionTerminated
from aioquic.quic.packet import QuicErrorCode
from aioquic.tls import SessionTicket

from tests.ingress.test_quic_acks import _connected


@pytest.mark.parametrize("tickets", [True, False], ids=["session-tickets", "no-tickets"])
def test_the_tls_output_buffers_are_released(tmp_path: Path, tickets: bool) -> None:
    issued: list[SessionTicket] = []
    client, server, now = _connected(tmp_path, max_streams_bidi=100, tickets=issued if tickets else None)
    assert len(issued) == (1 if tickets else 0)  # the ticket was written before its buffer went
    assert server._spaces[tls.Epoch.INITIAL].discarded and server._spaces[tls.Epoch.HANDSHAKE].discarded
    assert [server._crypto_buffers[epoch].capacity for epoch in (tls.Epoch.INITIAL, tls.Epoch.HANDSHAKE, tls.Epoch.ONE_RTT)] == [0, 0, 0]
    # the per-frame-type epoch sets are shared with every other connection
    (tmp_path / "b").mkdir()
    other = _connected(tmp_path / "b", max_streams_bidi=100)[1]
    assert all(a[1] is b[1] for a, b in zip(server._QuicConnection__frame_handlers.values(),
                                             other._QuicConnection__frame_handlers.values(), strict=True))
    # the connection still carries a request and its response both ways
    client.send_stream_data(0, b"request", end_stream=True)
    for data, _ in client.datagrams_to_send(now):
        server.receive_datagram(data, ("127.0.0.1", 1234), now)
    received = b""
    while (event := server.next_event()) is not None:
        received += getattr(event, "data", b"")
    assert received == b"request"
    server.send_stream_data(0, b"response", end_stream=True)
    for data, _ in server.datagrams_to_send(now):
        client.receive_datagram(data, ("127.0.0.1", 4433), now)
    answer = b""
    while (event := client.next_event()) is not None:
        answer += getattr(event, "data", b"")
    assert answer == b"response"


def test_a_post_handshake_tls_message_is_an_alert_not_a_write_to_a_released_buffer(tmp_path: Path) -> None:
    client, server, now = _connected(tmp_path, max_streams_bidi=100, tickets=[])
    # a KeyUpdate handshake message (forbidden in QUIC, RFC 9001 6) on the 1-RTT crypto stream
    client._crypto_streams[tls.Epoch.ONE_RTT].sender.write(b"\x18\x00\x00\x01\x00")
    for data, _ in client.datagrams_to_send(now):
        server.receive_datagram(data, ("127.0.0.1", 1234), now)
    closing = server._close_event  # the connection error aioquic closes with
    assert isinstance(closing, ConnectionTerminated)
    assert closing.error_code == QuicErrorCode.CRYPTO_ERROR + tls.AlertDescription.unexpected_message
