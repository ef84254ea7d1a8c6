"""`ops failed` and `ops pending` cost what their window costs, not what the container's history does:
failure markers written beside the record's swap (receiver/attention.py), the reconciliation's pending
summary, each confirmed from its task record. On the in-memory world first (storage requests counted),
then on Azurite through the real function app."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from azure.storage.blob import ContainerClient

from ops.cli import run
from ops.output import NOT_FOUND, OK
from receiver import attention
from receiver.attention import (
    FAILED_PREFIX,
    MARKER_RETENTION,
    PENDING_NAME,
    Summary,
    Watch,
    after_run,
    bucket_prefixes,
    marker_name,
    write_marker,
)
from receiver.migration import legacy_ids
from receiver.models import Delivery, State, Step, TaskRecord, record_name
from receiver.reconciliation import QUEUE_COVERAGE, RunReport, candidate, reconcile_run
from receiver.runtime import RUNTIME
from receiver.verification import verify_copy
from sim.world import Export

from .conftest import EXPORT_CONTAINER, Exports, Webhook, delivery_of, notification, run_timer, run_verifier
from .faultproxy import FaultProxy, Rule
from .test_ops import Ops, Ran, stored


@pytest.fixture
def ops() -> Ops:
    return Ops()


async def reconcile(ops: Ops) -> RunReport:
    return await ops.reconcile()


def markers_in(ops: Ops) -> list[str]:
    return [name for name in ops.world.storage.names() if name.startswith(FAILED_PREFIX)]


def delivery(export: Export) -> str:
    return hashlib.sha256(export.url.encode()).hexdigest()


# --- failed: from the markers ----------------------------------------------------------------------------


async def test_a_re_export_that_failed_after_its_202_is_listed_from_its_marker(ops: Ops) -> None:
    await stored(ops)
    text = await ops.accept(ops.world.export("task-1", expires_in=timedelta(hours=1)))  # answered 202
    await reconcile(ops)
    assert (await ops("failed", "--since", "15", "--alert")).code == OK
    ops.world.clock.advance(timedelta(hours=2))

    assert await verify_copy(text.encode(), runtime=ops.world.runtime, now=ops.world.now) == "failed"
    [marker] = markers_in(ops)  # written by the engine, beside the record's swap
    assert dict(ops.world.storage.stored(marker).metadata)["kind"] == "expired"  # type: ignore[union-attr]
    assert (await reconcile(ops)).attention.backfilled == 0  # type: ignore[union-attr]

    ran = await ops("failed", "--since", "15", "--alert")
    assert ran.code == NOT_FOUND
    assert "failed" in ran.out and "current file kept: ws-1/task-1/invoice.pdf" in ran.out
    data = (await ops("failed", "--since", "15", "--json")).json()
    assert data["markers"] == 1 and [entry["state"] for entry in data["deliveries"]] == ["failed"]
    record = ops.world.record()
    assert record is not None and record.current_delivery is not None
    assert record.current_delivery.blob == "ws-1/task-1/invoice.pdf"
    # An hour later it is out of a 15-minute window, and still in a 2-hour one.
    ops.world.clock.advance(timedelta(hours=1))
    await reconcile(ops)
    assert (await ops("failed", "--since", "15", "--alert")).code == OK
    assert (await ops("failed", "--since", "120", "--alert")).code == NOT_FOUND


async def test_a_copy_nothing_can_finish_is_listed_from_the_summary(ops: Ops) -> None:
    await ops.accept(ops.world.export("task-1", expires_in=timedelta(days=2)))  # its message was lost
    ops.world.clock.advance(QUEUE_COVERAGE + timedelta(minutes=20))
    report = await reconcile(ops)
    assert report.lost == ["task-1"]  # waiting: the reconciliation never has the link

    ran = await ops("failed", "--since", "60", "--json")
    [entry] = ran.json()["deliveries"]
    assert entry["state"] == "copying" and "past every try of its queue message" in entry["reason"]
    assert ran.json()["markers"] == 0
    assert (await ops("failed", "--since", "10", "--json")).json()["deliveries"] == []  # it stuck 20 minutes ago


async def test_a_failure_whose_marker_was_lost_is_backfilled_and_seen_by_the_next_window(ops: Ops) -> None:
    export = ops.world.export("task-1", expires_in=timedelta(hours=1))
    text = await ops.accept(export)
    ops.world.clock.advance(timedelta(hours=2))
    failed_at = ops.world.now
    # The driver stops between the record and the marker: the swap lands, the marker never does.
    ops.world.faults.fail_before("put", marker_name("ws-1", "task-1", delivery(export), failed_at))
    assert await verify_copy(text.encode(), runtime=ops.world.runtime, now=ops.world.now) == "failed"
    record = ops.world.record()
    assert record is not None and record.deliveries[0].state is State.FAILED
    assert markers_in(ops) == []
    ops.world.clock.advance(timedelta(minutes=3))
    assert (await ops("failed", "--since", "15", "--json")).json()["deliveries"] == []  # a cron run misses it

    ops.world.clock.advance(timedelta(minutes=5))
    report = await reconcile(ops)
    assert report.attention is not None and report.attention.backfilled == 1
    [marker] = markers_in(ops)
    assert dict(ops.world.storage.stored(marker).metadata)["kind"] == "backfilled"  # type: ignore[union-attr]
    # The next cron run's window starts after the failure, and still sees it: marked when it was written.
    ops.world.clock.advance(timedelta(minutes=10))
    assert ops.world.now - timedelta(minutes=15) > failed_at
    [entry] = (await ops("failed", "--since", "15", "--json")).json()["deliveries"]
    assert entry["taskId"] == "task-1" and entry["state"] == "failed"
    assert (await reconcile(ops)).attention.backfilled == 0  # type: ignore[union-attr]
    ops.world.clock.advance(timedelta(minutes=15))
    assert (await ops("failed", "--since", "15", "--json")).json()["deliveries"] == []  # seen once


async def test_an_old_failure_without_a_marker_is_backfilled_where_it_failed(ops: Ops) -> None:
    """Records from before markers existed: their failures of the last 7 days get markers under the
    hour they failed, so a short window does not list them all again."""
    at = ops.world.now - timedelta(days=2)
    record = _old_failed_record(1, at)
    await ops.world.storage.put(
        record_name("ws-1", "old-1"),
        record.to_bytes(),
        if_match=None,
        content_type="application/json",
        metadata=record.labels(),
    )
    assert (await reconcile(ops)).attention.backfilled == 1  # type: ignore[union-attr]
    assert markers_in(ops) == [marker_name("ws-1", "old-1", record.deliveries[0].delivery, at)]
    assert (await ops("failed", "--since", "15", "--json")).json()["deliveries"] == []
    assert [entry["taskId"] for entry in (await ops("failed", "--json")).json()["deliveries"]] == ["old-1"]


async def test_a_marker_whose_swap_lost_shows_nothing(ops: Ops) -> None:
    await stored(ops)
    record = ops.world.record()
    assert record is not None
    # A driver failed the delivery, sent its marker beside the swap, and lost the swap.
    lost = record.deliveries[0].model_copy(
        update={"state": State.FAILED, "failed_at": ops.world.now, "failure_reason": "x"}
    )
    assert await write_marker(ops.world.storage, record.model_copy(update={"deliveries": [lost]}), lost, "expired")
    await reconcile(ops)

    ran = await ops("failed", "--since", "15", "--alert", "--json")
    assert ran.code == OK and ran.json()["markers"] == 1 and ran.json()["deliveries"] == []


async def test_an_operators_give_up_is_listed_by_its_marker(ops: Ops) -> None:
    await ops.accept(ops.world.export("task-1"))
    await reconcile(ops)
    assert (await ops("fail", "--task", "task-1", "--reason", "lost; re-exported by hand")).code == OK
    [marker] = markers_in(ops)
    assert dict(ops.world.storage.stored(marker).metadata)["kind"] == "operator-failed"  # type: ignore[union-attr]
    ran = await ops("failed", "--since", "15", "--alert")
    assert ran.code == NOT_FOUND and "lost; re-exported by hand" in ran.out


def _old_failed_record(number: int, at: datetime) -> TaskRecord:
    item = Delivery(
        delivery=f"{number:064x}",
        blob=f"ws-1/old-{number}/invoice.pdf",
        state=State.FAILED,
        received_at=at,
        failed_at=at,
        failure_reason="the file link expired",
        history=[Step(at=at, by="verifier", outcome="failed", status=410)],
    )
    return TaskRecord(workspace_id="ws-1", task_id=f"old-{number}", deliveries=[item])


async def _cost_of(ops: Ops, *argv: str) -> tuple[int, int, Ran]:
    """Storage requests of one command, and how many blobs its listings returned."""
    storage = ops.world.storage
    storage.calls.clear()
    ran = await ops(*argv)
    names = storage.names()
    listed = sum(sum(1 for name in names if name.startswith(prefix)) for op, prefix in storage.calls if op == "list")
    return len(storage.calls), listed, ran


@pytest.mark.parametrize("old", [10, 1000])
async def test_failed_since_15_costs_the_same_over_10_or_1000_old_failed_records(old: int) -> None:
    costs = {}
    for count in (old, old + 1):  # one more old failure changes nothing
        world = Ops()
        at = world.world.now - timedelta(days=2)
        for number in range(count):
            record = _old_failed_record(number, at)
            await world.world.storage.put(
                record_name("ws-1", record.task_id),
                record.to_bytes(),
                if_match=None,
                content_type="application/json",
                metadata=record.labels(),
            )
            await write_marker(world.world.storage, record, record.deliveries[0], "expired")
        text = await world.accept(world.world.export("new", expires_in=timedelta(minutes=1)))
        world.world.clock.advance(timedelta(minutes=5))
        assert await verify_copy(text.encode(), runtime=world.world.runtime, now=world.world.now) == "failed"
        await reconcile(world)
        requests, listed, ran = await _cost_of(world, "failed", "--since", "15", "--json")
        assert [entry["taskId"] for entry in ran.json()["deliveries"]] == ["new"]
        costs[count] = (requests, listed)
        # pending reads the summary and the records it shows: nothing else
        requests, listed, ran = await _cost_of(world, "pending")
        assert ran.code == OK and listed == 0 and requests == 1
    # The summary's read, one listing of this hour's markers (and the last hour's), the one record.
    assert costs[old] == costs[old + 1] and costs[old][0] <= 4 and costs[old][1] <= 2, costs


# --- pending: from the summary ---------------------------------------------------------------------------


async def test_pending_and_failed_name_the_poison_queue_the_last_run_saw(ops: Ops) -> None:
    """Deliveries whose messages are poisoned are retried by nothing: a PROBLEM naming replay-poison,
    exit 1, from the depth the run measured first (whatever else the run did)."""
    await after_run(
        ops.world.storage, Watch(ops.world.now), schedule="0 */10 * * * *", coverage=QUEUE_COVERAGE,
        poison=2, wall=ops.world.clock,
    )  # fmt: skip
    for command in ("pending", "failed"):
        ran = await ops(command)
        assert ran.code == NOT_FOUND, ran.out
        assert ran.out.startswith("PROBLEM: 2 message(s) were in the poison queue"), ran.out
        assert "python -m ops replay-poison --dry-run" in ran.out
    as_json = await ops("pending", "--json")
    assert as_json.json()["summary"]["poisonMessages"] == 2
    await after_run(
        ops.world.storage, Watch(ops.world.now), schedule="0 */10 * * * *", coverage=QUEUE_COVERAGE,
        poison=0, wall=ops.world.clock,
    )  # fmt: skip
    assert (await ops("pending")).code == OK


async def test_pending_does_not_say_every_copy_will_finish_while_the_poison_queue_holds_messages(
    ops: Ops, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pending reads no queue: with messages in the poison queue, its count of copies that will not finish by
    themselves says it leaves those out (find --task T tells), instead of a bare "0 will not finish"."""
    import receiver.hostqueue

    await ops.accept(ops.world.export("task-1"))
    ops.world.clock.advance(timedelta(minutes=20))

    depths = iter((1, 0))

    async def depth(queue: str, environ: dict[str, str]) -> int:
        return next(depths)

    monkeypatch.setattr(receiver.hostqueue, "queue_depth", depth)
    for says in (True, False):
        await reconcile(ops)
        ran = await ops("pending")
        assert "0 will not finish by themselves" in ran.out, ran.out
        assert ("besides any whose message is in the poison queue (find --task T says)" in ran.out) is says, ran.out


