"""A bounded load test through the real function (loopback only): about 150 deliveries at concurrency
40 with duplicates, same-name re-exports racing their originals, and injected 503s; then renamed
re-exports, replays of replaced deliveries and re-exports whose source is gone. Every 202 and 503 is
finished by the real queue function, as the host would. Afterwards every task has one current file:
the bytes of its newest 2xx'd export, its metadata and manifest naming it."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

from azure.storage.blob import ContainerClient

from receiver.models import State
from receiver.runtime import RUNTIME
from receiver.verification import CopyStillRunning

from .conftest import Exports, Response, Webhook, delivery_of, files, manifest_of, notification, record_of, run_verifier
from .faultproxy import FaultProxy, Rule, is_copy, is_manifest_write, is_record_write

DISTINCT = 80
CONCURRENCY = 40
DUPLICATES = 25
RE_EXPORTS = 20
RENAMED = 10
REPLAYS = 10
FAILING = 8


def content(task_number: int, version: int) -> bytes:
    return f"%PDF-1.4 document {task_number} version {version}".encode()


async def finish(results: list[tuple[dict[str, Any], Response]]) -> Counter[str]:
    """What the queue function does with every queued message: retry until it ends (as the host would)."""
    ends: Counter[str] = Counter()
    for _, response in results:
        if response.verification is None:
            continue
        for _ in range(5):
            try:
                await run_verifier(response.verification)
                ends["finished"] += 1
                break
            except CopyStillRunning:
                ends["retried"] += 1
        else:
            raise AssertionError("a queued delivery never finished")
    return ends


def check_task(destination: ContainerClient, payload: dict[str, Any], twoxx: set[str]) -> tuple[str, str]:
    """One current file: the newest delivery of the record that did not fail, a 2xx'd export's bytes."""
    record = record_of(destination, payload)
    assert record is not None, payload["taskId"]
    newest = [item for item in record.deliveries if item.state is not State.FAILED][-1]
    assert record.current == newest.delivery and newest.state is State.STORED, record
    assert record.current in twoxx, "the current file is an export that never got a 2xx"
    assert record.retire == [], record
    assert not [item for item in record.deliveries if item.state is State.COPYING], record
    name = newest.blob
    blob = destination.get_blob_client(name)
    assert blob.get_blob_properties().metadata["delivery"] == newest.delivery
    assert manifest_of(destination, name)["delivery"] == newest.delivery
    return name, newest.delivery


async def test_load_with_duplicates_re_exports_and_throttling_keeps_every_2xx_true(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient, monkeypatch: Any
) -> None:
    monkeypatch.setenv("COPY_WAIT_SECONDS", "5")
    await RUNTIME.reset()
    rng = random.Random(20261129)
    originals = [
        notification(exports.publish(content(i, 1)), taskNumber=i, metadata={"batch": "load"}) for i in range(DISTINCT)
    ]
    data: dict[str, bytes] = {delivery_of(p["exportedFileUrl"]): content(i, 1) for i, p in enumerate(originals)}
    re_exports = []
    for i in rng.sample(range(DISTINCT), RE_EXPORTS):
        url = exports.publish(content(i, 2))
        data[delivery_of(url)] = content(i, 2)
        re_exports.append({**originals[i], "exportedFileUrl": url})
    # A re-export is sent right next to its original, so the two race inside the same window.
    groups: list[list[dict[str, Any]]] = [[p] for p in originals]
    for payload in re_exports:
        groups[payload["taskNumber"]].append(payload)
    for _ in range(DUPLICATES):
        rng.choice(groups).append(rng.choice(originals))
    rng.shuffle(groups)
    deliveries = [p for group in groups for p in group]
    # Throttling spread over the run: 503 ServerBusy on some copies, record swaps and manifest writes.
    faults = [
        proxied.add(Rule(lambda r: is_copy(r) and rng.random() < 0.04, times=30, status=503, code="ServerBusy")),
        proxied.add(
            Rule(lambda r: is_record_write(r) and rng.random() < 0.03, times=20, status=503, code="ServerBusy")
        ),
        proxied.add(
            Rule(lambda r: is_manifest_write(r) and rng.random() < 0.03, times=20, status=503, code="ServerBusy")
        ),
    ]
    # Every successful copy is answered 100 ms after Azurite made it: a racing re-export lands inside that window.
    proxied.add(Rule(is_copy, times=len(deliveries) * 3, delay_answer=0.1))

    gate = asyncio.Semaphore(CONCURRENCY)

    async def send(payload: dict[str, Any]) -> tuple[dict[str, Any], Response]:
        async with gate:
            return payload, await webhook.post(payload)

    results = await asyncio.wait_for(asyncio.gather(*(send(p) for p in deliveries)), timeout=120)
    statuses = Counter(r.status for _, r in results)
    assert set(statuses) <= {200, 202, 503}, statuses
    assert all(r.verification is not None for _, r in results if r.status != 200)  # nothing untracked
    kinds = Counter(r.body["status"] for _, r in results)
    assert kinds["duplicate"] > 0 and kinds["stored"] > 0, kinds
    assert sum(rule.fired for rule in faults) > 0  # the faults really happened
    twoxx = {delivery_of(p["exportedFileUrl"]) for p, r in results if r.status < 300}
    proxied.reset()
    await finish(results)
    twoxx |= {delivery_of(p["exportedFileUrl"]) for p, r in results if r.verification is not None}

    current: dict[str, tuple[str, str]] = {}
    for payload in originals:
        name, delivery = check_task(destination, payload, twoxx)
        assert destination.get_blob_client(name).download_blob().readall() == data[delivery]
        current[payload["taskId"]] = (name, delivery)
    assert len(files(destination)) == DISTINCT  # one current file a task, nothing else

    # Phase 2, on disjoint tasks, all at once: renamed re-exports (the older file must go), replays of
    # deliveries their task already replaced (superseded, nothing copied), and re-exports whose source
    # is gone (502: the task keeps the file it had).
    by_task = {p["taskId"]: p for p in originals}
    replayable = [
        p for p in originals if current[p["taskId"]][1] != delivery_of(p["exportedFileUrl"])
    ]  # an original its re-export replaced
    replays = replayable[:REPLAYS]
    taken = {p["taskId"] for p in replays}
    others = [task for task in current if task not in taken]
    rng.shuffle(others)
    renamed = []
    for task in others[:RENAMED]:
        url = exports.publish(content(by_task[task]["taskNumber"], 3))
        data[delivery_of(url)] = content(by_task[task]["taskNumber"], 3)
        renamed.append(
            {**by_task[task], "exportedFileUrl": url, "displayName": f"Renamed {by_task[task]['taskNumber']}"}
        )
    failing = []
    for task in others[RENAMED : RENAMED + FAILING]:
        url = exports.publish(b"%PDF-1.4 gone")
        exports.client.get_blob_client(
            "anonymized-exports", url.split("?")[0].split("/anonymized-exports/")[1]
        ).delete_blob()
        failing.append({**by_task[task], "exportedFileUrl": url})
    second = [*renamed, *replays, *failing]
    rng.shuffle(second)
    phase2 = await asyncio.wait_for(asyncio.gather(*(send(p) for p in second)), timeout=120)
    answers = {delivery_of(p["exportedFileUrl"]): r for p, r in phase2}
    for payload in renamed:
        answer = answers[delivery_of(payload["exportedFileUrl"])]
        assert answer.status == 200 and answer.body["status"] == "stored", answer.body
    for payload in replays:
        answer = answers[delivery_of(payload["exportedFileUrl"])]
        assert answer.status == 200 and answer.body["status"] == "superseded", answer.body
    for payload in failing:
        answer = answers[delivery_of(payload["exportedFileUrl"])]
        assert answer.status == 502, answer.body

    twoxx |= {delivery_of(p["exportedFileUrl"]) for p, r in phase2 if r.status < 300}
    moved = {p["taskId"]: delivery_of(p["exportedFileUrl"]) for p in renamed}
    for payload in originals:
        name, delivery = check_task(destination, payload, twoxx)
        assert delivery == moved.get(payload["taskId"], current[payload["taskId"]][1])
        assert destination.get_blob_client(name).download_blob().readall() == data[delivery]
    assert len(files(destination)) == DISTINCT
