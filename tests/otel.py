"""The test process's OpenTelemetry providers, set once like the Functions worker sets them.

In-memory exporters read what the receiver records (tests/test_telemetry.py); a switchable span
processor lets tests/test_queries.py send the same spans through the real Azure Monitor exporter
to a local capture for the time of one test.
"""

from __future__ import annotations

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


class Switchable(SpanProcessor):
    """Forwards finished spans to ``target`` while one is set."""

    def __init__(self) -> None:
        self.target: SpanProcessor | None = None

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if self.target is not None:
            self.target.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        if self.target is not None:
            self.target.on_end(span)


SPANS = InMemorySpanExporter()
METRICS = InMemoryMetricReader()
EXTRA_SPANS = Switchable()
_tracer_provider = TracerProvider()
_tracer_provider.add_span_processor(SimpleSpanProcessor(SPANS))
_tracer_provider.add_span_processor(EXTRA_SPANS)
trace.set_tracer_provider(_tracer_provider)  # once per process, like the worker does
metrics.set_meter_provider(MeterProvider(metric_readers=[METRICS]))
