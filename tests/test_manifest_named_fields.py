"""extra fields named like the receiver's own manifest fields (docs/reference.md,
"The notification": "Unknown extra fields are accepted and kept in the manifest"; "The manifest": "An
extra field named like one of the receiver's own is kept under senderFields")."""

from __future__ import annotations

from datetime import timedelta

import pytest

from receiver.reconciliation import reconcile_run
from sim.world import World

NAME = "ws-1/task-1/invoice.pdf"


@pytest.mark.parametrize("extra", [{"receiverKind": "x"}, {"receiver_kind": "x"}, {"copy_status": "pending"}])
async def test_extra_fields_named_like_the_manifests_own_are_kept_under_sender_fields(
    extra: dict[str, str],
) -> None:
    world = World.make()
    export = world.export(**extra)  # type: ignore[arg-type]
    answer = await world.post(export)
    stored_anyway = world.files() == {NAME: export.data}
    assert answer.status_code == 200, (answer.status_code, answer.body, "file stored anyway:", stored_anyway)
    manifest = world.manifest(NAME)
    assert manifest is not None and manifest["receiverKind"] == "manifest"


async def test_a_resend_of_such_a_body_is_a_duplicate_with_its_manifest() -> None:
    world = World.make()
    export = world.export(receiverKind="x")
    await world.post(export)
    again = await world.post(export)
    assert again.status_code == 200 and again.body["status"] == "duplicate"
    # docs/reference.md, "What a 2xx guarantees", Final: the current file's manifest exists and describes it.
    world.clock.advance(timedelta(minutes=1))
    await reconcile_run(runtime=world.runtime, now=world.now)
    assert world.manifest(NAME) is not None, "a 2xx duplicate, and the manifest is never written"


async def test_one_tasks_failure_never_stops_the_reconciliation_for_the_others() -> None:
    """The reconciliation's per-task guard catches StoreError only: the manifest's ValidationError ends
    the whole run, so a task listed after it (here a delivery still copying whose link expired) is never
    swept, run after run, while that task is 'recent'."""
    world = World.make(reconcile_after_minutes=0)
    await world.post(world.export("aaa-odd", receiverKind="x"))
    other = world.export("zzz-victim", display_name="v.pdf", expires_in=timedelta(minutes=2))
    world.faults.fail_before("copy_from_url", "ws-1/zzz-victim/v.pdf", times=100)
    lost = await world.post(other)
    assert lost.status_code == 503, lost.body
    record = world.record("zzz-victim")
    assert record is not None and record.deliveries[-1].state.value == "copying"
    world.clock.advance(timedelta(minutes=5))
    report = await reconcile_run(runtime=world.runtime, now=world.now)
    assert report.failed is None, report.failed
    record = world.record("zzz-victim")
    assert record is not None and record.deliveries[-1].state.value == "failed", "the expired delivery was never swept"
