"""The discovery nursery: one task per source a live generation uses.

:meth:`DiscoveryService.follow` reconciles the running tasks with the sources of the live
generations (the stable one and a canary), like the health supervisor does with probes: a
source whose settings are unchanged keeps its task (an etcd watch is not restarted by a
reload that keeps it), a changed one is restarted (its last good set stays: it is kept by
source, not by task), a source no live generation names is stopped. A new task is started
once it has made its first attempt (a good answer, or every etcd endpoint tried once),
each call bounded by ``timeout_ms``, so that a reload or the server's start returns with
the new pool filled when the source answers.

A polled source (file, DNS SRV) is asked every ``refresh_ms``; after a failure it is asked
again sooner (1 s, doubling up to ``refresh_ms``), and an SRV answer's TTL may shorten the
wait. Answers go through a :class:`~spooky_trio.discovery.source.SourceSink`.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable, Sequence

import trio

from spooky_trio.config.schema_discovery import DiscoveryConfig
from spooky_trio.discovery.etcd import EtcdSource
from spooky_trio.discovery.file import FileSource
from spooky_trio.discovery.membership import DiscoveryState, SourceKey
from spooky_trio.discovery.source import DiscoveryError, DiscoveryMetrics, PolledSource, SourceSink
from spooky_trio.discovery.srv import SrvSource

log = logging.getLogger("spooky.discovery")

#: the first retry delay of a polled source after a failure (seconds)
RETRY_AFTER_FAILURE = 1.0


class DiscoveryService:
    """Runs the source tasks (module docstring)."""

    def __init__(self, state: DiscoveryState, metrics: DiscoveryMetrics | None = None) -> None:
        self.state = state
        self.metrics = metrics
        self._nursery: trio.Nursery | None = None
        #: source key -> (settings it was started with, its cancel scope)
        self._tasks: dict[SourceKey, tuple[Hashable, trio.CancelScope]] = {}

    @property
    def task_count(self) -> int:
        return len(self._tasks)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the source tasks until cancelled (:meth:`follow` starts them)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None
                self._tasks.clear()

    async def follow(self, sources: Iterable[tuple[SourceKey, DiscoveryConfig]], nameservers: Sequence[str]) -> None:
        """Run one task per source in ``sources`` (the last settings of a key win), with
        ``nameservers`` (``performance.backend_dns_nameservers``) for SRV sources."""
        if self._nursery is None:
            raise RuntimeError("DiscoveryService.run() is not running")
        wanted: dict[SourceKey, DiscoveryConfig] = {}
        for key, discovery in sources:
            wanted[key] = discovery
        settings = {key: (discovery, tuple(nameservers) if discovery.kind == "dns_srv" else ()) for key, discovery in wanted.items()}
        for key in list(self._tasks):
            started_with, scope = self._tasks[key]
            if settings.get(key) != started_with:
                scope.cancel()
                del self._tasks[key]
        async with trio.open_nursery() as starters:  # first answers are awaited concurrently
            for key, discovery in wanted.items():
                if key not in self._tasks:
                    starters.start_soon(self._nursery.start, self._supervised, key, settings[key], discovery, tuple(nameservers))

    async def _supervised(self, key: SourceKey, settings: Hashable, discovery: DiscoveryConfig, nameservers: Sequence[str],
                          *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sink = SourceSink(self.state, key, self.metrics)
        with trio.CancelScope() as scope:
            self._tasks[key] = (settings, scope)
            try:
                if discovery.kind == "etcd":
                    await EtcdSource(discovery, sink).run(task_status=task_status)
                else:
                    await poll(_polled(discovery, nameservers), sink, discovery.refresh_ms / 1000, task_status=task_status)
            finally:
                if self._tasks.get(key, (None, None))[1] is scope:
                    del self._tasks[key]


def _polled(discovery: DiscoveryConfig, nameservers: Sequence[str]) -> PolledSource:
    timeout = discovery.timeout_ms / 1000
    if discovery.kind == "file":
        return FileSource(discovery.path or "", timeout)
    return SrvSource(discovery.name or "", discovery.scheme, nameservers, timeout)


async def poll(source: PolledSource, sink: SourceSink, period: float, *,
               task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Ask ``source`` every ``period`` seconds (module docstring) until cancelled; started
    after the first attempt."""
    retry = min(RETRY_AFTER_FAILURE, period)
    started = False
    while True:
        delay = period
        try:
            answer = await source.fetch()
        except DiscoveryError as exc:
            sink.failure(exc)
            delay, retry = retry, min(retry * 2, period)
        except Exception as exc:  # noqa: BLE001 - a bug or a library surprise must not end the source
            log.exception("%s: unexpected error while asking the source", sink.label)
            sink.failure(DiscoveryError("internal", f"{type(exc).__name__}: {exc}"))
            delay, retry = retry, min(retry * 2, period)
        else:
            retry = min(RETRY_AFTER_FAILURE, period)
            if answer is not None:
                if not sink.answer(answer.entries):
                    delay = retry
                elif answer.ttl is not None:
                    delay = min(period, answer.ttl)
        if not started:
            started = True
            task_status.started()
        await trio.sleep(delay)
