"""The reconciliation's alert for what it failed (docs/operations.md, the final-failures view): one ERROR per task
and run, naming each delivery it failed and why, however the run went on after its winning swap."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from receiver.models import State, record_name
from receiver.verification import verify_copy
from sim.world import World

from .test_ops import Ops


def errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


async def expired_copy(ops: Ops) -> str:
    """A stored export, then a re-export answered 202 whose 30-minute link has expired 10 minutes ago: its message."""
    world = ops.world
    assert (await world.post(world.export())).status_code == 200
    text = await ops.accept(world.export(expires_in=timedelta(minutes=30)))
    world.clock.advance(timedelta(minutes=40))
    return text


async def test_an_expiry_whose_record_swap_lost_its_answer_is_still_the_one_alert(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The swap that fails a 202'd copy as expired lands, its answer lost: the run reads the record to learn it
    did, and raises the ERROR; the later runs and the message's later try add none."""
    ops = Ops()
    world = ops.world
    text = await expired_copy(ops)
    world.faults.lose_answer("put", record_name("ws-1", "task-1"))
    caplog.set_level(logging.INFO, logger="receiver")
    caplog.clear()
    await ops.reconcile()
    record = world.record()
    assert record is not None and record.deliveries[-1].state is State.FAILED
    [alert] = errors(caplog)
    assert getattr(alert, "receiver.delivery") == record.deliveries[-1].delivery[:12], alert.getMessage()
    caplog.clear()
    world.clock.advance(timedelta(minutes=10))
    await ops.reconcile()
    assert await verify_copy(text.encode(), runtime=world.runtime, now=world.now, dequeue_count=2) == "failed"
    assert errors(caplog) == []


async def test_a_queue_try_whose_own_failing_swap_lost_its_answer_alerts_in_that_try_and_its_next_stays_quiet(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The queue function's try fails a copy whose link expired; its record swap lands, its answer lost (the try
    raises, the host tries again). It reads the record back and raises the ERROR; its next try finds the delivery
    failed by an earlier change and only ends the message."""
    ops = Ops()
    world = ops.world
    text = await expired_copy(ops)
    world.faults.lose_answer("put", record_name("ws-1", "task-1"))
    caplog.set_level(logging.INFO, logger="receiver")
    with pytest.raises(Exception):  # noqa: B017 (the host tries it again, whatever it was)
        await verify_copy(text.encode(), runtime=world.runtime, now=world.now, dequeue_count=1)
    record = world.record()
    assert record is not None and record.deliveries[-1].state is State.FAILED
    [alert] = errors(caplog)
    assert "failed for good" in alert.getMessage(), alert.getMessage()
    caplog.clear()
    assert await verify_copy(text.encode(), runtime=world.runtime, now=world.now, dequeue_count=2) == "failed"
    assert errors(caplog) == []


async def test_one_run_failing_two_deliveries_names_each_with_its_own_reason(caplog: pytest.LogCaptureFixture) -> None:
    """C is current (answered 200), E a newer copy at its name whose link expires, and an older export's late
    copy replaced C's file (its link expired too: it cannot be put back). One run fails E (expired) and follows
    the file, failing C: its one ERROR names both, each with its reason."""
    ops = Ops()
    world = ops.world
    old = world.export(expires_in=timedelta(minutes=5))
    assert (await world.post(old)).status_code == 200
    assert (await world.post(world.export(expires_in=timedelta(minutes=5)))).status_code == 200
    await ops.accept(world.export(expires_in=timedelta(minutes=12)))
    record = world.record()
    assert record is not None and record.current_delivery is not None
    current, newest = record.deliveries[1].delivery, record.deliveries[2].delivery
    name = record.current_delivery.blob
    plan = ops.plan(old)
    there = world.storage.stored(name)
    assert there is not None
    await world.storage.copy_from_url(name, plan.source.url, if_match=there.etag, metadata=plan.metadata, tags=None)
    world.clock.advance(timedelta(minutes=15))
    caplog.set_level(logging.INFO, logger="receiver")
    caplog.clear()
    await ops.reconcile()
    record = world.record()
    assert record is not None and {d.delivery: d.state for d in record.deliveries}[current] is State.FAILED
    [alert] = errors(caplog)
    text = alert.getMessage()
    assert f"delivery {newest[:12]}" in text and "link expired" in text, text
    assert f"delivery {current[:12]}" in text and "late copy of an earlier export" in text, text


async def test_an_overlapping_run_whose_read_fails_does_not_repeat_the_other_runs_alert(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Run A fails an expired copy (its ERROR). Run B, begun a minute earlier, reaches the task and its read of the
    record gets a 503: B sent no swap, so it claims no failure and raises no second ERROR."""
    from receiver.reconciliation import reconcile_run

    ops = Ops()
    world = ops.world
    await expired_copy(ops)
    start_a = world.now
    world.clock.advance(timedelta(seconds=2))  # A's swap comes 2 s into its run
    caplog.set_level(logging.INFO, logger="receiver")
    caplog.clear()
    await reconcile_run(runtime=world.runtime, now=start_a, environ={})
    assert len(errors(caplog)) == 1
    world.faults.fail_before("read_bytes", record_name("ws-1", "task-1"))
    await reconcile_run(runtime=world.runtime, now=start_a - timedelta(minutes=1), environ={})
    assert len(errors(caplog)) == 1, [r.getMessage() for r in errors(caplog)]


