"""How many bytes of Application Insights telemetry one delivery sends: the input to docs/cost.md.

Measured, not estimated: the real Azure Monitor distro (azure-monitor-opentelemetry, configured the way
the Functions worker does it: `configure_azure_monitor(logger_name="")`, every trace kept as
OTEL_TRACES_SAMPLER=microsoft.fixed_percentage / 1.0 asks) exports to an ingestion endpoint on
127.0.0.1 that this script runs, and the script counts the bytes of the JSON envelopes it receives
(`/v2.1/track`, gunzipped if the exporter compressed them). The deliveries are the real function's
(`handle_delivery`) against Azurite, so the records are exactly what the receiver and the Azure SDK's
tracing produce: the receiver's span and log record, and one dependency per storage request.

Not measured here, added in docs/cost.md: the `requests` record the Functions host writes per
invocation (this script sends one stand-in server span per delivery for its size, named as such), and
what Log Analytics bills, which is the stored record's size, not the envelope's (close to it; the
envelope carries field names and the instrumentation key on every item).

    .venv/bin/python -m bench.telemetry_size [deliveries per scenario, default 50]

Statsbeat and live metrics are off (they would go to the internet); performance counters are on, as
in the distro's defaults, and reported per export interval (one minute in Azure), not per delivery.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
import sys
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from azure.storage.blob import BlobSasPermissions, BlobServiceClient, ContentSettings, generate_blob_sas

from devtools.azurite import CUSTOMER_ACCOUNT, CUSTOMER_KEY, EXPORTS_ACCOUNT, EXPORTS_KEY, connection_string

# Longer than the run: metrics are exported only when this script flushes them, once for the whole run.
EXPORT_INTERVAL_MS = 600_000


class Ingestion:
    """A stand-in Application Insights ingestion endpoint on 127.0.0.1: counts what the exporter posts.

    It runs in its own thread: the exporter posts synchronously while the event loop waits on a flush.
    """

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        ingestion = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                body = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
                text = body.decode()
                if text.lstrip().startswith("["):
                    items = json.loads(text)
                else:  # newline-delimited JSON
                    items = [json.loads(line) for line in text.splitlines() if line]
                with ingestion.lock:
                    ingestion.items.extend(items)
                answer = json.dumps({"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer.encode())

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def take(self) -> list[dict[str, Any]]:
        with self.lock:
            items, self.items = self.items, []
        return items


def kind(item: dict[str, Any]) -> str:
    """The Application Insights table an envelope lands in."""
    base = str(item.get("data", {}).get("baseType", "?"))
    name = {
        "RemoteDependencyData": "dependencies",
        "MessageData": "traces",
        "RequestData": "requests",
        "MetricData": "customMetrics / performanceCounters",
        "ExceptionData": "exceptions",
    }.get(base, base)
    if base == "RemoteDependencyData" and item["data"]["baseData"].get("type") == "InProc":
        name = "dependencies (InProc: the receiver's span and the SDK's method spans)"
    return name


def label_of(item: dict[str, Any]) -> str:
    """A record's name without blob paths: `PUT`, `BlobClient.upload_blob`, `receiver.delivery`."""
    data = item["data"]["baseData"]
    if item["data"]["baseType"] == "MessageData":
        return "the receiver's record"
    return str(data.get("name", "?")).split(" /")[0]


def size(item: dict[str, Any]) -> int:
    return len(json.dumps(item, separators=(",", ":")).encode())


