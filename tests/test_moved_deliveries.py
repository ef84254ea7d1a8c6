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
from sim.simulator import Actor, Config, ExportInfo, Simulation, settings_for, simulating

A_NAME = "ws-1/task-1/A.pdf"
B_NAME = "2026/" + A_NAME
C_NAME = "x/" + A_NAME
TODAY = "{yyyy}/{workspaceId}/{taskId}/{fileName}"
OTHER = "x/{workspaceId}/{taskId}/{fileName}"
STAGED = Config(staged=True, waits=False)
VERDICT = {
    "failed": "fail",
    "stored": "finish",
    "duplicate": "duplicate",
    "superseded": "superseded",
    "waiting": "waiting",
}


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


async def held_over_the_current_file(sim: Simulation) -> tuple[ExportInfo, ExportInfo, Actor]:
    """e0 stored at A, then e1's synchronous copy over it (If-Match) held at the gate: (e0, e1, e1's driver)."""
    first = sim.export("A")
    await sim.run_actor(sim.post(first))
    newer = sim.export("A")
    slow = sim.post(newer)
    await sim.run_actor(slow, until=lambda call: call.op == "copy_from_url" and "if_match" in call.detail)
    return first, newer, slow


async def move(sim: Simulation, export: ExportInfo, template: str) -> None:
    """A retry of ``export`` under a new BLOB_NAME_TEMPLATE: accepted at its new name, copying (202)."""
    retry = sim.post(export, config=Config(template=template, staged=True, waits=False))
    await sim.run_actor(retry)
    assert retry.answer == "202 copying", retry.answer


async def test_a_moved_deliverys_late_copy_at_its_first_name_is_never_deleted_from_under_the_current_file() -> None:
    """e0 stored at A; e2's copy over it held; e2's retry moves it to 2026/A. The held copy lands at A and its
    driver goes on at A (its first name, the current file's): it is not decided at 2026/A, which would delete
    its copy at A (there, over the current file) and then fail with its source gone, leaving the task no file."""
    sim = Simulation()
    _, newer, slow = await held_over_the_current_file(sim)
    await move(sim, newer, TODAY)
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

    before = sim.store.snapshot()
    await sim.run_actor(sim._start("operator", "replay-poison --dry-run", dry))
    assert sim.store.snapshot() == before, "the dry run wrote to the container"
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


ORIG = "{workspaceId}/{taskId}/{fileName}"


async def a_commit_held_over_an_orphan_then_moved(sim: Simulation) -> tuple[ExportInfo, ExportInfo, Any]:
    """e1 (large) accepted at A (202); e2's first try creates its file at A and crashes before its record;
    three minutes on, e1's queue run prepares a commit over that orphan (If-Match), held."""
    e1, e2 = sim.export("A"), sim.export("A")
    accepted = sim.post(e1, config=Config(template=ORIG, staged=True, waits=False))
    await sim.run_actor(accepted)
    assert accepted.answer == "202 copying", accepted.answer
    q1 = sim.run_message(0, config=Config(template=ORIG, staged=True, waits=False))
    orphan = sim.post(e2, config=Config(template=ORIG))
    await sim.run_actor(orphan, until=lambda call: call.op == "copy_from_url")
    await sim.grant(next(call for call in sim.pending() if call.actor is orphan and call.op == "copy_from_url"))
    await sim.grant(next(call for call in sim.pending() if call.actor is orphan), "crash")
    sim.clock.advance(timedelta(minutes=3))
    await sim.run_actor(q1, until=lambda call: call.op == "commit_blocks")
    return e1, e2, q1


async def test_adopted_bytes_are_fenced_so_a_commit_prepared_over_them_at_a_moved_deliverys_first_name_fails() -> None:
    """One template change: e1 moved to B and stored there (its first name A listed to retire; one look finds
    e2's bytes there and drops the listing). e2's retry adopts its bytes at A (200): adopted bytes are always
    fenced after the swap, so e1's commit held over that version fails."""
    sim = Simulation()
    e1, e2, q1 = await a_commit_held_over_an_orphan_then_moved(sim)
    moved = sim.post(e1, config=Config(template=TODAY, staged=True, waits=True))
    await sim.run_actor(moved)
    retry = sim.post(e2, config=Config(template=ORIG))
    await sim.run_actor(retry)
    assert retry.answer == "200 stored", retry.answer
    await sim.run_actor(q1, until=lambda call: call.op != "commit_blocks")
    assert sim.files()[A_NAME] == e2.data, "e1's held commit at its first name replaced e2's file answered 200"
    await sim.finish()
    ok(sim)


