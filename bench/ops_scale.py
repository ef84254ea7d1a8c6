"""How long the operator command line takes over many task records (goal: each under 5 s here).

A private Azurite on loopback ports; N task records (50 000 by default) in one container, written
directly with the SDK in parallel, each built with the receiver's own model and labelled as the
receiver labels it (``TaskRecord.labels``: the listing metadata ``python -m ops`` reads): across 50
workspaces, most tasks stored, one in 20 still copying (a quarter of those with expired links), one in
20 failed (half of them in the last 15 minutes), each failed one with the failure marker the engine
writes beside the swap that fails it (receiver/attention.py). Then one reconciliation run (the real
``reconcile_run``, timed: it lists every record and writes the pending summary ``ops pending`` reads),
and each command timed as an operator runs it (``python -m ops``, interpreter start included),
``REPEAT`` times: the minimum and the median; and run once more through a counting proxy
(bench/counter.py): the storage requests it sent, by kind.

It also lists the records' prefix page by page with the SDK and says whether every record came
back, and compares the count the reconciliation's summary holds: Azurite has been seen to end a
listing early above 5 000 blobs (a page without a continuation marker before the end), and a command
that trusts such a listing undercounts without saying so.

    .venv/bin/python -m bench.ops_scale            # N = 50000
    .venv/bin/python -m bench.ops_scale 5000       # fewer
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from azure.storage.blob import ContentSettings
from azure.storage.blob.aio import ContainerClient

from bench.counter import CountingProxy
from devtools.azurite import CUSTOMER_ACCOUNT, CUSTOMER_KEY, connection_string, start_azurite
from receiver.attention import marker_blob, read_summary
from receiver.models import RECORD_PREFIX, Delivery, State, Step, TaskRecord, record_name
from receiver.reconciliation import reconcile_run
from receiver.runtime import RUNTIME

ROOT = Path(__file__).resolve().parent.parent
MAX_COUNT = 200_000
UPLOAD_CONCURRENCY = 32  # Azurite answers one at a time; more only queues (and times out under load)
REPEAT = 2
WORKSPACES = 50


def workspace(index: int) -> str:
    return str(uuid.UUID(int=index % WORKSPACES + 7 * 10**30))


# As an operator runs them (the goal: each under 5 s), then the two lists with 100 rows (no goal: each
# row is one task record read, and Azurite's reads slow down as the container grows).
COMMANDS = (
    (["pending"], True),
    (["failed", "--since", "15"], True),
    (["find", "--workspace", workspace(3), "--max", "5"], True),
    (["pending", "--max", "100"], False),
    (["failed", "--since", "15", "--max", "100"], False),
)


def recent_failure(index: int) -> bool:
    """The records :func:`task_record` fails 5 minutes before ``now`` (the others fail 10 hours before)."""
    return index % 20 == 2 and (index // 20) % 2 == 0


def task_record(index: int, now: datetime) -> TaskRecord:
    task = str(uuid.UUID(int=index + 10**9))
    received = now - timedelta(minutes=index % 20_000)
    expires = now + (timedelta(hours=-1) if index % 4 == 0 else timedelta(hours=20))
    kind = "copying" if index % 20 == 1 else "failed" if index % 20 == 2 else "stored"
    blob = f"smartdocumentor/{workspace(index)}/{task}/Contrato {index}.pdf"
    step = Step(at=received, by="webhook", outcome=kind, status=202 if kind == "copying" else 200)
    item = Delivery(
        delivery=f"{index:064x}",
        blob=blob,
        state=State(kind),
        received_at=received,
        link_expires_on=expires,
        staged=kind == "copying",
        history=[step],
    )
    if kind == "stored":
        item = item.model_copy(update={"completed_at": received, "etag": '"0x8DC0000000000"'})
    if kind == "failed":
        failed_at = now - timedelta(minutes=(index // 20) % 2 * 600 + 5)
        item = item.model_copy(update={"failed_at": failed_at, "failure_reason": "the file link expired"})
    return TaskRecord(
        workspace_id=workspace(index),
        task_id=task,
        current=item.delivery if kind == "stored" else None,
        deliveries=[item],
    )


async def fill(
    container: ContainerClient,
    count: int,
    now: datetime,
    *,
    only: Callable[[int], bool] | None = None,
    markers: bool = True,
) -> float:
    """Records 0 .. count-1 (those ``only`` keeps), written in parallel; each failed one with its failure
    marker (``markers``), as the engine writes it beside the swap that fails the delivery."""
    started = time.perf_counter()
    gate = asyncio.Semaphore(UPLOAD_CONCURRENCY)
    json_type = ContentSettings(content_type="application/json")

    async def one(index: int) -> None:
        record = task_record(index, now)
        async with gate:
            await container.upload_blob(
                record_name(record.workspace_id, record.task_id),
                record.to_bytes(),
                overwrite=True,
                metadata=record.labels(),
                content_settings=json_type,
            )
        failed = [item for item in record.deliveries if item.state is State.FAILED]
        for item in failed if markers else []:
            name, metadata = marker_blob(record, item, "expired")
            async with gate:
                await container.upload_blob(name, b"", overwrite=True, metadata=metadata)

    for start in range(0, count, 5000):  # bounded memory: 5000 coroutines at a time
        chosen = [index for index in range(start, min(count, start + 5000)) if only is None or only(index)]
        await asyncio.gather(*(one(index) for index in chosen))
        if count > 5000:
            print(
                f"ops_scale: {min(count, start + 5000)} of {count} written ({time.perf_counter() - started:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    return time.perf_counter() - started


async def listing_pages(container: ContainerClient) -> dict[str, Any]:
    """The records' prefix listed as the receiver lists it (with metadata), page by page."""
    sizes: list[int] = []
    markers: list[bool] = []
    pages: Any = container.list_blobs(name_starts_with=RECORD_PREFIX, include=["metadata"]).by_page()
    async for page in pages:
        sizes.append(len([item async for item in page]))
        markers.append(bool(pages.continuation_token))
    return {"pages": sizes, "markers": markers, "listed": sum(sizes)}


