"""The root task tree: listeners, the upstream pool, signals and graceful drain.

```
Server.run
├─ instance locks: answer other instances' probes (serving/instance_lock.py)
├─ background services, each following the live generations (serving/background.py):
│    upstream pool (h2 connection readers, idle reaper), discovery (one task per source),
│    health supervisor (probers, DNS refreshers), trace export (span queue -> OTLP), auth store (JWKS refreshers, OIDC
│    discovery, HTTP clients), rate-limit stores (one task per Redis store in use), the
│    shadow nursery (mirror copies; drained after the primary requests)
├─ one ListenerPair per listener block, each in its own cancel scope:
│    QuicListener (UDP) + BootstrapListener (TCP + TLS: HTTP/1.1, HTTP/2), same port
├─ one service per enabled endpoint (metrics, control API), each in its own cancel scope
├─ listener pairs and endpoints a reload removed, draining then closing
└─ signal watcher: TERM/INT -> drain, a second one -> stop at once; HUP -> config reload
```

A configuration reload (serving/reload.py) calls :meth:`Server.stage` (build the new
generation's filter chain, bind added listeners and moved endpoints, open a new log file:
nothing running is touched, and :meth:`Staged.abort` undoes it all) and then
:meth:`Server.commit` (around the swap of the reload manager's
:class:`~spooky_trio.core.generations.GenerationSet`; see docs/reload.md).

(About 420 lines, over the house's ~400: the task tree and the stage/commit pair read the
same fields and belong together; what could leave already did — staging.py, background.py,
listeners.py, watchdog.py.)
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

import trio

from spooky_trio.config import Config, ListenerConfig
from spooky_trio.config.issues import ConfigIssue, PositionMap
from spooky_trio.core.activity import Activity
from spooky_trio.core.generation import Generation
from spooky_trio.core.generations import GenerationSet
from spooky_trio.core.state import StateStore
from spooky_trio.health.supervisor import HealthSupervisor
from spooky_trio.ingress.bootstrap import BootstrapListener
from spooky_trio.ingress.identities import IdentityStore
from spooky_trio.ingress.quic import QuicListener
from spooky_trio.ingress.steering import listener_steering
from spooky_trio.observability.http_server import HttpEndpoint
from spooky_trio.observability.logging import build_handler, install_handler
from spooky_trio.observability.metrics import Metrics
from spooky_trio.observability.tracing import Tracing
from spooky_trio.proxy.chain import Proxy
from spooky_trio.proxy.filters import build_chain
from spooky_trio.resilience.watchdog import Watchdog
from spooky_trio.serving.background import Background
from spooky_trio.serving.control import ControlApi, EndpointSetupError, metrics_endpoint
from spooky_trio.serving.exits import EXIT_RESTART, StartupError
from spooky_trio.serving.instance_lock import InstanceLocks, held_by_my_supervisor
from spooky_trio.serving.listeners import (
    BindError,
    ListenerPair,
    Service,
    drain,
    reload_certificates,
)
from spooky_trio.serving.privileges import PrivilegeError, drop_privileges
from spooky_trio.serving.reload import ConfigManager, StageError
from spooky_trio.serving.staging import Staged, stage_listeners, stage_services
from spooky_trio.serving.watchdog import WatchdogService
from spooky_trio.upstream import UpstreamPool

log = logging.getLogger("spooky.server")

class Server:
    """One serving process. ``run`` returns when the server stopped; see module docstring.

    ``config_path`` is the file a reload (control API ``reload_path``, SIGHUP) re-reads and
    ``POST /admin/config/apply?persist=true`` writes; None when the config came from text.
    """

    def __init__(
        self, config: Config, *, config_path: str | None = None, worker_index: int | None = None,
        adapt_config: Callable[[Config], Config] | None = None, udp_sockets: dict[tuple[str, int], int] | None = None,
    ) -> None:
        self.config_path = config_path
        #: this process's index under a supervisor (``performance.worker_threads > 1``), else None
        self.worker_index = worker_index
        #: UDP sockets the supervisor bound for this worker, by listener (ingress/steering.py)
        self.udp_sockets = dict(udp_sockets or {})
        #: applied to every config a reload loads (a worker's private control API: serving/workers.py)
        self.adapt_config = adapt_config
        #: backend health, ejection, latency, DNS addresses: survives reloads (keyed by backend)
        self.state = StateStore()
        first = Generation.build(config, number=1, state=self.state)
        perf = config.performance
        self.activity = Activity()
        self.upstream = UpstreamPool(
            idle_timeout=perf.h2_pool_idle_timeout_ms / 1000,
            max_idle_per_backend=perf.h2_pool_max_idle_per_backend,
        )
        self.upstream.configure(perf)  # HTTP/3 pool settings
        #: this server's own Prometheus registry (several servers may share a process)
        self.metrics = Metrics()
        #: the reload transaction, history, rollback and canary (serving/reload.py); it owns
        #: the GenerationSet the request path reads
        self.reloads = ConfigManager(self, first)
        #: observability.tracing: tracers per generation, the span queue, the OTLP export task
        self.tracing = Tracing(self.metrics)
        self.tracing.follow([config.observability.tracing])
        self.proxy = Proxy(
            self.reloads.generations.pick,
            lambda generation: build_chain(generation, upstream=self.upstream, state=self.state, metrics=self.metrics,
                                           tracing=self.tracing),
            self.metrics,
        )
        try:
            self.proxy.chain_for(first)
        except Exception as exc:  # noqa: BLE001 - a file a filter reads (auth CA, secret) went bad after the checks
            raise StartupError(f"cannot build the request chain: {exc}") from exc
        self.health = HealthSupervisor(self.upstream, self.metrics)
        #: the services that follow the live generations (serving/background.py)
        self.background = Background(self.upstream, self.health, self.tracing, self.state, self.metrics, self.proxy.chain_for,
                                     live=self.reloads.generations.live)
        #: the locks of the listener addresses (serving/instance_lock.py); a worker shares
        #: its supervisor's
        self.locks = InstanceLocks(tolerate=held_by_my_supervisor if worker_index is not None else None)
        #: one QUIC + TCP listener pair per listener block, in config order
        self._pairs: list[ListenerPair] = []
        #: pairs a reload removed that are still draining
        self._retiring: set[ListenerPair] = set()
        self._nursery: trio.Nursery | None = None
        self.draining = False
        #: every listener is serving (the control API's readiness, with ``draining``)
        self.serving = False
        #: resilience.watchdog, when enabled (follows reloads)
        self._watchdog = WatchdogService(self)
        self.forced = False
        #: set by :meth:`request_restart`: the process exits with :data:`EXIT_RESTART`
        self.restart_requested = False
        self._drain_requested = trio.Event()
        #: set once run() has returned or failed: every task below it has ended
        self.stopped = trio.Event()
        for listener in config.effective_listeners():
            try:
                self._pairs.append(self._make_pair(listener, config))
            except Exception as exc:
                raise StartupError(f"listener {listener.address}:{listener.port}: {exc}") from exc
        self.metrics.attach(self)
        self.metrics.attach_rate_limits(self.state.rate_limits)
        self.metrics.attach_discovery(self.state.discovery)
        self.metrics.attach_upstream(self.upstream)
        #: name ("metrics", "control") -> the enabled endpoint's service
        self._services: dict[str, Service] = {}
        obs = config.observability
        if obs.metrics.enabled:
            self._services["metrics"] = Service(metrics_endpoint(obs.metrics, self.metrics), obs.metrics)
        self.control_api: ControlApi | None = None
        if obs.control_api.enabled:
            try:
                self.control_api = ControlApi(obs.control_api, self)
            except EndpointSetupError as exc:
                raise StartupError(str(exc)) from exc
            self._services["control"] = Service(self.control_api.endpoint(self.metrics.control_api_drops.inc), obs.control_api)

    @property
    def ready(self) -> bool:
        """Every listener is bound and serving, and the server is not draining."""
        return self.serving and not self.draining

    @property
    def generations(self) -> GenerationSet:
        """The stable generation and the canary (owned by :attr:`reloads`; read here)."""
        return self.reloads.generations

    @property
    def generation(self) -> Generation:
        """The stable generation."""
        return self.reloads.generations.stable

    @property
    def config(self) -> Config:
        return self.generation.config

    @property
    def listeners(self) -> list[QuicListener]:
        """The QUIC listener of each current listener block (config order)."""
        return [pair.quic for pair in self._pairs]

    @property
    def bootstrap_listeners(self) -> list[BootstrapListener]:
        """The TCP (HTTP/1.1 + HTTP/2) listener beside each QUIC one, same index and port."""
        return [pair.tcp for pair in self._pairs]

    @property
    def endpoints(self) -> list[tuple[HttpEndpoint, bool]]:
        """(endpoint, required) for the metrics endpoint and control API that are enabled."""
        return [(service.endpoint, service.required) for service in self._services.values()]

    def _make_pair(self, listener: ListenerConfig, config: Config) -> ListenerPair:
        perf = config.performance
        activity = Activity(parent=self.activity)
        identities = IdentityStore.from_config(listener.tls)
        tcp = BootstrapListener(
            address=listener.address,
            identities=identities,
            client_auth=listener.tls.client_auth,
            performance=perf,
            protocol=config.resilience.protocol,
            handler=self.proxy.handle,
            reject=self.proxy.reject,
            activity=activity,
        )
        cids, steering, inherited_fd = listener_steering(listener, perf, self.worker_index, self.udp_sockets)
        quic = QuicListener(
            cids=cids, steering=steering, inherited_fd=inherited_fd,
            address=listener.address,
            port=listener.port,
            identities=identities,
            performance=perf,
            handler=self.proxy.handle,
            reject=self.proxy.reject,
            activity=activity,
            protocol=config.resilience.protocol,
        )
        return ListenerPair(listener, quic, tcp, activity, self.locks)

    def bind(self) -> None:
        """Bind every listener socket; raises :class:`StartupError` naming the address."""
        for pair in self._pairs:
            try:
                pair.bind()
            except BindError as exc:
                raise StartupError(str(exc)) from exc
        for service in self._services.values():
            endpoint = service.endpoint
            try:
                endpoint.bind()
            except OSError as exc:
                message = f"cannot bind the {endpoint.name} on tcp {endpoint.address}:{endpoint.port}: {exc.strerror or exc}"
                if service.required:
                    raise StartupError(message) from exc
                log.error("%s; serving without it", message)

    async def run(self, *, handle_signals: bool = True, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until drained. ``task_status.started(self)`` once every listener is bound."""
        try:
            self.bind()
            try:
                drop_privileges(self.config.security.privileges)
            except PrivilegeError as exc:
                raise StartupError(str(exc)) from exc
            await self._serve(handle_signals, task_status)
        finally:
            self.locks.release_all()
            self._nursery = None
            self.stopped.set()

    async def _serve(self, handle_signals: bool, task_status: trio.TaskStatus[Server]) -> None:
        async with trio.open_nursery() as root:
            self._nursery = root
            await root.start(self.locks.run)  # answers other instances' probes (instance_lock.py)
            await self.background.start(root, self.generation)  # pool, health, trace export, auth, rate-limit stores
            for pair in self._pairs:
                await self._start_pair(pair)
            for service in self._services.values():
                await self._start_service(service)
            if handle_signals:
                await root.start(self._watch_signals, root.cancel_scope)
            self.serving = True
            self._watchdog.follow(root)  # background: resilience/watchdog.py
            task_status.started(self)
            await self._drain_requested.wait()
            await self._drain()
            await self.state.shadows.drain(self.config.performance.shutdown_drain_timeout_ms / 1000)  # mirror copies
            await self.tracing.flush()  # the drained requests' spans, within a short bound
            root.cancel_scope.cancel()

    async def _start_pair(self, pair: ListenerPair) -> None:
        assert self._nursery is not None
        await self._nursery.start(pair.run)
        log.info("listening for HTTP/3 on udp %s:%d", pair.quic.address, pair.quic.port)
        log.info("listening for HTTP/1.1 and HTTP/2 on tcp %s:%d", pair.tcp.address, pair.tcp.port)

    async def _start_service(self, service: Service) -> None:
        assert self._nursery is not None
        endpoint = service.endpoint
        if endpoint.bound:
            await self._nursery.start(service.run)
            log.info("serving the %s on tcp %s:%d", endpoint.name, endpoint.address, endpoint.port)

    def request_drain(self) -> None:
        """Begin graceful shutdown (idempotent)."""
        self._drain_requested.set()

    def request_restart(self) -> None:
        """Drain gracefully, then exit with :data:`EXIT_RESTART` (control API ``restart_path``)."""
        if not self._drain_requested.is_set():
            log.info("restart requested: graceful drain, then exit status %d", EXIT_RESTART)
            self.restart_requested = True
        self.request_drain()

    def reload_certs(self) -> list[dict[str, object]]:
        """Re-read every listener's certificates (:func:`reload_certificates`)."""
        return reload_certificates(self._pairs)

    # -- reload: stage, then commit (driven by serving/reload.py) --

    def stage(self, config: Config, generation: Generation, *, listeners_and_services: bool = True) -> Staged:
        """Prepare everything ``config`` needs beside the running server: ``generation``
        (already built) and its filter chain, a fresh listener pair for each listener block
        (added ones bound now, so a bind failure fails the transaction), moved endpoints
        bound, a changed log handler opened. Raises :class:`StageError` with every problem,
        after undoing the rest. ``listeners_and_services=False`` (a canary) keeps
        listeners, endpoints and logging as they are."""
        staged = Staged(generation=generation, config=config)
        try:
            self.proxy.chain_for(generation)
        except Exception as exc:  # noqa: BLE001 - a filter that cannot be built from a config that validated
            raise StageError([ConfigIssue("", None, None, f"cannot build the request chain: {exc}")]) from exc
        if not listeners_and_services:
            staged.pairs = list(self._pairs)
            return staged
        issues: list[ConfigIssue] = []
        positions = PositionMap(config.source_positions)
        try:
            stage_listeners(config, staged, self._pairs, self._make_pair, positions, issues)
            stage_services(config, staged, self._services, self.control_api, lambda cfg: ControlApi(cfg, self), self.metrics, positions, issues)
            if config.log != self.config.log:
                try:
                    staged.log_handler = build_handler(config.log)
                except OSError as exc:
                    issues.append(positions.issue(("log", "file", "path"), f"cannot open the log file: {exc.strerror or exc}"))
        except BaseException:
            staged.abort()
            raise
        if issues:
            staged.abort()
            raise StageError(issues)
        return staged

    @property
    def watchdog(self) -> Watchdog | None:
        """The running watchdog (``resilience.watchdog.enabled``), else None."""
        return self._watchdog.watchdog

    async def commit(self, staged: Staged, swap: Callable[[], None], *, canary: bool = False) -> Callable[[], None]:
        """Go over to ``staged``: added listeners start serving, kept ones adopt their new
        settings, ``swap()`` (the reload manager's: its GenerationSet takes the generation,
        as the stable one or, with ``canary``, as the canary) makes requests that start from
        then on use it, removed listeners drain in the background, the health supervisor and
        upstream pool follow the live generations, endpoints and logging move. Returns the
        step to run once the caller answered (stop the endpoints that moved: a control API
        request that triggered the reload gets its answer on the old socket first)."""
        staged.generation.activate(beside=self.generation if canary else None)
        for pair in staged.added:
            await self._start_pair(pair)
        for pair, fresh in staged.kept:
            pair.adopt(fresh)
        swap()
        self._pairs = list(staged.pairs)
        assert self._nursery is not None
        for pair in staged.removed:
            self._retiring.add(pair)
            self._nursery.start_soon(self._retire_pair, pair)
        stopping: list[Service] = []
        for service, cfg, endpoint in staged.retuned:
            service.retune(endpoint, cfg)
        for name, new_service in staged.services.items():
            old = self._services.pop(name, None)
            if old is not None:
                stopping.append(old)
            if new_service is not None:
                self._services[name] = new_service
                await self._start_service(new_service)
        if staged.control_api is not None or "control" in staged.services:
            self.control_api = staged.control_api
        if staged.log_handler is not None:
            install_handler(staged.log_handler, staged.config.log)
        if not canary:  # the pool is process-wide: a canary does not retune it
            perf = staged.config.performance
            self.upstream.idle_timeout = perf.h2_pool_idle_timeout_ms / 1000
            self.upstream.max_idle_per_backend = perf.h2_pool_max_idle_per_backend
            self.upstream.configure(perf)
        await self.follow_generations()
        if not canary:
            assert self._nursery is not None
            self._watchdog.follow(self._nursery)

        def stop_moved() -> None:
            for service in stopping:
                log.info("stopped serving the %s on tcp %s:%d", service.endpoint.name, service.endpoint.address, service.endpoint.port)
                service.stop()

        return stop_moved

    async def follow_generations(self) -> None:
        """The background services follow the live generations (:meth:`Background.follow`)."""
        await self.background.follow(self.generations.live())

    async def _retire_pair(self, pair: ListenerPair) -> None:
        log.info("listener %s removed by a reload: draining", pair.name)
        try:
            await pair.drain(self.config.performance.shutdown_drain_timeout_ms / 1000)
        finally:
            self._retiring.discard(pair)
        log.info("listener %s closed", pair.name)

    async def _drain(self) -> None:
        self.draining = True
        timeout = self.config.performance.shutdown_drain_timeout_ms / 1000
        log.info("draining: %d request(s) in flight, up to %.1fs", self.activity.count, timeout)
        if not await drain(self._pairs + list(self._retiring), self.activity, timeout):
            log.warning("drain deadline passed with %d request(s) in flight; cancelling them", self.activity.count)
        log.info("stopped")

    async def _watch_signals(self, root_scope: trio.CancelScope, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("received SIGHUP: reloading the configuration file")
                    assert self._nursery is not None
                    self._nursery.start_soon(self._reload_on_signal)
                elif not self._drain_requested.is_set():
                    log.info("received %s: graceful drain", signal.Signals(signum).name)
                    self.request_drain()
                else:
                    log.warning("received %s again: stopping now", signal.Signals(signum).name)
                    self.forced = True
                    root_scope.cancel()
                    return

    async def _reload_on_signal(self) -> None:
        outcome = await self.reloads.reload_file("SIGHUP")
        if outcome.after is not None:
            outcome.after()  # nobody to answer: moved endpoints stop now
