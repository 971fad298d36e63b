"""Worker processes: ``performance.worker_threads: N`` (N > 1) under one supervisor.

```
spooky-trio run (supervisor, Trio)
├─ the configured listeners' instance locks (serving/instance_lock.py), shared by the workers
├─ metrics endpoint (the configured address): scrapes every worker, merges, + its own metrics
├─ control API (the configured address): health, ready (every worker), runtime (all),
│    reload / reload-certs / /admin/config/* forwarded to every worker, restart (all)
├─ signal watcher: TERM/INT -> drain every worker (a second one: stop now), HUP -> each
│    serving worker (one still starting gets it once it serves)
└─ one keeper task per worker: spawn ``python -m spooky_trio worker``, wait, restart on a
   crash with backoff (0.5 s doubling to 10 s)

spooky-trio worker --config FILE --worker-index i --report-fd FD (one per worker)
└─ a normal Server: the listeners bound with SO_REUSEPORT on the configured ports, its own
   control API (plus its metrics) on a private loopback port with a random bearer token
```

A worker serves the configured listeners exactly like a single-process server; only its
``observability`` section is replaced (:func:`worker_config`): the configured metrics and
control API belong to the supervisor, the worker's control API listens on 127.0.0.1, port 0,
default paths, the token the supervisor passed in ``SPOOKY_WORKER_TOKEN``. A worker drains when
its lifeline pipe from the supervisor reaches EOF (the supervisor died). Once serving, the
worker writes one JSON line (``{"control_port": p, "pid": ...}``) to the report pipe: that is
its readiness signal. The supervisor asks the workers' control APIs through
serving/worker_client.py. See docs/performance.md ("Workers").
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import sys
import time

import trio

from spooky_trio.config import Config, MetricsConfig
from spooky_trio.observability.http_server import (
    HttpEndpoint,
    HttpRequest,
    HttpResponse,
)
from spooky_trio.observability.supervisor_metrics import (
    SupervisorMetrics,
    merge_expositions,
)
from spooky_trio.serving.control import (
    PROMETHEUS_CONTENT_TYPE,
    WORKER_METRICS_PATH,
    EndpointSetupError,
)
from spooky_trio.serving.exits import StartupError
from spooky_trio.serving.instance_lock import InstanceLocks, ListenerInUse
from spooky_trio.serving.steering_sockets import UDP_FDS_ENV, SteeringSockets
from spooky_trio.serving.supervisor_control import SupervisorControlApi
from spooky_trio.serving.worker import TOKEN_ENV
from spooky_trio.serving.worker_client import WorkerAnswer, WorkerUnreachable, fetch

log = logging.getLogger("spooky.workers")

#: crash restart backoff: first delay, cap; a worker that ran this long resets it
BACKOFF_FIRST, BACKOFF_MAX, BACKOFF_RESET_AFTER = 0.5, 10.0, 10.0
#: how long a worker may take to start serving before it counts as failed
START_TIMEOUT = 60.0


# -- the supervisor --


class WorkerSlot:
    """One worker index: the current process (if any) and its history."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: trio.Process | None = None
        self.pid: int | None = None
        self.control_port: int | None = None
        #: "starting", "serving", "backoff", "stopped"
        self.state = "starting"
        self.restarts = 0
        self.started_at: float | None = None
        self.last_exit: int | None = None
        self.ever_served = False
        #: a SIGHUP came while this worker was starting (before its handler): sent once it serves
        self.reload_pending = False

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.returncode is None:
            try:
                self.process.send_signal(signum)
            except ProcessLookupError:
                pass

    def describe(self) -> dict[str, object]:
        return {"index": self.index, "pid": self.pid, "state": self.state, "restarts": self.restarts,
                "control_port": self.control_port, "last_exit_status": self.last_exit,
                "uptime_seconds": None if self.started_at is None else round(time.monotonic() - self.started_at, 3)}