async def test_a_moved_delivery_arriving_at_the_current_files_name_keeps_its_first_name_fenced() -> None:
    """As above, with a current file e0 at C and e1's second template giving C: e1 is decided at B (a third
    name is never taken, so its first name A stays the one it moved from), and e2 adopted at A is fenced."""
    sim = Simulation()
    first = sim.post(sim.export("A"), config=Config(template=OTHER))
    await sim.run_actor(first)
    assert first.answer == "200 stored", first.answer
    e1, e2, q1 = await a_commit_held_over_an_orphan_then_moved(sim)
    moved = sim.post(e1, config=Config(template=TODAY, staged=True, waits=False))
    await sim.run_actor(moved)
    assert moved.answer == "202 copying", moved.answer
    await sim.run_actor(sim.post(e1, config=Config(template=OTHER)))
    retry = sim.post(e2, config=Config(template=ORIG))
    await sim.run_actor(retry)
    assert retry.answer == "200 stored", retry.answer
    await sim.run_actor(q1, until=lambda call: call.op != "commit_blocks")
    assert sim.files()[A_NAME] == e2.data, "e1's held commit at its first name replaced e2's file answered 200"
    await sim.finish()
    ok(sim)


@pytest.mark.parametrize("expired", [False, True])
async def test_the_dry_run_foresees_a_message_whose_run_removes_its_copy_before_deciding_where_it_moved(
    expired: bool,
) -> None:
    """A moved delivery's retry under a second template left a copy at C (its answer lost) and a message
    carrying C: the queue function removes that copy (kept-name), then decides at B; the dry run says so."""
    sim = Simulation(STAGED)
    export = sim.export("A", expires_in=timedelta(minutes=30))
    await sim.run_actor(sim.post(export, config=STAGED))
    await sim.run_actor(sim.post(export, config=Config(template=TODAY, staged=True, waits=False)))
    sim.queue.clear()
    other = Config(template=OTHER)
    sim.faults.rule("before", "read_bytes", record_name("ws-1", "task-1"), 1)
    sim.faults.rule("after", "copy_from_url", C_NAME, 1)
    await sim.run_actor(sim.post(export, config=other))
    assert C_NAME in sim.files()
    assert [json.loads(queued[0]).get("blob") for queued in sim.queue] == [C_NAME], sim.queue
    if expired:
        sim.clock.advance(timedelta(minutes=31))
    foreseen, answer = await foresee_then_run(sim, other)
    assert foreseen.action == VERDICT.get(answer or "", "finish"), (foreseen.action, foreseen.why, answer)
    ok(sim)


async def test_the_reconciliations_adoption_is_fenced_so_a_commit_prepared_over_those_bytes_fails() -> None:
    """As the adoption test above, but e2's retry can neither copy nor look (503, tracked copying at A): the
    reconciliation adopts e2's bytes, fencing them first, so e1's commit held over that version fails, and a
    later duplicate of e2 (200) still has its file."""
    sim = Simulation()
    e1, e2, q1 = await a_commit_held_over_an_orphan_then_moved(sim)
    await sim.run_actor(sim.post(e1, config=Config(template=TODAY, staged=True, waits=True)))
    sim.faults.rule("before", "copy_from_url", A_NAME, 1)
    sim.faults.rule("before", "read", A_NAME, 1)
    tracked = sim.post(e2, config=Config(template=ORIG))
    await sim.run_actor(tracked)
    assert (tracked.answer or "").startswith("503"), tracked.answer
    await sim.run_actor(sim.reconcile(config=Config(template=ORIG)))
    retry = sim.post(e2, config=Config(template=ORIG))
    await sim.run_actor(retry)
    assert retry.answer == "200 duplicate", retry.answer
    await sim.run_actor(q1, until=lambda call: call.op != "commit_blocks")
    assert sim.files()[A_NAME] == e2.data, "e2 answered 200 duplicate, then e1's older held commit replaced its file"
    sim.sources.remove(e2.source_name)
    await sim.finish()
    ok(sim)


async def test_an_operators_give_up_after_two_template_changes_fences_the_current_file_at_the_first_name() -> None:
    """A delivery moved once (a second template change does not move it again) while its copy over the current
    file at its first name is held: given up by an operator, the current file there is fenced, and the held
    copy fails."""
    sim = Simulation()
    first, moved, slow = await held_over_the_current_file(sim)
    for template in (TODAY, OTHER):
        await move(sim, moved, template)
    sim.queue.clear()  # the retries' messages are lost (or poisoned): only the give-up decides
    await sim.run_actor(sim.operator())
    await sim.land_then_stop(slow)
    assert sim.files()[A_NAME] == first.data, "the held copy replaced the file answered 200 stored"
    await sim.finish()
    ok(sim)


async def test_a_late_copy_at_the_first_name_is_retired_when_a_second_template_change_leaves_it_where_it_moved() -> (
    None
):
    """A delivery moved once; the copy held at its first name lands and its driver stops; its retry under a
    second template is stored at the name it moved to (not moved again), and nothing of it is left elsewhere."""
    sim = Simulation()
    _, newer, slow = await held_over_the_current_file(sim)
    await move(sim, newer, TODAY)
    sim.queue.clear()
    await sim.land_then_stop(slow)
    retry = sim.post(newer, config=Config(template=OTHER, staged=True, waits=True))
    await sim.run_actor(retry)
    assert retry.answer == "200 stored", retry.answer
    await sim.finish()
    ok(sim)
    assert not sim.leftovers, sim.leftovers
    assert sorted(sim.files()) == [B_NAME], sorted(sim.files())