async def test_pending_lists_a_copying_delivery_from_the_summary_and_says_how_old_it_is(ops: Ops) -> None:
    nothing = await ops("pending")
    assert nothing.code == NOT_FOUND and nothing.out.startswith("PROBLEM: no reconciliation run has written")
    as_json = await ops("pending", "--json")  # a script reading --json gets the same sentence
    assert as_json.code == NOT_FOUND and as_json.json()["problems"][0].startswith("PROBLEM: no reconciliation run")
    await ops.accept(ops.world.export("task-1"))
    ops.world.clock.advance(timedelta(minutes=30))
    await ops.accept(ops.world.export("task-2"))
    await reconcile(ops)
    ops.world.clock.advance(timedelta(minutes=2))

    ran = await ops("pending", "--json")  # past its time: copying for over RECONCILE_AFTER_MINUTES (10)
    assert [entry["taskId"] for entry in ran.json()["deliveries"]] == ["task-1"]
    summary = ran.json()["summary"]
    assert summary["ageSeconds"] == 120 and not summary["stale"] and summary["copyingTasks"] == 2
    text = await ops("pending", "--older-than", "0")
    assert text.code == OK and text.out.index("task-1") < text.out.index("task-2")
    assert "last reconciliation run completed" in text.out and "(2m 00s ago)" in text.out
    assert "python -m ops find --task T --workspace W" in text.out  # the next step for one row
    await ops.accept(ops.world.export("task-3"))  # after the run: not in its summary yet
    later = await ops("pending", "--older-than", "0", "--json")
    assert [entry["taskId"] for entry in later.json()["deliveries"]] == ["task-1", "task-2"]
    assert (await ops("pending", "--alert")).code == NOT_FOUND
    assert (await ops("pending", "--older-than", "60", "--alert")).code == OK

    ops.world.clock.advance(timedelta(minutes=30))  # no run completed since: the safety net stopped
    stale = await ops("pending", "--older-than", "600")
    assert stale.code == NOT_FOUND and stale.out.startswith("PROBLEM: the reconciliation has not completed a run")
    assert (await ops("failed", "--since", "15")).code == NOT_FOUND


