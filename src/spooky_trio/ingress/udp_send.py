"""Batched UDP sends for the QUIC listener: one ``sendmsg`` per run of datagrams (UDP GSO);
and :func:`open_udp_socket`, the listener's socket with its options.

aioquic hands a connection's datagrams as a list, nearly all of the same size and to the same
address. With Linux UDP generic segmentation offload (``UDP_SEGMENT``, Linux 4.18+) such a
run goes to the kernel in one ``sendmsg`` that carries the segment size; the kernel cuts it
into datagrams. Where the kernel or the socket refuses, the sender falls back to one
``sendto`` per datagram for the rest of its life.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
import sys
from collections.abc import Sequence

from spooky_trio.config import PerformanceConfig

#: a peer's socket address (IPv4 host, port or IPv6 host, port, flow info, scope id)
Address = tuple[object, ...]

log = logging.getLogger("spooky.ingress.quic")

#: setsockopt/cmsg level and type (linux/udp.h); Python 3.11's socket module lacks the name
SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
#: the kernel's UDP_MAX_SEGMENTS
MAX_SEGMENTS = 64
#: payload bytes per GSO send (an IP packet's 64 KiB limit, minus headers)
MAX_GSO_BYTES = 65000
#: errors meaning "this kernel/socket does not do GSO" (not a transient send failure)
_GSO_UNSUPPORTED = {errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EIO}
#: EINVAL can also be one destination's problem (a segment larger than that path allows):
#: that run goes out datagram by datagram, and GSO is only turned off after this many
_EINVAL_LIMIT = 8


def gso_supported(sock: socket.socket) -> bool:
    """Whether the kernel knows UDP_SEGMENT for ``sock``: a kernel before 4.18 would ignore
    the cmsg silently and send the whole run as one oversized datagram, so probe first."""
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)
    except OSError:
        return False
    return True


class DatagramSender:
    """Sends lists of ``(datagram, address)`` on one non-blocking UDP socket.

    ``stats`` is the listener's counter dict: ``send_drops`` counts datagrams the socket
    buffer refused (QUIC loss recovery resends them), ``gso_sends`` the batched syscalls.
    """

    def __init__(self, sock: socket.socket, stats: dict[str, int], *, gso: bool | None = None) -> None:
        self.sock = sock
        self.stats = stats
        self.gso = (sys.platform.startswith("linux") and gso_supported(sock)) if gso is None else gso
        self._einval = 0
        stats.setdefault("send_drops", 0)
        stats.setdefault("gso_sends", 0)

    def send(self, datagrams: Sequence[tuple[bytes, Address]]) -> None:
        n = len(datagrams)
        if n == 1 or not self.gso:
            for data, addr in datagrams:
                self._sendto(data, addr)
            return
        i = 0
        while i < n:
            if not self.gso:  # a failed GSO send just turned it off
                for data, addr in datagrams[i:]:
                    self._sendto(data, addr)
                return
            data, addr = datagrams[i]
            size = len(data)
            # a run: same address, same size, except that the last one may be shorter
            j = i + 1
            total = size
            while j < n and j - i < MAX_SEGMENTS:
                next_data, next_addr = datagrams[j]
                length = len(next_data)
                if next_addr != addr or length > size or total + length > MAX_GSO_BYTES:
                    break
                total += length
                j += 1
                if length < size:
                    break
            if j - i == 1:
                self._sendto(data, addr)
            else:
                self._send_run(datagrams, i, j, size, addr)
            i = j

    def _send_run(self, datagrams: Sequence[tuple[bytes, Address]], start: int, stop: int, size: int, addr: Address) -> None:
        payload = b"".join([d for d, _ in datagrams[start:stop]])
        try:
            self.sock.sendmsg([payload], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))], 0, addr)
            self.stats["gso_sends"] += 1
            return
        except BlockingIOError:
            self.stats["send_drops"] += stop - start
            return
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                self._einval += 1
                if self._einval >= _EINVAL_LIMIT:
                    log.info("UDP GSO refused %d times (%s): sending one datagram per syscall", self._einval, exc)
                    self.gso = False
            elif exc.errno in _GSO_UNSUPPORTED:
                log.info("UDP GSO unavailable (%s): sending one datagram per syscall", exc)
                self.gso = False
            else:
                log.debug("sendmsg to %s failed: %s", addr, exc)
                return
        for data, dest in datagrams[start:stop]:
            self._sendto(data, dest)

    def _sendto(self, data: bytes, addr: Address) -> None:
        try:
            self.sock.sendto(data, addr)
        except BlockingIOError:
            self.stats["send_drops"] += 1
        except OSError as exc:
            log.debug("sendto %s failed: %s", addr, exc)


def open_udp_socket(address: str, port: int, performance: PerformanceConfig) -> socket.socket:
    """A UDP socket bound to ``address:port`` with the listener's options (SO_REUSEPORT as
    configured, buffer sizes); blocking, as made. The supervisor of worker processes binds its
    listeners' sockets with it too (serving/steering_sockets.py)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if performance.reuseport and hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        for opt, size in ((socket.SO_RCVBUF, performance.udp_recv_buffer_bytes), (socket.SO_SNDBUF, performance.udp_send_buffer_bytes)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, size)
            except OSError:
                log.warning("could not set UDP buffer size %d", size)
        sock.bind((address, port))
    except OSError:
        sock.close()
        raise
    return sock