# The dry run runs the queue function's loop to its answer (ops/imagined.py): the steps before it (a stray copy
# listed and removed, a name found taken) are foreseen as the queue function then takes them.


async def lost_copy_under_todays_name(sim: Simulation, template: str, name: str) -> ExportInfo:
    """A retry of a stored delivery under ``template``: its record read refused, its copy to ``name`` landing with
    its answer lost: 503, and a queue message carrying ``name``."""
    export = sim.export("A", expires_in=timedelta(minutes=30))
    if not sim.files():
        await sim.run_actor(sim.post(export))
    sim.faults.rule("before", "read_bytes", record_name("ws-1", "task-1"), 1)
    sim.faults.rule("after", "copy_from_url", name, 1)
    refused = sim.post(export, config=Config(template=template))
    await sim.run_actor(refused)
    assert refused.answer == "503 failed", refused.answer
    assert name in sim.files() and [json.loads(queued[0]).get("blob") for queued in sim.queue] == [name], sim.queue
    return export


async def test_the_dry_run_foresees_a_current_deliverys_stray_copy_removed_then_a_duplicate() -> None:
    sim = Simulation()
    await lost_copy_under_todays_name(sim, TODAY, B_NAME)
    foreseen, answer = await foresee_then_run(sim, Config(template=TODAY))
    assert (foreseen.action, answer) == ("duplicate", "duplicate"), (foreseen.why, answer)
    ok(sim)


async def listed_then_stopped(sim: Simulation, export: ExportInfo, template: str, name: str) -> None:
    """A retry that lists the stray copy at ``name`` to retire, then stops before its delete."""
    retry = sim.post(export, config=Config(template=template))
    await sim.run_actor(retry, until=lambda call: call.op == "delete")
    await sim.grant(next(call for call in sim.pending() if call.actor is retry), "crash")
    record = sim.record()
    assert record is not None and any(item.blob == name for item in record.retire), record


async def test_the_dry_run_foresees_a_current_deliverys_stray_copy_already_listed_to_retire() -> None:
    sim = Simulation()
    export = await lost_copy_under_todays_name(sim, TODAY, B_NAME)
    await listed_then_stopped(sim, export, TODAY, B_NAME)
    foreseen, answer = await foresee_then_run(sim, Config(template=TODAY))
    assert (foreseen.action, answer) == ("duplicate", "duplicate"), (foreseen.why, answer)
    ok(sim)


@pytest.mark.parametrize("expired", [False, True])
async def test_the_dry_run_foresees_a_moved_deliverys_stray_copy_already_listed_to_retire(expired: bool) -> None:
    sim = Simulation(STAGED)
    export = sim.export("A", expires_in=timedelta(minutes=30))
    await sim.run_actor(sim.post(export, config=STAGED))
    await move(sim, export, TODAY)
    sim.queue.clear()
    sim.faults.rule("before", "read_bytes", record_name("ws-1", "task-1"), 1)
    sim.faults.rule("after", "copy_from_url", C_NAME, 1)
    await sim.run_actor(sim.post(export, config=Config(template=OTHER)))
    await listed_then_stopped(sim, export, OTHER, C_NAME)
    if expired:
        sim.clock.advance(timedelta(minutes=31))
    foreseen, answer = await foresee_then_run(sim, Config(template=OTHER))
    assert foreseen.action == VERDICT.get(answer or "", "finish"), (foreseen.action, foreseen.why, answer)
    assert (answer == "failed") is expired, answer
    ok(sim)


async def test_the_dry_run_foresees_a_name_another_task_took_meanwhile_as_a_failure() -> None:
    """(ws-1, task-1)'s large export is accepted at ws-1/task-1/F.pdf (202); a template swapping the ids then
    stores task (task-1, ws-1) at that very name: the queue function fails the first (409 name-taken)."""
    sim = Simulation(STAGED)
    first = sim.post(sim.export("F", workspace="ws-1", task="task-1"), config=STAGED)
    await sim.run_actor(first)
    assert first.answer == "202 copying", first.answer
    other = sim.post(
        sim.export("F", workspace="task-1", task="ws-1"), config=Config(template="{taskId}/{workspaceId}/{fileName}")
    )
    await sim.run_actor(other)
    assert other.answer == "200 stored", other.answer
    foreseen, answer = await foresee_then_run(sim, STAGED)
    assert (foreseen.action, answer) == ("fail", "failed"), (foreseen.why, answer)
    assert "another task" in foreseen.why, foreseen.why
    ok(sim)
