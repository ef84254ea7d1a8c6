"""What one reconciliation run costs in storage requests: one listing of the records' prefix, then
two reads (the record and the watched blob) for each task whose labels show work.

Counted, not timed, by a counting proxy in front of Azurite (bench/counter.py): ``IDLE`` stored
tasks, plus 0, 10 and 1000 tasks still copying (staged, link valid, nothing at their name yet: each
answered ``waiting``), written directly as the receiver writes them (bench/ops_scale.py builds them
with the receiver's model and labels, each failed one with its failure marker).
``RECONCILE_AFTER_MINUTES=0``: every copying task is due. Each run is timed past the window in which a
recently changed task's manifest is checked again (the tasks were all just written).

    .venv/bin/python -m bench.reconcile_cost
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

from azure.storage.blob.aio import ContainerClient

from bench.counter import CountingProxy
from bench.ops_scale import fill
from devtools.azurite import CUSTOMER_ACCOUNT, CUSTOMER_KEY, connection_string, start_azurite
from receiver.migration import BEGUN_NAME
from receiver.reconciliation import MAX_PER_RUN, VERIFY_WINDOW, reconcile_run
from receiver.runtime import RUNTIME

IDLE = int(os.environ.get("BENCH_IDLE", "6000"))
SIZES = tuple(int(n) for n in os.environ.get("BENCH_SIZES", "0,10,1000").split(","))


async def measure() -> list[str]:
    rows = [
        "| stored tasks | copying tasks | run | found | processed | outcomes | requests on the wire | by kind |",
        "|---|---|---|---|---|---|---|---|",
    ]
    with start_azurite() as azurite:
        proxy = await CountingProxy(azurite.blob_port).start()
        try:
            for size in SIZES:
                container = f"reconcile-{size}-{uuid.uuid4().hex[:6]}"
                client = ContainerClient.from_connection_string(azurite.customer, container)
                await client.create_container()
                # ops_scale's records: index % 20 == 1 is copying (link valid), the others stored or failed.
                now = datetime.now(UTC)
                await fill(client, IDLE, now, only=lambda index: index % 20 != 1)
                await fill(client, 20 * size, now, only=lambda index: index % 20 == 1)
                # The upgrade's first run came before (the runs below are timed past its wait): its first
                # page, in the first run below, is all there is, and the second run finds the upgrade done.
                await client.upload_blob(BEGUN_NAME, b"", metadata={"receiverkind": "migration"})
                await client.close()
                os.environ.update(
                    {
                        "DESTINATION_CONNECTION_STRING": connection_string(CUSTOMER_ACCOUNT, CUSTOMER_KEY, proxy.port),
                        "DESTINATION_CONTAINER": container,
                        "ALLOWED_SOURCE_HOSTS": azurite.blob_host,
                        "ALLOW_HTTP_SOURCES": "true",
                        "RECONCILE_AFTER_MINUTES": "0",
                    }
                )
                await RUNTIME.reset()
                for run in (1, 2):
                    proxy.take()
                    # Past the window in which a just-written task's manifest is checked again: the
                    # steady state, where only the copying tasks have work.
                    later = datetime.now(UTC) + VERIFY_WINDOW + timedelta(minutes=1)
                    report = await reconcile_run(runtime=RUNTIME, now=later, environ={})
                    seen = proxy.take()
                    kinds = Counter(r.describe.split(" →")[0] for r in seen)
                    rows.append(
                        f"| {IDLE - IDLE // 20} | {size} | {run} | {report.found} | {report.processed} | "
                        f"{report.outcomes or '-'} | {len(seen)} | "
                        + ", ".join(f"{kind}: {n}" for kind, n in kinds.most_common())
                        + " |"
                    )
        finally:
            await proxy.stop()
            await RUNTIME.close()
    rows.append(f"\nAt most {MAX_PER_RUN} tasks are processed a run (MAX_PER_RUN).")
    return rows


def main() -> None:
    for row in asyncio.run(measure()):
        print(row)


if __name__ == "__main__":
    main()
