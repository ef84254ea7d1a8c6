"""What one reconciliation run costs in storage requests, for 0, 10 and 1000 pending deliveries.

Counted, not timed: the receiver's own count of storage operations for the run (the same figure
its telemetry reports), checked against the requests a counting proxy saw. Real deliveries are
made through the real function (asynchronous copies kept pending by the test suite's fault proxy,
their queue messages dropped), so the manifests are exactly what production writes.

    .venv/bin/python -m bench.reconcile_cost
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from datetime import UTC, datetime, timedelta

from azure.storage.blob import BlobSasPermissions, BlobServiceClient, generate_blob_sas

from devtools.azurite import (
    CUSTOMER_ACCOUNT,
    CUSTOMER_KEY,
    EXPORTS_ACCOUNT,
    EXPORTS_KEY,
    connection_string,
    start_azurite,
)
from receiver.reconciliation import MAX_PER_RUN, RunReport, reconcile_run
from receiver.runtime import RUNTIME
from receiver.webhook import handle_delivery
from tests.faultproxy import FaultProxy, Rule, is_copy, is_properties

SIZES = tuple(int(n) for n in os.environ.get("BENCH_SIZES", "0,10,1000").split(","))


async def measure() -> list[str]:
    rows = [
        "| pending deliveries | run | found | outcome | storage requests (receiver's count) | requests seen by the proxy |",
        "|---|---|---|---|---|---|",
    ]
    with start_azurite() as azurite:
        exports = BlobServiceClient.from_connection_string(azurite.exports)
        exports.create_container("exports-bench")
        proxy = await FaultProxy(azurite.blob_port).start()
        try:
            for size in SIZES:
                container = f"reconcile-{size}-{uuid.uuid4().hex[:6]}"
                os.environ.update(
                    {
                        "DESTINATION_CONNECTION_STRING": connection_string(CUSTOMER_ACCOUNT, CUSTOMER_KEY, proxy.port),
                        "DESTINATION_CONTAINER": container,
                        "ALLOWED_SOURCE_HOSTS": azurite.blob_host,
                        "ALLOW_HTTP_SOURCES": "true",
                        "SYNC_COPY_MAX_MIB": "0",
                        "COPY_WAIT_SECONDS": "0",
                        "RECONCILE_AFTER_MINUTES": "0",
                    }
                )
                await RUNTIME.reset()
                proxy.reset()
                proxy.add(Rule(is_copy, times=size, copy_status="pending"))
                proxy.add(Rule(is_properties, times=10**6, copy_status="pending"))
                gate = asyncio.Semaphore(50)

                async def deliver(number: int, gate: asyncio.Semaphore = gate) -> None:
                    name = f"{uuid.uuid4()}.pdf"
                    exports.get_blob_client("exports-bench", name).upload_blob(b"%PDF-1.4 reconcile bench")
                    sas = generate_blob_sas(
                        EXPORTS_ACCOUNT,
                        "exports-bench",
                        name,
                        account_key=EXPORTS_KEY,
                        permission=BlobSasPermissions(read=True),
                        expiry=datetime.now(UTC) + timedelta(hours=2),
                    )
                    body = json.dumps(
                        {
                            "taskId": str(uuid.uuid4()),
                            "taskNumber": number,
                            "workspaceId": "bench",
                            "exportedFileUrl": exports.get_blob_client("exports-bench", name).url + "?" + sas,
                            "exportedFileContentType": "application/pdf",
                            "exportedFileExpiresOn": (datetime.now(UTC) + timedelta(hours=2)).isoformat(),
                        }
                    )
                    async with gate:
                        result = await handle_delivery(body.encode(), {}, runtime=RUNTIME, now=datetime.now(UTC))
                    assert result.status_code == 202, result.body  # its queue message is dropped here

                await asyncio.gather(*(deliver(i) for i in range(size)))
                await asyncio.sleep(1.5)  # the tag index may lag a write

                def run_row(label: str, report: RunReport, seen: int, size: int = size) -> str:
                    outcomes = report.outcomes or "-"
                    return f"| {size} | {label} | {report.found} | {outcomes} | {report.storage_requests} | {seen} |"

                proxy.seen.clear()
                report = await reconcile_run(runtime=RUNTIME, now=datetime.now(UTC))
                rows.append(run_row("1: copies still running", report, len(proxy.seen)))
                proxy.reset()  # the copies complete
                run = 2
                started = time.monotonic()
                while True:
                    proxy.seen.clear()
                    report = await reconcile_run(runtime=RUNTIME, now=datetime.now(UTC))
                    rows.append(run_row(f"{run}: copies completed", report, len(proxy.seen)))
                    if report.found == 0 or run > 2 + size // MAX_PER_RUN or time.monotonic() - started > 300:
                        break
                    run += 1
                    await asyncio.sleep(1.5)
        finally:
            await proxy.stop()
            await RUNTIME.close()
    return rows


def main() -> None:
    for row in asyncio.run(measure()):
        print(row)


if __name__ == "__main__":
    main()
