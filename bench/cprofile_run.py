"""Run ``spooky-trio`` with cProfile switched on and off by signals (``make bench`` ``--cprofile``).

SIGUSR1 starts profiling, SIGUSR2 stops it and writes the stats to ``$SPOOKY_CPROFILE_OUT``,
so only the measured phase is profiled (not start-up, handshakes or warm-up). Deterministic
call counts per request are the second opinion for changes too small for the CPU numbers.
"""

from __future__ import annotations

import cProfile
import os
import signal
import sys

from spooky_trio.cli import main

_profiler = cProfile.Profile()


def _start(signum: int, frame: object) -> None:
    _profiler.enable()


def _stop(signum: int, frame: object) -> None:
    _profiler.disable()
    _profiler.dump_stats(os.environ["SPOOKY_CPROFILE_OUT"])


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
    sys.exit(main(sys.argv[1:]))
