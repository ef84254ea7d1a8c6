"""One structured record per delivery, verification and reconciliation.

Each record is one log line on the ``receiver`` logger (the Functions host forwards it to
Application Insights as a trace, its fields in ``custom_dimensions``) and, through the
OpenTelemetry API, one span with the same attributes plus a counter of outcomes. The API does
nothing until a provider is configured. In Azure the Python worker configures Azure Monitor when
the app setting ``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true`` is set and host.json says
``"telemetryMode": "OpenTelemetry"`` (Microsoft's pattern for Python functions). The app never
calls ``configure_azure_monitor`` itself: a second configuration sends every log record twice
(azure-functions-python-worker#1342).

Nothing here ever holds a URL query: records carry ids, the blob as ``container/name``, and
reasons that were already redacted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace

from .source import redact

log = logging.getLogger("receiver")
_tracer = otel_trace.get_tracer("smartdocumentor.receiver")
_meter = otel_metrics.get_meter("smartdocumentor.receiver")
OUTCOMES = _meter.create_counter(
    "receiver.outcomes", unit="{record}", description="Deliveries, verifications and reconciliations by outcome"
)

Operation = Literal["delivery", "verification", "reconciliation"]


@dataclass
class Record:
    """What one operation did; filled in while it runs, emitted once when it ends."""

    operation: Operation
    task_id: str | None = None
    workspace_id: str | None = None
    blob: str | None = None  # container/name
    outcome: str = "unknown"
    status: int | None = None  # the HTTP status a delivery answered
    copy_mode: str | None = None  # sync | async
    storage_requests: int = 0
    reason: str | None = None
    final_failure: bool = False  # an ERROR an operator must act on
    started: float = field(default_factory=time.perf_counter)

    @property
    def duration_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    def about(self) -> str:
        return f"task={self.task_id} blob={self.blob}"

    def attributes(self) -> dict[str, Any]:
        values: dict[str, Any] = {
            "operation": self.operation,
            "outcome": self.outcome,
            "taskId": self.task_id,
            "workspaceId": self.workspace_id,
            "blob": self.blob,
            "httpStatus": self.status,
            "copyMode": self.copy_mode,
            "storageRequests": self.storage_requests,
            "durationMs": round(self.duration_ms, 1),
            "reason": self.reason,
        }
        return {key: value for key, value in values.items() if value is not None}


CURRENT: ContextVar[Record | None] = ContextVar("receiver_record", default=None)


def count_storage_request() -> None:
    record = CURRENT.get()
    if record is not None:
        record.storage_requests += 1


def about() -> str:
    """``task=… blob=…`` of the operation running in this context, for log lines deeper down."""
    record = CURRENT.get()
    return record.about() if record is not None else ""


@contextmanager
def recording(operation: Operation) -> Iterator[Record]:
    """Run one operation inside a span, then emit its record (also when it raises)."""
    record = Record(operation)
    token = CURRENT.set(record)
    with _tracer.start_as_current_span(f"receiver.{operation}") as span:
        try:
            yield record
        except BaseException as exc:
            if record.outcome == "unknown":
                record.outcome = "error"
                record.reason = record.reason or type(exc).__name__
            raise
        finally:
            CURRENT.reset(token)
            if record.reason:
                record.reason = redact(record.reason)
            attributes = record.attributes()
            span.set_attributes({f"receiver.{key}": value for key, value in attributes.items()})
            if record.final_failure or (record.status or 0) >= 500:
                span.set_status(otel_trace.StatusCode.ERROR, record.outcome)
            OUTCOMES.add(1, {"operation": operation, "outcome": record.outcome})
            emit(record, attributes)


def emit(record: Record, attributes: dict[str, Any]) -> None:
    if record.final_failure:
        level = logging.ERROR
    elif (record.status or 0) >= 500 or record.outcome in ("failed", "error"):
        level = logging.WARNING
    else:
        level = logging.INFO
    status = f" status={record.status}" if record.status is not None else ""
    mode = f" mode={record.copy_mode}" if record.copy_mode else ""
    reason = f": {record.reason}" if record.reason else ""
    log.log(
        level,
        "%s %s%s task=%s workspace=%s blob=%s%s storage_requests=%d duration_ms=%.1f%s",
        record.operation,
        record.outcome,
        status,
        record.task_id,
        record.workspace_id,
        record.blob,
        mode,
        record.storage_requests,
        record.duration_ms,
        reason,
        # Flat, primitive attributes: OpenTelemetry's log exporter turns them into customDimensions
        # (a nested dict would be dropped), and the message itself carries them for any other sink.
        extra={f"receiver.{key}": value for key, value in attributes.items()},
    )
