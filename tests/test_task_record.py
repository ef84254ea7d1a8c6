"""The task record and the one decision, through the real webhook, queue function and reconciliation
on the in-memory store (sim/world.py): each arrow of docs/state-machine.md, what it answers, what it
leaves in storage, and how many requests it takes. Fast: no Azurite, no clock but the world's own."""

from __future__ import annotations

import json
import logging
import re
from datetime import timedelta
from pathlib import Path

import pytest

from devtools.state_machine_page import render_table
from receiver.attention import marker_blob
from receiver.machine import ARROWS
from receiver.models import State, record_name
from receiver.reconciliation import reconcile_run
from receiver.verification import verify_copy
from sim.world import World

ROOT = Path(__file__).resolve().parent.parent


def test_the_state_machine_page_shows_the_table_the_code_decides_by() -> None:
    page = (ROOT / "docs" / "state-machine.md").read_text(encoding="utf-8")
    table = page.split("<!-- arrows:start -->\n", 1)[1].split("<!-- arrows:end -->", 1)[0]
    assert table == render_table()
    assert len({arrow.name for arrow in ARROWS}) == len(ARROWS)


async def test_a_first_export_is_stored_with_its_record_and_manifest_in_five_requests() -> None:
    world = World.make()
    export = world.export(display_name="invoice.pdf")
    answer = await world.post(export)
    assert (answer.status_code, answer.body["status"]) == (200, "stored")
    assert world.files() == {"ws-1/task-1/invoice.pdf": export.data}
    record = world.record()
    assert record is not None and record.current is not None
    [delivery] = record.deliveries
    assert (delivery.state, delivery.blob, record.retire) == (State.STORED, "ws-1/task-1/invoice.pdf", [])
    manifest = world.manifest("ws-1/task-1/invoice.pdf")
    assert manifest is not None and manifest["delivery"] == record.current
    assert manifest["history"][-1]["outcome"] == "stored"
    # The record read and the create side by side, then the record, the header read and the manifest.
    assert [op for op, _ in world.storage.calls] == ["read_bytes", "copy_from_url", "put", "read", "put"]


async def test_the_same_delivery_again_is_a_duplicate_that_writes_nothing() -> None:
    world = World.make()
    export = world.export()
    await world.post(export)
    before = world.storage.snapshot()
    world.storage.calls.clear()
    answer = await world.post(export)
    assert (answer.status_code, answer.body["status"]) == (200, "duplicate")
    assert world.storage.snapshot() == before
    # The record read beside a create-only copy, then the file and its manifest side by side.
    assert [op for op, _ in world.storage.calls] == ["read_bytes", "copy_from_url", "read", "read"]


async def test_a_re_export_under_the_same_name_replaces_the_file_atomically() -> None:
    world = World.make()
    first, second = world.export(), world.export()
    await world.post(first)
    answer = await world.post(second)
    assert answer.body["status"] == "stored"
    assert world.files() == {"ws-1/task-1/invoice.pdf": second.data}
    record = world.record()
    assert record is not None
    assert [item.state for item in record.deliveries] == [State.SUPERSEDED, State.STORED]
    manifest = world.manifest("ws-1/task-1/invoice.pdf")
    assert manifest is not None and manifest["delivery"] == record.deliveries[1].delivery
    assert manifest["replaced"] == [record.deliveries[0].delivery]


async def test_a_renamed_re_export_retires_the_older_file_and_its_manifest() -> None:
    world = World.make()
    await world.post(world.export(display_name="A.pdf"))
    renamed = world.export(display_name="B.pdf")
    world.storage.calls.clear()
    answer = await world.post(renamed)
    assert answer.body["status"] == "stored"
    assert world.files() == {"ws-1/task-1/B.pdf": renamed.data}
    assert world.manifest("ws-1/task-1/A.pdf") is None
    record = world.record()
    assert record is not None and record.retire == []
    assert len(world.storage.calls) == 9


async def test_a_late_retry_of_an_export_replaced_two_renames_ago_is_superseded_and_leaves_nothing() -> None:
    world = World.make()
    a, b, c = (world.export(display_name=name) for name in ("A.pdf", "B.pdf", "C.pdf"))
    for export in (a, b, c):
        assert (await world.post(export)).body["status"] == "stored"
    answer = await world.post(a)
    assert (answer.status_code, answer.body["status"]) == (200, "superseded")
    assert world.files() == {"ws-1/task-1/C.pdf": c.data}
    assert world.manifest("ws-1/task-1/A.pdf") is None