def as_operator(argv: list[str], environ: dict[str, str]) -> tuple[float, int, str, str]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "ops", *argv],
        cwd=ROOT,
        env={**os.environ, **environ},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return time.perf_counter() - started, done.returncode, done.stdout, done.stderr


async def counted(argv: list[str], environ: dict[str, str], proxy: CountingProxy) -> dict[str, Any]:
    """The command once more, through the counting proxy (its own loop keeps serving meanwhile)."""
    proxy.take()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ops",
        *argv,
        cwd=ROOT,
        env={**os.environ, **environ},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await asyncio.wait_for(child.wait(), timeout=300)
    seen = proxy.take()
    kinds = Counter(request.describe.split(" →")[0] for request in seen)
    return {"requests": len(seen), "kinds": dict(kinds.most_common())}


async def reconcile_once(connection: str, name: str, count: int) -> dict[str, Any]:
    """One reconciliation run as the timer runs it (its sweep bounded as in Azure), and what its summary says."""
    os.environ.update({"DESTINATION_CONNECTION_STRING": connection, "DESTINATION_CONTAINER": name})
    await RUNTIME.reset()
    try:
        started = time.perf_counter()
        report = await reconcile_run(runtime=RUNTIME, now=datetime.now(UTC), environ={})
        took = time.perf_counter() - started
        summary = await read_summary(RUNTIME.store())
    finally:
        await RUNTIME.close()
    listed = summary.records if summary is not None else 0
    attention = report.attention
    return {
        "seconds": took,
        "found": report.found,
        "processed": report.processed,
        "outcomes": report.outcomes,
        "failed": report.failed,
        "summary_records": listed,
        "summary_copying_tasks": summary.copying_tasks if summary is not None else 0,
        "summary_tasks": len(summary.tasks) if summary is not None else 0,
        "markers_listed": attention.markers if attention is not None else 0,
        "complete": listed == count,
    }


