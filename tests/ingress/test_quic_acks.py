"""The server's acknowledgement policy (ingress/quic_engine.py), sans-IO: a real aioquic
client and our SpookyQuicConnection exchange datagrams in memory with explicit clocks.

RFC 9000 13.2: a lone ack-eliciting packet is acknowledged within max_ack_delay (we use
ACK_DELAY), an ACK rides along with response data sent before then, and every second
ack-eliciting packet is acknowledged at once."""

from __future__ import annotations

import pytest
from aioquic import tls
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import StreamDataReceived

from spooky_trio.devtools.devcerts import make_dev_certs
from spooky_trio.ingress.identities import IdentityStore, load_identity
from spooky_trio.ingress.quic_engine import ACK_DELAY, SpookyQuicConnection


@pytest.fixture
def pair(tmp_path):
    return _connected(tmp_path, max_streams_bidi=100)


def _connected(tmp_path, *, max_streams_bidi, tickets=None):
    """A handshaken client/server pair; ``tickets``: a list the client's session tickets
    are appended to (the server then issues them)."""
    make_dev_certs(tmp_path)
    identity = load_identity(str(tmp_path / "localhost.pem"), str(tmp_path / "localhost.key"))
    server_config = QuicConfiguration(is_client=False, alpn_protocols=["h3"])
    server_config.certificate = identity.certificate
    server_config.private_key = identity.private_key
    client_config = QuicConfiguration(is_client=True, alpn_protocols=["h3"], server_name="localhost")
    client_config.load_verify_locations(str(tmp_path / "ca.pem"))
    client = QuicConnection(configuration=client_config,
                            session_ticket_handler=tickets.append if tickets is not None else None)
    client.connect(("127.0.0.1", 4433), now=0.0)
    server = SpookyQuicConnection(
        configuration=server_config, original_destination_connection_id=client.original_destination_connection_id,
        identities=IdentityStore(identity, []), max_streams_bidi=max_streams_bidi, max_streams_uni=10,
        session_ticket_handler=(lambda ticket: None) if tickets is not None else None,
    )
    now = 0.0
    for _ in range(10):  # the handshake, in lock step
        now += 0.001
        moved = 0
        for src, dst, addr in ((client, server, ("127.0.0.1", 1234)), (server, client, ("127.0.0.1", 4433))):
            for data, _ in src.datagrams_to_send(now):
                dst.receive_datagram(data, addr, now)
                moved += 1
        if not moved and server._handshake_complete and client._handshake_complete:
            break
    assert server._handshake_complete and client._handshake_complete
    # settle: whatever ACKs are still due go out, so each test starts with nothing pending
    now += 1.0
    for src, dst, addr in ((client, server, ("127.0.0.1", 1234)), (server, client, ("127.0.0.1", 4433))):
        for data, _ in src.datagrams_to_send(now):
            dst.receive_datagram(data, addr, now)
    for data, _ in server.datagrams_to_send(now):
        client.receive_datagram(data, ("127.0.0.1", 4433), now)
    return client, server, now


def _client_sends(client: QuicConnection, server: SpookyQuicConnection, stream_id: int, now: float) -> None:
    client.send_stream_data(stream_id, b"request", end_stream=True)
    datagrams = client.datagrams_to_send(now)
    assert len(datagrams) == 1
    server.receive_datagram(datagrams[0][0], ("127.0.0.1", 1234), now)


def test_lone_request_ack_waits_then_rides_on_the_response(pair):
    client, server, now = pair
    _client_sends(client, server, 0, now)
    assert server.datagrams_to_send(now) == []  # aioquic alone would ACK after 1 ms
    assert server.get_timer() <= now + ACK_DELAY
    now += 0.005
    assert server.datagrams_to_send(now) == []  # still within the delay: nothing on its own
    server.send_stream_data(0, b"response", end_stream=True)
    datagrams = server.datagrams_to_send(now)
    assert len(datagrams) == 1
    client.receive_datagram(datagrams[0][0], ("127.0.0.1", 4433), now)
    # the client's request packet was acknowledged by that one datagram
    assert client._loss.bytes_in_flight == 0
    assert server._spaces[tls.Epoch.ONE_RTT].ack_at is None


def test_lone_packet_without_response_is_acked_after_the_delay(pair):
    client, server, now = pair
    _client_sends(client, server, 0, now)
    assert server.datagrams_to_send(now + ACK_DELAY / 2) == []
    timer = server.get_timer()
    assert now < timer <= now + ACK_DELAY
    datagrams = server.datagrams_to_send(timer)
    assert len(datagrams) == 1
    client.receive_datagram(datagrams[0][0], ("127.0.0.1", 4433), timer)
    assert client._loss.bytes_in_flight == 0


def test_second_ack_eliciting_packet_is_acked_at_once(pair):
    client, server, now = pair
    _client_sends(client, server, 0, now)
    assert server.datagrams_to_send(now) == []
    now += 0.002  # (past the client's pacer)
    _client_sends(client, server, 4, now)
    datagrams = server.datagrams_to_send(now)
    assert len(datagrams) == 1  # an ACK-only packet, long before ACK_DELAY
    client.receive_datagram(datagrams[0][0], ("127.0.0.1", 4433), now)
    assert client._loss.bytes_in_flight == 0
    # the count starts over: a third packet waits again
    now += 0.002
    _client_sends(client, server, 8, now)
    assert server.datagrams_to_send(now) == []


def test_plain_aioquic_would_send_a_separate_ack(pair):
    """The baseline this policy improves on: aioquic's 1 ms delay (guards the test itself)."""
    client, server, now = pair
    server._ack_delay = 0.001
    _client_sends(client, server, 0, now)
    assert server.get_timer() <= now + 0.001
    assert len(server.datagrams_to_send(now + 0.001)) == 1


