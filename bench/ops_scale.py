"""How long the operator command line takes over many task records (goal: each under 5 s here).

A private Azurite on loopback ports; N task records (50 000 by default) in one container, written
directly with the SDK in parallel, each built with the receiver's own model and labelled as the
receiver labels it (``TaskRecord.labels``: the listing metadata ``python -m ops`` reads): across 50
workspaces, most tasks stored, one in 20 still copying (a quarter of those with expired links), one in
20 failed (half of them in the last 15 minutes). Then each command timed as an operator runs it
(``python -m ops``, interpreter start included), ``REPEAT`` times: the minimum and the median.

It also lists the records' prefix page by page with the SDK and says whether every record came
back: Azurite has been seen to end a listing early above 5 000 blobs (a page without a continuation
marker before the end), and a command that trusts such a listing undercounts without saying so.

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
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from azure.storage.blob import ContentSettings
from azure.storage.blob.aio import ContainerClient

from devtools.azurite import start_azurite
from receiver.models import RECORD_PREFIX, Delivery, State, Step, TaskRecord, record_name

ROOT = Path(__file__).resolve().parent.parent
MAX_COUNT = 200_000
UPLOAD_CONCURRENCY = 32  # Azurite answers one at a time; more only queues (and times out under load)
REPEAT = 2
WORKSPACES = 50


def workspace(index: int) -> str:
    return str(uuid.UUID(int=index % WORKSPACES + 7 * 10**30))


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
    container: ContainerClient, count: int, now: datetime, *, only: Callable[[int], bool] | None = None
) -> float:
    """Records 0 .. count-1 (those ``only`` keeps), written in parallel."""
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

    for start in range(0, count, 5000):  # bounded memory: 5000 coroutines at a time
        chosen = [index for index in range(start, min(count, start + 5000)) if only is None or only(index)]
        await asyncio.gather(*(one(index) for index in chosen))
        if count > 5000:
            print(f"ops_scale: {min(count, start + 5000)} of {count} written", file=sys.stderr, flush=True)
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


async def measure(count: int) -> dict[str, Any]:
    count = max(1, min(count, MAX_COUNT))
    with start_azurite() as azurite:
        now = datetime.now(UTC)
        name = f"scale-{uuid.uuid4().hex[:8]}"
        container = ContainerClient.from_connection_string(azurite.customer, name, read_timeout=300)
        try:
            await container.create_container()
            took = await fill(container, count, now)
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
        environ = {"DESTINATION_CONNECTION_STRING": azurite.customer, "DESTINATION_CONTAINER": name}
        rows = []
        for argv in (["pending"], ["failed", "--since", "15"], ["find", "--workspace", workspace(3), "--max", "5"]):
            walls: list[float] = []
            code, out, err = 0, "", ""
            for _ in range(REPEAT):
                wall, code, out, err = as_operator(argv, environ)
                walls.append(wall)
            first = out.splitlines()[0] if out.strip() else err.strip()[:200]
            rows.append(
                {
                    "command": " ".join(argv),
                    "min_s": min(walls),
                    "median_s": statistics.median(walls),
                    "exit": code,
                    "first": first,
                }
            )
            print(
                f"{' '.join(argv):<48} {min(walls):6.2f} s / {statistics.median(walls):6.2f} s  exit {code}  {first[:70]}"
            )
    copying = sum(1 for i in range(count) if i % 20 == 1)
    failed_recent = sum(1 for i in range(count) if i % 20 == 2 and (i // 20) % 2 == 0)
    return {
        "count": count,
        "workspaces": WORKSPACES,
        "repeat": REPEAT,
        "write_seconds": took,
        "listing": listing,
        "pages": pages,
        "listing_complete": complete,
        "expected": {"copying": copying, "failed_last_15_min": failed_recent, "per_workspace": count // WORKSPACES},
        "rows": rows,
    }


if __name__ == "__main__":
    wanted = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    figures = asyncio.run(measure(wanted))
    print(json.dumps(figures, indent=2, default=str))
    if len(sys.argv) > 2:  # where to keep them: `python -m bench.run --ops-json PATH` publishes them
        Path(sys.argv[2]).write_text(json.dumps(figures, indent=2, default=str) + "\n")
