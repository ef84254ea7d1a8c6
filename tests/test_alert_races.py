"""One ERROR for each delivery failed for good after a 2xx (docs/reference.md, "The reconciliation", step 3), when
several changes of one run, or of racing drivers, fail it: each failure is alerted by the driver whose change made it
(a change whose answer was lost too), once, and an attempt a driver began itself ends without an ERROR of its own."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest

from receiver.models import State, TaskRecord
from receiver.storage import Conflict, Unavailable
from receiver.verification import verify_copy
from sim.world import World

from .test_one_alert_per_failure import RECORD, a_202d_large_copy, messages, resend_between_first_read
from .test_ops import Ops


async def two_expired_copies(ops: Ops) -> list[str]:
    """A stored export, then two re-exports answered 202 whose links expired ten minutes ago: their messages."""
    world = ops.world
    assert (await world.post(world.export())).status_code == 200
    first = await ops.accept(world.export(expires_in=timedelta(minutes=30)))
    world.clock.advance(timedelta(minutes=1))
    second = await ops.accept(world.export(expires_in=timedelta(minutes=30)))
    world.clock.advance(timedelta(minutes=40))
    return [first, second]


def lose_the_second_record_write(world: World, monkeypatch: pytest.MonkeyPatch, *, then_fail_reads: bool) -> None:
    """The second record write from now lands with its answer lost (and, ``then_fail_reads``, the next read fails)."""
    storage, put, count = world.storage, world.storage.put, [0]

    async def counting(name: str, *args: Any, **kwargs: Any) -> Any:
        written = await put(name, *args, **kwargs)
        if name == RECORD:
            count[0] += 1
            if count[0] == 2:
                if then_fail_reads:
                    world.faults.fail_before("read_bytes", RECORD)
                raise Unavailable("Injected: the answer was lost")
        return written

    monkeypatch.setattr(storage, "put", counting)


async def once_each(ops: Ops, messages_of: list[str], caplog: pytest.LogCaptureFixture) -> None:
    """Every failed delivery is named by exactly one ERROR, also after a later run and each message's try."""
    world = ops.world
    record = world.record()
    failed = [item for item in record.deliveries if item.state is State.FAILED] if record else []
    assert len(failed) == 2, record
    world.clock.advance(timedelta(minutes=10))
    await ops.reconcile()
    for text in messages_of:
        assert await verify_copy(text.encode(), runtime=world.runtime, now=world.now, dequeue_count=3) == "failed"
    alerts = messages(caplog)
    for item in failed:
        assert sum(item.delivery[:12] in alert for alert in alerts) == 1, (item.delivery[:12], alerts)


