"""What `python -m ops find` tells the operator paged at 3 a.m. (docs/operator-cli.md): files the upgrade left,
once it has ended; one JSON shape for a task with no record; a task record with no room for another export."""

from __future__ import annotations

import json

import pytest

from ops.output import OK
from receiver.migration import migrate
from receiver.models import record_name

from .test_ops import Ops
from .test_previous_release import (
    FILES,
    fill,
    find,
    legacy_world,
    reconcile,
    replaced_file_still_there,
    with_manifest_over_a_mib,
    with_manifest_status,
)
from .test_task_record import _record_filled_by_failed_exports

# --- 1. after the upgrade ended -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["failed", "pending"])
async def test_find_after_the_upgrade_ended_names_the_legacy_file_it_left_for_its_manifests_status(status: str) -> None:
    """docs/reference.md, Upgrading, What it leaves: a file whose own manifest says pending or failed is left as
    it is and named by `ops find` during the upgrade and once it has ended (from the marker's notes)."""
    world = legacy_world()
    name = FILES[("ws-acme", "task-102")]
    with_manifest_status(world, name, status)
    _, said = await find(world, "--task", "task-102", "--workspace", "ws-acme")
    assert name in said, said  # during the upgrade: named
    await reconcile(world)
    _, said = await find(world, "--task", "task-102", "--workspace", "ws-acme")
    assert name in said, said


async def test_find_stops_flagging_a_left_legacy_file_once_a_renamed_re_export_is_current() -> None:
    """find's next step for a left newer legacy file is 'export the document again'. Followed, with a display name
    that changed since (a renamed re-export), the new export is stored and current: the left file, older than it,
    is only noted (delete it by hand if not wanted), with exit 0 and no next step to export again."""
    world = legacy_world()
    newer = replaced_file_still_there(world, "0" * 64, "ws-acme/task-102/a-older.pdf")
    with_manifest_over_a_mib(world, newer.name)
    fill(world, 2500, prefix="ws-acme/task-102/b-filler")
    for _ in range(6):
        if (await migrate(world.storage, now=world.now)).done:
            break
    answer = await world.post(world.export("task-102", "invoice-102-v2.pdf", workspace_id="ws-acme"))
    assert answer.status_code == 200, answer.body
    await reconcile(world)
    code, said = await find(world, "--task", "task-102", "--workspace", "ws-acme")
    assert "invoice-102-v2.pdf  <- current" in said, said
    assert "export the document again" not in said and code == OK, (code, said)


async def test_find_json_for_a_task_with_no_record_has_one_shape_with_or_without_workspace() -> None:
    """docs/operator-cli.md: --json is one JSON document; the same question gives the same keys, with or without
    --workspace."""
    world = legacy_world()
    with_manifest_over_a_mib(world, FILES[("ws-acme", "task-102")])
    await reconcile(world)
    bare = json.loads((await find(world, "--task", "task-102", "--json"))[1])
    scoped = json.loads((await find(world, "--task", "task-102", "--workspace", "ws-acme", "--json"))[1])
    assert set(bare) == set(scoped), (sorted(bare), sorted(scoped))


async def test_find_json_problems_are_whole_problems_not_the_texts_lines() -> None:
    """With --workspace, `problems` holds whole problems, not the lines of the upgrade's story."""
    world = legacy_world()
    with_manifest_over_a_mib(world, FILES[("ws-acme", "task-102")])
    await reconcile(world)
    scoped = json.loads((await find(world, "--task", "task-102", "--workspace", "ws-acme", "--json"))[1])
    fragments = [p for p in scoped["problems"] if p.endswith(":") or p.startswith(" ")]
    assert fragments == [], scoped["problems"]


# --- 2. 503 "The task record has no room for this notification" -----------------------------------------------


async def _refused_for_room(monkeypatch: pytest.MonkeyPatch) -> Ops:
    import receiver.engine

    ops = Ops(sync_copy_max_mib=1, copy_wait_seconds=0, max_body_bytes=1024 * 1024)
    world = ops.world
    await _record_filled_by_failed_exports(world)
    size = len(world.storage.blob_bytes(record_name("ws-1", "task-1")) or b"")
    monkeypatch.setattr(receiver.engine, "RECORD_ROOM", size + 2000)
    world.faults.fail_before("delete", "ws-1/task-1/small.pdf", times=3)
    answer = await world.post(world.export(display_name="small.pdf", note="y" * 5_000))
    assert answer.status_code == 503 and "no room" in answer.body["message"], answer.body
    await ops.reconcile()
    return ops


async def test_find_on_a_task_whose_record_has_no_room_says_so_instead_of_export_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sender got 503 'no room' and the reference's troubleshooting sends the operator to `ops find --task`:
    it names the record's room and the failed exports that fill it, and the step that frees it."""
    ops = await _refused_for_room(monkeypatch)
    ran = await ops("find", "--task", "task-1")
    assert "room" in ran.out, ran.out