async def test_a_retry_of_the_first_export_after_the_name_came_back_is_superseded() -> None:
    world = World.make()
    first, middle, third = world.export(display_name="A.pdf"), world.export(display_name="B.pdf"), None
    third = world.export(display_name="A.pdf")
    for export in (first, middle, third):
        await world.post(export)
    answer = await world.post(first)
    assert answer.body["status"] == "superseded"
    assert world.files() == {"ws-1/task-1/A.pdf": third.data}


async def test_a_large_file_is_staged_and_finished_by_the_queue_function_when_the_answer_has_no_time() -> None:
    world = World.make(sync_copy_max_mib=0, copy_wait_seconds=0)
    export = world.export()
    answer = await world.post(export)
    assert (answer.status_code, answer.body["status"]) == (202, "copying")
    assert answer.verification is not None and export.url not in json.dumps(answer.body)
    assert world.files() == {}
    record = world.record()
    assert record is not None and record.deliveries[0].state is State.COPYING
    result = await verify_copy(answer.verification.encode(), runtime=world.runtime, now=world.now)
    assert result == "stored"
    assert world.files() == {"ws-1/task-1/invoice.pdf": export.data}
    assert world.storage.stored("ws-1/task-1/invoice.pdf").headers.content_type == "application/pdf"  # type: ignore[union-attr]


async def test_a_queued_notification_rebuilt_from_the_record_longer_than_max_body_bytes_is_still_finished() -> None:
    """A body over 45 KiB is queued as a reference to the record, and rebuilt from it: its accented text escaped
    there (three times as long), the rebuilt body is over MAX_BODY_BYTES, which limits what senders send, not the
    receiver's own messages. The 202 is kept."""
    world = World.make(sync_copy_max_mib=0, copy_wait_seconds=0)
    payload = {**world.export().payload, "note": "é" * 25_000}
    body = json.dumps(payload, ensure_ascii=False).encode()
    assert 45 * 1024 < len(body) <= world.settings.max_body_bytes < 3 * len(body) - 30_000
    answer = await world.post(body)
    assert answer.status_code == 202 and answer.verification is not None, answer.body
    assert await verify_copy(answer.verification.encode(), runtime=world.runtime, now=world.now) == "stored"
    assert list(world.files()) == ["ws-1/task-1/invoice.pdf"]


async def test_a_record_the_notifications_still_copying_fill_takes_no_more_and_ends_them_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The record keeps each copying export's notification (bodies up to MAX_BODY_BYTES, 1 MiB). One more that
    would take it past its room is answered 503, naming why, with nothing written; the changes that end the
    copying ones are never refused (they free it); then the same notification is accepted. (The room is made
    small here: 3 MiB instead of 48.)"""
    import receiver.engine

    monkeypatch.setattr(receiver.engine, "RECORD_ROOM", 3 * 1024 * 1024)
    world = World.make(sync_copy_max_mib=0, copy_wait_seconds=0, max_body_bytes=1024 * 1024)
    answers, exports = [], []
    for number in range(4):
        payload = {**world.export(display_name=f"v{number}.pdf").payload, "note": "é" * 500_000}
        exports.append(json.dumps(payload, ensure_ascii=False).encode())  # 1 MB sent, 1 MB kept
        assert len(exports[-1]) <= 1024 * 1024
        answers.append(await world.post(exports[-1]))
        world.clock.advance(timedelta(seconds=1))
    assert [a.status_code for a in answers[:3]] == [202] * 3, [a.body for a in answers]
    full = answers[3]
    assert (full.status_code, full.body["error"]) == (503, "storage-unavailable"), full.body
    assert "no room" in full.body["message"] and "send the document again" in full.body["message"].lower()
    record = world.record()
    assert record is not None and len(record.deliveries) == 3
    ended = []
    for answer in reversed(answers[:3]):  # the queue function ends them (the newest stored, the others superseded)
        assert answer.verification is not None
        ended.append(await verify_copy(answer.verification.encode(), runtime=world.runtime, now=world.now))
    assert ended == ["stored", "superseded", "superseded"], ended
    again = await world.post(exports[3])
    assert (again.status_code, again.body["status"]) == (202, "copying"), again.body


async def test_a_record_full_of_failed_exports_notifications_says_so_not_to_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Failed exports keep their notifications (docs/reference.md, Known limits): a 503 for a record they fill
    names them and points there, instead of asking to wait for copies that will never end."""
    import receiver.engine

    monkeypatch.setattr(receiver.engine, "RECORD_ROOM", 2 * 1024 * 1024)
    world = World.make(sync_copy_max_mib=0, copy_wait_seconds=0, max_body_bytes=1024 * 1024)
    for number in range(2):
        export = world.export(display_name=f"v{number}.pdf")
        answer = await world.post(json.dumps({**export.payload, "note": "x" * 900_000}).encode())
        assert answer.status_code == 202 and answer.verification is not None, answer.body
        world.sources.remove(f"ws-1/task-1/export-{world.exports}.pdf")
        assert await verify_copy(answer.verification.encode(), runtime=world.runtime, now=world.now) == "failed"
    later = world.export(display_name="v9.pdf")
    full = await world.post(json.dumps({**later.payload, "note": "x" * 900_000}).encode())
    assert full.status_code == 503, full.body
    assert "2 of them failed and stay" in full.body["message"] and "Known limits" in full.body["message"], full.body


