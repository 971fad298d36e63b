"""The life of an upstream HTTP/2 connection as one state and a table of transitions (in the
manner of h11's ``_state.py``), instead of loose flags.

::

    STARTING --SETTINGS--> OPEN --DRAIN--> DRAINING --GOAWAY_SENT--> CLOSING
        |                                     ^
        +---------------DRAIN-----------------+        any --FAIL--> FAILED

- STARTING: our preface is queued; the server's first SETTINGS has not arrived.
- OPEN: takes new streams (below the server's MAX_CONCURRENT_STREAMS).
- DRAINING: takes no new streams (we close it, the server sent GOAWAY, or the stream IDs ran
  out); the streams it has finish, and with the last one released we send GOAWAY.
- CLOSING: our GOAWAY is queued; the writer ends the connection once it is written.
- FAILED: the connection is dead (its ``failure`` says why); terminal.

Leaving STARTING is what the pool waits for (``H2Connection.ready``). An input a state does
not list is a bug in the engine and raises :class:`RuntimeError`.
"""

from __future__ import annotations

import enum


class ConnState(enum.Enum):
    STARTING = "starting"
    OPEN = "open"
    DRAINING = "draining"
    CLOSING = "closing"
    FAILED = "failed"


class ConnInput(enum.Enum):
    #: a SETTINGS frame from the server (the first one opens the connection)
    SETTINGS = "settings"
    #: stop taking streams: close() requested, GOAWAY received, stream IDs exhausted
    DRAIN = "drain"
    #: the last stream of a draining connection was released and our GOAWAY queued
    GOAWAY_SENT = "goaway_sent"
    #: the connection failed (socket, protocol error, abort)
    FAIL = "fail"


S, I = ConnState, ConnInput
TRANSITIONS: dict[ConnState, dict[ConnInput, ConnState]] = {
    S.STARTING: {I.SETTINGS: S.OPEN, I.DRAIN: S.DRAINING, I.FAIL: S.FAILED},
    S.OPEN: {I.SETTINGS: S.OPEN, I.DRAIN: S.DRAINING, I.FAIL: S.FAILED},
    S.DRAINING: {I.SETTINGS: S.DRAINING, I.DRAIN: S.DRAINING, I.GOAWAY_SENT: S.CLOSING, I.FAIL: S.FAILED},
    S.CLOSING: {I.SETTINGS: S.CLOSING, I.DRAIN: S.CLOSING, I.FAIL: S.FAILED},
    S.FAILED: {I.SETTINGS: S.FAILED, I.DRAIN: S.FAILED, I.FAIL: S.FAILED},
}
del S, I


def next_state(state: ConnState, event: ConnInput) -> ConnState:
    """The state after ``event`` in ``state``; :class:`RuntimeError` if the table has no
    such transition (GOAWAY_SENT anywhere but DRAINING)."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise RuntimeError(f"HTTP/2 connection: {event.name} in state {state.name}") from None
