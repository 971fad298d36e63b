"""Unit tests of the new-connection guard: token bucket arithmetic and Retry verdicts."""

from __future__ import annotations

import os

from aioquic.buffer import Buffer
from aioquic.quic.packet import QuicPacketType, QuicProtocolVersion, pull_quic_header

from spooky_trio.resilience.flood import NewConnectionGuard, TokenBucket, Verdict

ADDR = ("192.0.2.7", 4433)


def _header(token: bytes = b"", dcid: bytes | None = None):  # type: ignore[no-untyped-def]
    """A parsed client Initial header (what QuicListener._route hands the guard)."""
    from aioquic.quic.packet import encode_long_header_first_byte

    dcid = dcid or os.urandom(8)
    scid = os.urandom(8)
    buf = Buffer(capacity=1200)
    buf.push_uint8(encode_long_header_first_byte(QuicProtocolVersion.VERSION_1, QuicPacketType.INITIAL, 0))
    buf.push_uint32(QuicProtocolVersion.VERSION_1)
    buf.push_uint8(len(dcid))
    buf.push_bytes(dcid)
    buf.push_uint8(len(scid))
    buf.push_bytes(scid)
    buf.push_uint_var(len(token))
    buf.push_bytes(token)
    buf.push_uint_var(20)
    buf.push_bytes(bytes(20))
    return pull_quic_header(Buffer(data=buf.data), host_cid_length=8)


def test_bucket_starts_full_and_refills_at_rate() -> None:
    bucket = TokenBucket(rate=2, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(100.4) is False  # 0.8 of a token
    assert bucket.take(100.5) is True  # 1.0
    assert bucket.take(100.5) is False
    # a long pause refills to the burst size, not beyond
    assert [bucket.take(200.0) for _ in range(4)] == [True, True, True, False]


def test_bucket_clock_starts_at_first_take() -> None:
    bucket = TokenBucket(rate=1, burst=1)
    assert bucket.take(5000.0) is True
    assert bucket.take(5000.0) is False


def test_retry_when_empty_then_valid_token_is_admitted_without_a_bucket_token() -> None:
    guard = NewConnectionGuard(per_sec=1, burst=1, max_active=10, now=0.0)
    assert guard.admit(_header(), ADDR, 0, 0.0).verdict is Verdict.ADMIT
    first = _header()
    decision = guard.admit(first, ADDR, 1, 0.0)
    assert decision.verdict is Verdict.RETRY
    retry = pull_quic_header(Buffer(data=decision.reply), host_cid_length=8)
    assert retry.packet_type == QuicPacketType.RETRY
    assert retry.destination_cid == first.source_cid
    # the client repeats its Initial to the Retry's CID with the token
    again = _header(token=retry.token, dcid=retry.source_cid)
    admitted = guard.admit(again, ADDR, 1, 1.0)
    assert admitted.verdict is Verdict.ADMIT_VALIDATED
    assert admitted.original_destination_cid == first.destination_cid
    assert admitted.retry_source_cid == retry.source_cid
    assert guard.stats == {"rate_limited": 1, "retry_sent": 1, "retry_validated": 1, "retry_invalid": 0}


def test_token_bound_to_address_cid_and_lifetime() -> None:
    guard = NewConnectionGuard(per_sec=1, burst=0, max_active=10, now=0.0)
    decision = guard.admit(_header(), ADDR, 0, 0.0)
    retry = pull_quic_header(Buffer(data=decision.reply), host_cid_length=8)
    other_addr = ("192.0.2.8", 4433)
    assert guard.admit(_header(token=retry.token, dcid=retry.source_cid), other_addr, 0, 1.0).verdict is Verdict.INVALID_TOKEN
    assert guard.admit(_header(token=retry.token), ADDR, 0, 1.0).verdict is Verdict.INVALID_TOKEN  # wrong DCID
    assert guard.admit(_header(token=retry.token, dcid=retry.source_cid), ADDR, 0, 31.0).verdict is Verdict.INVALID_TOKEN  # expired
    assert guard.admit(_header(token=b"garbage" * 5, dcid=retry.source_cid), ADDR, 0, 1.0).verdict is Verdict.INVALID_TOKEN
    assert guard.stats["retry_invalid"] == 4


def test_cap_wins_over_tokens_and_valid_retry_tokens() -> None:
    guard = NewConnectionGuard(per_sec=1, burst=5, max_active=2, now=0.0)
    assert guard.admit(_header(), ADDR, 2, 0.0).verdict is Verdict.CAP
    assert guard.bucket.tokens == 5  # a capped Initial takes no token
    retry = pull_quic_header(Buffer(data=guard.retry_packet(_header(), ADDR, 0.0)), host_cid_length=8)
    assert guard.admit(_header(token=retry.token, dcid=retry.source_cid), ADDR, 2, 0.0).verdict is Verdict.CAP
