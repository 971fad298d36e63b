"""TLS session tickets for QUIC resumption, the precondition of 0-RTT (early data).

Tickets are issued only when ``resilience.protocol.allow_0rtt`` is on. Each ticket is
single-use (:meth:`SessionTicketStore.pop`): a replayed ClientHello finds no ticket, falls
back to a full handshake and its early data is refused, which bounds replay of early data
to what one process would accept once. Which requests may run from early data at all is the
policy's business (``early_data_safe_methods``, see :mod:`spooky_trio.resilience.policy`).
"""

from __future__ import annotations

from collections import OrderedDict

from aioquic.tls import SessionTicket

#: tickets kept; the oldest is forgotten first (its client just does a full handshake)
MAX_TICKETS = 10_000


class SessionTicketStore:
    """A bounded, single-use map of ticket id -> :class:`SessionTicket` (aioquic's callbacks)."""

    def __init__(self, capacity: int = MAX_TICKETS) -> None:
        self.capacity = capacity
        self._tickets: OrderedDict[bytes, SessionTicket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tickets)

    def add(self, ticket: SessionTicket) -> None:
        """aioquic's ``session_ticket_handler``: remember a ticket we just issued."""
        self._tickets[ticket.ticket] = ticket
        while len(self._tickets) > self.capacity:
            self._tickets.popitem(last=False)

    def pop(self, label: bytes) -> SessionTicket | None:
        """aioquic's ``session_ticket_fetcher``: the ticket for ``label``, usable once."""
        return self._tickets.pop(label, None)
