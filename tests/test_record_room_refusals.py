"""An export refused for the task record's room (docs/reference.md, Known limits): the copy it made itself, sent
beside the record's read, is removed before the answer; never a copy it found there (a twin request's, being
recorded); under a hold, or when its removal fails, it stays."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from receiver.models import RECORD_CONTENT_TYPE, State, TaskRecord, record_name
from receiver.verification import verify_copy
from sim.world import World

from .test_task_record import _record_filled_by_failed_exports, world_with_no_room_for_one_more


async def _operator_removes_the_failed_entries(world: World) -> None:
    """The documented remedy (reference, Known limits): the record's failed entries removed by hand."""
    name = record_name("ws-1", "task-1")
    blob = world.storage.stored(name)
    assert blob is not None
    record = TaskRecord.from_bytes(blob.data)
    record.deliveries = [item for item in record.deliveries if item.state is not State.FAILED]
    await world.storage.put(
        name, record.to_bytes(), if_match=blob.etag, content_type=RECORD_CONTENT_TYPE, metadata=record.labels()
    )


def assert_twin_stored_and_its_file_there(world: World, twin: Any, refused: Any) -> None:
    """Twin A was answered 200, the record names small.pdf its stored, current file, and the file is there."""
    assert twin is not None and twin.status_code == 200, twin and twin.body
    record = world.record()
    assert record is not None
    entry = next(item for item in record.deliveries if item.blob == "ws-1/task-1/small.pdf")
    assert entry.state is State.STORED and record.current == entry.delivery
    assert "ws-1/task-1/small.pdf" in world.files(), (
        f"A answered 200 {twin.body.get('status')}; B answered {refused.status_code} "
        f"{refused.body.get('message', '')[:90]!r}; the record names small.pdf stored and current, and the file is "
        f"gone: {sorted(world.files())}"
    )


