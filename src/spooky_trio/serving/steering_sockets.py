"""The supervisor's half of worker steering (ingress/steering.py): the UDP sockets of every
listener, one per worker, bound *in worker index order* before any worker starts, and kept
open for the supervisor's whole life.

Why the supervisor: the kernel numbers the sockets of a reuseport group in the order they
joined, and when one closes it moves the last one into the freed slot. The steering program
returns a worker index that must be that worker's slot. Bound here in order and never
closed, socket ``i`` is slot ``i`` for as long as the group lives; worker ``i`` (and each of
its restarts) serves it, inherited through ``pass_fds``. While a worker restarts, the
datagrams hashed or steered to its socket wait in the socket's receive buffer (bounded by
``performance.udp_recv_buffer_bytes``) for the new worker, which answers what it can.
"""

from __future__ import annotations

import json
import os
import socket

from spooky_trio.config import Config
from spooky_trio.ingress.udp_send import open_udp_socket
from spooky_trio.serving.exits import StartupError

#: the environment variable that tells a worker which inherited descriptor serves which listener
UDP_FDS_ENV = "SPOOKY_WORKER_UDP_FDS"


class SteeringSockets:
    """One UDP socket per (listener, worker index), bound by :meth:`bind`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.count = config.performance.worker_threads
        #: (address, port) -> the socket of each worker index
        self.sockets: dict[tuple[str, int], list[socket.socket]] = {}

    def bind(self) -> None:
        """Bind every listener's sockets in index order; raises :class:`StartupError` naming
        the address (nothing left bound)."""
        for listener in self.config.effective_listeners():
            key = (listener.address, listener.port)
            self.sockets[key] = []
            for _ in range(self.count):
                try:
                    self.sockets[key].append(open_udp_socket(listener.address, listener.port, self.config.performance))
                except OSError as exc:
                    self.close()
                    raise StartupError(f"cannot bind UDP {listener.address}:{listener.port}: {exc.strerror or exc}") from exc

    def for_worker(self, index: int) -> tuple[str, list[int]]:
        """The environment value and descriptors to pass to worker ``index``."""
        fds = [socks[index].fileno() for socks in self.sockets.values()]
        entries = [[address, port, fd] for (address, port), fd in zip(self.sockets, fds)]
        return json.dumps(entries), fds

    def close(self) -> None:
        for socks in self.sockets.values():
            for sock in socks:
                sock.close()
        self.sockets.clear()


def inherited_udp_sockets() -> dict[tuple[str, int], int]:
    """In a worker: the descriptors its supervisor passed, by listener (and forget the variable)."""
    text = os.environ.pop(UDP_FDS_ENV, "")
    if not text:
        return {}
    return {(str(address), int(port)): int(fd) for address, port, fd in json.loads(text)}
