"""One ERROR for each delivery failed for good after a 2xx (docs/reference.md, "The reconciliation", step 3):
raised by the driver whose record change failed it, also when that change got no answer (read back, or named as
"may have failed" when the record cannot be read back either); every other driver that later finds it failed stays
quiet."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

import pytest

from receiver.models import State, record_name
from receiver.verification import MAX_DEQUEUE_COUNT, verify_copy
from sim.world import World

from .test_ops import Ops
from .test_reconciliation_alerts import errors, expired_copy

RECORD = record_name("ws-1", "task-1")


def lose_answer_then_fail_the_read_back(world: World) -> None:
    """The next record write lands with its answer lost, and the record read right after it gets a 503."""
    faults = world.faults
    after = faults.after

    def failing_after(op: str, name: str) -> None:
        try:
            after(op, name)
        except Exception:
            if op == "put" and name == RECORD:
                faults.fail_before("read_bytes", RECORD)
            raise

    faults.after = failing_after  # type: ignore[method-assign]
    faults.lose_answer("put", RECORD)


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in errors(caplog)]


def names_the_archive_and_the_story(alert: str) -> bool:
    """Every alert tells the paged operator where the document is (archived on the earlier 2xx, not in To Review)
    and the command that tells the task's story."""
    return (
        "SmartDocumentor archived the document" in alert
        and "python -m ops find --task task-1 --workspace ws-1" in alert
    )


async def nobody_alerts_again(ops: Ops, message: str, caplog: pytest.LogCaptureFixture) -> None:
    """After the one ERROR: the delivery's queue message ends it as failed, and a later reconciliation run, without
    another ERROR."""
    world = ops.world
    caplog.clear()
    assert await verify_copy(message.encode(), runtime=world.runtime, now=world.now, dequeue_count=2) == "failed"
    world.clock.advance(timedelta(minutes=10))
    await ops.reconcile()
    assert messages(caplog) == []


async def a_202d_large_copy(ops: Ops) -> tuple[Any, str]:
    """A stored export, then a large re-export answered 202: (that export, its queue message)."""
    world = ops.world
    settings = world.settings
    world.runtime.use(world.storage, settings.model_copy(update={"copy_wait_seconds": 20}))
    assert (await world.post(world.export())).status_code == 200
    world.runtime.use(world.storage, settings)
    export = world.export()
    first = await world.post(export)
    assert first.status_code == 202 and first.verification is not None
    return export, first.verification


async def test_a_reconciliation_whose_failing_swap_got_no_answer_nor_read_back_alerts_that_it_may_have_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ops = Ops()
    world = ops.world
    text = await expired_copy(ops)
    lose_answer_then_fail_the_read_back(world)
    caplog.set_level(logging.INFO, logger="receiver")
    caplog.clear()
    await ops.reconcile()
    record = world.record()
    assert record is not None and record.deliveries[-1].state is State.FAILED
    [alert] = messages(caplog)
    assert "may have failed for good" in alert and record.deliveries[-1].delivery[:12] in alert, alert
    assert names_the_archive_and_the_story(alert), alert
    caplog.clear()
    world.clock.advance(timedelta(minutes=10))
    await ops.reconcile()
    assert await verify_copy(text.encode(), runtime=world.runtime, now=world.now, dequeue_count=2) == "failed"
    assert messages(caplog) == []


async def test_a_webhook_failing_a_202d_copy_with_no_answer_nor_read_back_alerts_that_it_may_have_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 202'd copy whose source is then removed; SmartDocumentor sends it again and that request fails it."""
    ops = Ops()
    world = ops.world
    assert (await world.post(world.export())).status_code == 200
    export = world.export()
    text = await ops.accept(export)
    world.sources.remove(f"ws-1/task-1/export-{world.exports}.pdf")
    lose_answer_then_fail_the_read_back(world)
    caplog.set_level(logging.INFO, logger="receiver")
    caplog.clear()
    await world.post(export)
    record = world.record()
    assert record is not None and record.deliveries[-1].state is State.FAILED
    [alert] = messages(caplog)
    assert "may have failed for good" in alert and "python -m ops find --task task-1" in alert, alert
    await nobody_alerts_again(ops, text, caplog)


