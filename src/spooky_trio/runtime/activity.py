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
        self._idle = trio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        if self.parent is not None:
            self.parent.enter()

    def exit(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()
        if self.parent is not None:
            self.parent.exit()

    async def wait_idle(self) -> None:
        await self._idle.wait()
