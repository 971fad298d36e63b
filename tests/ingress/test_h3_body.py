"""H3RequestBody hands queued chunks over together (one upstream write per receive burst
instead of one per QUIC packet) and reports the consumed stream offset of the last one."""

from __future__ import annotations

from spooky_trio.ingress.h3 import BODY_COALESCE_BYTES, H3RequestBody


class _Conn:
    def __init__(self) -> None:
        self.consumed: list[int] = []

    def body_consumed(self, stream_id: int, offset: int) -> None:
        self.consumed.append(offset)


async def test_queued_chunks_are_coalesced_up_to_the_bound() -> None:
    conn = _Conn()
    body = H3RequestBody(conn, 0)  # type: ignore[arg-type]
    packet = b"x" * 1200
    count = 2 * BODY_COALESCE_BYTES // len(packet) + 3
    for i in range(count):
        body.feed(packet, i == count - 1, (i + 1) * len(packet))
    received = []
    while chunk := await body.receive():
        received.append(chunk)
    assert b"".join(received) == packet * count
    assert len(received) == 3  # two full hand-overs and the rest
    assert all(BODY_COALESCE_BYTES <= len(c) < BODY_COALESCE_BYTES + len(packet) for c in received[:2])
    assert conn.consumed[-1] == count * len(packet)  # the window follows the last chunk handed over
    assert conn.consumed == sorted(conn.consumed)


async def test_a_single_queued_chunk_is_returned_as_is() -> None:
    conn = _Conn()
    body = H3RequestBody(conn, 4)  # type: ignore[arg-type]
    body.feed(b"hello", False, 5)
    assert await body.receive() == b"hello"
    assert conn.consumed == [5]
