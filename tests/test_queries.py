"""The KQL in infra/app/queries/ against what Application Insights would really receive.

There is no Kusto engine here, so each query is checked two ways on the envelopes that the Azure
Monitor exporter itself produces for a real run of the app (Azurite behind the fault proxy: a
stored delivery, a staged re-export that storage keeps refusing, a staged copy the queue function
finishes, a copy that fails for good, a 503 after a copy was sent, rejections, a reconciliation run):

- statically: its table exists in the capture, every ``customDimensions`` key it reads is written
  by the exporter for at least one record, and every ``toint``/``todouble``/... parses every value;
- by evaluation (tests/kql.py, the subset of KQL the files use): the rows it returns are the
  right ones (the alert matches the receiver's ERRORs and neither the host's nor another library's).

The exporter (azure-monitor-opentelemetry-exporter, the one the distro uses) sends to a capture
server on 127.0.0.1 standing in for the ingestion endpoint. The same files are the docs' code
blocks, the alert's query and the workbook's queries; the last tests hold them to that.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest
from azure.functions.queue import QueueMessage
from azure.monitor.opentelemetry.exporter import AzureMonitorLogExporter, AzureMonitorTraceExporter
from azure.storage.blob import ContainerClient
from opentelemetry.instrumentation.logging.handler import LoggingHandler  # the distro's handler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from pycep import BicepParser

import receiver.reconciliation
from receiver.reconciliation import reconcile_run
from receiver.runtime import RUNTIME
from receiver.storage import Listed, Misconfigured
from receiver.store import RETRY_BACKOFF_VARIABLE
from receiver.telemetry import report_oldest_pending, report_poison_depth
from receiver.verification import CopyStillRunning
from sim.world import World

from .conftest import EXPORT_CONTAINER, FUNCTIONS, Exports, Webhook, notification
from .faultproxy import FaultProxy, Rule, is_copy
from .kql import Query, Row, conversions, dimension_keys
from .otel import EXTRA_SPANS

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "infra" / "app"
QUERIES = APP / "queries"
QUERY_FILES = sorted(path.name for path in QUERIES.glob("*.kql"))
DOCS = ROOT / "docs" / "operations.md"
POISON_QUEUE = "smartdocumentor-copy-verifications-poison"
OTHER_LOGGER = "azure.storage.blob"  # another library's ERROR: the worker exports it too (root logger)
# A record of the Functions host itself, as it writes one in OpenTelemetry mode (docs/operations.md). The host
# is .NET and not runnable here, so this one row is written by hand (the rest come from the exporter).
HOST_ERROR: Row = {
    "timestamp": datetime.now(UTC),
    "message": "Executed 'Functions.verify_pending_copy' (Failed, Id=0f1e2d3c, Duration=1012ms)",
    "severityLevel": 3,
    "customDimensions": {"CategoryName": "Function.verify_pending_copy", "LogLevel": "Error"},
    "operation_Id": "0" * 32,
    "operation_Name": "verify_pending_copy",
    "itemType": "trace",
}


# ---- the capture: a local ingestion endpoint, and the real exporters pointed at it ----


class Capture:
    def __init__(self) -> None:
        self.envelopes: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        capture = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                items = json.loads(body)
                assert self.path.endswith("/v2.1/track"), self.path
                with capture.lock:
                    capture.envelopes.extend(items)
                answer = json.dumps({"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer.encode())

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def connection(self) -> str:
        # No credential: a local stand-in takes any instrumentation key.
        key = "0" * 8 + "-0000-4000-8000-" + "0" * 12
        return f"InstrumentationKey={key};IngestionEndpoint=http://127.0.0.1:{self.server.server_port}/"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def capture(monkeypatch: pytest.MonkeyPatch) -> Iterator[Capture]:
    """The exporters the distro installs, as the worker wires them: logs of the receiver's loggers
    (and another library's), and every span."""
    monkeypatch.setenv("APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL", "true")  # no call home
    monkeypatch.setenv("APPLICATIONINSIGHTS_SDKSTATS_DISABLED", "true")  # nor the exporter's own metrics
    running = Capture()
    provider = LoggerProvider()
    logs = AzureMonitorLogExporter(connection_string=running.connection, disable_offline_storage=True)
    provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    handler = LoggingHandler(level=logging.NOTSET, logger_provider=provider)
    loggers = [logging.getLogger("receiver"), logging.getLogger(OTHER_LOGGER)]
    for logger in loggers:
        logger.addHandler(handler)
    traces = AzureMonitorTraceExporter(connection_string=running.connection, disable_offline_storage=True)
    EXTRA_SPANS.target = SimpleSpanProcessor(traces)
    try:
        yield running
    finally:
        EXTRA_SPANS.target = None
        for logger in loggers:
            logger.removeHandler(handler)
        provider.shutdown()
        running.close()


# ---- envelopes as Application Insights tables (classic names, as the alert and workbook query them) ----


def _duration_ms(text: str) -> float:
    days, clock = text.split(".", 1)
    hours, minutes, seconds = clock.split(":")
    return ((int(days) * 24 + int(hours)) * 60 + int(minutes)) * 60_000 + float(seconds) * 1000


def tables(envelopes: list[dict[str, Any]]) -> dict[str, list[Row]]:
    found: dict[str, list[Row]] = {"traces": [], "dependencies": [], "customMetrics": [], "exceptions": []}
    for envelope in envelopes:
        base, kind, tags = envelope["data"]["baseData"], envelope["data"]["baseType"], envelope.get("tags", {})
        common: Row = {
            "timestamp": datetime.fromisoformat(envelope["time"].replace("Z", "+00:00")),
            "customDimensions": dict(base.get("properties") or {}),
            "operation_Id": tags.get("ai.operation.id"),
            "operation_ParentId": tags.get("ai.operation.parentId"),
            "operation_Name": tags.get("ai.operation.name"),
            "cloud_RoleName": tags.get("ai.cloud.role"),
            "cloud_RoleInstance": tags.get("ai.cloud.roleInstance"),
            "sdkVersion": tags.get("ai.internal.sdkVersion"),
        }
        if kind == "MessageData":
            found["traces"].append(
                common | {"message": base["message"], "severityLevel": base.get("severityLevel"), "itemType": "trace"}
            )
        elif kind == "RemoteDependencyData":
            found["dependencies"].append(
                common
                | {
                    "id": base["id"],
                    "name": base["name"],
                    "type": base.get("type"),
                    "target": base.get("target"),
                    "resultCode": base.get("resultCode"),
                    "success": base.get("success"),
                    "duration": _duration_ms(base["duration"]),
                    "itemType": "dependency",
                }
            )
        elif kind == "MetricData":
            for metric in base["metrics"]:
                found["customMetrics"].append(
                    common | {"name": metric["name"], "value": metric["value"], "itemType": "customMetric"}
                )
        elif kind == "ExceptionData":  # an exception a span recorded (CopyStillRunning: the host tries again)
            [detail] = base["exceptions"]
            found["exceptions"].append(
                common
                | {
                    "type": detail["typeName"],
                    "outerMessage": detail["message"],
                    "severityLevel": base.get("severityLevel"),
                    "itemType": "exception",
                }
            )
        else:
            raise AssertionError(f"an envelope this test does not map: {kind}")
    return found


# ---- one real run, shared by the tests of this module ----


@dataclass
class Run:
    envelopes: list[dict[str, Any]]
    started: datetime
    tasks: dict[str, str] = field(default_factory=dict)  # scenario -> taskId
    hashes: dict[str, str] = field(default_factory=dict)  # scenario -> delivery hash (12 hex)

    @property
    def tables(self) -> dict[str, list[Row]]:
        return tables(self.envelopes)

    def with_host(self) -> dict[str, list[Row]]:
        found = self.tables
        found["traces"].append(HOST_ERROR)
        return found


_RUN: list[Run] = []


def _hash(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:12]


async def _verify(message: str | None, *, dequeue_count: int = 1) -> None:
    assert message
    function = FUNCTIONS["verify_pending_copy"].get_user_function()
    with contextlib.suppress(CopyStillRunning):  # the host would put the message back
        await function(QueueMessage(id="m", body=message.encode(), dequeue_count=dequeue_count))  # type: ignore[no-untyped-call]


async def _real_run(proxied: FaultProxy, exports: Exports, webhook: Webhook, capture: Capture) -> Run:
    run = Run(capture.envelopes, datetime.now(UTC))
    busy = Rule(is_copy, 10_000, status=503, code="ServerBusy", message="busy")  # a copy or a staged block
    # D: the first export of a document is stored at once (synchronous copy).
    first = exports.publish(b"first export")
    document = notification(first)
    run.tasks["document"], run.hashes["stored"] = document["taskId"], _hash(first)
    assert (await webhook.post(document)).status == 200
    # F: a copy that fails for good: storage was busy (503, queued), then the export is gone when the
    # queue function copies it again: the final failure.
    failing_name = f"{uuid.uuid4()}/fails.pdf"
    failing_url = exports.publish(b"fails for good", name=failing_name)
    failing = notification(failing_url)
    run.tasks["failed"], run.hashes["failed"] = failing["taskId"], _hash(failing_url)
    proxied.add(busy)
    answer = await webhook.post(failing)
    assert answer.status == 503 and answer.verification is not None, answer.body
    proxied.reset()
    exports.client.get_blob_client(EXPORT_CONTAINER, failing_name).delete_blob()
    await _verify(answer.verification)

    os.environ["SYNC_COPY_MAX_MIB"] = "0"  # from here on, staged copies (restored by monkeypatch)
    os.environ["COPY_WAIT_SECONDS"] = "0"  # that cannot commit inside the answer: 202, queued
    await RUNTIME.reset()
    # E: a staged copy that the queue function finishes.
    finishing_url = exports.publish(b"finishes later")
    finishing = notification(finishing_url)
    run.tasks["finished"], run.hashes["finished"] = finishing["taskId"], _hash(finishing_url)
    answer = await webhook.post(finishing)
    assert answer.status == 202, answer.body
    await _verify(answer.verification)
    # D again: a re-export of the same document (same blob) whose staging storage keeps refusing: stuck.
    second = exports.publish(b"second export of the same document")
    run.hashes["stuck"] = _hash(second)
    stuck = await webhook.post(notification(second, taskId=document["taskId"]))
    assert stuck.status == 202, stuck.body
    proxied.add(busy)
    await _verify(stuck.verification)  # not finished: the host tries again later
    # G: storage refuses the copy request (ServerBusy): a 503 after a copy was sent, tracked.
    os.environ["SYNC_COPY_MAX_MIB"] = "256"
    os.environ["COPY_WAIT_SECONDS"] = "1"
    await RUNTIME.reset()
    refused_url = exports.publish(b"refused")
    refused = notification(refused_url)
    run.tasks["refused"], run.hashes["refused"] = refused["taskId"], _hash(refused_url)
    answer = await webhook.post(refused)
    assert answer.status == 503 and busy.fired and answer.verification is not None, answer.body
    proxied.reset()
    # Rejections: an invalid payload and an expired link.
    invalid = notification(exports.publish(b"x"))
    del invalid["workspaceId"]
    run.tasks["invalid"] = invalid["taskId"]
    assert (await webhook.post(invalid)).status == 400
    expired = notification(exports.publish(b"y"), exportedFileExpiresOn="2020-01-01T00:00:00Z")
    assert (await webhook.post(expired)).status == 410
    # A reconciliation run, and what it reports (the emitting code is receiver/reconciliation.py's).
    os.environ["RECONCILE_AFTER_MINUTES"] = "0"
    await RUNTIME.reset()
    await reconcile_run(runtime=RUNTIME, now=datetime.now(UTC))
    report_poison_depth(2, queue=POISON_QUEUE)
    report_oldest_pending(5400.0)
    # Another library's ERROR, which the worker's root handler exports too.
    logging.getLogger(OTHER_LOGGER).error("a library's error, not the receiver's")
    return run


@pytest.fixture
async def run(
    proxied: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    capture: Capture,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Run]:
    monkeypatch.setenv("SYNC_COPY_MAX_MIB", "256")
    monkeypatch.setenv("COPY_WAIT_SECONDS", "1")
    monkeypatch.setenv("RECONCILE_AFTER_MINUTES", "10")
    monkeypatch.setenv(RETRY_BACKOFF_VARIABLE, "0.01")
    if not _RUN:
        recorded = await _real_run(proxied, exports, webhook, capture)
        _RUN.append(Run(list(recorded.envelopes), recorded.started, recorded.tasks, recorded.hashes))
        assert not exports.secrets.leaks_in(json.dumps(_RUN[0].envelopes)), "a SAS signature reached an envelope"
    yield _RUN[0]


# monitoring.bicep's scheduled query rules and the file each one runs.
ALERT_QUERIES = {"errorAlert": "alert-errors.kql", "heartbeatAlert": "reconciliation-heartbeat.kql"}


def query(name: str, **parameters: str) -> Query:
    text = (QUERIES / name).read_text()
    for key, value in parameters.items():
        text = text.replace("{" + key + "}", value)
    return Query(text)


def receiver_traces(found: dict[str, list[Row]], **dimensions: str) -> list[Row]:
    return [
        row
        for row in found["traces"]
        if all(row["customDimensions"].get(f"receiver.{key}") == value for key, value in dimensions.items())
    ]


# ---- every query reads only what the exporter writes ----


@pytest.mark.parametrize("name", QUERY_FILES)
async def test_a_query_reads_only_tables_columns_and_dimensions_the_exporter_writes(name: str, run: Run) -> None:
    text = (QUERIES / name).read_text()
    parsed = query(name, taskId=run.tasks["document"])
    found = run.tables
    rows = found[parsed.table]
    assert rows, f"{name}: the real run wrote nothing to {parsed.table}"
    written = {key for row in rows for key in row["customDimensions"]}
    missing = dimension_keys(text) - written
    assert not missing, f"{name} reads customDimensions the exporter never wrote: {sorted(missing)}"
    for function, key in conversions(text):
        values = [row["customDimensions"][key] for row in rows if key in row["customDimensions"]]
        assert all(isinstance(value, str) for value in values)  # the exporter writes every dimension as text
        parsed_values = Query(f'{parsed.table} | project v = {function}(customDimensions["{key}"])').run(
            {parsed.table: [r for r in rows if key in r["customDimensions"]]}, now=datetime.now(UTC)
        )
        assert None not in [row["v"] for row in parsed_values], f"{name}: {function}() cannot read every {key}"
    for compared in re.findall(r'customDimensions\["([^"]+)"\]\) =~ "true"', text):  # booleans, as text
        flags = {row["customDimensions"][compared] for row in rows if compared in row["customDimensions"]}
        assert flags <= {"True", "False"} and "True" in flags, (compared, flags)
    # It runs on the run's rows (an unknown column would raise) and on the host's record too.
    parsed.run(run.with_host(), now=datetime.now(UTC) + timedelta(hours=2))


def test_records_and_spans_land_where_the_docs_say(run: Run) -> None:
    found = run.tables
    stored = receiver_traces(found, operation="delivery", outcome="stored")
    assert [row["severityLevel"] for row in stored] == [1]
    assert stored[0]["customDimensions"]["logger_name"] == "receiver"
    assert stored[0]["customDimensions"]["receiver.delivery"] == run.hashes["stored"]
    [failure] = receiver_traces(found, operation="verification", outcome="source-failed")
    assert failure["severityLevel"] == 3 and failure["customDimensions"]["receiver.finalFailure"] == "True"
    spans = [row for row in found["dependencies"] if row["name"] == "receiver.delivery"]
    assert spans and all(row["type"] == "InProc" for row in spans)
    # A span carries the record's fields; a delivery that answered 5xx is a failed dependency.
    by_hash = {row["customDimensions"].get("receiver.delivery"): row for row in spans}
    assert by_hash[run.hashes["stored"]]["success"] is True
    assert by_hash[run.hashes["refused"]]["success"] is False
    assert by_hash[run.hashes["stored"]]["operation_Id"] == stored[0]["operation_Id"]
    reconciliation = receiver_traces(found, operation="reconciliation", outcome="run")
    assert not reconciliation  # the summary record says `completed` when nothing failed
    [summary] = receiver_traces(found, operation="reconciliation", outcome="completed")
    # The four tasks with records, all changed in the last minutes, are checked; the two still copying
    # (the stuck re-export and the refused copy) wait for their queue messages.
    assert "found=4" in summary["customDimensions"]["receiver.reason"]
    assert "'waiting': 2" in summary["customDimensions"]["receiver.reason"]


# ---- what each query returns on that run ----


def test_the_alert_matches_the_receivers_errors_and_not_the_hosts_or_another_librarys(run: Run) -> None:
    found = run.with_host()
    errors = [row for row in found["traces"] if row["severityLevel"] >= 3]
    assert HOST_ERROR in errors and any(r["customDimensions"].get("logger_name") == OTHER_LOGGER for r in errors)
    rows = query("alert-errors.kql").run(found, now=datetime.now(UTC))
    assert sorted((row["taskId"], row["outcome"]) for row in rows) == sorted(
        [(run.tasks["failed"], "source-failed"), ("", "poison")]
    )
    # The old filter (customDimensions.Category) matched every one of them, the host's first.
    assert not any("Category" in row["customDimensions"] for row in errors)


def test_final_failures_give_the_task_and_the_reason(run: Run) -> None:
    rows = query("final-failures.kql").run(run.with_host(), now=datetime.now(UTC))
    [failed] = [row for row in rows if row["outcome"] == "source-failed"]
    assert failed["taskId"] == run.tasks["failed"] and failed["delivery"] == run.hashes["failed"]
    assert "no longer exists" in failed["reason"] and "Export the document again" in failed["reason"]
    [poison] = [row for row in rows if row["outcome"] == "poison"]
    assert "replay-poison" in poison["message"] and poison["operation"] == "reconciliation"
    assert rows == sorted(rows, key=lambda row: row["timestamp"], reverse=True)


def test_pending_lists_the_stuck_reexport_and_nothing_settled_or_never_sent(run: Run) -> None:
    found = run.tables
    # The stuck re-export shares its blob with the stored first export: matching by blob hid it.
    [stuck_answer] = receiver_traces(found, operation="delivery", delivery=run.hashes["stuck"])
    [stored_answer] = receiver_traces(found, operation="delivery", delivery=run.hashes["stored"])
    assert stuck_answer["customDimensions"]["receiver.blob"] == stored_answer["customDimensions"]["receiver.blob"]
    assert stored_answer["timestamp"] < stuck_answer["timestamp"]
    [refused] = receiver_traces(found, operation="delivery", delivery=run.hashes["refused"])
    assert refused["customDimensions"]["receiver.copySent"] == "True"
    assert refused["customDimensions"]["receiver.outcome"] == "storage-unavailable"
    later = datetime.now(UTC) + timedelta(hours=2)

    assert query("pending-over-an-hour.kql").run(found, now=datetime.now(UTC)) == []  # not an hour yet
    rows = query("pending-over-an-hour.kql").run(found, now=later)
    assert [(row["delivery"], row["taskId"]) for row in rows] == [
        (run.hashes["stuck"], run.tasks["document"]),  # oldest first
        (run.hashes["refused"], run.tasks["refused"]),
    ]
    # The queue function's try could not confirm it (storage refused its blocks): still copying.
    assert (rows[0]["lastOperation"], rows[0]["lastOutcome"]) == ("verification", "unconfirmed")
    # The 503 after a copy was sent: tracked, its queue message not run yet. (The reconciliation's records
    # name the task, not a delivery, so they do not change a delivery's last word here.)
    assert (rows[1]["lastOperation"], rows[1]["lastOutcome"]) == ("delivery", "storage-unavailable")
    # The copy that failed for good and the one the queue function finished are settled: not listed.
    assert not {run.hashes["failed"], run.hashes["finished"]} & {row["delivery"] for row in rows}

    # The same 503 had it not sent a copy (copySent False): not listed.
    never_sent = dict(refused, customDimensions=refused["customDimensions"] | {"receiver.copySent": "False"})
    traces = [never_sent if row is refused else row for row in found["traces"]]
    assert [row["delivery"] for row in query("pending-over-an-hour.kql").run({"traces": traces}, now=later)] == [
        run.hashes["stuck"]
    ]
    # By delivery hash, not by blob: the first export's notification sent again after the re-export
    # (answered `stored` or `duplicate`) settles the first export only.
    resend = dict(stored_answer, timestamp=datetime.now(UTC) + timedelta(minutes=5))
    rows = query("pending-over-an-hour.kql").run({"traces": [*found["traces"], resend]}, now=later)
    assert run.hashes["stuck"] in [row["delivery"] for row in rows]
    # Settlement is by time: a settling record after the last one ends the story, one before it does not.
    settling = dict(
        stuck_answer,
        customDimensions=stuck_answer["customDimensions"]
        | {"receiver.operation": "verification", "receiver.outcome": "stored"},
    )
    after = dict(settling, timestamp=datetime.now(UTC) + timedelta(minutes=5))
    before = dict(settling, timestamp=stuck_answer["timestamp"] - timedelta(seconds=1))
    for extra, listed in ((after, False), (before, True)):
        rows = query("pending-over-an-hour.kql").run({"traces": [*found["traces"], extra]}, now=later)
        assert (run.hashes["stuck"] in [row["delivery"] for row in rows]) is listed
    # A queue try a retention policy or legal hold refused (`held`: tried again until it is lifted) settles nothing.
    held = dict(after, customDimensions=after["customDimensions"] | {"receiver.outcome": "held"})
    rows = query("pending-over-an-hour.kql").run({"traces": [*found["traces"], held]}, now=later)
    assert [row["lastOutcome"] for row in rows if row["delivery"] == run.hashes["stuck"]] == ["held"], rows

    by_age = query("pending-by-age.kql").run(found, now=datetime.now(UTC))
    assert [(row["ageBucket"], row["deliveries"]) for row in by_age] == [("a. under 10 min", 2)]
    by_age = query("pending-by-age.kql").run(found, now=later)
    assert [(row["ageBucket"], row["deliveries"]) for row in by_age] == [("c. 1-6 h", 2)]


def test_deliveries_per_hour_and_duration_count_the_webhook_answers(run: Run) -> None:
    rows = query("deliveries-per-hour.kql").run(run.tables, now=datetime.now(UTC))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["outcome"]] = counts.get(row["outcome"], 0) + row["deliveries"]
    assert counts == {"stored": 1, "copying": 2, "storage-unavailable": 2, "invalid-payload": 1, "link-expired": 1}
    [hour, *more] = query("delivery-duration.kql").run(run.tables, now=datetime.now(UTC))
    for row in [hour, *more]:
        assert 0 < row["p50"] <= row["p95"] and row["avg_requests"] > 0