async def test_a_delivery_finished_since_the_summary_is_not_listed(ops: Ops) -> None:
    text = await ops.accept(ops.world.export("task-1"))
    ops.world.clock.advance(timedelta(minutes=20))
    await reconcile(ops)
    assert len((await ops("pending", "--json")).json()["deliveries"]) == 1
    assert await verify_copy(text.encode(), runtime=ops.world.runtime, now=ops.world.now) == "stored"
    assert (await ops("pending", "--json")).json()["deliveries"] == []


# --- bounded, and never mistaken for anything else -------------------------------------------------------


async def test_old_markers_are_deleted_a_bounded_number_a_run(ops: Ops, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attention, "MAX_PRUNE", 2)
    old = ops.world.now - MARKER_RETENTION - timedelta(hours=1)
    for number in range(3):
        record = _old_failed_record(number, old)
        await write_marker(ops.world.storage, record, record.deliveries[0], "expired")
    kept = _old_failed_record(9, ops.world.now - timedelta(days=1))
    await write_marker(ops.world.storage, kept, kept.deliveries[0], "expired")

    first = await after_run(
        ops.world.storage, Watch(ops.world.now), schedule="0 */10 * * * *", coverage=QUEUE_COVERAGE,
        poison=None, wall=ops.world.clock,
    )  # fmt: skip
    assert first.pruned == 2 and len(markers_in(ops)) == 2
    second = await after_run(
        ops.world.storage, Watch(ops.world.now), schedule="0 */10 * * * *", coverage=QUEUE_COVERAGE,
        poison=None, wall=ops.world.clock,
    )  # fmt: skip
    assert second.pruned == 1 and markers_in(ops) == [
        marker_name("ws-1", "old-9", kept.deliveries[0].delivery, kept.deliveries[0].failed_at or old)
    ]


