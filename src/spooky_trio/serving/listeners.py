"""Serving units a reload can add, keep or stop one at a time: the QUIC + TCP listener pair
of one listener block, and an HTTP endpoint service (metrics or control API).

The Server (serving/server.py) owns them in its task tree; each runs in its own cancel scope.
"""

from __future__ import annotations

from typing import Any

import attrs
import trio

from spooky_trio.ingress.bootstrap import BootstrapListener
from spooky_trio.ingress.quic import Activity, QuicListener
from spooky_trio.observability.http_server import HttpEndpoint


class BindError(Exception):
    """A listener socket cannot be bound; the message names protocol and address."""


class ListenerPair:
    """The QUIC and TCP listeners of one listener block, served and stopped together.

    ``key`` (address, configured port) is the listener's identity across reloads. Each pair
    counts its requests in its own :class:`Activity` (whose parent is the Server's), so a
    reload that removes it can drain it alone.
    """

    def __init__(self, config: Any, quic: QuicListener, tcp: BootstrapListener, activity: Activity) -> None:
        self.config = config
        self.key: tuple[str, int] = (config.address, config.port)
        self.quic = quic
        self.tcp = tcp
        self.activity = activity
        self.scope = trio.CancelScope()
        self.done = trio.Event()

    @property
    def name(self) -> str:
        return f"{self.quic.address}:{self.quic.port}"

    def bind(self) -> None:
        """Bind UDP then TCP on the same port; raises :class:`BindError` (nothing left bound)."""
        try:
            self.quic.bind()
        except OSError as exc:
            raise BindError(f"cannot bind UDP {self.quic.address}:{self.quic.port}: {exc.strerror or exc}") from exc
        try:
            self.tcp.bind(self.quic.port)
        except OSError as exc:
            self.quic.sock.close()
            self.quic.sock = None  # type: ignore[assignment]
            raise BindError(f"cannot bind TCP {self.tcp.address}:{self.quic.port}: {exc.strerror or exc}") from exc

    def unbind(self) -> None:
        """Close the sockets of a pair that was bound but never served (aborted reload)."""
        if self.quic.sock is not None:
            self.quic.sock.close()
        self.tcp.unbind()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve both listeners until :attr:`scope` is cancelled."""
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.quic.serve)
                    await nursery.start(self.tcp.serve)
                    task_status.started()
        finally:
            self.done.set()

    def adopt(self, fresh: ListenerPair) -> None:
        """Take ``fresh``'s settings and TLS material (a reload kept this listener): QUIC
        transport parameters, limits and certificates apply to connections that start from
        now on; open connections keep theirs."""
        quic, new = self.quic, fresh.quic
        old_perf, new_perf = quic.performance, new.performance
        # flood guard: new rates/caps apply now; the Retry token key stays, so Retry tokens
        # already handed out remain valid across the reload
        if (old_perf.new_connections_per_sec, old_perf.new_connections_burst) != (new_perf.new_connections_per_sec, new_perf.new_connections_burst):
            quic.guard.bucket = new.guard.bucket
        quic.guard.max_active = new.guard.max_active
        # 0-RTT: switching allow_0rtt on or off swaps the ticket store; unchanged keeps tickets
        if quic.protocol.allow_0rtt != new.protocol.allow_0rtt:
            quic.session_tickets = new.session_tickets
        quic.performance, quic.protocol = new.performance, new.protocol
        quic.configuration, quic.identities = new.configuration, new.identities
        tcp = self.tcp
        tcp.performance = fresh.tcp.performance
        for field in attrs.fields(type(tcp.limits)):  # the ServeContext shares this object
            setattr(tcp.limits, field.name, getattr(fresh.tcp.limits, field.name))
        tcp.use_tls(fresh.tcp.tls)
        self.config = fresh.config

    def begin_drain(self) -> None:
        self.quic.begin_drain()
        self.tcp.begin_drain()

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let in-flight requests finish (up to ``timeout``), then close."""
        self.begin_drain()
        with trio.move_on_after(timeout):
            await self.activity.wait_idle()
        with trio.move_on_after(1.0):
            await self.quic.wait_acked()
        self.quic.close_all()
        with trio.move_on_after(1.0):
            await self.quic.wait_closed()
        self.scope.cancel()
        await self.done.wait()


class Service:
    """One endpoint (metrics or control API) served in its own cancel scope; ``config`` is
    the block it was built from (``observability.metrics`` or ``observability.control_api``)."""

    def __init__(self, endpoint: HttpEndpoint, config: Any) -> None:
        self.endpoint = endpoint
        self.config = config
        self.required = config.required
        self.scope = trio.CancelScope()
        self.started = False
        #: set once a started service stopped (its socket is closed)
        self.stopped = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.started = True
        try:
            with self.scope:
                await self.endpoint.serve(task_status=task_status)
        finally:
            self.stopped.set()

    def stop(self) -> None:
        """Stop serving (a bound socket that was never served is closed)."""
        self.scope.cancel()
        if not self.started:
            self.endpoint.unbind()
