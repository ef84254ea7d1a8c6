"""A bounded load test through the real function: 500 deliveries, concurrency 50, duplicates, 503s."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

from azure.storage.blob import ContainerClient

from .conftest import Exports, Response, Webhook, notification
from .faultproxy import FaultProxy, Rule, is_blob_write, is_copy

DELIVERIES = 500
CONCURRENCY = 50
DUPLICATE_SHARE = 0.2


async def test_load_with_duplicates_and_throttling_stores_each_task_once(
    proxied: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
) -> None:
    rng = random.Random(20261128)
    distinct = int(DELIVERIES * (1 - DUPLICATE_SHARE))
    urls = [exports.publish(f"%PDF-1.4 document {i}".encode()) for i in range(distinct)]
    payloads = [notification(url, taskNumber=i, metadata={"batch": "load"}) for i, url in enumerate(urls)]
    deliveries = payloads + [rng.choice(payloads) for _ in range(DELIVERIES - distinct)]
    rng.shuffle(deliveries)
    # Throttling spread over the run: about 1 in 25 copies and 1 in 40 manifest writes answer 503 ServerBusy.
    proxied.add(Rule(lambda r: is_copy(r) and rng.random() < 0.04, times=40, status=503, code="ServerBusy"))
    proxied.add(Rule(lambda r: is_blob_write(r) and rng.random() < 0.025, times=25, status=503, code="ServerBusy"))

    gate = asyncio.Semaphore(CONCURRENCY)

    async def send(payload: dict[str, object]) -> Response:
        async with gate:
            return await webhook.post(payload)

    responses = await asyncio.wait_for(asyncio.gather(*(send(p) for p in deliveries)), timeout=240)

    statuses = Counter(r.status for r in responses)
    assert statuses == {200: DELIVERIES}, statuses
    kinds = Counter(r.body["status"] for r in responses)
    assert kinds["stored"] == distinct
    assert kinds["duplicate"] == DELIVERIES - distinct
    assert sum(rule.fired for rule in proxied.rules) > 0  # the faults really happened

    blobs = {b.name: b for b in destination.list_blobs(include=["metadata", "tags"])}
    files = {name for name in blobs if not name.endswith(".json")}
    assert len(files) == distinct
    assert {f"{name}.json" for name in files} == set(blobs) - files
    by_task = {p["taskId"]: p for p in payloads}
    for name in files:
        task_id = blobs[name].metadata["taskid"]
        assert blobs[name].tag_count == 4  # taskId, taskNumber, workspaceId, batch
        assert f"/{task_id}/" in name
        assert blobs[name].size == len(f"%PDF-1.4 document {by_task[task_id]['taskNumber']}")
