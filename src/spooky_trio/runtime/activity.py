"""In-flight request accounting shared by every listener, so drain can wait for zero."""

from __future__ import annotations

import trio


class Activity:
    """In-flight request count with a wait-for-zero, shared by every listener (drain)."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = trio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        if self._idle.is_set():
            self._idle = trio.Event()

    def exit(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()
