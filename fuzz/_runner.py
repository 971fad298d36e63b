"""The atheris glue shared by every harness.

A harness imports the code under test inside ``with instrumented(__name__):`` and ends with
``if __name__ == "__main__": run(test_one_input)``. Run as a fuzzer (``python
fuzz/fuzz_x.py [libFuzzer args]``) the imports are instrumented for coverage; imported by
the replay tests nothing here touches atheris, which need not be installed.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import ContextManager

#: packages whose coverage guides the search (ours and the protocol/YAML libraries we drive)
INSTRUMENTED = ["spooky_trio", "h11", "h2", "hpack", "hyperframe", "aioquic", "ruamel", "urllib"]


def instrumented(module_name: str) -> ContextManager[object]:
    if module_name != "__main__":
        return contextlib.nullcontext()
    import atheris

    return atheris.instrument_imports(include=INSTRUMENTED)


def run(test_one_input: Callable[[bytes], None]) -> None:
    import atheris

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