async def _record_filled_by_failed_exports(world: World) -> None:
    """Two large exports accepted (202) whose copies then failed for good: the record keeps both notifications."""
    for number in range(2):
        export = world.export(display_name=f"big-{number}.pdf", data=b"%PDF" + b"x" * (2 * 1024 * 1024))
        answer = await world.post(json.dumps({**export.payload, "note": "x" * 900_000}).encode())
        assert answer.status_code == 202 and answer.verification is not None, answer.body
        world.sources.remove(f"ws-1/task-1/export-{world.exports}.pdf")
        assert await verify_copy(answer.verification.encode(), runtime=world.runtime, now=world.now) == "failed"
        world.clock.advance(timedelta(seconds=1))


async def world_with_no_room_for_one_more(monkeypatch: pytest.MonkeyPatch) -> World:
    """Task task-1's record filled by two failed exports' notifications, and the room (RECORD_ROOM, made small) one
    more small notification does not fit."""
    import receiver.engine

    world = World.make(sync_copy_max_mib=1, copy_wait_seconds=0, max_body_bytes=1024 * 1024)
    await _record_filled_by_failed_exports(world)
    size = len(world.storage.blob_bytes(record_name("ws-1", "task-1")) or b"")
    monkeypatch.setattr(receiver.engine, "RECORD_ROOM", size + 2000)
    return world


def _unnamed_files(world: World) -> set[str]:
    record = world.record()
    named = set() if record is None else {i.blob for i in record.deliveries} | {i.blob for i in record.retire}
    return set(world.files()) - named


@pytest.mark.parametrize("note", [5_000, 60_000], ids=["its notification in the message", "the record in it"])
async def test_an_export_refused_for_the_records_room_after_its_copy_landed_says_so_and_leaves_no_file(
    monkeypatch: pytest.MonkeyPatch, note: int
) -> None:
    """A small export at a new name: its create-only copy, sent beside the record's read, lands before the record
    refuses it for its room. The answer names the room (not an unconfirmed copy the receiver would finish), no
    queue message is sent, and the copy is gone: nothing is left that no record names."""
    world = await world_with_no_room_for_one_more(monkeypatch)
    answer = await world.post(world.export(display_name="small.pdf", note="y" * note))
    assert answer.status_code == 503 and "no room" in answer.body["message"], answer.body
    assert answer.verification is None, answer.body
    assert _unnamed_files(world) == set(), sorted(world.files())


