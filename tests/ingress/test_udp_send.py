"""DatagramSender: batched (UDP GSO) and plain sends deliver the same datagrams, in order."""

from __future__ import annotations

import errno
import socket
import sys

import pytest

from spooky_trio.ingress.udp_send import MAX_SEGMENTS, DatagramSender


def _receiver() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.settimeout(2)
    return sock


def _drain(sock: socket.socket, count: int) -> list[bytes]:
    return [sock.recv(65536) for _ in range(count)]


def _batch(a: tuple[str, int], b: tuple[str, int]) -> list[tuple[bytes, tuple[str, int]]]:
    full = [(bytes([i]) * 1200, a) for i in range(MAX_SEGMENTS + 6)]  # longer than one GSO run
    return full + [(b"s" * 700, a), (b"t" * 1200, a), (b"u" * 1200, b), (b"v" * 90, b), (b"w" * 1200, a)]


class _NoGsoSocket:
    """A real UDP socket whose sendmsg fails as on a kernel without UDP_SEGMENT."""

    def __init__(self, sock: socket.socket, code: int = errno.EIO) -> None:
        self._sock = sock
        self.sendmsg_calls = 0
        self.code = code

    def sendmsg(self, *args: object) -> int:
        self.sendmsg_calls += 1
        raise OSError(self.code, "no GSO here")

    def getsockopt(self, level: int, option: int) -> int:
        raise OSError(errno.ENOPROTOOPT, "Protocol not available")

    def sendto(self, data: bytes, addr: tuple[str, int]) -> int:
        return self._sock.sendto(data, addr)


@pytest.mark.parametrize("gso", [True, False])
def test_every_datagram_arrives_in_order(gso: bool) -> None:
    if gso and not sys.platform.startswith("linux"):
        pytest.skip("UDP GSO is Linux-only")
    ra, rb = _receiver(), _receiver()
    with ra, rb, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        out.setblocking(False)
        stats: dict[str, int] = {}
        sender = DatagramSender(out, stats, gso=gso)
        batch = _batch(ra.getsockname(), rb.getsockname())
        sender.send(batch)
        for receiver in (ra, rb):
            expected = [d for d, addr in batch if addr == receiver.getsockname()]
            assert _drain(receiver, len(expected)) == expected
        assert stats["send_drops"] == 0
        if gso and sender.gso:  # the kernel took the batched path
            assert 0 < stats["gso_sends"] < len(batch) // 2
        else:
            assert stats["gso_sends"] == 0


def test_falls_back_for_good_when_the_kernel_refuses_gso() -> None:
    ra, rb = _receiver(), _receiver()
    with ra, rb, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        fake = _NoGsoSocket(out)
        stats: dict[str, int] = {}
        sender = DatagramSender(fake, stats, gso=True)  # type: ignore[arg-type]
        batch = _batch(ra.getsockname(), rb.getsockname())
        sender.send(batch)
        sender.send(batch)
        assert fake.sendmsg_calls == 1 and sender.gso is False
        for receiver in (ra, rb):
            expected = [d for d, addr in batch if addr == receiver.getsockname()]
            assert _drain(receiver, 2 * len(expected)) == expected * 2


def test_einval_sends_that_run_plainly_and_turns_gso_off_only_when_repeated() -> None:
    """EINVAL can be one path's limit: the run still arrives, GSO stays on for a while."""
    ra, rb = _receiver(), _receiver()
    with ra, rb, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        fake = _NoGsoSocket(out, errno.EINVAL)
        sender = DatagramSender(fake, {}, gso=True)  # type: ignore[arg-type]
        batch = _batch(ra.getsockname(), rb.getsockname())
        sender.send(batch)
        assert sender.gso is True and fake.sendmsg_calls >= 1
        for receiver in (ra, rb):
            expected = [d for d, addr in batch if addr == receiver.getsockname()]
            assert _drain(receiver, len(expected)) == expected
        for _ in range(8):
            sender.send(batch)
        assert sender.gso is False


def test_a_kernel_without_udp_segment_is_detected_up_front() -> None:
    """Before Linux 4.18 the UDP_SEGMENT cmsg is ignored, not refused: probe the option."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        assert DatagramSender(_NoGsoSocket(out), {}).gso is False  # type: ignore[arg-type]
