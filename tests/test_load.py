"""A bounded load test through the real function: 500 deliveries, concurrency 50, duplicates,
re-exports racing their originals, and injected 503s. Every 2xx must hold afterwards."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections import Counter
from typing import Any

from azure.storage.blob import ContainerClient

from .conftest import Exports, Response, Webhook, notification
from .faultproxy import FaultProxy, Rule, is_blob_write, is_copy

DELIVERIES = 500
CONCURRENCY = 50
DUPLICATES = 60
RE_EXPORTS = 40


def content(task_number: int, version: int) -> bytes:
    return f"%PDF-1.4 document {task_number} version {version}".encode()


async def test_load_with_duplicates_re_exports_and_throttling_keeps_every_2xx_true(
    proxied: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
) -> None:
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

    answered = {hashlib.sha256(p["exportedFileUrl"].encode()).hexdigest(): p for p, _ in results}
    blobs = {b.name: b for b in destination.list_blobs(include=["metadata", "tags"])}
    files = {name for name in blobs if not name.endswith(".json")}
    assert len(files) == distinct  # each task stored exactly once
    assert {f"{name}.json" for name in files} == set(blobs) - files
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
