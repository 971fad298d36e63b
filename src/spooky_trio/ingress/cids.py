"""The connection IDs a QUIC listener issues (docs/fleet.md): where the worker index goes,
and the QUIC-LB server ID when ``quic_lb`` is configured.

A :class:`CidScheme` is what the listener, the aioquic wrapper (``cid_source``) and the
kernel steering program (ingress/steering.py) need: the CID length, a generator, and where
the worker index lives (``worker_offset`` into the CID, ``worker_mask``).

- ``quic_lb`` configured: :class:`~spooky_trio.ingress.quic_lb.QuicLbCodec` (the draft's
  CIDs; the worker index in the first octet's five random bits, or in an appended octet
  with ``self_encode_length``).
- otherwise: 8 random octets (aioquic's length) whose first octet is the worker index when
  there are workers (up to 256); with one process, entirely random as before.
"""

from __future__ import annotations

import os
from typing import Protocol

from spooky_trio.config.schema_quic_lb import QuicLbConfig, read_quic_lb_key
from spooky_trio.ingress.quic_lb import QuicLbCodec

__all__ = ["CidScheme", "RandomCids", "build_cid_scheme"]

#: aioquic's default connection ID length
DEFAULT_CID_LENGTH = 8
#: workers the first octet of a non-QUIC-LB CID can number
_RANDOM_SCHEME_WORKERS = 256


class CidScheme(Protocol):
    """The CIDs of one listener in one process."""

    @property
    def length(self) -> int: ...

    @property
    def workers(self) -> int: ...

    @property
    def worker_offset(self) -> int: ...

    @property
    def worker_mask(self) -> int: ...

    @property
    def signature(self) -> tuple[object, ...]:
        """Equal for two schemes that issue the same kind of CIDs (a reload compares them)."""

    def new_cid(self) -> bytes: ...

    def worker_of(self, cid: bytes) -> int | None:
        """The worker a CID of ours names; None for none (one process, or not ours)."""


class RandomCids:
    """Random 8-octet CIDs, led by the worker index when ``workers > 1``."""

    length = DEFAULT_CID_LENGTH
    worker_offset = 0
    worker_mask = 0xFF

    def __init__(self, worker: int = 0, workers: int = 1) -> None:
        self.worker = worker
        #: more workers than the octet numbers: no index (4-tuple distribution, as before)
        self.workers = workers if workers <= _RANDOM_SCHEME_WORKERS else 1
        self._lead = bytes((worker,)) if self.workers > 1 else b""
        self.signature: tuple[object, ...] = ("random", worker, self.workers)

    def new_cid(self) -> bytes:
        return self._lead + os.urandom(self.length - len(self._lead))

    def worker_of(self, cid: bytes) -> int | None:
        if self.workers == 1 or len(cid) != self.length:
            return None
        return cid[0] if cid[0] < self.workers else None


def build_cid_scheme(quic_lb: QuicLbConfig | None, worker: int, workers: int) -> CidScheme:
    """The scheme of a listener block (validated config). Reads ``quic_lb.key_file`` now:
    a listener built at a reload uses the key file's content at that reload."""
    if quic_lb is None:
        return RandomCids(worker, workers)
    key = read_quic_lb_key(quic_lb.key_file) if quic_lb.key_file is not None else None
    return QuicLbCodec(
        config_id=quic_lb.config_id, server_id=quic_lb.server_id_bytes(), nonce_length=quic_lb.nonce_length, key=key,
        self_encode_length=quic_lb.self_encode_length, worker=worker, workers=workers,
    )
