"""Worker steering: a QUIC packet reaches the worker that owns its connection, whatever its
4-tuple (``performance.worker_threads > 1``; docs/fleet.md, "Workers").

Every worker issues CIDs that carry its index (ingress/cids.py). Two ways get a packet to
its owner:

- **kernel** (``SO_ATTACH_REUSEPORT_CBPF``, classic BPF, no privilege needed): the program
  reads the UDP payload's first octet; a short-header packet returns the worker index read
  at a fixed offset in its DCID, which the kernel uses as the socket's index in the
  reuseport group; a long-header packet (Initial, Handshake) returns a value past the group,
  and the kernel falls back to its 4-tuple hash. The index must be the socket's slot: the
  supervisor binds one socket per worker *in index order* and keeps it for its whole life
  (serving/steering_sockets.py); worker ``i`` serves the inherited socket ``i`` and its
  restarts inherit the same one, so no close ever renumbers the group.
- **hand-over** (where the program cannot be attached, or for a socket the worker bound
  itself, e.g. a listener a reload added): a worker that receives a 1-RTT or Handshake
  packet whose CID names another worker sends it, with the client's address, over a local
  datagram socket to that worker, which processes it as if it had arrived on its own UDP
  socket and answers from the shared port.

The receiving side counts ``steered`` (a connection's datagram that arrived directly from an
address other than the one it started from: the kernel steered it, or the hash happened to
land on the owner), ``handed_over``, ``handover_received`` and ``handover_dropped``.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import struct
from collections import deque

import trio

from collections.abc import MutableMapping

from spooky_trio.config import ListenerConfig, PerformanceConfig
from spooky_trio.ingress.cids import CidScheme, build_cid_scheme

__all__ = ["HANDOVER", "KERNEL", "OFF", "WorkerSteering", "attach_cbpf", "cbpf_program", "listener_steering"]

log = logging.getLogger("spooky.ingress.steering")

#: the modes, as /admin/runtime and the spooky_quic_steering_mode gauge show them
KERNEL, HANDOVER, OFF = "kernel", "handover", "off"
#: linux/asm-generic/socket.h
SO_ATTACH_REUSEPORT_CBPF = 51
#: a return value past any reuseport group: the kernel picks by its 4-tuple hash
_FALLBACK = 0xFFFFFFFF
#: the largest datagram a hand-over carries (a QUIC datagram plus the address header)
_HANDOVER_MAX = 65535 + 64
#: datagrams waiting for one owner's inbox to take them (the kernel queues only
#: net.unix.max_dgram_qlen, 10 by default, per inbox); beyond, a hand-over is dropped
BACKLOG_MAX = 512
#: how long a backlog waits for its owner's inbox before it is dropped (a stuck or
#: restarting owner; a datagram that old is of no use to QUIC anyway)
BACKLOG_DEADLINE = 0.5


def cbpf_program(worker_offset: int, worker_mask: int) -> list[tuple[int, int, int, int]]:
    """The classic BPF program (code, jt, jf, k): the UDP payload is at offset 0."""
    return [
        (0x30, 0, 0, 0),  # A = payload[0]                   (BPF_LD|BPF_B|BPF_ABS)
        (0x45, 3, 0, 0x80),  # long header? -> fallback      (BPF_JMP|BPF_JSET|BPF_K)
        (0x30, 0, 0, 1 + worker_offset),  # A = DCID[worker_offset] (short header: DCID at 1)
        (0x54, 0, 0, worker_mask),  # A &= mask              (BPF_ALU|BPF_AND|BPF_K)
        (0x16, 0, 0, 0),  # return A: the socket's slot      (BPF_RET|BPF_A)
        (0x06, 0, 0, _FALLBACK),  # return "no socket": hash (BPF_RET|BPF_K)
    ]


def attach_cbpf(sock: socket.socket, worker_offset: int, worker_mask: int) -> str | None:
    """Attach the steering program to ``sock``'s reuseport group; None on success, else why not."""
    program = cbpf_program(worker_offset, worker_mask)
    raw = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buffer = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("HL", len(program), ctypes.addressof(buffer))  # struct sock_fprog
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError as exc:
        return f"SO_ATTACH_REUSEPORT_CBPF failed: {exc.strerror or exc}"
    return None


def handover_name(group: int, address: str, port: int, index: int) -> bytes:
    """The abstract unix socket name of worker ``index``'s hand-over inbox for a listener."""
    return b"\0spooky-trio/%d/%s/%d/%d" % (group, address.encode(), port, index)


