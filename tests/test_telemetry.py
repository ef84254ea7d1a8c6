"""One structured record per operation: a log line with its fields, a span, a counted outcome.

The OpenTelemetry SDK's in-memory exporters stand in for Azure Monitor (which the Functions
worker configures in Azure); they receive exactly what the exporter would send.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from azure.functions.queue import QueueMessage
from azure.storage.blob import ContainerClient
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from .conftest import FUNCTIONS, Exports, Webhook, notification
from .faultproxy import FaultProxy, Rule, is_properties

SPANS = InMemorySpanExporter()
METRICS = InMemoryMetricReader()
_tracer_provider = TracerProvider()
_tracer_provider.add_span_processor(SimpleSpanProcessor(SPANS))
trace.set_tracer_provider(_tracer_provider)  # once per process, like the worker does
metrics.set_meter_provider(MeterProvider(metric_readers=[METRICS]))


@pytest.fixture(autouse=True)
def fresh_spans() -> Iterator[None]:
    SPANS.clear()
    yield


def spans(name: str) -> list[ReadableSpan]:
    return [span for span in SPANS.get_finished_spans() if span.name == name]


def outcome_counts() -> dict[tuple[str, str], int]:
    data = METRICS.get_metrics_data()
    counts: dict[tuple[str, str], int] = {}
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "receiver.outcomes":
                    for point in metric.data.data_points:
                        attrs = point.attributes or {}
                        assert isinstance(point, NumberDataPoint)  # a counter's points are sums
                        counts[(str(attrs["operation"]), str(attrs["outcome"]))] = int(point.value)
    return counts


def fields(record: logging.LogRecord) -> dict[str, Any]:
    return {key.removeprefix("receiver."): value for key, value in vars(record).items() if key.startswith("receiver.")}


def records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [fields(r) for r in caplog.records if hasattr(r, "receiver.operation")]


async def test_a_delivery_emits_one_record_one_span_and_one_count(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, caplog: pytest.LogCaptureFixture
) -> None:
    before = outcome_counts().get(("delivery", "stored"), 0)
    payload = notification(exports.publish())
    response = await webhook.post(payload)
    assert response.status == 200

    [span] = spans("receiver.delivery")
    attributes = dict(span.attributes or {})
    assert attributes["receiver.taskId"] == payload["taskId"]
    assert attributes["receiver.workspaceId"] == payload["workspaceId"]
    assert attributes["receiver.outcome"] == "stored"
    assert attributes["receiver.httpStatus"] == 200
    assert attributes["receiver.copyMode"] == "sync"
    assert attributes["receiver.storageRequests"] == len(proxied.seen) == 4  # copy, then read, manifest, task look-up
    assert attributes["receiver.blob"] == response.body["blob"]
    assert float(attributes["receiver.durationMs"]) > 0  # type: ignore[arg-type]
    [record] = records(caplog)
    assert record["outcome"] == "stored" and record["taskId"] == payload["taskId"]
    assert outcome_counts()[("delivery", "stored")] == before + 1


async def test_rejections_and_failures_are_recorded_without_the_signature(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, caplog: pytest.LogCaptureFixture
) -> None:
    url = exports.publish()
    expired = notification(url, displayName=url, exportedFileExpiresOn="2020-01-01T00:00:00Z")
    assert (await webhook.post(expired)).status == 410
    missing = notification(exports.sas_url("no/such/file.pdf"), displayName=url, metadata={"link": url})
    assert (await webhook.post(missing)).status == 502

    outcomes = [dict(span.attributes or {})["receiver.outcome"] for span in spans("receiver.delivery")]
    assert outcomes == ["link-expired", "copy-failed"]
    exported = json.dumps([dict(span.attributes or {}) for span in SPANS.get_finished_spans()]) + json.dumps(
        records(caplog)
    )
    assert not exports.secrets.leaks_in(exported)
    assert dict(spans("receiver.delivery")[0].attributes or {})["receiver.taskId"] == expired["taskId"]


async def test_a_final_verification_failure_is_one_error_record_and_an_error_span(
    proxied: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from receiver.runtime import RUNTIME

    monkeypatch.setenv("SYNC_COPY_MAX_MIB", "0")
    await RUNTIME.reset()
    proxied.keep_copies_pending()
    payload = notification(exports.publish())
    response = await webhook.post(payload)
    assert response.status == 202 and response.verification
    proxied.reset()
    proxied.add(Rule(is_properties, 10_000, copy_status="failed", copy_description="404 BlobNotFound"))
    caplog.clear()

    function = FUNCTIONS["verify_pending_copy"].get_user_function()
    await function(QueueMessage(id="m", body=response.verification.encode(), dequeue_count=1))  # type: ignore[no-untyped-call]

    [span] = spans("receiver.verification")
    assert span.status.status_code == trace.StatusCode.ERROR
    assert dict(span.attributes or {})["receiver.outcome"] == "failed"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and fields(errors[0]).get("taskId") == payload["taskId"]
    assert "404" in errors[0].getMessage()
    assert outcome_counts()[("verification", "failed")] >= 1
