"""A tiny, pure-Python structured-input reader shared by the structured harnesses.

Why not ``atheris.FuzzedDataProvider``: it is a C extension, so replaying corpora and
regression inputs in ``make test`` would need atheris installed, and a crash found while
fuzzing must decode to the *same* structure when replayed. This reader is deterministic,
never raises, and has a :class:`Writer` mirror used by ``fuzz/make_seeds.py`` to build
seed files. Every read returns a default (0, False, b"") once the data runs out.

Encoding: an int is one byte (``value % (hi - lo + 1) + lo``), a bool one byte (odd =
True), a byte string a one-byte length followed by that many bytes (truncated at the end
of the data).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


class Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def byte(self) -> int:
        if self._pos >= len(self._data):
            return 0
        value = self._data[self._pos]
        self._pos += 1
        return value

    def int_in_range(self, lo: int, hi: int) -> int:
        return lo + self.byte() % (hi - lo + 1)

    def boolean(self) -> bool:
        return bool(self.byte() & 1)

    def bytes_(self, max_len: int = 255) -> bytes:
        n = min(self.byte(), max_len)
        chunk = self._data[self._pos : self._pos + n]
        self._pos += len(chunk)
        return chunk

    def pick(self, options: Sequence[T]) -> T:
        return options[self.byte() % len(options)]

    def rest(self) -> bytes:
        chunk = self._data[self._pos :]
        self._pos = len(self._data)
        return chunk


class Writer:
    """Builds inputs :class:`Reader` decodes; only used to generate seed files."""

    def __init__(self) -> None:
        self._out = bytearray()

    def byte(self, value: int) -> Writer:
        self._out.append(value & 0xFF)
        return self

    def int_in_range(self, value: int, lo: int, hi: int) -> Writer:
        return self.byte(value - lo)

    def boolean(self, value: bool) -> Writer:
        return self.byte(1 if value else 0)

    def bytes_(self, value: bytes) -> Writer:
        assert len(value) < 256
        self._out.append(len(value))
        self._out += value
        return self

    def pick(self, options: Sequence[T], value: T) -> Writer:
        return self.byte(list(options).index(value))

    def raw(self, value: bytes) -> Writer:
        self._out += value
        return self

    def getvalue(self) -> bytes:
        return bytes(self._out)
