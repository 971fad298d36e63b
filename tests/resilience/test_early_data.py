"""The session ticket store behind 0-RTT: bounded and single-use."""

from __future__ import annotations

from types import SimpleNamespace

from spooky_trio.resilience.early_data import SessionTicketStore


def _ticket(label: bytes) -> SimpleNamespace:
    return SimpleNamespace(ticket=label)


def test_tickets_are_single_use() -> None:
    store = SessionTicketStore()
    t = _ticket(b"a")
    store.add(t)  # type: ignore[arg-type]
    assert store.pop(b"a") is t
    assert store.pop(b"a") is None  # a replayed ClientHello finds nothing


def test_store_is_bounded_oldest_first() -> None:
    store = SessionTicketStore(capacity=2)
    for label in (b"a", b"b", b"c"):
        store.add(_ticket(label))  # type: ignore[arg-type]
    assert len(store) == 2
    assert store.pop(b"a") is None
    assert store.pop(b"b") is not None and store.pop(b"c") is not None