async def test_a_refused_copy_whose_removal_fails_stays_named_in_a_warning_and_the_answer_names_the_room(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The removal of the refused export's own copy fails (503): the copy stays (docs/reference.md, Known limits:
    the record's room), a WARNING names it, and the answer is the room's (no queue message: its try could not tell
    that copy from a twin request's, about to be recorded)."""
    world = await world_with_no_room_for_one_more(monkeypatch)
    world.faults.fail_before("delete", "ws-1/task-1/small.pdf", times=3)
    answer = await world.post(world.export(display_name="small.pdf", note="y" * 5_000))
    assert answer.status_code == 503 and "no room" in answer.body["message"], answer.body
    assert answer.verification is None and _unnamed_files(world) == {"ws-1/task-1/small.pdf"}
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("ws-1/task-1/small.pdf may stay, no task record names it" in text for text in said), said


async def test_a_large_re_export_keeps_the_earlier_file_readable_until_its_commit() -> None:
    world = World.make(sync_copy_max_mib=0, copy_wait_seconds=0)
    first = world.export()
    message = (await world.post(first)).verification
    assert message is not None
    await verify_copy(message.encode(), runtime=world.runtime, now=world.now)
    second = world.export()
    answer = await world.post(second)
    assert answer.status_code == 202
    assert world.files() == {"ws-1/task-1/invoice.pdf": first.data}
    assert answer.verification is not None
    assert await verify_copy(answer.verification.encode(), runtime=world.runtime, now=world.now) == "stored"
    assert world.files() == {"ws-1/task-1/invoice.pdf": second.data}


async def test_a_queued_copy_whose_link_expired_fails_in_the_record_and_keeps_the_earlier_file() -> None:
    world = World.make(sync_copy_max_mib=0, copy_wait_seconds=0)
    first = world.export()
    await verify_copy((await world.post(first)).verification.encode(), runtime=world.runtime, now=world.now)  # type: ignore[union-attr]
    late = world.export(expires_in=timedelta(minutes=5))
    message = (await world.post(late)).verification
    assert message is not None
    world.clock.advance(timedelta(minutes=30))
    report = await reconcile_run(runtime=world.runtime, now=world.now, environ={})
    assert report.outcomes == {"expired": 1}
    record = world.record()
    assert record is not None
    assert [item.state for item in record.deliveries] == [State.STORED, State.FAILED]
    assert "expired" in (record.deliveries[1].failure_reason or "")
    assert world.files() == {"ws-1/task-1/invoice.pdf": first.data}
    # Its message, delivered late, changes nothing.
    assert await verify_copy(message.encode(), runtime=world.runtime, now=world.now) == "failed"
    assert world.files() == {"ws-1/task-1/invoice.pdf": first.data}


async def test_a_copy_whose_answer_was_lost_after_it_landed_is_adopted_and_answered_stored() -> None:
    world = World.make()
    export = world.export()
    world.faults.lose_answer("copy_from_url")
    answer = await world.post(export)
    assert (answer.status_code, answer.body["status"]) == (200, "stored")
    record = world.record()
    assert record is not None and record.deliveries[0].history[-1].outcome == "adopted"
    assert world.files() == {"ws-1/task-1/invoice.pdf": export.data}


async def test_when_storage_fails_right_after_a_copy_the_queue_message_finishes_it() -> None:
    world = World.make()
    export = world.export()
    world.faults.lose_answer("copy_from_url")
    world.faults.fail_before("read")  # the look after the copy fails too: nothing can be recorded now
    answer = await world.post(export)
    assert (answer.status_code, answer.body["error"]) == (503, "storage-unavailable")
    assert answer.verification is not None
    assert await verify_copy(answer.verification.encode(), runtime=world.runtime, now=world.now) == "stored"
    record = world.record()
    assert record is not None and record.deliveries[-1].state is State.STORED
    assert world.files() == {"ws-1/task-1/invoice.pdf": export.data}


async def test_deeply_nested_extra_fields_stay_json_and_the_manifest_grows_with_the_body() -> None:
    world = World.make()
    nested: object = "leaf"
    for _ in range(30):
        nested = {"level": nested}
    export = world.export(extra=nested)
    answer = await world.post(export)
    assert answer.body["status"] == "stored"
    data = world.storage.blob_bytes("ws-1/task-1/invoice.pdf.json")
    assert data is not None and len(data) < 3 * len(export.body)
    manifest = json.loads(data)
    node = manifest["extra"]
    for _ in range(30):
        node = node["level"]
    assert node == "leaf"


async def test_no_signature_reaches_the_record_the_manifest_or_the_metadata() -> None:
    world = World.make()
    export = world.export(display_name="see.pdf")
    signature = re.search(r"sig=([^&]+)", export.url)
    assert signature is not None
    await world.post(export)
    for name in world.storage.names():
        stored = world.storage.stored(name)
        assert stored is not None
        text = stored.data.decode("latin-1") + json.dumps(dict(stored.metadata))
        assert signature.group(1) not in text and "sig=" not in text, name
    assert world.storage.stored(record_name("ws-1", "task-1")) is not None


async def test_a_first_copy_answered_503_is_tracked_in_the_record_and_finished_by_its_message() -> None:
    world = World.make()
    export = world.export()
    world.faults.fail_before("copy_from_url")  # a 503 the SDK gave up on: whether it acted is unknown
    answer = await world.post(export)
    assert (answer.status_code, answer.body["error"]) == (503, "storage-unavailable")
    assert answer.verification is not None
    record = world.record()
    assert record is not None and [item.state for item in record.deliveries] == [State.COPYING]
    # Its queue message copies it again.
    assert await verify_copy(answer.verification.encode(), runtime=world.runtime, now=world.now) == "stored"
    assert world.files() == {"ws-1/task-1/invoice.pdf": export.data}


async def test_a_staged_copy_whose_source_is_gone_fails_for_good_at_once_and_keeps_the_earlier_file() -> None:
    world = World.make(sync_copy_max_mib=0, copy_wait_seconds=0)
    first = world.export()
    await verify_copy((await world.post(first)).verification.encode(), runtime=world.runtime, now=world.now)  # type: ignore[union-attr]
    gone = world.export()
    message = (await world.post(gone)).verification
    assert message is not None
    world.sources.remove("ws-1/task-1/export-2.pdf")
    assert await verify_copy(message.encode(), runtime=world.runtime, now=world.now) == "failed"
    record = world.record()
    assert record is not None and [item.state for item in record.deliveries] == [State.STORED, State.FAILED]
    assert world.files() == {"ws-1/task-1/invoice.pdf": first.data}


async def test_under_a_retention_policy_the_first_export_is_stored_and_a_re_export_refused_with_nothing_written() -> (
    None
):
    world = World.make()
    world.storage.policy = "retention policy"
    first = world.export(display_name="A.pdf")
    assert (await world.post(first)).body["status"] == "stored"
    assert (await world.post(first)).body["status"] == "duplicate"
    before = world.storage.snapshot()
    for display in ("A.pdf", "B.pdf"):
        answer = await world.post(world.export(display_name=display))
        assert (answer.status_code, answer.body["error"]) == (409, "immutable")
        assert "retention policy" in answer.body["message"] and answer.verification is None
    assert world.storage.snapshot() == before


async def test_under_a_legal_hold_a_large_first_export_is_refused_before_anything_is_written() -> None:
    world = World.make(sync_copy_max_mib=0)
    world.storage.policy = "legal hold"
    answer = await world.post(world.export())
    assert (answer.status_code, answer.body["error"]) == (409, "immutable")
    assert "legal hold" in answer.body["message"]
    assert world.storage.names() == []


async def test_a_stored_version_whose_headers_a_retention_policy_keeps_is_stored_with_its_copied_content_type(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Version-level immutability with a default retention policy: a new version is created, but Set Blob
    Properties on it is refused. The file was copied with the source's Content-Type, which differs from the
    notification's: the answer is 200 `stored` with its manifest (not a 503 saying the manifest is missing),
    and a WARNING says which Content-Type the file keeps."""
    caplog.set_level(logging.WARNING, logger="receiver.engine")  # python -m ops, run in-process, quiets it
    world = World.make()
    export = world.export(display_name="A.pdf", content_type="application/octet-stream")
    body = {**json.loads(export.body), "exportedFileContentType": "application/pdf"}
    world.faults.make_immutable("ws-1/task-1/A.pdf")  # what the copy creates is protected at once
    answer = await world.post(json.dumps(body).encode())
    assert (answer.status_code, answer.body["status"]) == (200, "stored"), answer.body
    stored = world.storage.stored("ws-1/task-1/A.pdf")
    assert stored is not None and stored.headers.content_type == "application/octet-stream"
    assert world.manifest("ws-1/task-1/A.pdf") is not None
    assert "keeps Content-Type application/octet-stream: the retention policy refused" in caplog.text


async def test_a_first_export_under_a_container_legal_hold_keeps_its_copied_content_type_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A legal hold on the container: the first export is stored (a create), its headers are not changed under the
    policy, so a source Content-Type other than the notification's stays, and a WARNING names both."""
    caplog.set_level(logging.WARNING, logger="receiver.engine")
    world = World.make()
    world.storage.policy = "legal hold"
    export = world.export(display_name="A.pdf", content_type="application/octet-stream")
    body = {**json.loads(export.body), "exportedFileContentType": "application/pdf"}
    answer = await world.post(json.dumps(body).encode())
    assert (answer.status_code, answer.body["status"]) == (200, "stored"), answer.body
    stored = world.storage.stored("ws-1/task-1/A.pdf")
    assert stored is not None and stored.headers.content_type == "application/octet-stream"
    assert "keeps Content-Type application/octet-stream: the legal hold refused setting application/pdf" in caplog.text


# Azure refuses a blob whose metadata (names and values) passes 8 KiB; the record and the failure markers carry
# both ids whole, percent-encoded.
METADATA_LIMIT = 8 * 1024


async def test_ids_at_their_encoded_limit_are_recorded_within_azures_metadata_limit_and_longer_ones_are_a_400() -> None:
    """An id is accepted up to 3072 characters once percent-encoded (docs/reference.md, The notification): the
    longest of them still leave every blob's metadata (the file, the record, a failure marker) under 8 KiB;
    one character more is a 400 naming the field, and nothing is stored."""
    world = World.make()
    longest = {"taskId": "中" * 341, "workspaceId": "/" * 1024}  # 3069 and 3072 characters once encoded

    def sent(display_name: str) -> bytes:
        return json.dumps({**json.loads(world.export("t", display_name).body), **longest}).encode()

    assert (await world.post(sent("x.pdf"))).status_code == 200
    record = world.record("中" * 341, "/" * 1024)
    assert record is not None
    gave_up = record.deliveries[0].model_copy(update={"state": State.FAILED, "failed_at": world.now})
    _, marker = marker_blob(record, gave_up, "failed")  # what a failure marker of this task carries
    assert sum(len(key) + len(value) for key, value in marker.items()) <= METADATA_LIMIT
    for name in world.storage.names():
        metadata = dict(world.storage.stored(name).metadata)  # type: ignore[union-attr]
        size = sum(len(key) + len(value) for key, value in metadata.items())
        assert size <= METADATA_LIMIT, (name[:60], size)
    before = world.storage.names()
    for field in ("taskId", "workspaceId"):
        body = {**json.loads(world.export("t", "z.pdf", workspace_id="w").body), field: "中" * 342}
        answer = await world.post(json.dumps(body).encode())
        assert answer.status_code == 400 and answer.body["error"] == "invalid-payload", answer.body
        assert field in answer.body["message"] and "percent-encoded" in json.dumps(answer.body["details"])
    assert world.storage.names() == before


async def test_a_retirement_whose_file_changes_at_every_try_stays_listed_not_taken_for_another_deliverys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Others keep setting the retired file's headers (its version changes before each delete): after three tries
    the name stays listed (Unavailable, kept-changing), never dropped as "no longer that delivery's" with the
    file left for good (a soak's seed 9119724)."""
    from dataclasses import replace as changed

    from receiver.engine import remove_if_holds
    from receiver.models import Retirement
    from receiver.storage import Unavailable

    world = World.make()
    export = world.export()
    assert (await world.post(export)).status_code == 200
    name = "ws-1/task-1/invoice.pdf"
    blob = world.storage.stored(name)
    assert blob is not None
    real_delete = world.storage.delete

    async def delete(target: str, *, if_match: str) -> bool:
        current = await world.storage.read(target)
        assert current is not None
        await world.storage.set_headers(
            target, changed(current.headers, cache_control="no-cache"), if_match=current.etag
        )
        return await real_delete(target, if_match=if_match)

    monkeypatch.setattr(world.storage, "delete", delete)
    meta = dict(blob.metadata)
    listed = Retirement(blob=name, delivery=meta["delivery"], etag=blob.etag, copy_id=meta.get("copyid"))
    with pytest.raises(Unavailable) as kept:
        await remove_if_holds(world.storage, listed)
    assert kept.value.code == "kept-changing" and name in world.files(), kept.value
