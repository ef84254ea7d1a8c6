"""The operator command line (ops/) on the in-memory world: the real webhook and engine on MemoryStorage,
the queues in memory, one manual clock. No Azurite, no sleeping."""

from __future__ import annotations

import base64
import io
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from ops.cli import main, run
from ops.output import NOT_FOUND, OK, STORAGE, USAGE
from ops.queues import MemoryQueue
from receiver.attention import PENDING_NAME
from receiver.intake import prepare
from receiver.models import Delivery, State, Step, TaskRecord, record_name
from receiver.plan import CopyPlan
from receiver.reconciliation import RunReport, reconcile_run
from receiver.storage import StoreError
from receiver.verification import POISON_QUEUE, QUEUE, message, verify_copy
from sim.world import Export, World

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Ops:
    """One world, its two queues, and the command line run in-process on them."""

    def __init__(self, **settings: Any) -> None:
        self.world = World.make(**settings)
        self.queue = MemoryQueue(QUEUE)
        self.poison = MemoryQueue(POISON_QUEUE)

    @property
    def queues(self) -> dict[str, MemoryQueue]:
        return {QUEUE: self.queue, POISON_QUEUE: self.poison}

    async def __call__(self, *argv: str, queues: bool = True) -> Ran:
        out, err = io.StringIO(), io.StringIO()
        code = await run(
            list(argv),
            environ={},
            out=out,
            err=err,
            storage=self.world.storage,
            settings=self.world.settings,
            queues=self.queues if queues else None,
            now=self.world.now,
        )
        return Ran(code, out.getvalue(), err.getvalue())

    async def reconcile(self) -> RunReport:
        """One reconciliation run now (as the timer runs it): it also writes the summary pending reads."""
        report = await reconcile_run(runtime=self.world.runtime, now=self.world.now, environ={})
        assert report.failed is None, report
        return report

    def plan(self, export: Export) -> CopyPlan:
        plan = prepare(export.body, {}, self.world.settings, now=self.world.now)
        assert isinstance(plan, CopyPlan)
        return plan

    async def accept(self, export: Export, *, copied: bool = False) -> str:
        """What the webhook leaves for a delivery it answered 202 (a staged copy still running): the
        delivery ``copying`` in the record, and its queue message (returned). ``copied``: its bytes
        landed at its name anyway (an answer lost after the commit)."""
        plan = self.plan(export)
        record = self.world.record(export.task_id, export.workspace_id) or TaskRecord(
            workspace_id=export.workspace_id, task_id=export.task_id
        )
        entry = Delivery(
            delivery=plan.delivery,
            blob=plan.blob_name,
            state=State.COPYING,
            received_at=self.world.now,
            link_expires_on=plan.source.expires_on,
            staged=True,
            manifest=plan.manifest,
            history=[Step(at=self.world.now, by="webhook", outcome="copying", status=202)],
        )
        record = record.model_copy(update={"deliveries": [*record.deliveries, entry]})
        name = record_name(export.workspace_id, export.task_id)
        stored = self.world.storage.stored(name)
        await self.world.storage.put(
            name,
            record.to_bytes(),
            if_match=stored.etag if stored else None,
            content_type="application/json",
            metadata=record.labels(),
        )
        if copied:
            there = self.world.storage.stored(plan.blob_name)
            await self.world.storage.copy_from_url(
                plan.blob_name,
                plan.source.url,
                if_match=there.etag if there else None,
                metadata=plan.metadata,
                tags=None,
            )
        return message(export.body, self.world.now)


@pytest.fixture
def ops() -> Ops:
    return Ops()


async def stored(ops: Ops, task: str = "task-1", name: str = "invoice.pdf", **kwargs: Any) -> Export:
    export = ops.world.export(task, name, **kwargs)
    assert (await ops.world.post(export)).status_code == 200
    return export


def lease_refuses_deleting(ops: Ops, monkeypatch: pytest.MonkeyPatch, name: str) -> Any:
    """A lease another client holds on ``name``: its deletes are refused (412 LeaseIdMissing); the real delete."""
    from receiver.storage import Conflict

    real_delete = ops.world.storage.delete

    async def leased(blob: str, *, if_match: str) -> bool:
        if blob == name:
            raise Conflict("delete blob: LeaseIdMissing", code="LeaseIdMissing", status=412)
        return await real_delete(blob, if_match=if_match)

    monkeypatch.setattr(ops.world.storage, "delete", leased)
    return real_delete


# --- find ---------------------------------------------------------------------------------------------------


async def test_find_tells_the_whole_story_of_a_re_exported_task(ops: Ops) -> None:
    await stored(ops)
    ops.world.clock.advance(timedelta(minutes=5))
    await stored(ops, name="renamed.pdf")

    ran = await ops("find", "--task", "task-1")

    assert ran.code == OK, ran.out
    first, second = ran.out.index("ws-1/task-1/invoice.pdf"), ran.out.index("ws-1/task-1/renamed.pdf  <- current")
    assert first < second  # in the order the record accepted them
    assert "superseded" in ran.out and "webhook stored 200" in ran.out
    assert "file holds the current delivery: matches; manifest: matches" in ran.out
    assert "NOTHING" in ran.out
    data = (await ops("find", "--task", "task-1", "--json")).json()
    assert [item["state"] for item in data["deliveries"]] == ["superseded", "stored"]
    assert data["currentBlob"] == "ws-1/task-1/renamed.pdf" and data["fileMatches"] and data["manifestMatches"]


async def test_find_of_an_unknown_task_exits_1(ops: Ops) -> None:
    await stored(ops)
    ran = await ops("find", "--task", "nope")
    assert ran.code == NOT_FOUND and "No task record for task nope" in ran.out
    assert "next: check the task id" in ran.out and "task-lookup.kql" in ran.out
    elsewhere = await ops("find", "--task", "task-1", "--workspace", "another")
    assert elsewhere.code == NOT_FOUND and "next: drop --workspace" in elsewhere.out, elsewhere.out
    anywhere = (await ops("find", "--task", "nope", "--json")).json()
    assert anywhere["next"][0].startswith("check the task id"), anywhere
    there = (await ops("find", "--task", "nope", "--workspace", "ws-1", "--json")).json()
    assert there["next"][0].startswith("drop --workspace"), there
    assert not anywhere["found"] and not there["found"] and anywhere["container"] == there["container"] != "", there


async def test_find_flags_a_current_file_that_another_delivery_overwrote_and_a_missing_manifest(ops: Ops) -> None:
    export = await stored(ops)
    name = ops.plan(export).blob_name
    there = ops.world.storage.stored(name)
    assert there is not None
    await ops.world.storage.put(
        name, b"other", if_match=there.etag, content_type="application/pdf", metadata={"delivery": "f" * 64}
    )
    manifest = ops.world.storage.stored(f"{name}.json")
    assert manifest is not None
    await ops.world.storage.delete(f"{name}.json", if_match=manifest.etag)

    ran = await ops("find", "--task", "task-1")

    assert ran.code == NOT_FOUND
    assert "DOES NOT MATCH" in ran.out and "holds delivery ffffffffffff" in ran.out
    assert f"the manifest {name}.json is missing" in ran.out


async def test_find_names_check_repair_first_for_a_missing_manifest_and_the_repair_writes_it(ops: Ops) -> None:
    export = await stored(ops)
    name = f"{ops.plan(export).blob_name}.json"
    manifest = ops.world.storage.stored(name)
    assert manifest is not None
    await ops.world.storage.delete(name, if_match=manifest.etag)

    ran = await ops("find", "--task", "task-1")
    nexts = [line for line in ran.out.splitlines() if line.startswith("next:")]
    assert ran.code == NOT_FOUND and nexts[0].startswith("next: python -m ops check --task task-1"), ran.out
    checked = await ops("check", "--task", "task-1")
    assert "file holds the current delivery: matches; manifest: DOES NOT MATCH" in checked.out, checked.out
    assert (await ops("check", "--task", "task-1", "--repair")).code == OK
    assert ops.world.storage.stored(name) is not None
    assert (await ops("find", "--task", "task-1")).code == OK
    checked = await ops("check", "--task", "task-1")
    assert checked.code == OK and "file holds the current delivery: matches; manifest: matches" in checked.out


async def test_a_file_named_over_1019_characters_while_manifests_were_off_is_not_missing_its_manifest() -> None:
    """Its manifest's name would be over Azure's 1024 characters: find names no problem, and neither check
    --repair nor the reconciliation repairs anything."""
    repeated = "/".join(["{displayName}"] * 4)
    ops = Ops(write_manifest=False, blob_name_template=f"{repeated}/{{workspaceId}}/{{taskId}}/{{fileName}}")
    assert (await ops.world.post(ops.world.export("task-1", "D" * 1100))).status_code == 200
    [name] = ops.world.files()
    assert len(name) > 1019
    ops.world.settings = ops.world.settings.model_copy(update={"write_manifest": True})
    ops.world.runtime.use(ops.world.storage, ops.world.settings)

    found = await ops("find", "--task", "task-1")
    assert found.code == OK and "problem:" not in found.out and "manifest: not checked" in found.out, found.out
    repaired = await ops("check", "--task", "task-1", "--repair")
    assert repaired.code == OK and "repaired" not in repaired.out, repaired.out
    report = await ops.reconcile()
    assert "repaired" not in report.outcomes, report
    assert all(len(blob) <= 1024 for blob in ops.world.storage.names())


async def test_find_gives_each_copying_delivery_a_verdict_from_the_queues(ops: Ops) -> None:
    await stored(ops)
    text = await ops.accept(ops.world.export("task-1", "v2.pdf"))

    unconfirmed = await ops("find", "--task", "task-1", queues=False)
    assert unconfirmed.code == OK and "UNCONFIRMED" in unconfirmed.out

    ops.queue.add(text)
    queued = await ops("find", "--task", "task-1")
    assert queued.code == OK and "QUEUED" in queued.out
    assert "the verification queue has a message of this task" in queued.out

    await ops.queue.receive(1, visibility_seconds=60)  # the queue function is trying it: hidden
    trying = await ops("find", "--task", "task-1")
    assert "UNKNOWN" in trying.out and "hidden while they are tried" in trying.out, trying.out
    # When it can be known: once its message's tries are over (received + the queue's coverage).
    assert "its message's tries end by 2026-01-01T01:30:00Z; look again then" in trying.out, trying.out
    give_up = "python -m ops fail --task task-1 --workspace ws-1 --reason '...' --force"
    assert give_up in trying.out and "may hold one of this task" in trying.out

    ops.queue.visible.clear()
    ops.queue.hidden.clear()
    ops.poison.add(text)
    poisoned = await ops("find", "--task", "task-1")
    assert poisoned.code == NOT_FOUND and "POISONED" in poisoned.out and "replay-poison --dry-run" in poisoned.out

    ops.poison.visible.clear()
    lost = await ops("find", "--task", "task-1")
    assert lost.code == NOT_FOUND and "LOST" in lost.out and "python -m ops fail --task task-1" in lost.out


async def test_find_names_a_poison_message_of_a_delivery_its_record_ended_and_how_to_clear_it(ops: Ops) -> None:
    """A delivery stored after its message was poisoned (a repair adopted it): nothing is left to do for the task,
    but the poison ERROR fires until that message is gone; find says so, and what ends it."""
    await stored(ops)
    export = ops.world.export("task-1", "v2.pdf")
    text = await ops.accept(export, copied=True)
    ops.poison.add(text)
    repaired = await ops("check", "--task", "task-1", "--repair")
    assert "after: next: python -m ops replay-poison --dry-run" in repaired.out, repaired.out  # what is left
    record = ops.world.record()
    assert record is not None and record.current_delivery is not None
    assert record.current_delivery.blob.endswith("v2.pdf"), record
    found = await ops("find", "--task", "task-1")
    assert found.code == NOT_FOUND, found.out
    assert f"the poison queue still holds a message of delivery {ops.plan(export).delivery[:12]}" in found.out
    assert "next: python -m ops replay-poison --dry-run, then python -m ops replay-poison" in found.out, found.out
    ops.poison.visible.clear()
    assert (await ops("find", "--task", "task-1")).code == OK


async def test_find_under_a_hold_puts_the_lift_before_the_replay_and_the_repair_of_a_stale_manifest(ops: Ops) -> None:
    """The current delivery's manifest still describes the one it replaced, a legal hold keeps it so, and the
    current delivery's message waits in the poison queue: replaying it or repairing the manifest is refused while
    the hold lasts (the dry run says BLOCKED), so find says to lift it first."""
    from receiver.verification import message as queue_message

    first = await stored(ops)
    name = ops.plan(first).blob_name + ".json"
    earlier = ops.world.storage.stored(name)
    assert earlier is not None
    ops.world.clock.advance(timedelta(minutes=5))
    current = await stored(ops)  # the same name: replaces the first
    there = ops.world.storage.stored(name)
    assert there is not None
    await ops.world.storage.put(
        name, earlier.data, if_match=there.etag, content_type="application/json", metadata=dict(earlier.metadata)
    )
    ops.world.storage.policy = "legal hold"
    ops.poison.add(queue_message(current.body, ops.world.now))
    ops.world.clock.advance(timedelta(hours=2))
    found = (await ops("find", "--task", "task-1")).out
    assert "next: once the container's legal hold is lifted: python -m ops replay-poison --dry-run" in found, found
    assert "next: once the container's legal hold is lifted (it refuses rewriting the manifest)" in found, found
    dry = (await ops("replay-poison", "--dry-run")).out
    assert "BLOCKED" in dry, dry


