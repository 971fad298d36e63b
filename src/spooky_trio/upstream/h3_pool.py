"""The HTTP/3 part of the upstream pool: QUIC sessions per backend target.

A request takes a stream on the first session of its target that can open one (OPEN,
below ``h3_pool_max_streams_per_connection`` and within the peer's MAX_STREAMS,
``upstream/h3.py``). When none can, a new session is dialled while the target has fewer
than ``h3_pool_max_connections_per_backend`` (requests arriving meanwhile share that dial);
at the limit the request waits, counted (``stream_waits``), until a session can take it,
for at most the connect timeout (then 502 ``stream_wait``: nothing was sent). A bodiless
request the backend provably did not process (a refused stream, a connection lost before
it got the request, or an idempotent one) is sent once more on another session.

The sessions' driver tasks run in the pool's nursery (:meth:`UpstreamPool.run`); idle
sessions close after ``h3_pool_idle_timeout_ms``, sessions that received GOAWAY or were
lost leave the list at once (a later request redials).
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import AsyncIterator, Iterable

import attrs
import trio

from spooky_trio.http.messages import UpstreamRequest
from spooky_trio.upstream.common import BackendTarget, ExchangeControl, exchange_scope
from spooky_trio.upstream.errors import UpstreamConnectError, UpstreamError, UpstreamProtocolError
from spooky_trio.upstream.h2_state import ConnState
from spooky_trio.upstream.h3 import H3Session, open_session
from spooky_trio.upstream.h3_stream import H3Stream, NotProcessed


#: session states that take no new streams: such a session leaves the pool's lists
_LEAVING = (ConnState.FAILED, ConnState.CLOSING, ConnState.DRAINING)


class H3Unavailable(UpstreamError):
    """(``exchange(..., fallback=True)`` only) HTTP/3 cannot carry this request now and
    nothing of it reached the backend: no open session had a free stream, or the session
    failed in a way that proves the request unprocessed. ``broken``: the QUIC connection
    failed (the alt-svc logic then marks HTTP/3 broken for the backend)."""

    reason = "h3_unavailable"

    def __init__(self, message: str, *, broken: bool) -> None:
        super().__init__(message)
        self.broken = broken


@attrs.define(eq=False)
class _PendingDial:
    done: trio.Event = attrs.Factory(trio.Event)
    error: UpstreamError | None = None


class H3Pool:
    """Sessions per target (module docstring). Settings are plain attributes (a reload
    retunes them: :meth:`UpstreamPool.configure`); ``stats`` counts events by
    ``(event, target)`` for the metrics (``observability/upstream_metrics.py``)."""

    def __init__(self, *, max_connections: int = 2, max_streams: int = 100, idle_timeout: float = 90.0) -> None:
        self.max_connections = max_connections
        self.max_streams = max_streams
        self.idle_timeout = idle_timeout
        self.nursery: trio.Nursery | None = None
        self._sessions: dict[BackendTarget, list[H3Session]] = {}
        self._dialing: dict[BackendTarget, _PendingDial] = {}
        #: per target, set and replaced whenever a session may take a stream it could not
        self._changed: dict[BackendTarget, trio.Event] = {}
        self._retired: set[BackendTarget] = set()
        self.stats: collections.Counter[tuple[str, str]] = collections.Counter()

    # -- introspection --

    def sessions(self, target: BackendTarget) -> list[H3Session]:
        """Open sessions of ``target`` (a copy)."""
        return list(self._sessions.get(target, ()))

    def targets(self) -> set[BackendTarget]:
        return set(self._sessions)

    def connection_counts(self) -> dict[str, int]:
        """Open sessions per target address (for the metrics)."""
        counts: collections.Counter[str] = collections.Counter()
        for target, sessions in self._sessions.items():
            counts[str(target)] += len(sessions)
        return dict(counts)

    def has_ready_session(self, target: BackendTarget) -> bool:
        """A session of ``target`` completed its handshake and takes streams."""
        return any(s.can_open_stream for s in self._sessions.get(target, ()))

    def dialing(self, target: BackendTarget) -> bool:
        return target in self._dialing

    # -- the exchange --

    @contextlib.asynccontextmanager
    async def exchange(
        self, target: BackendTarget, request: UpstreamRequest, *, connect_timeout: float, response_timeout: float, fallback: bool = False
    ) -> AsyncIterator[H3Stream]:
        """:meth:`UpstreamPool.exchange` over HTTP/3. With ``fallback`` the request never
        waits for a stream or a dial: it raises :class:`H3Unavailable` instead (and for a
        lost connection when the request is provably unprocessed) so that the caller can
        send it over HTTP/2."""
        async with exchange_scope(response_timeout, pump=request.body is not None) as (nursery, control):
            session, stream = await self._start(target, request, nursery, control, connect_timeout, fallback)
            try:
                yield stream
            finally:
                if nursery is not None:
                    nursery.cancel_scope.cancel()
                session.release(stream)

    async def _start(
        self, target: BackendTarget, request: UpstreamRequest, nursery: trio.Nursery | None, control: ExchangeControl,
        connect_timeout: float, fallback: bool,
    ) -> tuple[H3Session, H3Stream]:
        failed: H3Session | None = None
        for attempt in range(2):
            session, stream = await self._open_stream(target, request, trio.current_time() + connect_timeout, fallback, avoid=failed)
            try:
                await session.start(stream, request, nursery=nursery, control=control)
                return session, stream
            except NotProcessed as exc:
                session.release(stream)
                if fallback:
                    raise H3Unavailable(str(exc), broken=exc.lost) from None
                if attempt:
                    raise UpstreamProtocolError(str(exc)) from None
                self.stats[("resent", str(target))] += 1
                control.restart()
                failed = session
            except BaseException:
                session.release(stream)
                raise
        raise AssertionError("unreachable")

    async def _open_stream(
        self, target: BackendTarget, request: UpstreamRequest, deadline: float, fallback: bool, *, avoid: H3Session | None = None
    ) -> tuple[H3Session, H3Stream]:
        waited = False
        while True:
            sessions = [s for s in self._sessions.get(target, ()) if s is not avoid] if avoid else self._sessions.get(target, ())
            for session in sessions:
                stream = session.try_open_stream(request)
                if stream is not None:
                    return session, stream
            if fallback:
                raise H3Unavailable(f"no HTTP/3 stream free to {target}", broken=False)
            pending = self._dialing.get(target)
            if pending is None and len(sessions) < self.max_connections:
                await self._dial(target, deadline)
                continue
            if not waited:
                waited = True
                self.stats[("stream_wait", str(target))] += 1
            changed = self._changed.get(target)
            if changed is None:
                changed = self._changed[target] = trio.Event()
            with trio.move_on_at(deadline):
                await changed.wait()
            if trio.current_time() >= deadline:
                if pending is not None and pending.error is not None:
                    raise type(pending.error)(str(pending.error), reason=pending.error.reason)
                raise UpstreamConnectError(f"no HTTP/3 stream to {target} became free within the connect timeout "
                                           f"({len(sessions)} connections at their stream limit)", reason="stream_wait")
            if pending is not None and pending.done.is_set() and pending.error is not None:
                raise type(pending.error)(str(pending.error), reason=pending.error.reason)

    async def _dial(self, target: BackendTarget, deadline: float) -> H3Session:
        nursery = self.nursery
        if nursery is None:
            raise RuntimeError("UpstreamPool.run() must be running for HTTP/3 backends")
        pending = self._dialing[target] = _PendingDial()
        self._retired.discard(target)  # a backend used (again) pools (again)
        try:
            session = await open_session(target, nursery, deadline=deadline, idle_timeout=self.idle_timeout,
                                         max_streams=self.max_streams, on_change=self._on_change, on_closed=self._on_closed)
        except UpstreamError as exc:
            pending.error = exc
            self.stats[("dial_failed", str(target))] += 1
            raise
        finally:
            pending.done.set()
            if self._dialing.get(target) is pending:
                del self._dialing[target]
            self._notify(target)
        self.stats[("dial", str(target))] += 1
        if session.state is not ConnState.FAILED:
            self._sessions.setdefault(target, []).append(session)
            if target in self._retired:
                session.close()  # dialled for a request that started before the reload: last use
        self._notify(target)
        return session

    async def warm(self, target: BackendTarget, connect_timeout: float) -> bool:
        """Dial ``target`` unless a session or a dial exists; True once a session is ready.
        Raises what the dial raises."""
        if self.has_ready_session(target):
            return True
        pending = self._dialing.get(target)
        if pending is not None:
            with trio.move_on_after(connect_timeout):
                await pending.done.wait()
            if pending.error is not None:
                raise type(pending.error)(str(pending.error), reason=pending.error.reason)
            return self.has_ready_session(target)
        await self._dial(target, trio.current_time() + connect_timeout)
        return True

    # -- session callbacks --

    def _notify(self, target: BackendTarget) -> None:
        event = self._changed.pop(target, None)
        if event is not None:
            event.set()

    def _on_change(self, session: H3Session) -> None:
        if session.state in _LEAVING:
            self._drop(session)
        self._notify(session.backend)

    def _on_closed(self, session: H3Session) -> None:
        self._drop(session)
        self._notify(session.backend)

    def _drop(self, session: H3Session) -> None:
        sessions = self._sessions.get(session.backend)
        if sessions is not None and session in sessions:
            sessions.remove(session)
            if not sessions:
                del self._sessions[session.backend]
            if session.state is ConnState.FAILED and session.active_streams:
                self.stats[("lost", str(session.backend))] += 1
            elif session.goaway_received.is_set():
                self.stats[("goaway", str(session.backend))] += 1

    # -- upkeep --

    def reap(self, now: float) -> None:
        """Close sessions idle for ``idle_timeout`` (the pool's reaper calls it)."""
        cutoff = now - self.idle_timeout
        for sessions in list(self._sessions.values()):
            for session in list(sessions):
                if session.active_streams == 0 and session.idle_since <= cutoff:
                    session.close()

    def close_target(self, target: BackendTarget) -> int:
        """Drain every session of ``target`` (their streams finish); returns how many."""
        sessions = self._sessions.get(target, [])
        for session in list(sessions):
            session.close()
        return len(sessions)

    def retire(self, keep: Iterable[BackendTarget]) -> int:
        """Drain the sessions of every target not in ``keep`` (a reload removed it)."""
        kept = set(keep)
        self._retired = {target for target in self._retired | set(self._sessions) | set(self._dialing) if target not in kept}
        closed = 0
        for target in list(self._sessions):
            if target not in kept:
                closed += self.close_target(target)
        return closed

    def abort_all(self) -> None:
        for sessions in list(self._sessions.values()):
            for session in list(sessions):
                session.abort()
