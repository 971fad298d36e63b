"""The shared store of ``store: redis`` rules: token buckets in Redis, exact across proxies.

:class:`RedisStore` owns one coredis client (a multiplexed, pooled connection; coredis runs
on Trio through anyio). Its task (:meth:`RedisStore.run`) lives in the nursery of
:class:`~spooky_trio.resilience.ratelimit_stores.RedisStores`, which the Server starts in its
task tree; it holds the client, sends the checks, and probes Redis while it is down.

Checks are batched: each request's check joins a queue and the store's sender task decides
everything queued in one call of the server-side script (``ratelimit_script.py``: atomic,
on the Redis server's clock). A lone request costs one round trip as before; under load the
client's cost per call (a few hundred Python calls in coredis and anyio) is shared by every
check of the batch, and a check waits at most for the call in flight plus its own.

The request path only ever waits for its check under the generation's ``timeout_ms``:
queueing, connecting, the script, loading it again after a Redis restart (``NOSCRIPT``) and
one retry on a broken connection all fit in that one deadline, after which the caller
applies ``failure_mode``.

A circuit breaker keeps an outage from costing ``timeout_ms`` on every request: after
:data:`TRIP_AFTER` consecutive failed checks the store is *down* and checks fail at once;
the store's task then probes Redis (``PING``, then loading the script) with a backoff from
:data:`PROBE_BACKOFF` to :data:`PROBE_BACKOFF_MAX` and marks it *up* again when a probe
succeeds. Each transition is logged once. A store starts *down* and its first probe runs
before the Server reports started (bounded by :data:`PROBE_TIMEOUT`).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import attrs
import trio

from spooky_trio.config import RateLimitStoreConfig
from spooky_trio.config.validate_ratelimit import RedisUrl, parse_redis_url, read_password_file, tls_context
from spooky_trio.http.errors import unwrap
from spooky_trio.resilience.ratelimit_script import SCRIPT, SCRIPT_SHA, script_arguments, split_reply

if TYPE_CHECKING:  # imported when a store first runs: coredis and anyio cost ~14 MB of RSS
    import coredis

log = logging.getLogger("spooky.ratelimit")

#: consecutive failed checks that mark the store down
TRIP_AFTER = 3
#: first delay between probes of a store that is down (seconds); doubles up to the max
PROBE_BACKOFF = 0.1
PROBE_BACKOFF_MAX = 2.0
#: deadline of one probe (connect, PING, SCRIPT LOAD), seconds
PROBE_TIMEOUT = 1.0
#: checks one script call decides at most (the rest wait for the next call)
BATCH_MAX = 256

UP = "up"
DOWN = "down"


class StoreUnavailable(Exception):
    """The store could not decide within the deadline, or it is down; the caller applies
    ``failure_mode``. ``reason``: ``down``, ``timeout`` or ``error``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StoreMetrics(Protocol):
    """What the store reports (``observability/metrics.py`` implements it)."""

    def rate_limit_store_check(self, latency_ms: float | None, error: str | None) -> None:
        """One check ended: its latency, or the error kind (``timeout``, ``error``)."""
        ...


@attrs.frozen
class StoreSettings:
    """Where a store connects: the parsed URL, the password (from the URL or the file),
    the TLS context of ``rediss://``. Equal settings share one store (and connection)."""

    url: RedisUrl
    password: str | None = attrs.field(repr=False)
    ca_file: str | None
    tls: ssl.SSLContext | None = attrs.field(eq=False, repr=False)

    @classmethod
    def from_config(cls, config: RateLimitStoreConfig) -> StoreSettings:
        """The settings of a validated ``rate_limit_store`` (reads ``password_file``)."""
        assert config.url is not None
        url = parse_redis_url(config.url)
        password = url.password
        if config.password_file is not None:
            password = read_password_file(config.password_file)
        return cls(url, password, config.ca_file, tls_context(config.ca_file) if url.tls else None)


class _Check:
    """One request's check waiting in the batch queue."""

    __slots__ = ("keys", "args", "deadline", "done", "result", "error", "abandoned")

    def __init__(self, keys: Sequence[bytes], args: Sequence[float], deadline: float) -> None:
        self.keys = keys
        self.args = args
        self.deadline = deadline
        self.done = trio.Event()
        self.result: list[int] | None = None
        self.error: str | None = None
        #: the request gave up waiting: not sent if still queued
        self.abandoned = False

    def finish(self, result: list[int] | None, error: str | None) -> None:
        self.result, self.error = result, error
        self.done.set()