async def test_markers_and_the_summary_are_never_files_manifests_or_records(ops: Ops) -> None:
    await stored(ops)
    text = await ops.accept(ops.world.export("task-2", expires_in=timedelta(hours=1)))
    ops.world.clock.advance(timedelta(hours=2))
    await verify_copy(text.encode(), runtime=ops.world.runtime, now=ops.world.now)
    await reconcile(ops)
    ours = [name for name in ops.world.storage.names() if name.startswith(".smartdocumentor/attention/")]
    assert len(ours) == 2 and PENDING_NAME in ours
    assert set(ops.world.files()) == {"ws-1/task-1/invoice.pdf"}
    for name in ours:
        stored_blob = ops.world.storage.stored(name)
        assert stored_blob is not None
        [listed] = [item async for item in ops.world.storage.list(name)]
        meta = dict(stored_blob.metadata)
        assert meta["receiverkind"] in ("failure-marker", "pending-summary") and "delivery" not in meta
        assert candidate(listed, now=ops.world.now, after=timedelta(0)) is None  # the reconciliation's sweep
        assert legacy_ids(listed) is None  # the migration
    found = (await ops("find", "--workspace", "ws-1", "--json")).json()
    assert sorted(task["taskId"] for task in found["tasks"]) == ["task-1", "task-2"]


