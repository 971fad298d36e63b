"""The shared store of ``store: redis`` rules: token buckets in Redis, exact across proxies.

One check is one atomic server-side script (:data:`SCRIPT`): it reads the Redis server's
clock (``TIME``), so every proxy sees the same time, and takes a token from each bucket
given, in rule order, stopping at the first that is empty. Buckets are Redis hashes
``{key_prefix}{rule name}:{key}`` that expire once they would be full again or after
``idle_ttl_secs`` without use, whichever comes first (so Redis holds only buckets that
matter).

:class:`RedisStore` owns one coredis client (a multiplexed, pooled connection; coredis
runs on Trio through anyio). Its task (:meth:`RedisStore.run`) lives in the nursery of
:class:`RedisStores`, which the Server starts in its task tree. The request path only ever
calls :meth:`RedisStore.check` under the generation's ``timeout_ms``: connecting, the
script, a reload of the script after a Redis restart (``NOSCRIPT``) and one retry on a
broken connection all fit in that one deadline, after which the caller applies
``failure_mode``.

A circuit breaker keeps an outage from costing ``timeout_ms`` on every request: after
:data:`TRIP_AFTER` consecutive failed checks the store is *down* and checks fail at once;
the store's task then probes Redis (``PING``, then loading the script) with a backoff from
:data:`PROBE_BACKOFF` to :data:`PROBE_BACKOFF_MAX` and marks it *up* again when a probe
succeeds. Each transition is logged once. A store starts *down* and its first probe runs
before the Server reports started (bounded by :data:`PROBE_TIMEOUT`).
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from collections.abc import Callable, Sequence
from typing import Protocol

import attrs
import coredis
import trio
from coredis.exceptions import NoScriptError
from coredis.retry import NoRetryPolicy

from spooky_trio.config import RateLimitStoreConfig
from spooky_trio.config.validate_ratelimit import RedisUrl, parse_redis_url, read_password_file, tls_context

log = logging.getLogger("spooky.ratelimit")
# coredis logs a traceback for every failed connection attempt; the store logs each
# transition once itself (a Redis outage must not flood the log while it is probed)
logging.getLogger("coredis").setLevel(logging.CRITICAL)

#: consecutive failed checks that mark the store down
TRIP_AFTER = 3
#: first delay between probes of a store that is down (seconds); doubles up to the max
PROBE_BACKOFF = 0.1
PROBE_BACKOFF_MAX = 2.0
#: deadline of one probe (connect, PING, SCRIPT LOAD), seconds
PROBE_TIMEOUT = 1.0

UP = "up"
DOWN = "down"

#: KEYS: one bucket per rule, in rule order. ARGV: per key: rate (tokens/s), burst, idle ttl
#: (ms). Returns each examined bucket's balance in thousandths of a token (tokens left after
#: the take; negative: rejected, nothing taken), stopping at the first rejection.
SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local out = {}
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[3 * i - 2])
  local burst = tonumber(ARGV[3 * i - 1])
  local idle_ms = tonumber(ARGV[3 * i])
  local state = redis.call('HMGET', key, 't', 'ts')
  local tokens = tonumber(state[1])
  local last = tonumber(state[2])
  if tokens == nil or last == nil then
    tokens = burst
  elseif now > last then
    tokens = math.min(burst, tokens + (now - last) * rate / 1000000)
  end
  local balance = tokens - 1
  if balance >= 0 then tokens = balance end
  local ttl = math.ceil((burst - tokens) * 1000 / rate)
  if ttl > idle_ms then ttl = idle_ms end
  if ttl < 1 then ttl = 1 end
  redis.call('HSET', key, 't', string.format('%.17g', tokens), 'ts', string.format('%.17g', now))
  redis.call('PEXPIRE', key, ttl)
  out[i] = math.floor(balance * 1000)
  if balance < 0 then break end
end
return out
"""
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()


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