async def measure(count: int) -> dict[str, Any]:
    count = max(1, min(count, MAX_COUNT))
    with start_azurite() as azurite:
        now = datetime.now(UTC)
        name = f"scale-{uuid.uuid4().hex[:8]}"
        container = ContainerClient.from_connection_string(azurite.customer, name, read_timeout=300)
        try:
            await container.create_container()
            # The failures of the last 15 minutes last, timed from when they are written: writing 50 000
            # records takes many minutes here, and `failed --since 15` must still find them.
            took = await fill(container, count, now, only=lambda index: not recent_failure(index))
            now = datetime.now(UTC)
            took += await fill(container, count, now, only=recent_failure)
            print(f"wrote {count} task records in {took:.1f} s", file=sys.stderr, flush=True)
            pages = await listing_pages(container)
        finally:
            await container.close()
        complete = pages["listed"] == count
        early = [
            n for n, (size, marker) in enumerate(zip(pages["pages"], pages["markers"], strict=True)) if not marker
        ][:-1]
        listing = (
            f"one listing of the records' prefix returned all {count} in {len(pages['pages'])} pages"
            if complete
            else f"**Azurite's listing returned {pages['listed']} of {count} records** (pages {pages['pages']}, "
            f"continuation markers {pages['markers']}): the figures below are over what it returned"
        )
        if early:
            listing += f"; pages without a continuation marker before the last: {early}"
        reconciliation = await reconcile_once(azurite.customer, name, count)
        print(f"one reconciliation run: {reconciliation}", file=sys.stderr, flush=True)
        if not reconciliation["complete"]:
            listing += (
                f"; **the reconciliation's listing (its summary) counted {reconciliation['summary_records']} of "
                f"{count} records**: Azurite ended it early"
            )
        environ = {"DESTINATION_CONNECTION_STRING": azurite.customer, "DESTINATION_CONTAINER": name}
        proxy = await CountingProxy(azurite.blob_port).start()
        through = {"DESTINATION_CONNECTION_STRING": connection_string(CUSTOMER_ACCOUNT, CUSTOMER_KEY, proxy.port)}
        rows = []
        try:
            for argv, goal in COMMANDS:
                walls: list[float] = []
                code, out, err = 0, "", ""
                for _ in range(REPEAT):
                    wall, code, out, err = await asyncio.to_thread(as_operator, argv, environ)
                    walls.append(wall)
                first = out.splitlines()[0] if out.strip() else err.strip()[:200]
                wire = await counted(argv, {**environ, **through}, proxy)
                label = " ".join(argv).replace(f"--workspace {workspace(3)}", "--workspace W")
                rows.append(
                    {
                        "command": " ".join(argv),
                        "min_s": min(walls),
                        "median_s": statistics.median(walls),
                        "exit": code,
                        "first": first,
                        "requests": wire["requests"],
                        "kinds": wire["kinds"],
                        "goal": goal,
                    }
                )
                print(
                    f"{label:<40} {min(walls):6.2f} s / {statistics.median(walls):6.2f} s  exit {code}  "
                    f"{wire['requests']} requests {wire['kinds']}  {first[:60]}"
                )
        finally:
            await proxy.stop()
    copying = sum(1 for i in range(count) if i % 20 == 1)
    failed_recent = sum(1 for i in range(count) if recent_failure(i))
    return {
        "count": count,
        "workspaces": WORKSPACES,
        "repeat": REPEAT,
        "write_seconds": took,
        "listing": listing,
        "pages": pages,
        "listing_complete": complete and reconciliation["complete"],
        "reconciliation": reconciliation,
        "expected": {"copying": copying, "failed_last_15_min": failed_recent, "per_workspace": count // WORKSPACES},
        "rows": rows,
    }


if __name__ == "__main__":
    wanted = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    figures = asyncio.run(measure(wanted))
    print(json.dumps(figures, indent=2, default=str))
    if len(sys.argv) > 2:  # where to keep them: `python -m bench.run --ops-json PATH` publishes them
        Path(sys.argv[2]).write_text(json.dumps(figures, indent=2, default=str) + "\n")
