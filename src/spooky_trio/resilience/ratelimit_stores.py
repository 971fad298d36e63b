"""The registry of the shared rate-limit stores: one :class:`RedisStore` per distinct
settings (so equal settings share one connection), run while a live generation uses it.

It lives in the server's StateStore (``RateLimitState.stores``); its :meth:`RedisStores.run`
is the ``rate-limit stores`` nursery of the Server's task tree, and the Server calls
:meth:`RedisStores.follow` at startup and after every commit of a reload.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from spooky_trio.config import RateLimitStoreConfig
from spooky_trio.resilience.ratelimit_store import RedisStore, StoreMetrics, StoreSettings


class RedisStores:
    """The stores the live generations use, by settings; each runs in a task of this
    registry's nursery (``rate-limit-stores`` in the Server's task tree)."""

    def __init__(self) -> None:
        self._stores: dict[StoreSettings, RedisStore] = {}
        self._running: set[RedisStore] = set()
        self._nursery: trio.Nursery | None = None

    def store(self, config: RateLimitStoreConfig, metrics: StoreMetrics | None = None) -> RedisStore:
        """The store of ``config`` (one per distinct settings; created stopped)."""
        settings = StoreSettings.from_config(config)
        store = self._stores.get(settings)
        if store is None:
            store = self._stores[settings] = RedisStore(settings, metrics)
        return store

    def running(self) -> list[RedisStore]:
        """The stores whose task runs (those of the live generations)."""
        return list(self._running)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The nursery the stores' tasks run in; until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    async def follow(self, used: Sequence[RedisStore]) -> None:
        """Run exactly the stores in ``used`` (those of the live generations): start the
        missing ones (each after its first probe), stop the others."""
        wanted = set(used)
        for store in list(self._running - wanted):
            store.stop()
            self._running.discard(store)
        nursery = self._nursery
        if nursery is None:
            return
        for store in used:
            if store not in self._running:
                self._running.add(store)
                await nursery.start(self._run_one, store, name=f"rate-limit store {store.name}")

    async def _run_one(self, store: RedisStore, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await store.run(task_status=task_status)
        finally:
            self._running.discard(store)
