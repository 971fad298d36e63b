"""Which backends each pool has right now: its discovery source's last good answer, the
admin API's backends and the config's, kept across reloads in the Server's state store.

:class:`DiscoveryState` is plain synchronous Python (an explicit ``now``), written only by
the source tasks (``discovery/service.py``) and the admin API (``serving/admin_upstreams.py``)
and read when a generation builds or refreshes a pool (``core/generation.py``):

- a source's answers are kept per :data:`SourceKey` (pool, kind and what it reads: a file
  path, an SRV name and scheme, an etcd prefix and endpoints), so a reload that keeps the
  source keeps its set, and a canary reading another source has its own;
- last known good: only a non-empty answer replaces a set (:meth:`DiscoveryState.answer`);
  a failed or empty one is counted and the set stays (:meth:`DiscoveryState.failure`);
- a pool with ``discovery`` serves its source's set, else the newest set any source of that
  pool answered (a reload that moves the source keeps serving until the new one answers),
  else the config's ``backends`` (a seed); a pool without ``discovery`` serves its config;
- the admin API's backends (:meth:`DiscoveryState.put`) are laid over that, by id (an id
  the source also names is replaced); they last while a live generation has the pool;
- every change bumps the pool's version (from one counter for the whole store, so a
  version never repeats) and calls ``on_change``: a generation whose pool was built at
  another version rebuilds it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence

import attrs

from spooky_trio.config import BackendConfig, PoolConfig
from spooky_trio.config.backend_entries import BackendEntry
from spooky_trio.config.schema_discovery import BackendDefaults, DiscoveryConfig

log = logging.getLogger("spooky.discovery")


def _speakable(pool: str, config: PoolConfig, backend: BackendConfig, origin: str) -> bool:
    """False (logged) for a discovered backend the pool's ``upstream_protocol`` cannot reach
    (an ``http://`` one in an HTTP/3 pool): it is left out of the set, never dialled. The
    admin API refuses such a body up front; config backends are refused at load."""
    problem = config.scheme_error(backend.parsed_address.scheme)
    if problem is None:
        return True
    log.warning("pool %s: backend %s from %s left out: %s", pool, backend.id, origin, problem)
    return False

#: (pool, kind, target): what names one source's set (see the module docstring)
SourceKey = tuple[str, str, tuple[str, ...]]
#: the origin of backends the admin API added
ADMIN = "admin"
#: the origin of backends written in the config
CONFIG = "config"
_NO_DEFAULTS = BackendDefaults()


def source_key(pool: str, discovery: DiscoveryConfig) -> SourceKey:
    """The key of ``pool``'s source under ``discovery``."""
    return (pool, discovery.kind, discovery.source_target())


@attrs.frozen
class Change:
    """What one answer or admin call changed in a set of backends (by id)."""

    added: tuple[BackendEntry, ...] = ()
    removed: tuple[BackendEntry, ...] = ()
    #: (before, after) of each id whose address, weight or health check changed
    updated: tuple[tuple[BackendEntry, BackendEntry], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.updated)

    def lines(self) -> Iterator[str]:
        """One phrase per changed backend, for the log."""
        for entry in self.added:
            yield f"backend {entry.id} added ({_shown(entry)})"
        for entry in self.removed:
            yield f"backend {entry.id} removed ({entry.address}): it takes no new requests, its requests in flight finish"
        for before, after in self.updated:
            yield f"backend {after.id} changed ({_shown(before)} -> {_shown(after)})"


def _shown(entry: BackendEntry) -> str:
    weight = "default weight" if entry.weight is None else f"weight {entry.weight}"
    return f"{entry.address}, {weight}"


def diff(before: Mapping[str, BackendEntry], after: Mapping[str, BackendEntry]) -> Change:
    """The :class:`Change` from ``before`` to ``after`` (both by id)."""
    return Change(
        added=tuple(entry for backend_id, entry in after.items() if backend_id not in before),
        removed=tuple(entry for backend_id, entry in before.items() if backend_id not in after),
        updated=tuple((before[backend_id], entry) for backend_id, entry in after.items()
                      if backend_id in before and before[backend_id] != entry),
    )


@attrs.define
class SourceStatus:
    """One source's last good set and how it has been doing (``/admin/runtime``)."""

    kind: str
    #: the last good answer by id, in the source's order; None before the first one
    entries: dict[str, BackendEntry] | None = None
    #: wall-clock time (Unix seconds) of the last good answer
    last_success: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    #: answers that changed the set, and failed or empty answers
    updates: int = 0
    errors: int = 0
    #: the latest answer failed (a failure streak is logged when it starts and ends)
    failing: bool = False

    def describe(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "backends": None if self.entries is None else [entry.describe() for entry in self.entries.values()],
            "last_success_unix": self.last_success,
            "last_error": self.last_error,
            "last_error_unix": self.last_error_at,
            "updates": self.updates,
            "errors": self.errors,
            "failing": self.failing,
        }


class DiscoveryState:
    """The pools' dynamic backends (module docstring); one per Server, surviving reloads."""

    def __init__(self) -> None:
        self._sources: dict[SourceKey, SourceStatus] = {}
        #: pool -> the source whose answer was applied last (the fallback of the docstring)
        self._latest: dict[str, SourceKey] = {}
        self._manual: dict[str, dict[str, BackendEntry]] = {}
        self._versions: dict[str, int] = {}
        self._clock = 0
        #: called after every change (the serving layer refreshes the live generations)
        self.on_change: Callable[[], None] = lambda: None

    # -- reads --

    def version(self, pool: str) -> int:
        """Changes to ``pool``'s backends so far, as a stamp (0: never changed)."""
        return self._versions.get(pool, 0)

    def backends(self, pool: str, config: PoolConfig) -> list[tuple[BackendConfig, str]]:
        """``pool``'s backends under ``config`` with each one's origin (``config``,
        ``admin`` or the source's kind): the module docstring's order of precedence."""
        defaults = _NO_DEFAULTS
        base: list[tuple[BackendConfig, str]] = [(backend, CONFIG) for backend in config.backends]
        discovery = config.discovery
        if discovery is not None:
            defaults = discovery.backend_defaults
            status = self._sources.get(source_key(pool, discovery))
            if status is None or status.entries is None:
                latest = self._latest.get(pool)
                status = None if latest is None else self._sources.get(latest)
            if status is not None and status.entries is not None:
                base = [(entry.resolve(defaults), status.kind) for entry in status.entries.values()]
        manual = self._manual.get(pool)
        out = base if not manual else [(backend, origin) for backend, origin in base if backend.id not in manual]
        if manual:
            out.extend((entry.resolve(defaults), ADMIN) for entry in manual.values())
        if config.upstream_protocol in ("h3", "alt-svc"):
            out = [pair for pair in out if _speakable(pool, config, *pair)]
        return out

    def status(self, key: SourceKey) -> SourceStatus:
        """The status of the source ``key`` (created empty on first use)."""
        status = self._sources.get(key)
        if status is None:
            status = self._sources[key] = SourceStatus(key[1])
        return status

    def manual(self, pool: str) -> list[BackendEntry]:
        """The admin API's backends of ``pool``."""
        return list(self._manual.get(pool, {}).values())

    def sources(self) -> Iterator[tuple[str, SourceStatus]]:
        """(pool, status) of the source each pool serves from (or fell back to) last."""
        for pool, key in self._latest.items():
            status = self._sources.get(key)
            if status is not None:
                yield pool, status

    def gauges(self) -> Iterator[tuple[str, str, int, float | None]]:
        """(pool, source, set size, last good answer) of each pool's current source and of
        its admin API backends (``observability/discovery_metrics.py``)."""
        for pool, status in self.sources():
            yield pool, status.kind, len(status.entries or ()), status.last_success
        for pool, manual in self._manual.items():
            yield pool, ADMIN, len(manual), None

    def describe(self, pool: str, config: PoolConfig) -> dict[str, object] | None:
        """``pool``'s discovery for ``/admin/runtime`` (None: no source, no admin backends)."""
        manual = self._manual.get(pool)
        if config.discovery is None and not manual:
            return None
        out: dict[str, object] = {"admin_backends": [entry.describe() for entry in (manual or {}).values()]}
        if config.discovery is not None:
            key = source_key(pool, config.discovery)
            status = self._sources.get(key)
            out["source"] = {"target": list(key[2]), **(status or SourceStatus(key[1])).describe()}
        return out

    # -- writes --

    def answer(self, key: SourceKey, entries: Sequence[BackendEntry], now: float) -> Change | None:
        """A good answer of source ``key`` (``now``: wall-clock seconds). Returns what it
        changed (falsy when nothing), or None when it was empty and so counted as a failure
        (last known good: the set stays)."""
        if not entries:
            self.failure(key, "empty", "the source named no backend; keeping the last good set", now)
            return None
        status = self.status(key)
        first = status.entries is None
        after = {entry.id: entry for entry in entries}
        change = diff(status.entries or {}, after)
        status.entries = after
        status.last_success = now
        status.failing = False
        pool = key[0]
        if change or first or self._latest.get(pool) != key:
            if change:
                status.updates += 1
            self._latest[pool] = key
            self._bump(pool)
        return change

    def failure(self, key: SourceKey, reason: str, message: str, now: float, *, streak: bool = True) -> bool:
        """A failed answer of source ``key`` (its set stays). Returns True when it starts a
        failure streak (the caller logs a warning then, and quieter lines while it lasts).
        ``streak=False``: a refused part of an answer that is otherwise applied (an invalid
        etcd value), counted without marking the source as failing."""
        status = self.status(key)
        status.errors += 1
        status.last_error = f"{reason}: {message}"
        status.last_error_at = now
        if not streak:
            return False
        starts = not status.failing
        status.failing = True
        return starts

    def put(self, pool: str, entry: BackendEntry) -> Change:
        """The admin API adds (or replaces) ``entry`` in ``pool``."""
        manual = self._manual.setdefault(pool, {})
        before = manual.get(entry.id)
        manual[entry.id] = entry
        change = Change(added=(entry,)) if before is None else Change(updated=((before, entry),)) if before != entry else Change()
        if change:
            self._bump(pool)
        return change

    def delete(self, pool: str, backend_id: str) -> Change | None:
        """The admin API removes its backend ``backend_id`` of ``pool``; None when it has none."""
        manual = self._manual.get(pool)
        if manual is None or backend_id not in manual:
            return None
        entry = manual.pop(backend_id)
        if not manual:
            del self._manual[pool]
        self._bump(pool)
        return Change(removed=(entry,))

    def retain(self, pools: Collection[str], keys: Collection[SourceKey]) -> None:
        """Forget what no live generation uses: sources not in ``keys`` (except a live
        pool's fallback set) and the admin backends, fallback and version of pools not in
        ``pools``."""
        for pool in [pool for pool in self._latest if pool not in pools]:
            del self._latest[pool]
        for pool in [pool for pool in self._manual if pool not in pools]:
            del self._manual[pool]
        for pool in [pool for pool in self._versions if pool not in pools]:
            del self._versions[pool]
        keep = set(keys) | set(self._latest.values())
        for key in [key for key in self._sources if key not in keep]:
            del self._sources[key]

    def _bump(self, pool: str) -> None:
        self._clock += 1
        self._versions[pool] = self._clock
        self.on_change()
