"""The proxy pipeline: validate -> route -> admit -> pick backend -> forward -> respond -> record.

Protocol-neutral: every ingress hands a :class:`DownstreamRequest` and a
:class:`ResponseSink`; the pipeline never knows whether the client spoke HTTP/3 or HTTP/2.
Admission (brownout, adaptive admission, inflight limits, route queues) and the backend
choice (per-backend limit, circuit breaker) are in :mod:`spooky_trio.resilience.overload`;
retries and hedging are driven from :meth:`Proxy._forward` (see ``resilience/retry.py`` and
``resilience/hedge.py`` for their rules).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from spooky_trio.health.passive import failure_reason
from spooky_trio.http.headers import (
    build_upstream_headers,
    host_without_port,
    strip_response_hop_by_hop,
    upstream_authority,
)
from spooky_trio.http.messages import (
    DownstreamRequest,
    Headers,
    RequestBodyError,
    ResponseSink,
    UpstreamRequest,
)
from spooky_trio.observability.access import AccessRecord, CountingBody, CountingSink
from spooky_trio.observability.metrics import Metrics
from spooky_trio.proxy.bodies import limited_body, replay_body
from spooky_trio.proxy.connect import relay_connect
from spooky_trio.http.errors import ProxyError, ShedError, unwrap
from spooky_trio.proxy.answers import error_response_for, send_error
from spooky_trio.proxy.tunnel import relay_tunnel, wants_tunnel
from spooky_trio.resilience.hedge import HedgeRace, hedge_allowed
from spooky_trio.resilience.overload import OverloadGuard
from spooky_trio.resilience.policy import check_request
from spooky_trio.resilience.retry import IDEMPOTENT_METHODS, MAX_ATTEMPTS, REPLAY_BUFFER_BYTES, RetryBudget, retry_reason
from spooky_trio.core.generation import BackendRuntime, Generation, PoolRuntime
from spooky_trio.core.state import StateStore
from spooky_trio.upstream import UpstreamPool
from spooky_trio.upstream.errors import UpstreamError

log = logging.getLogger("spooky.proxy")

#: the pseudo pool CONNECT tunnels are admitted as (config pool names cannot start with "@")
CONNECT_POOL = "@connect"
route_log = logging.getLogger("spooky.routing")

_NO_BODY_STATUSES = frozenset({204, 304})


class ResponseTooLarge(Exception):
    """The backend's body passed ``max_response_body_bytes`` after headers were sent."""