async def test_with_manifests_off_a_stored_task_has_nothing_to_repair(caplog: pytest.LogCaptureFixture) -> None:
    """WRITE_MANIFEST off: a stored task has no manifest, and needs none. find exits 0 with nothing to do, check
    --repair writes nothing, and the reconciliation's look at a recently changed task says so (not `repaired`)."""
    ops = Ops(write_manifest=False)
    assert (await ops.world.post(ops.world.export())).status_code == 200
    found = await ops("find", "--task", "task-1")
    assert found.code == OK and "NOTHING" in found.out, found.out
    repaired = await ops("check", "--task", "task-1", "--repair")
    assert repaired.code == OK and "nothing for --repair to do" in repaired.out, repaired.out
    caplog.set_level(logging.INFO, logger="receiver")
    report = await ops.reconcile()
    assert "repaired" not in report.outcomes, report.outcomes
    assert ops.world.manifest("ws-1/task-1/invoice.pdf") is None


async def test_find_with_unreachable_host_storage_gives_an_unknown_verdict_naming_it(ops: Ops) -> None:
    from azure.core.exceptions import ServiceRequestError

    class Unreachable(MemoryQueue):
        async def count(self) -> int:
            raise ServiceRequestError("Cannot connect to host 127.0.0.1:10998")

    await stored(ops)
    await ops.accept(ops.world.export("task-1", "v2.pdf"))
    ops.queue, ops.poison = Unreachable(QUEUE), Unreachable(POISON_QUEUE)
    ran = await ops("find", "--task", "task-1")
    assert "UNKNOWN" in ran.out and "host storage (its queues) could not be read" in ran.out, ran.out
    assert "--host-connection-string" in ran.out
    assert ran.code == NOT_FOUND  # not "all well" for a script: the queues' side is not known


async def test_find_workspace_reads_in_proportion_to_max(ops: Ops) -> None:
    for number in range(6):
        await stored(ops, f"task-{number}")
    for number in range(4):
        await stored(ops, f"other-{number}", workspace_id="ws-2")
    ops.world.storage.calls.clear()

    ran = await ops("find", "--workspace", "ws-1", "--max", "2", "--json")

    assert ran.code == OK
    assert [task["taskId"] for task in ran.json()["tasks"]] == ["task-0", "task-1"] and ran.json()["more"]
    reads = [name for op, name in ops.world.storage.calls if op in ("read", "read_bytes")]
    assert len(reads) == 2
    assert ("list", ".smartdocumentor/tasks/ws-1/") in ops.world.storage.calls


# --- pending and failed -------------------------------------------------------------------------------------


async def test_pending_lists_copying_deliveries_older_than_asked(ops: Ops) -> None:
    await ops.reconcile()
    assert (await ops("pending")).out.startswith(
        "No deliveries still copying for over 10 minutes, as of the last completed reconciliation run"
    )
    await ops.accept(ops.world.export("task-1"))
    ops.world.clock.advance(timedelta(minutes=30))
    await ops.accept(ops.world.export("task-2"))
    await ops.reconcile()  # the summary pending reads

    ran = await ops("pending", "--older-than", "10", "--json")
    assert [entry["taskId"] for entry in ran.json()["deliveries"]] == ["task-1"]
    alert = await ops("pending", "--older-than", "0", "--alert")
    assert alert.code == NOT_FOUND and alert.out.index("task-1") < alert.out.index("task-2")
    assert (await ops("pending", "--older-than", "60", "--alert")).code == OK


async def test_failed_lists_a_large_re_export_that_failed_after_its_202_while_the_earlier_file_stays(
    ops: Ops,
) -> None:
    from receiver.verification import verify_copy

    await stored(ops)
    text = await ops.accept(ops.world.export("task-1", expires_in=timedelta(hours=1)))
    await ops.reconcile()
    assert (await ops("failed", "--alert")).code == OK
    ops.world.clock.advance(timedelta(hours=2))
    assert (await ops("failed", "--alert")).code == NOT_FOUND  # no reconciliation run for 2 hours: a problem

    assert await verify_copy(text.encode(), runtime=ops.world.runtime, now=ops.world.now) == "failed"
    await ops.reconcile()
    ran = await ops("failed", "--since", "5", "--alert")
    assert ran.code == NOT_FOUND
    assert "failed" in ran.out and "current file kept: ws-1/task-1/invoice.pdf" in ran.out
    record = ops.world.record()
    assert record is not None and record.current_delivery is not None
    assert record.current_delivery.blob == "ws-1/task-1/invoice.pdf"


async def test_pending_and_failed_say_a_copy_a_hold_kept_past_its_tries_waits_for_the_lift_not_for_an_export(
    ops: Ops,
) -> None:
    """Re-exports answered 202, then a legal hold on the container for longer than every try of their messages:
    the lists name the hold (sending the document again is refused while it lasts), and what follows its lift:
    replay-poison for a copy whose link is still valid, the reconciliation's failure (then a new export) for one
    whose link expired meanwhile."""
    await stored(ops)
    await ops.accept(ops.world.export("task-1", expires_in=timedelta(days=7)))
    await ops.accept(ops.world.export("task-2", expires_in=timedelta(hours=1)))
    await ops.reconcile()
    ops.world.storage.policy = "legal hold"
    ops.world.clock.advance(timedelta(hours=3))
    ran = await ops("failed", "--json")
    reasons = {entry["taskId"]: (entry.get("heldBy"), entry["reason"]) for entry in ran.json()["deliveries"]}
    assert reasons["task-1"][0] == reasons["task-2"][0] == "legal hold", reasons
    assert "once it is lifted, python -m ops replay-poison finishes it" in reasons["task-1"][1], reasons
    assert "it records the file if its copy landed (find --task T says), else fails it" in reasons["task-2"][1]
    text = (await ops("failed")).out
    assert "2 of them wait for the container's legal hold to be lifted (the row says what follows)" in text, text
    assert "export those documents again" not in text and "export the others again" not in text, text
    pending = (await ops("pending")).out
    assert "2 will not finish by themselves (see failed), 2 of them until the container's legal hold is" in pending


async def test_under_a_container_hold_fail_says_no_command_can_give_up_a_copy_and_find_says_replay_after_the_lift(
    ops: Ops,
) -> None:
    """A copy whose message is in the poison queue, under a legal hold on the container: fail, forced or not, is
    refused naming the hold to lift (it refuses every change of the record), not offering --force; find's replay
    line waits for the lift. Once lifted, a forced fail gives it up."""
    await stored(ops)
    ops.poison.add(await ops.accept(ops.world.export("task-1", expires_in=timedelta(days=7))))
    ops.world.storage.policy = "legal hold"
    for forced in ((), ("--force",)):
        ran = await ops("fail", "--task", "task-1", "--reason", "held", *forced)
        assert ran.code == NOT_FOUND and "--force cannot help" in ran.out, ran.out
        assert "Have the storage account's owner lift the legal hold" in ran.out and "Give --force" not in ran.out
    record = ops.world.record()
    assert record is not None and record.deliveries[-1].state is State.COPYING
    found = await ops("find", "--task", "task-1")
    assert "next: once the container's legal hold is lifted: python -m ops replay-poison --dry-run" in found.out
    ops.world.storage.policy = None
    assert (await ops("fail", "--task", "task-1", "--reason", "held", "--force")).code == OK


async def test_failed_says_a_copy_past_its_tries_with_a_valid_link_may_be_finished_from_the_poison_queue(
    ops: Ops,
) -> None:
    """No policy: a copy past every try of its message, its link still valid, may wait in the poison queue (a
    replay finishes it): said before "export again", which only a copy whose link expired needs."""
    await stored(ops)
    await ops.accept(ops.world.export("task-1", expires_in=timedelta(days=7)))
    await ops.accept(ops.world.export("task-2", expires_in=timedelta(hours=1)))
    await ops.reconcile()
    ops.world.clock.advance(timedelta(hours=3))
    ran = await ops("failed", "--json")
    replayable = {entry["taskId"]: entry.get("replayable", False) for entry in ran.json()["deliveries"]}
    assert replayable == {"task-1": True, "task-2": False}, ran.json()
    text = (await ops("failed")).out
    assert "1 of them may still be finished from the poison queue (python -m ops replay-poison --dry-run)" in text
    assert "export the others again from SmartDocumentor" in text, text


async def test_failed_dates_a_stuck_copy_by_when_it_stopped_being_finishable(ops: Ops) -> None:
    """A copy whose link expired before anything finished it is listed at its link's expiry (what --since
    filters on), not at when it was received."""
    export = ops.world.export("task-1", expires_in=timedelta(hours=1))
    await ops.accept(export)
    await ops.reconcile()
    ops.world.clock.advance(timedelta(hours=2))
    ran = await ops("failed", "--json")
    [entry] = [item for item in ran.json()["deliveries"] if item["state"] == "copying"]
    record = ops.world.record()
    assert record is not None and record.deliveries[-1].link_expires_on is not None
    expected = record.deliveries[-1].link_expires_on.isoformat().replace("+00:00", "Z")
    assert entry["at"] == expected, (entry, expected)


async def test_find_flags_a_newest_export_that_failed_after_its_202_while_an_older_one_is_current(ops: Ops) -> None:
    from receiver.verification import verify_copy

    await stored(ops)
    text = await ops.accept(ops.world.export("task-1", expires_in=timedelta(hours=1)))
    ops.world.clock.advance(timedelta(hours=2))
    assert await verify_copy(text.encode(), runtime=ops.world.runtime, now=ops.world.now) == "failed"

    ran = await ops("find", "--task", "task-1")

    assert ran.code == NOT_FOUND, ran.out
    assert "problem: the newest export" in ran.out and "the current file is an older export" in ran.out
    assert "next: export the document again from SmartDocumentor" in ran.out


async def test_find_shows_a_deliverys_earlier_name_and_what_each_name_to_retire_holds(ops: Ops) -> None:
    from receiver.models import Retirement

    await stored(ops)
    name = record_name("ws-1", "task-1")
    record, there = ops.world.record(), ops.world.storage.stored(name)
    assert record is not None and there is not None and record.current_delivery is not None
    current = record.current_delivery.model_copy(update={"moved_from": "ws-1/task-1/old.pdf"})
    listed = [
        Retirement(blob="ws-1/task-1/old.pdf", delivery=current.delivery),
        Retirement(blob="ws-1/task-1/older.pdf", delivery="e" * 64, etag='"0x1"', copy_id="c0ffee"),
    ]
    changed = record.model_copy(update={"deliveries": [current], "retire": listed})
    await ops.world.storage.put(
        name, changed.to_bytes(), if_match=there.etag, content_type="application/json", metadata=changed.labels()
    )

    ran = await ops("find", "--task", "task-1")

    assert "moved from ws-1/task-1/old.pdf" in ran.out, ran.out
    moved = f"still to retire: ws-1/task-1/old.pdf (delivery {current.delivery[:12]}, only if a copy of it lands)"
    assert moved in ran.out
    assert "still to retire: ws-1/task-1/older.pdf (delivery eeeeeeeeeeee, copy c0ffee)" in ran.out


async def test_a_record_uploaded_again_without_its_labels_is_found_and_the_reconciliation_labels_it(
    ops: Ops,
) -> None:
    await stored(ops)
    name = record_name("ws-1", "task-1")
    there, data = ops.world.storage.stored(name), ops.world.storage.blob_bytes(name)
    assert there is not None and data is not None
    await ops.world.storage.put(name, data, if_match=there.etag, content_type="application/json", metadata={})

    ran = await ops("find", "--task", "task-1")
    assert ran.code == OK and "ws-1/task-1/invoice.pdf  <- current" in ran.out, ran.out
    report = await ops.reconcile()
    assert report.outcomes.get("relabelled") == 1, report
    labelled = ops.world.storage.stored(name)
    assert labelled is not None and dict(labelled.metadata).get("receiverkind") == "task-record"
    assert ops.world.storage.blob_bytes(name) == data  # the same record, with its labels


