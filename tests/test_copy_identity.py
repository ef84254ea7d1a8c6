"""Fixed schedules around a copy's identity (`copyid`) and the names a delivery was accepted at
(docs/reference.md, "The task record" and "Metadata"): what is listed to retire is exactly what goes."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Literal

import pytest

import receiver.engine as engine
from receiver.models import State
from receiver.storage import Headers
from sim.simulator import Config, Simulation, simulating
from sim.world import Export, World

RECORD = ".smartdocumentor/tasks/ws-1/task-1.json"
NAME = "ws-1/task-1/A.pdf"
STAGED_202 = Config(staged=True, waits=False)
T1 = "{workspaceId}/{taskId}/{fileName}"
T2 = "{yyyy}/{workspaceId}/{taskId}/{fileName}"


@pytest.fixture(autouse=True)
def _simulating() -> Iterator[None]:
    with simulating():
        yield


async def test_a_large_deliverys_own_commit_listed_to_retire_is_staged_again_not_copied() -> None:
    """Its link taken for expired (the payload's expiry before the SAS's), a queue run lists the other run's
    commit to retire with its failure; that run copies again by staging, never by Copy Blob From URL (which
    refuses a source above its limit every time)."""
    sim = Simulation(STAGED_202)
    sim.store.sync_limit_bytes = 1  # every source is above Copy Blob From URL's limit (a > 256 MiB export)
    older = sim.post(sim.export("A"))
    await sim.run_actor(older)
    assert older.answer == "202 copying", older.answer
    sim.queue.clear()  # its queue run is still on its way: it stays `copying` at A, then superseded
    # The payload's exportedFileExpiresOn is ten minutes, the link's own `se` a day (or the instance's
    # clock runs ahead of the storage service's): the receiver takes the link for expired first.
    soon = (sim.clock() + timedelta(minutes=10)).isoformat()
    export = sim.export("A", exportedFileExpiresOn=soon)
    post = sim.post(export)
    await sim.run_actor(post)
    assert post.answer == "202 copying", post.answer
    first = sim.run_message(0, keep=True)  # the host delivers the message twice
    await sim.run_actor(first, until=lambda c: c.op == "put" and c.name == RECORD)  # committed, not recorded
    assert "ws-1/task-1/A.pdf" in sim.files()
    sim.clock.advance(timedelta(minutes=11))
    second = sim.run_message(0)
    # The second run lists the first's commit to retire with X's failure (expired), and stops before the delete.
    await sim.run_actor(second, until=lambda c: c.op == "delete")
    await sim.run_actor(first)
    copies = [line for line in sim.trace if line.actor == first.label and line.op == "copy_from_url"]
    stages = [line for line in sim.trace if line.actor == first.label and line.op == "stage_block"]
    assert stages, f"{first.label} never staged"
    assert not copies, f"{first.label} sent {len(copies)} Copy Blob From URL for a staged delivery ({first.answer})"


async def test_a_large_deliverys_commit_listed_to_retire_then_quiescence_keeps_every_guarantee() -> None:
    sim = Simulation(STAGED_202)
    sim.store.sync_limit_bytes = 1
    await sim.run_actor(sim.post(sim.export("A")))
    sim.queue.clear()
    export = sim.export("A", exportedFileExpiresOn=(sim.clock() + timedelta(minutes=10)).isoformat())
    await sim.run_actor(sim.post(export))
    first = sim.run_message(0, keep=True)
    await sim.run_actor(first, until=lambda c: c.op == "put" and c.name == RECORD)
    sim.clock.advance(timedelta(minutes=11))
    second = sim.run_message(0)
    await sim.run_actor(second, until=lambda c: c.op == "delete")
    await sim.run_actor(first)
    await sim.finish()
    assert sim.violation is None, str(sim.violation)


async def test_bytes_answered_stored_are_not_replaced_by_a_given_up_deliverys_copy() -> None:
    """An operator gives up a delivery still copying while its driver is alive (its copy over the file at
    its name held). Bytes of another delivery there are not adopted as they are (a copy of the given-up one
    may still land): copied again, so the held copy fails, and the delivery answered 200 stays stored."""
    sim = Simulation()
    first = sim.export("A")
    crashed = sim.post(first)  # its create lands, and its driver stops before the record
    await sim.run_actor(crashed, until=lambda c: c.op == "put" and c.name == RECORD)
    await sim.grant(next(c for c in sim.pending() if c.actor is crashed), "crash")
    assert NAME in sim.files()
    sim.clock.advance(timedelta(minutes=3))  # an orphan now
    second = sim.export("A")
    slow = sim.post(second)  # accepted at A to overwrite the orphan; its copy If-Match held
    await sim.run_actor(slow, until=lambda c: c.op == "copy_from_url" and "if_match" in c.detail)
    operator = sim.operator()  # python -m ops gives the stuck copy up
    await sim.run_actor(operator)
    assert operator.answer == "operator-failed", operator.answer
    retry = sim.post(first)  # SmartDocumentor retries the first export: its bytes are there
    await sim.run_actor(retry)
    assert retry.answer == "200 stored", retry.answer
    await sim.run_actor(slow)  # the given-up delivery's copy lands over the file just answered stored
    await sim.finish()
    record = sim.record()
    assert record is not None
    states = {sim.by_delivery[item.delivery].label: item.state.value for item in record.deliveries}
    entry = record.find(first.delivery)
    assert entry is not None and entry.state is State.STORED and record.current == first.delivery, (
        f"{first.label} was answered 200 stored; at the end: {states}, files {sorted(sim.files())}"
    )


async def test_a_retry_under_todays_template_is_not_a_duplicate_while_its_file_holds_another() -> None:
    """The same start; then the template changes and the 200-stored export is retried. Its current file
    (under the earlier template's name) holds the given-up export's bytes, but the duplicate branch for a
    name an earlier template gave never reads it: 200 `duplicate`, its own copy at today's name removed,
    and its bytes are nowhere (at the same name the retry would have restored them)."""
    sim = Simulation()
    first = sim.export("A")
    crashed = sim.post(first)
    await sim.run_actor(crashed, until=lambda c: c.op == "put" and c.name == RECORD)
    await sim.grant(next(c for c in sim.pending() if c.actor is crashed), "crash")
    sim.clock.advance(timedelta(minutes=3))
    slow = sim.post(sim.export("A"))
    await sim.run_actor(slow, until=lambda c: c.op == "copy_from_url" and "if_match" in c.detail)
    await sim.run_actor(sim.operator())
    retry = sim.post(first)
    await sim.run_actor(retry)
    assert retry.answer == "200 stored", retry.answer
    await sim.run_actor(slow)
    again = sim.post(first, config=Config(template="{yyyy}/{workspaceId}/{taskId}/{fileName}"))
    await sim.run_actor(again)
    holders = [n for n, data in sim.files().items() if data == first.data]
    assert not (again.answer or "").startswith("200") or holders, f"{again.answer} and no file holds {first.label}"


async def test_a_file_stored_before_the_copyid_change_is_retired_when_a_re_export_replaces_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A file stored without a copyid whose Content-Type was set after its record (a new ETag): a re-export
    under another name retires it (the retirement follows a version without a copyid)."""
    sim = Simulation()
    old = sim.export("A")
    # SmartDocumentor's blob says application/octet-stream; the payload says application/pdf.
    sim.sources.add(old.source_name, old.data, Headers(content_type="application/octet-stream"))
    with monkeypatch.context() as patch:
        patch.setattr(engine, "_copy_metadata", lambda job: dict(job.metadata))  # the previous release
        first = sim.post(old)
        await sim.run_actor(first)
    assert first.answer == "200 stored", first.answer
    record = sim.record()
    assert record is not None
    # After the upgrade: a re-export under another name (the display name changed).
    newer = sim.post(sim.export("B"))
    await sim.run_actor(newer)
    assert newer.answer == "200 stored", newer.answer
    await sim.finish()
    assert "ws-1/task-1/A.pdf" not in sim.files(), (sorted(sim.files()), sim.leftovers)


async def test_a_late_copy_at_a_superseded_deliverys_earlier_name_is_not_left_untracked() -> None:
    """X accepted at A (its copy over W held), accepted again at today's name (staged, 202), then superseded
    by Y stored there. X's earlier name is retired when X is superseded: its first copy lands at A, its
    driver stops, and the file is removed."""
    sim = Simulation(Config(template=T1))
    first_name = "ws-1/task-1/A.pdf"
    await sim.run_actor(sim.post(sim.export("A")))  # W current at A
    newer = sim.export("A")
    slow = sim.post(newer)
    await sim.run_actor(slow, until=lambda c: c.op == "copy_from_url" and "if_match" in c.detail)
    second = sim.post(newer, config=Config(template=T2, staged=True, waits=False))
    await sim.run_actor(second)
    assert second.answer == "202 copying", second.answer
    sim.queue.clear()
    newest = sim.post(sim.export("A"), config=Config(template=T2))
    await sim.run_actor(newest, until=lambda c: c.op == "delete")
    record = sim.record()
    assert record is not None
    await sim.land_then_stop(slow)
    await sim.run_actor(newest)
    assert newest.answer == "200 stored", newest.answer
    await sim.finish()
    assert sim.violation is None, str(sim.violation)
    assert first_name not in sim.files(), (sorted(sim.files()), sim.leftovers)


# --- a duplicate: the copy the record holds, or another one of the same delivery ---------------------------------


async def current_after_a_re_export() -> tuple[World, Export, Export, str]:
    """Export C, then D at the same name: D current and stored, C superseded there. (world, C, D, the name)"""
    world = World.make()
    older = world.export()
    assert (await world.post(older)).status_code == 200
    current = world.export()
    assert (await world.post(current)).status_code == 200
    record = world.record()
    assert record is not None and [item.state for item in record.deliveries] == [State.SUPERSEDED, State.STORED]
    return world, older, current, record.deliveries[-1].blob


def files_of_task(world: World) -> list[str]:
    return sorted(name for name in world.files() if name.startswith("ws-1/task-1/"))


async def renamed_re_export_leaves_only_its_file(world: World) -> None:
    """A renamed re-export then: the earlier file goes (its retirement follows the copy the record holds)."""
    renamed = world.export(display_name="renamed.pdf")
    answer = await world.post(renamed)
    assert (answer.status_code, answer.body["status"]) == (200, "stored"), answer.body
    assert files_of_task(world) == ["ws-1/task-1/renamed.pdf"], files_of_task(world)


async def its_copy_is_recorded_and_retired_later(world: World, name: str, caplog: pytest.LogCaptureFixture) -> None:
    """The record holds the copy the file at ``name`` is, no ERROR was logged, and a renamed re-export retires it."""
    record, file = world.record(), world.storage.stored(name)
    assert record is not None and file is not None
    assert record.deliveries[-1].copy_id == dict(file.metadata)["copyid"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    await renamed_re_export_leaves_only_its_file(world)


async def test_a_current_delivery_whose_file_was_copied_again_with_its_answer_lost_records_that_copy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """D's file deleted by hand; SmartDocumentor sends D again and its create-only copy lands with the answer lost: the
    file holds D (another copy than the recorded one) and the record D current there. The record, read once more,
    takes that copy as D's file (answered stored, then duplicate), with no ERROR, so a later renamed re-export
    retires it."""
    world, _, current, name = await current_after_a_re_export()
    there = world.storage.stored(name)
    assert there is not None
    await world.storage.delete(name, if_match=there.as_blob().etag)
    world.clock.advance(timedelta(minutes=3))
    world.faults.lose_answer("copy_from_url", name)
    caplog.set_level(logging.INFO, logger="receiver")
    answers = [await world.post(current) for _ in range(2)]
    assert [(a.status_code, a.body["status"]) for a in answers] == [(200, "stored"), (200, "duplicate")], [
        a.body for a in answers
    ]
    assert world.storage.blob_bytes(name) == current.data
    await its_copy_is_recorded_and_retired_later(world, name, caplog)


async def test_a_current_delivery_restored_whose_record_write_failed_records_that_copy_when_sent_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """C's late copy lands over D's file; D's retry restores D (a new copy) but the record write after it gets a 503:
    the record keeps the earlier copy's id. D sent again records the copy the file is (stored), with no ERROR, so a
    later renamed re-export retires it."""
    world, late, current, name = await current_after_a_re_export()
    record = world.record()
    assert record is not None
    older = record.deliveries[0]
    there = world.storage.stored(name)
    assert there is not None
    metadata = {**dict(there.metadata), "delivery": older.delivery, "copyid": "feedfeedfeedfeed"}
    await world.storage.copy_from_url(name, late.url, if_match=there.as_blob().etag, metadata=metadata, tags=None)
    world.clock.advance(timedelta(minutes=3))
    world.faults.fail_before("put", RECORD)
    await world.post(current)  # restores D's bytes; its record write is refused (not acting)
    assert world.storage.blob_bytes(name) == current.data
    caplog.set_level(logging.INFO, logger="receiver")
    world.clock.advance(timedelta(minutes=3))
    again = await world.post(current)
    assert again.status_code == 200 and again.body["status"] in ("stored", "duplicate"), again.body
    await its_copy_is_recorded_and_retired_later(world, name, caplog)


async def test_a_legacy_current_file_deleted_and_copied_again_with_its_answer_lost_is_recorded_and_retired_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """D stored by the previous release (no copyid in the record nor on the file). Its file deleted, D sent again: the
    create-only copy lands (with a copyid), its answer lost. That copy, which the record's listing would not follow,
    is recorded as D's file, so a later renamed re-export retires it."""
    world = World.make()
    current = world.export()
    with monkeypatch.context() as patch:
        patch.setattr(engine, "_copy_metadata", lambda job: dict(job.metadata))  # the previous release's copy
        assert (await world.post(current)).status_code == 200
    record = world.record()
    assert record is not None and record.deliveries[-1].copy_id is None
    name = record.deliveries[-1].blob
    there = world.storage.stored(name)
    assert there is not None and "copyid" not in dict(there.metadata)
    await world.storage.delete(name, if_match=there.as_blob().etag)
    world.clock.advance(timedelta(minutes=3))
    world.faults.lose_answer("copy_from_url", name)
    answers = [await world.post(current) for _ in range(2)]
    assert [(a.status_code, a.body["status"]) for a in answers] == [(200, "stored"), (200, "duplicate")]
    await renamed_re_export_leaves_only_its_file(world)


@pytest.mark.parametrize("fault", [None, "after"], ids=["answered", "answer-lost"])
async def test_a_superseded_retrys_copy_at_a_current_name_retired_meanwhile_is_removed_whatever_its_answer(
    fault: Literal["after"] | None,
) -> None:
    """C then D at A.pdf (D current). C's late retry reads the record (D current at A.pdf) and sends its create-only
    copy; meanwhile renamed E is stored and retires A.pdf. C's create lands at the free name, its answer delivered or
    lost (it landed, the driver got an error): either way the driver looks, reads the record once more (A.pdf is no
    longer current) and removes its copy before it is answered superseded; nothing is left beside B's file."""
    sim = Simulation(Config())
    c = sim.export("A")
    await sim.run_actor(sim.post(c))
    await sim.run_actor(sim.post(sim.export("A")))
    sim.clock.advance(timedelta(minutes=3))
    late = sim.post(c)
    await sim.settle()
    await sim.grant(next(x for x in sim.pending() if x.actor is late and x.op == "read_bytes"))
    renamed = sim.post(sim.export("B"))
    await sim.run_actor(renamed)
    assert renamed.answer == "200 stored" and NAME not in sim.files(), renamed.answer
    await sim.grant(next(x for x in sim.pending() if x.actor is late and x.op == "copy_from_url"), fault)
    await sim.run_actor(late)
    assert late.answer == "200 superseded" and NAME not in sim.files(), (late.answer, sorted(sim.files()))
    await sim.finish()
    assert sim.violation is None and not sim.leftovers, (sim.violation, sim.leftovers)
