"""The plugins' own tasks (a filter's ``async def background()``), in the task tree:

```
PluginTasks.run            the "plugins" nursery, under the server's root (serving/background.py)
└─ one scope per live generation whose filters have background tasks
   └─ one keeper per such filter: runs background() (its steps timed: one that holds the
      event loop is logged and counted as a stall, like a hook's); after a failure (logged,
      counted as spooky_plugin_errors_total{kind="background"}) starts it again after 1 s,
      2 s, ... 60 s
```

A generation's tasks start when it starts serving (the first one before any listener, a
reload's at its commit, a canary's when it is staged) and are cancelled when it retires:
once it is not live any more *and* the requests that entered its filters have ended, or
after ``performance.shutdown_drain_timeout_ms`` at most (:class:`PluginSet` counts them). A
generation that comes back (a rollback) starts them again on the same filter objects.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import attrs
import trio

from spooky_trio.proxy.plugin_calls import PluginRuntime, carries_cancellation
from spooky_trio.proxy.plugins import PluginSet

log = logging.getLogger("spooky.plugins")

#: back-off of a failed background task: first pause, and the longest (seconds)
FIRST_RETRY, LAST_RETRY = 1.0, 60.0


@attrs.define(eq=False)
class _Running:
    """A live or retiring generation's tasks."""

    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    #: bumped by every retire and every return to live: a retire acts only if still current
    turn: int = 0
    retiring: bool = False


class PluginTasks:
    """The ``plugins`` nursery (module docstring)."""

    def __init__(self) -> None:
        self._nursery: trio.Nursery | None = None
        self._running: dict[PluginSet, _Running] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the nursery until the server ends."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def follow(self, live: Iterable[PluginSet]) -> None:
        """Run the background tasks of the ``live`` generations' filters; retire the others."""
        nursery = self._nursery
        assert nursery is not None, "PluginTasks.run has not started"
        keep = [plugins for plugins in live if plugins.with_background()]
        for plugins in keep:
            running = self._running.get(plugins)
            if running is None:
                running = self._running[plugins] = _Running()
                nursery.start_soon(self._serve, plugins, running)
            elif running.retiring:
                running.retiring, running.turn = False, running.turn + 1
        for plugins, running in self._running.items():
            if plugins not in keep and not running.retiring:
                running.retiring, running.turn = True, running.turn + 1
                nursery.start_soon(self._retire, plugins, running, running.turn)

    @property
    def running(self) -> int:
        """How many generations have background tasks running (tests, docs)."""
        return len(self._running)

    async def _serve(self, plugins: PluginSet, running: _Running) -> None:
        try:
            with running.scope:
                async with trio.open_nursery() as nursery:
                    for plugin in plugins.with_background():
                        nursery.start_soon(self._keep, plugin)
                    await trio.sleep_forever()
        finally:
            self._running.pop(plugins, None)

    async def _retire(self, plugins: PluginSet, running: _Running, turn: int) -> None:
        with trio.move_on_after(plugins.grace):
            await plugins.wait_idle()
        if running.turn == turn:
            log.debug("plugins %s: background tasks of a retired generation cancelled", ", ".join(plugins.plugins))
            running.scope.cancel()

    @staticmethod
    async def _keep(plugin: PluginRuntime) -> None:
        """Run ``plugin``'s background task; start it again after a failure (back-off)."""
        assert plugin.background is not None
        pause = FIRST_RETRY
        while True:
            started = trio.current_time()
            try:
                await plugin.run_background()
            except BaseException as exc:  # everything the plugin raises; a cancellation goes on
                if carries_cancellation(exc):
                    raise
                if trio.current_time() - started > LAST_RETRY:
                    pause = FIRST_RETRY  # it had been running fine for a while
                plugin.background_failed(exc, pause)
                await trio.sleep(pause)
                pause = min(pause * 2, LAST_RETRY)
                continue
            log.debug("plugin %s: background task returned", plugin.name)
            return