def test_the_window_is_listed_by_the_hour_or_by_the_day() -> None:
    now = datetime(2026, 3, 2, 8, 10, tzinfo=UTC)
    assert bucket_prefixes(now - timedelta(minutes=15), now) == [
        f"{FAILED_PREFIX}2026-03-02T07/",
        f"{FAILED_PREFIX}2026-03-02T08/",
    ]
    assert len(bucket_prefixes(now - timedelta(hours=24), now)) == 25
    assert bucket_prefixes(now - timedelta(days=7), now)[0] == f"{FAILED_PREFIX}2026-02-23T"
    assert len(bucket_prefixes(now - timedelta(days=7), now)) == 8
    # A delivery accepted again and failed again within the hour gets a second marker of its own.
    first, again = marker_name("w", "t", "ab", now), marker_name("w", "t", "ab", now + timedelta(minutes=40))
    assert first.rsplit("/", 1)[0] == again.rsplit("/", 1)[0] and first != again


async def test_find_workspace_lists_a_page_of_max(ops: Ops) -> None:
    for number in range(7):
        await stored(ops, f"task-{number}")
    sizes: list[int] = []
    listing = ops.world.storage.list_page

    async def spied(prefix: str, *, marker: str | None, size: int) -> Any:
        page, following = await listing(prefix, marker=marker, size=size)
        sizes.append(len(page))
        return page, following

    ops.world.storage.list_page = spied  # type: ignore[method-assign]
    ran = await ops("find", "--workspace", "ws-1", "--max", "2", "--json")
    assert [task["taskId"] for task in ran.json()["tasks"]] == ["task-0", "task-1"] and ran.json()["more"]
    assert sizes == [2]


def test_the_summary_reads_back_what_it_wrote() -> None:
    now = datetime(2026, 3, 2, 8, 10, tzinfo=UTC)
    watch = Watch(now)
    record = TaskRecord(
        workspace_id="ws/1",
        task_id="t 1",
        deliveries=[
            Delivery(
                delivery="a" * 64,
                blob="b",
                state=State.COPYING,
                received_at=now - timedelta(hours=1),
                link_expires_on=now + timedelta(hours=1),
            )
        ],
    )
    from receiver.storage import Listed

    watch.see(Listed(name=record_name("ws/1", "t 1"), etag='"1"', metadata=record.labels()))
    [task] = watch.copying
    assert (task.workspace_id, task.task_id, task.copying) == ("ws/1", "t 1", 1)
    summary = Summary(now, now, "0 */10 * * * *", timedelta(minutes=25), 1, 1, [task])
    again = Summary.from_bytes(summary.to_bytes())
    assert again == summary and not again.truncated


# --- on Azurite, through the real function app -----------------------------------------------------------


