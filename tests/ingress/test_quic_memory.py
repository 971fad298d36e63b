"""ingress/quic_engine.py: a connection past its handshake holds no TLS output buffer for
the discarded epochs, and still works (sans-IO, a real aioquic client in memory)."""

from __future__ import annotations

from aioquic import tls
from aioquic.quic.connection import QuicConnection

from spooky_trio.ingress.quic_engine import SpookyQuicConnection
from tests.ingress.test_quic_acks import pair  # noqa: F401  (the fixture: a handshaken pair)


def test_the_handshake_epochs_buffers_are_released(pair: tuple[QuicConnection, SpookyQuicConnection, float]) -> None:  # noqa: F811
    client, server, now = pair
    assert server._spaces[tls.Epoch.INITIAL].discarded and server._spaces[tls.Epoch.HANDSHAKE].discarded
    assert server._crypto_buffers[tls.Epoch.INITIAL].capacity == 0
    assert server._crypto_buffers[tls.Epoch.HANDSHAKE].capacity == 0
    assert server._crypto_buffers[tls.Epoch.ONE_RTT].capacity > 0  # post-handshake messages (tickets)
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
