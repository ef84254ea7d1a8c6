"""`make bench`: the receiver (task record, synchronous copies, staged large files) against the
baseline a user would otherwise write, in one run.

Starts its own Azurite (loopback, in memory, --disableTelemetry), then measures:
  1. per-delivery latency and CPU on loopback: the real function vs a bare synchronous
     start_copy_from_url(requires_sync=True) (same file, same tags and metadata), sequential and
     150 concurrent, 64 KiB files; and sequential 1 MiB files;
  2. distance: the same through a proxy in its own process that adds a fixed delay (40 ms) to every
     storage request; each kind of delivery in "round trips' worth" (its latency / the bare copy's,
     through the same proxy, interleaved);
  3. storage requests per delivery and sequential round trips on the wire (requests whose lifetimes
     do not overlap), counted by a proxy in front of Azurite (bench/counter.py): stored, duplicate,
     same-name and renamed re-exports, a superseded replay; synchronous and staged;
  4. a large file staged in blocks through the staging proxy stand-in (bench/staging.py), over an
     earlier export at the same name: the receiver's RSS (a child process), how many Put Block From
     URL at once, and the earlier export read while staging (256 MiB; 1 GiB with BENCH_BIG=1).
Every timing is a ratio against a baseline measured in the same run; request counts are exact.
Results go to docs/performance.md and docs/performance.json. Nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import hashlib
import io
import json
import logging
import os
import platform
import pstats
import re
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

import azure.functions as func
from azure.storage.blob import BlobSasPermissions, BlobServiceClient, ContentSettings, generate_blob_sas

from bench.counter import CountingProxy, Seen, round_trips
from devtools.azurite import (
    CUSTOMER_ACCOUNT,
    CUSTOMER_KEY,
    EXPORTS_ACCOUNT,
    EXPORTS_KEY,
    Azurite,
    connection_string,
    start_azurite,
    stop_process,
)

ROOT = Path(__file__).resolve().parent.parent
EXPORTS = "exports"
SMALL_FILE = 64 * 1024
MIB = 1024 * 1024
WORKSPACE = "2f0c7a55-8f0e-4c1b-9a43-5b1f0c6d3e21"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Sources:
    """SmartDocumentor's export storage stand-in, with real SAS URLs."""

    def __init__(self, azurite: Azurite) -> None:
        self.service = BlobServiceClient.from_connection_string(azurite.exports)
        self.container = self.service.get_container_client(EXPORTS)
        if not self.container.exists():
            self.container.create_container()

    def publish(self, size: int, *, name: str | None = None) -> str:
        name = name or f"{uuid.uuid4()}.pdf"
        chunk = (b"%PDF-1.4 anonymized " + os.urandom(44)) * 16384  # 1 MiB
        blob = self.container.get_blob_client(name)
        if size <= len(chunk):
            blob.upload_blob(chunk[:size], content_settings=ContentSettings(content_type="application/pdf"))
        else:
            blocks = (chunk for _ in range(size // len(chunk)))
            blob.upload_blob(
                blocks,
                length=size,
                max_concurrency=4,
                content_settings=ContentSettings(content_type="application/pdf"),
            )
        sas = generate_blob_sas(
            EXPORTS_ACCOUNT,
            EXPORTS,
            name,
            account_key=EXPORTS_KEY,
            permission=BlobSasPermissions(read=True),
            expiry=datetime.now(UTC) + timedelta(hours=6),
        )
        return f"{blob.url}?{sas}"


def payload(url: str, number: int, task_id: str | None = None) -> dict[str, Any]:
    return {
        "taskId": task_id or str(uuid.uuid4()),
        "taskNumber": number,
        "workspaceId": WORKSPACE,
        "totalPages": 2,
        "displayName": f"Contrato {number}",
        "exportedFileUrl": url,
        "exportedFileContentType": "application/pdf",
        "exportedFileExpiresOn": (datetime.now(UTC) + timedelta(hours=6)).isoformat(),
        "metadata": {"Department": "Legal", "Year": "2026"},
    }


def receiver_env(azurite: Azurite, container: str) -> dict[str, str]:
    return {
        "DESTINATION_CONNECTION_STRING": azurite.customer,
        "DESTINATION_CONTAINER": container,
        "ALLOWED_SOURCE_HOSTS": azurite.blob_host,
        "ALLOW_HTTP_SOURCES": "true",
        "AzureWebJobsStorage": azurite.host_storage,
    }


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class Out(func.Out[str]):
    """The queue output binding; the bench does not run the verifier."""

    def set(self, val: str) -> None: ...

    def get(self) -> str:
        return ""


@functools.cache
def webhook_function() -> Any:
    """The real app's webhook. get_functions() indexes the app and may run once per process, as in the worker."""
    from function_app import app

    function = next(f for f in app.get_functions() if f.get_function_name() == "anonymization_webhook")
    return function.get_user_function()


async def send(body: dict[str, Any]) -> func.HttpResponse:
    """One delivery through the real function, called as the Functions host calls it."""
    request = func.HttpRequest(
        method="POST", url="http://127.0.0.1/api/smartdocumentor/anonymization",
        headers={"Content-Type": "application/json"}, body=json.dumps(body).encode(),
    )  # fmt: skip
    response: func.HttpResponse = await webhook_function()(request, Out())
    return response


async def call_receiver(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = await send(body)
    answer: dict[str, Any] = json.loads(response.get_body())
    return response.status_code, answer


# --- 1. per-delivery latency and CPU ----------------------------------------------------------


def planner() -> Any:
    """The receiver's plan of a payload, made outside any timing: a baseline is then truly "just the
    copy". Reads the settings from the environment as it is when called."""
    from receiver.intake import prepare
    from receiver.plan import CopyPlan
    from receiver.settings import load_settings

    settings = load_settings()

    def planned(body: dict[str, Any]) -> CopyPlan:
        plan = prepare(json.dumps(body).encode(), {}, settings, now=datetime.now(UTC))
        assert isinstance(plan, CopyPlan)
        return plan

    return planned


async def bare_copy(container: Any, plan: Any, url: str) -> None:
    """What a user would write instead: one synchronous Copy Blob From URL, nothing else."""
    result = await container.get_blob_client(plan.blob_name).start_copy_from_url(
        url, requires_sync=True, tags=plan.tags, metadata=plan.metadata
    )
    assert result["copy_status"] == "success"


async def floor_requests(container: Any, plan: Any, url: str) -> None:
    """A stored delivery's four requests with the bare SDK and nothing else: the task record read
    beside the copy (If-None-Match: *), then the record's create beside the manifest's. The least a
    design with a record and a manifest sends, in two round trips."""
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceNotFoundError

    document = json.dumps(plan.manifest, default=str).encode()
    record = container.get_blob_client(f".smartdocumentor/tasks/{uuid.uuid4()}.json")
    blob = container.get_blob_client(plan.blob_name)

    async def read_record() -> None:
        with contextlib.suppress(ResourceNotFoundError):
            await (await record.download_blob()).readall()

    copy = blob.start_copy_from_url(
        url, requires_sync=True, tags=plan.tags, metadata=plan.metadata, match_condition=MatchConditions.IfMissing
    )
    await asyncio.gather(read_record(), copy)
    json_type = ContentSettings(content_type="application/json")
    await asyncio.gather(
        record.upload_blob(document, content_settings=json_type, metadata={"receiverkind": "task-record"}),
        container.get_blob_client(f"{plan.blob_name}.json").upload_blob(
            document, content_settings=json_type, metadata={"receiverkind": "manifest"}
        ),
    )


async def profile_receiver(bodies: list[dict[str, Any]], deliver: Any) -> str:
    """cProfile over 100 sequential deliveries: where the function's CPU goes."""
    profiler = cProfile.Profile()
    profiler.enable()
    for body in bodies:
        await deliver(body)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(r"receiver/|function_app|azure/storage|azure/core|aiohttp|pydantic", 25)
    return out.getvalue()


async def bench_latency(
    azurite: Azurite, sources: Sources, *, sequential: int, rounds: int, mib_samples: int
) -> dict[str, Any]:
    from azure.storage.blob.aio import BlobServiceClient as AioService

    from receiver.runtime import RUNTIME

    os.environ.update(receiver_env(azurite, "bench-receiver"))
    os.environ.pop("SYNC_COPY_MAX_MIB", None)  # the default: synchronous copies up to 256 MiB
    await RUNTIME.reset()
    planned = planner()

    # The baseline is what a user would write: the client as from_connection_string builds it.
    bare_service = AioService.from_connection_string(azurite.customer)
    bare_container = bare_service.get_container_client("bench-bare")
    await bare_container.create_container()
    # The receiver builds its client with use_env_settings=False unless a proxy is configured
    # (receiver/store.py); the floor uses a client built the same way.
    lean_service = AioService.from_connection_string(azurite.customer, use_env_settings=False)
    lean_container = lean_service.get_container_client("bench-bare")

    async def receiver_delivery(body: dict[str, Any]) -> None:
        response = await send(body)  # timed: the answer is not parsed unless it is unexpected
        assert response.status_code == 200, response.get_body()

    async def timed_bare(body: dict[str, Any], *, lean: bool = False) -> tuple[float, float]:
        plan = planned(body)
        container = lean_container if lean else bare_container
        cpu, wall = time.process_time(), time.perf_counter()
        await bare_copy(container, plan, body["exportedFileUrl"])
        return time.perf_counter() - wall, time.process_time() - cpu

    async def timed_floor(body: dict[str, Any]) -> tuple[float, float]:
        plan = planned(body)
        cpu, wall = time.process_time(), time.perf_counter()
        await floor_requests(lean_container, plan, body["exportedFileUrl"])
        return time.perf_counter() - wall, time.process_time() - cpu

    async def timed_receiver(body: dict[str, Any]) -> tuple[float, float]:
        cpu, wall = time.process_time(), time.perf_counter()
        await receiver_delivery(body)
        return time.perf_counter() - wall, time.process_time() - cpu

    def bodies(count: int, size: int = SMALL_FILE) -> list[dict[str, Any]]:
        return [payload(sources.publish(size), i) for i in range(count)]

    log("latency: warming up")
    for body in bodies(10):
        await receiver_delivery(body)
        await bare_copy(bare_container, planned(body), body["exportedFileUrl"])
    for body in bodies(10):
        await timed_floor(body)
        await timed_bare(body, lean=True)
    kinds = ("receiver", "bare", "bare_lean", "floor")
    log(f"latency: publishing {len(kinds) * sequential} files")
    published = {kind: bodies(sequential) for kind in kinds}
    samples: dict[str, list[tuple[float, float]]] = {kind: [] for kind in kinds}
    for i in range(sequential):
        # Interleaved, so all see the same machine noise.
        samples["receiver"].append(await timed_receiver(published["receiver"][i]))
        samples["bare"].append(await timed_bare(published["bare"][i]))
        samples["bare_lean"].append(await timed_bare(published["bare_lean"][i], lean=True))
        samples["floor"].append(await timed_floor(published["floor"][i]))

    log(f"latency: {mib_samples} sequential 1 MiB deliveries and as many bare copies, interleaved")
    mib_published = {kind: bodies(mib_samples, MIB) for kind in ("receiver", "bare")}
    mib: dict[str, list[tuple[float, float]]] = {"receiver": [], "bare": []}
    for i in range(mib_samples):
        mib["receiver"].append(await timed_receiver(mib_published["receiver"][i]))
        mib["bare"].append(await timed_bare(mib_published["bare"][i]))

    log(f"latency: {rounds} rounds of 150 concurrent deliveries each")
    concurrent: dict[str, list[tuple[float, float]]] = {"receiver": [], "bare": []}
    for _ in range(rounds):
        for kind in ("receiver", "bare"):
            batch = bodies(150)
            if kind == "bare":
                plans = [(planned(b), b["exportedFileUrl"]) for b in batch]
                cpu, wall = time.process_time(), time.perf_counter()
                await asyncio.gather(*(bare_copy(bare_container, plan, url) for plan, url in plans))
            else:
                cpu, wall = time.process_time(), time.perf_counter()
                await asyncio.gather(*(receiver_delivery(b) for b in batch))
            concurrent[kind].append((time.perf_counter() - wall, time.process_time() - cpu))

    profile_text = await profile_receiver(bodies(100), receiver_delivery)
    await bare_service.close()
    await lean_service.close()
    await RUNTIME.close()

    def summary(measured: list[tuple[float, float]], kind: str | None = None) -> dict[str, float]:
        walls = [w for w, _ in measured]
        cpus = [c for _, c in measured]
        figures = {
            "median_ms": statistics.median(walls) * 1000,
            "p95_ms": pct(walls, 95) * 1000,
            "cpu_ms": statistics.mean(cpus) * 1000,
        }
        if kind in concurrent:
            n = 150 * rounds
            figures["concurrent_per_s"] = n / sum(w for w, _ in concurrent[kind])
            figures["concurrent_cpu_ms"] = sum(c for _, c in concurrent[kind]) / n * 1000
        return figures

    receiver, bare, bare_lean, floor = (summary(samples[kind], kind) for kind in kinds)
    mib_receiver, mib_bare = summary(mib["receiver"]), summary(mib["bare"])
    return {
        "sequential": sequential,
        "concurrent": 150,
        "rounds": rounds,
        "file_bytes": SMALL_FILE,
        "receiver": receiver,
        "bare": bare,
        "bare_lean": bare_lean,
        "floor": floor,
        "mib": {"samples": mib_samples, "receiver": mib_receiver, "bare": mib_bare},
        "ratios": {
            "latency": receiver["median_ms"] / bare["median_ms"],
            "cpu": receiver["cpu_ms"] / bare["cpu_ms"],
            "concurrent_throughput": receiver["concurrent_per_s"] / bare["concurrent_per_s"],
            "concurrent_cpu": receiver["concurrent_cpu_ms"] / bare["concurrent_cpu_ms"],
            "mib_latency": mib_receiver["median_ms"] / mib_bare["median_ms"],
            "mib_cpu": mib_receiver["cpu_ms"] / mib_bare["cpu_ms"],
            "bare_lean_latency": bare_lean["median_ms"] / bare["median_ms"],
            "bare_lean_cpu": bare_lean["cpu_ms"] / bare["cpu_ms"],
            "floor_latency": floor["median_ms"] / bare["median_ms"],
            "floor_cpu": floor["cpu_ms"] / bare["cpu_ms"],
            "receiver_over_floor_latency": receiver["median_ms"] / floor["median_ms"],
            "receiver_over_floor_cpu": receiver["cpu_ms"] / floor["cpu_ms"],
        },
        "profile": profile_text,
    }


# --- the deliveries of one task, as sections 2 and 3 send them -------------------------------

# (kind, answer expected): each round sends them in this order for one new task. The superseded
# replay is the same-name re-export sent again after two renames: a late retry of an export that
# two later ones replaced (its name was retired).
SCENARIO: tuple[tuple[str, str], ...] = (
    ("stored", "stored"),
    ("duplicate", "duplicate"),
    ("same-name re-export", "stored"),
    ("renamed re-export", "stored"),
    ("renamed again", "stored"),
    ("superseded replay", "superseded"),
)
KINDS = tuple(kind for kind, _ in SCENARIO)


def scenario(publish: Any, number: int) -> list[tuple[str, str, dict[str, Any]]]:
    """One task's deliveries: ``publish()`` gives a new export link each time."""
    first = payload(publish(), number)
    task = first["taskId"]
    again = payload(publish(), number, task_id=task)
    renamed = {**payload(publish(), number, task_id=task), "displayName": f"Contrato {number} (revisado)"}
    final = {**payload(publish(), number, task_id=task), "displayName": f"Contrato {number} (final)"}
    bodies = (first, first, again, renamed, final, again)
    return [(kind, expect, body) for (kind, expect), body in zip(SCENARIO, bodies, strict=True)]


# --- 2. with distance: a fixed delay on every request ------------------------------------------


async def bench_distance(azurite: Azurite, sources: Sources, *, samples: int, delay_ms: float) -> dict[str, Any]:
    """Every request to Azurite through a proxy in its own process that holds each one ``delay_ms``
    before passing it on (bench/counter.py): the receiver and the baseline then pay distance, not
    only CPU. Each round, interleaved: a bare copy, then one task's deliveries (:data:`SCENARIO`)."""
    from azure.storage.blob.aio import BlobServiceClient as AioService

    from receiver.runtime import RUNTIME

    proxy = subprocess.Popen(
        [sys.executable, "-m", "bench.counter", "--upstream-port", str(azurite.blob_port),
         "--delay-ms", str(delay_ms), "--max-seconds", "900"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proxy.stdout is not None
        port = int(proxy.stdout.readline())

        def via(url: str) -> str:
            return url.replace(f"//{azurite.blob_host}/", f"//127.0.0.1:{port}/", 1)

        env = receiver_env(azurite, "bench-distance")
        env["DESTINATION_CONNECTION_STRING"] = connection_string(CUSTOMER_ACCOUNT, CUSTOMER_KEY, port)
        env["ALLOWED_SOURCE_HOSTS"] = f"127.0.0.1:{port}"
        os.environ.update(env)
        os.environ.pop("SYNC_COPY_MAX_MIB", None)
        await RUNTIME.reset()
        planned = planner()
        bare_service = AioService.from_connection_string(connection_string(CUSTOMER_ACCOUNT, CUSTOMER_KEY, port))
        bare_container = bare_service.get_container_client("bench-distance-bare")
        await bare_container.create_container()

        def publish() -> str:
            return via(sources.publish(SMALL_FILE))

        async def timed_bare(i: int) -> float:
            body = payload(publish(), i)
            plan = planned(body)
            wall = time.perf_counter()
            await bare_copy(bare_container, plan, body["exportedFileUrl"])
            return time.perf_counter() - wall

        async def timed(kind: str, expect: str, body: dict[str, Any]) -> float:
            wall = time.perf_counter()
            response = await send(body)
            elapsed = time.perf_counter() - wall
            answer = json.loads(response.get_body())
            assert response.status_code == 200 and answer["status"] == expect, (kind, answer)
            return elapsed

        log(f"distance: {delay_ms:.0f} ms added to every request; warming up")
        for i in range(3):
            await timed_bare(i)
            for kind, expect, body in scenario(publish, i):
                await timed(kind, expect, body)
        log(f"distance: {samples} interleaved rounds of the bare copy, {', '.join(KINDS)}")
        walls: dict[str, list[float]] = {kind: [] for kind in ("bare", *KINDS)}
        for i in range(samples):
            walls["bare"].append(await timed_bare(i))
            for kind, expect, body in scenario(publish, i):
                walls[kind].append(await timed(kind, expect, body))
        await bare_service.close()
        await RUNTIME.close()
    finally:
        if proxy.stdin is not None:
            proxy.stdin.close()  # the proxy stops when its stdin closes
        try:
            proxy.wait(timeout=10)
        except subprocess.TimeoutExpired:
            stop_process(proxy, timeout=5)
    bare_ms = statistics.median(walls["bare"]) * 1000
    rows = {
        kind: {
            "median_ms": statistics.median(values) * 1000,
            "p95_ms": pct(values, 95) * 1000,
            "round_trips_worth": statistics.median(values) * 1000 / bare_ms,
        }
        for kind, values in walls.items()
    }
    return {"delay_ms": delay_ms, "samples": samples, "rows": rows}


# --- 3. storage requests and round trips per delivery, on the wire ------------------------------


class OwnCount(logging.Handler):
    """The receiver's own count of a delivery's storage requests: ``storageRequests`` in its telemetry
    record (one log line per delivery, docs/operations.md), to hold against what the wire saw."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.last: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "receiver.operation", None) == "delivery":
            self.last = getattr(record, "receiver.storageRequests", None)


# Held in the proxy before each request goes on: long enough that requests sent side by side overlap
# on the wire (the client sends them within a few ms), so the proxy can count sequential round trips.
REQUEST_DELAY_SECONDS = 0.015
# (key, setting as shown, SYNC_COPY_MAX_MIB or None for the default)
REQUEST_CONFIGS: tuple[tuple[str, str, str | None], ...] = (
    ("sync", "default (Copy Blob From URL)", None),
    ("staged", "`SYNC_COPY_MAX_MIB=0` (staged: Put Block From URL, Put Block List)", "0"),
)
# Goals on the default setting: sequential round trips, and storage requests.
ROUND_TRIP_GOALS = {
    "stored": 2,
    "duplicate": 2,
    "same-name re-export": 4,
    "renamed re-export": 4,
    "superseded replay": 2,
}
REQUEST_GOALS = {"stored": 4, "duplicate": 3, "same-name re-export": 6, "renamed re-export": 7}


async def bench_requests(azurite: Azurite, sources: Sources, *, repeats: int) -> dict[str, Any]:
    """Requests and round trips per delivery, counted on the wire: each kind ``repeats`` times, warm.
    The staged setting goes through the staging proxy stand-in behind the counting proxy; its own
    reads of the source are left out (Azure reads them inside the service)."""
    from bench.staging import BenchStagingProxy
    from receiver.runtime import RUNTIME

    staging = await BenchStagingProxy(azurite.blob_port).start()
    proxy = await CountingProxy(azurite.blob_port, delay=REQUEST_DELAY_SECONDS).start()
    rows: list[dict[str, Any]] = []
    own = OwnCount()
    receiver_log = logging.getLogger("receiver")
    level = receiver_log.level
    receiver_log.setLevel(logging.INFO)  # the record is an INFO line; only this handler sees it
    receiver_log.addHandler(own)

    def record(kind: str, key: str, answer: str, requests: list[list[Seen]], reported: list[int | None]) -> None:
        counts = [len(seen) for seen in requests]
        trips = [round_trips(seen) for seen in requests]
        variants = {tuple(sorted(r.describe for r in seen)) for seen in requests}
        rows.append(
            {
                "delivery": kind,
                "setting": key,
                "answer": answer,
                "counts": counts,
                "min": min(counts),
                "max": max(counts),
                "same_every_time": len(variants) == 1,
                "round_trips": trips,
                "round_trips_min": min(trips),
                "round_trips_max": max(trips),
                "requests": [r.describe for r in sorted(requests[0], key=lambda r: r.started)],
                "chain": chain(requests[0]),
                "reported": reported,
                "reported_agrees": reported == counts,
            }
        )

    async def counted(body: dict[str, Any], expect: str) -> tuple[str, list[Seen], int | None]:
        proxy.take()
        own.last = None
        status, answer = await call_receiver(body)
        assert 200 <= status < 300 and answer["status"] == expect, answer
        return answer["status"], proxy.take(), own.last

    try:
        for key, setting, sync_copy_max_mib in REQUEST_CONFIGS:
            env = receiver_env(azurite, f"bench-requests-{key}")
            env["DESTINATION_CONNECTION_STRING"] = connection_string(CUSTOMER_ACCOUNT, CUSTOMER_KEY, proxy.port)
            env["ALLOWED_SOURCE_HOSTS"] = proxy.host
            os.environ.update(env)
            if sync_copy_max_mib is None:
                os.environ.pop("SYNC_COPY_MAX_MIB", None)
                proxy.forward_port = None
            else:
                os.environ["SYNC_COPY_MAX_MIB"] = sync_copy_max_mib
                proxy.forward_port = staging.port
            await RUNTIME.reset()
            log(f"requests: {setting}")
            # The first delivery also creates the container and asks the account about index tags.
            answer, first, reported = await counted(payload(proxy.via(sources.publish(SMALL_FILE)), 0), "stored")
            record("first delivery of the process (container missing)", key, answer, [first], [reported])
            seen: dict[str, list[list[Seen]]] = {kind: [] for kind in KINDS}
            reports: dict[str, list[int | None]] = {kind: [] for kind in KINDS}
            answers: dict[str, str] = {}
            for i in range(1, repeats + 1):
                for kind, expect, body in scenario(lambda: proxy.via(sources.publish(SMALL_FILE)), i):
                    answers[kind], requests, reported = await counted(body, expect)
                    seen[kind].append(requests)
                    reports[kind].append(reported)
            for kind in KINDS:
                record(kind, key, answers[kind], seen[kind], reports[kind])
    finally:
        receiver_log.removeHandler(own)
        receiver_log.setLevel(level)
        await RUNTIME.close()
        await proxy.stop()
        await staging.stop()
        os.environ.pop("SYNC_COPY_MAX_MIB", None)
    by = {(row["delivery"], row["setting"]): row for row in rows}
    return {
        "repeats": repeats,
        "delay_ms": REQUEST_DELAY_SECONDS * 1000,
        "rows": rows,
        "requests": {kind: by[(kind, "sync")]["max"] for kind in KINDS},
        "round_trips": {kind: by[(kind, "sync")]["round_trips_max"] for kind in KINDS},
        "reported_agrees": all(row["reported_agrees"] for row in rows),
    }


def chain(requests: list[Seen]) -> list[list[str]]:
    """The requests grouped by round: each group starts after every answer of the one before had left
    (what :func:`round_trips` counts, shown)."""
    rounds: list[list[Seen]] = []
    for request in sorted(requests, key=lambda r: r.started):
        if rounds and any(request.started < earlier.ended for earlier in rounds[-1]):
            rounds[-1].append(request)
        else:
            rounds.append([request])
    return [[r.describe for r in group] for group in rounds]


# --- 4. a large file staged in blocks -------------------------------------------------------------


async def bench_staged(azurite: Azurite, sources: Sources, *, size_mib: int) -> dict[str, Any]:
    """A re-export of ``size_mib`` over a 1 MiB earlier export at the same name, staged in blocks
    (``SYNC_COPY_MAX_MIB=0``) through the staging proxy stand-in (in this process), by the real
    function in a child process (bench/child.py ``staged``): its RSS sampled every 10 ms, its socket
    bytes counted. While it stages, this process reads the earlier export whole again and again and
    checks each read: the earlier bytes, or (after the commit) the new export's size, nothing else."""
    from azure.storage.blob.aio import BlobServiceClient as AioService

    from bench.staging import BenchStagingProxy

    staging = await BenchStagingProxy(azurite.blob_port).start()
    container = f"bench-staged-{uuid.uuid4().hex[:6]}"
    env = receiver_env(azurite, container) | {
        "DESTINATION_CONNECTION_STRING": connection_string(CUSTOMER_ACCOUNT, CUSTOMER_KEY, staging.port),
        "SYNC_COPY_MAX_MIB": "0",
        "COPY_WAIT_SECONDS": "30",
    }
    log(f"staged: publishing 1 MiB and {size_mib} MiB")
    earlier_url = sources.publish(MIB, name=f"earlier-{uuid.uuid4()}.pdf")
    earlier_bytes = sources.container.get_blob_client(earlier_url.split("?")[0].rsplit("/", 1)[-1]).download_blob()
    earlier_hash = hashlib.sha256(earlier_bytes.readall()).hexdigest()
    big_url = sources.publish(size_mib * MIB)
    first = payload(earlier_url, 1)
    big = payload(big_url, 1, task_id=first["taskId"])  # the same name: a same-name re-export
    reads = {"earlier": 0, "new": 0, "other": 0}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.child", "staged", json.dumps({"env": env, "payloads": [first, big], "warm": True}),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert child.stdout is not None and child.stderr is not None
    service = AioService.from_connection_string(azurite.customer)
    try:
        line = await asyncio.wait_for(child.stdout.readline(), timeout=120)
        if not line.startswith(b"ready ") or json.loads(line[6:])["answer"]["status"] != "stored":
            raise RuntimeError(f"bench.child staged: {line!r} {(await child.stderr.read())[-3000:]!r}")
        ready = json.loads(line[6:])["answer"]
        blob = service.get_blob_client(container, ready["blob"].split("/", 1)[1])
        staging.counting.most_at_once = staging.counting.blocks = 0
        result_line = asyncio.ensure_future(child.stdout.read())
        while not result_line.done():
            downloader = await blob.download_blob()
            data = await downloader.readall()
            if hashlib.sha256(data).hexdigest() == earlier_hash:
                reads["earlier"] += 1
            elif len(data) == size_mib * MIB:
                reads["new"] += 1
                break  # committed: the rest is the new export
            else:
                reads["other"] += 1
            await asyncio.sleep(0.05)
        output = await asyncio.wait_for(result_line, timeout=1800)
        await child.wait()
        if child.returncode != 0:
            raise RuntimeError(f"bench.child staged failed:\n{(await child.stderr.read())[-3000:]!r}")
        result: dict[str, Any] = json.loads(output.decode().strip().splitlines()[-1])
        final = await blob.get_blob_properties()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        await service.close()
        await staging.stop()
        os.environ.pop("SYNC_COPY_MAX_MIB", None)
        os.environ.pop("COPY_WAIT_SECONDS", None)
    outcome = result["outcome"]
    return {
        "size_mib": size_mib,
        "block_mib": 100,
        "blocks": staging.counting.blocks,
        "most_blocks_at_once": staging.counting.most_at_once,
        "answer": f"{outcome['status']} {outcome['answer']}"
        + (f", then {outcome['verified']}" if outcome["verified"] else ""),
        "earlier": outcome["earlier"],
        "seconds": outcome["delivery_seconds"],
        "rss_before_mib": outcome["rss_before_kib"] / 1024,
        "rss_peak_mib": outcome["rss_peak_kib"] / 1024,
        "rss_growth_mib": (outcome["rss_peak_kib"] - outcome["rss_before_kib"]) / 1024,
        "io_mib": outcome["io_bytes_delivery"] / MIB,
        "reads": reads,
        "final_size_mib": (final.size or 0) / MIB,
    }


# --- report -----------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    azurite_version = json.loads((ROOT / "node_modules" / "azurite" / "package.json").read_text())["version"]
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "os": platform.platform(),
        "python": platform.python_version(),
        "azure-storage-blob": version("azure-storage-blob"),
        "azure-functions": version("azure-functions"),
        "pydantic": version("pydantic"),
        "azurite": azurite_version,
        "node": node,
    }


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


DISTANCE_GOALS = {"stored": 2.3, "duplicate": 2.3, "same-name re-export": 4.3, "renamed re-export": 4.3}


def render_summary(results: dict[str, Any]) -> list[str]:
    q = results["latency"]["ratios"]
    counts = results["requests"]
    rows = results["distance"]["rows"]
    lines = [
        "## Summary: the goals",
        "",
        "| goal | measured | verdict |",
        "|---|---|---|",
    ]
    for kind, goal in ROUND_TRIP_GOALS.items():
        got = counts["round_trips"][kind]
        lines.append(f"| sequential round trips, {kind}: {goal if kind in ('stored', 'duplicate') else f'<= {goal}'} "
                     f"| {got} | {verdict(got <= goal)} |")  # fmt: skip
    for kind, goal in REQUEST_GOALS.items():
        got = counts["requests"][kind]
        lines.append(f"| storage requests, {kind}: <= {goal} | {got} | {verdict(got <= goal)} |")
    for kind, limit in DISTANCE_GOALS.items():
        worth = rows[kind]["round_trips_worth"]
        lines.append(f"| with {results['distance']['delay_ms']:.0f} ms a request, {kind}: <= {limit} round trips' worth "
                     f"| {worth:.2f} | {verdict(worth <= limit)} |")  # fmt: skip
    lines += [
        f"| CPU per delivery, sequential: <= 3.0x a bare copy | {q['cpu']:.2f}x | {verdict(q['cpu'] <= 3.0)} |",
        f"| CPU per delivery, 150 concurrent: <= 3.5x | {q['concurrent_cpu']:.2f}x | "
        f"{verdict(q['concurrent_cpu'] <= 3.5)} |",
        f"| 1 MiB latency on loopback: <= 1.5x | {q['mib_latency']:.2f}x | {verdict(q['mib_latency'] <= 1.5)} |",
    ]
    for staged in results.get("staged", []):
        lines.append(
            f"| {staged['size_mib']} MiB staged: the receiver's RSS stays flat | +{staged['rss_growth_mib']:.1f} MiB "
            f"(peak {staged['rss_peak_mib']:.0f} MiB), {staged['io_mib']:.2f} MiB through its sockets | "
            f"{verdict(staged['rss_growth_mib'] < 16)} |"
        )
        lines.append(
            f"| {staged['size_mib']} MiB staged: blocks several at a time | {staged['most_blocks_at_once']} at once "
            f"({staged['blocks']} blocks) | {verdict(staged['most_blocks_at_once'] > 1)} |"
        )
        reads = staged["reads"]
        lines.append(
            f"| {staged['size_mib']} MiB staged: the earlier export readable until the commit | {reads['earlier']} "
            f"whole reads of it, {reads['other']} of anything else | {verdict(reads['earlier'] > 0 and not reads['other'])} |"
        )
    scale: dict[str, Any] = results.get("ops_scale") or {"rows": []}
    for row in (row for row in scale["rows"] if row.get("goal", True)):
        command = re.sub(r"--workspace \S+", "--workspace W", row["command"])
        lines.append(
            f"| `python -m ops {command}` over {scale['count']} task records: < 5 s "
            f"| {row['median_s']:.1f} s (median) | {verdict(row['median_s'] < 5)} |"
        )
    return [*lines, ""]


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    lat = results["latency"]
    r, b, bl, fl, q = lat["receiver"], lat["bare"], lat["bare_lean"], lat["floor"], lat["ratios"]
    mr, mb = lat["mib"]["receiver"], lat["mib"]["bare"]
    lines = [
        "# Performance",
        "",
        "Measured by `make bench` (bench/run.py) in one run against its own Azurite (in memory, loopback).",
        "Each timing sits next to a baseline measured in the same run; the ratio is receiver / baseline.",
        f"Azurite runs on the same {m['cores']}-core machine, so absolute numbers are the emulator's; ratios are",
        "what carry over. Request and round-trip counts are exact: counted on the wire.",
        f"Regenerate with `make bench` (this run: {results.get('seconds', 0) / 60:.1f} minutes here).",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['os']}. Date: {m['date']}.",
        f"Versions: Python {m['python']}, azure-storage-blob {m['azure-storage-blob']}, "
        f"azure-functions {m['azure-functions']}, pydantic {m['pydantic']}, Azurite {m['azurite']} on Node {m['node']}.",
        "",
    ]
    lines += render_summary(results)
    lines += [
        "## 1. Per delivery on loopback: the receiver vs a bare synchronous `start_copy_from_url`",
        "",
        f"{lat['sequential']} sequential deliveries (interleaved with the baselines) and {lat['rounds']} rounds of "
        f"{lat['concurrent']} concurrent ones, {lat['file_bytes'] // 1024} KiB files, each a new task;",
        f"then {lat['mib']['samples']} sequential 1 MiB deliveries interleaved with as many 1 MiB bare copies.",
        "The receiver is the real function called with a `func.HttpRequest`, default settings: validation,",
        "planning, the task record read beside a create-only Copy Blob From URL, then the record's create",
        "beside the manifest and the file's Content-Type. The baseline is",
        "`start_copy_from_url(url, requires_sync=True, tags=..., metadata=...)` and nothing else, on a client",
        "built as `from_connection_string` builds it. CPU is this process's CPU time (the emulator's is not",
        "counted). On loopback a request costs CPU, not distance: the latency goals are in section 2.",
        "",
        "| figure | receiver | bare synchronous copy | ratio | goal |",
        "|---|---|---|---|---|",
        f"| median latency, 64 KiB | {r['median_ms']:.2f} ms | {b['median_ms']:.2f} ms | {q['latency']:.2f}x | |",
        f"| p95 latency, 64 KiB | {r['p95_ms']:.2f} ms | {b['p95_ms']:.2f} ms | {r['p95_ms'] / b['p95_ms']:.2f}x | |",
        f"| median latency, 1 MiB | {mr['median_ms']:.2f} ms | {mb['median_ms']:.2f} ms | {q['mib_latency']:.2f}x | "
        f"<= 1.5x: {verdict(q['mib_latency'] <= 1.5)} |",
        f"| CPU per delivery (sequential) | {r['cpu_ms']:.2f} ms | {b['cpu_ms']:.2f} ms | {q['cpu']:.2f}x | "
        f"<= 3.0x: {verdict(q['cpu'] <= 3.0)} |",
        f"| 150 concurrent: deliveries/s | {r['concurrent_per_s']:.0f} | {b['concurrent_per_s']:.0f} | "
        f"{q['concurrent_throughput']:.2f}x | |",
        f"| 150 concurrent: CPU per delivery | {r['concurrent_cpu_ms']:.2f} ms | {b['concurrent_cpu_ms']:.2f} ms | "
        f"{q['concurrent_cpu']:.2f}x | <= 3.5x: {verdict(q['concurrent_cpu'] <= 3.5)} |",
        "",
        "Other rows with the bare SDK (same files, interleaved with the rows above), on a client built with",
        "`use_env_settings=False` as the receiver builds its own (receiver/store.py):",
        "",
        "| bare SDK | median latency | CPU | vs bare copy | receiver vs this row |",
        "|---|---|---|---|---|",
        f"| the same bare copy | {bl['median_ms']:.2f} ms | {bl['cpu_ms']:.2f} ms | latency "
        f"{q['bare_lean_latency']:.2f}x, CPU {q['bare_lean_cpu']:.2f}x | |",
        f"| floor: a record read beside the copy, then a record create beside a manifest (four requests, two "
        f"round trips) | {fl['median_ms']:.2f} ms | {fl['cpu_ms']:.2f} ms | latency {q['floor_latency']:.2f}x, "
        f"CPU {q['floor_cpu']:.2f}x | latency {q['receiver_over_floor_latency']:.2f}x, "
        f"CPU {q['receiver_over_floor_cpu']:.2f}x |",
        "",
    ]
    lines += render_distance(results["distance"])
    lines += render_requests(results["requests"])
    lines += render_staged(results.get("staged", []))
    if results.get("ops_scale"):
        lines += render_ops_scale(results["ops_scale"])
    if results.get("notes"):
        lines += ["## Notes", "", results["notes"].strip(), ""]
    return "\n".join(lines)


def render_distance(distance: dict[str, Any]) -> list[str]:
    rows = distance["rows"]
    lines = [
        f"## 2. With distance: {distance['delay_ms']:.0f} ms added to every storage request",
        "",
        "Every request goes through a proxy in its own process (bench/counter.py) that holds it "
        f"{distance['delay_ms']:.0f} ms before passing it on;",
        "requests sent side by side wait together. Round trips' worth = median latency / the bare copy's median",
        f"through the same proxy. {distance['samples']} interleaved rounds: the bare copy, then one task's deliveries",
        "in order (a new task, the same again, a re-export at the same name, one after a rename, another rename,",
        "then the same-name re-export again: a superseded replay).",
        "",
        "| delivery | median | p95 | round trips' worth | goal |",
        "|---|---|---|---|---|",
    ]
    for kind, row in rows.items():
        goal = DISTANCE_GOALS.get(kind)
        shown = f"<= {goal}: {verdict(row['round_trips_worth'] <= goal)}" if goal else ""
        name = "bare Copy Blob From URL (the baseline)" if kind == "bare" else kind
        lines.append(
            f"| {name} | {row['median_ms']:.1f} ms | {row['p95_ms']:.1f} ms | {row['round_trips_worth']:.2f} | {shown} |"
        )
    return [*lines, ""]


def render_requests(requests: dict[str, Any]) -> list[str]:
    settings = {key: setting for key, setting, _ in REQUEST_CONFIGS}
    lines = [
        "## 3. Storage requests and sequential round trips per delivery, on the wire",
        "",
        f"Counted by a proxy in front of Azurite (bench/counter.py), {requests['repeats']} tasks per setting, each "
        "sending the deliveries of section 2 in order. Sequential round trips: the longest chain of requests",
        "each of which arrived after the answer to the one before had left (the proxy holds each request "
        f"{requests['delay_ms']:.0f} ms, so requests sent side by side overlap). The staged setting goes through",
        "the staging proxy stand-in; its reads of the source are the service's, not counted. 'Receiver's count'",
        "is `storageRequests` in the delivery's own log record"
        + (
            ", equal to the wire in every delivery."
            if requests["reported_agrees"]
            else ": **not always equal to the wire**."
        ),
        "",
        "| setting | delivery | answer | requests | round trips | same every time | goal |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in requests["rows"]:
        kind = row["delivery"]
        count = f"{row['min']}" if row["min"] == row["max"] else f"{row['min']}–{row['max']}"
        trips = (
            f"{row['round_trips_min']}"
            if row["round_trips_min"] == row["round_trips_max"]
            else f"{row['round_trips_min']}–{row['round_trips_max']}"
        )
        goal = ""
        if row["setting"] == "sync" and (kind in ROUND_TRIP_GOALS or kind in REQUEST_GOALS):
            parts = []
            if kind in REQUEST_GOALS:
                parts.append(f"requests <= {REQUEST_GOALS[kind]}: {verdict(row['max'] <= REQUEST_GOALS[kind])}")
            if kind in ROUND_TRIP_GOALS:
                parts.append(
                    f"round trips <= {ROUND_TRIP_GOALS[kind]}: "
                    f"{verdict(row['round_trips_max'] <= ROUND_TRIP_GOALS[kind])}"
                )
            goal = "; ".join(parts)
        same = "yes" if row["same_every_time"] else "no"
        lines.append(f"| {row['setting']} | {kind} | {row['answer']} | {count} | {trips} | {same} | {goal} |")
    lines += ["", "Settings: " + "; ".join(f"`{key}` = {text}" for key, text in settings.items()) + ".", ""]
    lines += ["The requests of each, round by round (the first task counted; side by side within a round):", ""]
    for row in requests["rows"]:
        rounds = " ‖ ".join(" + ".join(group) for group in row["chain"])
        lines.append(f"- {row['setting']}, {row['delivery']}: {rounds}")
    return [*lines, ""]


def render_staged(staged: list[dict[str, Any]]) -> list[str]:
    if not staged:
        return []
    lines = [
        "## 4. A large file staged in blocks (Put Block From URL, Put Block List)",
        "",
        "A re-export over a 1 MiB earlier export at the same name, `SYNC_COPY_MAX_MIB=0`, through the staging",
        "proxy stand-in (devtools/staging_proxy.py: it reads each block's range from the source and puts it to",
        "Azurite, so the bytes pass through it, not through the receiver). The receiver is the real function in",
        "a child process, warmed by the earlier export; its RSS is sampled every 10 ms while it delivers, and its",
        "socket bytes counted. While it stages, the bench reads the earlier export whole, again and again.",
        "A 202 is finished by the queue function's code (`verify_copy`), in the same child.",
        "",
        "| file | blocks (100 MiB) | at once | answer | time | receiver RSS before → peak | through the receiver's sockets | reads while staging: earlier / new / other |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in staged:
        reads = s["reads"]
        size = f"{s['size_mib']} MiB" + (f" ({s['apart']})" if s.get("apart") else "")
        lines.append(
            f"| {size} | {s['blocks']} | {s['most_blocks_at_once']} | {s['answer']} | {s['seconds']:.1f} s | "
            f"{s['rss_before_mib']:.1f} → {s['rss_peak_mib']:.1f} MiB | {s['io_mib']:.2f} MiB | "
            f"{reads['earlier']} / {reads['new']} / {reads['other']} |"
        )
    return [*lines, ""]


def render_ops_scale(scale: dict[str, Any]) -> list[str]:
    reconciliation = scale.get("reconciliation")
    lines = [
        "## 5. The operator command line over many task records",
        "",
        f"{scale['count']} task records in one container (bench/ops_scale.py, written directly in parallel, labelled",
        "as the receiver labels them, each failed one with its failure marker); each command run as an operator runs",
        f"it (`python -m ops`, interpreter start included), {scale['repeat']} times: the minimum and the median; then once",
        f"more through the counting proxy (its storage requests). Listing: {scale['listing']}.",
        f"Written: {scale['expected']['copying']} tasks still copying, {scale['expected']['failed_last_15_min']} failed "
        f"in the last 15 minutes, {scale['expected']['per_workspace']} tasks a workspace "
        f"(writing them took {scale['write_seconds']:.0f} s).",
    ]
    if reconciliation:
        lines.append(
            f"Before the commands, one reconciliation run (`reconcile_run`, as the timer runs it) took "
            f"{reconciliation['seconds']:.1f} s: it listed {reconciliation['summary_records']} records, found "
            f"{reconciliation['found']} with work, processed {reconciliation['processed']} (its bound), listed "
            f"{reconciliation['markers_listed']} failure markers and wrote the pending summary "
            f"({reconciliation['summary_copying_tasks']} tasks copying, {reconciliation['summary_tasks']} named in it)."
        )
    before = scale.get("before") or {}
    if before:
        lines.append(
            f"Before: {before['what']} (measured over the same {before['count']} records, the same way; the "
            "second column)."
        )
    lines += [
        "",
        "| command | before: min / median | min | median | storage requests | exit | first line | goal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in scale["rows"]:
        was = (before.get("rows") or {}).get(row["command"])
        earlier = f"{was['min_s']:.2f} s / {was['median_s']:.2f} s" if was else "-"
        kinds = row.get("kinds") or {}
        requests = (
            f"{row['requests']} ({', '.join(f'{kind}: {n}' for kind, n in kinds.items())})"
            if "requests" in row
            else "-"
        )
        lines.append(
            f"| `python -m ops {row['command']}` | {earlier} | {row['min_s']:.2f} s | {row['median_s']:.2f} s | {requests} | "
            f"{row['exit']} | {row['first'][:60]} | "
            + (f"< 5 s: {verdict(row['median_s'] < 5)} |" if row.get("goal", True) else "- |")
        )
    return [*lines, ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequential", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--mib-samples", type=int, default=60, help="sequential 1 MiB deliveries (and bare copies)")
    parser.add_argument("--delay-ms", type=float, default=40.0, help="distance: added to every storage request")
    parser.add_argument("--distance-samples", type=int, default=25, help="interleaved rounds with the delay")
    parser.add_argument("--request-repeats", type=int, default=10, help="tasks counted per setting")
    parser.add_argument(
        "--staged-mib",
        type=int,
        default=1024 if os.environ.get("BENCH_BIG") == "1" else 256,
        help="the staged file's size (256 MiB; 1024 with BENCH_BIG=1)",
    )
    parser.add_argument(
        "--ops-records",
        type=int,
        default=int(os.environ.get("BENCH_OPS_RECORDS", "5000")),
        help="task records for section 5 (5000; BENCH_OPS_RECORDS=50000 for the published figures; 0: skip)",
    )
    parser.add_argument(
        "--ops-json",
        type=Path,
        help="section 5's figures from a separate `python -m bench.ops_scale N PATH` run, instead of measuring",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "performance.md")
    parser.add_argument(
        "--notes", type=Path, default=ROOT / "bench" / "NOTES.md", help="analysis appended to the report"
    )
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="measure nothing: render the .md again from the .json next to it (after editing bench/NOTES.md)",
    )
    args = parser.parse_args()
    if args.render_only:
        saved: dict[str, Any] = json.loads(args.out.with_suffix(".json").read_text())
        saved.pop("notes", None)
        if args.notes.exists():
            saved["notes"] = args.notes.read_text()
        args.out.write_text(render(saved))
        args.out.with_suffix(".json").write_text(json.dumps(saved, indent=2) + "\n")
        return 0
    started = time.perf_counter()
    partial = args.out.with_suffix(".partial.json")  # each section's figures as soon as it ends

    def keep(results: dict[str, Any]) -> None:
        partial.write_text(json.dumps(results, indent=2, default=str) + "\n")

    with start_azurite() as azurite:
        sources = Sources(azurite)
        results: dict[str, Any] = {"machine": machine()}
        results["requests"] = asyncio.run(bench_requests(azurite, sources, repeats=args.request_repeats))
        keep(results)
        results["distance"] = asyncio.run(
            bench_distance(azurite, sources, samples=args.distance_samples, delay_ms=args.delay_ms)
        )
        keep(results)
        results["latency"] = asyncio.run(
            bench_latency(
                azurite, sources, sequential=args.sequential, rounds=args.rounds, mib_samples=args.mib_samples
            )
        )
        keep(results)
        results["staged"] = [asyncio.run(bench_staged(azurite, sources, size_mib=args.staged_mib))]
        keep(results)
    if args.ops_json is not None:
        results["ops_scale"] = json.loads(args.ops_json.read_text())
    elif args.ops_records > 0:
        from bench.ops_scale import measure

        results["ops_scale"] = asyncio.run(measure(args.ops_records))
    results["seconds"] = time.perf_counter() - started
    if args.notes.exists():
        results["notes"] = args.notes.read_text()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    profile = results["latency"].pop("profile")
    args.out.write_text(render(results))
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    partial.unlink(missing_ok=True)
    print(render(results))
    print("\n--- cProfile of 100 sequential receiver deliveries ---\n" + profile)
    log(f"bench finished in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