async def test_a_name_taken_by_another_tasks_file_is_explained_with_the_template_as_the_fix() -> None:
    """After a template change that gives (task-1, ws-1) the name of (ws-1, task-1)'s file: the answer and
    find say to set the template back (never to move that file), not merely to export again."""
    ops = Ops()
    assert (await ops.world.post(ops.world.export("task-1", workspace_id="ws-1"))).status_code == 200
    ops.world.clock.advance(timedelta(minutes=5))
    swapped = ops.world.settings.model_copy(update={"blob_name_template": "{taskId}/{workspaceId}/{fileName}"})
    ops.world.settings = swapped
    ops.world.runtime.use(ops.world.storage, swapped)
    answer = await ops.world.post(ops.world.export("ws-1", workspace_id="task-1"))
    assert answer.status_code == 409 and answer.body["error"] == "name-taken", answer.body
    assert "set it back to the template that file was stored under" in answer.body["message"]
    assert "Never move or rename that file" in answer.body["message"]
    ran = await ops("find", "--task", "ws-1", "--workspace", "task-1")
    assert ran.code == NOT_FOUND and "next: set BLOB_NAME_TEMPLATE back" in ran.out, ran.out
    assert ops.world.files() == {"ws-1/task-1/invoice.pdf": ops.world.storage.blob_bytes("ws-1/task-1/invoice.pdf")}