class WorkerSteering:
    """The steering of one QUIC listener in worker ``index`` of ``count``.

    ``group`` names the worker set (the supervisor's pid): the hand-over inboxes of two
    instances never meet. ``inherited``: the listener serves a socket the supervisor bound
    in index order, so the kernel program can be used; ``handover_only`` forces hand-over.
    """

    def __init__(self, *, index: int, count: int, group: int, cids: CidScheme, inherited: bool, handover_only: bool) -> None:
        self.index = index
        self.count = count
        self.group = group
        self.cids = cids
        self.inherited = inherited
        self.handover_only = handover_only
        self.stats: dict[str, int] = {}
        self.mode = OFF
        #: why the mode is what it is (logged once, in /admin/runtime)
        self.reason = ""
        self.inbox: socket.socket | None = None
        self._address = ""
        self._port = 0
        #: a socket connected to each owner's inbox (so the kernel tells when it has room)
        self._outboxes: dict[int, socket.socket] = {}
        #: hand-overs an owner's full inbox could not take yet, sent by run_backlogs
        self._backlogs: dict[int, deque[bytes]] = {}
        self._wakeup = trio.Event()

    def use_stats(self, stats: dict[str, int]) -> None:
        """Count into the listener's ``stats`` (collected as spooky_quic_steering_packets_total)."""
        for key in ("steered", "handed_over", "handover_received", "handover_dropped"):
            stats.setdefault(key, 0)
        self.stats = stats

    def start(self, sock: socket.socket, address: str, port: int) -> None:
        """Open the hand-over inbox and choose the mode for the bound UDP socket ``sock``."""
        self._address, self._port = address, port
        inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            inbox.bind(handover_name(self.group, address, port, self.index))
        except OSError:
            inbox.close()
            raise
        inbox.setblocking(False)
        self.inbox = inbox
        self.choose_mode(sock)

    def choose_mode(self, sock: socket.socket) -> None:
        """Kernel steering when possible, else hand-over; (again) after a reload changed the
        CID layout. Every worker attaches the same program for the same config."""
        if self.handover_only:
            self.mode, self.reason = HANDOVER, "performance.quic_worker_steering is handover"
        elif not self.inherited:
            self.mode, self.reason = HANDOVER, "this socket was not bound by the supervisor (a listener added by a reload)"
        else:
            failure = attach_cbpf(sock, self.cids.worker_offset, self.cids.worker_mask)
            self.mode, self.reason = (HANDOVER, failure) if failure else (KERNEL, "SO_ATTACH_REUSEPORT_CBPF attached")
        log.info("worker %d, QUIC %s:%d: steering mode %s (%s)", self.index, self._address, self._port, self.mode, self.reason)

    def close(self) -> None:
        if self.inbox is not None:
            self.inbox.close()
        for sock in self._outboxes.values():
            sock.close()
        self._outboxes.clear()

    def _outbox(self, owner: int) -> socket.socket | None:
        sock = self._outboxes.get(owner)
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
            try:
                sock.connect(handover_name(self.group, self._address, self._port, owner))
            except OSError:  # the owner is restarting: no inbox yet
                sock.close()
                return None
            self._outboxes[owner] = sock
        return sock

    def _lost(self, owner: int, count: int) -> None:
        self.stats["handover_dropped"] += count
        sock = self._outboxes.pop(owner, None)
        if sock is not None:
            sock.close()  # reconnected at the next hand-over (the owner may have restarted)

    def hand_over(self, owner: int, data: bytes, addr: tuple[str, int]) -> None:
        """Send a datagram to its owner's inbox. A full inbox puts it in that owner's backlog
        (:meth:`run_backlogs` sends it when the inbox has room); a missing owner, or a full
        backlog, drops it (counted)."""
        host = addr[0].encode()
        message = bytes((len(host),)) + host + addr[1].to_bytes(2, "big") + data
        backlog = self._backlogs.get(owner)
        if backlog is not None:  # keep the order: behind what waits already
            if len(backlog) >= BACKLOG_MAX:
                self.stats["handover_dropped"] += 1
            else:
                backlog.append(message)
            return
        sock = self._outbox(owner)
        if sock is None:
            self.stats["handover_dropped"] += 1
            return
        try:
            sock.send(message)
        except BlockingIOError:
            self._backlogs[owner] = deque((message,))
            self._wakeup.set()
            return
        except OSError as exc:  # the owner went away (ECONNREFUSED)
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                log.debug("hand-over to worker %d failed: %s", owner, exc)
            self._lost(owner, 1)
            return
        self.stats["handed_over"] += 1

    async def run_backlogs(self) -> None:
        """Send the backlogs as their owners' inboxes make room (each owner at most
        :data:`BACKLOG_DEADLINE` at a time), in the listener's nursery."""
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            for owner in list(self._backlogs):
                backlog = self._backlogs[owner]
                sock = self._outboxes.get(owner)
                while backlog and sock is not None:
                    try:
                        sock.send(backlog[0])
                    except BlockingIOError:
                        with trio.move_on_after(BACKLOG_DEADLINE) as waited:
                            await trio.lowlevel.wait_writable(sock)
                        if waited.cancelled_caught:
                            break
                        continue
                    except OSError:
                        break
                    backlog.popleft()
                    self.stats["handed_over"] += 1
                if backlog:
                    self._lost(owner, len(backlog))
                del self._backlogs[owner]

    def receive_handed(self, size: int) -> tuple[bytes, tuple[str, int]]:
        """One handed-over datagram and its client address, for the listener's receive loop
        (the signature of ``socket.recvfrom``); raises BlockingIOError when none is waiting."""
        assert self.inbox is not None
        message = self.inbox.recv(_HANDOVER_MAX)
        length = message[0]
        host = message[1 : 1 + length].decode()
        port = int.from_bytes(message[1 + length : 3 + length], "big")
        self.stats["handover_received"] += 1
        return message[3 + length :], (host, port)

    def describe(self) -> dict[str, object]:
        return {"worker": self.index, "workers": self.count, "mode": self.mode, "reason": self.reason}


def listener_steering(
    listener: ListenerConfig, performance: PerformanceConfig, worker_index: int | None,
    inherited: MutableMapping[tuple[str, int], int],
) -> tuple[CidScheme, WorkerSteering | None, int | None]:
    """A listener block's CID scheme, its steering (None with one process) and the socket the
    supervisor bound for this worker (taken from ``inherited``: used once)."""
    workers = performance.worker_threads if worker_index is not None else 1
    index = worker_index or 0
    cids = build_cid_scheme(listener.quic_lb, index, workers)
    if workers == 1 or cids.workers == 1:
        return cids, None, None
    fd = inherited.pop((listener.address, listener.port), None)
    steering = WorkerSteering(index=index, count=workers, group=os.getppid(), cids=cids, inherited=fd is not None,
                              handover_only=performance.quic_worker_steering == "handover")
    return cids, steering, fd
