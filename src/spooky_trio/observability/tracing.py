"""``observability.tracing``: one OpenTelemetry span per request, exported over OTLP.

:class:`Tracing` is the serving process's tracing (one per ``Server``): it makes the tracer a
generation's chain uses (:meth:`Tracing.tracer`, one SDK ``TracerProvider`` per service name
and sample ratio, shared by the generations that agree on them), holds the bounded queue
every finished span goes to, and owns the export task (``observability/trace_export.py``)
that the server runs in its root nursery and points at the collector of the live
generations (:meth:`Tracing.follow`).

Sampling is decided here, at the edge, by the trace id (``TraceIdRatioBased``, the
algorithm other OpenTelemetry SDKs use, so services behind us that sample by the same
ratio agree on a trace): the sampled flag of a client's ``traceparent`` is not obeyed, as
anyone on the internet can set it. ``sample_ratio`` 0 exports nothing; the ``traceparent``
we send upstream still names our span, with the sampled flag clear.

The span itself (where it starts and ends, its attributes) is the request path's:
``proxy/tracing.py``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import trio
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Sampler, TraceIdRatioBased

from spooky_trio import __version__
from spooky_trio.config import TracingConfig
from spooky_trio.observability.trace_export import (
    FLUSH_TIMEOUT,
    BatchSettings,
    ExportTask,
    SpanQueue,
    export_settings,
)

if TYPE_CHECKING:
    from spooky_trio.observability.metrics import Metrics

# the W3C propagator and TraceState log malformed client headers (their content) at warning,
# one line per request: a client could fill our log. A bad header is simply not continued.
for _client_input in ("opentelemetry.trace.propagation.tracecontext", "opentelemetry.trace.span"):
    logging.getLogger(_client_input).setLevel(logging.ERROR)


def sampler_for(ratio: float) -> Sampler:
    """The edge's sampler for ``sample_ratio`` (module docstring)."""
    if ratio >= 1.0:
        return ALWAYS_ON
    if ratio <= 0.0:
        return ALWAYS_OFF
    return TraceIdRatioBased(ratio)


class Tracing:
    """The process's tracing (module docstring). ``environ`` is read for the ``OTEL_*``
    variables that choose the collector and the batching (the process environment unless a
    test passes its own); the SDK reads ``OTEL_RESOURCE_ATTRIBUTES`` and the exporters
    their ``OTEL_EXPORTER_OTLP_*`` details from the process environment."""

    def __init__(self, metrics: Metrics | None, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        batch = BatchSettings.from_environ(self._environ)
        self.queue = SpanQueue(batch.max_queue_size, batch.max_export_batch_size, metrics)
        self.exports = ExportTask(self.queue, batch, metrics)
        #: (service name, sample ratio) -> its tracer
        self._tracers: dict[tuple[str, float], Tracer] = {}

    def tracer(self, config: TracingConfig) -> Tracer:
        """The tracer for a generation with ``config`` (enabled): its spans end in the queue."""
        key = (config.service_name, config.sample_ratio)
        tracer = self._tracers.get(key)
        if tracer is None:
            # not Resource.create(): that runs the configured resource detectors in a thread
            # pool (some ask cloud metadata services); the OTEL_RESOURCE_ATTRIBUTES detector
            # only reads the environment, and the configured service name wins over it
            resource = OTELResourceDetector().detect().merge(
                Resource({SERVICE_NAME: config.service_name, SERVICE_VERSION: __version__})
            )
            provider = TracerProvider(sampler=sampler_for(config.sample_ratio), resource=resource, shutdown_on_exit=False)
            provider.add_span_processor(self.queue)
            tracer = self._tracers[key] = provider.get_tracer("spooky_trio", __version__)
        return tracer

    def follow(self, configs: Iterable[TracingConfig]) -> None:
        """Export to the collector of the newest live generation that traces (a canary's
        when it has tracing on), or to none when no live generation does."""
        enabled = [c for c in configs if c.enabled]
        self.exports.want(export_settings(enabled[-1], self._environ) if enabled else None)
        # tracers of generations no longer live go (their last requests keep a reference):
        # the dict stays as small as the live set however often the ratio is reloaded
        live = {(c.service_name, c.sample_ratio) for c in enabled}
        for key in [key for key in self._tracers if key not in live]:
            del self._tracers[key]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The export task (runs until cancelled)."""
        await self.exports.run(task_status=task_status)

    async def flush(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Export what is queued, within ``timeout`` (a stopping server, after its drain)."""
        await self.exports.flush(timeout)
