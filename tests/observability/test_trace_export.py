"""The OTLP export side of tracing without a collector: where spans go (config and OTEL_*
fallbacks), the bounded queue, and the export task's batches, failures, deadline and
exporter switches (a fake exporter in a real worker thread)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest
import trio
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from spooky_trio.config import TracingConfig
from spooky_trio.observability import trace_export
from spooky_trio.observability.metrics import Metrics
from spooky_trio.observability.trace_export import (
    BatchSettings,
    ExportSettings,
    ExportTask,
    SpanQueue,
    export_settings,
    make_exporter,
)

GRPC, HTTP = "grpc", "http/protobuf"


@pytest.mark.parametrize(
    ("endpoint", "environ", "expected"),
    [
        (None, {}, ExportSettings("http://127.0.0.1:4317", GRPC)),
        ("http://collector:4317", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://env:1"}, ExportSettings("http://collector:4317", GRPC)),
        (None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:1", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://base:2"},
         ExportSettings("http://traces:1", GRPC)),
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://base:2"}, ExportSettings("http://base:2", GRPC)),
        (None, {"OTEL_EXPORTER_OTLP_PROTOCOL": HTTP}, ExportSettings("http://127.0.0.1:4318/v1/traces", HTTP)),
        (None, {"OTEL_EXPORTER_OTLP_PROTOCOL": HTTP, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://base:4318/"},
         ExportSettings("http://base:4318/v1/traces", HTTP)),
        (None, {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": HTTP, "OTEL_EXPORTER_OTLP_PROTOCOL": GRPC,
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://t:1/custom"}, ExportSettings("https://t:1/custom", HTTP)),
        ("http://collector:4318", {"OTEL_EXPORTER_OTLP_PROTOCOL": HTTP}, ExportSettings("http://collector:4318/v1/traces", HTTP)),
        ("http://collector:4318/otlp/traces", {"OTEL_EXPORTER_OTLP_PROTOCOL": HTTP},
         ExportSettings("http://collector:4318/otlp/traces", HTTP)),
    ],
    ids=["spooky-default", "config-wins", "traces-env", "base-env", "http-default", "http-base", "http-traces-env",
         "http-config-bare", "http-config-path"],
)
def test_where_spans_go(endpoint: str | None, environ: dict[str, str], expected: ExportSettings) -> None:
    assert export_settings(TracingConfig(enabled=True, otlp_endpoint=endpoint), environ) == expected


def test_the_shown_endpoint_has_no_credentials() -> None:
    assert ExportSettings("https://user:pw@c.example:4317/x?k=v", GRPC).shown == "https://c.example:4317/x (grpc)"


def test_batch_settings_from_the_otel_bsp_variables() -> None:
    assert BatchSettings.from_environ({}) == BatchSettings(2048, 512, 5.0, 30.0)
    assert BatchSettings.from_environ({"OTEL_BSP_MAX_QUEUE_SIZE": "10", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "64",
                                       "OTEL_BSP_SCHEDULE_DELAY": "250", "OTEL_BSP_EXPORT_TIMEOUT": "1500"}) == BatchSettings(10, 10, 0.25, 1.5)
    assert BatchSettings.from_environ({"OTEL_BSP_MAX_QUEUE_SIZE": "-3", "OTEL_BSP_SCHEDULE_DELAY": "soon"}) == BatchSettings()


def test_an_unsupported_protocol_has_no_exporter() -> None:
    with pytest.raises(ValueError, match="http/json"):
        make_exporter(ExportSettings("http://c:4318", "http/json"), 1.0)


def spans(n: int) -> list[ReadableSpan]:
    return [ReadableSpan(name=f"s{i}") for i in range(n)]


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_the_queue_drops_past_its_bound_and_counts_it() -> None:
    metrics = Metrics()
    queue = SpanQueue(3, 2, metrics)
    for span in spans(5):
        queue.on_end(span)
    assert len(queue) == 3 and value(metrics, "spooky_tracing_spans_dropped_total", reason="queue_full") == 2
    assert [s.name for s in queue.take(2)] == ["s0", "s1"] and len(queue) == 1


class FakeExporter(SpanExporter):
    """Answers from ``results`` (then SUCCESS); ``hold`` blocks ``export`` until set."""

    def __init__(self, results: Sequence[SpanExportResult] = (), hold: threading.Event | None = None) -> None:
        self.results = list(results)
        self.hold = hold
        self.batches: list[list[str]] = []
        self.calls = self.running = self.most_running = 0
        self.shut = False
        self.closed = threading.Event()
        self.exported = threading.Condition()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self.exported:
            self.calls += 1
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        if self.hold is not None:
            self.hold.wait()
        with self.exported:
            self.running -= 1
            self.batches.append([s.name for s in spans])
            self.exported.notify_all()
        return self.results.pop(0) if self.results else SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.shut = True
        self.closed.set()

    async def wait_batches(self, n: int) -> list[list[str]]:
        def wait() -> list[list[str]]:
            with self.exported:
                assert self.exported.wait_for(lambda: len(self.batches) >= n, 10), self.batches
                return list(self.batches)
        return await trio.to_thread.run_sync(wait)


def task_with(exporters: dict[str, FakeExporter], batch: BatchSettings, metrics: Metrics) -> ExportTask:
    return ExportTask(SpanQueue(batch.max_queue_size, batch.max_export_batch_size, metrics), batch, metrics,
                      make=lambda settings, timeout: exporters[settings.endpoint])


async def test_batches_go_out_when_full_or_on_schedule_and_are_counted(nursery: trio.Nursery) -> None:
    metrics, exporter = Metrics(), FakeExporter()
    task = task_with({"a": exporter}, BatchSettings(100, 2, 0.05, 5.0), metrics)
    task.want(ExportSettings("a", GRPC))
    await nursery.start(task.run)
    for span in spans(5):
        task.queue.on_end(span)
    assert await exporter.wait_batches(3) == [["s0", "s1"], ["s2", "s3"], ["s4"]]
    await task.flush()  # the last batch's accounting is done once its export returned
    assert value(metrics, "spooky_tracing_spans_exported_total") == 5
    assert value(metrics, "spooky_tracing_exports_total", result="success") == 3


async def test_a_failed_export_drops_its_batch_and_backs_off(nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trace_export, "BACKOFF_FIRST", 0.05)
    metrics, exporter = Metrics(), FakeExporter([SpanExportResult.FAILURE])
    task = task_with({"a": exporter}, BatchSettings(100, 2, 0.02, 5.0), metrics)
    task.want(ExportSettings("a", GRPC))
    await nursery.start(task.run)
    for span in spans(2):
        task.queue.on_end(span)
    await exporter.wait_batches(1)
    await task.flush()
    assert value(metrics, "spooky_tracing_exports_total", result="failure") == 1
    assert value(metrics, "spooky_tracing_spans_dropped_total", reason="export_failed") == 2
    assert task.backoff == 0.05
    for span in spans(2):  # after the back-off the next batch goes out, and the back-off resets
        task.queue.on_end(span)
    await exporter.wait_batches(2)
    await task.flush()
    assert task.backoff == 0 and value(metrics, "spooky_tracing_spans_exported_total") == 2


async def test_an_export_past_its_deadline_is_abandoned_and_never_doubled() -> None:
    hold = threading.Event()
    metrics, exporter = Metrics(), FakeExporter(hold=hold)
    task = task_with({"a": exporter}, BatchSettings(100, 1, 0.01, 0.01), metrics)
    task.want(ExportSettings("a", GRPC))
    await task._switch()
    try:
        for attempt in (1, 2):  # the second waits for the stuck thread (one at a time), and times out too
            task.queue.on_end(spans(1)[0])
            assert not await task._export_batch()  # after the deadline: 1 s past the exporter's timeout
            assert value(metrics, "spooky_tracing_exports_total", result="timeout") == attempt
        assert exporter.calls == 1 and exporter.most_running == 1
        assert value(metrics, "spooky_tracing_spans_dropped_total", reason="export_failed") == 2
    finally:
        hold.set()


async def test_switching_collectors_and_turning_export_off(nursery: trio.Nursery) -> None:
    metrics, a, b = Metrics(), FakeExporter(), FakeExporter()
    task = task_with({"a": a, "b": b}, BatchSettings(100, 1, 0.01, 5.0), metrics)
    task.want(ExportSettings("a", GRPC))
    await nursery.start(task.run)
    task.queue.on_end(spans(1)[0])
    await a.wait_batches(1)
    task.want(ExportSettings("b", GRPC))
    task.queue.on_end(spans(1)[0])
    await b.wait_batches(1)
    assert a.shut and not b.shut
    task.want(None)
    await trio.to_thread.run_sync(b.closed.wait, 10)
    task.queue.on_end(spans(1)[0])
    await task.flush()  # no exporter: dropped and counted
    assert task.exporter is None and len(task.queue) == 0
    assert value(metrics, "spooky_tracing_spans_dropped_total", reason="no_exporter") == 1


async def test_a_collector_that_cannot_be_set_up_drops_spans(nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    task = ExportTask(SpanQueue(100, 1, metrics), BatchSettings(100, 1, 0.01, 5.0), metrics)
    task.want(ExportSettings("http://c:4318", "http/json"))
    await nursery.start(task.run)  # started: the exporter was set up, or failed to be
    assert any("http/json" in r.getMessage() for r in caplog.records if r.name == "spooky.tracing")
    task.queue.on_end(spans(1)[0])
    await task.flush()
    assert value(metrics, "spooky_tracing_spans_dropped_total", reason="no_exporter") == 1


def test_tracers_are_shared_by_equal_configs_and_only_live_ones_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    from spooky_trio.observability.tracing import Tracing

    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test,service.name=not-this")
    tracing = Tracing(None, environ={})
    one, half = TracingConfig(enabled=True, service_name="edge"), TracingConfig(enabled=True, service_name="edge", sample_ratio=0.5)
    tracer = tracing.tracer(one)
    assert tracing.tracer(TracingConfig(enabled=True, service_name="edge")) is tracer and tracing.tracer(half) is not tracer
    span = tracer.start_span("x")
    span.end()
    [finished] = tracing.queue.take(1)
    assert finished.resource.attributes["service.name"] == "edge"
    assert finished.resource.attributes["deployment.environment"] == "test"
    tracing.follow([half])
    assert tracing.tracer(half) is not None and tracing.tracer(one) is not tracer  # the old one was let go
