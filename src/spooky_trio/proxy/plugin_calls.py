"""The boundary between the proxy and a plugin's code: every call of a hook goes through
:meth:`PluginRuntime.call`, which gives it its deadline, times it, and turns whatever goes
wrong into the one answer a broken plugin gets (docs/plugins.md).

* **Deadline**: each call runs in a cancel scope of ``plugin_timeout_ms``. Trio cancels at
  the hook's next checkpoint; a hook that returns after its deadline without having been
  cancelled (it never yielded) is late all the same. Both answer 500 ``plugin_timeout:<name>``.
* **Exceptions**: anything the hook raises (``SystemExit`` and ``KeyboardInterrupt`` too) is
  caught here: 500 ``plugin_error:<name>``. Only a cancellation from outside (the request
  or the server ending) passes through, as it must.
* **Garbage**: a return value the contract does not allow: 500 ``plugin_invalid:<name>``.
* **A blocked event loop**: in one process nothing can interrupt a hook that computes or
  makes a synchronous call. So it is measured instead: the hook's coroutine is driven step
  by step (:class:`_Timed`: every ``send`` into it is one stretch of the plugin's code
  between two checkpoints), and a step of :data:`STALL_SECONDS` or more is logged (at most
  every 10 s per plugin) and counted in ``spooky_plugin_event_loop_stalls_total{plugin}``:
  during that step no other request of the process moved.

Failures are logged with the plugin's name at most every 10 s per plugin (the traceback of
the first one; the count of the others), and each is counted in
``spooky_plugin_errors_total{plugin,kind}``; every request's own line is in the access log.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, Generator
from time import perf_counter
from types import CoroutineType
from typing import TYPE_CHECKING

import trio

from spooky_trio.config.plugins import FilterHooks
from spooky_trio.http.errors import ProxyError
from spooky_trio.plugin import Request, Response, ResponseHead
from spooky_trio.proxy.answers import Answer

if TYPE_CHECKING:
    from spooky_trio.observability.metrics import Metrics

log = logging.getLogger("spooky.plugins")

#: a step of a hook this long (without yielding) is reported: every request waited for it
STALL_SECONDS = 0.05
#: failures and stalls of one plugin are logged at most this often (seconds)
LOG_EVERY = 10.0

EXCEPTION, TIMEOUT, INVALID, BACKGROUND = "exception", "timeout", "invalid", "background"


def carries_cancellation(exc: BaseException) -> bool:
    """True when ``exc`` is (or holds) a Trio cancellation, which must keep propagating."""
    if isinstance(exc, trio.Cancelled):
        return True
    return isinstance(exc, BaseExceptionGroup) and exc.subgroup(trio.Cancelled) is not None


class _Timed:
    """Awaits the rest of a coroutine whose first step already ran (it yielded ``pending``),
    timing each further step (module docstring): ``longest`` is the longest stretch, in
    seconds, that the coroutine ran without yielding to Trio, the first step included."""

    __slots__ = ("_coro", "_pending", "longest", "_report")

    def __init__(self, coro: Coroutine[object, object, object], pending: object, first: float,
                 report: Callable[[float], None] | None = None) -> None:
        self._coro = coro
        self._pending = pending
        self.longest = first
        #: called with each step of :data:`STALL_SECONDS` or more as it happens (a background
        #: task, which never ends, is reported step by step; a hook once, when it is done)
        self._report = report

    def __await__(self) -> Generator[object, object, object]:
        coro = self._coro
        yielded, self._pending = self._pending, None
        while True:
            error: BaseException | None = None
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # thrown into us (a cancellation): hand it to the plugin's coroutine
                sent, error = None, exc
            start = perf_counter()
            try:
                yielded = coro.send(sent) if error is None else coro.throw(error)
            except StopIteration as done:
                self._took(perf_counter() - start)
                return done.value
            except BaseException:
                self._took(perf_counter() - start)
                raise
            self._took(perf_counter() - start)

    def _took(self, seconds: float) -> None:
        if seconds > self.longest:
            self.longest = seconds
        if seconds >= STALL_SECONDS and self._report is not None:
            self._report(seconds)


class _Throttle:
    """At most one log line per :data:`LOG_EVERY`, and the count of the ones held back."""

    __slots__ = ("_at", "_held")

    def __init__(self) -> None:
        self._at = -LOG_EVERY
        self._held = 0

    def due(self) -> str | None:
        """None when a line is not due; else the note on the lines held back ("" for none)."""
        now = trio.current_time()
        if now - self._at < LOG_EVERY:
            self._held += 1
            return None
        note = f" ({self._held} more since the last report)" if self._held else ""
        self._at, self._held = now, 0
        return note


class PluginRuntime:
    """One ``plugins`` entry's filter in one generation: its hooks, its deadline, and what
    its failures become (module docstring)."""

    __slots__ = ("name", "instance", "on_request", "on_response", "background", "body_limit", "timeout", "metrics",
                 "answer_reason", "_reasons", "_failures", "_stalls")

    def __init__(self, name: str, instance: object, hooks: FilterHooks, timeout: float, metrics: Metrics | None) -> None:
        self.name = name
        self.instance = instance
        self.on_request = hooks.on_request
        self.on_response = hooks.on_response
        self.background = hooks.background
        self.body_limit = hooks.body_limit
        #: ``plugin_timeout_ms`` in seconds
        self.timeout = timeout
        self.metrics = metrics
        #: the access log's reason of the plugin's own answers (``:<its reason>`` appended)
        self.answer_reason = f"plugin:{name}"
        self._reasons = {kind: f"plugin_{'error' if kind == EXCEPTION else kind}:{name}" for kind in (EXCEPTION, TIMEOUT, INVALID)}
        self._failures = _Throttle()
        self._stalls = _Throttle()

    async def request_hook(self, request: Request) -> object:
        """The plugin's ``on_request(request)`` (module docstring): what it returned, or a
        :class:`ProxyError` 500 when it failed."""
        assert self.on_request is not None
        try:
            awaitable = self.on_request(request)
        except BaseException as exc:  # a hook whose signature does not fit
            raise self.failed("on_request", EXCEPTION, exc) from None
        return await self._run("on_request", awaitable)

    async def response_hook(self, request: Request, head: ResponseHead) -> object:
        """The plugin's ``on_response(request, head)``, as :meth:`request_hook`."""
        assert self.on_response is not None
        try:
            awaitable = self.on_response(request, head)
        except BaseException as exc:
            raise self.failed("on_response", EXCEPTION, exc) from None
        return await self._run("on_response", awaitable)

    async def _run(self, hook: str, awaitable: Awaitable[object]) -> object:
        """Await ``awaitable`` (the coroutine of the plugin's ``hook``) under the deadline,
        timing its steps. The first step is driven here: most hooks finish in it (they
        change a header and return without awaiting anything), and then no
        :class:`_Timed` wrapper is needed (per-request cost: docs/performance.md)."""
        if type(awaitable) is not CoroutineType and not isinstance(awaitable, Coroutine):  # an async def gives one
            raise self.invalid(hook, awaitable)
        coro: Coroutine[object, object, object] = awaitable
        deadline = trio.current_time() + self.timeout
        timed: _Timed | None = None
        begin = perf_counter()
        result: object = None
        try:
            # the scope is entered before any of the plugin's code runs, so scopes the
            # plugin opens nest inside it as Trio requires
            with trio.CancelScope(deadline=deadline) as scope:
                try:
                    pending = coro.send(None)
                except StopIteration as done:  # finished without yielding
                    result = done.value
                else:
                    timed = _Timed(coro, pending, perf_counter() - begin)
                    result = await timed
        except BaseException as exc:  # the plugin's own ProxyError too: a plugin answers with a Response
            if carries_cancellation(exc):
                raise
            self._check_stall(hook, timed.longest if timed is not None else perf_counter() - begin)
            raise self.failed(hook, EXCEPTION, exc) from None
        self._check_stall(hook, timed.longest if timed is not None else perf_counter() - begin)
        if scope.cancelled_caught or trio.current_time() > deadline:
            raise self.failed(hook, TIMEOUT, None)
        return result

    def answer(self, response: Response) -> Answer:
        """The answer door's form of a :class:`~spooky_trio.plugin.Response` a hook gave."""
        reason = self.answer_reason if response.reason is None else f"{self.answer_reason}:{response.reason}"
        return Answer(response.status, reason, response.body, response.headers, rejection=response.status >= 400)

    def invalid(self, hook: str, result: object) -> ProxyError:
        """``hook`` returned ``result``, which its contract does not allow."""
        return self.failed(hook, INVALID, None, f"returned a {type(result).__name__}")

    def failed(self, hook: str, kind: str, exc: BaseException | None, detail: str = "") -> ProxyError:
        """Count and log a failure of ``hook``; the 500 it answers."""
        if self.metrics is not None:
            self.metrics.plugin_error(self.name, kind)
        note = self._failures.due()
        if note is not None:
            if kind == TIMEOUT:
                log.error("plugin %s: %s did not finish within plugin_timeout_ms (%d ms); answering 500%s", self.name, hook,
                          round(self.timeout * 1000), note)
            elif kind == INVALID:
                log.error("plugin %s: %s %s, which is not allowed; answering 500%s", self.name, hook, detail, note)
            else:
                log.error("plugin %s: %s raised %s; answering 500%s", self.name, hook, type(exc).__name__, note, exc_info=exc)
        message = "request hook" if hook == "on_request" else "response hook"
        return ProxyError(500, self._reasons[kind], f"a filter's {message} failed")

    def background_failed(self, exc: BaseException, retry_in: float) -> None:
        """The plugin's background task raised; it starts again in ``retry_in`` seconds."""
        if self.metrics is not None:
            self.metrics.plugin_error(self.name, BACKGROUND)
        note = self._failures.due()
        if note is not None:
            log.error("plugin %s: background task raised %s; starting it again in %gs%s", self.name, type(exc).__name__, retry_in,
                      note, exc_info=exc)

    async def run_background(self) -> None:
        """The plugin's ``background()`` (``proxy/plugin_tasks.py`` restarts it), its steps
        timed like a hook's: one that holds the event loop is reported as it happens."""
        assert self.background is not None
        coro = self.background()
        if type(coro) is not CoroutineType and not isinstance(coro, Coroutine):
            raise TypeError(f"background() returned a {type(coro).__name__}, not a coroutine")
        begin = perf_counter()
        try:
            pending = coro.send(None)
        except StopIteration:
            self._check_stall("background", perf_counter() - begin)
            return
        self._check_stall("background", perf_counter() - begin)
        await _Timed(coro, pending, 0.0, self._background_stall)

    def _background_stall(self, seconds: float) -> None:
        self._check_stall("background", seconds)

    def _check_stall(self, hook: str, longest: float) -> None:
        if longest < STALL_SECONDS:
            return
        if self.metrics is not None:
            self.metrics.plugin_loop_stall(self.name)
        note = self._stalls.due()
        if note is not None:
            log.warning("plugin %s: %s held the event loop for %d ms without yielding (a synchronous call or CPU work); "
                        "no other request moved meanwhile%s", self.name, hook, round(longest * 1000), note)
