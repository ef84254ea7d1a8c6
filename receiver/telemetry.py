"""One structured record per delivery, verification and reconciliation.

Each record is one log line on the ``receiver`` logger (the Functions host forwards it to
Application Insights as a trace, its fields in ``custom_dimensions``) and, through the
OpenTelemetry API, one span with the same attributes plus a counter of outcomes. The API does
nothing until a provider is configured. In Azure the Python worker configures Azure Monitor when
the app setting ``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true`` is set and host.json says
``"telemetryMode": "OpenTelemetry"`` (Microsoft's pattern for Python functions). The app never
calls ``configure_azure_monitor`` itself: a second configuration sends every log record twice
(a known behaviour of the Azure Functions Python worker).

Nothing here ever holds a URL query: records carry ids, the blob as ``container/name``, the
first 12 hex digits of the ``delivery`` hash (a sha256 of the link: it names the export without
revealing it), and reasons that were already redacted.

Each reconciliation run also reports the poison queue's depth and the age of the oldest pending
delivery (:func:`report_poison_depth`, :func:`report_oldest_pending`): a gauge each, and a record.
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

from .source import printable_id, redact, redact_keeping

log = logging.getLogger("receiver")
_tracer = otel_trace.get_tracer("smartdocumentor.receiver")
_meter = otel_metrics.get_meter("smartdocumentor.receiver")
OUTCOMES = _meter.create_counter(
    "receiver.outcomes", unit="{record}", description="Deliveries, verifications and reconciliations by outcome"
)

POISON_DEPTH = _meter.create_gauge(
    "receiver.poison_depth", unit="{message}", description="Messages waiting in the verification poison queue"
)
OLDEST_PENDING_AGE = _meter.create_gauge(
    "receiver.oldest_pending_age_s", unit="s", description="Age of the oldest delivery whose manifest is pending"
)

Operation = Literal["delivery", "verification", "reconciliation"]
# The length of the delivery hash in records: enough to tell exports apart, short enough to read.
DELIVERY_HASH_LENGTH = 12
# Field names of an invalid payload in a record: the first few, each bounded (the sender chose them).
MAX_FIELDS, MAX_FIELD_LENGTH = 10, 64


@dataclass
class Record:
    """What one operation did; filled in while it runs, emitted once when it ends."""

    operation: Operation
    task_id: str | None = None
    workspace_id: str | None = None
    blob: str | None = None  # container/name
    outcome: str = "unknown"
    status: int | None = None  # the HTTP status a delivery answered
    copy_mode: str | None = None  # sync | staged
    storage_requests: int = 0
    reason: str | None = None
    final_failure: bool = False  # an ERROR an operator must act on
    delivery: str | None = None  # the delivery hash (sha256 of the link); records carry its first 12 hex
    copy_sent: bool | None = None  # deliveries: whether a copy was sent to storage (then it is tracked)
    error: str | None = None  # a non-2xx answer's error code
    fields: str | None = None  # invalid-payload: the offending field names, comma-separated
    arrows: str | None = None  # the state machine's arrows this operation took (docs/state-machine.md)
    started: float = field(default_factory=time.perf_counter)

    @property
    def duration_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

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
            "delivery": self.delivery[:DELIVERY_HASH_LENGTH] if self.delivery else None,
            "copySent": self.copy_sent,
            "error": self.error,
            "fields": self.fields,
            "arrows": self.arrows,
            "finalFailure": True if self.final_failure else None,
        }
        return {key: value for key, value in values.items() if value is not None}

    def answered(self, status: int, body: dict[str, Any]) -> None:
        """What a delivery answered (its Outcome): status, outcome, and for a non-2xx the error code,
        the message (unless a more precise reason is known) and an invalid payload's field names."""
        self.status = status
        self.outcome = str(body.get("error") or body.get("status") or "unknown")
        if body.get("error"):
            self.error = str(body["error"])
            if not self.reason and body.get("message"):
                self.reason = str(body["message"])
        details = body.get("details")
        if isinstance(details, list):
            names = dict.fromkeys(
                str(item.get("field"))[:MAX_FIELD_LENGTH] for item in details if isinstance(item, dict)
            )
            self.fields = ",".join(list(names)[:MAX_FIELDS]) or None


