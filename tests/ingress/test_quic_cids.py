"""Our connection IDs replace aioquic's (ingress/quic_engine.py ``cid_source``): the initial
CID and every NEW_CONNECTION_ID come from the generator, and ``rotate_cids`` (a reload that
changed the QUIC-LB config) issues new ones with Retire Prior To so that the peer retires
every old one while the connection goes on. Sans-IO: a real aioquic client in memory."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import StreamDataReceived

from spooky_trio.devtools.devcerts import make_dev_certs
from spooky_trio.ingress.identities import IdentityStore, load_identity
from spooky_trio.ingress.quic_engine import SpookyQuicConnection

CLIENT, SERVER = ("127.0.0.1", 1234), ("127.0.0.1", 4433)


def _source(prefix: int) -> Callable[[], bytes]:
    counter: Iterator[int] = itertools.count()
    return lambda: bytes((prefix,)) + next(counter).to_bytes(7, "big")


def _exchange(client: QuicConnection, server: SpookyQuicConnection, now: float, rounds: int = 10) -> float:
    for _ in range(rounds):
        now += 0.03
        moved = 0
        for src, dst, addr in ((client, server, CLIENT), (server, client, SERVER)):
            for data, _ in src.datagrams_to_send(now):
                dst.receive_datagram(data, addr, now)
                moved += 1
        if not moved:
            break
    return now


@pytest.fixture
def pair(tmp_path):
    make_dev_certs(tmp_path)
    identity = load_identity(str(tmp_path / "localhost.pem"), str(tmp_path / "localhost.key"))
    server_config = QuicConfiguration(is_client=False, alpn_protocols=["h3"])
    server_config.certificate = identity.certificate
    server_config.private_key = identity.private_key
    client_config = QuicConfiguration(is_client=True, alpn_protocols=["h3"], server_name="localhost")
    client_config.load_verify_locations(str(tmp_path / "ca.pem"))
    client = QuicConnection(configuration=client_config)
    client.connect(SERVER, now=0.0)
    server = SpookyQuicConnection(
        configuration=server_config, original_destination_connection_id=client.original_destination_connection_id,
        identities=IdentityStore(identity, []), max_streams_bidi=100, max_streams_uni=10, cid_source=_source(0xAA),
    )
    now = _exchange(client, server, 0.0)
    assert server._handshake_complete and client._handshake_complete
    return client, server, now


def _client_peer_cids(client: QuicConnection) -> list[bytes]:
    return [client._peer_cid.cid] + [c.cid for c in client._peer_cid_available]


def test_every_cid_we_issue_comes_from_the_generator(pair) -> None:
    client, server, _now = pair
    assert server.host_cid[0] == 0xAA
    issued = [c.cid for c in server._host_cids]
    assert len(issued) >= 2 and all(cid[0] == 0xAA for cid in issued)  # initial + NEW_CONNECTION_ID
    assert all(cid[0] == 0xAA for cid in _client_peer_cids(client))
    assert len(_client_peer_cids(client)) == len(issued)


def test_rotation_retires_every_old_cid_without_dropping_the_connection(pair) -> None:
    client, server, now = pair
    server.rotate_cids(_source(0xBB))
    now = _exchange(client, server, now)
    # the client switched to a new CID and retired every old one (Retire Prior To)
    assert _client_peer_cids(client) and all(cid[0] == 0xBB for cid in _client_peer_cids(client))
    assert all(c.cid[0] == 0xBB for c in server._host_cids)
    # and the connection still carries a request
    client.send_stream_data(0, b"ping", end_stream=True)
    now = _exchange(client, server, now)
    got = []
    while (event := server.next_event()) is not None:
        if isinstance(event, StreamDataReceived):
            got.append(event.data)
    assert b"ping" in got
    assert client._close_event is None and server._close_event is None
