"""The garbage collector and a long-running proxy: what is alive when a process starts
serving stays alive, so it is taken out of the collector's sight.

CPython's full (oldest-generation) collection walks every tracked object. In a serving
process almost all of them are the ones made by importing its modules (~68 k objects:
aioquic, h2, h11, cryptography, prometheus-client, trio, our own), which never become
garbage; walking them took ~20 ms per full collection (three in a 10-second bench run),
the longest pauses of the event loop: they set the maximum latency and, at half
saturation, had the load generator skip requests because every stream slot was busy
(docs/performance.md, round two). :func:`freeze_startup_heap` collects once and moves
everything alive into the permanent generation (:func:`gc.freeze`), so full collections
walk only what was made later (generations, connections, requests).

It runs in the daemon (``spooky-trio run`` and each worker process) right before the
server is built, after the first configuration was loaded: the only objects frozen that can
die later are that configuration's (replaced by a reload; they are freed by reference
counting like any other, and only a reference cycle among them would outlive it, once).
Never in a process that embeds :class:`~spooky_trio.serving.server.Server` (the tests): the
process decides that for itself.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger("spooky.server")


def freeze_startup_heap() -> int:
    """Collect, then freeze every object alive now; returns how many are frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("%d objects alive at start-up moved out of the collector's sight", frozen)
    return frozen