class Proxy:
    """Serves requests against whatever generation ``current_generation()`` returns."""

    def __init__(
        self,
        current_generation: Callable[[], Generation],
        upstream: UpstreamPool,
        metrics: Metrics | None = None,
        state: StateStore | None = None,
    ) -> None:
        self._current_generation = current_generation
        self._upstream = upstream
        self._metrics = metrics
        #: the Server's store (overload state survives reloads there); private when None
        self._state = state if state is not None else StateStore()
        self._guard = OverloadGuard(self._state.resilience, metrics)

    async def handle(self, request: DownstreamRequest, sink: ResponseSink) -> None:
        """Serve one request to completion, counting it in the metrics and writing its
        access-log line (the one place for every protocol). Never raises for request or
        backend failures."""
        record = AccessRecord(request)
        if request.body is not None:
            request.body = CountingBody(request.body, record)
        status: int | None = None
        try:
            status = await self._handle(request, CountingSink(sink, record), record)
        finally:  # a request that raised or was cancelled counts as a failure
            if status is None:
                record.outcome = "reset"
            elif record.status is None:
                record.status = status  # a tunnel's 101/200 went through open_tunnel
            if self._metrics is not None:
                self._metrics.request_done(status)
            record.emit()

    async def _handle(self, request: DownstreamRequest, sink: ResponseSink, record: AccessRecord) -> int | None:
        """:meth:`handle`'s body; returns the status answered (None: stream reset)."""
        generation = self._current_generation()
        config = generation.config
        backend: BackendRuntime | None = None
        try:
            # resilience.protocol: methods, denied paths, 0-RTT, CONNECT (resilience/policy.py)
            connect_target = check_request(generation.config.resilience.protocol, request, self._metrics)
            if connect_target is not None:
                # a CONNECT tunnel holds an outbound socket for its life: it counts against the
                # global limit, brownout sheds it, and per_upstream_inflight_limit caps tunnels
                # as if they were one pool (CONNECT_POOL)
                record.outcome = "tunnel"
                tunnel_slots = await self._guard.admit(config, CONNECT_POOL, request.path)
                try:
                    await relay_connect(config.performance, connect_target, request, sink)
                finally:
                    self._guard.release(config, tunnel_slots)
                return 200
            pool_name, authority = self._route(generation, request, record)
            pool = generation.pools[pool_name]
            limit = config.performance.max_request_body_bytes
            if request.content_length is not None and request.content_length > limit:
                raise ProxyError(413, "request_body_too_large", f"request body exceeds {limit} bytes")
            guard = self._guard
            pool_slots = await guard.admit(config, pool_name, request.path)
            try:
                backend = await guard.choose(config, pool, request)
                record.backend = backend.id
                if wants_tunnel(request):  # WebSocket upgrade / extended CONNECT: see proxy/tunnel.py
                    record.outcome = "tunnel"
                    try:
                        await relay_tunnel(config.performance, pool.config, backend, request, authority.encode("latin-1"), sink)
                    finally:
                        guard.release_backend(backend)
                    return 200
                status = await self._forward(generation, pool, backend, request, authority, sink, record)
            finally:
                guard.release(config, pool_slots)
            record.outcome = "ok"
            return status
        except Exception as exc:
            record.outcome = "error"
            failure = unwrap(exc)
            error = error_response_for(failure)
            where = f"{backend.pool}/{backend.id}" if backend is not None else "-"
            if isinstance(failure, UpstreamError):
                log.warning("upstream %s failed for %s %s: %s: %s", where, request.method.decode(), request.path.decode("latin-1"), failure.reason, failure)
            elif error is None and not isinstance(failure, (RequestBodyError, ResponseTooLarge, trio.BrokenResourceError)):
                raise
            if sink.headers_sent or error is None:
                log.debug("resetting stream of %s %s: %r", request.method.decode(), request.path.decode("latin-1"), failure)
                sink.reset(error.reason if error else type(failure).__name__)
                return None
            if self._metrics is not None and isinstance(failure, (ProxyError, RequestBodyError)):
                self._metrics.request_rejected(error.status)  # ours (400/403/408/413/503...), not a backend's 502/504
            extra: Headers = []
            if isinstance(failure, ShedError):
                extra = [(b"retry-after", str(failure.retry_after).encode())]
            try:
                await send_error(sink, error, extra)
            except trio.BrokenResourceError:
                log.debug("client went away before the %d answer", error.status)
                return None
            return error.status

    def _route(self, generation: Generation, request: DownstreamRequest, record: AccessRecord) -> tuple[str, str]:
        """Validate the request's authority and pick its pool. Returns (pool name, authority).

        With ``observability.routing.enabled`` the decision is logged on ``spooky.routing``
        (with the tie-break reason when ``include_reason``) and, with ``expose_header``, sent
        back in ``header_name``."""
        protocol = generation.config.resilience.protocol
        authority = request.authority or request.host_header or b""
        if not authority:
            raise ProxyError(400, "missing_authority", "the request names no host")
        if (
            protocol.enforce_authority_host_match
            and request.authority
            and request.host_header is not None
            and host_without_port(request.authority) != host_without_port(request.host_header)
        ):
            raise ProxyError(400, "authority_host_mismatch", ":authority and Host name different hosts")
        path = request.path.split(b"?", 1)[0].decode("latin-1")
        host = host_without_port(authority).decode("latin-1")
        method = request.method.decode("latin-1").upper()
        decisions = generation.config.observability.routing
        if decisions.enabled:
            entry, reason = generation.routing.explain(host, path, method)
            self._log_decision(decisions, record, host, path, method, entry.pool if entry else None, reason)
        else:
            entry = generation.routing.match(host, path, method)
        if entry is None:
            raise ProxyError(404, "no_route", "no route matches this request")
        record.pool = entry.pool
        return entry.pool, authority.decode("latin-1")

    @staticmethod
    def _log_decision(decisions: Any, record: AccessRecord, host: str, path: str, method: str, pool: str | None, reason: str) -> None:
        """Log one route decision and queue its response header (``observability.routing``)."""
        if decisions.include_reason:
            route_log.info("route %s %s%s -> %s (%s)", method, host, path, pool or "none", reason)
        else:
            route_log.info("route %s %s%s -> %s", method, host, path, pool or "none")
        if decisions.expose_header:
            value = f"pool={pool or '-'}"
            if decisions.include_reason:
                value += f"; reason=\"{reason}\""
            record.extra_headers.append((decisions.header_name.lower().encode("latin-1"), value.encode("latin-1", "replace")))

    async def _forward(
        self,
        generation: Generation,
        pool: PoolRuntime,
        backend: BackendRuntime,
        request: DownstreamRequest,
        authority: str,
        sink: ResponseSink,
        record: AccessRecord,
    ) -> int:
        """Forward to ``backend`` (whose slot the caller took; every attempt hands its own
        back) and relay the answer; returns the backend's status. Retries a failed attempt
        on another backend when that is safe and the retry budget allows, and hedges
        eligible requests (``resilience/retry.py``, ``resilience/hedge.py``)."""
        config = generation.config
        res = config.resilience
        rb = res.retry_budget
        budget: RetryBudget | None = None
        ratio = 0
        chunks: list[bytes] | None = None
        # a request that may have reached the backend is only sent again when its method is
        # idempotent (RFC 9110 9.2.2) and its body, if any, is buffered below; connect
        # failures (never reached) are retried for any method (retry_reason)
        replayable = request.body is None and request.method in IDEMPOTENT_METHODS
        try:
            if rb.enabled:
                budget, ratio = self._state.resilience.budgets.for_path(request.path, rb)
                budget.deposit(ratio)
                if (
                    not replayable
                    and request.content_length is not None
                    and request.content_length <= REPLAY_BUFFER_BYTES
                    and request.method in IDEMPOTENT_METHODS
                ):
                    chunks = await self._buffer_body(config.performance, request)
                    replayable = True
            hedging = res.hedging
            hedge = hedging.enabled and request.body is None and len(pool.backends) > 1 and hedge_allowed(request.method, pool.name, request.path, hedging)
        except BaseException:
            self._guard.release_backend(backend)
            raise
        tried: list[BackendRuntime] | None = None
        while True:
            try:
                if hedge:
                    tried = tried or [backend]
                    return await self._hedged(generation, pool, backend, request, authority, sink, tried, record)
                return await self._attempt(generation, pool, backend, request, authority, sink, chunks)
            except Exception as exc:
                if budget is None or sink.headers_sent:
                    raise
                tried = tried or [backend]
                retry = self._retry_backend(config, pool, request, unwrap(exc), replayable, tried, budget, ratio)
                if retry is None:
                    raise
                log.info("retrying %s %s on %s/%s after %s", request.method.decode(), request.path.decode("latin-1"), retry.pool, retry.id, unwrap(exc))
                backend = retry
                record.backend = retry.id
                tried.append(retry)

    def _retry_backend(
        self, config: Any, pool: PoolRuntime, request: DownstreamRequest, failure: BaseException, replayable: bool,
        tried: list[BackendRuntime], budget: RetryBudget, ratio: int,
    ) -> BackendRuntime | None:
        """The backend (its slot taken) to retry on after ``failure``, or None (denial counted)."""
        reason, denial = retry_reason(failure, replayable=replayable)
        if reason is not None:
            if len(tried) >= MAX_ATTEMPTS:
                denial = "attempts"
            else:
                retry, _why = self._guard.pick(config, pool, request, tried)
                if retry is None:
                    denial = "no_backend"
                elif not budget.try_withdraw(ratio):
                    denial = "budget"
                else:
                    retry.state.slots.held += 1
                    if self._metrics is not None:
                        self._metrics.retry(reason)
                    return retry
        if denial is not None and self._metrics is not None:
            self._metrics.retry_denial(denial)
        return None

    async def _buffer_body(self, perf: Any, request: DownstreamRequest) -> list[bytes]:
        """Read a small declared-length request body into memory so attempts can replay it."""
        assert request.body is not None
        body = limited_body(request.body, limit=perf.max_request_body_bytes, declared=request.content_length,
                             idle_timeout=perf.client_body_idle_timeout_ms / 1000)
        return [chunk async for chunk in body]

    async def _hedged(
        self, generation: Generation, pool: PoolRuntime, backend: BackendRuntime, request: DownstreamRequest, authority: str,
        sink: ResponseSink, tried: list[BackendRuntime], record: AccessRecord,
    ) -> int:
        """The primary attempt on ``backend`` and, if no response head came within
        ``hedging.delay_ms``, a hedge on another backend; the first head wins and the other
        attempt is cancelled through its cancel scope. Raises the primary's failure when
        every attempt failed."""
        config = generation.config
        race = HedgeRace()
        statuses: list[int] = []
        primary_at = len(tried) - 1  # ``backend`` is the last one tried; a hedge is appended after it

        async def run(index: int, target: BackendRuntime) -> None:
            with trio.CancelScope() as scope:
                race.start(index, scope)
                try:
                    status = await self._attempt(generation, pool, target, request, authority, sink, None, race, index)
                except Exception as exc:
                    race.failed(index, exc)
                    return
                if status is not None:
                    statuses.append(status)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, 0, backend)
            with trio.move_on_after(config.resilience.hedging.delay_ms / 1000):
                await race.settled.wait()
            if not race.settled.is_set():
                hedge, _why = self._guard.pick(config, pool, request, tried)
                if hedge is not None:
                    hedge.state.slots.held += 1
                    tried.append(hedge)
                    if self._metrics is not None:
                        self._metrics.hedge("triggered")
                    log.debug("hedging %s %s on %s/%s", request.method.decode(), request.path.decode("latin-1"), hedge.pool, hedge.id)
                    nursery.start_soon(run, 1, hedge)
        hedged = len(race.scopes) > 1
        if hedged and self._metrics is not None:
            if race.winner == 1:
                self._metrics.hedge("won")
            else:
                self._metrics.hedge("wasted")
                if race.winner == 0:
                    self._metrics.hedge("primary_won")
        if race.winner is not None:
            record.backend = tried[primary_at + race.winner].id
            if race.winner in race.errors:
                raise race.errors[race.winner]
            return statuses[0]
        raise race.errors.get(0) or next(iter(race.errors.values()))

    async def _attempt(
        self,
        generation: Generation,
        pool: PoolRuntime,
        backend: BackendRuntime,
        request: DownstreamRequest,
        authority: str,
        sink: ResponseSink,
        chunks: list[bytes] | None,
        race: HedgeRace | None = None,
        index: int = 0,
    ) -> int | None:
        """One exchange with ``backend``; hands the backend's slot back when it ends.
        Returns the status relayed, or None when a hedge race was already won by another."""
        config = generation.config
        perf = config.performance
        breaker_on = config.resilience.circuit_breaker.enabled
        probe = backend.state.breaker.begin() if breaker_on else False
        failed: bool | None = None
        status: int | None = None
        latency_ms: float | None = None
        try:
            upstream_request = self._upstream_request(generation, pool.config, backend, request, authority.encode("latin-1"), chunks)
            # observe() counts the exchange in flight and turns its outcome into passive health;
            # it wraps the total deadline so that a TooSlowError counts as a backend timeout
            with backend.state.observe() as observation:
                # trio.fail_after without its generator context manager (once per request)
                total_scope = trio.CancelScope(deadline=trio.current_time() + perf.backend_total_request_timeout_ms / 1000)
                with total_scope:
                    async with self._upstream.exchange(
                        backend.connect_target,
                        upstream_request,
                        connect_timeout=perf.backend_connect_timeout_ms / 1000,
                        response_timeout=perf.backend_timeout_ms / 1000,
                    ) as response:
                        status = response.status
                        latency_ms = (trio.current_time() - observation.started) * 1000
                        observation.response_started(response.status)
                        self._guard.latency_sample(config, latency_ms)
                        if race is not None and not race.claim(index):
                            return None
                        await self._relay_response(perf, request, response, sink)
                if total_scope.cancelled_caught:
                    raise trio.TooSlowError
        except BaseException as exc:
            reason = failure_reason(exc)
            failed = True if reason is not None else None if status is None else status >= 500
            if self._metrics is not None and (reason is not None or status is not None):
                self._metrics.backend_exchange(backend.pool, backend.id, status, reason, latency_ms)
            raise
        else:
            failed = status is not None and status >= 500
        finally:  # a lost hedge race or a cancelled attempt leaves ``failed`` None: no verdict
            self._guard.release_backend(backend)
            if breaker_on:
                self._guard.breaker_outcome(config, backend, probe, failed)
        if self._metrics is not None:
            self._metrics.backend_exchange(backend.pool, backend.id, status, None, latency_ms)
        return status

    def _upstream_request(
        self, generation: Generation, pool: Any, backend: BackendRuntime, request: DownstreamRequest, authority: bytes, chunks: list[bytes] | None = None
    ) -> UpstreamRequest:
        perf = generation.config.performance
        headers = build_upstream_headers(
            request.headers,
            forwarded_mode=pool.forwarded_headers.mode,
            client_ip=request.client_address[0],
            scheme=request.scheme or b"https",
            client_authority=authority,
        )
        headers = [(n, v) for n, v in headers if n != b"content-length"]
        body = None
        if chunks is not None:
            body = replay_body(chunks)
        elif request.body is not None:
            body = limited_body(
                request.body,
                limit=perf.max_request_body_bytes,
                declared=request.content_length,
                idle_timeout=perf.client_body_idle_timeout_ms / 1000,
            )
        return UpstreamRequest(
            method=request.method,
            target=request.path,
            authority=upstream_authority(
                pool.host_policy.mode,
                client_authority=authority,
                rewrite_host=pool.host_policy.host,
                backend_authority=backend.authority,
            ),
            headers=headers,
            body=body,
            content_length=request.content_length if body is not None else None,
            scheme=backend.target.scheme.encode("ascii"),
        )

    async def _relay_response(self, perf: Any, request: DownstreamRequest, response: Any, sink: ResponseSink) -> None:
        limit = perf.max_response_body_bytes
        headers = strip_response_hop_by_hop(response.headers)
        declared = next((v for n, v in headers if n == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ProxyError(503, "response_body_too_large", f"the backend's response exceeds {limit} bytes")
        if request.method == b"HEAD" or response.status in _NO_BODY_STATUSES:
            await sink.send_headers(response.status, headers, end_stream=True)
            return
        await sink.send_headers(response.status, headers)
        total = 0
        timeout = perf.backend_body_total_timeout_ms / 1000
        idle = perf.backend_body_idle_timeout_ms / 1000
        length = int(declared) if declared is not None and declared.isdigit() else None
        # the chunk that completes a declared length is held back so it can carry the end of
        # the stream: one DATA frame with FIN instead of a second, empty one
        last = b""
        while True:
            # data the engine already holds needs no timer (a tiny response's whole body)
            chunk = response.receive_nowait()
            if chunk is None:
                with trio.move_on_after(timeout) as scope:
                    chunk = await response.receive()
                if scope.cancelled_caught:
                    raise UpstreamError("backend response body stalled", reason="body_timeout")
            timeout = idle
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise ResponseTooLarge(f"backend response body exceeds {limit} bytes")
            if total == length:
                last = chunk
                continue
            await sink.send_data(chunk)
        if response.trailers:
            if last:
                await sink.send_data(last)
            await sink.send_trailers(response.trailers)
        else:
            await sink.send_data(last, end_stream=True)
