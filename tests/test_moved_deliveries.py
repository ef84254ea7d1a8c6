"""A delivery a BLOB_NAME_TEMPLATE change moved (the record keeps the one name it moved from) arriving at yet
another name: decided at the name it moved to (`kept-name`), never at its first name over the current file, and
`replay-poison --dry-run` foresees what the queue function then does (docs/reference.md, Delivery semantics)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from ops.queues import parse
from ops.records import observe_arrival
from receiver.models import record_name
from sim.simulator import Config, ExportInfo, Simulation, settings_for, simulating

A_NAME = "ws-1/task-1/A.pdf"
B_NAME = "2026/" + A_NAME
C_NAME = "x/" + A_NAME
TODAY = "{yyyy}/{workspaceId}/{taskId}/{fileName}"
OTHER = "x/{workspaceId}/{taskId}/{fileName}"
STAGED = Config(staged=True, waits=False)
VERDICT = {"failed": "fail", "stored": "finish", "duplicate": "duplicate", "superseded": "superseded"}


@pytest.fixture(autouse=True)
def _simulating() -> Iterator[None]:
    with simulating():
        yield


def ok(sim: Simulation) -> None:
    assert sim.violation is None, str(sim.violation)


async def moved_once(sim: Simulation) -> ExportInfo:
    """A stored first export at A; a newer one accepted at A (202), then moved to 2026/A by its retry."""
    await sim.run_actor(sim.post(sim.export("A")))
    newer = sim.export("A")
    await sim.run_actor(sim.post(newer, config=STAGED))
    moved = sim.post(newer, config=Config(template=TODAY, staged=True, waits=False))
    await sim.run_actor(moved)
    assert moved.answer == "202 copying", moved.answer
    return newer


async def test_a_moved_deliverys_late_copy_at_its_first_name_is_never_deleted_from_under_the_current_file() -> None:
    """e0 stored at A; e2's copy over it held; e2's retry moves it to 2026/A. The held copy lands at A and its
    driver goes on at A (its first name, the current file's): it is not decided at 2026/A, which would delete
    its copy at A (there, over the current file) and then fail with its source gone, leaving the task no file."""
    sim = Simulation()
    await sim.run_actor(sim.post(sim.export("A")))
    newer = sim.export("A")
    slow = sim.post(newer)
    await sim.run_actor(slow, until=lambda call: call.op == "copy_from_url" and "if_match" in call.detail)
    middle = sim.post(newer, config=Config(template=TODAY, staged=True, waits=False))
    await sim.run_actor(middle)
    assert middle.answer == "202 copying", middle.answer
    await sim.grant(next(call for call in sim.pending() if call.actor is slow))  # lands at A, over e0's file
    sim.sources.remove(newer.source_name)
    await sim.run_actor(slow)
    await sim.finish()
    ok(sim)
    assert sim.files(), "the task has no file left"


@pytest.mark.parametrize("fault", ["after", "before", "crash"])
async def test_a_second_template_retry_whose_copy_answer_is_lost_is_stored_where_it_moved(fault: str) -> None:
    sim = Simulation()
    newer = await moved_once(sim)
    sim.queue.clear()
    retry = sim.post(newer, config=Config(template=OTHER))
    if fault == "crash":
        await sim.run_actor(retry, until=lambda call: call.op == "copy_from_url" and call.name == C_NAME)
        await sim.land_then_stop(retry)
        retry = sim.post(newer, config=Config(template=OTHER))
    else:
        sim.faults.rule(fault, "copy_from_url", C_NAME, 1)
    await sim.run_actor(retry)
    await sim.finish()
    ok(sim)
    assert not sim.leftovers, sim.leftovers
    assert sorted(sim.files()) == [B_NAME], sorted(sim.files())


async def test_a_newer_export_at_todays_name_is_kept_while_a_moved_older_one_removes_its_own_copy_there() -> None:
    sim = Simulation()
    older = await moved_once(sim)
    sim.queue.clear()
    newest = sim.post(sim.export("A"), config=Config(template=OTHER))
    again = sim.post(older, config=Config(template=OTHER))
    await sim.run_all()
    await sim.finish()
    ok(sim)
    assert sorted(sim.files()) == [C_NAME], sorted(sim.files())
    assert newest.answer is not None and again.answer is not None


async def foresee_then_run(sim: Simulation, config: Config) -> tuple[Any, str | None]:
    """`replay-poison --dry-run` on the first queued message, then the queue function on it."""
    text = sim.queue[0][0]
    foreseen: list[Any] = []

    async def dry(actor: Any) -> None:
        parsed = parse(text)
        assert parsed is not None
        foreseen.append(await observe_arrival(sim.gate, parsed, settings_for(config), now=sim.clock()))

    await sim.run_actor(sim._start("operator", "replay-poison --dry-run", dry))
    queued = sim.run_message(0, config=config)
    await sim.run_actor(queued)
    return foreseen[0], queued.answer


@pytest.mark.parametrize("expired", [False, True])
async def test_the_dry_run_foresees_a_message_carrying_the_first_name_as_the_queue_function_decides_it(
    expired: bool,
) -> None:
    sim = Simulation(STAGED)
    export = sim.export("A", expires_in=timedelta(minutes=30))
    await sim.run_actor(sim.post(export, config=STAGED))
    await sim.run_actor(sim.post(export, config=Config(template=TODAY, staged=True, waits=False)))
    assert [json.loads(queued[0]).get("blob") for queued in sim.queue] == [A_NAME, B_NAME], sim.queue
    if expired:
        sim.clock.advance(timedelta(minutes=31))
    foreseen, answer = await foresee_then_run(sim, Config(template=TODAY, staged=True, waits=False))
    assert foreseen.action == VERDICT.get(answer or "", "finish"), (foreseen.action, foreseen.why, answer)
    ok(sim)


@pytest.mark.parametrize("expired", [False, True])
async def test_the_dry_run_foresees_a_message_carrying_a_second_templates_name_as_the_queue_function_decides_it(
    expired: bool,
) -> None:
    sim = Simulation(STAGED)
    export = sim.export("A", expires_in=timedelta(minutes=30))
    await sim.run_actor(sim.post(export, config=STAGED))
    await sim.run_actor(sim.post(export, config=Config(template=TODAY, staged=True, waits=False)))
    sim.queue.clear()
    other = Config(template=OTHER)  # a sync copy, sent beside the record read; both refused: a 503 and a message
    sim.faults.rule("before", "read_bytes", record_name("ws-1", "task-1"), 1)
    sim.faults.rule("before", "copy_from_url", C_NAME, 1)
    refused = sim.post(export, config=other)
    await sim.run_actor(refused)
    assert refused.answer == "503 failed", refused.answer
    assert [json.loads(queued[0]).get("blob") for queued in sim.queue] == [C_NAME], sim.queue
    if expired:
        sim.clock.advance(timedelta(minutes=31))
    foreseen, answer = await foresee_then_run(sim, other)
    assert foreseen.action == VERDICT.get(answer or "", "finish"), (foreseen.action, foreseen.why, answer)
    ok(sim)
