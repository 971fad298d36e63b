"""The root task tree: listeners, the upstream pool, signals and graceful drain.

```
Server.run
├─ upstream pool (h2 connection readers, idle reaper)
├─ health supervisor: background nursery (health checkers, DNS refreshers)
├─ listener nursery: one QuicListener per listener block
├─ one BootstrapListener per listener block: TCP + TLS (HTTP/1.1, HTTP/2), same port
├─ control nursery: metrics endpoint and control API (observability/endpoints.py)
└─ signal watcher: TERM/INT -> drain, a second one -> stop at once
```
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import signal
from typing import Any

import trio

from spooky_trio.health.supervisor import HealthSupervisor
from spooky_trio.ingress.bootstrap import BootstrapListener
from spooky_trio.ingress.identities import IdentityError, IdentityStore
from spooky_trio.ingress.quic import Activity, QuicListener
from spooky_trio.ingress.tls import BootstrapTls, TlsSetupError
from spooky_trio.observability.endpoints import ControlApi, EndpointSetupError, metrics_endpoint
from spooky_trio.observability.http_server import HttpEndpoint
from spooky_trio.observability.metrics import Metrics
from spooky_trio.proxy.pipeline import Proxy
from spooky_trio.runtime.generation import Generation
from spooky_trio.runtime.state import StateStore
from spooky_trio.upstream import UpstreamPool

log = logging.getLogger("spooky.server")

#: exit status after a second signal cut the drain short
EXIT_FORCED = 1
#: exit status after ``POST restart_path`` drained the server: "restart me" for a supervisor
#: (EX_TEMPFAIL; e.g. systemd ``Restart=on-failure`` or ``RestartForceExitStatus=75``)
EXIT_RESTART = 75


class StartupError(Exception):
    """The server cannot start (bind failure, unreadable certificate...); one-line message."""


class Server:
    """One serving process. ``run`` returns when the server stopped; see module docstring."""

    def __init__(self, config: Any) -> None:
        #: backend health, ejection, latency, DNS addresses: survives reloads (keyed by backend)
        self.state = StateStore()
        self.generation = Generation.build(config, number=1, state=self.state)
        perf = config.performance
        self.activity = Activity()
        self.upstream = UpstreamPool(
            idle_timeout=perf.h2_pool_idle_timeout_ms / 1000,
            max_idle_per_backend=perf.h2_pool_max_idle_per_backend,
        )
        #: this server's own Prometheus registry (several servers may share a process)
        self.metrics = Metrics()
        self.proxy = Proxy(lambda: self.generation, self.upstream, self.metrics)
        self.health = HealthSupervisor(self.upstream, self.metrics)
        self.listeners: list[QuicListener] = []
        #: the TCP (HTTP/1.1 + HTTP/2) listener beside each QUIC one, same index and port
        self.bootstrap_listeners: list[BootstrapListener] = []
        self.draining = False
        #: every listener is serving (the control API's readiness, with ``draining``)
        self.serving = False
        self.forced = False
        #: set by :meth:`request_restart`: the process exits with :data:`EXIT_RESTART`
        self.restart_requested = False
        self._drain_requested = trio.Event()
        #: set once run() has returned or failed: every task below it has ended
        self.stopped = trio.Event()
        for listener in config.effective_listeners():
            try:
                identities = IdentityStore.from_config(listener.tls)
                bootstrap = BootstrapListener(
                    address=listener.address,
                    identities=identities,
                    client_auth=listener.tls.client_auth,
                    performance=perf,
                    protocol=config.resilience.protocol,
                    handler=self.proxy.handle,
                    activity=self.activity,
                )
            except Exception as exc:
                raise StartupError(f"listener {listener.address}:{listener.port}: {exc}") from exc
            self.listeners.append(
                QuicListener(
                    address=listener.address,
                    port=listener.port,
                    identities=identities,
                    performance=perf,
                    handler=self.proxy.handle,
                    activity=self.activity,
                    protocol=config.resilience.protocol,
                )
            )
            self.bootstrap_listeners.append(bootstrap)
        for quic in self.listeners:  # answers given before the pipeline (431, 400, 501...)
            quic.on_reject = self.metrics.request_rejected
        for tcp in self.bootstrap_listeners:
            tcp.ctx.on_reject = self.metrics.request_rejected
        self.metrics.attach(self)
        #: (endpoint, required) for the metrics endpoint and control API that are enabled
        self.endpoints: list[tuple[HttpEndpoint, bool]] = []
        obs = config.observability
        if obs.metrics.enabled:
            self.endpoints.append((metrics_endpoint(obs.metrics, self.metrics), obs.metrics.required))
        self.control_api: ControlApi | None = None
        if obs.control_api.enabled:
            try:
                self.control_api = ControlApi(obs.control_api, self)
            except EndpointSetupError as exc:
                raise StartupError(str(exc)) from exc
            self.endpoints.append((self.control_api.endpoint(self.metrics.control_api_drops.inc), obs.control_api.required))

    @property
    def ready(self) -> bool:
        """Every listener is bound and serving, and the server is not draining."""
        return self.serving and not self.draining

    @property
    def config(self) -> Any:
        return self.generation.config

    def bind(self) -> None:
        """Bind every listener socket; raises :class:`StartupError` naming the address."""
        for listener in self.listeners:
            try:
                listener.bind()
            except OSError as exc:
                raise StartupError(f"cannot bind UDP {listener.address}:{listener.port}: {exc.strerror or exc}") from exc
        for quic, tcp in zip(self.listeners, self.bootstrap_listeners):
            try:
                tcp.bind(quic.port)
            except OSError as exc:
                raise StartupError(f"cannot bind TCP {tcp.address}:{quic.port}: {exc.strerror or exc}") from exc
        for endpoint, required in self.endpoints:
            try:
                endpoint.bind()
            except OSError as exc:
                message = f"cannot bind the {endpoint.name} on tcp {endpoint.address}:{endpoint.port}: {exc.strerror or exc}"
                if required:
                    raise StartupError(message) from exc
                log.error("%s; serving without it", message)

    async def run(self, *, handle_signals: bool = True, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until drained. ``task_status.started(self)`` once every listener is bound."""
        try:
            self.bind()
            drop_privileges(self.config.security.privileges)
            await self._serve(handle_signals, task_status)
        finally:
            self.stopped.set()

    async def _serve(self, handle_signals: bool, task_status: trio.TaskStatus[Server]) -> None:
        async with trio.open_nursery() as root:
            await root.start(self.upstream.run)
            await root.start(self.health.run, self.generation)  # background nursery: probes, DNS
            for listener in self.listeners:
                await root.start(listener.serve)
                log.info("listening for HTTP/3 on udp %s:%d", listener.address, listener.port)
            for tcp in self.bootstrap_listeners:
                await root.start(tcp.serve)
                log.info("listening for HTTP/1.1 and HTTP/2 on tcp %s:%d", tcp.address, tcp.port)
            for endpoint, _required in self.endpoints:
                if endpoint.bound:
                    await root.start(endpoint.serve)
                    log.info("serving the %s on tcp %s:%d", endpoint.name, endpoint.address, endpoint.port)
            if handle_signals:
                root.start_soon(self._watch_signals, root.cancel_scope)
            self.serving = True
            task_status.started(self)
            await self._drain_requested.wait()
            await self._drain()
            root.cancel_scope.cancel()

    def request_drain(self) -> None:
        """Begin graceful shutdown (idempotent)."""
        self._drain_requested.set()

    def request_restart(self) -> None:
        """Drain gracefully, then exit with :data:`EXIT_RESTART` (control API ``restart_path``)."""
        if not self._drain_requested.is_set():
            log.info("restart requested: graceful drain, then exit status %d", EXIT_RESTART)
            self.restart_requested = True
        self.request_drain()

    def reload_certs(self) -> list[dict[str, Any]]:
        """Re-read every listener's certificates, keys and client-auth CA from the files the
        config names, for handshakes that start from now on (QUIC and TCP); open connections
        keep their material. All or nothing: any unreadable or invalid file raises
        :class:`~spooky_trio.ingress.identities.IdentityError` or
        :class:`~spooky_trio.ingress.tls.TlsSetupError` and nothing is replaced.
        Returns one summary per listener (certificate serials and expiry)."""
        fresh = []
        for listener_config, quic in zip(self.config.effective_listeners(), self.listeners):
            try:
                identities = IdentityStore.from_config(listener_config.tls)
                tls = BootstrapTls(identities, listener_config.tls.client_auth)
            except (IdentityError, TlsSetupError) as exc:
                raise type(exc)(f"listener {quic.address}:{quic.port}: {exc}") from exc
            fresh.append((identities, tls))
        summary = []
        for (identities, tls), quic, tcp in zip(fresh, self.listeners, self.bootstrap_listeners):
            quic.replace_identities(identities)
            tcp.use_tls(tls)
            summary.append({
                "listener": f"{quic.address}:{quic.port}",
                "certificates": [
                    {"server_name": i.server_name, "serial": format(i.certificate.serial_number, "x"),
                     "not_after": i.certificate.not_valid_after_utc.isoformat()}
                    for i in identities.all()
                ],
            })
        log.info("listener certificates reloaded (%d listener(s)); new handshakes use them", len(summary))
        return summary

    async def _drain(self) -> None:
        self.draining = True
        timeout = self.config.performance.shutdown_drain_timeout_ms / 1000
        log.info("draining: %d request(s) in flight, up to %.1fs", self.activity.count, timeout)
        for listener in self.listeners:
            listener.begin_drain()
        for tcp in self.bootstrap_listeners:
            tcp.begin_drain()
        with trio.move_on_after(timeout) as scope:
            await self.activity.wait_idle()
        if scope.cancelled_caught:
            log.warning("drain deadline passed with %d request(s) in flight; cancelling them", self.activity.count)
        # the last response bytes must be acknowledged before CONNECTION_CLOSE discards them
        with trio.move_on_after(1.0):
            for listener in self.listeners:
                await listener.wait_acked()
        for listener in self.listeners:
            listener.close_all()
        with trio.move_on_after(1.0):
            for listener in self.listeners:
                await listener.wait_closed()
        log.info("stopped")

    async def _watch_signals(self, root_scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if not self._drain_requested.is_set():
                    log.info("received %s: graceful drain", signal.Signals(signum).name)
                    self.request_drain()
                else:
                    log.warning("received %s again: stopping now", signal.Signals(signum).name)
                    self.forced = True
                    root_scope.cancel()
                    return


def drop_privileges(privileges: Any) -> None:
    """After binding: a root process switches to ``user``/``group``; others log and skip."""
    if not privileges.enabled:
        return
    if os.geteuid() != 0:
        log.debug("not started as root: privilege drop skipped")
        return
    try:
        gid = grp.getgrnam(privileges.group).gr_gid
        uid = pwd.getpwnam(privileges.user).pw_uid
    except KeyError as exc:
        raise StartupError(f"security.privileges: unknown user or group {exc}") from exc
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    log.info("dropped privileges to %s:%s", privileges.user, privileges.group)