async def test_a_refused_twin_never_deletes_the_file_its_twin_recorded_stored_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Request B of delivery D reads a record with no room (failed exports' notifications) and its create-only
    copy lands. Before B's removal of that copy, the operator frees the record (the documented remedy) and the
    sender's retry A of the same delivery is answered 200 stored, adopting that very file. B's removal, decided
    from its stale record read, must not delete the file the record now names as D's stored, current file."""
    world = await world_with_no_room_for_one_more(monkeypatch)

    small = world.export(display_name="small.pdf", note="y" * 5_000)
    real_delete = world.storage.delete
    seen: dict[str, Any] = {}

    async def delete(name: str, *, if_match: str) -> bool:
        if name == "ws-1/task-1/small.pdf" and "a" not in seen:
            await _operator_removes_the_failed_entries(world)
            seen["a"] = await world.post(small)  # the sender's retry of the same delivery, while B is in flight
        return await real_delete(name, if_match=if_match)

    monkeypatch.setattr(world.storage, "delete", delete)
    answer_b = await world.post(small)
    twin = seen["a"]
    assert_twin_stored_and_its_file_there(world, twin, answer_b)


async def test_a_refused_twins_removal_between_its_twins_record_and_fence_never_leaves_a_stored_delivery_fileless(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As above, but B's removal lands right after twin A's record write (A adopted B's copy) and before A's
    fence: A's fence finds the file gone and copies it again, so what A answered 200 for is there."""
    import asyncio

    world = await world_with_no_room_for_one_more(monkeypatch)

    small = world.export(display_name="small.pdf", note="y" * 5_000)
    real_delete, real_put = world.storage.delete, world.storage.put
    a_recorded, b_deleted = asyncio.Event(), asyncio.Event()
    seen: dict[str, Any] = {}

    async def put(name: str, data: bytes, **kwargs: Any) -> Any:
        written = await real_put(name, data, **kwargs)
        if "armed" in seen and not a_recorded.is_set() and name == record_name("ws-1", "task-1"):
            record = TaskRecord.from_bytes(data)
            if any(item.blob == "ws-1/task-1/small.pdf" for item in record.deliveries):
                a_recorded.set()
                await b_deleted.wait()
        return written

    async def delete(name: str, *, if_match: str) -> bool:
        if name == "ws-1/task-1/small.pdf" and "armed" not in seen:
            await _operator_removes_the_failed_entries(world)
            seen["armed"] = True
            seen["a"] = asyncio.ensure_future(world.post(small))  # the sender's retry, while B is in flight
            await a_recorded.wait()
            try:
                seen["deleted"] = await real_delete(name, if_match=if_match)
            finally:
                b_deleted.set()
            return bool(seen["deleted"])
        return await real_delete(name, if_match=if_match)

    monkeypatch.setattr(world.storage, "delete", delete)
    monkeypatch.setattr(world.storage, "put", put)
    await world.post(small)
    twin = await seen["a"]
    record = world.record()
    assert record is not None
    entries = [(item.blob, item.state.value, item.delivery == record.current) for item in record.deliveries]
    files = sorted(world.files())
    stored_here = [e for e in entries if e[0] == "ws-1/task-1/small.pdf" and e[1] == "stored"]
    if twin.status_code == 200 or stored_here:
        assert "ws-1/task-1/small.pdf" in world.files(), (
            f"B's removal deleted={seen.get('deleted')}; A answered {twin.status_code} {twin.body.get('status')}; "
            f"record {entries}; files {files}"
        )


@pytest.mark.parametrize("where", ["container legal hold", "the copy's own hold"])
async def test_a_copy_the_records_room_refused_under_a_hold_is_answered_as_the_rooms_refusal_and_stays(
    monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A hold refuses the removal of the refused export's copy: the answer names the record's room or the hold
    (never 'Azure Storage did not confirm'); under a hold on the copy alone it is the room's 503 with no queue
    message, and the copy stays, as any copy a hold keeps."""
    world = await world_with_no_room_for_one_more(monkeypatch)
    if where == "container legal hold":
        world.storage.policy = "legal hold"
    else:
        world.faults.make_immutable("ws-1/task-1/small.pdf", legal_hold=True)
    answer = await world.post(world.export(display_name="small.pdf", note="y" * 5_000))
    messages = []
    if answer.verification is not None:
        for count in (1, 2, 40):
            try:
                messages.append(
                    await verify_copy(
                        answer.verification.encode(), runtime=world.runtime, now=world.now, dequeue_count=count
                    )
                )
            except Exception as exc:
                messages.append(f"raised {type(exc).__name__}: {exc}")
    left = sorted(world.files())
    assert "no room" in answer.body["message"] or "hold" in answer.body["message"], (answer.body, messages, left)
    if where == "the copy's own hold":  # the room's 503, no queue message: the copy stays, as any copy a hold keeps
        assert answer.status_code == 503 and answer.verification is None, (answer.body, messages)
        assert "ws-1/task-1/small.pdf" in left, left


async def test_a_copy_refused_for_the_records_room_at_a_name_still_listed_to_retire_is_not_left_named_by_no_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The record lists ws-1/task-1/small.pdf to retire (an earlier export's file there, deleted by a sweep whose
    record write, dropping the name, did not land yet). A new export at that name: its create-only copy lands and
    the record's room refuses it. The listing does not shield the refused copy (it is the request's own): it is
    removed, and nothing is left that no record names."""
    import receiver.engine
    from receiver.models import Retirement
    from receiver.reconciliation import reconcile_run

    world = World.make(sync_copy_max_mib=1, copy_wait_seconds=0, max_body_bytes=1024 * 1024)
    await _record_filled_by_failed_exports(world)
    name = record_name("ws-1", "task-1")
    blob = world.storage.stored(name)
    assert blob is not None
    record = TaskRecord.from_bytes(blob.data)
    record.retire.append(Retirement(blob="ws-1/task-1/small.pdf", delivery="f" * 64, etag='"0x8DE0000DEAD"'))
    await world.storage.put(
        name, record.to_bytes(), if_match=blob.etag, content_type=RECORD_CONTENT_TYPE, metadata=record.labels()
    )
    size = len(world.storage.blob_bytes(name) or b"")
    monkeypatch.setattr(receiver.engine, "RECORD_ROOM", size + 2000)
    answer = await world.post(world.export(display_name="small.pdf", note="y" * 5_000))
    assert answer.status_code == 503 and "no room" in answer.body["message"], answer.body
    for _ in range(3):
        world.clock.advance(timedelta(hours=1))
        await reconcile_run(runtime=world.runtime, now=world.now, environ={})
    found = world.record()
    assert found is not None
    named = {i.blob for i in found.deliveries} | {i.blob for i in found.retire}
    unnamed = set(world.files()) - named
    assert unnamed == set(), (answer.verification, unnamed, [i.blob for i in found.retire])


async def test_a_lost_answer_on_the_removal_of_a_copy_refused_for_the_room_leaves_nothing_and_names_the_room(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = await world_with_no_room_for_one_more(monkeypatch)
    world.faults.lose_answer("delete", "ws-1/task-1/small.pdf")
    answer = await world.post(world.export(display_name="small.pdf", note="y" * 5_000))
    assert answer.status_code == 503 and "no room" in answer.body["message"], answer.body
    assert answer.verification is None and "ws-1/task-1/small.pdf" not in world.files(), answer.body


async def test_a_refused_twin_whose_create_found_its_twins_stored_file_never_deletes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """B reads a record with no room; before its create-only copy, the room frees (the documented
    remedy, or exports still copying end) and the sender's retry A of the same delivery is stored: copied, recorded,
    fenced, answered 200. B's create then finds A's file ('exists'), and the room refuses B: B never removes a copy
    it did not make, so the file the record names as D's stored, current file stays."""
    import asyncio

    world = await world_with_no_room_for_one_more(monkeypatch)

    small = world.export(display_name="small.pdf", note="y" * 5_000)
    real_copy, real_read_bytes = world.storage.copy_from_url, world.storage.read_bytes
    b_read = asyncio.Event()
    seen: dict[str, Any] = {}

    async def read_bytes(name: str, **kwargs: Any) -> Any:
        found = await real_read_bytes(name, **kwargs)
        if name == record_name("ws-1", "task-1") and not b_read.is_set():
            b_read.set()  # B's read: the full record
        return found

    async def copy_from_url(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ws-1/task-1/small.pdf" and "a" not in seen:
            seen["a"] = None
            await b_read.wait()
            await _operator_removes_the_failed_entries(world)
            seen["a"] = await world.post(small)  # the sender's retry: stored and answered before B's create
        return await real_copy(name, *args, **kwargs)

    monkeypatch.setattr(world.storage, "read_bytes", read_bytes)
    monkeypatch.setattr(world.storage, "copy_from_url", copy_from_url)
    answer_b = await world.post(small)
    twin = seen["a"]
    assert_twin_stored_and_its_file_there(world, twin, answer_b)


async def test_a_refused_twin_never_deletes_its_twins_own_unfenced_copy_recorded_after_the_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """B reads the full record; the room frees; the sender's retry A copies first (its create wins), so B's create
    finds A's copy ('exists'). A records its OWN copy as stored: no fence (nothing else may land there). B, refused
    for the room, must not delete that copy (it is not B's own), though A's record has not landed yet."""
    import asyncio

    world = await world_with_no_room_for_one_more(monkeypatch)
    rname = record_name("ws-1", "task-1")

    small = world.export(display_name="small.pdf", note="y" * 5_000)
    real_copy, real_read_bytes = world.storage.copy_from_url, world.storage.read_bytes
    real_delete, real_put, real_set_headers = world.storage.delete, world.storage.put, world.storage.set_headers
    b_read, a_copied, b_deleting, a_recorded = asyncio.Event(), asyncio.Event(), asyncio.Event(), asyncio.Event()
    seen: dict[str, Any] = {"copies": 0, "headers": []}

    async def read_bytes(name: str, **kwargs: Any) -> Any:
        found = await real_read_bytes(name, **kwargs)
        if name == rname and not b_read.is_set():
            b_read.set()
        return found

    async def copy_from_url(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ws-1/task-1/small.pdf":
            seen["copies"] += 1
            if seen["copies"] == 1:  # B's create-only copy
                await b_read.wait()
                await _operator_removes_the_failed_entries(world)
                seen["a"] = asyncio.ensure_future(world.post(small))  # the sender's retry
                await a_copied.wait()
                return await real_copy(name, *args, **kwargs)
            if seen["copies"] == 2:  # A's: it wins
                try:
                    return await real_copy(name, *args, **kwargs)
                finally:
                    a_copied.set()
        return await real_copy(name, *args, **kwargs)

    async def put(name: str, data: bytes, **kwargs: Any) -> Any:
        if name == rname and "a" in seen and not a_recorded.is_set():
            record = TaskRecord.from_bytes(data)
            if any(item.blob == "ws-1/task-1/small.pdf" for item in record.deliveries):
                await b_deleting.wait()
                try:
                    return await real_put(name, data, **kwargs)
                finally:
                    a_recorded.set()
        return await real_put(name, data, **kwargs)

    async def set_headers(name: str, *args: Any, **kwargs: Any) -> Any:
        seen["headers"].append(name)
        return await real_set_headers(name, *args, **kwargs)

    async def delete(name: str, *, if_match: str) -> bool:
        if name == "ws-1/task-1/small.pdf" and "deleted" not in seen:
            b_deleting.set()
            await a_recorded.wait()
            await asyncio.sleep(0)
            seen["deleted"] = await real_delete(name, if_match=if_match)
            return bool(seen["deleted"])
        return await real_delete(name, if_match=if_match)

    monkeypatch.setattr(world.storage, "read_bytes", read_bytes)
    monkeypatch.setattr(world.storage, "copy_from_url", copy_from_url)
    monkeypatch.setattr(world.storage, "put", put)
    monkeypatch.setattr(world.storage, "delete", delete)
    monkeypatch.setattr(world.storage, "set_headers", set_headers)
    answer_b = await world.post(small)
    b_deleting.set()  # B answered without deleting (the copy it found is not its own): A's record goes on
    twin = await seen["a"]
    record = world.record()
    assert record is not None
    entries = [(item.blob, item.state.value, item.delivery == record.current) for item in record.deliveries]
    stored_here = [e for e in entries if e[0] == "ws-1/task-1/small.pdf" and e[1] == "stored"]
    assert twin.status_code == 200 and stored_here and "deleted" not in seen, (twin.body, entries, seen)
    assert not (twin.status_code == 200 and stored_here) or "ws-1/task-1/small.pdf" in world.files(), (
        f"A answered {twin.status_code} {twin.body.get('status')}; B answered {answer_b.status_code} "
        f"{answer_b.body.get('message', '')[:90]!r}; B's delete={seen.get('deleted')}; headers set {seen['headers']}; "
        f"record {entries}; files {sorted(world.files())}"
    )