CURRENT: ContextVar[Record | None] = ContextVar("receiver_record", default=None)


def count_storage_request() -> None:
    record = CURRENT.get()
    if record is not None:
        record.storage_requests += 1


def about() -> str:
    """``task=… blob=…`` of the operation running in this context, for log lines deeper down."""
    record = CURRENT.get()
    return f"task={record.task_id} blob={record.blob}" if record is not None else ""


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
            if record.reason:  # the record's own ids stay whole (a command in it must find the task)
                ids = [value for value in (record.task_id, record.workspace_id) if value and printable_id(value)]
                record.reason = redact_keeping(record.reason, ids)
            if record.fields:
                record.fields = redact(record.fields)
            attributes = record.attributes()
            span.set_attributes({f"receiver.{key}": value for key, value in attributes.items()})
            if record.final_failure or (record.status or 0) >= 500:
                span.set_status(otel_trace.StatusCode.ERROR, record.outcome)
            OUTCOMES.add(1, {"operation": operation, "outcome": record.outcome})
            emit(record, attributes)


_WARNING_OUTCOMES = ("failed", "error", "unreadable", "immutable", "held", "record-full")


def emit(record: Record, attributes: dict[str, Any]) -> None:
    if record.final_failure:
        level = logging.ERROR
    elif (record.status or 0) >= 500 or record.outcome in _WARNING_OUTCOMES:
        level = logging.WARNING
    else:
        level = logging.INFO
    status = f" status={record.status}" if record.status is not None else ""
    delivery = f" delivery={attributes['delivery']}" if "delivery" in attributes else ""
    mode = f" mode={record.copy_mode}" if record.copy_mode else ""
    reason = f": {record.reason}" if record.reason else ""
    log.log(
        level,
        "%s %s%s task=%s workspace=%s blob=%s%s%s storage_requests=%d duration_ms=%.1f%s",
        record.operation,
        record.outcome,
        status,
        record.task_id,
        record.workspace_id,
        record.blob,
        delivery,
        mode,
        record.storage_requests,
        record.duration_ms,
        reason,
        # Flat, primitive attributes: OpenTelemetry's log exporter turns them into customDimensions
        # (a nested dict would be dropped), and the message itself carries them for any other sink.
        extra={f"receiver.{key}": value for key, value in attributes.items()},
    )


POISON_ADVICE = "run `python -m ops replay-poison --dry-run`, then `python -m ops replay-poison`"


def report_poison_depth(count: int, *, queue: str) -> None:
    """One reconciliation run's look at the poison queue: the gauge ``receiver.poison_depth`` and a
    record (ERROR when messages wait there: nothing retries them until an operator replays them)."""
    POISON_DEPTH.set(count, {"queue": queue})
    level = logging.ERROR if count > 0 else logging.INFO
    advice = f": nothing retries them; {POISON_ADVICE}" if count > 0 else ""
    log.log(
        level,
        "reconciliation poison queue %s holds %d messages%s",
        queue,
        count,
        advice,
        extra={
            "receiver.operation": "reconciliation",
            "receiver.outcome": "poison" if count > 0 else "poison-empty",
            "receiver.queue": queue,
            "receiver.poison_depth": count,
            **({"receiver.finalFailure": True, "receiver.reason": f"{count} messages in {queue}"} if count else {}),
        },
    )


def report_oldest_pending(age_seconds: float | None) -> None:
    """One reconciliation run's oldest pending delivery (None: nothing is pending, reported as 0):
    the gauge ``receiver.oldest_pending_age_s`` and an INFO record."""
    age = max(0.0, round(age_seconds or 0.0, 1))
    OLDEST_PENDING_AGE.set(age)
    log.info(
        "reconciliation oldest pending delivery is %.0f s old",
        age,
        extra={
            "receiver.operation": "reconciliation",
            "receiver.outcome": "oldest-pending",
            "receiver.oldest_pending_age_s": age,
        },
    )
