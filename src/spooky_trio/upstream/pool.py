"""The upstream connection pool: one per process, keyed by :class:`BackendTarget`; an
exchange goes by the target's ``protocol``.

HTTP/1.1 (``h1``, the default of ``http`` targets): a LIFO list of idle keep-alive
connections per target; an exchange (:class:`_H1Exchange`, with or without a request body)
checks one out (discarding any that the server closed meanwhile) or dials a new one with
:func:`upstream.h1.connect`, and returns it after a clean cycle. HTTP/2 (``h2``, the default
of ``https`` targets; on ``http`` cleartext with prior knowledge): a list of multiplexed
connections per target; a new one is dialled only when every existing one is at the
server's MAX_CONCURRENT_STREAMS, and concurrent requests share a single dial in progress.
HTTP/3 (``h3``): QUIC sessions per target, ``upstream/h3_pool.py``. ``alt-svc``: HTTP/2
until the backend advertises HTTP/3, ``upstream/alt_svc.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import attrs
import trio

from spooky_trio.config import PerformanceConfig
from spooky_trio.http.messages import UpstreamRequest
from spooky_trio.upstream.alt_svc import AltSvcRouter
from spooky_trio.upstream.common import (
    BackendTarget,
    ExchangeControl,
    PumpNursery,
    UpstreamResponse,
    exchange_scope,
)
from spooky_trio.upstream.errors import UpstreamConnectError, UpstreamError
from spooky_trio.upstream.h1 import H1Connection, H1Response, StaleConnection, connect
from spooky_trio.upstream.h2 import H2Connection
from spooky_trio.upstream.h2_stream import H2Stream
from spooky_trio.upstream.h3_pool import H3Pool
from spooky_trio.upstream.tls import open_backend_stream


@attrs.define(eq=False)
class _PendingDial:
    """An HTTP/2 dial in progress that other requests for the same target wait for."""

    done: trio.Event = attrs.Factory(trio.Event)
    error: UpstreamError | None = None


class UpstreamPool:
    """Connections to every backend, keyed by BackendTarget. One per process; survives config reloads.

    ``idle_timeout``: seconds an idle connection is kept. ``max_idle_per_backend``: idle
    connections kept per target (per protocol). :meth:`run` must be running for HTTP/2
    targets (it owns their reader/writer tasks) and for idle reaping.
    """

    def __init__(self, *, idle_timeout: float = 90.0, max_idle_per_backend: int = 256) -> None:
        self.idle_timeout = idle_timeout
        self.max_idle_per_backend = max_idle_per_backend
        self._nursery: trio.Nursery | None = None
        self._h1_idle: dict[BackendTarget, list[H1Connection]] = {}
        self._h2_conns: dict[BackendTarget, list[H2Connection]] = {}
        self._h2_dialing: dict[BackendTarget, _PendingDial] = {}
        #: targets of backends a reload removed: their connections close once idle
        self._retired: set[BackendTarget] = set()
        #: targets this pool opened connections to since the last retire (busy ones included:
        #: a checked-out HTTP/1.1 connection is in no idle list, yet must not pool again)
        self._known: set[BackendTarget] = set()
        #: HTTP/3 sessions (``h3`` targets and the alternatives of ``alt-svc`` ones)
        self.h3 = H3Pool()
        #: ``alt-svc`` targets: what each advertised, and the move between HTTP/2 and HTTP/3
        self.alt_svc = AltSvcRouter(self.h3, self._exchange)

    def configure(self, perf: PerformanceConfig) -> None:
        """Apply the HTTP/3 pool settings of ``perf`` (new sessions use them)."""
        self.h3.max_connections = perf.h3_pool_max_connections_per_backend
        self.h3.max_streams = perf.h3_pool_max_streams_per_connection
        self.h3.idle_timeout = perf.h3_pool_idle_timeout_ms / 1000

    # -- introspection (tests, metrics) --

    def idle_h1_connections(self, target: BackendTarget) -> int:
        """Idle HTTP/1.1 connections currently pooled for ``target``."""
        return len(self._h1_idle.get(target, ()))

    def h2_connections(self, target: BackendTarget) -> list[H2Connection]:
        """Open HTTP/2 connections for ``target`` (a copy of the list)."""
        return list(self._h2_conns.get(target, ()))

    def targets(self) -> set[BackendTarget]:
        """Every target with a pooled (idle HTTP/1.1 or open HTTP/2) connection."""
        return set(self._h1_idle) | set(self._h2_conns)

    async def retire(self, keep: set[BackendTarget]) -> int:
        """A reload removed backends: drain the connections of every target not in ``keep``.

        Idle HTTP/1.1 connections close now and busy ones when their exchange ends (they
        are not pooled again); HTTP/2 connections take no new streams, send GOAWAY and close
        once their active streams are released. Targets in ``keep`` are left alone (and
        taken off the retired set: a backend added back pools again). Returns how many
        connections were told to close.
        """
        self._retired = {target for target in self._retired | self.targets() | self._known if target not in keep}
        self._known &= keep
        closed = 0
        for target in list(self._h1_idle):
            if target in self._retired:
                conns = self._h1_idle.pop(target)
                taken, conns[:] = list(conns), []  # a checkout holding the list finds it empty
                for conn in taken:
                    await conn.aclose()
                    closed += 1
        for target, h2conns in list(self._h2_conns.items()):
            if target in self._retired:
                for h2conn in list(h2conns):
                    h2conn.close()
                    closed += 1
        # an alt-svc backend's HTTP/3 alternative lives as long as the backend
        return closed + self.h3.retire(keep | self.alt_svc.cache.retain(keep))

    # -- lifecycle --

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the HTTP/2 connection tasks and the idle reaper until cancelled.

        Calls ``task_status.started()`` once ready. On exit every connection is closed and
        in-flight HTTP/2 streams fail with UpstreamProtocolError.
        """
        if self._nursery is not None:
            raise RuntimeError("UpstreamPool.run() is already running")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = self.h3.nursery = nursery
                nursery.start_soon(self._reaper)
                task_status.started()
        finally:
            self._nursery = self.h3.nursery = None
            self.h3.abort_all()
            idle = [conn for conns in self._h1_idle.values() for conn in conns]
            self._h1_idle.clear()
            for conn in idle:
                await conn.aclose()
            for conns in list(self._h2_conns.values()):
                for h2conn in list(conns):
                    h2conn.abort()

    async def _reaper(self) -> None:
        while True:
            await trio.sleep(min(max(min(self.idle_timeout, self.h3.idle_timeout) / 4, 0.05), 5.0))
            cutoff = trio.current_time() - self.idle_timeout
            for target, conns in list(self._h1_idle.items()):
                expired = [conn for conn in conns if conn.idle_since <= cutoff or not conn.looks_alive()]
                if expired:
                    conns[:] = [conn for conn in conns if conn not in expired]
                    # an earlier close awaited: a checkout or a reload may have dropped the entry
                    if not conns and self._h1_idle.get(target) is conns:
                        del self._h1_idle[target]
                    for conn in expired:
                        await conn.aclose()
            for h2conns in list(self._h2_conns.values()):
                for h2conn in list(h2conns):
                    if h2conn.active_streams == 0 and h2conn.idle_since <= cutoff:
                        h2conn.close()
            self.h3.reap(trio.current_time())

    # -- the exchange --

    def exchange(
        self,
        target: BackendTarget,
        request: UpstreamRequest,
        *,
        connect_timeout: float,
        response_timeout: float,
    ) -> contextlib.AbstractAsyncContextManager[UpstreamResponse]:
        """Send ``request`` to ``target`` and yield the response once its head arrived.

        The request body is pumped concurrently in a nursery inside this block. Leaving the
        block before the response body ended aborts the exchange (HTTP/2: RST_STREAM CANCEL;
        HTTP/1.1: the connection is closed); leaving after it returns an HTTP/1.1 connection
        to the pool when keep-alive is possible. An exception from ``request.body`` is raised
        unchanged after aborting. Raises UpstreamConnectError, UpstreamTLSError,
        UpstreamTimeout or UpstreamProtocolError (see ``upstream.errors``).
        """
        protocol = target.protocol
        if protocol == "h1":
            return _H1Exchange(self, target, request, connect_timeout, response_timeout)
        if protocol == "h2":
            return self._exchange(target, request, connect_timeout=connect_timeout, response_timeout=response_timeout)
        if protocol == "h3":
            return self.h3.exchange(target, request, connect_timeout=connect_timeout, response_timeout=response_timeout)
        return self.alt_svc.exchange(target, request, connect_timeout=connect_timeout, response_timeout=response_timeout)

    @contextlib.asynccontextmanager
    async def _exchange(
        self,
        target: BackendTarget,
        request: UpstreamRequest,
        *,
        connect_timeout: float,
        response_timeout: float,
    ) -> AsyncIterator[UpstreamResponse]:
        # HTTP/2 (HTTP/1.1 is _H1Exchange), also alt-svc's. A bodiless request has no pump
        # and gets no nursery (nursery None; see exchange_scope)
        async with exchange_scope(response_timeout, pump=request.body is not None) as (nursery, control):
            h2conn, stream = await self._open_h2_stream(target, request, connect_timeout)
            try:
                await h2conn.start(stream, request, nursery=nursery, control=control)  # type: ignore[arg-type]
                yield stream
            finally:
                if nursery is not None:
                    nursery.cancel_scope.cancel()
                h2conn.release(stream)

    # -- HTTP/1.1 --

    async def _start_h1(
        self,
        target: BackendTarget,
        request: UpstreamRequest,
        nursery: trio.Nursery | None,
        control: ExchangeControl,
        connect_timeout: float,
    ) -> tuple[H1Connection, H1Response]:
        for attempt in range(2):
            connection = await self._checkout_h1(target, connect_timeout, fresh=attempt > 0)
            try:
                return connection, await connection.start(request, nursery=nursery, control=control)
            except StaleConnection:
                await connection.aclose()
                control.restart()  # bodiless request, nothing received: safe to retry once
            except BaseException:
                with trio.CancelScope(shield=True):
                    await connection.aclose()
                raise
        raise AssertionError("unreachable: a fresh connection never reports a stale one")

    async def _checkout_h1(self, target: BackendTarget, connect_timeout: float, *, fresh: bool) -> H1Connection:
        idle = self._h1_idle.get(target)
        cutoff = trio.current_time() - self.idle_timeout
        while idle and not fresh:
            connection = idle.pop()
            if not idle and self._h1_idle.get(target) is idle:  # (a reload may have dropped it)
                del self._h1_idle[target]
            if connection.idle_since > cutoff and connection.looks_alive():
                return connection
            await connection.aclose()
        self._opening(target)
        return await connect(target, timeout=connect_timeout)

    def _opening(self, target: BackendTarget) -> None:
        """A new connection to ``target``: a live backend uses it (again), so it pools."""
        self._known.add(target)
        self._retired.discard(target)

    def _pool_h1_nowait(self, target: BackendTarget, connection: H1Connection, response: H1Response) -> bool:
        """The common case of :meth:`_finish_h1` without a checkpoint: a clean connection
        goes back to a non-full idle list. False: call :meth:`_finish_h1` instead."""
        if not (response.complete and connection.reusable) or target in self._retired:
            return False  # a backend a reload removed: its connections close (_finish_h1)
        idle = self._h1_idle.get(target)
        if idle is not None and len(idle) >= self.max_idle_per_backend:
            return False
        connection.prepare_reuse()
        if idle is None:
            self._h1_idle[target] = [connection]
        else:
            idle.append(connection)
        return True

    async def _finish_h1(self, target: BackendTarget, connection: H1Connection, response: H1Response) -> None:
        if not (response.complete and connection.reusable) or target in self._retired:
            await connection.aclose()
            return
        connection.prepare_reuse()
        idle = self._h1_idle.setdefault(target, [])
        idle.append(connection)
        while len(idle) > self.max_idle_per_backend:
            await idle.pop(0).aclose()

    # -- HTTP/2 --

    async def _open_h2_stream(self, target: BackendTarget, request: UpstreamRequest, connect_timeout: float) -> tuple[H2Connection, H2Stream]:
        deadline = trio.current_time() + connect_timeout
        while True:
            for h2conn in self._h2_conns.get(target, ()):
                stream = h2conn.try_open_stream(request)
                if stream is not None:
                    return h2conn, stream
            pending = self._h2_dialing.get(target)
            if pending is None:
                await self._dial_h2(target, deadline)
                continue
            with trio.move_on_at(deadline):
                await pending.done.wait()
            if not pending.done.is_set():
                raise UpstreamConnectError(f"connect to {target} timed out after {connect_timeout:g}s")
            if pending.error is not None:
                raise type(pending.error)(str(pending.error), reason=pending.error.reason)

    async def _dial_h2(self, target: BackendTarget, deadline: float) -> None:
        nursery = self._nursery
        if nursery is None:
            raise RuntimeError("UpstreamPool.run() must be running for HTTP/2 backends")
        pending = _PendingDial()
        self._h2_dialing[target] = pending
        h2conn: H2Connection | None = None
        try:
            self._opening(target)
            stream = await open_backend_stream(target, timeout=max(0.0, deadline - trio.current_time()), require_alpn="h2")
            h2conn = H2Connection(target, stream, on_idle=self._h2_idle, on_closed=self._h2_closed)
            await nursery.start(h2conn.run)
            with trio.move_on_at(deadline):
                await h2conn.ready.wait()
            if h2conn.failure is not None:
                raise UpstreamConnectError(f"HTTP/2 session with {target} failed to start: {h2conn.failure}")
            if not h2conn.ready.is_set():
                raise UpstreamConnectError(f"{target} sent no HTTP/2 SETTINGS before the connect timeout")
            self._h2_conns.setdefault(target, []).append(h2conn)
            if target in self._retired:
                h2conn.close()  # dialled for a request that started before the reload: last use
        except UpstreamError as exc:
            pending.error = exc
            if h2conn is not None:
                h2conn.abort()
            raise
        except BaseException:
            if h2conn is not None:
                h2conn.abort()
            raise
        finally:
            pending.done.set()
            if self._h2_dialing.get(target) is pending:
                del self._h2_dialing[target]

    def _h2_idle(self, h2conn: H2Connection) -> None:
        idle = [c for c in self._h2_conns.get(h2conn.target, ()) if c.active_streams == 0 and c.can_open_stream]
        if len(idle) > self.max_idle_per_backend:
            h2conn.close()

    def _h2_closed(self, h2conn: H2Connection) -> None:
        conns = self._h2_conns.get(h2conn.target)
        if conns is not None and h2conn in conns:
            conns.remove(h2conn)
            if not conns:
                del self._h2_conns[h2conn.target]