@pytest.mark.parametrize("then_fail_reads", [False, True])
async def test_a_reconciliation_whose_second_expiry_lost_its_answer_alerts_for_both(
    then_fail_reads: bool, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops = Ops()
    sent = await two_expired_copies(ops)
    lose_the_second_record_write(ops.world, monkeypatch, then_fail_reads=then_fail_reads)
    caplog.set_level(logging.INFO)
    caplog.clear()
    await ops.reconcile()
    monkeypatch.undo()
    await once_each(ops, sent, caplog)


@pytest.mark.parametrize("command", ["fail", "check --repair"])
@pytest.mark.parametrize("then_fail_reads", [False, True])
async def test_an_operator_command_whose_second_failure_lost_its_answer_alerts_for_both(
    command: str, then_fail_reads: bool, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops = Ops()
    sent = await two_expired_copies(ops)
    lose_the_second_record_write(ops.world, monkeypatch, then_fail_reads=then_fail_reads)
    caplog.set_level(logging.INFO)
    caplog.clear()
    args = ("fail", "--reason", "given up", "--force") if command == "fail" else ("check", "--repair")
    await ops(*args, "--task", "task-1")
    monkeypatch.undo()
    await once_each(ops, sent, caplog)


async def test_a_request_whose_own_acceptance_got_a_412_then_fails_it_raises_no_error(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large export whose source is gone: the request's accepting swap lands and is answered 412 (as the SDK's
    retry of a Put that landed is); it reads again and fails the delivery it accepted itself: its sender's 502."""
    ops = Ops(sync_copy_max_mib=0, copy_wait_seconds=20)
    world = ops.world
    assert (await world.post(world.export())).status_code in (200, 202)
    export = world.export()
    world.sources.remove(f"ws-1/task-1/export-{world.exports}.pdf")
    storage, put = world.storage, world.storage.put

    async def landed_then_412(name: str, *args: Any, **kwargs: Any) -> Any:
        written = await put(name, *args, **kwargs)
        if name == RECORD:
            monkeypatch.setattr(storage, "put", put)
            world.clock.advance(timedelta(seconds=1))
            raise landed_412()
        return written

    monkeypatch.setattr(storage, "put", landed_then_412)
    caplog.set_level(logging.INFO)
    caplog.clear()
    answer = await world.post(export)
    assert answer.status_code == 502, answer.body
    assert messages(caplog) == []


def landed_412() -> Conflict:
    return Conflict("Injected 412 to the retry of a put that landed", code="ConditionNotMet", status=412)


def resend_after_a_landed_failure(
    world: World, monkeypatch: pytest.MonkeyPatch, export: Any, by: str, error: Exception
) -> list[Any]:
    """The record write that fails the delivery by ``by`` lands; a second later SmartDocumentor's resend of
    ``export`` runs whole (its answer in the list returned); then the write is answered with ``error``."""
    storage, put = world.storage, world.storage.put
    resend: list[Any] = []

    async def land_then_resend(name: str, data: bytes, *args: Any, **kwargs: Any) -> Any:
        written = await put(name, data, *args, **kwargs)
        last = TaskRecord.from_bytes(data).deliveries[-1].history[-1] if name == RECORD else None
        if last is not None and (last.by, last.outcome) == (by, "failed") and not resend:
            monkeypatch.setattr(storage, "put", put)
            world.clock.advance(timedelta(seconds=1))
            resend.append(await world.post(export))
            world.clock.advance(timedelta(seconds=1))
            raise error
        return written

    monkeypatch.setattr(storage, "put", land_then_resend)
    return resend


@pytest.mark.parametrize("then_fail_reads", [False, True])
async def test_a_queue_try_that_fails_anew_a_delivery_a_resend_failed_stays_quiet_when_its_answer_is_lost(
    then_fail_reads: bool, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 202'd large copy, its source then removed; its queue try reads the record; a resend fails it (the ERROR);
    the try's swap loses, it reads again, accepts it again and fails it anew, that swap's answer lost."""
    ops = Ops(sync_copy_max_mib=0, copy_wait_seconds=0)
    world = ops.world
    export, sent = await a_202d_large_copy(ops)
    world.sources.remove(f"ws-1/task-1/export-{world.exports}.pdf")
    world.clock.advance(timedelta(minutes=1))
    storage, put = world.storage, world.storage.put

    async def lose_the_failure_anew(name: str, data: bytes, *args: Any, **kwargs: Any) -> Any:
        written = await put(name, data, *args, **kwargs)
        steps = TaskRecord.from_bytes(data).deliveries[-1].history if name == RECORD else []
        anew = any(step.by == "webhook" and step.outcome == "failed" for step in steps)
        if anew and (steps[-1].by, steps[-1].outcome) == ("verifier", "failed"):
            if then_fail_reads:
                world.faults.fail_before("read_bytes", RECORD)
            raise Unavailable("Injected: the answer was lost")
        return written

    monkeypatch.setattr(storage, "put", lose_the_failure_anew)
    resend: list[Any] = []
    resend_between_first_read(world, monkeypatch, export, resend)
    caplog.set_level(logging.INFO)
    caplog.clear()
    with pytest.raises(Unavailable):
        await verify_copy(sent.encode(), runtime=world.runtime, now=world.now, dequeue_count=2)
    assert resend[0].status_code == 502
    [alert] = messages(caplog)
    assert alert.startswith("delivery copy-failed"), alert


async def test_a_queue_try_whose_failure_landed_before_a_resend_failed_it_anew_alerts_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 202'd large copy, its source removed. Its queue try's failing swap lands; before its answer, a resend accepts
    the delivery again and fails it (its own sender's 502); the try's swap is then answered 412: the try's failure
    broke the 202, so the try alerts, once."""
    ops = Ops(sync_copy_max_mib=0, copy_wait_seconds=0)
    world = ops.world
    export, sent = await a_202d_large_copy(ops)
    world.sources.remove(f"ws-1/task-1/export-{world.exports}.pdf")
    world.clock.advance(timedelta(minutes=1))
    resend = resend_after_a_landed_failure(world, monkeypatch, export, "verifier", landed_412())
    caplog.set_level(logging.INFO)
    caplog.clear()
    assert await verify_copy(sent.encode(), runtime=world.runtime, now=world.now, dequeue_count=2) == "failed"
    assert resend[0].status_code == 502
    world.clock.advance(timedelta(minutes=10))
    await ops.reconcile()
    [alert] = messages(caplog)
    assert alert.startswith("verification"), alert


async def test_a_queue_try_failing_a_delivery_a_resend_accepted_again_after_an_operator_gave_it_up_alerts(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A queue try reads the record (a 202'd copy); an operator gives it up (the ERROR); a resend accepts it again and
    answers 202; its source is removed; the try then fails it: that breaks the resend's 202 (a second ERROR)."""
    ops = Ops(sync_copy_max_mib=0, copy_wait_seconds=0)
    world = ops.world
    export, sent = await a_202d_large_copy(ops)
    world.clock.advance(timedelta(minutes=1))
    storage, read_bytes = world.storage, world.storage.read_bytes
    between: list[Any] = []

    async def give_up_and_resend(name: str, *, max_bytes: int) -> Any:
        found = await read_bytes(name, max_bytes=max_bytes)
        if name == RECORD and not between:
            monkeypatch.setattr(storage, "read_bytes", read_bytes)
            world.clock.advance(timedelta(seconds=1))
            between.append(await ops("fail", "--reason", "given up", "--force", "--task", "task-1"))
            world.clock.advance(timedelta(seconds=1))
            between.append(await world.post(export))
            world.sources.remove(f"ws-1/task-1/export-{world.exports}.pdf")
            world.clock.advance(timedelta(seconds=1))
        return found

    monkeypatch.setattr(storage, "read_bytes", give_up_and_resend)
    caplog.set_level(logging.INFO)
    caplog.clear()
    assert await verify_copy(sent.encode(), runtime=world.runtime, now=world.now, dequeue_count=2) == "failed"
    assert between[1].status_code == 202
    operator, verifier = messages(caplog)
    assert operator.startswith("operator fail") and verifier.startswith("verification"), (operator, verifier)


@pytest.mark.parametrize("lost", ["answer lost", "412 to the retry"])
async def test_an_operators_give_up_that_landed_before_a_resend_failed_it_anew_is_its_alert(
    lost: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 202'd large copy; `ops fail --force` gives it up (its swap lands, its answer lost); before the command reads
    the record again, a resend accepts it again and fails it (source gone: its own sender's 502). The operator's
    give-up broke the first 202: the command names it and raises the one ERROR."""
    ops = Ops(sync_copy_max_mib=0, copy_wait_seconds=0)
    world = ops.world
    export, sent = await a_202d_large_copy(ops)
    record = world.record()
    assert record is not None
    delivery = record.deliveries[-1].delivery
    world.sources.remove(f"ws-1/task-1/export-{world.exports}.pdf")
    error = Unavailable("Injected: the answer was lost") if lost == "answer lost" else landed_412()
    resend = resend_after_a_landed_failure(world, monkeypatch, export, "operator", error)
    caplog.set_level(logging.INFO)
    caplog.clear()
    ran = await ops("fail", "--reason", "given up", "--force", "--task", "task-1")
    assert resend[0].status_code == 502
    assert f"Failed delivery {delivery[:12]}" in ran.out, ran.out
    world.clock.advance(timedelta(minutes=10))
    await ops.reconcile()
    assert await verify_copy(sent.encode(), runtime=world.runtime, now=world.now, dequeue_count=3) == "failed"
    [alert] = messages(caplog)
    assert alert.startswith("operator fail") and delivery[:12] in alert, alert


async def test_a_queue_try_failing_the_delivery_it_accepted_again_after_a_resend_was_answered_202_alerts(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator gives up a 202'd copy (its ERROR); its queue try accepts it again and stages; meanwhile a resend
    finds it copying and is answered 202 (noted: a step `promised`); the source is removed and the try fails the
    delivery it accepted again: that breaks the resend's 202, so the try raises a second ERROR."""
    ops = Ops(sync_copy_max_mib=0, copy_wait_seconds=0)
    world = ops.world
    export, sent = await a_202d_large_copy(ops)
    world.clock.advance(timedelta(minutes=1))
    caplog.set_level(logging.INFO)
    caplog.clear()
    await ops("fail", "--reason", "given up", "--force", "--task", "task-1")
    storage, stage_block = world.storage, world.storage.stage_block
    resend: list[Any] = []

    async def resend_while_staging(*args: Any, **kwargs: Any) -> Any:
        if not resend:
            resend.append(None)
            world.clock.advance(timedelta(seconds=1))
            resend[0] = await world.post(export)
            world.sources.remove(f"ws-1/task-1/export-{world.exports}.pdf")
            world.clock.advance(timedelta(seconds=1))
        return await stage_block(*args, **kwargs)

    monkeypatch.setattr(storage, "stage_block", resend_while_staging)
    assert await verify_copy(sent.encode(), runtime=world.runtime, now=world.now, dequeue_count=2) == "failed"
    assert resend[0].status_code == 202, resend[0].body
    record = world.record()
    assert record is not None
    assert [step.outcome for step in record.deliveries[-1].history][-4:] == ["failed", "copying", "promised", "failed"]
    operator, verifier = messages(caplog)
    assert operator.startswith("operator fail") and verifier.startswith("verification"), (operator, verifier)
