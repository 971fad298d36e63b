"""The boundary around a plugin's code (proxy/plugin_calls.py, proxy/plugin_tasks.py), without
sockets, on trio's MockClock: deadlines, late returns, stalls, outside cancellation, the
background keeper's back-off and a retired generation's tasks."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from spooky_trio.config.plugins import filter_hooks
from spooky_trio.http.errors import ProxyError
from spooky_trio.observability.metrics import Metrics
from spooky_trio.plugin import Request, Response
from spooky_trio.proxy import plugin_calls
from spooky_trio.proxy.plugin_calls import PluginRuntime
from spooky_trio.proxy.plugin_tasks import PluginTasks
from spooky_trio.proxy.plugins import PluginSet


class Hooks:
    """A filter whose request hook does what ``mode`` says."""

    def __init__(self, mode: str, clock: trio.testing.MockClock | None = None) -> None:
        self.mode, self.clock = mode, clock
        self.runs = 0

    async def on_request(self, request: Request) -> Response | None:
        if self.mode == "sleep":
            await trio.sleep(5)
        elif self.mode == "late":  # computes past its deadline without ever yielding
            assert self.clock is not None
            self.clock.jump(2)
        elif self.mode == "stall":
            time.sleep(0)  # noqa: ASYNC251 - the fake perf_counter says it took long
        return None

    async def background(self) -> None:
        self.runs += 1
        if self.mode == "fail":
            raise RuntimeError("background broke")
        while True:
            await trio.sleep(1)


def runtime(hooks: Hooks, metrics: Metrics | None = None, timeout: float = 1.0) -> PluginRuntime:
    return PluginRuntime("p", hooks, filter_hooks(hooks, "test"), timeout, metrics)


def errors(metrics: Metrics, kind: str) -> float:
    return metrics.registry.get_sample_value("spooky_plugin_errors_total", {"plugin": "p", "kind": kind}) or 0.0


async def test_a_hook_past_its_deadline_is_cancelled_there(autojump_clock: trio.testing.MockClock) -> None:
    metrics = Metrics()
    start = trio.current_time()
    with pytest.raises(ProxyError) as caught:
        await runtime(Hooks("sleep"), metrics).request_hook(Request.make())
    assert trio.current_time() - start == pytest.approx(1.0)
    assert (caught.value.response.status, caught.value.response.reason) == (500, "plugin_timeout:p")
    assert errors(metrics, "timeout") == 1


async def test_a_hook_that_returns_late_without_yielding_is_late(autojump_clock: trio.testing.MockClock) -> None:
    with pytest.raises(ProxyError) as caught:
        await runtime(Hooks("late", autojump_clock)).request_hook(Request.make())
    assert caught.value.response.reason == "plugin_timeout:p"


async def test_a_step_that_holds_the_loop_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks: Iterator[float] = iter([0.0, 0.2] * 10)  # each step of the hook "takes" 200 ms
    monkeypatch.setattr(plugin_calls, "perf_counter", lambda: next(ticks))
    metrics = Metrics()
    assert await runtime(Hooks("stall"), metrics, timeout=10).request_hook(Request.make()) is None
    assert metrics.registry.get_sample_value("spooky_plugin_event_loop_stalls_total", {"plugin": "p"}) == 1


async def test_a_background_task_that_holds_the_loop_is_counted_as_it_happens(
        autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    ticks: Iterator[float] = iter([0.0, 0.2] * 100)  # each step "takes" 200 ms
    monkeypatch.setattr(plugin_calls, "perf_counter", lambda: next(ticks))
    metrics = Metrics()
    hooks = Hooks("ok")
    with trio.move_on_after(3.5):  # steps: the first, one per second, the cancellation: each reported
        await PluginTasks._keep(runtime(hooks, metrics))
    assert hooks.runs == 1
    assert metrics.registry.get_sample_value("spooky_plugin_event_loop_stalls_total", {"plugin": "p"}) == 5


async def test_a_cancellation_from_outside_passes_through(autojump_clock: trio.testing.MockClock) -> None:
    metrics = Metrics()
    with trio.move_on_after(0.5) as scope:
        await runtime(Hooks("sleep"), metrics).request_hook(Request.make())
    assert scope.cancelled_caught  # the request ended: not a plugin failure
    assert errors(metrics, "timeout") == errors(metrics, "exception") == 0


async def test_a_failing_background_task_restarts_with_back_off(autojump_clock: trio.testing.MockClock) -> None:
    metrics = Metrics()
    hooks = Hooks("fail")
    plugin = runtime(hooks, metrics)
    with trio.move_on_after(1 + 2 + 4 + 0.5):  # failures at 0, 1, 3, 7: the pauses double
        await PluginTasks._keep(plugin)
    assert hooks.runs == 4
    assert errors(metrics, "background") == 4


async def test_a_retired_generations_tasks_wait_for_its_requests(autojump_clock: trio.testing.MockClock) -> None:
    hooks = Hooks("ok")
    old = PluginSet({"p": runtime(hooks)}, grace=30)
    new = PluginSet({"p": runtime(Hooks("ok"))}, grace=30)
    tasks = PluginTasks()
    async with trio.open_nursery() as nursery:
        await nursery.start(tasks.run)
        tasks.follow([old])
        await trio.sleep(1)
        assert tasks.running == 1 and hooks.runs == 1
        old.inflight = 1  # a request is still inside the old filters
        tasks.follow([new])
        await trio.sleep(5)
        assert tasks.running == 2  # retired, but its request is not done
        old._leave()
        await trio.sleep(0.1)
        assert tasks.running == 1
        old.inflight = 1  # a request that never ends: the drain timeout bounds the wait
        tasks.follow([old, new])  # a rollback brings it back...
        await trio.sleep(1)
        tasks.follow([new])  # ...and retires it again
        await trio.sleep(29)
        assert tasks.running == 2
        await trio.sleep(2)
        assert tasks.running == 1
        nursery.cancel_scope.cancel()
