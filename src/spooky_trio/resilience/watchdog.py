"""Self-health watchdog (``resilience.watchdog``): restart a process that stays unhealthy.

Every ``check_interval_ms`` the watchdog closes a window and calls it unhealthy when any of:

* **timeouts**: at least ``min_requests_per_window`` requests finished in the window and
  backend timeouts reached ``timeout_error_rate_percent`` of them;
* **overload**: requests in flight reached ``overload_inflight_percent`` of
  ``performance.global_inflight_limit``;
* **stall**: the event loop woke the watchdog ``poll_stall_timeout_ms`` or more after its
  deadline (some code blocked the loop; measured once the loop runs again, since a Trio
  program has no other thread to watch it).

After ``unhealthy_consecutive_windows`` unhealthy windows in a row it asks for a restart,
at most once per ``restart_cooldown_ms``: it reports the server not ready (``/ready`` 503)
for ``drain_grace_ms`` so load balancers move traffic away, then runs ``restart_command``
(an argv list, never through a shell) and reports ready again if the process is still
alive (a command that restarts the service usually ends it first). Without a
``restart_command`` the request is only logged and counted.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Awaitable, Callable
from typing import Protocol

import attrs
import trio

from spooky_trio.config import WatchdogConfig

log = logging.getLogger("spooky.watchdog")

#: upper bound for one run of ``restart_command`` (seconds); it is killed after that
COMMAND_TIMEOUT = 60.0


class _Counter(Protocol):
    def inc(self) -> None: ...


class WatchdogMetrics(Protocol):
    """The watchdog's counters (the server's Metrics)."""

    @property
    def watchdog_degraded_windows(self) -> _Counter: ...

    @property
    def watchdog_restart_requests(self) -> _Counter: ...

    @property
    def watchdog_restart_hooks(self) -> _Counter: ...


@attrs.frozen(slots=True)
class WindowSample:
    """What the watchdog saw over one window."""

    requests: int
    timeouts: int
    inflight: int
    lag: float  #: seconds the watchdog woke after its deadline


def unhealthy_reasons(config: WatchdogConfig, inflight_limit: int, sample: WindowSample) -> list[str]:
    """Why a window is unhealthy (empty: healthy); ``config`` is a ``WatchdogConfig``."""
    reasons = []
    if sample.requests >= config.min_requests_per_window and sample.timeouts * 100 >= config.timeout_error_rate_percent * sample.requests:
        reasons.append(f"timeouts {sample.timeouts}/{sample.requests}")
    if sample.inflight * 100 >= config.overload_inflight_percent * inflight_limit:
        reasons.append(f"inflight {sample.inflight}/{inflight_limit}")
    if sample.lag * 1000 >= config.poll_stall_timeout_ms:
        reasons.append(f"event loop stalled {sample.lag:.3f}s")
    return reasons


RunCommand = Callable[[list[str]], Awaitable[int]]


async def run_restart_command(argv: list[str]) -> int:
    """Run ``argv`` without a shell; its exit status (-1 when it could not start or timed out)."""
    try:
        with trio.move_on_after(COMMAND_TIMEOUT) as scope:
            result = await trio.run_process(argv, check=False, stdin=subprocess.DEVNULL)
        if scope.cancelled_caught:
            log.error("restart_command %r did not finish within %.0fs; killed", argv, COMMAND_TIMEOUT)
            return -1
        return result.returncode
    except OSError as exc:
        log.error("restart_command %r could not start: %s", argv, exc)
        return -1


class Watchdog:
    """The watchdog task; see the module docstring. Time comes from Trio's clock."""

    def __init__(
        self,
        config: WatchdogConfig,
        *,
        inflight: Callable[[], int],
        inflight_limit: int,
        totals: Callable[[], tuple[float, float]],
        set_ready: Callable[[bool], None],
        metrics: WatchdogMetrics | None = None,
        run_command: RunCommand = run_restart_command,
    ) -> None:
        self.config = config
        self._inflight = inflight
        self.inflight_limit = inflight_limit
        #: cumulative (requests finished, backend timeouts); windows use the differences
        self._totals = totals
        self._set_ready = set_ready
        self._metrics = metrics
        self._run_command = run_command
        self.consecutive = 0
        self.last_restart: float | None = None
        self.stats = {"windows": 0, "degraded_windows": 0, "restart_requests": 0, "restart_hooks": 0, "suppressed": 0}
        #: True while a restart drain is under way (the server reports not ready)
        self.draining = False
        self._changed = trio.Event()

    async def wait_stat(self, key: str, value: int) -> None:
        """Wait until ``stats[key]`` reached ``value`` (tests, tooling)."""
        while self.stats[key] < value:
            await self._changed.wait()

    def _bump(self, key: str) -> None:
        self.stats[key] += 1
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Evaluate windows until cancelled."""
        interval = self.config.check_interval_ms / 1000
        requests, timeouts = self._totals()
        deadline = trio.current_time() + interval
        task_status.started()
        while True:
            await trio.sleep_until(deadline)
            now = trio.current_time()
            new_requests, new_timeouts = self._totals()
            sample = WindowSample(
                requests=int(new_requests - requests), timeouts=int(new_timeouts - timeouts), inflight=self._inflight(), lag=now - deadline
            )
            requests, timeouts = new_requests, new_timeouts
            self._bump("windows")
            reasons = unhealthy_reasons(self.config, self.inflight_limit, sample)
            if reasons:
                self.consecutive += 1
                self._bump("degraded_windows")
                if self._metrics is not None:
                    self._metrics.watchdog_degraded_windows.inc()
                log.warning("watchdog: unhealthy window %d/%d: %s", self.consecutive, self.config.unhealthy_consecutive_windows, "; ".join(reasons))
            else:
                self.consecutive = 0
            if self.consecutive >= self.config.unhealthy_consecutive_windows:
                self.consecutive = 0
                await self._restart(now)
                requests, timeouts = self._totals()  # the drain is not a window
            deadline = trio.current_time() + interval

    async def _restart(self, now: float) -> None:
        cooldown = self.config.restart_cooldown_ms / 1000
        if self.last_restart is not None and now - self.last_restart < cooldown:
            self._bump("suppressed")
            log.warning("watchdog: restart wanted but the last one was %.1fs ago (cooldown %.1fs)", now - self.last_restart, cooldown)
            return
        self.last_restart = now
        self._bump("restart_requests")
        if self._metrics is not None:
            self._metrics.watchdog_restart_requests.inc()
        command = list(self.config.restart_command)
        if not command:
            log.error("watchdog: restart wanted but resilience.watchdog.restart_command is empty")
            return
        log.error("watchdog: not ready for %dms, then running restart_command %r", self.config.drain_grace_ms, command)
        self.draining = True
        self._set_ready(False)
        try:
            await trio.sleep(self.config.drain_grace_ms / 1000)
            status = await self._run_command(command)
            self._bump("restart_hooks")
            if self._metrics is not None:
                self._metrics.watchdog_restart_hooks.inc()
            log.warning("watchdog: restart_command exited with status %d", status)
        finally:
            self.draining = False
            self._set_ready(True)
