"""``quic_lb`` on a live listener: every CID the server issues carries the configured config
rotation bits and server ID, and a reload that changes ``config_id`` (same CID length) gives
open connections new CIDs and retires the old ones (Retire Prior To) without dropping them."""

from __future__ import annotations

from pathlib import Path

import trio

from spooky_trio.clients.h3 import H3Client
from spooky_trio.ingress.quic_lb import QuicLbCodec
from tests.support.backends import run_backend
from tests.support.proxy import free_udp_port, h1_pool, proxy_yaml, running_proxy

KEY = "8f95f09245765f80256934e50c66207f"


def _config(backend_url: str, certs_dir: Path, port: int, key_file: Path, config_id: int, nonce_length: int = 5) -> str:
    text = proxy_yaml(h1_pool(backend_url), certs_dir=certs_dir, port=port)
    block = f"  quic_lb: {{config_id: {config_id}, server_id: '0x31441a', nonce_length: {nonce_length}, key_file: {key_file}}}\n"
    return text.replace("upstream:\n", block + "upstream:\n", 1)


def _peer_cids(client: H3Client) -> list[bytes]:
    quic = client._quic
    return [quic._peer_cid.cid] + [c.cid for c in quic._peer_cid_available]


async def test_cids_carry_the_server_id_and_a_config_change_rotates_them(certs_dir: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "lb.key"
    key_file.write_text(KEY + "\n")
    decoder = {cid: QuicLbCodec(config_id=cid, server_id=bytes(3), nonce_length=5, key=bytes.fromhex(KEY)) for cid in (1, 2)}
    port = free_udp_port()
    config_path = tmp_path / "spooky.yaml"
    async with run_backend(name="lb") as backend:
        config_path.write_text(_config(backend.url, certs_dir, port, key_file, 1))
        async with running_proxy(config_path.read_text(), config_path=config_path) as server:
            async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=str(certs_dir / "ca.pem")) as client:
                assert (await client.request("GET", "/echo", authority="localhost")).status == 200
                before = _peer_cids(client)
                assert len(before) >= 2
                for cid in before:  # the initial CID and every NEW_CONNECTION_ID one
                    assert decoder[1].decode(cid) is not None and decoder[1].decode(cid)[0] == bytes.fromhex("31441a")
                config_path.write_text(_config(backend.url, certs_dir, port, key_file, 2))
                assert (await server.reloads.reload_file("test")).status == 200
                unroutable = server.listeners[0].stats["unroutable"]
                with trio.fail_after(5):
                    while any(cid[0] >> 5 != 2 for cid in _peer_cids(client)):  # the client retired every old one
                        assert (await client.request("GET", "/echo", authority="localhost")).status == 200
                        await trio.sleep(0.05)
                # its first packet on a new CID already reached the connection
                assert server.listeners[0].stats["unroutable"] == unroutable
                for cid in _peer_cids(client):
                    assert decoder[2].decode(cid) is not None and decoder[2].decode(cid)[0] == bytes.fromhex("31441a")
                assert not set(before) & set(_peer_cids(client))
                assert (await client.request("GET", "/echo", authority="localhost")).status == 200  # same connection
            # a new connection gets the new config from its first CID
            async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=str(certs_dir / "ca.pem")) as client:
                assert (await client.request("GET", "/echo", authority="localhost")).status == 200
                assert all(cid[0] >> 5 == 2 for cid in _peer_cids(client))


async def test_a_new_cid_length_leaves_open_connections_their_cids(certs_dir: Path, tmp_path: Path) -> None:
    """aioquic parses a connection's short headers with the length it started with: a reload
    that changes the length gives new connections the new one and leaves open ones theirs,
    which the listener still routes."""
    key_file = tmp_path / "lb.key"
    key_file.write_text(KEY + "\n")
    port = free_udp_port()
    config_path = tmp_path / "spooky.yaml"
    async with run_backend(name="lb") as backend:
        config_path.write_text(_config(backend.url, certs_dir, port, key_file, 1))
        async with running_proxy(config_path.read_text(), config_path=config_path) as server:
            async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=str(certs_dir / "ca.pem")) as old:
                assert (await old.request("GET", "/echo", authority="localhost")).status == 200
                config_path.write_text(_config(backend.url, certs_dir, port, key_file, 2, nonce_length=8))
                assert (await server.reloads.reload_file("test")).status == 200
                async with H3Client.connect("127.0.0.1", port, server_name="localhost", cafile=str(certs_dir / "ca.pem")) as new:
                    for _ in range(3):
                        assert (await old.request("GET", "/echo", authority="localhost")).status == 200
                        assert (await new.request("GET", "/echo", authority="localhost")).status == 200
                    assert {len(cid) for cid in _peer_cids(old)} == {1 + 3 + 5}
                    assert {len(cid) for cid in _peer_cids(new)} == {1 + 3 + 8}
                    assert all(cid[0] >> 5 == 2 for cid in _peer_cids(new))