# --- needs_transmit: a receive burst of STREAM/ACK frames with nothing waiting sends nothing ---


def test_request_packet_needs_no_transmit_but_a_ping_does(pair):
    client, server, now = pair
    _client_sends(client, server, 0, now)
    assert server.needs_transmit(now) is False  # the request's ACK is delayed; no reply yet
    assert server.datagrams_to_send(now) == []  # (what the skipped call would have returned)
    now += 0.002
    client.send_ping(7)
    datagrams = client.datagrams_to_send(now)
    server.receive_datagram(datagrams[0][0], ("127.0.0.1", 1234), now)
    assert server.needs_transmit(now) is True  # a PING (any non-STREAM/ACK frame) is "loud"
    server.datagrams_to_send(now)
    assert server.needs_transmit(now) is False  # reset by datagrams_to_send


def test_pending_response_data_or_due_ack_needs_transmit(pair):
    client, server, now = pair
    _client_sends(client, server, 0, now)
    server.send_stream_data(0, b"response", end_stream=True)
    assert server.needs_transmit(now) is True  # data queued
    server.datagrams_to_send(now)
    assert server.needs_transmit(now) is False
    _client_sends(client, server, 4, now + 0.002)
    now += 0.004
    _client_sends(client, server, 8, now)
    assert server.needs_transmit(now) is True  # the second ack-eliciting packet: ACK due now


def test_declared_loss_needs_transmit(pair):
    client, server, now = pair
    _client_sends(client, server, 0, now)
    server.send_stream_data(0, b"a" * 100)
    lost = server.datagrams_to_send(now)  # never delivered
    assert len(lost) == 1
    now += 0.002
    server.send_stream_data(0, b"b" * 100, end_stream=True)
    for data, _ in server.datagrams_to_send(now):
        client.receive_datagram(data, ("127.0.0.1", 4433), now)
    # the client acknowledges the later packets; three more make the first one lost (RFC 9002
    # packet threshold) when their ACK arrives
    for i in range(3):
        now += 0.002
        server.send_ping(i)
        for data, _ in server.datagrams_to_send(now):
            client.receive_datagram(data, ("127.0.0.1", 4433), now)
    now += 0.030  # past the client's ACK delay
    acks = client.datagrams_to_send(now)
    assert acks
    for data, _ in acks:
        server.receive_datagram(data, ("127.0.0.1", 1234), now)
    assert server.needs_transmit(now) is True  # the lost STREAM data is queued again
    resent = server.datagrams_to_send(now)
    assert resent


def _deliver(datagrams, dst: QuicConnection, addr: tuple[str, int], now: float) -> None:
    for data, _ in datagrams:
        dst.receive_datagram(data, addr, now)


def _after_burst(server: SpookyQuicConnection, client: QuicConnection, now: float) -> None:
    """The listener's rule (ingress/quic.py): after a receive burst, transmit only when
    needs_transmit says something may go out."""
    if server.needs_transmit(now):
        _deliver(server.datagrams_to_send(now), client, ("127.0.0.1", 4433), now)


def test_ack_that_finishes_a_stream_announces_the_freed_stream_credit(tmp_path):
    """A client that used all its stream credit queues the next request until MAX_STREAMS.
    aioquic discards a finished stream, and raises the credit, only while it builds packets:
    the client's ACK-only packet that finishes a response's stream must be followed by a
    transmit, or nothing else may ever prompt one and the queued request waits for the idle
    timeout (the stall of 200 concurrent requests against the default 100 streams)."""
    client, server, now = _connected(tmp_path, max_streams_bidi=1)
    client.send_stream_data(0, b"request", end_stream=True)
    client.send_stream_data(4, b"queued", end_stream=True)  # beyond the credit: aioquic holds it back
    now += 0.002
    _deliver(client.datagrams_to_send(now), server, ("127.0.0.1", 1234), now)
    _after_burst(server, client, now)
    received = {event.stream_id for event in iter(server.next_event, None) if isinstance(event, StreamDataReceived)}
    assert received == {0}
    server.send_stream_data(0, b"response", end_stream=True)  # (the response sink schedules this transmit)
    _deliver(server.datagrams_to_send(now), client, ("127.0.0.1", 4433), now)
    now += 0.030  # past the client's ACK delay: an ACK-only packet, the response's last one
    acks = client.datagrams_to_send(now)
    assert acks
    _deliver(acks, server, ("127.0.0.1", 1234), now)
    assert server.needs_transmit(now) is True  # stream 0 is finished: its discard frees credit
    _after_burst(server, client, now)
    now += 0.002
    _deliver(client.datagrams_to_send(now), server, ("127.0.0.1", 1234), now)
    received = {event.stream_id for event in iter(server.next_event, None) if isinstance(event, StreamDataReceived)}
    assert received == {4}  # the queued request went out on the credit the transmit announced


def test_finished_streams_with_credit_left_need_no_transmit(pair):
    """The converse keeps the receive path cheap: while the client still has most of its
    stream credit, aioquic batches MAX_STREAMS and a finished stream waits for the next
    transmit (a response) to be discarded."""
    client, server, now = pair
    _client_sends(client, server, 0, now)
    server.send_stream_data(0, b"response", end_stream=True)
    _deliver(server.datagrams_to_send(now), client, ("127.0.0.1", 4433), now)
    now += 0.030
    _deliver(client.datagrams_to_send(now), server, ("127.0.0.1", 1234), now)
    assert server._streams[0].is_finished  # (not discarded yet)
    assert server.needs_transmit(now) is False
