"""The writer side of an HTTP/2 connection, shared by the ingress server and the upstream client.

One :class:`H2WriterPump` per connection owns the socket's send side. Nothing else writes:
stream tasks and the reader change the h2 state synchronously and :meth:`~H2WriterPump.kick`
the pump, whose :meth:`~H2WriterPump.run` task then sends everything queued by then (the
frames of many streams, a stream's HEADERS and DATA) in one ``send_all``: one TLS record and
one syscall instead of one per frame, and a cancelled stream task can never leave half a
frame on a connection other streams share.

What the writer sends, in order: the :attr:`~H2WriterPump.outbox` (h2 output moved there by
:meth:`~H2WriterPump.collect`, frames written beside h2's state machine), then whatever h2
holds when the writer takes its batch. The writer sleeps until kicked, so a state change that
queued nothing should :meth:`~H2WriterPump.collect` (kicks only when h2 produced bytes) rather
than kick.

Waits, for the owners' flush semantics. They return ``True`` when satisfied and ``False``
when the pump closed first (:meth:`~H2WriterPump.close`, or a failed send); each side maps
``False`` to its own error (the ingress to ``trio.BrokenResourceError``, the upstream client
to ``UpstreamProtocolError``):

- :meth:`~H2WriterPump.written`: everything kicked so far is on the wire (a response's last
  frame; a request body chunk);
- :meth:`~H2WriterPump.taken`: the writer took the DATA the owner counted in
  :attr:`~H2WriterPump.unsent` (a response's high-water mark);
- :meth:`~H2WriterPump.backoff`: the reader's own answers (PING/SETTINGS acks, resets) fell
  below ``outbox_limit`` again; a peer that floods PINGs and never reads thereby meets TCP
  backpressure instead of an ever-growing queue (ab34071).

Costs measured on the hot path (9f54038, e1428ba): a kick is a counter increment and an
``Event.set``; the writer wakes the waiters' parking lots only when someone is parked.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

#: the reader's queued answers (see :meth:`H2WriterPump.backoff`) above which it stops reading
OUTBOX_LIMIT = 64 * 1024
#: a failed ``send_all`` with one of these closes the pump; :meth:`H2WriterPump.run` returns it
SEND_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class H2WriterPump:
    """Coalescing writer of one HTTP/2 connection.

    ``stream`` is the connection's byte stream (only :meth:`run` uses it); ``take`` is the h2
    connection's ``data_to_send`` (returns and clears what h2 queued). The owner runs
    :meth:`run` as one task for the connection's life and calls :meth:`close` when the
    connection ends. Not thread-safe; every method but the waits and :meth:`run` is
    synchronous and never blocks.
    """

    __slots__ = (
        "outbox", "unsent", "closed", "_stream", "_take", "_outbox_limit", "_finishing",
        "_kick_seq", "_written_seq", "_kick_event", "_taken", "_written",
    )

    def __init__(self, stream: trio.abc.SendStream, take: Callable[[], bytes], *, outbox_limit: int = OUTBOX_LIMIT) -> None:
        self._stream = stream
        self._take = take
        self._outbox_limit = outbox_limit
        #: bytes to write before what h2 holds now (its output moved by collect(), raw frames)
        self.outbox = bytearray()
        #: DATA bytes the owner queued in h2 since the writer last took h2's output; the owner
        #: adds, the writer zeroes (see taken())
        self.unsent = 0
        #: set by close() and by a failed send; never cleared
        self.closed = False
        self._finishing = False
        self._kick_seq = 0
        self._written_seq = 0
        self._kick_event = trio.Event()
        self._taken = trio.lowlevel.ParkingLot()
        self._written = trio.lowlevel.ParkingLot()

    # --- queueing (synchronous) ---

    def kick(self) -> None:
        """h2 (or the outbox) has bytes to send: wake the writer. :meth:`written` waits for
        everything kicked before it was called."""
        self._kick_seq += 1
        self._kick_event.set()

    def collect(self) -> bool:
        """Move what h2 queued to the outbox and kick, only when there is some (most state
        changes, a response's events or a small acknowledgement, queue nothing).

        Returns True when the outbox holds ``outbox_limit`` bytes or more: a reader should
        ``await`` :meth:`backoff` before it reads again.
        """
        data = self._take()
        if data:
            self.outbox += data
            self.kick()
            return len(self.outbox) >= self._outbox_limit
        return False

    def queue_frame(self, frame: bytes) -> None:
        """Queue bytes h2 did not produce (a frame written beside its state machine) after
        everything h2 queued so far, and kick."""
        self.outbox += self._take()
        self.outbox += frame
        self.kick()

    def finish(self) -> None:
        """Write what is queued, then stop: :meth:`run` returns None the next time it has
        nothing left to write (bytes kicked meanwhile still go out first)."""
        self._finishing = True
        self._kick_event.set()

    def close(self) -> None:
        """Stop at once (idempotent): pending and later waits return False, :meth:`run` returns
        None at its next wake-up. A ``send_all`` in progress is not interrupted; cancel the
        writer's scope for that."""
        self.closed = True
        self._kick_event.set()
        self._taken.unpark_all()
        self._written.unpark_all()

    # --- waits ---

    async def written(self) -> bool:
        """Wait until everything kicked so far was written: True, or False if the pump closed
        before it was."""
        target = self._kick_seq
        while self._written_seq < target:
            if self.closed:
                return False
            await self._written.park()
        return True

    async def taken(self, high_water: int) -> bool:
        """Wait until :attr:`unsent` is below ``high_water`` (the writer zeroes it when it
        takes h2's output, which it does only once its previous ``send_all`` returned): True,
        or False if the pump closed first."""
        while self.unsent >= high_water:
            if self.closed:
                return False
            await self._taken.park()
        return True

    async def backoff(self) -> None:
        """Wait while ``outbox_limit`` bytes or more of the outbox wait for the writer (or
        until the pump closed). The writer takes the outbox only after its previous
        ``send_all`` returned, so a peer that does not read stalls its own reader."""
        while len(self.outbox) >= self._outbox_limit and not self.closed:
            await self._taken.park()

    # --- the writer task ---

    async def run(self) -> Exception | None:
        """Send until closed or finished: each batch is the outbox plus what h2 holds, in one
        ``send_all``. Returns None after :meth:`close` or :meth:`finish`; after a failed send
        (one of :data:`SEND_ERRORS`) the pump is closed and the error is returned, for the
        owner to map to its own failure. Other exceptions (bugs) propagate unchanged."""
        try:
            while not self.closed:
                if self._written_seq == self._kick_seq:
                    if self._finishing:
                        return None
                    self._kick_event = trio.Event()
                    await self._kick_event.wait()
                    continue
                seq = self._kick_seq
                data = self._take()
                if self.outbox:  # queued before what h2 holds now
                    data = bytes(self.outbox) + data
                    self.outbox.clear()
                self.unsent = 0
                if self._taken:
                    self._taken.unpark_all()
                if data:
                    await self._stream.send_all(data)
                self._written_seq = seq
                if self._written:
                    self._written.unpark_all()
            return None
        except SEND_ERRORS as exc:
            self.close()
            return exc
