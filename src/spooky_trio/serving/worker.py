"""The worker side of ``performance.worker_threads: N`` (N > 1): one ``spooky-trio worker``
process serving a normal :class:`~spooky_trio.serving.server.Server` under the supervisor
(``serving/workers.py``, whose docstring has the whole picture).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
from collections.abc import Callable

import attrs
import trio

from spooky_trio.config import Config
from spooky_trio.config.schema_runtime import ControlApiConfig
from spooky_trio.serving.exits import EXIT_FORCED, EXIT_RESTART, StartupError
from spooky_trio.serving.heap import freeze_startup_heap
from spooky_trio.serving.server import Server
from spooky_trio.serving.steering_sockets import inherited_udp_sockets

log = logging.getLogger("spooky.workers")

#: environment variable carrying the token of the workers' private control APIs
TOKEN_ENV = "SPOOKY_WORKER_TOKEN"
#: the paths of every worker's private control API (the schema defaults)
INTERNAL = ControlApiConfig()


def worker_config(config: Config, token: str) -> Config:
    """``config`` as a worker serves it: no metrics endpoint of its own, the control API on
    a private loopback port (the supervisor serves the configured ones)."""
    obs = config.observability
    # a disabled control API's values are not validated (as Spooky): then the default
    timeout = (obs.control_api if obs.control_api.enabled else INTERNAL).connection_timeout_ms
    control = ControlApiConfig(enabled=True, required=True, address="127.0.0.1", port=0, auth_token=token,
                               max_connections=64, connection_timeout_ms=timeout)
    return attrs.evolve(config, observability=attrs.evolve(obs, metrics=attrs.evolve(obs.metrics, enabled=False), control_api=control))


def pin_to_cpu(index: int) -> int:
    """Pin this process to one CPU of the allowed set, round-robin by worker ``index``."""
    cpus = sorted(os.sched_getaffinity(0))
    cpu = cpus[index % len(cpus)]
    os.sched_setaffinity(0, {cpu})
    return cpu


async def _watch_lifeline(fd: int, server: Server) -> None:
    """Drain when the supervisor is gone: it holds the write end of the pipe whose read end
    is ``fd``, so EOF means it exited (or was killed). (PR_SET_PDEATHSIG is no use here:
    Trio spawns from a worker thread, and the signal fires when that thread exits.)"""
    try:
        await trio.lowlevel.wait_readable(fd)
        os.read(fd, 1)
    finally:
        os.close(fd)
    if not server.draining:
        log.warning("the supervisor is gone: draining")
    server.request_drain()


def run_worker(config: Config, config_path: str, index: int, report_fd: int, lifeline_fd: int | None = None,
               override: Callable[[Config], Config] | None = None) -> int:
    """The body of ``spooky-trio worker`` (logging is configured by the caller);
    ``override`` is applied to every config a reload loads (``--log-level``, ``--log-format``)."""
    token = os.environ.pop(TOKEN_ENV, "") or secrets.token_urlsafe(32)
    if config.performance.pin_workers:
        try:
            cpu = pin_to_cpu(index)
            log.info("worker %d pinned to CPU %d", index, cpu)
        except OSError as exc:
            log.warning("worker %d: cannot pin to a CPU: %s", index, exc)

    def adapt(cfg: Config) -> Config:
        return worker_config(cfg if override is None else override(cfg), token)

    first = adapt(config)
    freeze_startup_heap()  # full collections stop walking what never dies (serving/heap.py)
    server = Server(first, config_path=config_path, worker_index=index, adapt_config=adapt,
                    udp_sockets=inherited_udp_sockets())

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            if lifeline_fd is not None:
                nursery.start_soon(_watch_lifeline, lifeline_fd, server)
            port = server.endpoints[0][0].port
            os.write(report_fd, json.dumps({"control_port": port, "pid": os.getpid()}).encode() + b"\n")
            os.close(report_fd)
            await server.stopped.wait()
            nursery.cancel_scope.cancel()  # the lifeline watcher

    failure: BaseException | None = None
    try:
        trio.run(main)
    except StartupError as exc:
        failure = exc
    except BaseExceptionGroup as group:  # server.run failed inside main's nursery
        startup, rest = group.split(StartupError)
        if startup is None or rest is not None:
            raise
        failure = startup
        while isinstance(failure, BaseExceptionGroup):
            failure = failure.exceptions[0]
    except KeyboardInterrupt:
        return EXIT_FORCED
    if failure is not None:
        print(f"spooky-trio worker {index}: {failure}", file=sys.stderr)
        return 1
    if server.forced:
        return EXIT_FORCED
    return EXIT_RESTART if server.restart_requested else 0
