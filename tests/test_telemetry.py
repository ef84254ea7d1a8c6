"""One structured record per operation: a log line with its fields, a span, a counted outcome.

The OpenTelemetry SDK's in-memory exporters stand in for Azure Monitor (which the Functions
worker configures in Azure); they receive exactly what the exporter would send.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from azure.functions.queue import QueueMessage
from azure.storage.blob import ContainerClient
from opentelemetry import trace
from opentelemetry.sdk.metrics.export import NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan

from receiver.telemetry import report_oldest_pending, report_poison_depth

from .conftest import FUNCTIONS, Exports, Webhook, notification
from .faultproxy import FaultProxy
from .otel import METRICS, SPANS


@pytest.fixture(autouse=True)
def fresh_spans() -> Iterator[None]:
    SPANS.clear()
    yield


def spans(name: str) -> list[ReadableSpan]:
    return [span for span in SPANS.get_finished_spans() if span.name == name]


def metric_points(name: str) -> list[NumberDataPoint]:
    data = METRICS.get_metrics_data()
    points = []
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        assert isinstance(point, NumberDataPoint)  # counters' and gauges' points are numbers
                        points.append(point)
    return points


def outcome_counts() -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for point in metric_points("receiver.outcomes"):
        attrs = point.attributes or {}
        counts[(str(attrs["operation"]), str(attrs["outcome"]))] = int(point.value)
    return counts


def kind(request: tuple[str, str]) -> str:
    """What a request to the destination was, from its method and path."""
    method, path = request
    if "restype=account" in path:
        return "account"
    if path.endswith("restype=container"):
        return "container policy"
    what = "record" if "/.smartdocumentor/tasks/" in path else "manifest" if ".json" in path else "file"
    if method == "PUT" and what == "file":
        return "copy"
    return f"{'write' if method == 'PUT' else 'read'} {what}"


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
    # The record read beside a create-only copy (the account asked once a process whether it has tags,
    # and the container whether a policy refuses overwrites), the record created, the copied blob read
    # once (its Content-Type) beside the manifest write.
    assert attributes["receiver.storageRequests"] == len(proxied.seen) == 7, "\n".join(map(str, proxied.seen))
    assert sorted(kind(request) for request in proxied.seen) == sorted(
        ["container policy", "read record", "account", "copy", "write record", "read file", "write manifest"]
    )
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

    first = notification(exports.publish(b"%PDF-1.4 first"))
    assert (await webhook.post(first)).status == 200
    # A staged re-export that cannot commit inside the answer (no time to wait): 202, and its queue message.
    monkeypatch.setenv("SYNC_COPY_MAX_MIB", "0")
    monkeypatch.setenv("COPY_WAIT_SECONDS", "0")
    await RUNTIME.reset()
    payload = {**first, "exportedFileUrl": exports.publish(b"%PDF-1.4 second")}
    response = await webhook.post(payload)
    assert response.status == 202 and response.verification, response.body
    # A retention policy is put on the container before the queue function commits it: each try is refused and
    # tried again (a WARNING: the delivery stays copying, a policy is lifted some day); the last one is final.
    from receiver.verification import MAX_DEQUEUE_COUNT, CopyStillRunning

    proxied.immutable()
    function = FUNCTIONS["verify_pending_copy"].get_user_function()
    caplog.clear()
    with pytest.raises(CopyStillRunning):
        await function(QueueMessage(id="m", body=response.verification.encode(), dequeue_count=1))  # type: ignore[no-untyped-call]
    [held] = [r for r in caplog.records if r.name == "receiver"]
    assert held.levelno == logging.WARNING and fields(held).get("outcome") == "held", held.getMessage()
    caplog.clear()
    SPANS.clear()
    with pytest.raises(CopyStillRunning):
        await function(QueueMessage(id="m", body=response.verification.encode(), dequeue_count=MAX_DEQUEUE_COUNT))  # type: ignore[no-untyped-call]

    [span] = spans("receiver.verification")
    assert span.status.status_code == trace.StatusCode.ERROR
    # The last try is the poisoned one (what docs/operations.md says to replay), naming the policy to lift first.
    assert dict(span.attributes or {})["receiver.outcome"] == "poisoned"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and fields(errors[0]).get("taskId") == payload["taskId"]
    text = errors[0].getMessage()
    assert "retention policy is lifted" in text and "replay-poison" in text and "send the document" not in text, text
    assert outcome_counts()[("verification", "poisoned")] >= 1


async def test_records_name_the_export_its_copy_and_whether_a_copy_was_sent(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, caplog: pytest.LogCaptureFixture
) -> None:
    url = exports.publish()
    response = await webhook.post(notification(url))
    assert response.status == 200

    [span] = spans("receiver.delivery")
    attributes = dict(span.attributes or {})
    # The delivery hash is the sha256 of the link (the manifest's `delivery`), shortened: never the link.
    assert attributes["receiver.delivery"] == hashlib.sha256(url.encode()).hexdigest()[:12]
    assert attributes["receiver.copySent"] is True
    assert "copyId" not in response.body and "receiver.copyId" not in attributes
    assert "receiver.error" not in attributes and "receiver.finalFailure" not in attributes
    [record] = records(caplog)
    assert record["delivery"] == attributes["receiver.delivery"]
    assert f"delivery={attributes['receiver.delivery']}" in caplog.records[-1].getMessage()


async def test_rejections_carry_their_error_code_message_and_field_names(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, caplog: pytest.LogCaptureFixture
) -> None:
    url = exports.publish()
    invalid = notification(url, exportedFileContentType=7)
    del invalid["workspaceId"]
    response = await webhook.post(invalid)
    assert response.status == 400 and response.body["error"] == "invalid-payload"
    expired = await webhook.post(notification(url, exportedFileExpiresOn="2020-01-01T00:00:00Z"))
    assert expired.status == 410

    rejected, gone = (dict(span.attributes or {}) for span in spans("receiver.delivery"))
    assert rejected["receiver.error"] == "invalid-payload" == rejected["receiver.outcome"]
    assert rejected["receiver.reason"] == response.body["message"]
    expected = list(dict.fromkeys(detail["field"] for detail in response.body["details"]))
    assert set(expected) >= {"workspaceId", "exportedFileContentType"}
    assert rejected["receiver.fields"] == ",".join(expected)
    assert rejected["receiver.taskId"] == invalid["taskId"]
    assert "receiver.copySent" not in rejected and "receiver.delivery" not in rejected  # nothing was planned
    assert gone["receiver.error"] == "link-expired" and gone["receiver.reason"] == expired.body["message"]
    exported = json.dumps([rejected, gone]) + json.dumps(records(caplog))
    assert not exports.secrets.leaks_in(exported)


def test_the_poison_depth_is_a_gauge_and_an_error_record_naming_what_to_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    report_poison_depth(3, queue="smartdocumentor-copy-verifications-poison")
    [error] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert error.name == "receiver"
    assert fields(error) == {
        "operation": "reconciliation",
        "outcome": "poison",
        "queue": "smartdocumentor-copy-verifications-poison",
        "poison_depth": 3,
        "finalFailure": True,
        "reason": "3 messages in smartdocumentor-copy-verifications-poison",
    }
    assert "replay-poison" in error.getMessage() and "holds 3 messages" in error.getMessage()
    assert poison_gauge("smartdocumentor-copy-verifications-poison") == [3]

    caplog.clear()
    report_poison_depth(0, queue="smartdocumentor-copy-verifications-poison")
    [quiet] = caplog.records
    assert quiet.levelno == logging.INFO and fields(quiet)["poison_depth"] == 0
    assert "finalFailure" not in fields(quiet)
    assert poison_gauge("smartdocumentor-copy-verifications-poison") == [0]  # a gauge: the last value


def poison_gauge(queue: str) -> list[float]:
    return [p.value for p in metric_points("receiver.poison_depth") if (p.attributes or {}).get("queue") == queue]


def test_the_oldest_pending_age_is_a_gauge_and_a_record(caplog: pytest.LogCaptureFixture) -> None:
    report_oldest_pending(3725.44)
    report_oldest_pending(None)  # nothing pending
    first, second = caplog.records
    assert first.levelno == second.levelno == logging.INFO
    assert fields(first)["oldest_pending_age_s"] == 3725.4 and fields(second)["oldest_pending_age_s"] == 0.0
    assert [p.value for p in metric_points("receiver.oldest_pending_age_s")] == [0.0]
    report_oldest_pending(61)
    assert [p.value for p in metric_points("receiver.oldest_pending_age_s")] == [61]