def test_the_reconciliation_panel_shows_the_poison_depth_and_oldest_pending(run: Run) -> None:
    rows = query("reconciliation-gauges.kql").run(run.tables, now=datetime.now(UTC))
    assert max(row["poisonDepth"] or 0 for row in rows) == 2
    assert max(row["oldestPendingMinutes"] or 0 for row in rows) == 90


def test_the_task_lookup_tells_a_documents_story(run: Run) -> None:
    rows = query("task-lookup.kql", taskId=run.tasks["document"]).run(run.tables, now=datetime.now(UTC))
    story = [(row["operation"], row["outcome"], row["delivery"]) for row in rows]
    assert story[:3] == [
        ("delivery", "stored", run.hashes["stored"]),
        ("delivery", "copying", run.hashes["stuck"]),
        ("verification", "unconfirmed", run.hashes["stuck"]),
    ]
    assert rows[0]["httpStatus"] == 200 and rows[1]["httpStatus"] == 202
    invalid = query("task-lookup.kql", taskId=run.tasks["invalid"]).run(run.tables, now=datetime.now(UTC))
    assert [(row["error"], row["fields"]) for row in invalid] == [("invalid-payload", "workspaceId")]


# ---- one source: the docs, the alert and the workbook use these files ----


def kusto_blocks(markdown: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```kusto\n(.*?)```", markdown, re.DOTALL)]


def test_the_docs_show_every_query_file_and_no_other_query() -> None:
    blocks = kusto_blocks(DOCS.read_text())
    files = {name: (QUERIES / name).read_text().strip() for name in QUERY_FILES}
    assert sorted(blocks) == sorted(files.values()), "docs/operations.md and infra/app/queries/ differ"
    for name in QUERY_FILES:
        assert f"`{name}`" in DOCS.read_text(), f"the docs do not name {name}"


def _bicep(rel: str) -> dict[str, Any]:
    return cast(dict[str, Any], BicepParser().parse(file_path=APP / rel))


def _value(node: Any, variables: dict[str, Any], base: Path) -> Any:
    """A Bicep value from pycep's tree: literals, objects, arrays, `var.key`, loadTextContent."""
    if isinstance(node, dict) and "function" in node:
        function = node["function"]
        assert function["type"] == "load_text_content", function
        return (base / function["parameters"]["file_path"]).read_text()
    if isinstance(node, dict) and "operator" in node:
        operator = node["operator"]
        assert operator["type"] == "property_accessor", operator
        container = _value(variables[operator["operands"]["operand_1"]]["value"], variables, base)
        return container[operator["operands"]["operand_2"]]
    if isinstance(node, dict):  # a quoted key ('$schema') keeps its quotes in pycep's tree
        return {key.strip("'"): _value(value, variables, base) for key, value in node.items()}
    if isinstance(node, list):
        return [_value(item, variables, base) for item in node]
    if isinstance(node, str):
        return node.replace("\\n", "\n").replace("\\'", "'")
    return node


def workbook() -> dict[str, Any]:
    tree = _bicep("workbook.bicep")
    [resource] = tree["resources"].values()
    assert resource["type"] == "Microsoft.Insights/workbooks"
    properties = resource["config"]["properties"]
    assert properties["category"] == "workbook" and resource["config"]["kind"] == "shared"
    assert properties["version"] == "Notebook/1.0"  # what workbooks expect, not '1.0'
    assert properties["sourceId"] == "applicationInsightsId"
    serialized = properties["serializedData"]["function"]
    assert serialized["type"] == "string"  # Bicep serializes the object to JSON
    content = _value(tree["variables"][serialized["parameters"]["value_to_convert"]]["value"], tree["variables"], APP)
    return cast(dict[str, Any], json.loads(json.dumps(content)))


def test_the_workbook_has_the_notebook_shape_and_only_tested_queries() -> None:
    content = workbook()
    assert content["version"] == "Notebook/1.0"
    assert content["$schema"].endswith("/schema/workbook.json")
    assert content["fallbackResourceIds"] == ["applicationInsightsId"]
    names = [item["name"] for item in content["items"]]
    assert len(names) == len(set(names))
    files = {(QUERIES / name).read_text(): name for name in QUERY_FILES}
    used = set()
    for item in content["items"]:
        assert item["type"] in (1, 3, 9), item
        body = item["content"]
        if item["type"] == 1:
            assert isinstance(body["json"], str)
        elif item["type"] == 3:
            assert body["version"] == "KqlItem/1.0" and body["queryType"] == 0
            assert body["resourceType"] == "microsoft.insights/components"
            assert body["visualization"] in ("timechart", "table", "barchart")
            assert body["query"] in files, f"{item['name']}: not one of the tested queries"
            used.add(files[body["query"]])
        else:
            assert body["version"] == "KqlParameterItem/1.0"
            [parameter] = body["parameters"]
            assert (parameter["name"], parameter["type"]) == ("taskId", 1)  # a text box
            assert re.fullmatch(r"[0-9a-f-]{36}", parameter["id"])
    # Every panel the dashboard promises, each from its file; only the alerts' queries are elsewhere.
    assert used == set(QUERY_FILES) - set(ALERT_QUERIES.values())
    lookup = next(item for item in content["items"] if item["name"] == "task-lookup")
    assert "{taskId}" in lookup["content"]["query"]
    assert lookup["conditionalVisibility"]["parameterName"] == "taskId"
    assert names.index("task-parameter") < names.index("task-lookup")


def alert_rules() -> dict[str, dict[str, Any]]:
    """monitoring.bicep's scheduled query rules by resource name: properties, with the query's text."""
    monitoring = _bicep("monitoring.bicep")
    rules = {}
    for name, resource in monitoring["resources"].items():
        if resource["type"] != "Microsoft.Insights/scheduledQueryRules":
            continue
        properties = dict(resource["config"]["properties"])
        [criterion] = properties["criteria"]["allOf"]
        properties["queryText"] = _value(monitoring["variables"][criterion["query"]]["value"], {}, APP)
        properties["criterion"] = criterion
        rules[name] = properties
    return rules


def test_the_alert_and_the_workbook_are_deployed_from_the_files() -> None:
    rules = alert_rules()
    assert set(rules) == set(ALERT_QUERIES)
    for name, file in ALERT_QUERIES.items():
        assert rules[name]["queryText"] == (QUERIES / file).read_text()
    main = cast(dict[str, Any], BicepParser().parse(file_path=ROOT / "infra" / "main.bicep"))
    module = main["modules"]["workbook"]
    assert module["detail"]["path"] == "app/workbook.bicep"
    assert module["config"]["params"]["applicationInsightsId"] == {
        "operator": {
            "type": "property_accessor",
            "operands": {
                "operand_1": "monitoring",
                "operand_2": {
                    "operator": {
                        "type": "property_accessor",
                        "operands": {"operand_1": "outputs", "operand_2": "applicationInsightsId"},
                    }
                },
            },
        }
    }


# ---- no sampling: the deployed settings, run through the real distro ----

_BURST = """
import logging, sys
from azure.monitor.opentelemetry import configure_azure_monitor
configure_azure_monitor(connection_string=sys.argv[1], logger_name="receiver", disable_offline_storage=True,
                        enable_live_metrics=False)
from opentelemetry import trace
from receiver.telemetry import recording
logging.getLogger("receiver").setLevel(logging.INFO)
for number in range(100):
    with recording("delivery") as record:
        record.outcome, record.task_id = "stored", f"burst-{number}"
from receiver.telemetry import report_oldest_pending, report_poison_depth
report_poison_depth(2, queue="smartdocumentor-copy-verifications-poison")
report_oldest_pending(60)
trace.get_tracer_provider().force_flush()
from opentelemetry._logs import get_logger_provider
from opentelemetry.metrics import get_meter_provider
get_logger_provider().force_flush()
get_meter_provider().force_flush()
"""


def _app_setting(name: str) -> str:
    tree = cast(dict[str, Any], BicepParser().parse(file_path=APP / "api.bicep"))
    return cast(str, tree["variables"]["hostSettings"]["value"][name])


def _burst(settings: dict[str, str]) -> list[dict[str, Any]]:
    """What the distro, configured as the worker does, sends for 100 records and one reconciliation's
    reports, in a process of its own (it sets the global providers)."""
    capture = Capture()
    try:
        env = {key: value for key, value in os.environ.items() if not key.startswith(("OTEL_", "APPLICATIONINSIGHTS_"))}
        env |= settings | {
            "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
            "APPLICATIONINSIGHTS_SDKSTATS_DISABLED": "true",
            "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "otel",  # no cloud metadata probes
            "PYTHONPATH": str(ROOT),
        }
        subprocess.run([sys.executable, "-c", _BURST, capture.connection], env=env, cwd=ROOT, check=True, timeout=120)
        return list(capture.envelopes)
    finally:
        capture.close()


def _counts(envelopes: list[dict[str, Any]]) -> tuple[int, int]:
    """(spans of the burst's records, log records)"""
    spans = [row for row in tables(envelopes)["dependencies"] if row["name"] == "receiver.delivery"]
    records = [row for row in tables(envelopes)["traces"] if row["message"].startswith("delivery stored")]
    return len(spans), len(records)


def test_the_deployed_settings_keep_every_span_and_record_of_a_burst() -> None:
    settings = {name: _app_setting(name) for name in ("OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG")}
    assert settings == {"OTEL_TRACES_SAMPLER": "microsoft.fixed_percentage", "OTEL_TRACES_SAMPLER_ARG": "1.0"}
    envelopes = _burst(settings)
    assert _counts(envelopes) == (100, 100)
    # Without them the distro's default (a rate limit) drops most of the burst's spans: the test can fail.
    default_spans, default_records = _counts(_burst({}))
    assert default_spans < 100 and default_records == 100
    # The reconciliation's gauges land in customMetrics under their names (the records in traces).
    metrics = {row["name"]: row for row in tables(envelopes)["customMetrics"]}
    assert metrics["receiver.poison_depth"]["value"] == 2
    assert metrics["receiver.poison_depth"]["customDimensions"]["queue"] == POISON_QUEUE
    assert metrics["receiver.oldest_pending_age_s"]["value"] == 60
    gauges = query("reconciliation-gauges.kql").run(tables(envelopes), now=datetime.now(UTC))
    assert [(row["poisonDepth"], row["oldestPendingMinutes"]) for row in gauges] == [(2, 1)]


# ---- the safety net's own failures, its cadence against the alert's window, its heartbeat ----
# The reconciliation runs on the in-memory world (sim/world.py: the real code on MemoryStorage); its
# records go through the real exporter to the capture, as above.

SCHEDULE = timedelta(minutes=10)  # RECONCILE_SCHEDULE's default, checked against main.bicep below
SLOW_RUN = timedelta(minutes=5)  # host.json's functionTimeout: the longest a run can take to report
REFUSED = "This request is not authorized to perform this operation using this permission."


def _duration(text: str) -> timedelta:
    match = re.fullmatch(r"PT(?:(\d+)H)?(?:(\d+)M)?", text)
    assert match, text
    return timedelta(hours=int(match.group(1) or 0), minutes=int(match.group(2) or 0))


def within(found: dict[str, list[Row]], start: datetime, end: datetime) -> dict[str, list[Row]]:
    """The rows a scheduled query rule's window (start, end] hands its query."""
    return {table: [row for row in rows if start < row["timestamp"] <= end] for table, rows in found.items()}


def _shifted(rows: list[Row], to: datetime) -> list[Row]:
    """One run's rows moved in time as a whole, so that its first row is at ``to``."""
    first = min(row["timestamp"] for row in rows)
    return [dict(row, timestamp=row["timestamp"] - first + to) for row in rows]


async def _runs(
    capture: Capture, monkeypatch: pytest.MonkeyPatch, *, depth: int, refuse: bool = False, times: int = 1
) -> list[list[Row]]:
    """``times`` reconciliation runs on the in-memory world, the poison queue holding ``depth``
    messages; with ``refuse`` storage refuses the listing of the task records (403, as without the
    role). Each run's trace rows as the exporter sent them."""
    world = World.make()

    async def poison_depth(environ: dict[str, str] | None) -> int | None:
        return depth

    monkeypatch.setattr(receiver.reconciliation, "_poison_depth", poison_depth)
    if refuse:

        def refused(prefix: str) -> AsyncIterator[Listed]:
            async def listing() -> AsyncIterator[Listed]:
                raise Misconfigured(REFUSED, code="AuthorizationPermissionMismatch", status=403)
                yield  # an async generator that fails at its first item, as the SDK's pager does

            return listing()

        monkeypatch.setattr(world.storage, "list", refused)
    runs = []
    for _ in range(times):
        before = len(capture.envelopes)
        report = await reconcile_run(runtime=world.runtime, now=world.now, environ={})
        assert (report.failed is not None) is refuse and report.poison_depth == depth
        runs.append(tables(capture.envelopes[before:])["traces"])
    return runs


async def test_a_run_storage_refuses_is_on_the_alert_naming_what_to_check_and_the_poison_report_still_runs(
    capture: Capture, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="receiver")
    [rows] = await _runs(capture, monkeypatch, depth=3, refuse=True)
    found = {"traces": rows}
    alerted = query("alert-errors.kql").run(found, now=datetime.now(UTC))
    assert sorted(row["outcome"] for row in alerted) == ["failed", "poison"]  # the finally ran too
    [failed] = [row for row in alerted if row["outcome"] == "failed"]
    assert failed["taskId"] == ""  # the run's own record, not a task's
    for what in ("Storage Blob Data Owner", "network rules", "account and container exist", REFUSED):
        assert what in failed["message"], what
    [record] = receiver_traces(found, operation="reconciliation", outcome="failed")
    assert record["severityLevel"] == 3 and record["customDimensions"]["receiver.finalFailure"] == "True"
    assert record["customDimensions"]["logger_name"] == "receiver"
    # The final-failures panel lists it with its reason; no completed run: the heartbeat has no row.
    listed = {row["outcome"]: row for row in query("final-failures.kql").run(found, now=datetime.now(UTC))}
    assert listed["failed"]["operation"] == "reconciliation" and "Storage Blob Data Owner" in listed["failed"]["reason"]
    assert query("reconciliation-heartbeat.kql").run(found, now=datetime.now(UTC)) == []
    # An unexpected exception (not storage's) is an ERROR run record too.
    monkeypatch.setattr(receiver.reconciliation, "_work", _raises)
    before = len(capture.envelopes)
    report = await reconcile_run(runtime=World.make().runtime, now=datetime.now(UTC), environ={})
    assert report.failed == "ZeroDivisionError"
    later = tables(capture.envelopes[before:])
    assert sorted(row["outcome"] for row in query("alert-errors.kql").run(later, now=datetime.now(UTC))) == [
        "failed",
        "poison",
    ]


async def _raises(*args: Any, **kwargs: Any) -> None:
    raise ZeroDivisionError


async def test_a_standing_poison_queue_keeps_the_alert_fired_between_runs(
    capture: Capture, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Two runs' records, the second as late as a run can report (the schedule plus a slow run): every
    evaluation of the deployed rule, at any minute from the first run until the run after the second
    would report, finds an ERROR in its window, so the alert stays fired instead of flapping."""
    caplog.set_level(logging.INFO, logger="receiver")
    first, second = await _runs(capture, monkeypatch, depth=3, times=2)
    start = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    gap = SCHEDULE + SLOW_RUN
    found = {"traces": _shifted(first, start) + _shifted(second, start + gap)}
    errors = query("alert-errors.kql").run(found, now=start)
    assert [row["outcome"] for row in errors] == ["poison", "poison"]  # the poison ERROR of each run
    first_error = min(row["timestamp"] for row in errors)

    rule = alert_rules()["errorAlert"]
    window, every = _duration(rule["windowSize"]), _duration(rule["evaluationFrequency"])
    assert every <= timedelta(minutes=5) and window >= gap  # a new ERROR alerts soon; a standing one stays

    def silent(window: timedelta) -> list[datetime]:
        """Evaluation times (any minute: the rule's phase is not ours) whose window finds no row."""
        times = [first_error + timedelta(minutes=minute) for minute in range(int((2 * gap) / timedelta(minutes=1)))]
        return [t for t in times if not query("alert-errors.kql").run(within(found, t - window, t), now=t)]

    assert silent(window) == []
    # Both runs' windows, each on its own, return the run's rows.
    for at in (start, start + gap):
        assert query("alert-errors.kql").run(within(found, at - window, at + timedelta(seconds=1)), now=at)
    # The old 5-minute window: most evaluations between two runs find nothing, so it resolved and
    # fired again every run.
    assert len(silent(timedelta(minutes=5))) > 10


async def test_the_heartbeat_fires_when_no_run_completed_for_twice_the_schedule(
    capture: Capture, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="receiver")
    first, second = await _runs(capture, monkeypatch, depth=3, times=2)
    [refused] = await _runs(capture, monkeypatch, depth=0, refuse=True)
    start = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    found = {
        "traces": _shifted(first, start) + _shifted(second, start + SCHEDULE) + _shifted(refused, start + 2 * SCHEDULE)
    }
    rule = alert_rules()["heartbeatAlert"]
    assert rule["queryText"] == (QUERIES / "reconciliation-heartbeat.kql").read_text()
    assert (rule["criterion"]["operator"], rule["criterion"]["threshold"]) == ("LessThan", 1)  # no row: fire
    assert rule["criterion"]["timeAggregation"] == "Count" and rule["autoMitigate"] is True
    window, every = _duration(rule["windowSize"]), _duration(rule["evaluationFrequency"])
    lookback = timedelta(minutes=25)
    assert "ago(25m)" in rule["queryText"] and window >= lookback  # the query looks back itself
    assert 2 * SCHEDULE <= lookback <= 2 * SCHEDULE + SLOW_RUN and every <= SCHEDULE

    def rows(at: datetime) -> list[Row]:
        return query("reconciliation-heartbeat.kql").run(within(found, at - window, at), now=at)

    # Completed runs at 0 and 10 minutes (a failed one at 20): no alert until 25 minutes after the last.
    for minute in range(1, 35):
        assert rows(start + timedelta(minutes=minute)), minute
    assert rows(start + timedelta(minutes=36)) == []  # fired: nothing completed since minute 10
    [last] = rows(start + timedelta(minutes=12))[-1:]
    assert "poison=3" in last["summary"] and "found=0" in last["summary"]

    # The workbook's tile: the last completed run with its summary, and the last failed one with its reason.
    now = start + timedelta(minutes=40)
    tile = query("reconciliation-last-run.kql").run(found, now=now)
    assert [row["outcome"] for row in tile] == ["failed", "completed"]
    assert start + SCHEDULE <= tile[1]["lastRun"] < start + SCHEDULE + timedelta(minutes=1)
    assert 29 < tile[1]["minutesAgo"] <= 30 and "poison=3" in tile[1]["summary"]
    assert "Storage Blob Data Owner" in tile[0]["summary"]


def test_the_alert_windows_follow_the_reconciliation_schedule() -> None:
    """The windows above assume the default schedule; a deployment that changes it must change them."""
    main = cast(dict[str, Any], BicepParser().parse(file_path=ROOT / "infra" / "main.bicep"))
    assert main["parameters"]["reconcileSchedule"]["default"] == "0 */10 * * * *"
    assert timedelta(minutes=5) == SLOW_RUN and json.loads((ROOT / "host.json").read_text())["functionTimeout"] == (
        "00:05:00"
    )
    allowed = {5, 10, 15, 30, 45, 60, 120, 180, 240, 300, 360, 1440, 2880}  # Azure's window sizes, in minutes
    for rule in alert_rules().values():
        assert _duration(rule["windowSize"]) / timedelta(minutes=1) in allowed


# ---- an operator's actions: the command line sends its records when told where ----

_OPERATOR = """
import asyncio, sys
from ops.cli import main
from tests.test_ops import Ops
ops = Ops()
asyncio.run(ops.accept(ops.world.export("task-1")))  # a copy whose queue message is lost
argv = ["fail", "--task", "task-1", "--reason", "lost; re-exported by hand"]
sys.exit(main(argv, storage=ops.world.storage, settings=ops.world.settings, queues=ops.queues, now=ops.world.now))
"""


def _operator_fail(settings: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m ops fail`` on the in-memory world, in a process of its own (the distro sets the
    global providers), through the console entry point an operator runs."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OTEL_", "APPLICATIONINSIGHTS_"))}
    env |= settings | {
        "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
        "APPLICATIONINSIGHTS_SDKSTATS_DISABLED": "true",
        "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "otel",  # no cloud metadata probes
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.run(
        [sys.executable, "-c", _OPERATOR], env=env, cwd=ROOT, capture_output=True, text=True, check=False, timeout=120
    )


def test_an_operators_fail_is_the_same_error_record_on_the_alert() -> None:
    capture = Capture()
    try:
        ran = _operator_fail({"APPLICATIONINSIGHTS_CONNECTION_STRING": capture.connection})
        found = tables(list(capture.envelopes))  # sent before the process exited
    finally:
        capture.close()
    assert ran.returncode == 0 and "Traceback" not in ran.stderr, ran.stderr
    [printed] = [line for line in ran.stderr.splitlines() if line.startswith("ERROR receiver: operator fail")]
    [row] = query("alert-errors.kql").run(found, now=datetime.now(UTC))
    assert (row["taskId"], row["outcome"]) == ("task-1", "operator-failed")
    assert printed == f"ERROR receiver: {row['message']}"  # the record it printed, word for word
    [record] = found["traces"]
    assert record["severityLevel"] == 3 and record["cloud_RoleName"] == "smartdocumentor-ops"
    dimensions = record["customDimensions"]
    assert dimensions["logger_name"] == "receiver" and dimensions["receiver.finalFailure"] == "True"
    assert dimensions["receiver.reason"] == "lost; re-exported by hand"
    assert not found["dependencies"] and not found["customMetrics"]  # records only
    # The task's story in Logs has the operator's step too.
    story = query("task-lookup.kql", taskId="task-1").run(found, now=datetime.now(UTC))
    assert [(row["operation"], row["outcome"]) for row in story] == [("operator", "operator-failed")]

    # Without the variable nothing is configured: the same record, on stderr only.
    alone = _operator_fail({})
    assert alone.returncode == 0 and printed.split(" duration")[0] in alone.stderr


def test_only_the_command_line_configures_the_exporter() -> None:
    """The Functions worker configures Azure Monitor in the app; a second configuration there would
    send every record twice. The command line does it in its entry point, and only when told where."""
    from ops.telemetry import configure

    for path in [ROOT / "function_app.py", *sorted((ROOT / "receiver").glob("*.py"))]:
        text = path.read_text()
        assert "configure_azure_monitor(" not in text and "import configure_azure_monitor" not in text, path
    assert configure({}) is None and configure({"APPLICATIONINSIGHTS_CONNECTION_STRING": " "}) is None
    cli = (ROOT / "ops" / "cli.py").read_text()
    assert cli.count("telemetry.configure(") == 1 and "telemetry.configure(os.environ)" in cli.split("def main(")[1]


# ---- the exporter's floor writes what the queries filter on ----

EXPORTER = "azure-monitor-opentelemetry-exporter"
# The first release that writes a log record's Python logger as customDimensions.logger_name (the
# alert's and final-failures' filter); 1.0.0b36 to 1.0.0b51 write none (read in their wheels).
FIRST_WITH_LOGGER_NAME = "1.0.0b52"


def test_the_exporter_floor_writes_the_logger_name_and_make_test_all_runs_the_queries_on_it() -> None:
    """This module runs on the installed exporter; `make test-all`'s session exporter_floor runs it
    (and tests/test_telemetry.py) again with exactly the floor requirements.txt allows."""
    import importlib.metadata

    from packaging.version import Version

    [floor] = re.findall(rf"^{re.escape(EXPORTER)}>=([^,\s]+),", (ROOT / "requirements.txt").read_text(), re.MULTILINE)
    assert Version(floor) >= Version(FIRST_WITH_LOGGER_NAME)
    assert Version(importlib.metadata.version(EXPORTER)) >= Version(floor)
    noxfile = (ROOT / "noxfile.py").read_text()
    assert 'nox.options.sessions = ["tests", "exporter_floor"]' in noxfile
    assert 'f"{EXPORTER}=={floor}"' in noxfile and '"tests/test_queries.py"' in noxfile
