"""Worker steering pieces without processes: where the worker index sits in each CID scheme,
the kernel program steering real sockets of one reuseport group, and the hand-over framing."""

from __future__ import annotations

import os
import select
import socket

import pytest

from spooky_trio.ingress.cids import RandomCids
from spooky_trio.ingress.quic_lb import QuicLbCodec
from spooky_trio.ingress.steering import WorkerSteering, attach_cbpf


@pytest.mark.parametrize(
    "make",
    [
        lambda w: RandomCids(w, 4),
        lambda w: QuicLbCodec(config_id=1, server_id=b"\x0a\x0b", nonce_length=6, key=bytes(16), worker=w, workers=4),
        lambda w: QuicLbCodec(config_id=1, server_id=b"\x0a\x0b", nonce_length=6, key=bytes(16), worker=w, workers=4,
                              self_encode_length=True),
    ],
    ids=["random", "quic-lb", "quic-lb-self-encoded"],
)
def test_every_scheme_names_its_worker_where_the_kernel_reads(make) -> None:  # type: ignore[no-untyped-def]
    for worker in range(4):
        scheme = make(worker)
        for _ in range(50):
            cid = scheme.new_cid()
            assert len(cid) == scheme.length and scheme.worker_of(cid) == worker
            assert cid[scheme.worker_offset] & scheme.worker_mask == worker


def test_one_process_cids_name_no_worker() -> None:
    scheme = RandomCids()
    assert scheme.worker_of(scheme.new_cid()) is None
    assert len({scheme.new_cid()[0] for _ in range(200)}) > 100  # all random, as aioquic's


def test_the_kernel_program_steers_short_headers_and_hashes_the_rest() -> None:
    socks = []
    try:
        for _ in range(3):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("127.0.0.1", socks[0].getsockname()[1] if socks else 0))
            socks.append(sock)
        if attach_cbpf(socks[0], 0, 0xFF) is not None:
            pytest.skip("SO_ATTACH_REUSEPORT_CBPF is not available here (hand-over mode covers it)")
        port = socks[0].getsockname()[1]

        def lands(datagram: bytes) -> int:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.sendto(datagram, ("127.0.0.1", port))
            ready, _, _ = select.select(socks, [], [], 2)
            assert len(ready) == 1
            ready[0].recv(2048)
            return socks.index(ready[0])

        for worker in (0, 1, 2, 2, 1, 0):  # short header: DCID[0] is the slot, from any address
            assert lands(bytes((0x40, worker)) + os.urandom(30)) == worker
        # a long header, or an index past the group, goes by the 4-tuple hash: all still delivered
        assert {lands(bytes((0xC0, 0)) + os.urandom(30)) for _ in range(5)} <= {0, 1, 2}
        assert lands(bytes((0x40, 7)) + os.urandom(30)) in (0, 1, 2)
    finally:
        for sock in socks:
            sock.close()


def test_hand_over_carries_the_datagram_and_the_client_address() -> None:
    stats: list[dict[str, int]] = [{}, {}]
    steering = []
    udp = []
    for index in (0, 1):
        st = WorkerSteering(index=index, count=2, group=os.getpid(), cids=RandomCids(index, 2), inherited=False,
                            handover_only=True)
        st.use_stats(stats[index])
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        udp.append(sock)
        st.start(sock, "127.0.0.1", 4433)
        steering.append(st)
    try:
        assert steering[0].mode == "handover"
        steering[0].hand_over(1, b"\x40\x01payload", ("127.0.0.9", 50123))
        data, addr = steering[1].receive_handed(65536)
        assert (data, addr) == (b"\x40\x01payload", ("127.0.0.9", 50123))
        assert stats[0]["handed_over"] == 1 and stats[1]["handover_received"] == 1
        steering[1].close()  # an owner that is gone: dropped and counted, never raised
        steering[0].hand_over(1, b"\x40\x01x", ("127.0.0.9", 1))
        assert stats[0]["handover_dropped"] == 1
    finally:
        for st in steering:
            st.close()
        for sock in udp:
            sock.close()


async def test_a_full_inbox_backlogs_in_order_instead_of_dropping() -> None:
    """The kernel queues only net.unix.max_dgram_qlen (10) datagrams per inbox: a burst
    waits in the sender's bounded backlog until the owner reads, then arrives in order."""
    import trio

    stats: list[dict[str, int]] = [{}, {}]
    steering = []
    udp = []
    for index in (0, 1):
        st = WorkerSteering(index=index, count=2, group=os.getpid() + 1, cids=RandomCids(index, 2), inherited=False,
                            handover_only=True)
        st.use_stats(stats[index])
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        udp.append(sock)
        st.start(sock, "127.0.0.1", 4433)
        steering.append(st)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(steering[0].run_backlogs)
            for n in range(60):  # nobody reads worker 1's inbox meanwhile
                steering[0].hand_over(1, b"\x40\x01" + n.to_bytes(2, "big"), ("127.0.0.9", 50123))
            assert stats[0]["handed_over"] < 60 and stats[0]["handover_dropped"] == 0
            got = []
            with trio.fail_after(5):
                while len(got) < 60:
                    try:
                        data, _addr = steering[1].receive_handed(65536)
                    except BlockingIOError:
                        await trio.sleep(0.01)
                        continue
                    got.append(int.from_bytes(data[2:], "big"))
            assert got == list(range(60)) and stats[0]["handed_over"] == 60
            nursery.cancel_scope.cancel()
    finally:
        for st in steering:
            st.close()
        for sock in udp:
            sock.close()
