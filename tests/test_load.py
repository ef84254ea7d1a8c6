"""A bounded load test through the real function: 500 deliveries, concurrency 50, duplicates,
re-exports racing their originals, and injected 503s; then renamed re-exports, replays of replaced
deliveries and asynchronous re-exports that fail. Every 2xx must hold afterwards, and every task
ends with one current file: the bytes of its newest 2xx'd export, with a matching manifest."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections import Counter
from typing import Any

from azure.storage.blob import ContainerClient

from receiver.runtime import RUNTIME

from .conftest import Exports, Response, Webhook, notification
from .faultproxy import FaultProxy, Rule, is_blob_write, is_copy

DELIVERIES = 500
CONCURRENCY = 50
DUPLICATES = 60
RE_EXPORTS = 40
RENAMED = 20
REPLAYS = 20
FAILING = 10


def content(task_number: int, version: int) -> bytes:
    return f"%PDF-1.4 document {task_number} version {version}".encode()


def delivery_of(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


async def test_load_with_duplicates_re_exports_and_throttling_keeps_every_2xx_true(
    proxied: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    monkeypatch: Any,
) -> None:
    # Files over 1 MiB are copied asynchronously (the failing re-exports of phase 2); the rest synchronously.
    monkeypatch.setenv("SYNC_COPY_MAX_MIB", "1")
    monkeypatch.setenv("COPY_WAIT_SECONDS", "5")
    await RUNTIME.reset()
    rng = random.Random(20261129)
    distinct = DELIVERIES - DUPLICATES - RE_EXPORTS
    originals = [
        notification(exports.publish(content(i, 1)), taskNumber=i, metadata={"batch": "load"}) for i in range(distinct)
    ]
    re_exports = [
        {**originals[i], "exportedFileUrl": exports.publish(content(i, 2))}
        for i in rng.sample(range(distinct), RE_EXPORTS)
    ]
    # A re-export is sent right next to its original, so the two race inside the same window.
    groups: list[list[dict[str, Any]]] = [[p] for p in originals]
    for again in re_exports:
        groups[again["taskNumber"]].append(again)
    for _ in range(DUPLICATES):
        rng.choice(groups).append(rng.choice(originals))
    rng.shuffle(groups)
    deliveries = [p for group in groups for p in group]
    assert len(deliveries) == DELIVERIES
    # Throttling spread over the run: about 1 in 25 copies and 1 in 40 manifest writes answer 503 ServerBusy.
    proxied.add(Rule(lambda r: is_copy(r) and rng.random() < 0.04, times=40, status=503, code="ServerBusy"))
    proxied.add(Rule(lambda r: is_blob_write(r) and rng.random() < 0.025, times=25, status=503, code="ServerBusy"))
    # Every successful copy is answered 200 ms after Azurite made it: a re-export's copy lands inside that window.
    proxied.add(Rule(is_copy, times=DELIVERIES * 2, delay_answer=0.2))

    gate = asyncio.Semaphore(CONCURRENCY)

    async def send(payload: dict[str, Any]) -> tuple[dict[str, Any], Response]:
        async with gate:
            return payload, await webhook.post(payload)

    results = await asyncio.wait_for(asyncio.gather(*(send(p) for p in deliveries)), timeout=240)

    statuses = Counter(r.status for _, r in results)
    assert statuses == {200: DELIVERIES}, statuses
    kinds = Counter(r.body["status"] for _, r in results)
    assert kinds["stored"] + kinds["superseded"] >= distinct
    assert kinds["duplicate"] >= DUPLICATES - RE_EXPORTS  # a duplicate may land after its task's re-export
    assert kinds["superseded"] > 0  # re-exports really overtook their originals mid-delivery
    assert sum(rule.fired for rule in proxied.rules[:2]) > 0  # the faults really happened

    answered = {delivery_of(p["exportedFileUrl"]): p for p, _ in results}
    blobs = {b.name: b for b in destination.list_blobs(include=["metadata", "tags"])}
    files = {name for name in blobs if not name.endswith(".json")}
    assert len(files) == distinct  # each task stored exactly once
    assert {f"{name}.json" for name in files} == set(blobs) - files
    current: dict[str, tuple[str, bytes]] = {}  # taskId -> (blob name, bytes) after phase 1
    for name in files:
        delivery = blobs[name].metadata["delivery"]
        payload = answered[delivery]  # the stored export is one that got a 2xx
        assert f"/{payload['taskId']}/" in name
        assert blobs[name].tag_count == 4  # taskId, taskNumber, workspaceId, batch
        version = 2 if any(r["exportedFileUrl"] == payload["exportedFileUrl"] for r in re_exports) else 1
        data = destination.get_blob_client(name).download_blob().readall()
        assert data == content(payload["taskNumber"], version)
        manifest = json.loads(destination.get_blob_client(f"{name}.json").download_blob().readall())
        assert manifest["delivery"] == delivery and manifest["copyStatus"] == "success"
        current[payload["taskId"]] = (name, data)

    # Phase 2, on disjoint tasks, all at once: renamed re-exports (a new name: the older file must go),
    # replays of deliveries their task already replaced (superseded, nothing copied), and asynchronous
    # re-exports whose copy fails (502: the task keeps the file it had).
    proxied.reset()
    by_task = {p["taskId"]: p for p in originals}
    replaced_by_task: dict[str, list[dict[str, Any]]] = {}
    for payload, _ in results:
        replaced_by_task.setdefault(payload["taskId"], []).append(payload)
    replayable = []
    for task, (name, _) in current.items():
        manifest = json.loads(destination.get_blob_client(f"{name}.json").download_blob().readall())
        older = [p for p in replaced_by_task[task] if delivery_of(p["exportedFileUrl"]) in manifest["replaced"]]
        if older:
            replayable.append(older[0])
    assert len(replayable) >= REPLAYS, len(replayable)
    replays = replayable[:REPLAYS]
    taken = {p["taskId"] for p in replays}
    others = [task for task in current if task not in taken]
    rng.shuffle(others)
    renamed = [
        {
            **by_task[task],
            "exportedFileUrl": exports.publish(content(by_task[task]["taskNumber"], 3)),
            "displayName": f"Renamed {by_task[task]['taskNumber']}",
        }
        for task in others[:RENAMED]
    ]
    failing = [
        {**by_task[task], "exportedFileUrl": exports.publish(b"%PDF-1.4 large " + b"x" * (2 * 1024 * 1024))}
        for task in others[RENAMED : RENAMED + FAILING]
    ]
    # Their source is gone once the asynchronous copy has started.
    proxied.source_gone(frozenset(delivery_of(payload["exportedFileUrl"]) for payload in failing), times=100_000)
    second = [*renamed, *replays, *failing]
    rng.shuffle(second)
    phase2 = await asyncio.wait_for(asyncio.gather(*(send(p) for p in second)), timeout=240)
    answers = {delivery_of(p["exportedFileUrl"]): r for p, r in phase2}
    for payload in renamed:
        answer = answers[delivery_of(payload["exportedFileUrl"])]
        assert answer.status == 200 and answer.body["status"] == "stored", answer.body
    for payload in replays:
        answer = answers[delivery_of(payload["exportedFileUrl"])]
        assert answer.status == 200 and answer.body["status"] == "superseded", answer.body
    for payload in failing:
        answer = answers[delivery_of(payload["exportedFileUrl"])]
        assert answer.status == 502 and "stays" in answer.body["message"], answer.body

    blobs = {b.name: b for b in destination.list_blobs(include=["metadata"])}
    files = {name for name in blobs if not name.endswith(".json")}
    assert len(files) == distinct, "a task has more than one current file, or none"
    assert {f"{name}.json" for name in files} == set(blobs) - files
    newest = {p["taskId"]: (None, content(p["taskNumber"], 3)) for p in renamed}
    for name in files:
        task = blobs[name].metadata["taskid"]
        expected = newest.get(task, current[task])[1]
        assert destination.get_blob_client(name).download_blob().readall() == expected, name
        manifest = json.loads(destination.get_blob_client(f"{name}.json").download_blob().readall())
        assert manifest["delivery"] == blobs[name].metadata["delivery"] and manifest["copyStatus"] == "success"
    assert [b for b in destination.list_blobs(include=["snapshots"]) if b.snapshot] == []
