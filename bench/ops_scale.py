"""How long ``python -m ops pending`` and ``failed`` take over many manifests (issue 15: under 10 s
over 10 000 on a developer machine).

A private Azurite on loopback ports; N pending manifests in one container and N failed ones in
another, written directly with the SDK exactly as the receiver labels them
(receiver.plan.manifest_labels: index tags and metadata, the manifest marker), a quarter of them
with expired links. Then each command timed twice: in-process (ops.cli.run), and as an operator
runs it (``python -m ops``, interpreter start included). Prints the timings; asserts nothing.

Two containers, because Azurite's Find Blobs by Tags scans the container's blobs a page (5000) at a
time and drops the continuation marker when a page holds fewer matches than that: over one mixed
container it would stop early and return too few (Azure's index does not). Manifests without the
newer tags (linkExpiresOn, failedAt), as older ones are, are covered by tests/test_ops_verdicts.py.

    .venv/bin/python -m bench.ops_scale            # N = 10000
    .venv/bin/python -m bench.ops_scale 2000       # fewer (at most 50000)
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from azure.storage.blob import ContentSettings
from azure.storage.blob.aio import ContainerClient

from devtools.azurite import start_azurite
from ops.cli import run
from receiver.plan import manifest_bytes, manifest_labels

ROOT = Path(__file__).resolve().parent.parent
MAX_COUNT = 50_000
UPLOAD_CONCURRENCY = 64
REPEAT = 3  # each command's time varies with the machine's load: the minimum and the median of three


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def document(index: int, status: str, now: datetime) -> dict[str, Any]:
    workspace = "2f0c7a55-8f0e-4c1b-9a43-5b1f0c6d3e21"
    task = str(uuid.UUID(int=index + (0 if status == "pending" else 10**9)))
    received = now - timedelta(minutes=index % 20_000)
    expires = now + (timedelta(hours=-1) if index % 4 == 0 else timedelta(hours=20))
    body: dict[str, Any] = {
        "taskId": task,
        "taskNumber": index,
        "workspaceId": workspace,
        "displayName": f"Contrato {index}",
        "exportedFileContentType": "application/pdf",
        "source": f"https://exports.blob.core.windows.net/anonymized-exports/{task}/export.pdf",
        "blob": f"smartdocumentor/{workspace}/{task}/Contrato {index}.pdf",
        "delivery": f"{index:064x}",
        "copyId": str(uuid.uuid4()),
        "copyStatus": status,
        "receivedAt": _iso(received),
        "linkExpiresOn": _iso(expires),
        "history": [{"at": _iso(received), "by": "webhook", "outcome": "copying", "status": 202}],
    }
    if status == "failed":
        body["failedAt"] = _iso(received + timedelta(minutes=5))
        body["failureReason"] = "the file link expired before the copy finished; export the document again"
    return body


async def fill(container: ContainerClient, status: str, count: int, now: datetime) -> float:
    started = time.perf_counter()
    gate = asyncio.Semaphore(UPLOAD_CONCURRENCY)

    async def one(index: int) -> None:
        body = document(index, status, now)
        tags, metadata = manifest_labels(body, status)
        name = body["blob"].split("/", 1)[1] + ".json"
        async with gate:
            await container.upload_blob(
                name,
                manifest_bytes(body),
                overwrite=True,
                tags=tags,
                metadata={**metadata, "receiverkind": "manifest"},
                content_settings=ContentSettings(content_type="application/json"),
            )

    await asyncio.gather(*(one(index) for index in range(count)))
    return time.perf_counter() - started


async def in_process(argv: list[str], environ: dict[str, str]) -> tuple[float, int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    started = time.perf_counter()
    code = await run(argv, environ=environ, out=out, err=err)
    return time.perf_counter() - started, code, out.getvalue(), err.getvalue()


def as_operator(argv: list[str], environ: dict[str, str]) -> tuple[float, int]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "ops", *argv],
        cwd=ROOT,
        env={**os.environ, **environ},
        capture_output=True,
        timeout=300,
        check=False,
    )
    return time.perf_counter() - started, done.returncode


async def main(count: int) -> None:
    with start_azurite() as azurite:
        now = datetime.now(UTC)
        containers = {status: f"scale-{status}-{uuid.uuid4().hex[:8]}" for status in ("pending", "failed")}
        for status, name in containers.items():
            container = ContainerClient.from_connection_string(azurite.customer, name)
            try:
                await container.create_container()
                took = await fill(container, status, count, now)
            finally:
                await container.close()
            print(f"wrote {count} {status} manifests in {took:.1f} s")
        print(f"load average before timing: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
        print(f"{'command':<28} {'in-process min/median':>22} {'python -m ops min/median':>25}  exit  first line")
        for argv in (
            ["pending"],
            ["failed"],
            ["pending", "--json"],
            ["failed", "--since", "60", "--alert"],
            ["pending", "--max", "1000"],
            ["failed", "--max", "1000"],
        ):
            environ = {"DESTINATION_CONNECTION_STRING": azurite.customer, "DESTINATION_CONTAINER": containers[argv[0]]}
            inside, outside = [], []
            for _ in range(REPEAT):
                seconds, code, out, err = await in_process(argv, environ)
                inside.append(seconds)
                wall, wall_code = as_operator(argv, environ)
                outside.append(wall)
            first = (json.loads(out)["summary"] if "--json" in argv else out.splitlines()[0]) if out else err.strip()
            print(
                f"{' '.join(argv):<28} {min(inside):>10.2f}s /{statistics.median(inside):>6.2f}s "
                f"{min(outside):>12.2f}s /{statistics.median(outside):>6.2f}s  {code}/{wall_code}  {str(first)[:70]}"
            )


if __name__ == "__main__":
    wanted = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    asyncio.run(main(max(1, min(wanted, MAX_COUNT))))
