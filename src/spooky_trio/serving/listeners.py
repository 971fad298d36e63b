"""Serving units a reload can add, keep or stop one at a time: the QUIC + TCP listener pair
of one listener block, and an HTTP endpoint service (metrics or control API).

The Server (serving/server.py) owns them in its task tree; each runs in its own cancel scope.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import attrs
import trio

from spooky_trio.config import ControlApiConfig, ListenerConfig, MetricsConfig
from spooky_trio.core.activity import Activity
from spooky_trio.ingress.bootstrap import BootstrapListener
from spooky_trio.ingress.identities import IdentityError, IdentityStore
from spooky_trio.ingress.quic import QuicListener
from spooky_trio.ingress.tls import BootstrapTls, TlsSetupError
from spooky_trio.observability.http_server import HttpEndpoint
from spooky_trio.serving.instance_lock import InstanceLocks, ListenerInUse

log = logging.getLogger("spooky.server")


#: what a Service serves: the metrics endpoint or the control API
EndpointConfig = MetricsConfig | ControlApiConfig


class BindError(Exception):
    """A listener socket cannot be bound; the message names protocol and address."""


class ListenerPair:
    """The QUIC and TCP listeners of one listener block, served and stopped together.

    ``key`` (address, configured port) is the listener's identity across reloads. Each pair
    counts its requests in its own :class:`Activity` (whose parent is the Server's), so a
    reload that removes it can drain it alone.

    ``locks``: the process's :class:`InstanceLocks`; the pair holds the lock of its address
    from :meth:`bind` until its sockets are closed, so a second instance cannot share the
    port (serving/instance_lock.py).
    """

    def __init__(self, config: ListenerConfig, quic: QuicListener, tcp: BootstrapListener, activity: Activity,
                 locks: InstanceLocks | None = None) -> None:
        self.config = config
        self.key: tuple[str, int] = (config.address, config.port)
        self.quic = quic
        self.tcp = tcp
        self.activity = activity
        self.scope = trio.CancelScope()
        self.done = trio.Event()
        self._locks = locks
        self._locked = False

    @property
    def name(self) -> str:
        return f"{self.quic.address}:{self.quic.port}"

    def bind(self) -> None:
        """Take the instance lock, bind UDP then TCP on the same port; raises
        :class:`BindError` (nothing left bound or locked)."""
        self._lock()
        try:
            self.quic.bind()
        except OSError as exc:
            self._unlock()
            raise BindError(f"cannot bind UDP {self.quic.address}:{self.quic.port}: {exc.strerror or exc}") from exc
        try:
            self.tcp.bind(self.quic.port)
        except OSError as exc:
            self.quic.unbind()
            self._unlock()
            raise BindError(f"cannot bind TCP {self.tcp.address}:{self.quic.port}: {exc.strerror or exc}") from exc

    def _lock(self) -> None:
        # port 0 is a fresh port nobody shares; without reuseport the bind itself refuses a
        # second instance (with the kernel's error, as before)
        if self._locks is None or self.config.port == 0 or not self.quic.performance.reuseport:
            return
        try:
            self._locks.acquire(self.config.address, self.config.port)
        except ListenerInUse as exc:
            raise BindError(str(exc)) from exc
        self._locked = True

    def _unlock(self) -> None:
        if self._locked and self._locks is not None:
            self._locked = False
            self._locks.release(self.config.address, self.config.port)

    def unbind(self) -> None:
        """Close the sockets of a pair that was bound but never served (aborted reload)."""
        self.quic.unbind()
        self.tcp.unbind()
        self._unlock()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve both listeners until :attr:`scope` is cancelled."""
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.quic.serve)
                    await nursery.start(self.tcp.serve)
                    task_status.started()
        finally:
            self._unlock()  # both sockets are closed now
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
        if new.cids.signature != quic.cids.signature:  # quic_lb changed: new CIDs, old ones retired
            quic.use_cids(new.cids)
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
        """Drain this pair alone (a reload removed it; :func:`drain`), then stop its tasks."""
        await drain([self], self.activity, timeout)
        self.scope.cancel()
        await self.done.wait()