class RedisStore:
    """One Redis server's buckets (module docstring); ``clock`` gives seconds (tests inject one)."""

    def __init__(self, settings: StoreSettings, metrics: StoreMetrics | None = None,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
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

    @property
    def name(self) -> str:
        return self.settings.url.redacted()

    # -- the store's task --

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the client and probe Redis while it is down; ``started`` after the first
        probe. Runs until cancelled (:meth:`stop`)."""
        url = self.settings.url
        client: coredis.Redis[bytes] = coredis.Redis(
            url.host, url.port, url.db, username=url.username, password=self.settings.password,
            ssl_context=self.settings.tls, connect_timeout=PROBE_TIMEOUT, stream_timeout=None,
            retry_policy=NoRetryPolicy(), client_name="spooky-trio", decode_responses=False,
        )
        with trio.CancelScope() as scope:
            self._scope = scope
            try:
                async with client:
                    self._client = client
                    if not await self._probe(client):
                        log.warning("rate-limit store %s is unavailable (%s): failure_mode applies until it answers",
                                    self.name, self.last_error)
                    task_status.started()
                    delay = PROBE_BACKOFF
                    while True:
                        if self.state is UP:
                            wake = self._wake = trio.Event()
                            await wake.wait()  # set when checks mark the store down
                            delay = PROBE_BACKOFF
                        await trio.sleep(delay)
                        delay = min(delay * 2, PROBE_BACKOFF_MAX)
                        await self._probe(client)
            finally:
                self._client = self._wake = self._scope = None
                self.state = DOWN

    def stop(self) -> None:
        """Cancel :meth:`run` (no live generation uses this store any more)."""
        if self._scope is not None:
            self._scope.cancel()

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
        client = self._client
        if client is None or self.state is not UP:
            raise StoreUnavailable("down")
        metrics = self.metrics
        start = self.clock()
        error = "timeout"
        with trio.move_on_after(timeout):
            try:
                reply = await self._eval(client, keys, args)
            except Exception as exc:  # noqa: BLE001 - any failure of the outside world is a failed check
                error = "error"
                self.last_error = _describe(exc)
            else:
                self.failures = 0
                if metrics is not None:
                    metrics.rate_limit_store_check((self.clock() - start) * 1000, None)
                return reply
        if error == "timeout":
            self.last_error = f"no answer within {timeout * 1000:g} ms"
        if metrics is not None:
            metrics.rate_limit_store_check(None, error)
        self.failures += 1
        if self.failures >= TRIP_AFTER:
            self._mark(DOWN, self.last_error)
        raise StoreUnavailable(error)

    async def _eval(self, client: coredis.Redis[bytes], keys: Sequence[bytes], args: Sequence[float]) -> list[int]:
        """The script by its SHA; its text when Redis lost it (restart, SCRIPT FLUSH); one
        retry when the pooled connection broke (the deadline of :meth:`check` bounds all)."""
        for attempt in (1, 2):
            try:
                try:
                    reply = await client.evalsha(SCRIPT_SHA, keys, args)
                except NoScriptError:
                    reply = await client.eval(SCRIPT, keys, args)
            except coredis.exceptions.ConnectionError:
                if attempt == 2:
                    raise
                continue
            if not isinstance(reply, list) or not all(isinstance(v, int) for v in reply):
                raise ValueError(f"unexpected script reply {reply!r:.80}")
            return [int(v) for v in reply if isinstance(v, int)]
        raise AssertionError("unreachable")

    def snapshot(self) -> dict[str, object]:
        """For ``/admin/runtime`` (no credentials)."""
        return {"url": self.name, "state": self.state, "consecutive_failures": self.failures,
                "outages": self.outages, "last_error": self.last_error}


def _describe(exc: BaseException) -> str:
    """``Type: message``, with the innermost cause (coredis wraps the reason a connection
    failed, e.g. a certificate that does not verify, in a generic ConnectionError)."""
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


class RedisStores:
    """The stores the live generations use, by settings; each runs in a task of this
    registry's nursery (``rate-limit-stores`` in the Server's task tree)."""

    def __init__(self) -> None:
        self._stores: dict[StoreSettings, RedisStore] = {}
        self._running: set[RedisStore] = set()
        self._nursery: trio.Nursery | None = None

    def store(self, config: RateLimitStoreConfig, metrics: StoreMetrics | None = None) -> RedisStore:
        """The store of ``config`` (one per distinct settings; created stopped)."""
        settings = StoreSettings.from_config(config)
        store = self._stores.get(settings)
        if store is None:
            store = self._stores[settings] = RedisStore(settings, metrics)
        return store

    def running(self) -> list[RedisStore]:
        """The stores whose task runs (those of the live generations)."""
        return list(self._running)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The nursery the stores' tasks run in; until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    async def follow(self, used: Sequence[RedisStore]) -> None:
        """Run exactly the stores in ``used`` (those of the live generations): start the
        missing ones (each after its first probe), stop the others."""
        wanted = set(used)
        for store in list(self._running - wanted):
            store.stop()
            self._running.discard(store)
        nursery = self._nursery
        if nursery is None:
            return
        for store in used:
            if store not in self._running:
                self._running.add(store)
                await nursery.start(self._run_one, store, name=f"rate-limit store {store.name}")

    async def _run_one(self, store: RedisStore, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await store.run(task_status=task_status)
        finally:
            self._running.discard(store)
