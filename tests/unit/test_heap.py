"""serving/heap.py: the daemon's start-up heap leaves the collector's sight; what is made
later is still collected."""

from __future__ import annotations

import gc
import weakref

from spooky_trio.serving.heap import freeze_startup_heap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def _tracked(obj: object) -> bool:
    return any(o is obj for o in gc.get_objects())


def test_what_lives_at_start_is_frozen_and_later_cycles_are_still_collected() -> None:
    before = Node()
    before.other = before  # a cycle alive at start-up
    assert _tracked(before)
    try:
        frozen = freeze_startup_heap()
        assert frozen == gc.get_freeze_count() > 0
        assert not _tracked(before)  # in the permanent generation: full collections skip it
        later = Node()
        later.other = later
        gone = weakref.ref(later)
        del later
        gc.collect()
        assert gone() is None  # a cycle made after the freeze is collected as before
    finally:
        gc.unfreeze()  # this is a test process, not the daemon
    assert _tracked(before)
