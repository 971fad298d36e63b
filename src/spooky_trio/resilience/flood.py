"""QUIC connection-flood guard: a token bucket on new connections plus stateless Retry.

Only datagrams that would *create* a connection (an Initial whose destination connection ID
is unknown) reach :meth:`NewConnectionGuard.admit`; packets of existing connections are
routed by connection ID before it and are never throttled.

While the bucket (``performance.new_connections_per_sec`` refill, ``new_connections_burst``
size, starting full) has a token, an Initial creates a connection as usual. When it is
empty the listener answers with a QUIC Retry (RFC 9000 8.1.2) instead: the Retry carries an
encrypted, address-bound token and costs the proxy no state, so spoofed sources cannot make
it hold connections. A client that returns a valid token has proved its address and is
admitted without a bucket token (``max_active_connections`` still applies).
"""

from __future__ import annotations

import enum
import os

import attrs
from aioquic.quic.packet import QuicHeader, encode_quic_retry
from aioquic.quic.retry import QuicRetryTokenHandler

#: length of the connection ID we choose for a Retry (matches aioquic's host CID length)
RETRY_CID_LENGTH = 8


class TokenBucket:
    """``rate`` tokens per second up to ``burst``, starting full; time comes from the caller."""

    __slots__ = ("rate", "burst", "tokens", "_last")

    def __init__(self, rate: float, burst: float, now: float | None = None) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        #: None: the clock starts at the first take (the bucket may be built outside Trio)
        self._last = now

    def take(self, now: float) -> bool:
        """Take one token if there is one (after refilling for the time since the last call)."""
        if self._last is None:
            self._last = now
        elapsed = now - self._last
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self._last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Verdict(enum.Enum):
    ADMIT = "admit"  #: create the connection (bucket token taken)
    ADMIT_VALIDATED = "admit_validated"  #: create it; the Retry token proved the address
    RETRY = "retry"  #: send ``reply`` (a Retry packet), keep no state
    INVALID_TOKEN = "invalid_token"  #: close with INVALID_TOKEN (RFC 9000 8.1.3), keep no state
    CAP = "cap"  #: max_active_connections reached: drop (the listener counts it)


@attrs.frozen(slots=True)
class Decision:
    verdict: Verdict
    #: for ADMIT_VALIDATED: the client's first destination CID (from the token)
    original_destination_cid: bytes | None = None
    #: for ADMIT_VALIDATED: the CID we chose in the Retry (the client's current DCID)
    retry_source_cid: bytes | None = None
    #: for RETRY: the datagram to send back
    reply: bytes | None = None


class NewConnectionGuard:
    """Decides what to do with an Initial that would create a connection (see module doc)."""

    def __init__(self, *, per_sec: float, burst: int, max_active: int, now: float | None = None, stats: dict[str, int] | None = None) -> None:
        self.bucket = TokenBucket(per_sec, burst, now)
        self.max_active = max_active
        self._tokens = QuicRetryTokenHandler()
        #: counters read by the metrics collector at scrape time (the listener passes its ``stats``)
        self.stats = stats if stats is not None else {}
        for key in ("rate_limited", "retry_sent", "retry_validated", "retry_invalid"):
            self.stats.setdefault(key, 0)

    def admit(self, header: QuicHeader, addr: tuple[str, int], active: int, now: float) -> Decision:
        """Verdict for one new-connection Initial from ``addr`` with ``active`` connections open."""
        if active >= self.max_active:
            return Decision(Verdict.CAP)
        if header.token:
            try:
                original = self._tokens.validate_token(address=addr, destination_cid=header.destination_cid, token=header.token, now=now)
            except ValueError:
                self.stats["retry_invalid"] += 1
                return Decision(Verdict.INVALID_TOKEN)
            self.stats["retry_validated"] += 1
            return Decision(Verdict.ADMIT_VALIDATED, original_destination_cid=original, retry_source_cid=header.destination_cid)
        if self.bucket.take(now):
            return Decision(Verdict.ADMIT)
        self.stats["rate_limited"] += 1
        self.stats["retry_sent"] += 1
        return Decision(Verdict.RETRY, reply=self.retry_packet(header, addr, now))

    def retry_packet(self, header: QuicHeader, addr: tuple[str, int], now: float) -> bytes:
        """A Retry for ``header``: a fresh CID of ours and a token bound to ``addr``."""
        source_cid = os.urandom(RETRY_CID_LENGTH)
        token = self._tokens.create_token(
            address=addr, original_destination_connection_id=header.destination_cid, retry_source_connection_id=source_cid, now=now
        )
        return encode_quic_retry(
            version=header.version,  # type: ignore[arg-type]
            source_cid=source_cid,
            destination_cid=header.source_cid,
            original_destination_cid=header.destination_cid,
            retry_token=token,
        )