async def test_check_repair_says_why_a_name_was_not_retired(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A delete refused on the very version (a lease held on the older file): the name stays listed, and
    check --repair prints the reason and what to do instead of only proposing itself again."""

    ops = Ops()
    await stored(ops)
    real_delete = lease_refuses_deleting(ops, monkeypatch, "ws-1/task-1/invoice.pdf")
    await stored(ops, name="renamed.pdf")
    record = ops.world.record()
    assert record is not None and [item.blob for item in record.retire] == ["ws-1/task-1/invoice.pdf"]

    ran = await ops("check", "--task", "task-1", "--repair")
    assert "not retired: ws-1/task-1/invoice.pdf" in ran.out and "a lease another client holds" in ran.out, ran.out
    assert "Whoever holds it breaks it" in ran.out and "after: next: python -m ops check" not in ran.out, ran.out
    caplog.clear()
    await ops.reconcile()
    [line] = [r.getMessage() for r in caplog.records if r.name == "receiver" and "task=task-1" in r.getMessage()]
    assert "not retired: ws-1/task-1/invoice.pdf" in line and "Whoever holds it breaks it" in line, line

    # The lease broken: the repair retires the name, and the retired delivery's history says who and when.
    monkeypatch.setattr(ops.world.storage, "delete", real_delete)
    ran = await ops("check", "--task", "task-1", "--repair")
    assert ran.code == OK and "retired ws-1/task-1/invoice.pdf" in ran.out, ran.out
    record = ops.world.record()
    assert record is not None and record.retire == [] and "ws-1/task-1/invoice.pdf" not in ops.world.files()
    first = record.deliveries[0]
    assert first.blob == "ws-1/task-1/invoice.pdf" and first.history[-1].by == "operator"
    assert first.history[-1].outcome == "retired" and first.history[-1].retired == ["ws-1/task-1/invoice.pdf"]
    shown = await ops("find", "--task", "task-1")
    assert "operator retired ws-1/task-1/invoice.pdf" in shown.out, shown.out
    # The step that stored the newer export listed the name; only the repair's step says it was retired.
    assert "webhook stored 200 listed to retire ws-1/task-1/invoice.pdf" in shown.out, shown.out
    assert shown.out.count("retired ws-1/task-1/invoice.pdf") == 1, shown.out


async def test_a_lease_on_the_file_keeps_a_queued_re_export_copying_until_it_lapses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A large re-export is answered 202; a customer's tool then leases the file for a while. The queue
    function's try is refused by the lease: the delivery stays copying (not failed for good), the try names
    the lease and what to do, and the next try after the lease lapsed stores it."""
    from receiver.storage import Leased
    from receiver.verification import verify_copy

    ops = Ops(sync_copy_max_mib=0, copy_wait_seconds=0)
    assert (await ops.world.post(ops.world.export("task-1"))).status_code == 202
    answer = await ops.world.post(ops.world.export("task-1"))
    assert answer.status_code == 202 and answer.verification is not None
    real_commit = ops.world.storage.commit_blocks
    lapsed = False

    async def leased(name: str, ids: Any, **kwargs: Any) -> Any:
        if not lapsed:
            raise Leased("commit blocks: a lease another client holds refused it (LeaseIdMissing)", status=412)
        return await real_commit(name, ids, **kwargs)

    ops.world.storage.commit_blocks = leased  # type: ignore[method-assign,assignment]
    caplog.clear()
    with pytest.raises(Leased):
        await verify_copy(answer.verification.encode(), runtime=ops.world.runtime, now=ops.world.now)
    [line] = [r for r in caplog.records if r.name == "receiver" and r.getMessage().startswith("verification")]
    assert line.levelno == logging.WARNING and "lease another client holds" in line.getMessage(), line.getMessage()
    record = ops.world.record()
    assert record is not None and record.deliveries[-1].state is State.COPYING, record
    lapsed = True
    assert await verify_copy(answer.verification.encode(), runtime=ops.world.runtime, now=ops.world.now) == "stored"


async def test_find_workspace_names_a_record_without_its_labels() -> None:
    ops = Ops()
    await stored(ops, task="task-1")
    await stored(ops, task="task-2")
    name = record_name("ws-1", "task-2")
    there, data = ops.world.storage.stored(name), ops.world.storage.blob_bytes(name)
    assert there is not None and data is not None
    await ops.world.storage.put(name, data, if_match=there.etag, content_type="application/json", metadata={})
    ran = await ops("find", "--workspace", "ws-1")
    assert ran.code == NOT_FOUND and "task-1" in ran.out and f"the task record {name} has no labels" in ran.out


async def test_an_unreadable_task_record_is_named_with_how_to_restore_it_and_exits_1(
    ops: Ops, caplog: pytest.LogCaptureFixture
) -> None:
    """A record changed by hand: find and check name it and say how to restore it (exit 1: storage answered);
    the workspace listing names it and still lists the other tasks; the webhook refuses the task with the
    same words (no "receiver bug"); the reconciliation logs an ERROR."""
    await stored(ops)
    await stored(ops, task="task-2")
    name = record_name("ws-1", "task-1")
    there = ops.world.storage.stored(name)
    data = ops.world.storage.blob_bytes(name)
    assert there is not None and data is not None
    await ops.world.storage.put(
        name, data[:-20], if_match=there.etag, content_type="application/json", metadata=dict(there.metadata)
    )

    for argv in (("find", "--task", "task-1", "--workspace", "ws-1"), ("check", "--task", "task-1", "--repair")):
        ran = await ops(*argv)
        assert ran.code == NOT_FOUND, (argv, ran.code, ran.err)
        assert f"The task record {name} is not readable" in ran.err and "Do not delete it" in ran.err, ran.err
        assert "python -m ops check --task task-1 --repair" in ran.err
    assert (await ops("find", "--task", "task-1", "--json")).json()["error"] == "unreadable-record"
    listing = await ops("find", "--workspace", "ws-1")
    assert listing.code == NOT_FOUND and "task-2" in listing.out and f"problem: The task record {name}" in listing.out

    answer = await ops.world.post(ops.world.export("task-1"))
    assert answer.status_code == 500 and "receiver bug" not in answer.body["message"], answer.body
    assert "restore its previous version" in answer.body["message"]
    assert "is not readable (the document: Invalid JSON: EOF while parsing" in answer.body["message"], answer.body
    # A renamed export's create-only copy, sent beside the record read, lands at a new name. Never deleted there
    # (a retry may adopt it once the record is restored): the answer names it and what records it.
    renamed_export = ops.world.export("task-1", "renamed.pdf")
    renamed = await ops.world.post(renamed_export)
    assert renamed.status_code == 500 and "ws-1/task-1/renamed.pdf" in ops.world.files(), sorted(ops.world.files())
    assert "A copy of this export was made at ws-1/task-1/renamed.pdf meanwhile" in renamed.body["message"]
    assert "send the document again (its retry records that file)" in renamed.body["message"]
    with caplog.at_level(logging.INFO):
        await ops.reconcile()
    assert any(r.levelno == logging.ERROR and "is not readable" in r.getMessage() for r in caplog.records)

    # Restored as the message says, the document sent again: that file is recorded (the copy was never deleted
    # behind the retry's back), the older one retired.
    broken = ops.world.storage.stored(name)
    assert broken is not None
    await ops.world.storage.put(
        name, data, if_match=broken.etag, content_type="application/json", metadata=dict(there.metadata)
    )
    again = await ops.world.post(renamed_export)
    assert again.status_code == 200 and again.body["status"] == "stored", again.body
    record = ops.world.record()
    assert record is not None and record.current_delivery is not None, record
    assert record.current_delivery.blob == "ws-1/task-1/renamed.pdf", record
    assert sorted(name for name in ops.world.files() if name.startswith("ws-1/task-1/")) == ["ws-1/task-1/renamed.pdf"]


async def test_failed_counts_only_tasks_left_failed_and_a_fixed_task_takes_no_slot_of_max(ops: Ops) -> None:
    from receiver.verification import verify_copy

    for task in ("task-1", "task-2"):
        await stored(ops, task=task)
        text = await ops.accept(ops.world.export(task, expires_in=timedelta(hours=1)))
        ops.world.clock.advance(timedelta(hours=2))
        assert await verify_copy(text.encode(), runtime=ops.world.runtime, now=ops.world.now) == "failed"
    await stored(ops, task="task-2")  # the newest failure is fixed by a later export

    ran = await ops("failed", "--since", "300", "--max", "1")

    assert "1 delivery(ies) will not finish by themselves, in 1 task(s)" in ran.out, ran.out
    assert "task-1" in ran.out and "task-2" not in ran.out and "--max N for more" not in ran.out
    assert (await ops("failed", "--since", "300", "--json")).json()["tasks"] == 1


async def test_failed_says_when_max_leaves_failing_tasks_out(ops: Ops) -> None:
    from receiver.verification import verify_copy

    for task in ("task-1", "task-2", "task-3", "task-4"):
        await stored(ops, task=task)
        text = await ops.accept(ops.world.export(task, expires_in=timedelta(hours=1)))
        ops.world.clock.advance(timedelta(hours=2))
        assert await verify_copy(text.encode(), runtime=ops.world.runtime, now=ops.world.now) == "failed"
    await stored(ops, task="task-4")  # fixed: takes no slot

    ran = await ops("failed", "--since", "600", "--max", "2")

    assert "in 2 task(s) (only the newest 2 tasks with failures are shown; --max N for more)" in ran.out, ran.out
    assert "task-3" in ran.out and "task-2" in ran.out and "task-1" not in ran.out
    assert (await ops("failed", "--since", "600", "--json")).json()["tasks"] == 3


async def test_failed_reads_only_the_records_in_its_window(ops: Ops) -> None:
    for number in range(5):
        await ops.accept(ops.world.export(f"old-{number}", expires_in=timedelta(minutes=1)))
    ops.world.clock.advance(timedelta(minutes=5))
    for number in range(5):
        await ops("check", "--task", f"old-{number}", "--workspace", "ws-1", "--repair")
    ops.world.clock.advance(timedelta(days=2))
    await ops.accept(ops.world.export("new", expires_in=timedelta(minutes=1)))
    ops.world.clock.advance(timedelta(minutes=5))
    await ops("check", "--task", "new", "--workspace", "ws-1", "--repair")
    labels = ops.world.storage.stored(record_name("ws-1", "new"))
    assert labels is not None and "lastfailed" in dict(labels.metadata)
    await ops.reconcile()
    ops.world.storage.calls.clear()

    ran = await ops("failed", "--since", "60", "--json")

    assert [entry["taskId"] for entry in ran.json()["deliveries"]] == ["new"]
    reads = [name for op, name in ops.world.storage.calls if op == "read_bytes" and name.endswith(".json")]
    assert reads == [PENDING_NAME, record_name("ws-1", "new")]
    assert not [prefix for op, prefix in ops.world.storage.calls if op == "list" and "/tasks/" in prefix]
    assert len((await ops("failed", "--json")).json()["deliveries"]) == 6


# --- check, fail --------------------------------------------------------------------------------------------


async def test_check_says_adopt_and_repair_records_it_as_the_reconciliation_would(
    ops: Ops, caplog: pytest.LogCaptureFixture
) -> None:
    await stored(ops)
    await ops.accept(ops.world.export("task-1", "v2.pdf"), copied=True)

    verdict = await ops("check", "--task", "task-1")
    assert (
        verdict.code == NOT_FOUND
        and "ADOPT" in verdict.out
        and "check --task task-1 --workspace ws-1 --repair" in verdict.out
    )
    before = ops.world.storage.snapshot()
    dry = await ops("check", "--task", "task-1", "--repair", "--dry-run")
    assert "dry run: nothing changed" in dry.out and ops.world.storage.snapshot() == before

    repaired = await ops("check", "--task", "task-1", "--repair")

    assert repaired.code == OK, repaired.out
    record = ops.world.record()
    assert record is not None and record.current_delivery is not None
    assert record.current_delivery.blob == "ws-1/task-1/v2.pdf"
    assert record.current_delivery.history[-1].by == "operator"
    assert [item.blob for item in record.retire] == []  # the replaced name was retired
    assert "ws-1/task-1/invoice.pdf" not in ops.world.files()
    manifest = ops.world.manifest("ws-1/task-1/v2.pdf")
    assert manifest is not None and manifest["delivery"] == record.current
    assert any(r.name == "receiver" and r.levelno == logging.WARNING for r in caplog.records)


async def test_check_repair_fails_an_expired_copy_and_logs_an_error(ops: Ops, caplog: pytest.LogCaptureFixture) -> None:
    await ops.accept(ops.world.export("task-1", expires_in=timedelta(minutes=30)))
    ops.world.clock.advance(timedelta(hours=1))

    assert "EXPIRE" in (await ops("check", "--task", "task-1")).out
    ran = await ops("check", "--task", "task-1", "--repair")

    # Repaired, and the task now has no file at all: a person exports it again (exit 1 says so).
    assert ran.code == NOT_FOUND and "export the document again" in ran.out
    record = ops.world.record()
    assert record is not None and record.deliveries[0].state is State.FAILED
    assert record.deliveries[0].history[-1].by == "operator"
    errors = [r for r in caplog.records if r.name == "receiver" and r.levelno == logging.ERROR]
    assert len(errors) == 1 and "task=task-1" in errors[0].getMessage()


async def test_check_of_a_copy_with_a_valid_link_says_waiting_and_repair_does_nothing(ops: Ops) -> None:
    ops.queue.add(await ops.accept(ops.world.export("task-1")))
    before = ops.world.storage.snapshot()
    ran = await ops("check", "--task", "task-1", "--repair")
    assert ran.code == OK and "WAITING" in ran.out and "nothing for --repair to do" in ran.out
    assert ops.world.storage.snapshot() == before


async def test_fail_refuses_while_a_message_can_finish_the_copy_unless_forced(
    ops: Ops, caplog: pytest.LogCaptureFixture
) -> None:
    text = await ops.accept(ops.world.export("task-1"))
    ops.poison.add(text)

    refused = await ops("fail", "--task", "task-1", "--reason", "customer gave up")
    assert refused.code == NOT_FOUND and "poison queue" in refused.out and "--force" in refused.out
    blind = await ops("fail", "--task", "task-1", "--reason", "customer gave up", queues=False)
    assert blind.code == NOT_FOUND and "no one can tell" in blind.out and "--host-connection-string" in blind.out
    record = ops.world.record()
    assert record is not None and record.deliveries[0].state is State.COPYING

    forced = await ops("fail", "--task", "task-1", "--reason", "customer gave up", "--force")

    assert forced.code == OK and "--force" in forced.out and "stored after all" in forced.out
    record = ops.world.record()
    assert record is not None and record.deliveries[0].state is State.FAILED
    reason = record.deliveries[0].failure_reason or ""
    assert reason.startswith("customer gave up") and "--force" in reason
    assert "a message may still finish" in reason and "poison queue" not in reason, reason  # briefly, for the record
    assert record.deliveries[0].history[-1].by == "operator"
    assert [r for r in caplog.records if r.name == "receiver" and r.levelno == logging.ERROR]


async def test_fail_gives_up_a_lost_copy(ops: Ops) -> None:
    await ops.accept(ops.world.export("task-1"))
    ran = await ops("fail", "--task", "task-1", "--reason", "lost; re-exported by hand")
    assert ran.code == OK and "Failed delivery" in ran.out
    assert (await ops("failed", "--alert")).code == NOT_FOUND


async def test_a_copy_whose_message_is_lost_behind_a_newer_one_a_message_can_finish_is_behind_and_then_superseded() -> (
    None
):
    """Two large exports copying at one name: the older's message lost, the newer's poisoned. The older is not
    LOST (giving it up, as LOST advises, helps nothing): BEHIND, and once replay-poison's message stores the newer
    one, the older is superseded by itself. With the newer one's message lost too, both are LOST."""
    ops = Ops(sync_copy_max_mib=0, copy_wait_seconds=0)
    world = ops.world
    assert (await world.post(world.export("task-1"))).status_code == 202
    newer = await world.post(world.export("task-1"))
    assert newer.status_code == 202 and newer.verification is not None
    found = await ops("find", "--task", "task-1")
    assert [line.split("verdict: ")[1][:4] for line in found.out.splitlines() if "verdict:" in line] == ["LOST"] * 2
    ops.poison.add(newer.verification)
    found = await ops("find", "--task", "task-1")
    verdicts = [line.split("verdict: ")[1].split(":")[0] for line in found.out.splitlines() if "verdict:" in line]
    assert verdicts == ["BEHIND", "POISONED"], found.out
    assert "python -m ops fail" not in found.out and "next: python -m ops replay-poison --dry-run" in found.out

    assert (await ops("replay-poison")).code == OK
    [moved] = ops.queue.visible
    assert await verify_copy(moved.content.encode(), runtime=world.runtime, now=world.now, dequeue_count=1) == "stored"
    record = world.record()
    assert record is not None and [item.state for item in record.deliveries] == [State.SUPERSEDED, State.STORED]


async def test_a_copy_given_up_with_force_while_its_message_is_poisoned_is_named_as_one_a_replay_would_store(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """fail --force gives up a copy whose message waits in the poison queue, its link still valid. Its ERROR says
    where the document is and names find; find then says that moving the message back would accept it again and
    store it (the dry run says FINISH), and how to keep it failed instead, not that its try would end at once."""
    ops = Ops(sync_copy_max_mib=0, copy_wait_seconds=0)
    answer = await ops.world.post(ops.world.export("task-1"))
    assert answer.status_code == 202 and answer.verification is not None
    ops.poison.add(answer.verification)
    caplog.set_level(logging.INFO, logger="receiver")
    assert (await ops("fail", "--task", "task-1", "--reason", "gave up", "--force")).code == OK
    [alert] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "SmartDocumentor archived the document" in alert, alert
    assert "python -m ops find --task task-1 --workspace ws-1 tells its story" in alert, alert
    found = await ops("find", "--task", "task-1")
    assert "record failed while its link still works" in found.out and "undoing that failure" in found.out, found.out
    assert "its try then ends at once" not in found.out, found.out
    dry = await ops("replay-poison", "--dry-run")
    assert "FINISH" in dry.out, dry.out


async def two_copies_the_newers_message_poisoned(*, older: timedelta, newer: timedelta) -> Ops:
    """Two large exports of task-1 answered 202, their links valid for ``older`` and ``newer``: the older's message
    lost, the newer's in the poison queue; two hours later."""
    ops = Ops(sync_copy_max_mib=0, copy_wait_seconds=0)
    world = ops.world
    assert (await world.post(world.export("task-1", expires_in=older))).status_code == 202
    answer = await world.post(world.export("task-1", expires_in=newer))
    assert answer.status_code == 202 and answer.verification is not None
    ops.poison.add(answer.verification)
    world.clock.advance(timedelta(hours=2))
    return ops


async def test_pending_and_failed_name_a_copy_behind_a_newer_one_as_behind_not_as_one_to_export_again() -> None:
    """Two copies past every try: the older's message lost, the newer's poisoned. pending shows the older as
    behind the newer (superseded once that is stored, nothing to do for it) and counts only the newer as not
    finishing by itself; failed lists only the newer (replayable)."""
    ops = await two_copies_the_newers_message_poisoned(older=timedelta(days=2), newer=timedelta(days=2))
    world = ops.world
    await ops.reconcile()
    record = world.record()
    assert record is not None
    older_id, newer_id = (item.delivery[:12] for item in record.deliveries)
    pending = await ops("pending")
    assert f"behind newer export {newer_id}: superseded once that one is stored" in pending.out, pending.out
    assert "1 will not finish by themselves" in pending.out, pending.out
    failed = (await ops("failed", "--json")).json()
    assert [entry["delivery"] for entry in failed["deliveries"]] == [newer_id], failed
    found = await ops("find", "--task", "task-1")
    assert "verdict: BEHIND" in found.out and older_id in found.out, found.out


async def test_a_copy_with_no_message_behind_a_newer_one_whose_link_expired_is_lost_not_behind() -> None:
    """As above, but the newer export's link has expired: its poisoned message can only fail it, so the older one
    will not be superseded by it: LOST (export again or fail), not BEHIND."""
    ops = await two_copies_the_newers_message_poisoned(older=timedelta(days=7), newer=timedelta(hours=1))
    found = await ops("find", "--task", "task-1")
    verdicts = [line.split("verdict: ")[1].split(":")[0] for line in found.out.splitlines() if "verdict:" in line]
    assert verdicts == ["LOST", "EXPIRED"], found.out


async def test_fail_checks_and_names_every_delivery_it_gives_up() -> None:
    """Two large exports copying: the older's message lost, the newer's in the queue. fail (the sweep gives
    up every delivery still copying) is refused naming the newer one; forced, it names both it failed."""
    ops = Ops(sync_copy_max_mib=0, copy_wait_seconds=0)
    assert (await ops.world.post(ops.world.export("task-1", "a.pdf"))).status_code == 202
    newer = await ops.world.post(ops.world.export("task-1", "b.pdf"))
    assert newer.status_code == 202 and newer.verification is not None
    ops.queue.add(newer.verification)
    record = ops.world.record()
    assert record is not None and [item.state for item in record.deliveries] == [State.COPYING] * 2
    older_id, newer_id = (item.delivery[:12] for item in record.deliveries)

    found = await ops("find", "--task", "task-1")
    verdicts = [line.strip().split(":")[1].strip() for line in found.out.splitlines() if "verdict:" in line]
    # The queue was read whole: the older one has no message, but the newer one's store supersedes it.
    assert verdicts == ["BEHIND", "QUEUED"], found.out
    refused = await ops("fail", "--task", "task-1", "--reason", "gave up")
    assert refused.code == NOT_FOUND and f"delivery {newer_id}" in refused.out, refused.out
    assert f"delivery {older_id}" not in refused.out and "look again" not in refused.out, refused.out
    assert "verification queue" in refused.out and "given up together" in refused.out
    record = ops.world.record()
    assert record is not None and [item.state for item in record.deliveries] == [State.COPYING] * 2

    forced = await ops("fail", "--task", "task-1", "--reason", "gave up", "--force", "--json")
    assert forced.code == OK and sorted(forced.json()["failed"]) == sorted([older_id, newer_id]), forced.out
    record = ops.world.record()
    assert record is not None and [item.state for item in record.deliveries] == [State.FAILED] * 2


async def test_fail_names_what_it_failed_when_storage_refuses_the_fence_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A re-export copying at the current file's name is given up; the fence that keeps its copy off the file
    is refused (a lease): fail still names the delivery it failed, and says the step storage refused."""
    from receiver.storage import Leased

    ops = Ops()
    await stored(ops)
    await ops.accept(ops.world.export("task-1"))

    async def leased(*args: Any, **kwargs: Any) -> Any:
        raise Leased("set headers: a lease another client holds refused it (LeaseIdMissing)", status=412)

    monkeypatch.setattr(ops.world.storage, "set_headers", leased)
    ran = await ops("fail", "--task", "task-1", "--reason", "gave up", "--force")
    record = ops.world.record()
    assert record is not None and record.deliveries[-1].state is State.FAILED, record
    assert ran.code == OK and f"Failed delivery {record.deliveries[-1].delivery[:12]}" in ran.out, ran.out
    assert "Storage then refused a step" in ran.out and "lease" in ran.out, ran.out


async def test_fail_of_an_expired_copy_is_refused_while_a_newer_copy_has_its_message() -> None:
    """The older export's link expired; the newer one's message is queued with its link valid: nothing is given
    up without --force (the newer one would be failed with it)."""
    ops = Ops(sync_copy_max_mib=0, copy_wait_seconds=0)
    assert (await ops.world.post(ops.world.export("task-1", "a.pdf", expires_in=timedelta(hours=1)))).status_code == 202
    newer = await ops.world.post(ops.world.export("task-1", "b.pdf"))
    assert newer.verification is not None
    ops.queue.add(newer.verification)
    ops.world.clock.advance(timedelta(hours=2))
    refused = await ops("fail", "--task", "task-1", "--reason", "expired one")
    assert refused.code == NOT_FOUND and "verification queue" in refused.out, refused.out
    record = ops.world.record()
    assert record is not None and record.deliveries[1].state is State.COPYING


async def test_fail_never_gives_up_a_delivery_accepted_after_it_checked_the_task(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """D1 (202'd, its link expired) is what the operator gives up; between the command's check and its sweep a new
    export D2 is answered 202 (its link valid, its message live): D2 is not given up with it, and no ERROR is raised
    for it; its message stores it."""
    from ops.records import drive

    ops = Ops(sync_copy_max_mib=0, copy_wait_seconds=0)
    world = ops.world
    assert (await world.post(world.export("task-1", "a.pdf", expires_in=timedelta(minutes=30)))).status_code == 202
    world.clock.advance(timedelta(minutes=40))
    newer: list[Any] = []

    async def a_new_export_first(*args: Any, **kwargs: Any) -> Any:
        newer.append(await world.post(world.export("task-1", "a.pdf")))
        return await drive(*args, **kwargs)

    monkeypatch.setattr("ops.commands.drive", a_new_export_first)
    caplog.set_level(logging.INFO, logger="receiver")
    ran = await ops("fail", "--task", "task-1", "--reason", "re-exported by hand", queues=False)
    assert newer[0].status_code == 202 and newer[0].verification is not None
    record = ops.world.record()
    assert record is not None and record.deliveries[-1].state is State.COPYING, (ran.out, record)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and "operator" in r.getMessage()]
    assert "Nothing failed" in ran.out, ran.out
    assert await verify_copy(newer[0].verification.encode(), runtime=world.runtime, now=world.now) == "stored"


async def test_a_delivery_accepted_again_after_it_was_given_up_is_timed_from_that_acceptance(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 202'd copy given up with --force an hour later; SmartDocumentor sends it again an hour after that: accepted
    again (202, a fresh message). Eleven minutes later it is neither lost for the reconciliation nor stuck for
    `pending`: its queue message has most of its tries ahead."""
    ops = Ops(sync_copy_max_mib=0, copy_wait_seconds=0)
    world = ops.world
    export = world.export(expires_in=timedelta(hours=24))
    assert (await world.post(export)).status_code == 202
    world.clock.advance(timedelta(hours=1))
    assert (await ops("fail", "--task", "task-1", "--reason", "stuck", "--force", queues=False)).code == OK
    world.clock.advance(timedelta(hours=1))
    assert (await world.post(export)).status_code == 202
    world.clock.advance(timedelta(minutes=11))
    caplog.set_level(logging.INFO, logger="receiver")
    caplog.clear()
    report = await ops.reconcile()
    assert report.lost == [] and not [r for r in caplog.records if r.levelno >= logging.ERROR]
    pending = await ops("pending", queues=False)
    assert "0 will not finish by themselves" in pending.out and "11m 00s" in pending.out, pending.out
    found = await ops("find", "--task", "task-1", queues=False)
    assert "accepted again 2026-01-01T02:00:00Z after it failed 2026-01-01T01:00:00Z" in found.out, found.out


async def test_a_delivery_tracked_again_after_it_was_given_up_by_a_lost_copy_answer_is_timed_from_then(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A copy given up two hours after its 202; the resend's copy gets a 503, so the webhook tracks the delivery again
    (an `unconfirmed` step) with a fresh message: eleven minutes later it is not lost for the reconciliation."""
    ops = Ops()
    world = ops.world
    assert (await world.post(world.export("task-1", "a.pdf"))).status_code == 200
    export = world.export("task-1", "d.pdf")
    await ops.accept(export)
    world.clock.advance(timedelta(hours=2))
    assert (await ops("fail", "--task", "task-1", "--reason", "given up")).code == OK
    world.faults.fail_before("copy_from_url", "ws-1/task-1/d.pdf")
    again = await world.post(export)
    assert again.status_code == 503 and again.verification is not None
    record = world.record()
    assert record is not None and record.deliveries[-1].history[-1].outcome == "unconfirmed"
    world.clock.advance(timedelta(minutes=11))
    caplog.set_level(logging.INFO, logger="receiver")
    caplog.clear()
    report = await ops.reconcile()
    assert report.lost == [] and not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_find_and_check_repair_adopt_bytes_that_need_a_fence_first(ops: Ops) -> None:
    """E1 stored; E2 and E3 accepted at its name, copying; E3's bytes landed and both messages are gone. The
    reconciliation would fence, then adopt E3: find and check say ADOPT, and check --repair does it."""
    await stored(ops)
    await ops.accept(ops.world.export("task-1"))
    await ops.accept(ops.world.export("task-1"), copied=True)
    found = await ops("find", "--task", "task-1")
    assert "ADOPT" in found.out and "made its own first" in found.out, found.out
    verdicts = [line.strip().split(":")[1].strip() for line in found.out.splitlines() if "verdict:" in line]
    assert verdicts == ["SUPERSEDED", "ADOPT"], found.out  # only the delivery whose bytes are there is adopted
    assert "export the document again" not in found.out and "landed there: check --repair records it" in found.out
    repaired = await ops("check", "--task", "task-1", "--repair")
    assert repaired.code == OK and "repaired" in repaired.out, repaired.out
    record = ops.world.record()
    assert record is not None and [item.state for item in record.deliveries][-1] is State.STORED, record
    assert record.current == record.deliveries[-1].delivery


async def test_a_large_notifications_message_names_an_unreadable_record_and_is_poisoned_on_its_last_try(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A notification too large for a queue message is queued as a reference to its record. When that record
    no longer parses, each try names it and what to restore (as the webhook and ops do), and the last try says
    the message is poisoned and what to run, instead of a bare validation error."""
    from receiver.storage import UnreadableRecord
    from receiver.verification import MAX_DEQUEUE_COUNT, verify_copy

    ops = Ops(sync_copy_max_mib=0, copy_wait_seconds=0, max_body_bytes=200_000)
    export = ops.world.export("task-1", "big.pdf", metadata={f"k{i}": "x" * 4000 for i in range(13)})
    answer = await ops.world.post(export)
    assert answer.status_code == 202 and answer.verification is not None and '"url"' in answer.verification
    name = record_name("ws-1", "task-1")
    there = ops.world.storage.stored(name)
    assert there is not None
    await ops.world.storage.put(
        name, b'{"kind": "task-record", "oops": 1}', if_match=there.etag, content_type="application/json", metadata={}
    )
    for tries, level in ((1, logging.WARNING), (MAX_DEQUEUE_COUNT, logging.ERROR)):
        caplog.clear()
        with pytest.raises(UnreadableRecord):
            await verify_copy(
                answer.verification.encode(), runtime=ops.world.runtime, now=ops.world.now, dequeue_count=tries
            )
        [line] = [r for r in caplog.records if r.name == "receiver" and r.getMessage().startswith("verification")]
        assert line.levelno == level and "is not readable" in line.getMessage(), line.getMessage()
        assert "restore its previous version" in line.getMessage()
    assert "poisoned" in line.getMessage() and "replay-poison" in line.getMessage()


async def test_check_never_calls_another_tasks_file_sent_the_same_link_a_match() -> None:
    """The task's file and manifest were deleted by hand; a template change then stores another task, sent the
    very same link (same delivery hash), at that name. check and find say the file is another task's."""
    import json
    from dataclasses import replace

    ops = Ops()
    export = await stored(ops)
    name = ops.plan(export).blob_name
    for blob in (name, f"{name}.json"):
        there = ops.world.storage.stored(blob)
        assert there is not None
        await ops.world.storage.delete(blob, if_match=there.etag)
    swapped = ops.world.settings.model_copy(update={"blob_name_template": "{taskId}/{workspaceId}/{fileName}"})
    ops.world.settings = swapped
    ops.world.runtime.use(ops.world.storage, swapped)
    body = {**json.loads(export.body), "taskId": "ws-1", "workspaceId": "task-1"}
    other = replace(export, task_id="ws-1", workspace_id="task-1", body=json.dumps(body).encode())
    assert (await ops.world.post(other)).status_code == 200 and sorted(ops.world.files()) == [name]
    checked = await ops("check", "--task", "task-1", "--workspace", "ws-1")
    assert checked.code == NOT_FOUND and "DOES NOT MATCH; manifest: DOES NOT MATCH" in checked.out, checked.out
    assert "of another task (workspace task-1, task ws-1)" in checked.out, checked.out


async def test_find_says_the_record_follows_an_older_exports_late_copy_not_adopt_for_the_copying_one() -> None:
    """A0 stored, then A (A0 superseded); B accepted at that name, copying. A late copy of A0 lands over the
    file: check --repair follows the file (A0 current, A failed), so B is not the one called ADOPT."""
    ops = Ops()
    a0 = await stored(ops)
    ops.world.clock.advance(timedelta(minutes=5))
    await stored(ops)
    ops.world.clock.advance(timedelta(minutes=5))
    await ops.accept(ops.world.export("task-1", "invoice.pdf"))
    name, late = ops.plan(a0).blob_name, ops.plan(a0)
    there = ops.world.storage.stored(name)
    assert there is not None
    await ops.world.storage.copy_from_url(name, late.source.url, if_match=there.etag, metadata=late.metadata, tags=None)
    found = await ops("find", "--task", "task-1")
    assert "ADOPT" not in found.out.split("check --repair now would")[0], found.out  # no delivery's verdict
    assert f"holds delivery {late.delivery[:12]}, an earlier export whose late copy landed" in found.out, found.out
    assert (await ops("check", "--task", "task-1", "--repair")).code in (OK, NOT_FOUND)
    record = ops.world.record()
    assert record is not None and record.current == late.delivery, record


async def test_a_queued_message_is_matched_to_its_task_by_the_ids_intake_made() -> None:
    """An id intake trims: the queued message still names that task, so find says QUEUED, not LOST, and fail
    is refused without --force."""
    import json

    ops = Ops(sync_copy_max_mib=0, copy_wait_seconds=0)
    body = {**json.loads(ops.world.export("x").body), "taskId": " task-9 "}
    answer = await ops.world.post(json.dumps(body).encode())
    assert answer.status_code == 202 and answer.verification is not None, answer.body
    ops.queue.add(answer.verification)
    task = answer.body["taskId"]
    found = await ops("find", "--task", task)
    assert "verdict: QUEUED" in found.out and "LOST" not in found.out, found.out
    refused = await ops("fail", "--task", task, "--reason", "stuck")
    assert refused.code == NOT_FOUND and "verification queue" in refused.out, refused.out


async def test_find_says_a_newer_exports_landed_copy_is_recorded_and_fails_no_one() -> None:
    """A stored; B then C accepted at A's name (copying); B's copy lands over A. The repair records B (A
    superseded): find says B, a newer export, is recorded, and never that A is failed."""
    ops = Ops()
    await stored(ops)
    ops.world.clock.advance(timedelta(minutes=5))
    b = ops.world.export("task-1", "invoice.pdf")
    await ops.accept(b)
    ops.world.clock.advance(timedelta(minutes=1))
    await ops.accept(ops.world.export("task-1", "invoice.pdf"))
    name, landed = ops.plan(b).blob_name, ops.plan(b)
    there = ops.world.storage.stored(name)
    assert there is not None
    await ops.world.storage.copy_from_url(
        name, landed.source.url, if_match=there.etag, metadata=landed.metadata, tags=None
    )
    found = await ops("find", "--task", "task-1")
    assert "is failed" not in found.out and "a newer export whose copy landed" in found.out, found.out
    assert (await ops("check", "--task", "task-1", "--repair")).code in (OK, NOT_FOUND)
    record = ops.world.record()
    assert record is not None and record.current == landed.delivery, record
    assert record.deliveries[0].state is State.SUPERSEDED, record


def lease_the_records(ops: Ops, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Every task record write is refused as a lease another client holds refuses it; the real put is returned."""
    from receiver.storage import Leased

    real_put = ops.world.storage.put

    async def put(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith(".smartdocumentor/tasks/"):
            raise Leased("put blob: a lease another client holds on a blob refused it (LeaseIdMissing)", status=412)
        return await real_put(name, *args, **kwargs)

    monkeypatch.setattr(ops.world.storage, "put", put)
    return real_put


async def test_a_poisoned_delivery_the_record_never_named_is_flagged_with_replay_as_the_next_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A renamed re-export's copy landed, then a lease on the task record refused the record write (503, a
    queue message) for all 40 tries: find names the poisoned delivery the record does not know and says to
    replay it, and the replay stores it."""
    from receiver.verification import verify_copy

    ops = Ops()
    await stored(ops)
    real_put = lease_the_records(ops, monkeypatch)
    ops.world.clock.advance(timedelta(seconds=1))  # received after the stored one (a tie is taken as older)
    answer = await ops.world.post(ops.world.export("task-1", "renamed.pdf"))
    assert answer.status_code == 503 and answer.verification is not None, answer.body
    assert "tries again by itself for about 40 minutes" in answer.body["message"]
    monkeypatch.setattr(ops.world.storage, "put", real_put)
    ops.poison.add(answer.verification)
    found = await ops("find", "--task", "task-1")
    assert found.code == NOT_FOUND and "which its record does not know" in found.out, found.out
    assert "next: python -m ops replay-poison --dry-run" in found.out, found.out
    assert await verify_copy(answer.verification.encode(), runtime=ops.world.runtime, now=ops.world.now) == "stored"


async def test_a_large_notification_a_leased_record_refused_is_told_to_send_again_not_promised_a_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A body too large for a queue message is queued as a reference its record must complete; a lease on the
    record refused that record: the 503 says to send the document again, and promises no retry it cannot make."""
    ops = Ops(max_body_bytes=200_000)
    await stored(ops)
    lease_the_records(ops, monkeypatch)
    big = ops.world.export("task-1", "renamed.pdf", metadata={f"k{i}": "x" * 4000 for i in range(13)})
    answer = await ops.world.post(big)
    assert answer.status_code == 503 and answer.verification is None, answer.body
    assert "then send the document again" in answer.body["message"], answer.body


async def test_a_large_notification_whose_record_write_failed_is_told_to_send_again_and_its_message_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A body too large for a queue message, its copy landed and its record write failed (503): its message
    refers to a record that never named it, so the answer promises no check by itself (send it again), and the
    queue function drops the message with a WARNING that says why, not an ERROR."""
    from receiver.verification import verify_copy

    ops = Ops(max_body_bytes=200_000)
    await stored(ops)
    big = ops.world.export("task-1", "renamed.pdf", metadata={f"k{i}": "x" * 4000 for i in range(13)})
    ops.world.faults.fail_before("put", record_name("ws-1", "task-1"))
    answer = await ops.world.post(big)
    assert answer.status_code == 503 and answer.verification is not None, answer.body
    assert "Send the document again later" in answer.body["message"] and "by itself" not in answer.body["message"]
    caplog.clear()
    assert await verify_copy(answer.verification.encode(), runtime=ops.world.runtime, now=ops.world.now) == "unreadable"
    [line] = [r for r in caplog.records if r.name == "receiver" and r.getMessage().startswith("verification")]
    assert line.levelno == logging.WARNING and "never held" in line.getMessage(), line.getMessage()


# --- replay-poison ------------------------------------------------------------------------------------------


async def test_replay_dry_run_says_a_message_behind_a_newer_copying_export_waits_not_that_it_is_copied() -> None:
    """B's record write failed (503, a queue message); newer export C is accepted (202, copying). The dry run
    says B waits behind C, as the queue function then does (it copies nothing yet)."""
    from receiver.verification import CopyStillRunning, verify_copy

    ops = Ops()
    await stored(ops)
    ops.world.clock.advance(timedelta(minutes=5))
    ops.world.faults.fail_before("put", record_name("ws-1", "task-1"))
    first = await ops.world.post(ops.world.export("task-1"))
    assert first.status_code == 503 and first.verification is not None, first.body
    ops.world.clock.advance(timedelta(minutes=5))
    await ops.accept(ops.world.export("task-1"))
    ops.poison.add(first.verification)
    (entry,) = (await ops("replay-poison", "--dry-run", "--json")).json()["messages"]
    assert "it waits" in entry["why"] and "then copied" not in entry["why"], entry
    with pytest.raises(CopyStillRunning, match="behind"):
        await verify_copy(first.verification.encode(), runtime=ops.world.runtime, now=ops.world.now)


async def test_replay_dry_run_says_superseded_for_a_message_a_newer_export_overtook() -> None:
    """B's record write failed (503, its message poisoned later); newer export C was stored since. The dry run
    forecasts what the queue function then does: superseded, nothing copied."""
    from receiver.verification import verify_copy

    ops = Ops()
    await stored(ops)
    ops.world.clock.advance(timedelta(minutes=5))
    ops.world.faults.fail_before("put", record_name("ws-1", "task-1"))
    first = await ops.world.post(ops.world.export("task-1"))
    assert first.status_code == 503 and first.verification is not None, first.body
    ops.world.clock.advance(timedelta(minutes=5))
    assert (await ops.world.post(ops.world.export("task-1"))).status_code == 200
    ops.poison.add(first.verification)
    dry = await ops("replay-poison", "--dry-run", "--json")
    (entry,) = dry.json()["messages"]
    assert entry["will"] == "superseded", entry
    assert await verify_copy(first.verification.encode(), runtime=ops.world.runtime, now=ops.world.now) == "superseded"


async def test_replay_dry_run_and_the_queue_function_agree(ops: Ops) -> None:
    from receiver.verification import verify_copy

    older = ops.world.export("task-1")
    superseded = await ops.accept(older)
    await stored(ops, name="v2.pdf")  # a newer export of task-1 is stored
    finishing = await ops.accept(ops.world.export("task-2"))
    expiring = await ops.accept(ops.world.export("task-3", expires_in=timedelta(minutes=10)))
    for text in (superseded, finishing, expiring):
        ops.poison.add(text)
    ops.poison.add("not a message")
    ops.world.clock.advance(timedelta(minutes=20))

    dry = await ops("replay-poison", "--dry-run", "--json")
    will = {entry.get("taskId"): entry["will"] for entry in dry.json()["messages"]}
    assert will == {"task-1": "superseded", "task-2": "finish", "task-3": "fail", None: "nothing"}
    assert dry.code == NOT_FOUND and len(ops.poison.visible) == 4  # nothing moved

    moved = await ops("replay-poison")
    assert moved.json if moved.code == NOT_FOUND else False  # the unreadable one stays: exit 1
    assert len(ops.queue.visible) == 3 and "Moved 3 message(s)" in moved.out
    # What it left is visible again at once: a dry run right after still shows it.
    assert [item.content for item in ops.poison.visible] == ["not a message"] and not ops.poison.hidden
    again = await ops("replay-poison", "--dry-run", "--json")
    assert [entry["action"] for entry in again.json()["messages"]] == ["would-leave"], again.out
    outcomes = {}
    for item in list(ops.queue.visible):
        body = json.loads(json.loads(item.content)["body"])
        outcomes[body["taskId"]] = await verify_copy(
            item.content.encode(), runtime=ops.world.runtime, now=ops.world.now
        )
    assert outcomes == {"task-1": "superseded", "task-2": "stored", "task-3": "failed"}
    record = ops.world.record("task-2")
    assert record is not None and any(
        step.outcome == "replayed" and step.by == "operator" for item in record.deliveries for step in item.history
    )


async def test_replay_does_not_foresee_a_refusal_by_a_source_policy_this_machine_lacks(
    ops: Ops, caplog: pytest.LogCaptureFixture
) -> None:
    """Without the app's ALLOWED_SOURCE_HOSTS, a link outside the default policy is UNKNOWN, never a
    FAIL recorded in the task's history and logged as an ERROR (the queue function may well store it)."""
    from receiver.settings import Settings
    from receiver.verification import message as queue_message

    export = ops.world.export("task-1")
    body = json.loads(export.body)
    host = body["exportedFileUrl"].split("/")[2]
    body["exportedFileUrl"] = body["exportedFileUrl"].replace(f"https://{host}", "http://127.0.0.1:10000/exports")
    ops.poison.add(queue_message(json.dumps(body).encode(), ops.world.now))  # a local link the app allows
    given = ops.world.settings.model_dump(exclude={"allowed_source_hosts", "allow_http_sources"})
    without_policy = Settings(**given)
    out, err = io.StringIO(), io.StringIO()
    argv = ["replay-poison", "--dry-run", "--json"]
    kwargs: Any = {"environ": {}, "out": out, "err": err, "storage": ops.world.storage, "now": ops.world.now}
    assert await run(argv, settings=without_policy, queues=ops.queues, **kwargs) == OK
    [entry] = json.loads(out.getvalue())["messages"]
    assert entry["will"] == "unknown" and "ALLOWED_SOURCE_HOSTS" in entry["why"], entry
    with caplog.at_level(logging.WARNING):
        assert await run(["replay-poison"], settings=without_policy, queues=ops.queues, **kwargs) == OK
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert len(ops.queue.visible) == 1 and "foreseen: FAIL" not in caplog.text and "not foreseen" in caplog.text


@pytest.mark.parametrize(
    ("link", "given", "will"),
    [
        ("http://127.0.0.1:10000/exports/f.pdf", {"allowed_source_hosts": ("127.0.0.1:10000",)}, "unknown"),
        ("http://127.0.0.1:10000/exports/f.pdf", {"allow_http_sources": True}, "unknown"),
        (
            "http://127.0.0.1:10000/exports/f.pdf",
            {"allowed_source_hosts": ("127.0.0.1:10000",), "allow_http_sources": False},
            "fail",
        ),
        ("https://exports.blob.core.windows.net/a b/f.pdf", {}, "fail"),  # refused for what it is, by any policy
    ],
    ids=["hosts-only", "http-only", "both-given", "malformed"],
)
async def test_replay_foresees_a_source_refusal_only_when_the_apps_policy_would_refuse_it_too(
    ops: Ops, link: str, given: dict[str, Any], will: str
) -> None:
    from receiver.settings import Settings
    from receiver.verification import message as queue_message

    body = json.loads(ops.world.export("task-1").body)
    body["exportedFileUrl"] = link + "?sv=2024-11-04&se=2099-01-01T00%3A00%3A00Z&sig=abc"
    ops.poison.add(queue_message(json.dumps(body).encode(), ops.world.now))
    base = ops.world.settings.model_dump(exclude={"allowed_source_hosts", "allow_http_sources"})
    settings = Settings(**base, **given)
    out, err = io.StringIO(), io.StringIO()
    kwargs: Any = {"environ": {}, "out": out, "err": err, "storage": ops.world.storage, "now": ops.world.now}
    await run(["replay-poison", "--dry-run", "--json"], settings=settings, queues=ops.queues, **kwargs)
    [entry] = json.loads(out.getvalue())["messages"]
    assert entry["will"] == will, entry


async def test_one_unreadable_task_record_does_not_hide_the_other_tasks_from_replay_pending_or_failed(
    ops: Ops,
) -> None:
    await stored(ops, task="task-1")
    messages = [await ops.accept(ops.world.export(task)) for task in ("task-2", "task-1", "task-3")]
    for text in messages:
        ops.poison.add(text)
    name = record_name("ws-1", "task-1")
    there, data = ops.world.storage.stored(name), ops.world.storage.blob_bytes(name)
    assert there is not None and data is not None
    await ops.world.storage.put(
        name, data[:-20], if_match=there.etag, content_type="application/json", metadata=dict(there.metadata)
    )

    dry = await ops("replay-poison", "--dry-run")
    assert dry.code == NOT_FOUND and "task-2" in dry.out and "task-3" in dry.out, (dry.out, dry.err)
    assert f"The task record {name} is not readable" in dry.out
    [blocked] = [line for line in dry.out.splitlines() if "message(s) BLOCKED" in line]
    assert "a task record to restore" in blocked, blocked  # not only a policy to lift
    real = await ops("replay-poison")
    assert real.code == NOT_FOUND and "Moved 2 message(s)" in real.out, (real.out, real.err)
    assert len(ops.queue.visible) == 2  # task-1's message stays in the poison queue: it would be poisoned again
    ops.world.clock.advance(timedelta(hours=3))
    await ops.reconcile()
    for command in (("pending",), ("failed", "--since", "600")):
        ran = await ops(*command)
        assert ran.code == NOT_FOUND and f"PROBLEM: The task record {name} is not readable" in ran.out, ran.out
        assert "task-2" in ran.out and "task-3" in ran.out, ran.out


async def test_replay_under_a_container_hold_moves_the_message_and_exits_0_without_its_note(ops: Ops) -> None:
    """A stored export whose manifest write failed (503, poisoned), under a legal hold: the replay moves the
    message back and says so; the record's "replayed" note, which the hold refuses, is only not written."""
    world = ops.world
    world.storage.policy = "legal hold"
    world.faults.lose_answer("put", "ws-1/task-1/invoice.pdf.json")
    first = await world.post(world.export())
    assert first.status_code == 503 and first.verification is not None, first.body
    ops.poison.add(first.verification)
    ran = await ops("replay-poison")
    assert ran.code == OK and "Moved 1 message(s)" in ran.out, (ran.code, ran.out, ran.err)
    assert (await ops.queue.count(), await ops.poison.count()) == (1, 0)


async def test_replay_with_nothing_poisoned_does_nothing(ops: Ops) -> None:
    ran = await ops("replay-poison")
    assert ran.code == OK and "Moved 0 message(s)" in ran.out


# --- the real entry point, end to end on MemoryStorage -----------------------------------------------------


def test_main_finds_checks_and_lists_on_memory_storage(capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio

    ops = Ops()
    asyncio.run(ops.world.post(ops.world.export("task-1")))
    asyncio.run(ops.reconcile())
    common: dict[str, Any] = {
        "storage": ops.world.storage,
        "settings": ops.world.settings,
        "queues": ops.queues,
        "now": ops.world.now,
    }

    assert main(["find", "--task", "task-1"], **common) == OK
    assert "<- current" in capsys.readouterr().out
    assert main(["--json", "check", "--task", "task-1"], **common) == OK
    assert json.loads(capsys.readouterr().out)["fileMatches"] is True
    assert main(["pending", "--alert"], **common) == OK
    assert main(["failed", "--since", "60", "--alert"], **common) == OK
    assert main(["find"], **common) == USAGE
    assert capsys.readouterr().err.count("\n") == 1


def test_every_command_has_help_with_an_example_and_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("find", "pending", "failed", "check", "fail", "replay-poison"):
        assert main([command, "--help"]) == OK
        shown = capsys.readouterr().out
        assert "example:" in shown and "exit codes:" in shown, command


async def test_options_go_before_or_after_the_command(ops: Ops) -> None:
    await stored(ops)
    before = await ops("--json", "find", "--task", "task-1")
    after = await ops("find", "--task", "task-1", "--json")
    assert before.code == after.code == OK and before.out == after.out


def test_python_dash_m_ops_runs_the_entry_point() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "ops", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert shown.returncode == OK and "replay-poison" in shown.stdout and "fail" in shown.stdout


def refuse_by_lease(ops: Ops, monkeypatch: pytest.MonkeyPatch, refused: Callable[[str], bool]) -> Any:
    """Every put to a name ``refused`` picks is refused as a lease another client holds refuses it; the real
    put is returned."""
    from receiver.storage import Leased

    real_put = ops.world.storage.put

    async def put(name: str, *args: Any, **kwargs: Any) -> Any:
        if refused(name):
            raise Leased(f"put blob: a lease another client holds on {name} refused it (LeaseIdMissing)", status=412)
        return await real_put(name, *args, **kwargs)

    monkeypatch.setattr(ops.world.storage, "put", put)
    return real_put


async def test_check_repair_whose_manifest_write_a_lease_refuses_says_not_done_and_names_the_lease(
    ops: Ops, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing manifest, and a lease refuses the repair's write of it: check --repair says it was not done and
    why (exit 1), not "repaired"; once the lease is gone the same command writes it."""
    export = await stored(ops)
    name = f"{ops.plan(export).blob_name}.json"
    manifest = ops.world.storage.stored(name)
    assert manifest is not None
    await ops.world.storage.delete(name, if_match=manifest.etag)
    real_put = refuse_by_lease(ops, monkeypatch, lambda blob: blob == name)

    refused = await ops("check", "--task", "task-1", "--repair")
    assert refused.code == NOT_FOUND, (refused.code, refused.out, refused.err)
    assert "not done: storage refused a step" in refused.out and "lease" in refused.out, refused.out
    assert "repaired:" not in refused.out and ops.world.storage.stored(name) is None, refused.out
    monkeypatch.setattr(ops.world.storage, "put", real_put)
    repaired = await ops("check", "--task", "task-1", "--repair")
    assert repaired.code == OK and "repaired:" in repaired.out and ops.world.storage.stored(name) is not None


async def test_check_repair_stopped_by_a_refused_record_write_says_what_it_did_and_exits_1(
    ops: Ops, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A delivery copying whose link expired: check --repair fails it, and a lease refuses the record's write.
    The command says the step was refused and why (exit 1: storage answered), not a bare error with exit 3;
    nothing failed, so its log record is no final failure (no alert) and says what was not done."""
    await stored(ops)
    await ops.accept(ops.world.export("task-1", expires_in=timedelta(minutes=5)))
    ops.world.clock.advance(timedelta(minutes=10))
    refuse_by_lease(ops, monkeypatch, lambda blob: blob.startswith(".smartdocumentor/tasks/"))

    with caplog.at_level(logging.INFO, logger="receiver"):
        refused = await ops("check", "--task", "task-1", "--repair")
    assert refused.code == NOT_FOUND, (refused.code, refused.out, refused.err)
    assert "not done: storage refused a step" in refused.out and "lease" in refused.out, refused.out
    assert "steps tried: observe,expired" in refused.out, refused.out
    record = ops.world.record()
    assert record is not None and record.deliveries[-1].state is State.COPYING, record
    [line] = [r for r in caplog.records if r.getMessage().startswith("operator check --repair")]
    assert line.levelno == logging.WARNING and not getattr(line, "receiver.finalFailure", False), line.getMessage()
    assert "not done: storage refused a step" in line.getMessage()


async def test_a_replaced_file_someone_else_overwrote_is_left_in_place_and_its_history_says_so(ops: Ops) -> None:
    """The customer overwrote the stored file with bytes of their own; a renamed re-export then retires the name:
    the file is not the receiver's any more, so it stays, and the history says it was left, not retired."""
    export = await stored(ops)
    name = ops.plan(export).blob_name
    there = ops.world.storage.stored(name)
    assert there is not None
    await ops.world.storage.put(
        name, b"the customer's own", if_match=there.etag, content_type="application/pdf", metadata={}
    )
    await stored(ops, name="renamed.pdf")
    assert ops.world.files()[name] == b"the customer's own"
    record = ops.world.record()
    assert record is not None and record.retire == [], record
    step = record.deliveries[0].history[-1]
    assert step.outcome == "retired" and step.retired is None, step
    assert step.note == f"left in place, no longer holding this delivery: {name}", step
    shown = await ops("find", "--task", "task-1")
    assert f"retired (left in place, no longer holding this delivery: {name})" in shown.out, shown.out


async def test_replay_into_a_queue_that_does_not_exist_leaves_every_message_visible_in_the_poison_queue(
    ops: Ops,
) -> None:
    """The verification queue is missing (another host storage given): replay-poison says so and moves nothing;
    every message it received stays in the poison queue, visible again at once for the next look."""
    for task in ("task-1", "task-2"):
        ops.poison.add(await ops.accept(ops.world.export(task)))
    ops.queue.exists = False
    ran = await ops("replay-poison")
    assert ran.code == STORAGE and "does not exist in this host storage" in ran.out, ran.out
    assert len(ops.poison.visible) == 2 and not ops.poison.hidden, (ops.poison.visible, ops.poison.hidden)


async def test_replay_stopped_by_a_refused_send_leaves_the_rest_visible_in_the_poison_queue(ops: Ops) -> None:
    """The verification queue refuses a send midway (throttled, say): replay-poison ends with the storage error,
    the message moved before stays moved, and the ones not moved are visible again at once for the next look
    (they stayed hidden two minutes)."""
    for task in ("task-1", "task-2", "task-3"):
        ops.poison.add(await ops.accept(ops.world.export(task)))
    sends = 0
    real_send = ops.queue.send

    async def send_once_then_refuse(content: str) -> None:
        nonlocal sends
        sends += 1
        if sends > 1:
            raise StoreError("503 ServerBusy: the queue service is throttling this account")
        await real_send(content)

    ops.queue.send = send_once_then_refuse  # type: ignore[method-assign]
    ran = await ops("replay-poison")
    assert ran.code == STORAGE and "ServerBusy" in ran.err, (ran.code, ran.out, ran.err)
    assert len(ops.queue.visible) == 1, ops.queue.visible
    assert len(ops.poison.visible) == 2 and not ops.poison.hidden, (ops.poison.visible, ops.poison.hidden)


async def test_a_receive_refused_on_a_later_page_leaves_the_earlier_pages_visible_again() -> None:
    """The poison queue is received in pages of 32: when a later page is refused (throttled), the messages the
    earlier pages hid are made visible again before the error goes on, so nothing stays hidden two minutes."""
    from azure.core.exceptions import HttpResponseError

    from ops.queues import AzureQueue

    class Page:
        def __init__(self, number: int) -> None:
            self.id, self.content, self.pop_receipt = f"m{number}", "{}", f"r{number}"

    class RefusingSecondPage:
        queue_name = POISON_QUEUE

        def __init__(self) -> None:
            self.hidden: set[str] = set()

        def receive_messages(self, *, messages_per_page: int, visibility_timeout: int, max_messages: int) -> Any:
            async def pages() -> Any:
                for number in range(messages_per_page):
                    self.hidden.add(f"m{number}")  # the service hides what it returns
                    yield Page(number)
                raise HttpResponseError(message="503 ServerBusy")

            return pages()

        async def update_message(self, message_id: str, pop_receipt: str, *, visibility_timeout: int) -> None:
            assert visibility_timeout == 0
            self.hidden.discard(message_id)

    client = RefusingSecondPage()
    with pytest.raises(HttpResponseError):
        await AzureQueue(client).receive(64, visibility_seconds=120)
    assert not client.hidden, sorted(client.hidden)


async def test_a_retirement_a_legal_hold_refuses_is_not_proposed_again_until_the_hold_is_lifted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A renamed export while a legal hold is on the older file: its name stays listed. `check --repair` records
    `stopped` (not `retire`) and names what must change instead of proposing itself again; with a hold on the
    whole container `find` says nothing can be done while it lasts; once lifted, the repair retires the name."""
    ops = Ops()
    await stored(ops)
    ops.world.faults.make_immutable("ws-1/task-1/invoice.pdf", legal_hold=True)
    await stored(ops, name="renamed.pdf")
    record = ops.world.record()
    assert record is not None and [item.blob for item in record.retire] == ["ws-1/task-1/invoice.pdf"]

    caplog.clear()
    ran = await ops("check", "--task", "task-1", "--repair")
    assert "not retired: ws-1/task-1/invoice.pdf" in ran.out, ran.out
    assert "after: next: python -m ops check" not in ran.out, ran.out
    assert "stay listed until what refused them is gone" in ran.out, ran.out
    [line] = [r for r in caplog.records if "operator check --repair" in r.getMessage()]
    assert line.__dict__.get("receiver.outcome") == "stopped", line.__dict__
    assert "not retired: ws-1/task-1/invoice.pdf" in line.getMessage(), line.getMessage()

    ops.world.storage.policy = "legal hold"
    found = await ops("find", "--task", "task-1")
    assert "next: nothing to do while the container's legal hold lasts" in found.out, found.out

    ops.world.storage.policy = None
    ops.world.faults.release("ws-1/task-1/invoice.pdf")
    ran = await ops("check", "--task", "task-1", "--repair")
    assert ran.code == OK and "retired ws-1/task-1/invoice.pdf" in ran.out, ran.out


async def test_the_next_commands_quote_a_task_id_a_shell_would_split() -> None:
    ops = Ops()
    await stored(ops, task="Lot 42 & co;rm")
    ops.world.faults.make_immutable("ws-1/Lot 42 & co;rm/invoice.pdf")
    await stored(ops, task="Lot 42 & co;rm", name="renamed.pdf")
    found = await ops("find", "--task", "Lot 42 & co;rm")
    assert "--task 'Lot 42 & co;rm' --workspace ws-1 --repair" in found.out, found.out


async def test_an_unreadable_poison_message_stays_until_drop_unreadable_deletes_it_and_the_problem_ends(
    ops: Ops,
) -> None:
    """A message nothing can read (not a verification message) would only be dropped by the queue function too:
    replay-poison leaves it, says how to remove it, and --drop-unreadable deletes it (a dry run first shows it);
    the readable messages beside it are moved as always."""
    readable = await ops.accept(ops.world.export("task-2"))
    ops.poison.add("not a message")
    ops.poison.add(readable)
    left = await ops("replay-poison")
    assert left.code == NOT_FOUND and "replay-poison --drop-unreadable" in left.out, left.out
    assert [item.content for item in ops.poison.visible] == ["not a message"], ops.poison.visible

    dry = await ops("replay-poison", "--dry-run", "--drop-unreadable", "--json")
    assert [entry["action"] for entry in dry.json()["messages"]] == ["would-drop"], dry.out
    assert len(ops.poison.visible) == 1
    dropped = await ops("replay-poison", "--drop-unreadable")
    assert dropped.code == OK and "1 unreadable message(s) were deleted" in dropped.out, dropped.out
    assert not ops.poison.visible and not ops.poison.hidden
    assert len(ops.queue.visible) == 1  # the readable one, moved by the first run


async def test_a_retirement_a_lease_holds_back_for_over_a_day_is_an_error_naming_the_task(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A lease lapses or is broken, so a delete it refuses is a WARNING and tried again each run; one that still
    refuses it a day later (an infinite lease) is an ERROR (the alert), naming the task and the lease."""

    ops = Ops()
    await stored(ops)
    lease_refuses_deleting(ops, monkeypatch, "ws-1/task-1/invoice.pdf")
    await stored(ops, name="renamed.pdf")
    caplog.set_level(logging.WARNING, logger="receiver.engine")  # (a command line run in this process raises it)
    caplog.clear()
    await ops.reconcile()
    retire_lines = [r for r in caplog.records if r.name == "receiver.engine" and "could not retire" in r.getMessage()]
    assert [r.levelno for r in retire_lines] == [logging.WARNING], [r.getMessage() for r in retire_lines]

    ops.world.clock.advance(timedelta(days=1, minutes=5))  # the run in the first ten minutes of that day
    caplog.clear()
    await ops.reconcile()
    [error] = [r for r in caplog.records if r.name == "receiver.engine" and r.levelno == logging.ERROR]
    assert "does it never lapse?" in error.getMessage(), error.getMessage()
    assert error.__dict__.get("receiver.taskId") == "task-1", error.__dict__


async def test_a_retirement_a_busy_service_refuses_is_a_warning_naming_its_error_not_a_lease(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A delete of the renamed export's older file answered 503: a WARNING naming the 503 and that the next request
    or run tries again (no lease to hunt for); the next reconciliation run retires it."""
    ops = Ops()
    await stored(ops)
    ops.world.faults.fail_before("delete", "ws-1/task-1/invoice.pdf")
    caplog.set_level(logging.WARNING, logger="receiver.engine")
    caplog.clear()
    await stored(ops, name="renamed.pdf")
    [line] = [r for r in caplog.records if r.name == "receiver.engine" and "could not retire" in r.getMessage()]
    said = line.getMessage()
    assert line.levelno == logging.WARNING and "did not reach the service" in said and "lease" not in said, said
    assert "tried again by the next request or reconciliation run" in said and "to try now, run" in said, said
    ops.world.clock.advance(timedelta(minutes=15))
    await ops.reconcile()
    assert "ws-1/task-1/invoice.pdf" not in ops.world.storage.names()


async def test_a_copy_its_queue_message_fails_while_the_reconciliation_expires_it_alerts_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The reconciliation decides to fail a copy whose link expired; before its record write lands, the queue
    function fails it (its own ERROR). The reconciliation's write loses its swap: it failed nothing, so it logs no
    second ERROR for the same failure."""
    from receiver.verification import verify_copy

    ops = Ops()
    text = await ops.accept(ops.world.export("task-1", expires_in=timedelta(minutes=30)))
    ops.world.clock.advance(timedelta(hours=2))
    real_put = ops.world.storage.put
    raced: list[str] = []

    async def put(name: str, data: bytes, **kwargs: Any) -> Any:
        if name == record_name("ws-1", "task-1") and not raced:
            raced.append("racing")  # once: the queue function's own write goes straight through
            raced[0] = await verify_copy(text.encode(), runtime=ops.world.runtime, now=ops.world.now)
        return await real_put(name, data, **kwargs)

    monkeypatch.setattr(ops.world.storage, "put", put)
    caplog.set_level(logging.INFO, logger="receiver")
    await ops.reconcile()
    assert raced == ["failed"], raced
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and "task=task-1" in r.getMessage()]
    assert len(errors) == 1 and errors[0].startswith("verification"), errors


async def test_a_retirement_a_hold_refuses_alerts_when_listed_and_then_about_once_a_day(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A hold lasts months: its refused retirement is an ERROR (the alert) when the name is listed, then a WARNING
    on the runs in between, and an ERROR again on the run in the first ten minutes of each day after."""
    ops = Ops()
    await stored(ops)
    ops.world.faults.make_immutable("ws-1/task-1/invoice.pdf", legal_hold=True)
    caplog.set_level(logging.WARNING, logger="receiver.engine")

    def levels() -> list[int]:
        found = [
            r.levelno for r in caplog.records if r.name == "receiver.engine" and "could not retire" in r.getMessage()
        ]
        caplog.clear()
        return found

    caplog.clear()
    await stored(ops, name="renamed.pdf")
    [alert] = [r for r in caplog.records if r.name == "receiver.engine" and "could not retire" in r.getMessage()]
    columns = {key: getattr(alert, f"receiver.{key}", None) for key in ("operation", "outcome", "reason")}
    assert columns["operation"] == "delivery" and columns["outcome"] == "unretired", columns  # the view's columns
    assert "ws-1/task-1/invoice.pdf not retired" in str(columns["reason"]), columns
    assert levels() == [logging.ERROR]
    ops.world.clock.advance(timedelta(minutes=20))
    await ops.reconcile()
    assert levels() == [logging.WARNING]
    ops.world.clock.advance(timedelta(days=1) - timedelta(minutes=15))
    await ops.reconcile()
    assert levels() == [logging.ERROR]
    # An operator's check --repair at that same moment prints why; it raises no second alert.
    caplog.set_level(logging.WARNING, logger="receiver.engine")  # (the command line raises it to ERROR)
    ran = await ops("check", "--task", "task-1", "--repair")
    assert "not retired: ws-1/task-1/invoice.pdf" in ran.out, ran.out
    assert levels() == [logging.WARNING]


@pytest.mark.parametrize(
    "document",
    [{"v": 2, "body": "{}", "blob": "x"}, {"v": 2, "body": "{}", "receivedAt": "2026-01-01T00:00:00"}],
    ids=["no-receivedAt", "receivedAt-without-offset"],
)
async def test_a_message_whose_time_is_missing_or_naive_is_unreadable_to_both_and_can_be_dropped(
    document: dict[str, Any],
) -> None:
    """Not a message the receiver writes: the queue function drops it (unreadable) rather than raising on every
    try, and replay-poison neither crashes on it nor moves it; --drop-unreadable deletes it."""
    from receiver.verification import verify_copy

    ops = Ops()
    text = base64.b64encode(json.dumps(document).encode()).decode()
    assert await verify_copy(base64.b64decode(text), runtime=ops.world.runtime, now=ops.world.now) == "unreadable"
    ops.poison.add(text)
    dry = await ops("replay-poison", "--dry-run", "--json")
    assert [entry["action"] for entry in dry.json()["messages"]] == ["would-leave"], dry.out
    dropped = await ops("replay-poison", "--drop-unreadable")
    assert dropped.code == OK and not ops.poison.visible and not ops.queue.visible, dropped.out


async def test_a_refused_retirement_is_alerted_by_the_request_that_listed_it_not_again_by_the_next_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A hold on invoice.pdf: the renamed export that lists it alerts; another rename a minute later, which tries
    the same delete again, logs a WARNING (one condition, one alert; the reconciliation repeats it daily)."""
    ops = Ops()
    await stored(ops)
    ops.world.faults.make_immutable("ws-1/task-1/invoice.pdf", legal_hold=True)
    caplog.set_level(logging.WARNING, logger="receiver.engine")
    levels = []
    for name in ("renamed.pdf", "renamed-again.pdf"):
        caplog.clear()
        await stored(ops, name=name)
        refused = [r for r in caplog.records if "could not retire ws-1/task-1/invoice.pdf" in r.getMessage()]
        levels.append([r.levelno for r in refused])
        ops.world.clock.advance(timedelta(minutes=1))
    assert levels == [[logging.ERROR], [logging.WARNING]], levels
    assert "ws-1/task-1/renamed.pdf" not in ops.world.storage.names()  # the other name retired as usual


async def test_a_held_retirement_whose_listing_request_stopped_before_deleting_is_alerted_by_the_first_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A hold on invoice.pdf; the renamed export's record write (listing it to retire) lands with its answer lost, so
    that request stops (503) before any delete, and its resend is a duplicate: no request tried the delete. The
    reconciliation's first run raises the ERROR then, not a day later."""
    ops = Ops()
    await stored(ops)
    ops.world.faults.make_immutable("ws-1/task-1/invoice.pdf", legal_hold=True)
    ops.world.faults.lose_answer("put", record_name("ws-1", "task-1"))
    renamed = ops.world.export("task-1", "renamed.pdf")
    caplog.set_level(logging.WARNING, logger="receiver.engine")
    caplog.clear()
    assert (await ops.world.post(renamed)).status_code == 503
    assert (await ops.world.post(renamed)).body["status"] == "duplicate"
    assert not [r for r in caplog.records if r.levelno == logging.ERROR and "could not retire" in r.getMessage()]
    ops.world.clock.advance(timedelta(minutes=5))
    await ops.reconcile()
    assert [r for r in caplog.records if r.levelno == logging.ERROR and "could not retire" in r.getMessage()]


async def test_a_later_step_of_the_retired_delivery_does_not_date_its_held_name_anew(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A hold on invoice.pdf; the renamed export that lists it alerts, and the reconciliation's first run. Three hours
    later the template changes and a late resend of the retired delivery leaves a copy at its new name (its answer
    lost), listed with a `stray-copy` step on that delivery: that step does not make the held name's listing new, so
    no more ERRORs about it come that day (two in all)."""
    ops = Ops()
    first = ops.world.export("task-1")
    assert (await ops.world.post(first)).status_code == 200
    ops.world.faults.make_immutable("ws-1/task-1/invoice.pdf", legal_hold=True)
    caplog.set_level(logging.WARNING, logger="receiver.engine")
    caplog.clear()
    started = ops.world.now
    assert (await ops.world.post(ops.world.export("task-1", "renamed.pdf"))).status_code == 200
    dated = "{yyyy}/{workspaceId}/{taskId}/{fileName}"
    for number in range(6 * 24):  # a run every 10 minutes for a day
        ops.world.clock.advance(timedelta(minutes=5 if number == 0 else 10))
        if number == 18:
            changed = ops.world.settings.model_copy(update={"blob_name_template": dated})
            ops.world.settings = changed
            ops.world.runtime.use(ops.world.storage, changed)
            ops.world.faults.lose_answer("copy_from_url", ops.plan(first).blob_name)
            await ops.world.post(first)
            ops.world.clock.advance(timedelta(minutes=4))
        await ops.reconcile()
    held = "could not retire ws-1/task-1/invoice.pdf"
    alerts = [r for r in caplog.records if r.levelno == logging.ERROR and held in r.getMessage()]
    assert ops.world.now - started > timedelta(hours=23)
    assert len(alerts) == 2, [r.getMessage()[:80] for r in alerts]


async def test_a_refused_retirement_alerts_once_a_day_whatever_the_reconciliations_schedule(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """RECONCILE_SCHEDULE hourly, the name listed half an hour before a run: the request that listed it alerts, and
    the reconciliation's daily ERROR falls on one run a day (the window is the schedule's period, from the listing:
    the first day's too, as the listing request may have stopped before trying), never on none and never on all."""
    ops = Ops()
    hourly = ops.world.settings.model_copy(update={"reconcile_schedule": "0 0 * * * *"})
    ops.world.settings = hourly
    ops.world.runtime.use(ops.world.storage, hourly)
    await stored(ops)
    ops.world.faults.make_immutable("ws-1/task-1/invoice.pdf", legal_hold=True)
    caplog.set_level(logging.WARNING, logger="receiver.engine")
    caplog.clear()

    def alerts() -> list[int]:
        found = [r.levelno for r in caplog.records if "could not retire" in r.getMessage()]
        caplog.clear()
        return [level for level in found if level == logging.ERROR]

    await stored(ops, name="renamed.pdf")
    assert len(alerts()) == 1
    ops.world.clock.advance(timedelta(minutes=30))
    by_day = [0, 0, 0]
    for hour in range(24 * 3):
        await ops.reconcile()
        by_day[(30 + 60 * hour) // (24 * 60)] += len(alerts())
        ops.world.clock.advance(timedelta(hours=1))
    assert by_day == [1, 1, 1], by_day


async def test_under_a_known_container_policy_a_renamed_export_of_a_task_still_copying_leaves_nothing() -> None:
    """The task's record exists (its first export still copying) and a legal hold is on the container: a renamed
    export would have to change that record, which the hold refuses: 409 before anything is copied."""
    ops = Ops()
    await ops.accept(ops.world.export("task-1"))
    ops.world.storage.policy = "legal hold"
    answer = await ops.world.post(ops.world.export("task-1", "renamed.pdf"))
    assert answer.status_code == 409 and answer.body["error"] == "immutable", answer.body
    assert "ws-1/task-1/renamed.pdf" not in ops.world.files()
    assert ops.world.manifest("ws-1/task-1/renamed.pdf") is None


def test_every_verdict_find_can_give_is_explained_in_both_operator_guides() -> None:
    """The verdicts of a delivery still copying (ops/commands.py `_copying_verdict`) are each in operations.md's
    table and in operator-cli.md's `find` (upper case), so an operator reading either knows what to run next."""
    import ast
    import inspect

    from ops import commands

    tree = ast.parse(inspect.getsource(commands._copying_verdict))
    verdicts = {
        str(node.value.elts[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Return)
        and isinstance(node.value, ast.Tuple)
        and isinstance(node.value.elts[0], ast.Constant)
    }
    assert {"queued", "poisoned", "lost", "expired", "adopt", "behind", "superseded"} <= verdicts, verdicts
    operations = (ROOT / "docs" / "operations.md").read_text()
    operator_cli = (ROOT / "docs" / "operator-cli.md").read_text()
    assert not [verdict for verdict in verdicts if f"| `{verdict}` |" not in operations]
    assert not [verdict for verdict in verdicts if f"**{verdict.upper()}**" not in operator_cli]
