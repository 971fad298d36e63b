"""One instance per listener address: a lock per (address, port) that a second instance
cannot take, while the worker processes of one instance still share the port.

Why: listeners bind with ``SO_REUSEPORT`` (``performance.reuseport``, on by default as in
Spooky) so that the workers of one instance share a port; but the kernel lets *any* process
of the same user join the port that way, so a second instance started by mistake would bind
without an error and receive part of the traffic. Before binding a listener, an instance
takes the lock of its (address, port); a second instance fails at start with one line
naming the address and the holder's pid (:class:`ListenerInUse`).

The lock is a Linux **abstract-namespace unix socket** named
``spooky-trio/listener/<address>:<port>`` (address in its canonical form):

- exclusive: ``bind`` fails with ``EADDRINUSE`` while any process holds the name;
- scoped like the port it guards: abstract names belong to the network namespace, as ports
  do (two containers on the host network see each other's locks, two with their own
  network namespaces do not, and neither do their ports conflict);
- never stale: the kernel frees the name with the holder's last descriptor, so an instance
  that was killed (SIGKILL, OOM) does not block its restart; no directory, no file, no
  permissions, nothing to clean up, works on a read-only root file system;
- names its holder: the holder listens on it, a prober connects and reads ``SO_PEERCRED``
  (the pid that called ``listen``); :meth:`InstanceLocks.run` accepts and closes probes so
  they never fill the holder's backlog.

Rejected: a ``flock``'ed file per address in a runtime directory (which directory is not
the same for every instance of a port: ``$XDG_RUNTIME_DIR``, ``/run``, systemd's
``PrivateTmp`` and containers give two instances on one port different directories, and
the pid must be written into the file); reading ``/proc/net/udp`` (it gives the socket's
inode, and finding the process of an inode needs ``/proc/<pid>/fd`` of other users'
processes, i.e. root). Limits: Linux only (elsewhere there is no check); an address is
compared literally after canonicalisation, so ``0.0.0.0:443`` and ``127.0.0.1:443`` are
different locks (the kernel does not split traffic between those either: the more specific
address wins); any local user can hold a name, which shows up as a refusal naming that
process. Without ``reuseport`` there is no lock: the kernel's bind error already refuses
the second instance.

Workers (``performance.worker_threads > 1``): the supervisor takes the locks of the
configured listeners before it starts the workers; a worker tolerates a lock held by its
supervisor or by a sibling worker (:func:`held_by_my_supervisor`), and takes the lock itself
for a listener a reload added.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import struct
import sys
from collections.abc import Callable

import attrs
import trio

log = logging.getLogger("spooky.server")

#: prefix of every lock name in the abstract namespace
LOCK_PREFIX = "spooky-trio/listener/"
#: pending probes the kernel queues before :meth:`InstanceLocks.run` accepts them
PROBE_BACKLOG = 64
#: bind attempts when the holder goes away between our bind and our probe
ACQUIRE_ATTEMPTS = 3

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class ListenerInUse(Exception):
    """Another instance holds the lock of a listener address; the message is one line."""

    def __init__(self, address: str, port: int, pid: int | None) -> None:
        who = f"pid {pid}" if pid else "pid not visible from here, e.g. another PID namespace"
        super().__init__(
            f"udp/tcp {address}:{port} is already served by another spooky-trio instance ({who}); "
            "stop that instance first, or configure another address or port"
        )
        self.address, self.port, self.pid = address, port, pid


def supported() -> bool:
    """Abstract unix socket names are a Linux feature."""
    return sys.platform.startswith("linux")


def lock_name(address: str, port: int) -> bytes:
    """The abstract socket address of (``address``, ``port``); ``address`` is an IP literal
    (the config validator requires one) and is canonicalised (``::0`` is ``::``)."""
    try:
        canonical = str(ipaddress.ip_address(address))
    except ValueError:
        canonical = address
    return b"\0" + f"{LOCK_PREFIX}{canonical}:{port}".encode()


def holder_pid(name: bytes) -> int | None:
    """The pid holding lock ``name`` (0 when the kernel cannot map it into our PID
    namespace), or None when nobody listens on it any more."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)  # a unix connect completes at once, or fails (EAGAIN: backlog full)
    try:
        probe.connect(name)
        pid, _uid, _gid = _PEERCRED.unpack(probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
        return int(pid)
    except (ConnectionRefusedError, FileNotFoundError):
        return None  # released meanwhile (or held by something that does not listen)
    except OSError:
        return 0  # held, but we cannot ask whom
    finally:
        probe.close()


def parent_pid(pid: int) -> int | None:
    """``pid``'s parent from ``/proc/<pid>/stat`` (None when unreadable)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # "pid (comm) state ppid ...": comm may contain spaces and parentheses
        return int(stat.rpartition(b")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def held_by_my_supervisor(pid: int) -> bool:
    """For a worker process: True when lock holder ``pid`` is its supervisor (the parent)
    or another worker of that supervisor, i.e. the same instance."""
    supervisor = os.getppid()
    return pid == supervisor or (pid > 0 and parent_pid(pid) == supervisor)


@attrs.define(eq=False)
class _Lock:
    #: None: held by another process of this instance (a worker's supervisor or sibling)
    sock: socket.socket | None
    users: int = 1
    answering: bool = False


class InstanceLocks:
    """The listener locks one process holds, counted by user (a listener that a reload
    removed and another reload added back shares the lock while the old one drains).

    :meth:`acquire` and :meth:`release` are called around a listener's sockets;
    :meth:`run`, in the owner's task tree, answers probes; :meth:`release_all` at the end.
    ``tolerate(pid)`` says whether a lock held by ``pid`` belongs to this same instance.
    """

    def __init__(self, tolerate: Callable[[int], bool] | None = None) -> None:
        self._tolerate = tolerate
        self._locks: dict[bytes, _Lock] = {}
        self._nursery: trio.Nursery | None = None

    def acquire(self, address: str, port: int) -> None:
        """Take the lock of (``address``, ``port``) or raise :class:`ListenerInUse`."""
        if not supported():
            return
        name = lock_name(address, port)
        held = self._locks.get(name)
        if held is not None:
            held.users += 1
            return
        for _ in range(ACQUIRE_ATTEMPTS):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(name)
                sock.listen(PROBE_BACKLOG)
            except OSError as exc:
                sock.close()
                if exc.errno != errno.EADDRINUSE:
                    raise
                pid = holder_pid(name)
                if pid is None:
                    continue  # the holder just went away: try again
                if self._tolerate is not None and self._tolerate(pid):
                    self._locks[name] = _Lock(None)
                    return
                raise ListenerInUse(address, port, pid) from None
            sock.setblocking(False)
            lock = self._locks[name] = _Lock(sock)
            if self._nursery is not None:
                self._answer(lock)
            return
        raise ListenerInUse(address, port, None)

    def release(self, address: str, port: int) -> None:
        """Give back one use of the lock; the last one frees the name."""
        name = lock_name(address, port)
        held = self._locks.get(name)
        if held is None:
            return
        held.users -= 1
        if held.users <= 0:
            del self._locks[name]
            self._close(held)

    def release_all(self) -> None:
        for held in self._locks.values():
            self._close(held)
        self._locks.clear()

    @property
    def held(self) -> list[bytes]:
        """The names of the locks this process holds itself (for tests and diagnostics)."""
        return [name for name, held in self._locks.items() if held.sock is not None]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Answer probes of every held lock (each accepted connection is closed at once:
        the prober has read our pid already) until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for held in self._locks.values():
                    self._answer(held)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    def _answer(self, held: _Lock) -> None:
        if held.sock is not None and not held.answering and self._nursery is not None:
            held.answering = True
            self._nursery.start_soon(_answer_probes, held.sock)

    @staticmethod
    def _close(held: _Lock) -> None:
        if held.sock is None:
            return
        if held.answering:
            trio.lowlevel.notify_closing(held.sock)  # wakes its prober task
        held.sock.close()


async def _answer_probes(sock: socket.socket) -> None:
    while True:
        if sock.fileno() == -1:
            return  # released before this task first ran (a listener that failed to bind)
        try:
            await trio.lowlevel.wait_readable(sock)
        except trio.ClosedResourceError:
            return
        try:
            while True:
                conn, _ = sock.accept()
                conn.close()
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            if sock.fileno() == -1:
                return  # released
            await trio.sleep(1.0)  # out of descriptors: a probe can wait, it has read our pid
