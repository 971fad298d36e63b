"""HTTP/3 ingress: aioquic driven by one non-blocking UDP socket on Trio.

Shape (see docs/architecture.md): one receive loop per listener drains the socket in bursts,
feeds every datagram to its connection, then processes events and transmits once per
touched connection. Each QUIC connection has one task (its timer and its nursery of request
stream tasks, in quic_connection.py); datagrams never hop through a task or a channel.
"""

from __future__ import annotations

import copy
import logging
import socket
from collections.abc import Awaitable, Callable

import trio
from aioquic.buffer import Buffer
from aioquic.h3.connection import ErrorCode
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.packet import (
    QuicHeader,
    QuicPacketType,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.tls import SessionTicket

from spooky_trio.config import PerformanceConfig, ProtocolConfig
from spooky_trio.core.activity import Activity
from spooky_trio.http.errors import ErrorResponse
from spooky_trio.http.messages import DownstreamRequest, ResponseSink
from spooky_trio.ingress.cids import CidScheme, RandomCids
from spooky_trio.ingress.closing import encode_initial_close
from spooky_trio.ingress.identities import IdentityStore
from spooky_trio.ingress.quic_connection import QuicConnectionTask
from spooky_trio.ingress.quic_engine import SpookyQuicConnection
from spooky_trio.ingress.steering import WorkerSteering
from spooky_trio.ingress.udp_send import DatagramSender, open_udp_socket
from spooky_trio.resilience.early_data import SessionTicketStore
from spooky_trio.resilience.flood import NewConnectionGuard, Verdict

__all__ = ["Handler", "QuicListener", "Rejecter"]

log = logging.getLogger("spooky.ingress.quic")

Handler = Callable[[DownstreamRequest, ResponseSink], Awaitable[None]]
#: answers a request refused before the chain, through the answer door (``Proxy.reject``)
Rejecter = Callable[[DownstreamRequest, ResponseSink, ErrorResponse], Awaitable[None]]

#: Datagrams read from the socket before events are processed and replies sent.
RECV_BURST = 64
QUIC_CONNECTION_REFUSED = 0x2
QUIC_INVALID_TOKEN = 0xB


class QuicListener:
    """One UDP socket serving HTTP/3 for a listener block."""

    def __init__(
        self,
        *,
        address: str,
        port: int,
        identities: IdentityStore,
        performance: PerformanceConfig,
        handler: Handler,
        reject: Rejecter,
        activity: Activity,
        protocol: ProtocolConfig,
        cids: CidScheme | None = None,
        steering: WorkerSteering | None = None,
        inherited_fd: int | None = None,
    ) -> None:
        self.address = address
        self.port = port
        self.identities = identities
        self.performance = performance
        #: resilience.protocol: header limits checked before a request reaches the pipeline
        self.protocol = protocol
        self.handler = handler
        #: answers header-limit and extended-CONNECT refusals (quic_connection.py)
        self.reject = reject
        self.activity = activity
        self.sock: socket.socket = None  # type: ignore[assignment]
        self.connections: set[QuicConnectionTask] = set()
        self._by_cid: dict[bytes, QuicConnectionTask] = {}
        self._dirty: set[QuicConnectionTask] = set()
        self._flush_wakeup = trio.Event()
        self.draining = False
        self.stats: dict[str, int] = {
            "datagrams": 0, "bad_headers": 0, "unroutable": 0, "send_drops": 0,
            "refused_draining": 0, "cap_rejects": 0, "malformed_requests": 0, "panics": 0,
            "handshake_success": 0, "handshake_failure": 0, "excessive_load": 0,
            "control_stream_overflow": 0,
        }
        p = performance
        self.configuration = QuicConfiguration(
            is_client=False,
            alpn_protocols=["h3"],
            idle_timeout=p.quic_max_idle_timeout_ms / 1000,
            max_data=p.quic_initial_max_data,
            max_stream_data=p.quic_initial_max_stream_data,
        )
        #: the CIDs we issue (ingress/cids.py: worker index, QUIC-LB); the configuration's
        #: length is how aioquic parses a short header's DCID
        self.cids: CidScheme = cids if cids is not None else RandomCids()
        self.configuration.connection_id_length = self.cids.length
        #: CID lengths of earlier schemes that open connections may still use (a reload)
        self._old_cid_lengths: set[int] = set()
        #: worker steering (ingress/steering.py), None with one process
        self.steering = steering
        if steering is not None:
            steering.use_stats(self.stats)
        #: the UDP socket the supervisor bound for this worker, served instead of binding
        self.inherited_fd = inherited_fd
        self.replace_identities(identities)
        self.guard = NewConnectionGuard(
            per_sec=p.new_connections_per_sec, burst=p.new_connections_burst, max_active=p.max_active_connections, stats=self.stats
        )
        #: resilience.protocol.allow_0rtt: resumption tickets (and with them 0-RTT) only then
        self.session_tickets: dict[str, Callable[[bytes], SessionTicket | None] | Callable[[SessionTicket], None]] = {}
        if protocol.allow_0rtt:
            store = SessionTicketStore()
            self.session_tickets = {"session_ticket_fetcher": store.pop, "session_ticket_handler": store.add}

    @property
    def steering_mode(self) -> str:
        """``kernel``, ``handover`` or ``off`` (ingress/steering.py)."""
        return self.steering.mode if self.steering is not None else "off"

    def steering_describe(self) -> dict[str, object]:
        """For /admin/runtime: the steering mode and why (docs/fleet.md)."""
        if self.steering is None:
            return {"mode": "off", "reason": "one process"}
        return self.steering.describe()

    def replace_identities(self, identities: IdentityStore) -> None:
        """Use ``identities`` for handshakes that start from now on (certificate reload);
        open connections keep the store they were created with."""
        self.identities = identities
        # aioquic insists on a certificate up front; _SniContext swaps it per handshake
        primary = identities.primary
        self.configuration.certificate = primary.certificate
        self.configuration.certificate_chain = list(primary.chain)
        self.configuration.private_key = primary.private_key

    def bind(self) -> None:
        """Bind the UDP socket now, so bind errors surface before the server reports ready."""
        if self.inherited_fd is not None:  # used once: a later bind (listener re-added) binds anew
            sock = socket.socket(fileno=self.inherited_fd)
            self.inherited_fd = None
        else:
            sock = open_udp_socket(self.address, self.port, self.performance)
        sock.setblocking(False)
        self.sock = sock
        self.sender = DatagramSender(sock, self.stats)
        self.port = sock.getsockname()[1]
        if self.steering is not None:
            try:
                self.steering.start(sock, self.address, self.port)
            except OSError:
                sock.close()
                raise

    def unbind(self) -> None:
        """Close what :meth:`bind` opened, for a listener that will not serve (an aborted
        reload, or its TCP twin could not bind)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None  # type: ignore[assignment]
        if self.steering is not None:
            self.steering.close()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the receive loop and flusher until cancelled. Call :meth:`bind` first."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._flusher)
                if self.steering is not None and self.steering.inbox is not None:  # hand-overs
                    nursery.start_soon(self._receive_loop, self.steering.inbox, self.steering.receive_handed)
                    nursery.start_soon(self.steering.run_backlogs)
                task_status.started()
                await self._receive_loop(self.sock, self.sock.recvfrom)
        finally:
            self.sock.close()
            if self.steering is not None:
                self.steering.close()

    async def _receive_loop(self, sock: socket.socket, recvfrom: Callable[[int], tuple[bytes, tuple[str, int]]]) -> None:
        """Read datagrams from ``sock`` with ``recvfrom`` (the UDP socket, or the hand-over
        inbox of worker steering) in bursts."""
        direct = sock is self.sock  # (a hand-over is not a steered datagram)
        while True:
            await trio.lowlevel.wait_readable(sock)
            now = trio.current_time()
            touched: set[QuicConnectionTask] = set()
            for _ in range(RECV_BURST):
                try:
                    data, addr = recvfrom(65536)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:  # e.g. ICMP port unreachable surfacing on the socket
                    log.debug("recvfrom failed: %s", exc)
                    continue
                self.stats["datagrams"] += 1
                try:
                    conn = self._route(data, addr, direct)
                    if conn is None:
                        continue
                    if conn._nursery is None:
                        await self._nursery.start(conn.run)
                    conn.quic.receive_datagram(data, addr, now)
                except Exception:
                    # one bad datagram or connection must never stop the listener
                    self.stats["panics"] += 1
                    log.exception("error handling a datagram from %s", addr)
                    continue
                touched.add(conn)
            for conn in touched:
                quiet = False
                try:
                    conn.process_events()
                    quiet = not conn.quic.needs_transmit(now)
                except Exception:
                    self.stats["panics"] += 1
                    log.exception("error processing events of connection from %s", conn.addr)
                    conn.quic.close(error_code=ErrorCode.H3_INTERNAL_ERROR, reason_phrase="internal error")
                if quiet:  # nothing to send (quic_engine.needs_transmit); the timer still moved
                    conn.update_timer()
                else:
                    self._dirty.add(conn)
            self._flush()
            await trio.lowlevel.checkpoint_if_cancelled()

    def _route(self, data: bytes, addr: tuple[str, int], direct: bool = True) -> QuicConnectionTask | None:
        """Find or create the connection for a datagram; None to drop it. ``direct``: it
        arrived on our UDP socket (not handed over by another worker)."""
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=self.configuration.connection_id_length)
        except ValueError:
            self.stats["bad_headers"] += 1
            return None
        conn = self._by_cid.get(header.destination_cid)
        if conn is not None:
            if self.steering is not None and direct and addr != conn.addr:
                self.stats["steered"] += 1  # a moved client's datagram reached its owner directly
            return conn
        if self.steering is not None or self._old_cid_lengths:
            return self._route_unknown(data, header, addr)
        return self._route_new(data, header, addr)

    def _route_new(self, data: bytes, header: QuicHeader, addr: tuple[str, int]) -> QuicConnectionTask | None:
        """A datagram of no known connection: version negotiation, or a new connection."""
        if (
            header.packet_type != QuicPacketType.VERSION_NEGOTIATION
            and header.version is not None
            and header.version not in self.configuration.supported_versions
        ):
            self._send(encode_quic_version_negotiation(
                source_cid=header.destination_cid,
                destination_cid=header.source_cid,
                supported_versions=self.configuration.supported_versions,
            ), addr)
            return None
        if header.packet_type != QuicPacketType.INITIAL or len(data) < SMALLEST_MAX_DATAGRAM_SIZE:
            self.stats["unroutable"] += 1
            return None
        if self.draining:
            self.stats["refused_draining"] += 1
            self._send(encode_initial_close(header, QUIC_CONNECTION_REFUSED, "server draining"), addr)
            return None
        # flood guard (resilience/flood.py): only Initials that would create a connection pay
        decision = self.guard.admit(header, addr, len(self.connections), trio.current_time())
        verdict = decision.verdict
        if verdict is not Verdict.ADMIT and verdict is not Verdict.ADMIT_VALIDATED:
            if verdict is Verdict.RETRY:
                self._send(decision.reply, addr)  # type: ignore[arg-type]
            elif verdict is Verdict.INVALID_TOKEN:
                self._send(encode_initial_close(header, QUIC_INVALID_TOKEN, "invalid retry token"), addr)
            else:
                self.stats["cap_rejects"] += 1
            return None
        original_dcid = decision.original_destination_cid or header.destination_cid
        quic = SpookyQuicConnection(
            cid_source=self.cids.new_cid,
            configuration=self.configuration,
            original_destination_connection_id=original_dcid,
            retry_source_connection_id=decision.retry_source_cid,
            identities=self.identities,
            max_streams_bidi=self.performance.quic_initial_max_streams_bidi,
            max_streams_uni=self.performance.quic_initial_max_streams_uni,
            **self.session_tickets,
        )
        conn = QuicConnectionTask(self, quic, original_dcid, addr)
        self.connections.add(conn)
        self._by_cid[header.destination_cid] = conn
        self._by_cid[quic.host_cid] = conn
        return conn

    def _route_unknown(self, data: bytes, header: QuicHeader, addr: tuple[str, int]) -> QuicConnectionTask | None:
        """A datagram whose DCID no connection here holds: a CID of an earlier length (a
        reload changed the QUIC-LB config), or another worker's (hand it over)."""
        packet_type = header.packet_type
        if packet_type is QuicPacketType.ONE_RTT:
            for length in self._old_cid_lengths:
                conn = self._by_cid.get(data[1 : 1 + length])
                if conn is not None:
                    return conn
        steering = self.steering
        if steering is not None and packet_type in (QuicPacketType.ONE_RTT, QuicPacketType.HANDSHAKE):
            owner = self.cids.worker_of(header.destination_cid)
            if owner is not None and owner != steering.index:
                steering.hand_over(owner, data, addr)
                return None
        return self._route_new(data, header, addr)

    def use_cids(self, cids: CidScheme) -> None:
        """Issue CIDs of ``cids`` from now on (a reload changed ``quic_lb``): new connections
        get them; open ones, when the length is unchanged, are asked to move to new CIDs and
        retire their old ones (``rotate_cids``: Retire Prior To), which keep routing here
        until retired. A new length cannot be given to an open connection (aioquic parses
        its short headers with the length it started with): those keep their CIDs, parsed
        beside the new length until they end (docs/fleet.md, "Key rotation")."""
        same_length = cids.length == self.cids.length
        if not same_length:
            self._old_cid_lengths.add(self.cids.length)
            self._old_cid_lengths.discard(cids.length)
        layout = (self.cids.worker_offset, self.cids.worker_mask) != (cids.worker_offset, cids.worker_mask)
        self.cids = cids
        # a copy: open connections keep reading the length they started with from theirs
        self.configuration = copy.copy(self.configuration)
        self.configuration.connection_id_length = cids.length
        if self.steering is not None:
            self.steering.cids = cids
            if layout and self.sock is not None:
                self.steering.choose_mode(self.sock)
        if same_length:
            for conn in list(self.connections):
                for cid in conn.quic.rotate_cids(cids.new_cid):
                    self._by_cid[cid] = conn
                self._dirty.add(conn)
            self._flush_wakeup.set()

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self.sock.sendto(data, addr)
        except OSError as exc:
            log.debug("sendto %s failed: %s", addr, exc)

    def register_cid(self, cid: bytes, conn: QuicConnectionTask) -> None:
        self._by_cid[cid] = conn

    def unregister_cid(self, cid: bytes) -> None:
        self._by_cid.pop(cid, None)

    def forget(self, conn: QuicConnectionTask) -> None:
        self.connections.discard(conn)
        self._dirty.discard(conn)
        for cid in [c for c, owner in self._by_cid.items() if owner is conn]:
            del self._by_cid[cid]

    def mark_dirty(self, conn: QuicConnectionTask) -> None:
        self._dirty.add(conn)
        self._flush_wakeup.set()

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, set()
        for conn in dirty:
            conn.transmit()
            if conn.quic.is_closing():
                conn.process_events()

    async def _flusher(self) -> None:
        """Transmit for connections that stream tasks wrote to, once per scheduling batch.

        ``mark_dirty`` wakes this task, so it runs in the batch after the writes: everything
        the tasks of that batch wrote goes out together. (A second checkpoint here, to also
        wait for the tasks woken with it, cost a scheduler round per flush: +7% Python
        calls per request at low load, and no fewer datagrams.)"""
        while True:
            await self._flush_wakeup.wait()
            self._flush_wakeup = trio.Event()
            self._flush()

    async def wait_acked(self) -> None:
        """Wait until every connection's sent data was acknowledged (or it ended)."""
        for conn in list(self.connections):
            await conn.wait_acked()

    def close_all(self) -> None:
        """Close every connection now (end of drain) and transmit the closes."""
        for conn in list(self.connections):
            conn.quic.close(error_code=ErrorCode.H3_NO_ERROR, reason_phrase="shutting down")
            self._dirty.add(conn)
        self._flush()

    async def wait_closed(self) -> None:
        """Wait until every connection task has ended."""
        for conn in list(self.connections):
            await conn.closed.wait()

    def begin_drain(self) -> None:
        """Refuse new connections and send GOAWAY on every open one."""
        self.draining = True
        for conn in list(self.connections):
            conn.goaway()
