"""In-flight request accounting shared by every listener, so drain can wait for zero."""

from __future__ import annotations

import trio


class Activity:
    """In-flight request count with a wait-for-zero, shared by every listener (drain).

    With a ``parent``, every request counted here is counted there too: each listener pair
    has its own Activity (so a listener removed by a reload can drain alone) whose parent
    is the Server's (so a shutdown drain waits for all of them).
    """

    def __init__(self, parent: Activity | None = None) -> None:
        self.count = 0
        self.parent = parent
        #: made only while someone waits for zero (a drain): enter/exit run once per
        #: request and an Event per idle-to-busy transition was measurable
        self._idle: trio.Event | None = None

    def enter(self) -> None:
        self.count += 1
        if self.parent is not None:
            self.parent.enter()

    def exit(self) -> None:
        self.count -= 1
        if self.count == 0 and self._idle is not None:
            self._idle.set()
            self._idle = None
        if self.parent is not None:
            self.parent.exit()

    async def wait_idle(self) -> None:
        """Return once the count is (or drops to) zero."""
        if self.count == 0:
            await trio.lowlevel.checkpoint()
            return
        if self._idle is None:
            self._idle = trio.Event()
        await self._idle.wait()