@pytest.fixture
async def staged(proxied: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> FaultProxy:
    """Every file staged in blocks, and the answer never waits for them: 202, the queue function commits."""
    monkeypatch.setenv("SYNC_COPY_MAX_MIB", "0")
    monkeypatch.setenv("COPY_WAIT_SECONDS", "0")
    await RUNTIME.reset()
    return proxied


async def ops_on_azurite(*argv: str) -> Ran:
    import io

    out, err = io.StringIO(), io.StringIO()
    code = await run([*argv, "--json"], environ=dict(os.environ), out=out, err=err)
    return Ran(code, out.getvalue(), err.getvalue())


def is_marker_put(request: web.Request) -> bool:
    return request.method == "PUT" and "/.smartdocumentor/attention/failed/" in request.path


async def test_on_azurite_a_failure_after_a_202_is_listed_from_its_marker_and_pending_from_the_summary(
    staged: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    first = notification(exports.publish(b"%PDF first"))
    answer = await webhook.post(first)
    assert answer.status == 202 and answer.verification is not None
    await run_verifier(answer.verification)  # stored: the task's current file
    source = "re-export.pdf"
    exports.client.get_blob_client(EXPORT_CONTAINER, source).upload_blob(b"%PDF second", overwrite=True)
    second = {**first, "exportedFileUrl": exports.sas_url(source)}
    answer = await webhook.post(second)
    assert answer.status == 202 and answer.verification is not None  # the re-export: copying
    other = notification(exports.publish(b"%PDF another task"))
    assert (await webhook.post(other)).status == 202  # another task, copying: its message is never run
    exports.client.get_blob_client(EXPORT_CONTAINER, source).delete_blob()  # the sender removed it
    await run_verifier(answer.verification)  # fails for good: source gone
    markers = [b.name for b in destination.list_blobs(name_starts_with=FAILED_PREFIX)]
    assert [name.rsplit("/", 1)[-1].split("-")[0] for name in markers] == [delivery_of(second["exportedFileUrl"])]

    await run_timer()  # the reconciliation's summary
    assert destination.get_blob_client(PENDING_NAME).exists()
    failed = await ops_on_azurite("failed", "--since", "15", "--alert")
    assert failed.code == NOT_FOUND, failed.err
    [entry] = failed.json()["deliveries"]
    assert entry["taskId"] == first["taskId"] and entry["state"] == "failed" and entry["currentFileKept"]
    assert failed.json()["markers"] == 1 and not failed.json()["summary"]["stale"]
    pending = await ops_on_azurite("pending", "--older-than", "0")
    assert pending.code == OK, pending.err
    [copying] = pending.json()["deliveries"]
    assert copying["taskId"] == other["taskId"]
    assert pending.json()["summary"]["ageSeconds"] < 60 and pending.json()["summary"]["records"] == 2


async def test_on_azurite_a_marker_lost_beside_the_swap_is_backfilled(
    staged: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    source = "gone.pdf"
    exports.client.get_blob_client(EXPORT_CONTAINER, source).upload_blob(b"%PDF gone", overwrite=True)
    payload = notification(exports.sas_url(source))
    answer = await webhook.post(payload)
    assert answer.status == 202 and answer.verification is not None
    exports.client.get_blob_client(EXPORT_CONTAINER, source).delete_blob()
    refuse = staged.add(Rule(is_marker_put, times=100, status=503, code="ServerBusy"))
    await run_verifier(answer.verification)  # the record says failed; its marker never landed
    assert refuse.fired and not list(destination.list_blobs(name_starts_with=FAILED_PREFIX))
    staged.rules.remove(refuse)

    report = await reconcile_run(runtime=RUNTIME, now=datetime.now(UTC))
    assert report.attention is not None and report.attention.backfilled == 1, report
    failed = await ops_on_azurite("failed", "--since", "15")
    assert [entry["taskId"] for entry in failed.json()["deliveries"]] == [payload["taskId"]], failed.out


@pytest.mark.parametrize(("value", "read"), [(2, 2), (0, 0), (True, None), (-1, None), ("3", None), (None, None)])
def test_a_summarys_poison_count_is_a_whole_number_or_not_known(value: object, read: int | None) -> None:
    """A summary another writer (or a bit flip) left with a poison count that is no count is read as
    not known: no PROBLEM from a bogus "True message(s)"."""
    summary = attention.Summary(
        listed_at=datetime(2026, 1, 1, tzinfo=UTC), completed_at=datetime(2026, 1, 1, tzinfo=UTC),
        schedule="0 */10 * * * *", stale_after=timedelta(minutes=25), records=0, copying_tasks=0, tasks=[],
    )  # fmt: skip
    document = json.loads(summary.to_bytes())
    document["poisonMessages"] = value
    assert attention.Summary.from_bytes(json.dumps(document).encode()).poison == read