async def measure(count: int) -> list[str]:
    from azure.monitor.opentelemetry import configure_azure_monitor
    from opentelemetry import metrics, trace

    from devtools.azurite import start_azurite
    from receiver.runtime import RUNTIME
    from receiver.webhook import handle_delivery

    ingestion = Ingestion()
    configure_azure_monitor(
        connection_string=(
            "InstrumentationKey=00000000-0000-0000-0000-000000000000;"
            f"IngestionEndpoint=http://127.0.0.1:{ingestion.port}/"
        ),
        logger_name="",
        enable_live_metrics=False,
        disable_offline_storage=True,
    )
    # The receiver's records are INFO (host.json: logLevel Information). Other libraries stay at the root's
    # WARNING: the exporter logs each transmission at INFO, which would feed itself through the root handler.
    logging.getLogger("receiver").setLevel(logging.INFO)
    tracer = trace.get_tracer("bench.telemetry_size")
    tracer_provider: Any = trace.get_tracer_provider()
    meter_provider: Any = metrics.get_meter_provider()

    def flush() -> None:
        tracer_provider.force_flush()
        from opentelemetry._logs import get_logger_provider

        provider: Any = get_logger_provider()
        provider.force_flush()

    notes = ["", "Records per delivery, by name:"]
    rows = [
        "| scenario | table | records per delivery | bytes per delivery (JSON envelope) |",
        "|---|---|---|---|",
    ]
    with start_azurite() as azurite:
        exports = BlobServiceClient.from_connection_string(azurite.exports)
        exports.create_container("exports-telemetry")
        os.environ.update(
            {
                "DESTINATION_CONNECTION_STRING": connection_string(CUSTOMER_ACCOUNT, CUSTOMER_KEY, azurite.blob_port),
                "DESTINATION_CONTAINER": f"telemetry-{uuid.uuid4().hex[:6]}",
                "ALLOWED_SOURCE_HOSTS": azurite.blob_host,
                "ALLOW_HTTP_SOURCES": "true",
            }
        )
        await RUNTIME.reset()

        def notification(task: str) -> bytes:
            name = f"{uuid.uuid4()}.pdf"
            exports.get_blob_client("exports-telemetry", name).upload_blob(
                b"%PDF-1.4 telemetry bench", content_settings=ContentSettings(content_type="application/pdf")
            )
            sas = generate_blob_sas(
                EXPORTS_ACCOUNT,
                "exports-telemetry",
                name,
                account_key=EXPORTS_KEY,
                permission=BlobSasPermissions(read=True),
                expiry=datetime.now(UTC) + timedelta(hours=2),
            )
            return json.dumps(
                {
                    "taskId": task,
                    "taskNumber": 1234,
                    "workspaceId": str(uuid.uuid4()),
                    "displayName": "Invoice 2026-0042",
                    "exportedFileUrl": exports.get_blob_client("exports-telemetry", name).url + "?" + sas,
                    "exportedFileContentType": "application/pdf",
                    "exportedFileExpiresOn": (datetime.now(UTC) + timedelta(hours=2)).isoformat(),
                }
            ).encode()

        async def deliver(body: bytes, expected: int) -> None:
            # A stand-in for the `requests` record the Functions host writes per invocation.
            with tracer.start_as_current_span(
                "POST /api/smartdocumentor/anonymization",
                kind=trace.SpanKind.SERVER,
                attributes={
                    "http.request.method": "POST",
                    "url.full": "https://func-sd-example.azurewebsites.net/api/smartdocumentor/anonymization",
                    "http.response.status_code": expected,
                    "faas.trigger": "http",
                },
            ):
                result = await handle_delivery(body, {}, runtime=RUNTIME, now=datetime.now(UTC))
            assert result.status_code == expected, result.body

        await deliver(notification(str(uuid.uuid4())), 200)  # warm: creates the container
        flush()
        meter_provider.force_flush()
        await asyncio.sleep(0.5)
        ingestion.take()

        bodies = [notification(str(uuid.uuid4())) for _ in range(count)]
        flush()  # the uploads of the source files are the bench's, not the receiver's: not counted
        await asyncio.sleep(0.5)
        ingestion.take()
        for label, expected in (("stored", 200), ("duplicate", 200)):
            for body in bodies:
                await deliver(body, expected)
            flush()
            await asyncio.sleep(0.5)
            await asyncio.sleep(0)
            items = [item for item in ingestion.take() if item.get("data", {}).get("baseType") != "MetricData"]
            by_kind: Counter[str] = Counter()
            bytes_by_kind: Counter[str] = Counter()
            for item in items:
                by_kind[kind(item)] += 1
                bytes_by_kind[kind(item)] += size(item)
            for table in sorted(by_kind):
                rows.append(
                    f"| {label} | {table} | {by_kind[table] / count:.1f} | {bytes_by_kind[table] / count:,.0f} |"
                )
            names: Counter[str] = Counter(f"{kind(item)}: {label_of(item)}" for item in items)
            detail = "; ".join(f"{name} x{n / count:g}" for name, n in sorted(names.items()))
            notes.append(f"- {label}: {detail}")
            total = sum(bytes_by_kind.values()) / count
            rows.append(f"| {label} | **all** | {sum(by_kind.values()) / count:.1f} | **{total:,.0f}** |")

        # Metrics: one export of every series (the receiver's outcome counter, the distro's performance
        # counters) covering the whole run; in Azure one is sent per export interval (a minute) while an
        # instance runs, whatever the number of deliveries.
        meter_provider.force_flush()
        await asyncio.sleep(0.5)
        metric_items = [item for item in ingestion.take() if item.get("data", {}).get("baseType") == "MetricData"]
        metric_bytes = sum(size(item) for item in metric_items)
        rows.append(
            f"| every export interval (1 min in Azure) | customMetrics / performanceCounters | "
            f"{len(metric_items)} per interval | {metric_bytes:,} per interval |"
        )
        await RUNTIME.close()
    from opentelemetry._logs import get_logger_provider

    root = logging.getLogger()
    for handler in list(root.handlers):  # the distro's: flushing it at exit would start a thread too late
        root.removeHandler(handler)
    logger_provider: Any = get_logger_provider()
    logger_provider.shutdown()
    tracer_provider.shutdown()
    meter_provider.shutdown()
    ingestion.stop()
    return rows + notes


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    # No call leaves the machine: no statsbeat, no cloud resource detection (IMDS), no live metrics.
    os.environ["APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL"] = "true"
    os.environ["APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED"] = "true"
    os.environ["OTEL_EXPERIMENTAL_RESOURCE_DETECTORS"] = "otel"
    os.environ["OTEL_TRACES_SAMPLER"] = "microsoft.fixed_percentage"
    os.environ["OTEL_TRACES_SAMPLER_ARG"] = "1.0"
    os.environ["OTEL_METRIC_EXPORT_INTERVAL"] = str(EXPORT_INTERVAL_MS)
    os.environ["OTEL_SERVICE_NAME"] = "func-sd-example"
    for row in asyncio.run(measure(count)):
        print(row)


if __name__ == "__main__":
    main()
