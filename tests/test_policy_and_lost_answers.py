"""containers under a retention policy or legal hold (docs/reference.md,
"Destination accounts" and "The queue function")."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from receiver.verification import verify_copy
from sim.world import World


async def stored_then_a_failed_re_export() -> tuple[World, Any]:
    """The current export stored; a re-export at its name failed (its source gone: 502), the current file kept."""
    world = World.make()
    current = world.export(expires_in=timedelta(days=7))
    assert (await world.post(current)).status_code == 200
    failing = world.export()
    world.sources.remove("ws-1/task-1/export-2.pdf")
    assert (await world.post(failing)).status_code == 502
    return world, current


async def test_under_a_legal_hold_a_lost_manifest_answer_ends_as_a_duplicate() -> None:
    """The first export under a legal hold is stored; the manifest's Put lands but its answer is lost:
    503 and a queue message. The verifier finds the file stored and current, and tries to write the
    manifest again: the create conflicts (it is there), the overwrite is refused by the hold, so the
    verifier raises on every try until the message is poisoned, for a delivery that is complete.
    docs/reference.md: a final outcome (stored, duplicate, ..., a retention policy) returns."""
    world = World.make()
    world.storage.policy = "legal hold"
    export = world.export()
    world.faults.lose_answer("put", "ws-1/task-1/invoice.pdf.json")
    first = await world.post(export)
    assert first.status_code == 503 and first.verification is not None, first.body
    assert world.files() == {"ws-1/task-1/invoice.pdf": export.data}
    assert world.manifest("ws-1/task-1/invoice.pdf") is not None
    outcome = await verify_copy(first.verification.encode(), runtime=world.runtime, now=world.now)
    assert outcome in ("stored", "duplicate"), outcome


async def test_under_a_legal_hold_a_duplicate_creates_the_manifest_its_first_request_could_not_write() -> None:
    """The first export under a legal hold is stored, its manifest's Put refused before it acted: 503 and a queue
    message. The queue function answers duplicate only once the manifest describes it: a hold refuses overwrites,
    not a create, so the missing manifest is written."""
    world = World.make()
    world.storage.policy = "legal hold"
    export = world.export()
    world.faults.fail_before("put", "ws-1/task-1/invoice.pdf.json")
    first = await world.post(export)
    assert first.status_code == 503 and first.verification is not None, first.body
    assert world.manifest("ws-1/task-1/invoice.pdf") is None
    outcome = await verify_copy(first.verification.encode(), runtime=world.runtime, now=world.now)
    assert outcome in ("stored", "duplicate"), outcome
    manifest = world.manifest("ws-1/task-1/invoice.pdf")
    assert manifest is not None and manifest["copyStatus"] == "success", manifest


async def test_under_a_legal_hold_a_duplicate_long_after_a_failed_re_export_at_its_name_is_answered_200() -> None:
    """A re-export at the current file's name failed (its source gone: 502), the current file kept; later, under
    a container legal hold, the current delivery is sent again. No driver of the failed one can still be sending
    (DRIVER_LIFETIME), and the hold refuses any overwrite anyway: 200 duplicate, on the first try."""
    world, current = await stored_then_a_failed_re_export()
    world.clock.advance(timedelta(hours=1))
    world.storage.policy = "legal hold"
    again = await world.post(current)
    assert (again.status_code, again.body["status"]) == (200, "duplicate"), again.body


async def test_under_a_legal_hold_a_duplicate_right_after_a_failed_re_export_says_why_it_waits() -> None:
    """The same, a minute after the failure: a driver of it may still be sending, and the hold refuses the fence
    that would stop its copy: 503 naming the hold and when to send again (never a 2xx it cannot keep)."""
    world, current = await stored_then_a_failed_re_export()
    world.clock.advance(timedelta(minutes=1))
    world.storage.policy = "legal hold"
    again = await world.post(current)
    assert again.status_code == 503 and "legal hold" in again.body["message"], again.body
    assert "ten minutes" in again.body["message"], again.body
    world.clock.advance(timedelta(minutes=10))
    later = await world.post(current)
    assert (later.status_code, later.body["status"]) == (200, "duplicate"), later.body


async def test_under_a_hold_on_the_file_itself_a_duplicate_waits_only_while_an_older_driver_may_live() -> None:
    """A hold on the current file (version-level immutability: the container reports no policy) refuses its fence.
    Right after a failed re-export at its name the duplicate is 503 naming the hold, with no queue message (nothing
    to finish); once no driver of that export can be sending (DRIVER_LIFETIME), it is 200 without a fence."""
    world, current = await stored_then_a_failed_re_export()
    world.faults.make_immutable("ws-1/task-1/invoice.pdf", legal_hold=True)
    world.clock.advance(timedelta(minutes=1))
    soon = await world.post(current)
    assert soon.status_code == 503 and "legal hold" in soon.body["message"], soon.body
    assert soon.verification is None
    world.clock.advance(timedelta(days=1))
    later = await world.post(current)
    assert (later.status_code, later.body["status"]) == (200, "duplicate"), later.body


async def test_a_tracked_delivery_whose_copy_a_hold_on_the_file_refuses_is_tried_again_and_stored_after_it() -> None:
    """A re-export staged (a large file) is tracked `copying`, its commit's answer lost (503 and a queue message).
    A legal hold is then put on the current file: the queue function's commit over it is refused. The record
    has not ended the delivery, so it is tried again, not failed; once the hold is lifted the next try stores it."""
    from pydantic import SecretStr

    from receiver.models import State
    from receiver.settings import Settings
    from receiver.verification import CopyStillRunning
    from sim.world import SOURCE_HOST

    settings = Settings(
        destination_connection_string=SecretStr("UseDevelopmentStorage=true"), allowed_source_hosts=(SOURCE_HOST,)
    )
    world = World(settings, sync_limit_bytes=8)
    name = "ws-1/task-1/invoice.pdf"
    first = await world.post(world.export(expires_in=timedelta(days=7)))
    if first.status_code == 202 and first.verification is not None:
        assert await verify_copy(first.verification.encode(), runtime=world.runtime, now=world.now) == "stored"
    second = world.export(expires_in=timedelta(days=7))
    world.faults.fail_before("commit_blocks", name, times=1)
    tracked = await world.post(second)
    assert tracked.verification is not None, tracked.body
    world.faults.make_immutable(name, legal_hold=True)
    world.clock.advance(timedelta(minutes=1))
    try:
        await verify_copy(tracked.verification.encode(), runtime=world.runtime, now=world.now)
        raise AssertionError("the try under the hold ended the delivery")
    except CopyStillRunning:
        pass
    record = world.record()
    assert record is not None and record.deliveries[-1].state is State.COPYING, record
    world.faults.release(name)
    world.clock.advance(timedelta(minutes=1))
    assert await verify_copy(tracked.verification.encode(), runtime=world.runtime, now=world.now) == "stored"
    assert world.files()[name] == second.data


async def test_a_stored_re_export_whose_stale_manifest_a_hold_keeps_is_held_in_the_queue_and_blocked_in_the_dry_run(
    caplog: Any,
) -> None:
    """A re-export stored over the current file, its manifest's rewrite failing (503: the queue function writes
    it); a legal hold then keeps the manifest describing the replaced export. The queue function tries again until
    the hold is lifted, saying so (outcome `held`; its last try `poisoned`, naming the hold, never "the copy is
    still not finished"), and replay-poison's dry run leaves it BLOCKED, as for any message a policy holds."""
    import logging

    import pytest

    from receiver.verification import MAX_DEQUEUE_COUNT, CopyStillRunning
    from tests.test_ops import Ops

    ops = Ops()
    world = ops.world
    assert (await world.post(world.export())).status_code == 200
    world.faults.fail_before("put", "ws-1/task-1/invoice.pdf.json")
    first = await world.post(world.export())
    assert first.status_code == 503 and first.verification is not None, first.body
    world.storage.policy = "legal hold"
    ops.poison.add(first.verification)
    dry = await ops("replay-poison", "--dry-run", "--json")
    [entry] = dry.json()["messages"]
    assert entry["will"] == "blocked" and "legal hold" in entry["why"], entry
    caplog.set_level(logging.WARNING, logger="receiver")
    for count, outcome in ((1, "held"), (MAX_DEQUEUE_COUNT, "poisoned")):
        caplog.clear()
        with pytest.raises(CopyStillRunning):
            await verify_copy(first.verification.encode(), runtime=world.runtime, now=world.now, dequeue_count=count)
        [said] = [r for r in caplog.records if r.name == "receiver"]
        assert getattr(said, "receiver.outcome") == outcome, said.getMessage()
        assert "legal hold" in said.getMessage() and "not finished" not in said.getMessage(), said.getMessage()
    world.storage.policy = None
    assert await verify_copy(first.verification.encode(), runtime=world.runtime, now=world.now) == "duplicate"
    manifest, record = world.manifest("ws-1/task-1/invoice.pdf"), world.record()
    assert record is not None and manifest is not None and manifest["delivery"] == record.current, manifest


async def test_a_copy_a_lasting_hold_keeps_past_its_link_is_reported_lost_each_run_then_failed_once_lifted(
    caplog: Any,
) -> None:
    """A re-export answered 202, then a legal hold that outlasts its link: failing it as expired is a record
    change the hold refuses, so each reconciliation run counts it lost (its run record the alert, its task's
    record `held`) instead of a WARNING nobody is paged for; once the hold is lifted the next run fails it."""
    import logging

    from receiver.models import State
    from tests.test_ops import Ops

    ops = Ops()
    world = ops.world
    assert (await world.post(world.export())).status_code == 200
    await ops.accept(world.export(expires_in=timedelta(hours=6)))
    world.storage.policy = "legal hold"
    caplog.set_level(logging.INFO, logger="receiver")
    # Its link valid (only its message can finish it: waiting), then expired, then long after.
    for hours, outcome in ((2, "waiting"), (7, "held"), (24 * 40, "held")):
        world.clock.advance(timedelta(hours=hours))
        caplog.clear()
        report = await ops.reconcile()
        assert report.lost == ["task-1"], (hours, report)
        [mine] = [r for r in caplog.records if getattr(r, "receiver.taskId", None) == "task-1"]
        assert getattr(mine, "receiver.outcome") == outcome, mine.getMessage()
        [run] = [r for r in caplog.records if getattr(r, "receiver.outcome", None) == "completed"]
        assert run.levelno == logging.ERROR and "legal hold refuses recording" in run.getMessage()
    world.storage.policy = None
    report = await ops.reconcile()
    record = world.record()
    assert report.outcomes == {"expired": 1}, report
    assert record is not None and record.deliveries[-1].state is State.FAILED


class _LeaseOnHeaders:
    """A lease another client holds on ``name``: setting its headers (the fence) is refused (412 LeaseIdMissing)."""

    def __init__(self, world: World, name: str) -> None:
        from receiver.storage import Leased

        real = world.storage.set_headers

        async def set_headers(blob: str, *args: Any, **kwargs: Any) -> Any:
            if blob == name:
                raise Leased(f"set blob properties: a lease another client holds on {name} refused it")
            return await real(blob, *args, **kwargs)

        world.storage.set_headers = set_headers  # type: ignore[method-assign,assignment]


@pytest.mark.parametrize("refusal", ["hold", "lease", "throttled"])
async def test_a_copy_the_reconciliation_fails_as_expired_alerts_though_the_fence_after_is_refused(
    refusal: str, caplog: Any
) -> None:
    """A 202'd re-export whose link expires before anything finished it: the reconciliation's change fails it (the
    swap wins), then the fence of the current file that follows is refused (a hold on that file, a lease, a 503).
    The failure is still the one ERROR, naming the delivery, and its message's later try ends quietly."""
    import logging

    from receiver.models import State
    from tests.test_ops import Ops

    ops = Ops()
    world = ops.world
    assert (await world.post(world.export())).status_code == 200
    record = world.record()
    assert record is not None and record.current_delivery is not None
    name = record.current_delivery.blob
    text = await ops.accept(world.export(expires_in=timedelta(minutes=30)))
    if refusal == "hold":
        world.faults.make_immutable(name)
    elif refusal == "lease":
        _LeaseOnHeaders(world, name)
    else:
        world.faults.fail_before("set_headers", name)
    world.clock.advance(timedelta(minutes=40))
    caplog.set_level(logging.INFO, logger="receiver")
    caplog.clear()
    await ops.reconcile()
    record = world.record()
    assert record is not None and record.deliveries[-1].state is State.FAILED
    [alert] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert getattr(alert, "receiver.outcome") == "expired" and "Export the document again" in alert.getMessage()
    assert "Tried again" not in alert.getMessage(), alert.getMessage()  # nothing is: the fence is not retried
    assert getattr(alert, "receiver.delivery") == record.deliveries[-1].delivery[:12], alert.getMessage()
    caplog.clear()
    assert await verify_copy(text.encode(), runtime=world.runtime, now=world.now, dequeue_count=2) == "failed"
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_lease_refusing_the_adoption_of_a_landed_copy_is_held_and_counted_lost(caplog: Any) -> None:
    """A 202'd copy's bytes landed, its record not told, its message gone; a lease on the file refuses the fence
    the reconciliation's adoption needs. Like a hold: `held`, and past every try of its message counted lost (the
    run's ERROR), not an `error` WARNING forever."""
    import logging

    from tests.test_ops import Ops

    ops = Ops()
    world = ops.world
    assert (await world.post(world.export())).status_code == 200
    record = world.record()
    assert record is not None and record.current_delivery is not None
    await ops.accept(world.export(expires_in=timedelta(days=2)), copied=True)
    _LeaseOnHeaders(world, record.current_delivery.blob)
    caplog.set_level(logging.INFO, logger="receiver")
    seen = []
    for minutes in (10, 100):
        world.clock.advance(timedelta(minutes=minutes))
        caplog.clear()
        await ops.reconcile()
        [task] = [r for r in caplog.records if getattr(r, "receiver.taskId", None) == "task-1"]
        [run] = [r for r in caplog.records if getattr(r, "receiver.outcome", None) == "completed"]
        seen.append((getattr(task, "receiver.outcome"), run.levelname))
    assert seen == [("held", "INFO"), ("held", "ERROR")], seen


async def test_a_resend_of_a_202d_delivery_under_a_hold_on_its_name_is_told_202_and_it_is_stored_after_the_lift(
    caplog: Any,
) -> None:
    """A re-export answered 202 (copying, its message queued); a legal hold is then placed on the file at its
    name. SmartDocumentor sends the notification again: it is told 202 again (still tracked: a hold is lifted some
    day), not failed for good with an ERROR asking for a new export; once the hold is lifted its message stores it."""
    import logging

    from receiver.models import State
    from tests.test_ops import Ops

    ops = Ops()
    world = ops.world
    assert (await world.post(world.export())).status_code == 200
    export = world.export()
    text = await ops.accept(export)
    plan = ops.plan(export)
    world.faults.make_immutable(plan.blob_name, legal_hold=True)
    caplog.set_level(logging.INFO, logger="receiver")
    caplog.clear()
    answer = await world.post(export)
    assert answer.status_code == 202, answer.body
    record = world.record()
    assert record is not None and record.find(plan.delivery).state is State.COPYING  # type: ignore[union-attr]
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    world.faults.release(plan.blob_name)
    assert await verify_copy(text.encode(), runtime=world.runtime, now=world.now) == "stored"
    assert world.files()[plan.blob_name] == export.data