#: after the in-flight requests ended: the last response bytes must be acknowledged before
#: CONNECTION_CLOSE discards them, and the closes must go out; each wait is bounded by this
CLOSE_GRACE_SECONDS = 1.0


async def drain(pairs: Sequence[ListenerPair], activity: Activity, timeout: float) -> bool:
    """The one drain sequence (shutdown, and a listener a reload removed): ``pairs`` stop
    accepting (QUIC refuses new connections and sends GOAWAY, TCP stops accepting and
    closes idle HTTP/1.1 connections), the requests counted in ``activity`` get up to
    ``timeout`` seconds to finish, then every QUIC connection closes once its sent data was
    acknowledged (bounded by :data:`CLOSE_GRACE_SECONDS`). Returns False when the deadline
    passed with requests still in flight (the caller cancels them)."""
    for pair in pairs:
        pair.begin_drain()
    with trio.move_on_after(timeout) as scope:
        await activity.wait_idle()
    with trio.move_on_after(CLOSE_GRACE_SECONDS):
        for pair in pairs:
            await pair.quic.wait_acked()
    for pair in pairs:
        pair.quic.close_all()
    with trio.move_on_after(CLOSE_GRACE_SECONDS):
        for pair in pairs:
            await pair.quic.wait_closed()
    return not scope.cancelled_caught


class Service:
    """One endpoint (metrics or control API) served in its own cancel scope; ``config`` is
    the block it was built from (``observability.metrics`` or ``observability.control_api``)."""

    def __init__(self, endpoint: HttpEndpoint, config: EndpointConfig) -> None:
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

    def retune(self, endpoint: HttpEndpoint, config: EndpointConfig) -> None:
        """Serve ``endpoint``'s handler and limits on this socket from now on (a reload
        changed the block but not its address and port)."""
        self.endpoint.handler = endpoint.handler
        self.endpoint.max_connections = endpoint.max_connections
        self.endpoint.connection_timeout = endpoint.connection_timeout
        self.config, self.required = config, config.required

    def stop(self) -> None:
        """Stop serving (a bound socket that was never served is closed)."""
        self.scope.cancel()
        if not self.started:
            self.endpoint.unbind()


def reload_certificates(pairs: Sequence[ListenerPair]) -> list[dict[str, object]]:
    """Re-read every listener's certificates, keys and client-auth CA from the files the
    config names, for handshakes that start from now on (QUIC and TCP); open connections
    keep their material. All or nothing: any unreadable or invalid file raises
    :class:`~spooky_trio.ingress.identities.IdentityError` or
    :class:`~spooky_trio.ingress.tls.TlsSetupError` and nothing is replaced.
    Returns one summary per listener (certificate serials and expiry)."""
    fresh = []
    for pair in pairs:
        quic = pair.quic
        try:
            identities = IdentityStore.from_config(pair.config.tls)
            tls = BootstrapTls(identities, pair.config.tls.client_auth)
        except (IdentityError, TlsSetupError) as exc:
            raise type(exc)(f"listener {quic.address}:{quic.port}: {exc}") from exc
        fresh.append((identities, tls))
    summary: list[dict[str, object]] = []
    for (identities, tls), pair in zip(fresh, pairs):
        quic = pair.quic
        quic.replace_identities(identities)
        pair.tcp.use_tls(tls)
        certificates: list[dict[str, object]] = [
            {"server_name": i.server_name, "serial": format(i.certificate.serial_number, "x"),
             "not_after": i.certificate.not_valid_after_utc.isoformat()}
            for i in identities.all()
        ]
        summary.append({"listener": f"{quic.address}:{quic.port}", "certificates": certificates})
    log.info("listener certificates reloaded (%d listener(s)); new handshakes use them", len(summary))
    return summary