async def test_a_webhook_whose_failing_swap_lands_after_its_time_ran_out_alerts_that_it_may_have_failed(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request's swap failing a 202'd copy (its source removed) lands, but its answer never comes back before
    the request's time runs out (a budget of one second here)."""
    monkeypatch.setattr("receiver.webhook.STORAGE_BUDGET_SECONDS", 1.0)  # ample for the in-memory steps before it
    ops = Ops(copy_wait_seconds=0)
    world = ops.world
    assert (await world.post(world.export())).status_code == 200
    export = world.export()
    text = await ops.accept(export)
    world.sources.remove(f"ws-1/task-1/export-{world.exports}.pdf")
    storage, never = world.storage, asyncio.Event()
    put = storage.put

    async def landed_without_answer(name: str, *args: Any, **kwargs: Any) -> Any:
        written = await put(name, *args, **kwargs)
        if name == RECORD:
            await never.wait()
        return written

    monkeypatch.setattr(storage, "put", landed_without_answer)
    caplog.set_level(logging.INFO, logger="receiver")
    caplog.clear()
    answer = await world.post(export)
    monkeypatch.setattr(storage, "put", put)
    assert answer.status_code == 503, answer.body
    record = world.record()
    assert record is not None and record.deliveries[-1].state is State.FAILED
    [alert] = messages(caplog)
    assert "may have failed for good" in alert and record.deliveries[-1].delivery[:12] in alert, alert
    await nobody_alerts_again(ops, text, caplog)


async def test_a_request_failing_the_delivery_its_twin_answered_202_alerts(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """R1 reads the record (the delivery not in it yet) and stalls; its twin R2 accepts the delivery, stages past
    its wait and answers 202; the source is then removed. R1 resumes, loses its accept (412), reads again, and
    fails the delivery (502 to its own sender): R2's 202 is broken, so R1 raises the ERROR."""
    ops = Ops(sync_copy_max_mib=0, copy_wait_seconds=20)
    world = ops.world
    settings = world.settings
    assert (await world.post(world.export())).status_code in (200, 202)
    export = world.export()
    storage = world.storage
    read_bytes = storage.read_bytes
    twin: list[Any] = []

    async def twin_between(name: str, *, max_bytes: int) -> Any:
        found = await read_bytes(name, max_bytes=max_bytes)
        if name == RECORD and not twin:
            monkeypatch.setattr(storage, "read_bytes", read_bytes)
            world.runtime.use(storage, settings.model_copy(update={"copy_wait_seconds": 0}))
            world.clock.advance(timedelta(seconds=1))
            twin.append(await world.post(export))
            world.clock.advance(timedelta(seconds=1))
            world.runtime.use(storage, settings)
            world.sources.remove(f"ws-1/task-1/export-{world.exports}.pdf")
        return found

    monkeypatch.setattr(storage, "read_bytes", twin_between)
    caplog.set_level(logging.INFO, logger="receiver")
    caplog.clear()
    first = await world.post(export)
    assert twin[0].status_code == 202 and first.status_code == 502, (twin[0].body, first.body)
    record = world.record()
    assert record is not None and record.deliveries[-1].state is State.FAILED
    [alert] = messages(caplog)
    assert record.deliveries[-1].delivery[:12] in alert and "failed for good" in alert, alert
    caplog.clear()
    assert await verify_copy(twin[0].verification.encode(), runtime=world.runtime, now=world.now) == "failed"
    world.clock.advance(timedelta(minutes=10))
    await ops.reconcile()
    assert messages(caplog) == []


async def a_twin_while_the_first_stages(
    ops: Ops, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, twins_settings: dict[str, Any]
) -> tuple[Any, list[Any]]:
    """R1 accepts a large export and stages it; at its first block its twin R2 arrives under ``twins_settings`` and
    answers; the source is then removed and R1 goes on. (R1's answer, [R2's].)"""
    world = ops.world
    settings = world.settings
    assert (await world.post(world.export())).status_code in (200, 202)
    export = world.export()
    storage = world.storage
    stage_block = storage.stage_block
    twin: list[Any] = []

    async def twin_while_staging(*args: Any, **kwargs: Any) -> Any:
        if not twin:
            twin.append(None)
            world.runtime.use(storage, settings.model_copy(update=twins_settings))
            world.clock.advance(timedelta(seconds=1))
            twin[0] = await world.post(export)
            world.clock.advance(timedelta(seconds=1))
            world.runtime.use(storage, settings)
            world.sources.remove(f"ws-1/task-1/export-{world.exports}.pdf")
        return await stage_block(*args, **kwargs)

    monkeypatch.setattr(storage, "stage_block", twin_while_staging)
    caplog.set_level(logging.INFO, logger="receiver")
    caplog.clear()
    return await world.post(export), twin


async def test_a_request_failing_the_delivery_it_accepted_after_a_twin_was_answered_202_alerts(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """R1 accepts a large delivery and stages it; meanwhile its twin R2 (SmartDocumentor's retry) finds it copying,
    cannot finish within its wait and answers 202, noting that in the record (a step `promised`). The source is then
    removed: R1 fails the delivery it began itself and tells its own sender 502, but R2's 202 is broken, so R1 raises
    the one ERROR; R2's queue message and the reconciliation add none."""
    ops = Ops(sync_copy_max_mib=0, copy_wait_seconds=20)
    first, twin = await a_twin_while_the_first_stages(ops, monkeypatch, caplog, {"copy_wait_seconds": 0})
    assert twin[0].status_code == 202 and first.status_code == 502, (twin[0].body, first.body)
    record = ops.world.record()
    assert record is not None and record.deliveries[-1].state is State.FAILED
    assert [step.outcome for step in record.deliveries[-1].history] == ["copying", "promised", "failed"]
    [alert] = messages(caplog)
    assert record.deliveries[-1].delivery[:12] in alert and "failed for good" in alert, alert
    assert names_the_archive_and_the_story(alert), alert
    found = await ops("find", "--task", "task-1")
    assert "webhook promised" in found.out and "webhook failed 502" in found.out, found.out
    assert "next: export the document again from SmartDocumentor's archive" in found.out, found.out
    await nobody_alerts_again(ops, twin[0].verification, caplog)
    found = await ops("find", "--task", "task-1")
    assert "verifier failed (" in found.out and "verifier failed 502" not in found.out, found.out


async def test_a_request_failing_the_delivery_it_accepted_after_a_twin_accepted_it_again_elsewhere_alerts(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, but the template changed before the twin came: the twin accepts the delivery again at today's name
    (a step of its own in the attempt R1 began), answers 202 and notes it; R1 then fails it: R1 raises the ERROR."""
    ops = Ops(sync_copy_max_mib=0, copy_wait_seconds=20)
    today = {"copy_wait_seconds": 0, "blob_name_template": "{yyyy}/{workspaceId}/{taskId}/{fileName}"}
    first, twin = await a_twin_while_the_first_stages(ops, monkeypatch, caplog, today)
    assert twin[0].status_code == 202 and first.status_code == 502, (twin[0].body, first.body)
    record = ops.world.record()
    assert record is not None and record.deliveries[-1].state is State.FAILED
    outcomes = [step.outcome for step in record.deliveries[-1].history]
    assert "promised" in outcomes and outcomes[-1] == "failed", outcomes
    [alert] = messages(caplog)
    assert record.deliveries[-1].delivery[:12] in alert and "failed for good" in alert, alert
    await nobody_alerts_again(ops, twin[0].verification, caplog)


@pytest.mark.parametrize("fault", ["copy refused", "copy answer lost, look refused"])
async def test_no_error_when_a_twin_that_accepted_the_delivery_elsewhere_answered_503_and_the_first_then_fails_it(
    fault: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The earlier export is stored at today's name. R1 (the earlier template, a large file) accepts the new export
    at its old name and stages it; its twin (today's template) accepts it at today's name, its copy fails there and
    it answers 503; R1 then fails the delivery (502). No sender was told 2xx: no ERROR."""
    from sim.memstore import FaultPlan

    ops = Ops(sync_copy_max_mib=0, copy_wait_seconds=20)
    world = ops.world
    settings, storage = world.settings, world.storage
    today = settings.model_copy(
        update={
            "copy_wait_seconds": 0,
            "sync_copy_max_mib": 256,
            "blob_name_template": "{yyyy}/{workspaceId}/{taskId}/{fileName}",
        }
    )
    world.runtime.use(storage, today)
    assert (await world.post(world.export())).status_code == 200
    world.runtime.use(storage, settings)
    export = world.export()
    stage_block = storage.stage_block
    twin: list[Any] = []

    async def twin_under_todays_template(*args: Any, **kwargs: Any) -> Any:
        if not twin:
            twin.append(None)
            world.runtime.use(storage, today)
            world.clock.advance(timedelta(seconds=1))
            faults = FaultPlan()
            if fault == "copy refused":
                faults.fail_before("copy_from_url", times=1000)
            else:
                faults.lose_answer("copy_from_url", times=1000).fail_before("read", times=1000)
            storage.faults = faults
            twin[0] = await world.post(export)
            storage.faults = FaultPlan()
            world.clock.advance(timedelta(seconds=1))
            world.runtime.use(storage, settings)
            world.sources.remove(f"ws-1/task-1/export-{world.exports}.pdf")
        return await stage_block(*args, **kwargs)

    monkeypatch.setattr(storage, "stage_block", twin_under_todays_template)
    caplog.set_level(logging.INFO, logger="receiver")
    caplog.clear()
    first = await world.post(export)
    assert (twin[0].status_code, first.status_code) == (503, 502), (twin[0].body, first.body)
    record = world.record()
    assert record is not None and record.deliveries[-1].state is State.FAILED
    assert "promised" not in [step.outcome for step in record.deliveries[-1].history]
    assert messages(caplog) == []


async def test_a_resend_of_a_copying_delivery_under_a_container_hold_is_told_202_again_without_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 202'd copy, then a legal hold on the container: a resend is told 202 again (nothing noted: the hold refuses
    every change of the record, so nobody can fail the delivery meanwhile), and no ERROR."""
    ops = Ops()
    world = ops.world
    assert (await world.post(world.export())).status_code == 200
    export = world.export()
    await ops.accept(export)
    before = world.record()
    world.storage.policy = "legal hold"
    caplog.set_level(logging.INFO, logger="receiver")
    caplog.clear()
    answer = await world.post(export)
    assert answer.status_code == 202, answer.body
    assert world.record() == before and messages(caplog) == []


async def test_a_resend_under_a_hold_placed_since_the_process_asked_is_told_202_again_without_an_error(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, but this process asked for the container's policy before the hold was placed (it remembers "none"
    until a write is refused): the hold refuses the resend's `promised` note, and the resend is decided as under the
    hold: 202 again, the record unchanged, no ERROR."""
    ops = Ops(sync_copy_max_mib=0, copy_wait_seconds=0)
    world = ops.world
    export, _ = await a_202d_large_copy(ops)
    storage = world.storage

    async def none_remembered() -> None:
        return None

    monkeypatch.setattr(storage, "container_policy", none_remembered)
    storage.policy = "legal hold"
    before = world.record()
    caplog.set_level(logging.INFO, logger="receiver")
    caplog.clear()
    answer = await world.post(export)
    assert answer.status_code == 202, answer.body
    assert world.record() == before and messages(caplog) == []


async def test_two_queue_messages_of_one_202d_delivery_raise_one_error_for_its_one_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A large export answered 202, and 202 again to SmartDocumentor's resend a minute later: two messages of one
    delivery. Its link expires before either finishes it."""
    ops = Ops(sync_copy_max_mib=0, copy_wait_seconds=0)
    world = ops.world
    assert (await world.post(world.export())).status_code in (200, 202)
    export = world.export(expires_in=timedelta(minutes=30))
    first = await world.post(export)
    world.clock.advance(timedelta(minutes=1))
    second = await world.post(export)
    assert first.status_code == second.status_code == 202
    assert first.verification is not None and second.verification is not None
    world.clock.advance(timedelta(minutes=40))
    caplog.set_level(logging.INFO, logger="receiver")
    caplog.clear()
    for message in (first.verification, second.verification):
        assert await verify_copy(message.encode(), runtime=world.runtime, now=world.now, dequeue_count=5) == "failed"
    [alert] = messages(caplog)
    assert "failed for good" in alert and names_the_archive_and_the_story(alert), alert


async def test_a_queue_try_that_loses_to_the_reconciliations_expiry_stays_quiet(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A queue try reads the record (the copy still copying, its link expired); the reconciliation then fails it as
    expired (its ERROR); the try's own swap loses, it reads again and ends the message."""
    ops = Ops()
    world = ops.world
    text = await expired_copy(ops)
    storage = world.storage
    read_bytes = storage.read_bytes

    async def reconciliation_between(name: str, *, max_bytes: int) -> Any:
        found = await read_bytes(name, max_bytes=max_bytes)
        if name == RECORD:
            monkeypatch.setattr(storage, "read_bytes", read_bytes)
            await ops.reconcile()
        return found

    monkeypatch.setattr(storage, "read_bytes", reconciliation_between)
    caplog.set_level(logging.INFO, logger="receiver")
    caplog.clear()
    assert await verify_copy(text.encode(), runtime=world.runtime, now=world.now, dequeue_count=2) == "failed"
    record = world.record()
    assert record is not None
    assert [(step.by, step.outcome) for step in record.deliveries[-1].history][-1] == ("reconciliation", "failed")
    [alert] = errors(caplog)
    assert alert.getMessage().startswith("reconciliation"), alert.getMessage()


async def test_a_large_notifications_last_try_whose_record_read_fails_is_poisoned_with_its_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A notification too large for a queue message (its message refers to its record), answered 202; on its last
    try the record read gets a 503: the try logs its `poisoned` ERROR before the host moves the message."""
    ops = Ops(sync_copy_max_mib=0, copy_wait_seconds=0, max_body_bytes=200_000)
    world = ops.world
    big = world.export("task-1", "big.pdf", metadata={f"k{i}": "x" * 4000 for i in range(13)})
    answer = await world.post(big)
    assert answer.status_code == 202 and answer.verification is not None and '"url"' in answer.verification
    world.faults.fail_before("read_bytes", RECORD)
    caplog.set_level(logging.INFO, logger="receiver")
    caplog.clear()
    with pytest.raises(Exception):  # noqa: B017 (the host poisons the message after this try)
        await verify_copy(
            answer.verification.encode(), runtime=world.runtime, now=world.now, dequeue_count=MAX_DEQUEUE_COUNT
        )
    [alert] = errors(caplog)
    assert "poisoned" in alert.getMessage() and "python -m ops replay-poison" in alert.getMessage(), alert.getMessage()


async def test_a_large_notifications_message_of_a_delivery_superseded_meanwhile_ends_without_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A notification too large for a queue message (its message refers to its record), answered 202; a newer export
    is then stored, superseding it (its payload is no longer kept): nothing failed, so its message only ends."""
    ops = Ops(sync_copy_max_mib=0, copy_wait_seconds=0, max_body_bytes=200_000)
    world = ops.world
    big = world.export("task-1", "big.pdf", metadata={f"k{i}": "x" * 4000 for i in range(13)})
    answer = await world.post(big)
    assert answer.status_code == 202 and answer.verification is not None and '"url"' in answer.verification
    newer = await world.post(world.export())
    assert newer.status_code == 202 and newer.verification is not None
    assert await verify_copy(newer.verification.encode(), runtime=world.runtime, now=world.now) == "stored"
    caplog.set_level(logging.INFO, logger="receiver")
    caplog.clear()
    result = await verify_copy(answer.verification.encode(), runtime=world.runtime, now=world.now, dequeue_count=2)
    assert result == "superseded"
    assert errors(caplog) == []
    [ended] = [r for r in caplog.records if r.getMessage().startswith("verification")]
    assert "already ended it (superseded)" in ended.getMessage(), ended.getMessage()


def resend_between_first_read(world: World, monkeypatch: pytest.MonkeyPatch, export: Any, answers: list[Any]) -> None:
    """The next record read is followed, a second later, by SmartDocumentor's resend of ``export`` (answered in
    ``answers``): it runs whole before the reader goes on."""
    storage = world.storage
    read_bytes = storage.read_bytes

    async def resend_between(name: str, *, max_bytes: int) -> Any:
        found = await read_bytes(name, max_bytes=max_bytes)
        if name == RECORD and not answers:
            monkeypatch.setattr(storage, "read_bytes", read_bytes)
            world.clock.advance(timedelta(seconds=1))
            answers.append(await world.post(export))
            world.clock.advance(timedelta(seconds=1))
        return found

    monkeypatch.setattr(storage, "read_bytes", resend_between)


async def test_two_resends_of_a_202d_copy_whose_source_is_gone_raise_one_error(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 202'd large export; its source removed; two resends: R2 fails it (the ERROR: R0's 202 is broken) while R1
    has read the record; R1's failing swap loses, it reads again, accepts it again itself and fails it anew (its
    sender's 502, no second ERROR)."""
    ops = Ops(sync_copy_max_mib=0, copy_wait_seconds=0)
    world = ops.world
    assert (await world.post(world.export())).status_code in (200, 202)
    export = world.export()
    assert (await world.post(export)).status_code == 202
    world.sources.remove(f"ws-1/task-1/export-{world.exports}.pdf")
    world.clock.advance(timedelta(minutes=1))
    second: list[Any] = []
    resend_between_first_read(world, monkeypatch, export, second)
    caplog.set_level(logging.INFO, logger="receiver")
    caplog.clear()
    first = await world.post(export)
    assert first.status_code == second[0].status_code == 502
    record = world.record()
    assert record is not None and record.deliveries[-1].state is State.FAILED
    [alert] = messages(caplog)
    assert "failed for good" in alert and names_the_archive_and_the_story(alert), alert


async def test_a_queue_try_that_loses_to_a_webhooks_failure_and_fails_it_anew_stays_quiet(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 202'd large export, its source then removed. Its queue try reads the record; a resend fails the delivery
    (the ERROR); the try's own swap loses, it reads again, accepts it again and fails it anew: quiet."""
    ops = Ops(sync_copy_max_mib=0, copy_wait_seconds=0)
    world = ops.world
    export, sent = await a_202d_large_copy(ops)
    world.sources.remove(f"ws-1/task-1/export-{world.exports}.pdf")
    world.clock.advance(timedelta(minutes=1))
    resend: list[Any] = []
    resend_between_first_read(world, monkeypatch, export, resend)
    caplog.set_level(logging.INFO, logger="receiver")
    caplog.clear()
    result = await verify_copy(sent.encode(), runtime=world.runtime, now=world.now, dequeue_count=2)
    assert result == "failed" and resend[0].status_code == 502
    [alert] = errors(caplog)
    assert alert.getMessage().startswith("delivery copy-failed"), alert.getMessage()


def fail_the_read_after_the_next_record_write(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next record write lands and is answered; the record read right after it gets a 503."""
    storage = world.storage
    put = storage.put

    async def then_fail_the_read(name: str, *args: Any, **kwargs: Any) -> Any:
        written = await put(name, *args, **kwargs)
        if name == RECORD:
            monkeypatch.setattr(storage, "put", put)
            world.faults.fail_before("read_bytes", RECORD)
        return written

    monkeypatch.setattr(storage, "put", then_fail_the_read)


@pytest.mark.parametrize("command", ["fail", "check --repair"])
async def test_an_operator_command_whose_change_won_but_whose_read_after_it_fails_still_alerts(
    command: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ops fail --force` gives up a 202'd copy (or `check --repair` expires one): its swap wins, then the record
    read after it gets a 503. The command's error says what was recorded (not only "run it again"), its ERROR is
    raised, and nobody raises another."""
    ops = Ops()
    world = ops.world
    text = await expired_copy(ops)
    fail_the_read_after_the_next_record_write(world, monkeypatch)
    caplog.set_level(logging.INFO)
    caplog.clear()
    args = ("fail", "--reason", "given up", "--force") if command == "fail" else ("check", "--repair")
    ran = await ops(*args, "--task", "task-1")
    record = world.record()
    assert record is not None and record.deliveries[-1].state is State.FAILED
    assert "was recorded before that read" in ran.err and record.deliveries[-1].delivery[:12] in ran.err, ran.err
    assert "then run the command again" not in ran.err, ran.err
    [alert] = messages(caplog)
    assert record.deliveries[-1].delivery[:12] in alert, alert
    await nobody_alerts_again(ops, text, caplog)
