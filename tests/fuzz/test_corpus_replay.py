"""Replay every fuzz seed and every committed regression input through its harness.

The harnesses' ``test_one_input`` functions are plain Python (atheris is only imported
when a harness runs as a fuzzer), so this needs nothing beyond the dev extra.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"
HARNESSES = sorted(p.stem for p in FUZZ.glob("fuzz_*.py"))


def _inputs() -> list[tuple[str, Path]]:
    found = []
    for harness in HARNESSES:
        for kind in ("corpus", "regressions"):
            folder = FUZZ / kind / harness
            if folder.is_dir():
                found += [(harness, p) for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
    return found


def _harness(name: str):  # type: ignore[no-untyped-def]
    if str(FUZZ) not in sys.path:
        sys.path.insert(0, str(FUZZ))
    return importlib.import_module(name)


def test_every_harness_has_a_seed_corpus() -> None:
    assert len(HARNESSES) >= 9
    for harness in HARNESSES:
        seeds = list((FUZZ / "corpus" / harness).glob("*"))
        assert seeds, f"{harness} has no seed corpus"
        assert hasattr(_harness(harness), "test_one_input")


@pytest.mark.parametrize(("harness", "path"), _inputs(), ids=lambda v: v.name if isinstance(v, Path) else v)
def test_replay(harness: str, path: Path) -> None:
    _harness(harness).test_one_input(path.read_bytes())