class Supervisor:
    """Runs ``worker_threads`` worker processes (module docstring); ``run`` returns once
    every worker exited after a drain (or the startup failed)."""

    def __init__(self, config: Config, config_path: str, *, worker_args: list[str] | None = None) -> None:
        self.config = config
        self.config_path = os.path.abspath(config_path)
        #: passed on to every worker's command line (the log options of ``spooky-trio run``)
        self.worker_args = list(worker_args or ())
        self.count = config.performance.worker_threads
        for listener in config.effective_listeners():
            if listener.port == 0:
                raise StartupError(f"listener {listener.address}: port 0 cannot be shared by {self.count} workers; configure a port")
        self.token = secrets.token_urlsafe(32)
        #: the listeners' instance locks: held here, shared by the workers
        self.locks = InstanceLocks()
        self.slots = [WorkerSlot(i) for i in range(self.count)]
        #: the listeners' UDP sockets, one per worker in index order (worker steering)
        self.udp = SteeringSockets(config)
        self.metrics = SupervisorMetrics(self.count, lambda: sum(slot.state == "serving" for slot in self.slots))
        self.started_monotonic = time.monotonic()
        self.draining = False
        self.forced = False
        self.restart_requested = False
        self.startup_failure: str | None = None
        self.unclean_exit = False
        self._drain_requested = trio.Event()
        #: set once every worker served at least once
        self.all_started = trio.Event()
        #: the backend admin's PUTs every worker took (path -> body), replayed to a worker
        #: that restarts (they live in memory only: serving/admin_upstreams.py)
        self.backend_changes: dict[str, bytes] = {}
        self.endpoints: list[tuple[HttpEndpoint, bool]] = []
        obs = config.observability
        if obs.metrics.enabled:
            self.endpoints.append((self._metrics_endpoint(obs.metrics), obs.metrics.required))
        if obs.control_api.enabled:
            try:
                api = SupervisorControlApi(obs.control_api, self)
            except EndpointSetupError as exc:
                raise StartupError(str(exc)) from exc
            self.endpoints.append((api.endpoint(self.metrics.control_api_drops.inc), obs.control_api.required))

    # -- lifecycle --

    async def run(self, *, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            for listener in self.config.effective_listeners():  # before any worker binds
                try:
                    self.locks.acquire(listener.address, listener.port)
                except ListenerInUse as exc:
                    raise StartupError(str(exc)) from exc
            self.udp.bind()  # before any worker starts: socket i is worker i's (StartupError)
            await self._run(task_status)
        finally:
            self.udp.close()
            self.locks.release_all()

    async def _run(self, task_status: trio.TaskStatus[Supervisor]) -> None:
        bound = []
        for endpoint, required in self.endpoints:
            try:
                endpoint.bind()
                bound.append(endpoint)
            except OSError as exc:
                message = f"cannot bind the {endpoint.name} on tcp {endpoint.address}:{endpoint.port}: {exc.strerror or exc}"
                if required:
                    for other in bound:
                        other.unbind()
                    raise StartupError(message) from exc
                log.error("%s; serving without it", message)
        log.info("supervisor (pid %d) starting %d workers", os.getpid(), self.count)
        async with trio.open_nursery() as root:
            await root.start(self._watch_signals, root.cancel_scope)
            await root.start(self.locks.run)
            async with trio.open_nursery() as services:
                for endpoint in bound:
                    await services.start(endpoint.serve)
                    log.info("serving the %s on tcp %s:%d", endpoint.name, endpoint.address, endpoint.port)
                async with trio.open_nursery() as keepers:
                    for slot in self.slots:
                        keepers.start_soon(self._keep, slot)
                    task_status.started(self)
                    await self._drain_requested.wait()
                    self.draining = True
                    log.info("draining %d workers", self.count)
                    for slot in self.slots:
                        slot.signal(signal.SIGTERM)
                services.cancel_scope.cancel()
            root.cancel_scope.cancel()
        if self.startup_failure is not None:
            raise StartupError(self.startup_failure)
        log.info("all workers stopped")

    def request_drain(self) -> None:
        self._drain_requested.set()

    def request_restart(self) -> None:
        if not self._drain_requested.is_set():
            log.info("restart requested: draining every worker, then exit status 75")
            self.restart_requested = True
        self.request_drain()

    @property
    def ready(self) -> bool:
        return not self.draining and all(slot.state == "serving" for slot in self.slots)

    async def _watch_signals(self, root_scope: trio.CancelScope, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("received SIGHUP: every worker reloads the configuration file")
                    for slot in self.slots:
                        if slot.state == "serving":
                            slot.signal(signal.SIGHUP)
                        else:  # its default action would kill a worker still starting
                            slot.reload_pending = True
                elif not self._drain_requested.is_set():
                    log.info("received %s: graceful drain of every worker", signal.Signals(signum).name)
                    self.request_drain()
                else:
                    log.warning("received %s again: workers stop now", signal.Signals(signum).name)
                    self.forced = True
                    for slot in self.slots:
                        slot.signal(signal.SIGTERM)  # their second signal: stop at once

    async def _keep(self, slot: WorkerSlot) -> None:
        """Run the worker at ``slot.index`` until the drain; restart it when it exits."""
        backoff = BACKOFF_FIRST
        while not self.draining:
            started = time.monotonic()
            status = await self._run_once(slot)
            slot.last_exit = status
            if self._drain_requested.is_set():  # (it may have begun while the worker ran)
                if status not in (0, -signal.SIGTERM):  # -SIGTERM: stopped before it served
                    self.unclean_exit = True
                break
            if not slot.ever_served and not self.all_started.is_set():
                self.startup_failure = f"worker {slot.index} exited with status {status} before serving"
                log.error("%s: stopping", self.startup_failure)
                self.request_drain()
                break
            if time.monotonic() - started >= BACKOFF_RESET_AFTER:
                backoff = BACKOFF_FIRST
            reason = "restart_requested" if status == 75 else "crash"
            delay = 0.0 if reason == "restart_requested" else backoff
            slot.restarts += 1
            self.metrics.worker_restarts.labels(reason).inc()
            log.warning("worker %d (pid %s) exited with status %s; restarting it in %.1fs (restart %d)",
                        slot.index, slot.pid, status, delay, slot.restarts)
            slot.state = "backoff"
            with trio.move_on_after(delay):
                await self._drain_requested.wait()
            if reason == "crash":
                backoff = min(backoff * 2, BACKOFF_MAX)
        slot.state = "stopped"

    async def _run_once(self, slot: WorkerSlot) -> int:
        read_fd, write_fd = os.pipe()  # the worker reports readiness on it
        life_read, life_write = os.pipe()  # held open here: EOF tells the worker we are gone
        env = dict(os.environ)
        env[TOKEN_ENV] = self.token
        env[UDP_FDS_ENV], udp_fds = self.udp.for_worker(slot.index)
        argv = [sys.executable, "-m", "spooky_trio", "worker", "--config", self.config_path,
                "--worker-index", str(slot.index), "--report-fd", str(write_fd), "--lifeline-fd", str(life_read), *self.worker_args]
        slot.state, slot.control_port, slot.reload_pending = "starting", None, False  # it reads the file now
        try:
            # own session: a terminal's Ctrl-C reaches the supervisor only, which drains them
            process = await trio.lowlevel.open_process(argv, pass_fds=(write_fd, life_read, *udp_fds), env=env, start_new_session=True)
        except BaseException:
            os.close(read_fd)
            os.close(life_write)
            raise
        finally:
            os.close(write_fd)
            os.close(life_read)
        try:
            return await self._wait_worker(slot, process, read_fd)
        finally:
            os.close(life_write)

    async def _wait_worker(self, slot: WorkerSlot, process: trio.Process, read_fd: int) -> int:
        slot.process, slot.pid, slot.started_at = process, process.pid, time.monotonic()
        log.info("worker %d started (pid %d)", slot.index, process.pid)
        if self.draining:  # the drain began while it was being spawned
            slot.signal(signal.SIGTERM)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_report, slot, read_fd)
            status = await process.wait()
            nursery.cancel_scope.cancel()
        slot.state = "stopped"
        (log.info if status == 0 else log.warning)("worker %d (pid %d) exited with status %d", slot.index, process.pid, status)
        return status

    async def _read_report(self, slot: WorkerSlot, read_fd: int) -> None:
        stream = trio.lowlevel.FdStream(read_fd)
        async with stream:
            seen = bytearray()
            with trio.move_on_after(START_TIMEOUT) as scope:
                while b"\n" not in seen and len(seen) < 4096:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return  # exited before serving
                    seen += chunk
            if scope.cancelled_caught:
                log.error("worker %d did not start serving within %.0fs: stopping it", slot.index, START_TIMEOUT)
                if slot.process is not None:
                    slot.process.kill()
                return
        try:
            report = json.loads(bytes(seen).split(b"\n", 1)[0])
            slot.control_port = int(report["control_port"])
        except (ValueError, KeyError, TypeError):
            log.error("worker %d sent an unreadable report: %r", slot.index, bytes(seen[:200]))
            if slot.process is not None:
                slot.process.kill()
            return
        slot.state, slot.ever_served = "serving", True
        if slot.reload_pending:
            slot.reload_pending = False
            slot.signal(signal.SIGHUP)
        log.info("worker %d (pid %s) serving; private control API on 127.0.0.1:%d", slot.index, slot.pid, slot.control_port)
        await self._replay_backend_changes(slot)
        if all(s.ever_served for s in self.slots) and not self.all_started.is_set():
            self.all_started.set()
            log.info("all %d workers serving", self.count)

    def remember_backend_change(self, method: str, path: str, body: bytes) -> None:
        """A backend admin change every worker took (see :attr:`backend_changes`)."""
        if method == "PUT":
            self.backend_changes[path] = body
        else:
            self.backend_changes.pop(path, None)

    async def _replay_backend_changes(self, slot: WorkerSlot) -> None:
        for path, body in list(self.backend_changes.items()):
            if slot.control_port is None:
                return
            try:
                status, _ = await fetch(slot.control_port, "PUT", path, self.token, body)
            except WorkerUnreachable as exc:
                log.error("worker %d: cannot replay the backend admin's %s: %s", slot.index, path, exc)
                continue
            if status == 404:  # a reload removed the pool since
                self.backend_changes.pop(path, None)

    # -- reaching the workers --

    async def each_worker(self, method: str, target: str, body: bytes = b"", timeout: float = 5.0) -> list[WorkerAnswer]:
        """Ask every worker (concurrently): one answer per worker, in worker order."""
        results = [WorkerAnswer(s.index, s.pid) for s in self.slots]

        async def ask(slot: WorkerSlot, entry: WorkerAnswer) -> None:
            if slot.state != "serving" or slot.control_port is None:
                entry.error = f"worker is {slot.state}"
                return
            try:
                entry.status, entry.body = await fetch(slot.control_port, method, target, self.token, body, timeout)
            except WorkerUnreachable as exc:
                entry.error = str(exc)

        async with trio.open_nursery() as nursery:
            for slot, entry in zip(self.slots, results):
                nursery.start_soon(ask, slot, entry)
        return results

    def _metrics_endpoint(self, config: MetricsConfig) -> HttpEndpoint:
        async def handle(request: HttpRequest) -> HttpResponse:
            if request.path != config.path:
                return HttpResponse(404, b"not found\n")
            if request.method not in ("GET", "HEAD"):
                return HttpResponse(405, b"method not allowed\n", headers=(("allow", "GET, HEAD"),))
            return HttpResponse(200, await self.render_metrics(), content_type=PROMETHEUS_CONTENT_TYPE)

        return HttpEndpoint(name="metrics", address=config.address, port=config.port, handler=handle,
                            max_connections=config.max_connections, connection_timeout=config.connection_timeout_ms / 1000)

    async def render_metrics(self) -> bytes:
        """Every worker's metrics merged (docs/performance.md, "Workers"), then the supervisor's."""
        texts = []
        for entry in await self.each_worker("GET", WORKER_METRICS_PATH):
            if entry.status == 200 and entry.body is not None:
                texts.append(entry.body.decode("utf-8", "replace"))
            elif self.slots[entry.worker].state == "serving":
                self.metrics.scrape_errors.inc()
        return merge_expositions(texts, self.metrics.own_families) + self.metrics.render()
