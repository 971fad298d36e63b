"""QUIC-LB CIDs: the draft's test vectors for every mode (draft-ietf-quic-load-balancers-21,
appendix "Load Balancer Test Vectors" and the four-pass "Encryption Example"), and the
encode/decode round trip for random server IDs and nonces."""

from __future__ import annotations

import os
import random

import pytest

from spooky_trio.ingress.quic_lb import QuicLbCodec, QuicLbError, expand

KEY = bytes.fromhex("8f95f09245765f80256934e50c66207f")


def _codec(cr: int, sid: str, nonce_len: int, key: bytes | None, **kw: object) -> QuicLbCodec:
    return QuicLbCodec(config_id=cr, server_id=bytes.fromhex(sid), nonce_length=nonce_len, key=key,
                       self_encode_length=True, **kw)  # type: ignore[arg-type]


def test_expand_is_the_drafts_example() -> None:
    assert expand(0x06, 0x02, bytes.fromhex("aaba3c")) == bytes.fromhex("aaba3c00000000000000000000000602")


@pytest.mark.parametrize(
    ("cr", "sid", "nonce", "cid"),
    [
        (0, "c4605e", "4504cc4f", "07c4605e4504cc4f"),
        # the draft prints this nonce with nine hex digits (a lost digit); the CID's length
        # (11 octets, first octet 0x2a = rotation 1, 10 octets follow) fixes it as 5 octets
        (1, "350d28b420", "3487d9700b", "2a350d28b4203487d9700b"),
    ],
)
def test_unencrypted_vectors(cr: int, sid: str, nonce: str, cid: str) -> None:
    codec = _codec(cr, sid, len(nonce) // 2, None)
    assert codec.encode(bytes.fromhex(nonce)).hex() == cid
    assert codec.decode(bytes.fromhex(cid)) == (bytes.fromhex(sid), bytes.fromhex(nonce))


@pytest.mark.parametrize(
    ("cr", "sid", "nonce", "cid"),
    [
        (0, "ed793a", "ee080dbf", "0720b1d07b359d3c"),  # four-pass, odd length
        (1, "ed793a51d49b8f5fab65", "ee080dbf48", "2fcc381bc74cb4fbad2823a3d1f8fed2"),  # sid > nonce
        (2, "ed793a51d49b8f5f", "ee080dbf48c0d1e5", "504dd2d05a7b0de9b2b9907afb5ecf8cc3"),  # single pass
        # printed with first octet 0x12, which contradicts its own cr_bits 3 and 18 octets
        # (section 3: (3 << 5) | 18 = 0x72); the 18 encrypted octets are the draft's
        (3, "ed793a51d49b8f5fab", "ee080dbf48c0d1e55d", "725779c9cc86beb3a3a4a3ca96fce4bfe0cdbc"),
    ],
)
def test_encrypted_vectors(cr: int, sid: str, nonce: str, cid: str) -> None:
    codec = _codec(cr, sid, len(nonce) // 2, KEY)
    assert codec.encode(bytes.fromhex(nonce)).hex() == cid
    assert codec.decode(bytes.fromhex(cid)) == (bytes.fromhex(sid), bytes.fromhex(nonce))


def test_four_pass_encryption_example() -> None:
    codec = _codec(0, "31441a", 4, bytes.fromhex("fdf726a9893ec05c0632d3956680baf0"))
    assert codec.encode(bytes.fromhex("9c69c275")).hex() == "0767947d29be054a"


@pytest.mark.parametrize("key", [None, KEY], ids=["plaintext", "encrypted"])
def test_round_trip_random_server_ids_and_nonces(key: bytes | None) -> None:
    rng = random.Random(23)
    for _ in range(400):
        sid_len = rng.randint(1, 14)
        nonce_len = rng.randint(4, 18 - sid_len)
        sid = os.urandom(sid_len)
        workers = rng.choice([1, 2, 4, 32])
        worker = rng.randrange(workers)
        codec = QuicLbCodec(config_id=rng.randrange(7), server_id=sid, nonce_length=nonce_len, key=key,
                            self_encode_length=rng.random() < 0.5, worker=worker, workers=workers)
        nonce = os.urandom(nonce_len)
        cid = codec.encode(nonce)
        assert len(cid) == codec.length <= 20
        assert codec.decode(cid) == (sid, nonce)
        fresh = codec.new_cid()
        decoded = codec.decode(fresh)
        assert decoded is not None and decoded[0] == sid
        assert codec.worker_of(fresh) == (worker if workers > 1 else None)
        if workers > 1:
            assert decoded[1][0] == worker  # the nonce leads with the worker: no two workers collide


def test_limits_are_the_drafts() -> None:
    for kwargs in (
        dict(config_id=7, server_id=b"\x01", nonce_length=4),
        dict(config_id=0, server_id=b"", nonce_length=4),
        dict(config_id=0, server_id=b"\x01", nonce_length=3),
        dict(config_id=0, server_id=bytes(10), nonce_length=10),
        dict(config_id=0, server_id=b"\x01", nonce_length=4, key=bytes(15)),
        dict(config_id=0, server_id=b"\x01", nonce_length=4, workers=33),
    ):
        with pytest.raises(QuicLbError):
            QuicLbCodec(**kwargs)  # type: ignore[arg-type]