class RedisStore:
    """One Redis server's buckets (module docstring)."""

    def __init__(self, settings: StoreSettings, metrics: StoreMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.state = DOWN
        #: consecutive failed checks while up
        self.failures = 0
        #: how many times the store went down (``/admin/runtime``)
        self.outages = 0
        #: the last failure, for the log and ``/admin/runtime``
        self.last_error: str | None = None
        self._client: coredis.Redis[bytes] | None = None
        #: set to wake :meth:`run` when checks mark the store down
        self._wake: trio.Event | None = None
        self._scope: trio.CancelScope | None = None
        #: checks waiting for the sender task, and the event that wakes it (None: not running)
        self._queue: list[_Check] = []
        self._queued: trio.Event | None = None

    @property
    def name(self) -> str:
        return self.settings.url.redacted()

    # -- the store's task --

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the client, send the queued checks, and probe Redis while it is down;
        ``started`` after the first probe. Runs until cancelled (:meth:`stop`); a failure
        of the client itself (a bug, an unexpected error of coredis) is logged and the
        client made anew, never raised into the server's task tree."""
        started = False

        def ready() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        with trio.CancelScope() as scope:
            self._scope = scope
            try:
                while True:
                    try:
                        await self._serve(ready)
                    except Exception as exc:  # noqa: BLE001 - the store must never take the server down
                        log.exception("rate-limit store %s: its client failed; starting a new one", self.name)
                        self.last_error = _describe(exc)
                        self._mark(DOWN, self.last_error)
                    ready()
                    await trio.sleep(PROBE_BACKOFF_MAX)
            finally:
                self._scope = None

    async def _serve(self, ready: Callable[[], None]) -> None:
        """One client's life: the sender task, the first probe, then :meth:`_watch`."""
        import coredis
        from coredis.retry import NoRetryPolicy

        # coredis logs a traceback for every failed connection attempt; the store logs each
        # transition once itself (a Redis outage must not flood the log while it is probed)
        logging.getLogger("coredis").setLevel(logging.CRITICAL)
        url = self.settings.url
        client: coredis.Redis[bytes] = coredis.Redis(
            url.host, url.port, url.db, username=url.username, password=self.settings.password,
            ssl_context=self.settings.tls, connect_timeout=PROBE_TIMEOUT, stream_timeout=None,
            retry_policy=NoRetryPolicy(), client_name="spooky-trio", decode_responses=False,
        )
        try:
            async with client, trio.open_nursery() as nursery:
                self._client = client
                self._queued = trio.Event()
                nursery.start_soon(self._send, client, name=f"rate-limit store {self.name}: checks")
                if not await self._probe(client):
                    log.warning("rate-limit store %s is unavailable (%s): failure_mode applies until it answers",
                                self.name, self.last_error)
                ready()
                await self._watch(client)
        finally:
            self._client = self._wake = self._queued = None
            self.state = DOWN
            for check in self._queue:
                check.finish(None, "store stopped")
            self._queue = []

    def stop(self) -> None:
        """Cancel :meth:`run` (no live generation uses this store any more)."""
        if self._scope is not None:
            self._scope.cancel()

    async def _watch(self, client: coredis.Redis[bytes]) -> None:
        """While up, wait to be marked down; while down, probe with a growing delay."""
        delay = PROBE_BACKOFF
        while True:
            if self.state is UP:
                wake = self._wake = trio.Event()
                await wake.wait()  # set when checks mark the store down
                delay = PROBE_BACKOFF
            await trio.sleep(delay)
            delay = min(delay * 2, PROBE_BACKOFF_MAX)
            await self._probe(client)

    async def _probe(self, client: coredis.Redis[bytes]) -> bool:
        """Ask Redis for PING and to load the script; marks the store up when both work."""
        error = "timeout"
        with trio.move_on_after(PROBE_TIMEOUT):
            try:
                await client.ping()
                await client.script_load(SCRIPT)
            except Exception as exc:  # noqa: BLE001 - any failure of the outside world is a failed probe
                error = _describe(exc)
            else:
                self._mark(UP, None)
                return True
        self.last_error = error
        client.connection_pool.disconnect()  # a dead connection must not hold the next probe
        return False

    def _mark(self, state: str, error: str | None) -> None:
        """Go ``up`` or ``down`` (logged once per transition)."""
        if state == self.state:
            return
        self.state = state
        self.failures = 0
        if state == UP:
            log.info("rate-limit store %s is available: shared limits apply again", self.name)
            return
        self.outages += 1
        log.warning("rate-limit store %s is down (%s): failure_mode applies while it is probed", self.name, error)
        if self._wake is not None:
            self._wake.set()

    # -- the request path --

    async def check(self, keys: Sequence[bytes], args: Sequence[float], timeout: float) -> list[int]:
        """Take a token from each bucket of ``keys`` in order (``args``: rate, burst and
        idle ttl in ms per key); returns their balances in thousandths of a token, up to
        and including the first negative (rejected) one. Raises :class:`StoreUnavailable`
        when the store is down or does not answer within ``timeout`` seconds."""
        queued = self._queued
        if queued is None or self.state is not UP:
            raise StoreUnavailable("down")
        start = trio.current_time()
        check = _Check(keys, args, start + timeout)
        self._queue.append(check)
        queued.set()
        with trio.move_on_after(timeout):
            await check.done.wait()
        metrics = self.metrics
        if check.result is not None:
            self.failures = 0
            if metrics is not None:
                metrics.rate_limit_store_check((trio.current_time() - start) * 1000, None)
            return check.result
        check.abandoned = True
        if check.error is None:
            self.last_error, kind = f"no answer within {timeout * 1000:g} ms", "timeout"
        else:
            self.last_error, kind = check.error, "error"
        if metrics is not None:
            metrics.rate_limit_store_check(None, kind)
        self.failures += 1
        if self.failures >= TRIP_AFTER:
            self._mark(DOWN, self.last_error)
        raise StoreUnavailable(kind)

    async def _send(self, client: coredis.Redis[bytes]) -> None:
        """The sender task: everything queued since the last call, in one script call
        bounded by the latest deadline among its checks."""
        while True:
            queued = self._queued
            assert queued is not None
            await queued.wait()
            self._queued = trio.Event()
            batch = [check for check in self._queue[:BATCH_MAX] if not check.abandoned]
            del self._queue[:BATCH_MAX]
            if self._queue:
                self._queued.set()
            if not batch:
                continue
            keys, argv = script_arguments([(check.keys, check.args) for check in batch])
            error = "timeout"
            with trio.move_on_at(max(check.deadline for check in batch)):
                try:
                    results = split_reply(await self._eval(client, keys, argv), len(batch))
                except Exception as exc:  # noqa: BLE001 - any failure of the outside world fails the checks
                    error = _describe(exc)
                else:
                    for check, result in zip(batch, results):
                        check.finish(result, None)
                    continue
            for check in batch:
                check.finish(None, None if error == "timeout" else error)

    async def _eval(self, client: coredis.Redis[bytes], keys: Sequence[bytes], argv: Sequence[float]) -> object:
        """The script by its SHA; its text when Redis lost it (restart, SCRIPT FLUSH); one
        retry when the pooled connection broke."""
        from coredis.exceptions import ConnectionError as RedisConnectionError, NoScriptError

        for attempt in (1, 2):
            try:
                try:
                    return await client.evalsha(SCRIPT_SHA, keys, argv)
                except NoScriptError:
                    return await client.eval(SCRIPT, keys, argv)
            except RedisConnectionError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def snapshot(self) -> dict[str, object]:
        """For ``/admin/runtime`` (no credentials)."""
        return {"url": self.name, "state": self.state, "consecutive_failures": self.failures,
                "outages": self.outages, "last_error": self.last_error}


def _describe(exc: BaseException) -> str:
    """``Type: message``, with the innermost cause (coredis wraps the reason a connection
    failed, e.g. a certificate that does not verify, in a generic ConnectionError)."""
    exc = unwrap(exc)
    text = f"{type(exc).__name__}: {str(exc).strip()}".rstrip(": ")
    cause = exc.__cause__ or exc.__context__
    for _ in range(5):
        while isinstance(cause, BaseExceptionGroup) and cause.exceptions:
            cause = cause.exceptions[0]
        if cause is None or (cause.__cause__ or cause.__context__) is None:
            break
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        text += f" ({type(cause).__name__}: {str(cause).strip()})"
    return text[:300]