class _H1Exchange:
    """:meth:`UpstreamPool.exchange` for an ``http`` target (HTTP/1.1), with or without a body.

    A class, not a generator context manager: it runs once per proxied request and the
    generator machinery was a measurable share of a tiny one. A bodiless request (the common
    case) gets no nursery at all; a request with a body gets a :class:`PumpNursery` for its
    body pump, entered in ``__aenter__`` and left in ``__aexit__``, so the caller's block runs
    inside it. On exit the pump is cancelled, the connection pooled or closed (reusable only
    if the pump had sent the whole body), the pump awaited, and a request-body exception it
    recorded replaces the block's own.
    """

    __slots__ = ("_pool", "_target", "_request", "_connect_timeout", "_response_timeout", "_pump", "_connection", "_response")

    def __init__(self, pool: UpstreamPool, target: BackendTarget, request: UpstreamRequest, connect_timeout: float, response_timeout: float) -> None:
        self._pool = pool
        self._target = target
        self._request = request
        self._connect_timeout = connect_timeout
        self._response_timeout = response_timeout

    async def __aenter__(self) -> H1Response:
        if self._request.body is None:
            self._pump = None
            nursery = None
            control = ExchangeControl(trio.CancelScope(), self._response_timeout)
        else:
            pump = self._pump = PumpNursery(self._response_timeout)
            nursery, control = await pump.open()
        try:
            self._connection, self._response = await self._pool._start_h1(self._target, self._request, nursery, control, self._connect_timeout)
        except BaseException:
            if self._pump is not None:
                await self._pump.close()  # raises the body's own exception if it failed
            raise
        return self._response

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        pump = self._pump
        if pump is not None:
            pump.cancel()  # no more of the body once the caller is done (the close may yield)
        if not self._pool._pool_h1_nowait(self._target, self._connection, self._response):
            # shielded: in a cancelled scope the close would raise Cancelled and replace the
            # caller's exception (it never blocks: plain TCP close)
            with trio.CancelScope(shield=True):
                await self._pool._finish_h1(self._target, self._connection, self._response)
        if pump is not None:
            await pump.close()
        return False