async def test_ops_fail_racing_the_reconciliation_raises_no_second_alert_and_says_who_failed_it(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ops fail` reads the record, then the reconciliation fails the expired copy (its ERROR), then the operator's
    sweep finds nothing copying: no second ERROR under the operator's reason; the output names who failed it."""
    from typing import Any

    from ops.records import drive as real_drive

    ops = Ops()
    await expired_copy(ops)

    async def drive_after_a_run(*args: Any, **kwargs: Any) -> Any:
        await ops.reconcile()
        return await real_drive(*args, **kwargs)

    monkeypatch.setattr("ops.commands.drive", drive_after_a_run)
    caplog.set_level(logging.INFO, logger="receiver")
    caplog.clear()
    ran = await ops("fail", "--task", "task-1", "--reason", "customer re-exported by hand")
    assert len(errors(caplog)) == 1 and getattr(errors(caplog)[0], "receiver.operation") == "reconciliation"
    assert "was failed meanwhile by the reconciliation" in ran.out, ran.out


async def test_check_repair_that_follows_a_replaced_file_is_the_alert_naming_the_delivery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The current file (answered 200) was replaced by an older export's late copy that cannot be put back; an
    operator's check --repair follows the file, failing the current delivery: its one ERROR names that delivery,
    its file and why (a stored delivery failing counts as much as a copying one)."""
    ops = Ops()
    world = ops.world
    old = world.export(expires_in=timedelta(minutes=5))
    assert (await world.post(old)).status_code == 200
    assert (await world.post(world.export(expires_in=timedelta(minutes=5)))).status_code == 200
    record = world.record()
    assert record is not None and record.current_delivery is not None
    current = record.current_delivery
    plan = ops.plan(old)
    there = world.storage.stored(current.blob)
    assert there is not None
    await world.storage.copy_from_url(
        current.blob, plan.source.url, if_match=there.etag, metadata=plan.metadata, tags=None
    )
    world.clock.advance(timedelta(hours=2))
    caplog.set_level(logging.INFO, logger="receiver")
    caplog.clear()
    await ops("check", "--task", "task-1", "--repair")
    record = world.record()
    assert record is not None and {d.delivery: d.state for d in record.deliveries}[current.delivery] is State.FAILED
    [alert] = errors(caplog)
    assert getattr(alert, "receiver.delivery") == current.delivery[:12], alert.getMessage()
    assert "late copy of an earlier export" in alert.getMessage(), alert.getMessage()


async def test_a_resend_that_fails_a_current_delivery_answered_200_is_the_one_alert(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """C is current (answered 200); an older export's late copy replaced its file, and C's source is gone, so its
    bytes cannot be put back. SmartDocumentor sends C again: that request fails C (502) and the record follows the
    file. SmartDocumentor archived C's 200: the request's record is the ERROR naming C; the later runs add none."""
    ops = Ops()
    world = ops.world
    old = world.export()
    assert (await world.post(old)).status_code == 200
    current = world.export()
    assert (await world.post(current)).status_code == 200
    record = world.record()
    assert record is not None and record.current_delivery is not None
    name, delivery = record.current_delivery.blob, record.current_delivery.delivery
    plan = ops.plan(old)
    there = world.storage.stored(name)
    assert there is not None
    await world.storage.copy_from_url(name, plan.source.url, if_match=there.etag, metadata=plan.metadata, tags=None)
    world.clock.advance(timedelta(hours=2))
    world.sources.remove(ops.plan(current).source.url.split("/anonymized-exports/")[1].split("?")[0])
    caplog.set_level(logging.INFO, logger="receiver")
    caplog.clear()
    answer = await world.post(current)
    record = world.record()
    assert record is not None and {d.delivery: d.state for d in record.deliveries}[delivery] is State.FAILED
    assert answer.status_code >= 400, answer.body
    for _ in range(2):
        world.clock.advance(timedelta(minutes=10))
        await ops.reconcile()
    [alert] = errors(caplog)
    assert f"delivery {delivery[:12]}" in alert.getMessage() and getattr(alert, "receiver.operation") == "delivery"


@pytest.mark.parametrize("lost", ["answer lost", "412 to the retry"])
async def test_an_expiry_whose_swap_answer_was_lost_is_alerted_once_when_the_run_reaches_it_late(
    lost: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run reaches the task seconds after it began (the wall clock past the run's time, which stamps its
    steps); its expiry swap lands, and its answer is lost, or comes back as a 412 to the SDK's retry of the Put.
    The run still reads back its own step and raises the one ERROR; the next run and the message's try add none."""
    from receiver.reconciliation import reconcile_run

    ops = Ops()
    world = ops.world
    text = await expired_copy(ops)
    start = world.now
    world.clock.advance(timedelta(seconds=2))
    _unsure_record_write(world, monkeypatch, lost)
    caplog.set_level(logging.INFO, logger="receiver")
    caplog.clear()
    await reconcile_run(runtime=world.runtime, now=start, environ={})
    record = world.record()
    assert record is not None and record.deliveries[-1].state is State.FAILED
    world.clock.advance(timedelta(minutes=10))
    await reconcile_run(runtime=world.runtime, now=world.now, environ={})
    await verify_copy(text.encode(), runtime=world.runtime, now=world.now, dequeue_count=2)
    assert len(errors(caplog)) == 1, [r.getMessage() for r in errors(caplog)]


async def test_a_webhook_failing_its_own_new_delivery_is_no_alert_and_one_failing_a_202d_copy_is_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A re-export whose source is gone, sent for the first time: 502 to the sender, a WARNING (nothing was answered
    2xx). A 202'd copy whose source then goes, sent again: the request that fails it is the one ERROR; its queue
    message's later try adds none."""
    ops = Ops()
    world = ops.world
    assert (await world.post(world.export())).status_code == 200
    fresh = world.export()
    world.sources.remove(ops.plan(fresh).source.url.split("/anonymized-exports/")[1].split("?")[0])
    caplog.set_level(logging.INFO, logger="receiver")
    caplog.clear()
    assert (await world.post(fresh)).status_code == 502
    assert errors(caplog) == [], [r.getMessage() for r in errors(caplog)]
    promised = world.export()
    text = await ops.accept(promised)
    world.sources.remove(ops.plan(promised).source.url.split("/anonymized-exports/")[1].split("?")[0])
    assert (await world.post(promised)).status_code == 502
    world.clock.advance(timedelta(minutes=1))
    assert await verify_copy(text.encode(), runtime=world.runtime, now=world.now, dequeue_count=2) == "failed"
    assert len(errors(caplog)) == 1, [r.getMessage() for r in errors(caplog)]


@pytest.mark.parametrize("command", [("fail", "--reason", "re-exported by hand"), ("check", "--repair")])
async def test_an_operator_command_racing_another_operators_fail_alerts_once(
    command: tuple[str, ...], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command reads the record; another operator's `fail` (with the same reason), begun a second later, fails
    the expired copy first (its ERROR). The first command changed nothing: it raises no second ERROR."""
    from typing import Any

    from ops.records import drive as real_drive

    ops = Ops()
    world = ops.world
    await expired_copy(ops)
    started: list[bool] = []

    async def drive(*args: Any, **kwargs: Any) -> Any:
        if not started:
            started.append(True)
            world.clock.advance(timedelta(seconds=1))
            await ops("fail", "--task", "task-1", "--reason", "re-exported by hand")
        return await real_drive(*args, **kwargs)

    monkeypatch.setattr("ops.commands.drive", drive)
    caplog.set_level(logging.INFO, logger="receiver")
    caplog.clear()
    await ops(command[0], "--task", "task-1", *command[1:])
    record = world.record()
    assert record is not None and record.deliveries[-1].state is State.FAILED
    assert len(errors(caplog)) == 1, [r.getMessage() for r in errors(caplog)]


def _unsure_record_write(world: World, monkeypatch: pytest.MonkeyPatch, lost: str) -> None:
    """The task record's next Put lands, and its answer is lost, or the SDK's retry of it is answered 412."""
    from typing import Any

    from receiver.storage import Conflict

    name = record_name("ws-1", "task-1")
    if lost == "answer lost":
        world.faults.lose_answer("put", name)
        return
    storage = world.storage
    real, once = storage.put, list[bool]()

    async def put(blob: str, *args: Any, **kwargs: Any) -> Any:
        written = await real(blob, *args, **kwargs)
        if blob == name and not once:
            once.append(True)
            raise Conflict(f"{blob} changed", code="ConditionNotMet", status=412)
        return written

    monkeypatch.setattr(storage, "put", put)


@pytest.mark.parametrize("lost", ["answer lost", "412 to the retry"])
@pytest.mark.parametrize("driver", ["webhook resend", "ops fail", "ops check --repair", "reconciliation follow"])
async def test_a_failing_swap_whose_outcome_was_not_known_is_alerted_once_by_the_driver_that_made_it(
    driver: str, lost: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each driver that can fail a delivery answered 2xx, its record swap landing with its answer lost (or a 412 to
    the SDK's retry): it reads back its own step and raises the one ERROR; nobody after it raises another."""
    ops = Ops()
    world = ops.world
    old = world.export(expires_in=timedelta(minutes=5))
    assert (await world.post(old)).status_code == 200
    text = None
    if driver == "reconciliation follow":  # the current file (200) replaced by an older late copy, not put back
        assert (await world.post(world.export(expires_in=timedelta(minutes=5)))).status_code == 200
        record = world.record()
        assert record is not None and record.current_delivery is not None
        plan, there = ops.plan(old), world.storage.stored(record.current_delivery.blob)
        assert there is not None
        await world.storage.copy_from_url(
            there.name, plan.source.url, if_match=there.etag, metadata=plan.metadata, tags=None
        )
        world.clock.advance(timedelta(minutes=6))
    else:
        promised = world.export(expires_in=timedelta(minutes=30))
        text = await ops.accept(promised)
        if driver == "webhook resend":  # its source gone: the resend fails it
            world.sources.remove(ops.plan(promised).source.url.split("/anonymized-exports/")[1].split("?")[0])
        else:
            world.clock.advance(timedelta(minutes=40))
    caplog.set_level(logging.INFO, logger="receiver")
    caplog.clear()
    _unsure_record_write(world, monkeypatch, lost)
    if driver == "webhook resend":
        await world.post(promised)
    elif driver == "ops fail":
        await ops("fail", "--task", "task-1", "--reason", "re-exported by hand")
    elif driver == "ops check --repair":
        await ops("check", "--task", "task-1", "--repair")
    else:
        await ops.reconcile()
    record = world.record()
    assert record is not None and any(d.state is State.FAILED for d in record.deliveries), record
    world.clock.advance(timedelta(minutes=10))
    if text is not None:
        await verify_copy(text.encode(), runtime=world.runtime, now=world.now, dequeue_count=2)
    await ops.reconcile()
    assert len(errors(caplog)) == 1, [r.getMessage() for r in errors(caplog)]
