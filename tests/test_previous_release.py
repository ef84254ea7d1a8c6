"""A container the release before the task record wrote (tests/data/previous_release_container.json,
captured from commit 1d6565d by devtools/capture_previous_release.py), upgraded: the reconciliation
builds each task's record from what is there, and new deliveries then behave as for any task.

On the in-memory store (tests/test_storage_contract.py holds it to Azurite), and, for what the Azure SDK
reads (an asynchronous copy's status), on Azurite through the fault proxy."""

from __future__ import annotations

import base64
import contextlib
import io
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContainerClient
from pydantic import SecretStr

from ops.output import NOT_FOUND, OK
from receiver.migration import BEGUN_NAME, MARKER_NAME, OVERLAP, migrate
from receiver.models import State, TaskRecord, record_name
from receiver.reconciliation import reconcile_run
from receiver.settings import Settings
from receiver.storage import Headers
from receiver.verification import verify_copy
from sim.memstore import ManualClock, StoredBlob
from sim.world import SOURCE_HOST, World

from .conftest import Exports, Webhook, delivery_of, notification
from .faultproxy import FaultProxy

FIXTURE = json.loads((Path(__file__).parent / "data" / "previous_release_container.json").read_text("utf-8"))
# (workspace, task) -> the file the previous release left as the task's export.
FILES = {
    ("ws-acme", "task-101"): "ws-acme/task-101/invoice-101.pdf",
    ("ws-acme", "task-102"): "ws-acme/task-102/invoice-102.pdf",
    ("ws-acme", "task-201"): "ws-acme/task-201/contract.pdf",
    ("ws-acme", "task-301"): "ws-acme/task-301/offer-v2.pdf",
    ("Société Générale", "tâche №7"): "Société Générale/tâche №7/relevé.pdf",
    ("ws-acme", "task-401"): "ws-acme/task-401/scan.pdf",
    ("ws-acme", "task-501"): "2026/ws-acme/501-report-final.pdf",
}


def legacy_world(*, minutes_after: int = 10, upgraded: bool = True, **settings: Any) -> World:
    """The fixture in a MemoryStorage, the clock ``minutes_after`` the capture, its links served. ``upgraded``:
    the first run after the upgrade came OVERLAP before the capture, so the migration lists at once; else no run
    has come yet."""
    captured = datetime.fromisoformat(FIXTURE["capturedAt"])
    configured = Settings(
        destination_connection_string=SecretStr("UseDevelopmentStorage=true"),
        destination_container=FIXTURE["container"],
        allowed_source_hosts=(FIXTURE["sourceHost"], SOURCE_HOST),
        allow_http_sources=True,
        **settings,
    )
    world = World(configured, clock=ManualClock(captured + timedelta(minutes=minutes_after)))
    for blob in FIXTURE["blobs"]:
        assert blob["snapshot"] is None  # the capture left none: the release deleted them after success
        world.storage.load(
            blob["name"],
            base64.b64decode(blob["data"]),
            content_type=blob["contentType"],
            metadata=blob["metadata"],
            tags=blob["tags"],
            created=datetime.fromisoformat(blob["created"]),
            last_modified=datetime.fromisoformat(blob["lastModified"]),
        )
    for sent in FIXTURE["deliveries"]:
        world.sources.admit(sent["body"]["exportedFileUrl"], base64.b64decode(sent["data"]), Headers("application/pdf"))
    if upgraded:  # the first run after the upgrade came OVERLAP before the capture
        begun = captured - OVERLAP
        world.storage.load(
            BEGUN_NAME, b"", content_type="text/plain", metadata={"receiverkind": "migration"},
            created=begun, last_modified=begun,
        )  # fmt: skip
    return world


def written_late_by_the_release_before(world: World, task: str) -> str:
    """What an instance of the release before, still running after the upgrade, stores for ``task`` now: task-101's
    export again as ``task``'s (file and manifest, its metadata and ids), at a name that sorts first."""
    name = f"a-late/{task}/late.pdf"
    file, manifest = (
        world.storage.stored(FILES[("ws-acme", "task-101")]),
        world.storage.stored(f"{FILES[('ws-acme', 'task-101')]}.json"),
    )
    assert file is not None and manifest is not None
    delivery = "e" * 64
    document = {**json.loads(manifest.data), "taskId": task, "delivery": delivery, "blob": name}
    for blob, data, meta, kind in (
        (name, file.data, {**dict(file.metadata), "taskid": task, "delivery": delivery}, "application/pdf"),
        (f"{name}.json", json.dumps(document).encode(), dict(manifest.metadata), "application/json"),
    ):
        world.storage.load(blob, data, content_type=kind, metadata=meta, created=world.now, last_modified=world.now)
    return name


def sent(task: str, number: int = 0) -> dict[str, Any]:
    """The ``number``-th notification the previous release received for ``task``."""
    found = [d for d in FIXTURE["deliveries"] if d["body"]["taskId"] == task]
    return dict(found[number])


def body(task: str, number: int = 0) -> bytes:
    return json.dumps(sent(task, number)["body"]).encode()


def record(world: World, workspace: str, task: str) -> TaskRecord:
    found = world.record(task, workspace)
    assert found is not None, f"no record for {workspace}/{task}"
    return found


def manifest_status(world: World, name: str) -> str | None:
    data = world.storage.blob_bytes(f"{name}.json")
    return None if data is None else str(json.loads(data)["copyStatus"])


def copy_at_an_earlier_templates_name(world: World, name: str, *, received_at: str | None = None) -> str:
    """The legacy file at ``name`` and its manifest again under an earlier template's name, 30 days older (the
    manifest's ``receivedAt`` set to ``received_at`` when given): the release left one delivery at two names."""
    earlier = f"old-template/{name}"
    stored, manifest = world.storage.stored(name), world.storage.stored(f"{name}.json")
    assert stored is not None and manifest is not None
    data = manifest.data
    if received_at is not None:
        data = json.dumps({**json.loads(manifest.data), "receivedAt": received_at}).encode()
    stamp = stored.last_modified - timedelta(days=30)
    world.storage.load(
        earlier, stored.data, content_type="application/pdf", metadata=dict(stored.metadata),
        created=stamp, last_modified=stamp,
    )  # fmt: skip
    world.storage.load(
        f"{earlier}.json", data, content_type="application/json", metadata=dict(manifest.metadata),
        created=stamp, last_modified=stamp,
    )  # fmt: skip
    return earlier


async def reconcile(world: World) -> None:
    report = await reconcile_run(runtime=world.runtime, now=world.now, environ={})
    assert report.failed is None and report.migration_failed is None


async def test_the_fixture_is_what_the_previous_release_wrote() -> None:
    assert FIXTURE["capturedFrom"] == "1d6565d"
    names = {blob["name"] for blob in FIXTURE["blobs"]}
    assert set(FILES.values()) <= names and {f"{name}.json" for name in FILES.values()} <= names
    assert not any(name.startswith(".smartdocumentor/") for name in names)
    # The renamed re-exports' earlier files were retired by that release itself.
    assert "ws-acme/task-301/offer-v1.pdf" not in names and "2026/ws-acme/501-report.pdf" not in names
    world = legacy_world()
    assert manifest_status(world, FILES[("ws-acme", "task-401")]) == "pending"
    meta = dict(world.storage.stored(FILES[("Société Générale", "tâche №7")]).metadata)  # type: ignore[union-attr]
    assert meta["taskid"] == "t%C3%A2che %E2%84%967"


async def test_the_reconciliation_gives_every_legacy_task_a_record_naming_its_file_as_current() -> None:
    world = legacy_world()
    await reconcile(world)
    for (workspace, task), name in FILES.items():
        found = record(world, workspace, task)
        current = found.current_delivery
        assert current is not None and current.blob == name and current.state is State.STORED
        assert current.delivery == dict(world.storage.stored(name).metadata)["delivery"]  # type: ignore[union-attr]
        assert found.retire == []
    marker = world.storage.blob_bytes(MARKER_NAME)
    assert marker is not None and json.loads(marker)["done"] is True


async def test_nothing_stored_is_deleted_or_changed_by_the_migration() -> None:
    world = legacy_world()
    before = {name: world.storage.stored(name) for name in world.storage.names()}
    await reconcile(world)
    for name, blob in before.items():
        after = world.storage.stored(name)
        assert after is not None and blob is not None, name
        assert after.data == blob.data, name
        if not name.endswith(".json"):
            assert after == blob, name  # files untouched: same ETag, metadata, tags
    # The pending manifest (its copy never landed) is left exactly as it was.
    pending = "ws-acme/task-401/scan.pdf.json"
    assert world.storage.stored(pending) == before[pending]


async def test_a_finished_migration_reads_only_its_marker() -> None:
    world = legacy_world()
    await reconcile(world)
    world.storage.calls.clear()
    report = await migrate(world.storage, now=world.now)
    assert report.already_done and world.storage.calls == [("read_bytes", MARKER_NAME)]


async def test_a_new_container_is_marked_done_on_its_first_run_once_the_wait_is_over() -> None:
    world = World.make()
    await world.post(world.export())
    await reconcile(world)
    assert world.storage.stored(MARKER_NAME) is None and world.storage.stored(BEGUN_NAME) is not None
    world.clock.advance(OVERLAP)
    await reconcile(world)
    marker = world.storage.blob_bytes(MARKER_NAME)
    assert marker is not None and json.loads(marker)["done"] is True


async def test_a_file_the_release_before_writes_during_the_deployment_is_migrated_whatever_its_name() -> None:
    """The first run after the upgrade lists nothing: it notes that the listing begins OVERLAP later. A file an
    instance of the release before still writes meanwhile, at a name the listing would already have passed,
    gets its task's record like any other (listed at once, the whole container fits one page and the migration
    ended before that file existed: no record ever named it)."""
    world = legacy_world(upgraded=False)
    await reconcile(world)
    assert all(world.record(task, workspace) is None for workspace, task in FILES)
    world.clock.advance(timedelta(minutes=5))
    late = written_late_by_the_release_before(world, "task-901")
    world.clock.advance(OVERLAP)
    await reconcile(world)
    current = record(world, "ws-acme", "task-901").current_delivery
    assert current is not None and current.blob == late
    for (workspace, task), name in FILES.items():
        current = record(world, workspace, task).current_delivery
        assert current is not None and current.blob == name


async def test_the_migration_goes_page_by_page_and_resumes_from_its_marker() -> None:
    world = legacy_world()
    reports = []
    for _ in range(20):
        reports.append(await migrate(world.storage, now=world.now, page_size=3))
        if reports[-1].done:
            break
    assert len(reports) == 5 and [r.done for r in reports] == [False] * 4 + [True]
    assert all(r.listed <= 3 for r in reports)
    for (workspace, task), name in FILES.items():
        current = record(world, workspace, task).current_delivery
        assert current is not None and current.blob == name


async def test_an_older_legacy_file_of_the_same_task_is_retired_with_its_manifest_once_the_newer_is_current() -> None:
    world = legacy_world()
    # An older export of task-102 at another name, as a release that failed to retire it left it.
    newer = world.storage.stored("ws-acme/task-102/invoice-102.pdf")
    manifest = world.storage.stored("ws-acme/task-102/invoice-102.pdf.json")
    assert newer is not None and manifest is not None
    document = json.loads(manifest.data)
    document.update(delivery="0" * 64, receivedAt="2026-01-02T00:00:00Z", replaced=[])
    older_meta = {**dict(newer.metadata), "delivery": "0" * 64}
    stamp = newer.last_modified - timedelta(days=30)
    world.storage.load(
        "ws-acme/task-102/invoice-102-old.pdf", b"%PDF old", content_type="application/pdf", metadata=older_meta,
        created=stamp, last_modified=stamp,
    )  # fmt: skip
    world.storage.load(
        "ws-acme/task-102/invoice-102-old.pdf.json", json.dumps(document).encode(), content_type="application/json",
        metadata=dict(manifest.metadata), created=stamp, last_modified=stamp,
    )  # fmt: skip
    # And a file whose manifest names another task: never touched.
    world.storage.load(
        "ws-acme/task-102/stray.pdf", b"%PDF stray", content_type="application/pdf",
        metadata={**older_meta, "delivery": "1" * 64}, created=stamp, last_modified=stamp,
    )  # fmt: skip
    stray = {**document, "delivery": "1" * 64, "taskId": "task-999"}
    world.storage.load(
        "ws-acme/task-102/stray.pdf.json", json.dumps(stray).encode(), content_type="application/json",
        metadata=dict(manifest.metadata), created=stamp, last_modified=stamp,
    )  # fmt: skip
    await reconcile(world)
    found = record(world, "ws-acme", "task-102")
    assert found.current_delivery is not None and found.current_delivery.blob == "ws-acme/task-102/invoice-102.pdf"
    assert found.find("0" * 64) is not None and found.find("0" * 64).state is State.SUPERSEDED  # type: ignore[union-attr]
    assert found.retire == []  # carried out in the same run
    names = world.storage.names()
    assert "ws-acme/task-102/invoice-102-old.pdf" not in names
    assert "ws-acme/task-102/invoice-102-old.pdf.json" not in names
    assert {"ws-acme/task-102/stray.pdf", "ws-acme/task-102/stray.pdf.json"} <= set(names)
    assert found.find("1" * 64) is None


async def test_the_legacy_delivery_again_after_the_migration_is_a_duplicate() -> None:
    world = legacy_world()
    await reconcile(world)
    before = world.storage.snapshot()
    for task in ("task-101", "task-201", "task-301"):
        answer = await world.post(body(task, -1))
        assert (answer.status_code, answer.body["status"]) == (200, "duplicate"), task
    assert world.storage.snapshot() == before


async def test_the_legacy_delivery_again_before_the_migration_is_adopted_without_a_copy() -> None:
    world = legacy_world()
    name = FILES[("ws-acme", "task-101")]
    data = world.storage.blob_bytes(name)
    answer = await world.post(body("task-101"))
    assert (answer.status_code, answer.body["status"]) == (200, "stored")
    assert world.storage.blob_bytes(name) == data
    assert ("copy_from_url", name) in world.storage.calls  # the create, refused: the file is there
    current = record(world, "ws-acme", "task-101").current_delivery
    assert current is not None and current.blob == name


async def test_a_non_ascii_legacy_task_keeps_its_exact_ids_and_name() -> None:
    world = legacy_world()
    await reconcile(world)
    found = record(world, "Société Générale", "tâche №7")
    assert (found.workspace_id, found.task_id) == ("Société Générale", "tâche №7")
    answer = await world.post(body("tâche №7"))
    assert (answer.status_code, answer.body["status"]) == (200, "duplicate")


async def test_a_same_name_re_export_of_a_legacy_task_overwrites_its_file() -> None:
    for migrated_first in (True, False):
        world = legacy_world()
        if migrated_first:
            await reconcile(world)
        export = world.export("task-201", "contract.pdf", workspace_id="ws-acme")
        answer = await world.post(export)
        assert (answer.status_code, answer.body["status"]) == (200, "stored"), migrated_first
        name = FILES[("ws-acme", "task-201")]
        assert world.storage.blob_bytes(name) == export.data
        manifest = world.manifest(name)
        assert manifest is not None and manifest["delivery"] == record(world, "ws-acme", "task-201").current
        await reconcile(world)
        assert world.storage.blob_bytes(name) == export.data


async def test_a_renamed_re_export_of_a_legacy_task_retires_the_legacy_file_and_its_manifest() -> None:
    for migrated_first in (True, False):
        world = legacy_world()
        if migrated_first:
            await reconcile(world)
        export = world.export("task-101", "invoice-101-v2.pdf", workspace_id="ws-acme")
        answer = await world.post(export)
        assert (answer.status_code, answer.body["status"]) == (200, "stored")
        await reconcile(world)  # before the migration reached it, the migration retires the legacy file
        names = world.storage.names()
        assert "ws-acme/task-101/invoice-101.pdf" not in names, migrated_first
        assert "ws-acme/task-101/invoice-101.pdf.json" not in names, migrated_first
        assert world.storage.blob_bytes("ws-acme/task-101/invoice-101-v2.pdf") == export.data
        current = record(world, "ws-acme", "task-101").current_delivery
        assert current is not None and current.blob == "ws-acme/task-101/invoice-101-v2.pdf"


async def test_a_late_retry_of_a_delivery_the_previous_release_replaced_is_superseded_after_the_migration() -> None:
    world = legacy_world()
    await reconcile(world)
    before = world.storage.snapshot()
    for task in ("task-201", "task-301", "task-501"):
        answer = await world.post(body(task, 0))
        assert (answer.status_code, answer.body["status"]) == (200, "superseded"), task
    assert world.storage.snapshot() == before


async def test_a_late_retry_of_a_renamed_legacy_delivery_before_the_migration_is_undone_by_it() -> None:
    world = legacy_world()
    answer = await world.post(body("task-301", 0))  # the record never heard of offer-v2: it is stored
    assert (answer.status_code, answer.body["status"]) == (200, "stored")
    await reconcile(world)  # offer-v2's manifest lists it as replaced: offer-v2 stays current
    names = world.storage.names()
    assert "ws-acme/task-301/offer-v2.pdf" in names and "ws-acme/task-301/offer-v1.pdf" not in names
    current = record(world, "ws-acme", "task-301").current_delivery
    assert current is not None and current.blob == "ws-acme/task-301/offer-v2.pdf"


async def test_a_late_retry_of_a_same_name_legacy_delivery_before_the_migration_overwrites_the_newer_file() -> None:
    # Known limit: nothing the record knows says the legacy file is newer, so the older export wins.
    world = legacy_world()
    answer = await world.post(body("task-201", 0))
    assert (answer.status_code, answer.body["status"]) == (200, "stored")
    first = base64.b64decode(sent("task-201", 0)["data"])
    assert world.storage.blob_bytes(FILES[("ws-acme", "task-201")]) == first


async def test_the_pending_legacy_delivery_is_left_for_its_queue_message_which_then_stores_it() -> None:
    world = legacy_world()
    await reconcile(world)
    name = FILES[("ws-acme", "task-401")]
    found = record(world, "ws-acme", "task-401")
    pending = sent("task-401", 1)
    assert found.current_delivery is not None and found.current_delivery.blob == name
    assert len(found.deliveries) == 1 and manifest_status(world, name) == "pending"
    answer = await world.post(body("task-401", 1))  # what its converted queue message does
    assert (answer.status_code, answer.body["status"]) == (200, "stored")
    assert world.storage.blob_bytes(name) == base64.b64decode(pending["data"])
    assert manifest_status(world, name) == "success"
    assert [item.state for item in record(world, "ws-acme", "task-401").deliveries] == [
        State.SUPERSEDED,
        State.STORED,
    ]


def left_by_an_unfinished_async_copy(world: World, task: str, number: int, status: str) -> str:
    """The task's file as the release's asynchronous Copy Blob of its ``number``-th export left it when that copy
    was still pending, failed or was aborted: that export's metadata (its `delivery`), no bytes; its manifest says
    so too (pending, or failed)."""
    name = FILES[("ws-acme", task)]
    stored, manifest = world.storage.stored(name), world.storage.stored(f"{name}.json")
    assert stored is not None and manifest is not None
    link = sent(task, number)["body"]["exportedFileUrl"]
    metadata = {**dict(stored.metadata), "delivery": delivery_of(link)}
    world.storage.load(
        name, b"", content_type="application/pdf", metadata=metadata, copy_status=status,
        created=stored.created, last_modified=stored.last_modified,
    )  # fmt: skip
    document = {
        **json.loads(manifest.data),
        "delivery": delivery_of(link),
        "copyStatus": status.replace("aborted", "failed"),
    }
    world.storage.load(
        f"{name}.json", json.dumps(document).encode(), content_type="application/json",
        metadata={**dict(manifest.metadata), "copystatus": document["copyStatus"]},
        created=manifest.created, last_modified=manifest.last_modified,
    )  # fmt: skip
    return name


@pytest.mark.parametrize("status", ["failed", "aborted", "pending"])
@pytest.mark.parametrize("migrated", [False, True], ids=["before-the-migration", "after-it"])
async def test_a_file_whose_legacy_async_copy_did_not_succeed_is_never_taken_for_its_export(
    status: str, migrated: bool
) -> None:
    """Its metadata names the export, its bytes are not there: the migration leaves it, and the export sent
    again is copied over it (200 stored with the export's bytes), never adopted as stored with none."""
    world = legacy_world()
    name = left_by_an_unfinished_async_copy(world, "task-101", 0, status)
    if migrated:
        await reconcile(world)
        found = world.record("task-101", "ws-acme")
        assert found is None or found.current_delivery is None, found
    answer = await world.post(body("task-101", 0))
    assert (answer.status_code, answer.body["status"]) == (200, "stored"), answer.body
    assert world.storage.blob_bytes(name) == base64.b64decode(sent("task-101", 0)["data"])


async def test_on_azurite_a_blob_whose_async_copy_failed_is_copied_over_not_adopted(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """The Azure SDK reads the copy's status (x-ms-copy-status) the proxy reports as Azure does for a copy whose
    source went away: the blob the release's Copy Blob left, with the export's metadata, is not that export."""
    payload = notification(exports.publish(b"%PDF the real export"), displayName="doc.pdf")
    name = f"{payload['workspaceId']}/{payload['taskId']}/doc.pdf"
    delivery = delivery_of(payload["exportedFileUrl"])
    metadata = {"taskid": payload["taskId"], "workspaceid": payload["workspaceId"], "delivery": delivery}
    blob = destination.get_blob_client(name)
    blob.start_copy_from_url(exports.publish(b""), metadata=metadata)  # Azurite ends it at once, as "success"
    proxied.source_gone(delivery)  # Azure would say "failed"
    answer = await webhook.post(payload)
    assert (answer.status, answer.body["status"]) == (200, "stored"), answer.body
    assert blob.download_blob().readall() == b"%PDF the real export"


async def test_a_re_export_in_flight_after_the_upgrade_is_never_taken_for_a_legacy_file() -> None:
    world = World.make()
    assert (await migrate(world.storage, now=world.now)).stopped  # the first run after the upgrade: it waits
    world.clock.advance(OVERLAP)
    await world.post(world.export(display_name="A.pdf"))
    stored = world.storage.stored("ws-1/task-1/A.pdf")
    assert stored is not None
    # B's copy landed a moment ago; its record write has not yet: the migration's page sees the file.
    world.clock.advance(timedelta(minutes=5))
    # Metadata as the release before wrote it (no `copyid` or `taskkey`): only its age keeps it out.
    meta = {key: value for key, value in dict(stored.metadata).items() if key not in ("copyid", "taskkey")}
    meta["delivery"] = "2" * 64
    world.storage.load(
        "ws-1/task-1/B.pdf", b"%PDF B", content_type="application/pdf", metadata=meta,
        created=world.now, last_modified=world.now,
    )  # fmt: skip
    report = await migrate(world.storage, now=world.now)
    # Left for now, and the page is taken again next run (the marker does not move past it).
    assert report.left_recent == ["ws-1/task-1/B.pdf"] and not report.done and report.stopped
    assert world.storage.stored(MARKER_NAME) is None
    found = world.record()
    assert found is not None and found.find("2" * 64) is None and found.retire == []
    assert "ws-1/task-1/B.pdf" in world.storage.names()


class Stopped(BaseException):
    """The function host stopped the request (an instance recycled)."""


async def test_a_copy_whose_driver_stopped_before_its_record_is_never_folded_as_a_legacy_file() -> None:
    """The migration is still walking the container's pages. Export B's copy lands, then its request stops before
    the record (docs/reference.md, Known limits: a file no record names). Minutes later the migration's page
    reaches B's name: this release's file (its `copyid`), never an older legacy one, so it is not listed to retire;
    SmartDocumentor's resend of B (never answered) stores it."""
    from sim.memstore import FaultPlan

    world = legacy_world()
    assert not (await migrate(world.storage, now=world.now, page_size=3)).done
    first = world.export("task-9", "A.pdf", workspace_id="ws-zz")
    assert (await world.post(first)).body["status"] == "stored"
    world.clock.advance(timedelta(minutes=1))
    second = world.export("task-9", "B.pdf", workspace_id="ws-zz")
    task_record = record_name("ws-zz", "task-9")

    class StopAtTheRecord(FaultPlan):
        def before(self, op: str, name: str) -> None:
            if name in (task_record, "ws-zz/task-9/B.pdf.json") and op not in ("read_bytes", "read"):
                raise Stopped()
            super().before(op, name)

    world.storage.faults = StopAtTheRecord()
    with contextlib.suppress(Stopped):
        await world.post(second)
    world.storage.faults = FaultPlan()
    assert world.storage.blob_bytes("ws-zz/task-9/B.pdf") == second.data
    world.clock.advance(timedelta(minutes=5))
    for _ in range(20):
        if (await migrate(world.storage, now=world.now, page_size=3)).done:
            break
    await reconcile(world)
    assert world.storage.blob_bytes("ws-zz/task-9/B.pdf") == second.data
    again = await world.post(second)
    assert again.body["status"] == "stored", again.body
    found = record(world, "ws-zz", "task-9")
    assert found.current_delivery is not None and found.current_delivery.blob == "ws-zz/task-9/B.pdf"
    await reconcile(world)
    assert world.storage.blob_bytes("ws-zz/task-9/B.pdf") == second.data
    assert world.storage.blob_bytes("ws-zz/task-9/A.pdf") is None


async def test_one_legacy_delivery_at_two_names_enters_the_record_once_and_is_sent_again_as_a_duplicate() -> None:
    """The release before left one delivery (one link) at two names: an earlier template's copy, older. The record
    holds it once, at the newer copy's name, and the other name is retired with its manifest."""
    world = legacy_world()
    name = FILES[("ws-acme", "task-101")]
    earlier = copy_at_an_earlier_templates_name(world, name, received_at="2026-11-01T00:00:00Z")
    stored = world.storage.stored(name)
    assert stored is not None
    await reconcile(world)
    found = record(world, "ws-acme", "task-101")
    assert [item.blob for item in found.deliveries] == [name] and found.current == found.deliveries[0].delivery
    assert found.retire == []
    assert earlier not in world.storage.names() and f"{earlier}.json" not in world.storage.names()
    again = await world.post(body("task-101", -1))
    assert again.body["status"] == "duplicate" and again.body["blob"].endswith(name), again.body
    assert world.storage.blob_bytes(name) == stored.data


def replaced_file_still_there(world: World, older_delivery: str, older: str) -> StoredBlob:
    """task-102's legacy manifest now lists ``older_delivery`` as replaced, and that delivery's file and manifest
    are still at ``older`` (the release's delete of them failed), 30 days older. Returns task-102's file."""
    newer = world.storage.stored(FILES[("ws-acme", "task-102")])
    manifest = world.storage.stored(f"{FILES[('ws-acme', 'task-102')]}.json")
    assert newer is not None and manifest is not None
    document = json.loads(manifest.data)
    world.storage.load(
        manifest.name, json.dumps({**document, "replaced": [older_delivery]}).encode(),
        content_type="application/json", metadata=dict(manifest.metadata),
        created=manifest.created, last_modified=manifest.last_modified,
    )  # fmt: skip
    stamp = newer.last_modified - timedelta(days=30)
    world.storage.load(
        older, b"%PDF older", content_type="application/pdf",
        metadata={**dict(newer.metadata), "delivery": older_delivery}, created=stamp, last_modified=stamp,
    )  # fmt: skip
    world.storage.load(
        f"{older}.json", json.dumps({**document, "delivery": older_delivery, "receivedAt": stamp.isoformat()}).encode(),
        content_type="application/json", metadata=dict(manifest.metadata), created=stamp, last_modified=stamp,
    )  # fmt: skip
    return newer


async def test_a_replaced_legacy_delivery_whose_file_is_still_there_enters_the_record_once_and_is_retired() -> None:
    """The newer legacy file's manifest lists the older delivery as replaced, and the older file is still there
    (the release's delete of it failed), at a name listed after the newer one's."""
    world = legacy_world()
    older_delivery, older = "0" * 64, "ws-acme/task-102/zz-older.pdf"
    newer = replaced_file_still_there(world, older_delivery, older)
    await reconcile(world)
    found = record(world, "ws-acme", "task-102")
    assert [item.delivery for item in found.deliveries].count(older_delivery) == 1, found.deliveries
    assert found.current_delivery is not None and found.current_delivery.blob == newer.name
    assert older not in world.storage.names() and newer.name in world.storage.names()


SECOND_COPY = "new-template/ws-acme/task-301/offer-v2.pdf"


def second_copy(world: World, name: str, other: str, *, later: timedelta, replaced: list[str] | None = None) -> None:
    """Another copy of the legacy file at ``name`` (same delivery) at ``other``, ``later`` than it; its manifest's
    `replaced` list set to ``replaced`` when given (a resend the release copied again lists nothing replaced)."""
    stored, manifest = world.storage.stored(name), world.storage.stored(f"{name}.json")
    assert stored is not None and manifest is not None
    stamp = stored.last_modified + later
    document = {**json.loads(manifest.data), "receivedAt": stamp.isoformat().replace("+00:00", "Z")}
    if replaced is not None:
        document["replaced"] = replaced
    world.storage.load(
        other, stored.data, content_type="application/pdf", metadata=dict(stored.metadata),
        created=stamp, last_modified=stamp,
    )  # fmt: skip
    world.storage.load(
        f"{other}.json", json.dumps(document).encode(), content_type="application/json",
        metadata=dict(manifest.metadata), created=stamp, last_modified=stamp,
    )  # fmt: skip


def files_of(world: World, task: str) -> list[str]:
    return sorted(n for n in world.storage.names() if f"/{task}/" in n and not n.startswith(".smartdocumentor/"))


async def migrate_page_by_page(world: World, size: int = 3) -> None:
    for _ in range(40):
        if (await migrate(world.storage, now=world.now, page_size=size)).done:
            return
    raise AssertionError("the migration did not finish")


async def test_what_any_copy_of_a_legacy_delivery_says_it_replaced_is_kept_so_a_late_retry_is_superseded() -> None:
    """offer-v2 replaced offer-v1 (its manifest says so) and is also at a newer name, whose manifest lists nothing
    replaced: the record keeps the newer name and still knows offer-v1 as replaced."""
    world = legacy_world()
    name = FILES[("ws-acme", "task-301")]
    second_copy(world, name, SECOND_COPY, later=timedelta(seconds=10), replaced=[])
    await reconcile(world)
    found = record(world, "ws-acme", "task-301")
    assert found.current_delivery is not None and found.current_delivery.blob == SECOND_COPY
    late = await world.post(body("task-301", 0))
    assert (late.status_code, late.body["status"]) == (200, "superseded"), late.body
    await reconcile(world)
    assert files_of(world, "task-301") == [SECOND_COPY, f"{SECOND_COPY}.json"]


async def test_a_late_retry_stored_before_the_migration_is_undone_by_any_copy_that_replaced_it() -> None:
    """As above, with offer-v1's late retry stored before the migration reached the task: the migration makes
    offer-v2 current again (at its newer copy's name) and retires offer-v1 and the other copy, never offer-v2."""
    world = legacy_world()
    name = FILES[("ws-acme", "task-301")]
    second_copy(world, name, SECOND_COPY, later=timedelta(seconds=10), replaced=[])
    late = await world.post(body("task-301", 0))
    assert (late.status_code, late.body["status"]) == (200, "stored")
    world.clock.advance(timedelta(minutes=10))
    await reconcile(world)
    found = record(world, "ws-acme", "task-301")
    assert found.current_delivery is not None and found.current_delivery.blob == SECOND_COPY
    assert files_of(world, "task-301") == [SECOND_COPY, f"{SECOND_COPY}.json"]
    again = await world.post(body("task-301", 1))
    assert again.body["status"] == "duplicate" and again.body["blob"].endswith(SECOND_COPY), again.body


async def test_a_copy_of_a_migrated_delivery_on_a_later_page_is_retired_and_the_record_keeps_the_first() -> None:
    world = legacy_world()
    name = FILES[("ws-acme", "task-101")]
    later_page = "zzz-new-template/ws-acme/task-101/invoice-101.pdf"
    second_copy(world, name, later_page, later=timedelta(days=1))
    world.clock.advance(timedelta(days=2))
    await migrate_page_by_page(world)
    await reconcile(world)
    found = record(world, "ws-acme", "task-101")
    assert [item.blob for item in found.deliveries] == [name] and found.retire == []
    assert files_of(world, "task-101") == [name, f"{name}.json"]
    again = await world.post(body("task-101", -1))
    assert again.body["status"] == "duplicate" and again.body["blob"].endswith(name), again.body


async def test_the_file_of_a_replaced_delivery_on_a_later_page_is_retired() -> None:
    """invoice-102's manifest lists delivery 0…0 as replaced; that delivery's own file sorts onto a later page."""
    world = legacy_world()
    older = "zz-old-template/ws-acme/task-102/invoice-102.pdf"
    newer = replaced_file_still_there(world, "0" * 64, older)
    await migrate_page_by_page(world)
    await reconcile(world)
    found = record(world, "ws-acme", "task-102")
    assert found.current_delivery is not None and found.current_delivery.blob == newer.name
    assert older not in world.storage.names() and f"{older}.json" not in world.storage.names()
    assert newer.name in world.storage.names()


def test_the_records_live_under_the_reserved_prefix() -> None:
    assert record_name("ws-acme", "task-101").startswith(".smartdocumentor/")
    assert MARKER_NAME.startswith(".smartdocumentor/")


@pytest.mark.parametrize("then", ["failed", "superseded"])
async def test_a_legacy_file_at_the_name_of_a_re_export_that_never_landed_is_folded_and_retired_later(
    then: str,
) -> None:
    """A same-name re-export is accepted over the legacy file, and its copy never lands: it fails (its source
    gone), or is still copying when a renamed re-export is stored. The legacy bytes are still at that name: the
    migration folds them (current while nothing later is stored; else superseded and retired), so the renamed
    re-export ends as the task's only file, and a late retry of what the release had replaced is superseded."""
    world = legacy_world()
    name = FILES[("ws-acme", "task-201")]
    legacy = world.storage.blob_bytes(name)
    export = world.export("task-201", "contract.pdf", workspace_id="ws-acme")
    if then == "failed":
        world.sources.remove("ws-acme/task-201/export-1.pdf")
    else:
        world.faults.fail_before("copy_from_url", name, times=50)
    answer = await world.post(export)
    assert answer.status_code == (502 if then == "failed" else 503), answer.body
    world.faults.heal()
    assert world.storage.blob_bytes(name) == legacy
    if then == "failed":
        world.clock.advance(timedelta(minutes=30))
        await reconcile(world)
        current = record(world, "ws-acme", "task-201").current_delivery
        assert current is not None and current.blob == name, current
        late = await world.post(body("task-201", 0))  # what the release replaced under that same name
        assert (late.status_code, late.body["status"]) == (200, "superseded"), late.body
        assert world.storage.blob_bytes(name) == legacy
    world.clock.advance(timedelta(minutes=1))
    renamed = world.export("task-201", "contract-v2.pdf", workspace_id="ws-acme")
    assert (await world.post(renamed)).body["status"] == "stored"
    for _ in range(3):
        world.clock.advance(timedelta(days=1))
        await reconcile(world)
    assert files_of(world, "task-201") == ["ws-acme/task-201/contract-v2.pdf", "ws-acme/task-201/contract-v2.pdf.json"]


async def test_another_legacy_copy_of_a_delivery_sent_again_before_the_migration_is_retired() -> None:
    """The release left one delivery at two names (an earlier template's copy); sent again after the upgrade, it
    is recorded at today's name: the migration lists the other copy to retire, with its manifest."""
    world = legacy_world()
    name = FILES[("ws-acme", "task-101")]
    earlier = copy_at_an_earlier_templates_name(world, name)
    stored = world.storage.stored(name)
    assert stored is not None
    again = await world.post(body("task-101", -1))
    assert (again.status_code, again.body["status"]) == (200, "stored"), again.body
    for _ in range(3):
        world.clock.advance(timedelta(days=1))
        await reconcile(world)
    assert earlier not in world.storage.names() and f"{earlier}.json" not in world.storage.names()
    assert world.storage.blob_bytes(name) == stored.data


@pytest.mark.parametrize("held", ["container policy", "lease on one manifest"])
async def test_a_legacy_manifest_that_cannot_be_labelled_does_not_stop_the_migration(held: str) -> None:
    """Labelling a legacy manifest with its delivery is an overwrite: a container policy (creates still pass) or
    a lease on one manifest refuses it. The manifest stays as it is; every task still gets its record."""
    from receiver.storage import Leased

    world = legacy_world()
    leased = f"{FILES[('ws-acme', 'task-102')]}.json"
    if held == "container policy":
        world.storage.policy = "retention policy"
    else:
        real_put = world.storage.put

        async def put(name: str, data: bytes, **kwargs: Any) -> Any:
            if name == leased:
                raise Leased(f"{name} is leased", code="LeaseIdMissing", status=412)
            return await real_put(name, data, **kwargs)

        world.storage.put = put  # type: ignore[method-assign]
    report = await reconcile_run(runtime=world.runtime, now=world.now, environ={})
    assert report.migration is not None and report.migration.done, report.migration
    assert [task for (workspace, task) in FILES if world.record(task, workspace) is None] == []


async def test_legacy_files_written_in_the_last_two_minutes_are_migrated_by_a_later_run() -> None:
    """The first run after a deployment may see files an instance of the release before wrote a moment ago: they
    are left for now, and the page is taken again (the marker does not move past them) until they are older."""
    world = legacy_world(minutes_after=1)
    await reconcile(world)
    assert world.storage.stored(MARKER_NAME) is None
    world.clock.advance(timedelta(minutes=10))
    await reconcile(world)
    assert json.loads(world.storage.blob_bytes(MARKER_NAME) or b"{}")["done"] is True
    assert [task for (workspace, task) in FILES if world.record(task, workspace) is None] == []


async def test_what_a_legacy_copy_left_at_an_earlier_templates_name_replaced_is_entered_though_it_was_sent_again() -> (
    None
):
    """task-501 was stored under the release's other template; sent again after the upgrade, it is copied to
    today's name and recorded there. The legacy copy is retired, and what its manifest says it replaced enters
    the record: a late retry of that export is superseded, never the newest."""
    world = legacy_world()
    legacy_name = FILES[("ws-acme", "task-501")]
    again = await world.post(body("task-501", -1))
    assert (again.status_code, again.body["status"]) == (200, "stored"), again.body
    world.clock.advance(timedelta(minutes=10))
    await reconcile(world)
    late = await world.post(body("task-501", 0))  # report.pdf: the release replaced it by report-final
    assert (late.status_code, late.body["status"]) == (200, "superseded"), late.body
    for _ in range(2):
        world.clock.advance(timedelta(days=1))
        await reconcile(world)
    kept = [n for n in world.storage.names() if "501" in n and not n.startswith(".") and not n.endswith(".json")]
    assert kept == [again.body["blob"].split("/", 1)[1]] and legacy_name not in kept, kept


async def test_check_on_a_migrated_file_whose_manifest_describes_a_pending_export_names_a_step_that_works() -> None:
    """task-401's legacy manifest describes a later export still copying at the upgrade; that export never
    ends. `ops check` names the mismatch, and as the next step what can rewrite it (the document sent again),
    never a repair that has no notification to write from."""
    from .test_ops import Ops

    ops = Ops()
    ops.world = legacy_world()
    await reconcile(ops.world)
    ops.world.clock.advance(timedelta(days=40))
    await reconcile(ops.world)
    checked = await ops("check", "--task", "task-401", "--workspace", "ws-acme")
    assert "manifest ws-acme/task-401/scan.pdf.json describes another delivery" in checked.out, checked.out
    assert "keeps no notification" in checked.out and "--repair (writes it again" not in checked.out, checked.out


async def test_an_earlier_release_queue_message_whose_manifest_holds_nan_still_finishes_its_export() -> None:
    """The earlier release's Python json wrote NaN (and 1e999 as Infinity) into its messages: a sender's body is
    refused for them, but a message that release queued is not a sender's body, and its export is stored."""
    from receiver.verification import verify_copy

    world = legacy_world()
    await reconcile(world)
    name = FILES[("ws-acme", "task-401")]
    pending = sent("task-401", 1)
    manifest = {**json.loads(world.storage.blob_bytes(f"{name}.json") or b"{}"), "metadata": {"weight": float("nan")}}
    message = json.dumps({"sourceUrl": pending["body"]["exportedFileUrl"], "manifest": manifest}).encode()
    assert b"NaN" in message
    assert await verify_copy(message, runtime=world.runtime, now=world.now) == "stored"
    assert world.storage.blob_bytes(name) == base64.b64decode(pending["data"])


async def test_a_legacy_copy_of_a_delivery_still_copying_elsewhere_waits_for_it_then_is_retired() -> None:
    """task-501's legacy file is at the release's other template's name; its export, sent again after the upgrade
    (staged at today's name), is answered 202. The migration takes that page again until the copy ends (the
    marker does not move past it), then retires the legacy copy: the task keeps one file."""
    world = legacy_world(sync_copy_max_mib=0, copy_wait_seconds=0)
    legacy_name = FILES[("ws-acme", "task-501")]
    again = await world.post(body("task-501", -1))
    assert (again.status_code, again.body["status"]) == (202, "copying"), again.body
    await reconcile(world)
    assert world.storage.stored(MARKER_NAME) is None  # the page is taken again
    assert again.verification is not None
    assert await verify_copy(again.verification.encode(), runtime=world.runtime, now=world.now) == "stored"
    for _ in range(3):
        world.clock.advance(timedelta(days=1))
        await reconcile(world)
    assert json.loads(world.storage.blob_bytes(MARKER_NAME) or b"{}")["done"] is True
    names = [n for n in world.storage.names() if "501" in n and not n.startswith(".")]
    assert legacy_name not in names and f"{legacy_name}.json" not in names, names


async def find(world: World, *argv: str) -> tuple[int, str]:
    from ops.cli import run

    out, err = io.StringIO(), io.StringIO()
    code = await run(
        ["find", *argv], environ={}, out=out, err=err, storage=world.storage, settings=world.settings, now=world.now
    )
    return code, out.getvalue() + err.getvalue()


def fill(world: World, count: int, prefix: str = "aaa-filler") -> None:
    """``count`` blobs that no task names, listed before the fixture's files."""
    stamp = world.now - timedelta(days=1)
    for number in range(count):
        world.storage.load(
            f"{prefix}/{number:06d}.bin", b"x", content_type="application/octet-stream", metadata={},
            created=stamp, last_modified=stamp,
        )  # fmt: skip


async def test_ops_find_before_the_upgrade_reached_a_task_names_its_legacy_file_and_when_it_is_folded() -> None:
    world = legacy_world()
    fill(world, 4500)
    for scope in ((), ("--workspace", "ws-acme")):  # the same answer, the workspace given or not
        code, said = await find(world, "--task", "task-101", *scope)
        assert code == NOT_FOUND, said
        assert "upgrade from the release without task records has not finished" in said, said
        assert f"file of the release before: {FILES[('ws-acme', 'task-101')]}" in said, said
        folded = f"the reconciliation builds the task's record from {FILES[('ws-acme', 'task-101')]} in about 3"
        assert f"nothing to do by hand: {folded}" in said, said
    data = json.loads((await find(world, "--task", "task-101", "--json"))[1])
    assert data["legacyFiles"] == [{"name": FILES[("ws-acme", "task-101")], "leftAsIs": None, "newerPending": False}]
    assert not data["found"] and data["next"][0].startswith("nothing to do by hand"), data
    code, said = await find(world, "--task", "tâche №7", "--workspace", "Société Générale")
    assert code == NOT_FOUND and FILES[("Société Générale", "tâche №7")] in said, said
    await reconcile(world)
    await reconcile(world)
    await reconcile(world)
    code, said = await find(world, "--task", "task-101", "--workspace", "ws-acme")
    assert code == OK and "<- current" in said and "upgrade" not in said, said
    code, said = await find(world, "--task", "nope")
    assert code == NOT_FOUND and "upgrade" not in said, said


async def test_ops_find_names_a_legacy_file_the_upgrade_leaves_as_it_is_and_why() -> None:
    world = legacy_world()
    name = FILES[("ws-acme", "task-101")]
    manifest = world.storage.stored(f"{name}.json")
    assert manifest is not None
    failed = {**json.loads(manifest.data), "copyStatus": "failed"}  # its own copy failed before the upgrade
    world.storage.load(
        f"{name}.json", json.dumps(failed).encode(), content_type="application/json",
        metadata={**dict(manifest.metadata), "copystatus": "failed"}, created=manifest.created,
        last_modified=manifest.last_modified,
    )  # fmt: skip
    code, said = await find(world, "--task", "task-101")
    assert code == NOT_FOUND, said
    assert f"{name} (the upgrade leaves it as it is: its manifest says failed)" in said, said
    assert "next: the file(s) stay as they are and no record names them" in said and "export" in said, said
    code, said = await find(world, "--task", "task-401")  # the file folds; the newer export it names copies
    assert f"{FILES[('ws-acme', 'task-401')]} (its manifest describes a newer export whose copy was pending)" in said
    assert "a newer export a manifest describes is finished by the release before's queue message" in said


async def test_ops_find_during_the_upgrades_wait_says_when_its_first_page_builds_the_record() -> None:
    world = legacy_world(upgraded=False)
    code, said = await find(world, "--task", "task-101")
    assert code == NOT_FOUND and "in about 1 run(s) after the first run's 15-minute wait" in said, said
    await reconcile(world)  # the first run after the upgrade: it lists nothing for OVERLAP
    begins = world.now + OVERLAP
    code, said = await find(world, "--task", "task-101", "--json")
    assert json.loads(said)["legacyListingBegins"] == begins.replace(microsecond=0).isoformat(), said  # (whole seconds)
    code, said = await find(world, "--task", "task-101")
    assert code == NOT_FOUND and f"in about 1 run(s) after {begins:%H:%M:%S} UTC" in said, said
    code, said = await find(world, "--workspace", "ws-acme")  # not a wrong workspace: the upgrade has not reached it
    assert code == NOT_FOUND and "has not finished in this container (it waits until" in said, said
    world.clock.advance(OVERLAP)
    code, said = await find(world, "--task", "task-101")
    assert f"its wait ended at {begins:%Y-%m-%d %H:%M:%S} UTC: the next run lists its first page" in said, said
    await reconcile(world)
    code, said = await find(world, "--task", "task-101")
    assert code == OK, said
    code, said = await find(world, "--workspace", "ws-nobody")  # the upgrade has ended: a wrong workspace is just that
    assert code == NOT_FOUND and "upgrade" not in said, said


async def test_ops_find_workspace_still_answers_when_the_upgrades_marker_cannot_be_read() -> None:
    """No record found, and the upgrade's marker answers 503: the answer "no task records" stands, with the look
    that failed said beside it."""
    from receiver.storage import Unavailable

    world = legacy_world()
    real = world.storage.read_bytes

    async def read_bytes(name: str, **kwargs: Any) -> Any:
        if name == MARKER_NAME:
            raise Unavailable("Azure Storage answered 503 ServerBusy")
        return await real(name, **kwargs)

    world.storage.read_bytes = read_bytes  # type: ignore[method-assign]
    code, said = await find(world, "--workspace", "ws-acme")
    assert code == NOT_FOUND and "No task records for workspace ws-acme." in said, said
    assert "could not tell whether the upgrade from the release without task records has ended" in said, said


async def test_ops_find_says_how_far_it_looked_for_a_task_the_unfinished_upgrade_may_still_reach() -> None:
    world = legacy_world(upgraded=False)
    fill(world, 10_500)  # before the first run: no marker, and more blobs than one look reads
    code, said = await find(world, "--task", "task-101")
    assert code == NOT_FOUND and "no run of this release has begun it yet: the first starts a 15-minute wait" in said
    assert "not in" not in said and "in the next 10000 blobs it has not folded; the rest is not looked at" in said
    data = json.loads((await find(world, "--task", "task-101", "--json"))[1])
    assert data["legacyFiles"] == [] and data["legacyScanned"] == 10_000 and not data["legacyScanWhole"], data
    await migrate(world.storage, now=world.now)  # the first run: it lists nothing yet
    begins = world.now + OVERLAP
    code, said = await find(world, "--task", "task-101")
    assert code == NOT_FOUND and f"it waits until {begins:%Y-%m-%d %H:%M:%S} UTC, 15 minutes after" in said, said
    assert "one it passed and left" not in said, said  # it has passed nothing yet
    world.clock.advance(OVERLAP)
    for _ in range(5):  # 2000 blobs a run: past the filler, not yet the task's files
        await migrate(world.storage, now=world.now)
    code, said = await find(world, "--task", "nope")
    assert code == NOT_FOUND and "in what it has not folded (one it passed and left as it is is named" in said, said
    assert "next: no file of the release before names this task" in said and "check the task id" in said, said


def with_manifest_status(world: World, name: str, status: str) -> None:
    """The legacy file's own manifest (same delivery) says ``status``: the migration leaves the file as it is."""
    manifest = world.storage.stored(f"{name}.json")
    assert manifest is not None
    document = {**json.loads(manifest.data), "copyStatus": status}
    world.storage.load(
        f"{name}.json", json.dumps(document).encode(), content_type="application/json",
        metadata={**dict(manifest.metadata), "copystatus": status}, created=manifest.created,
        last_modified=manifest.last_modified,
    )  # fmt: skip


def also_at(world: World, name: str, to: str, *, delivery: str, older: timedelta = timedelta(0)) -> None:
    """The legacy file ``name`` and its manifest also at ``to``, as another delivery (``older`` than it)."""
    for suffix in ("", ".json"):
        blob = world.storage.stored(name + suffix)
        assert blob is not None
        data, meta = blob.data, {**dict(blob.metadata), **({} if suffix else {"delivery": delivery})}
        if suffix:
            data = json.dumps({**json.loads(data), "delivery": delivery}).encode()
        world.storage.load(
            to + suffix, data, content_type=blob.headers.content_type, metadata=meta,
            created=blob.created - older, last_modified=blob.last_modified - older,
        )  # fmt: skip


async def test_ops_find_during_the_upgrade_says_which_of_a_tasks_files_it_folds_and_which_it_leaves() -> None:
    world = legacy_world()
    name = FILES[("ws-acme", "task-101")]
    also_at(world, name, f"old-template/{name}", delivery="e" * 64, older=timedelta(days=30))
    with_manifest_status(world, name, "failed")  # the newest export's own copy failed before the upgrade
    code, said = await find(world, "--task", "task-101")
    assert code == NOT_FOUND, said
    assert f"{name} (the upgrade leaves it as it is: its manifest says failed)" in said, said
    assert f"builds the task's record from old-template/{name} in about 1 run(s)" in said, said
    assert "it leaves the other file(s) named as they are" in said, said
    await reconcile(world)
    current = record(world, "ws-acme", "task-101").current_delivery
    assert current is not None and current.blob == f"old-template/{name}"


async def test_ops_find_looks_past_a_file_the_upgrade_leaves_for_one_it_folds_on_a_later_page() -> None:
    world = legacy_world()
    name = FILES[("ws-acme", "task-101")]
    also_at(world, name, f"zz-renamed/{name}", delivery="f" * 64)
    fill(world, 2500, prefix="wz-filler")  # between the two
    with_manifest_status(world, name, "pending")
    code, said = await find(world, "--task", "task-101")
    assert code == NOT_FOUND and f"builds the task's record from zz-renamed/{name} in about 2 run(s)" in said, said
    for _ in range(3):
        await migrate(world.storage, now=world.now)
    current = record(world, "ws-acme", "task-101").current_delivery
    assert current is not None and current.blob == f"zz-renamed/{name}"


async def test_ops_find_names_a_legacy_file_whose_asynchronous_copy_did_not_finish() -> None:
    world = legacy_world()
    name = left_by_an_unfinished_async_copy(world, "task-101", 0, "pending")
    await migrate(world.storage, now=world.now, page_size=3)
    code, said = await find(world, "--task", "task-101", "--workspace", "ws-acme")
    assert code == NOT_FOUND, said
    assert f"{name} (the upgrade leaves it as it is: Azure reports its copy pending" in said, said
    assert "next: the file(s) stay as they are" in said and "queue message" in said, said


async def test_ops_find_keeps_its_no_record_answer_when_the_look_for_legacy_files_fails() -> None:
    world = legacy_world()
    world.faults.fail_before("list", "", times=1)  # the look's listing (the whole container), not the records'
    code, said = await find(world, "--task", "task-101")
    assert code == NOT_FOUND and "No task record for task task-101" in said, said
    assert "could not look for files of the release before the task record" in said, said
    assert "next: check the task id" in said, said


def with_a_cut_id_file(world: World) -> None:
    """A legacy file at ws-acme/long/x.pdf whose task id ("é" * 200) the release cut on a whole escape: 510."""
    blob = world.storage.stored(FILES[("ws-acme", "task-102")])
    assert blob is not None
    world.storage.load(
        "ws-acme/long/x.pdf", blob.data, content_type="application/pdf",
        metadata={**dict(blob.metadata), "taskid": ("%C3%A9" * 200)[:510], "delivery": "d" * 64},
        created=blob.created, last_modified=blob.last_modified,
    )  # fmt: skip


async def test_the_migration_leaves_a_file_whose_non_ascii_id_was_cut_on_a_whole_escape_and_ops_names_it() -> None:
    """The release cut an id's metadata at 512 characters on a whole escape: 510 here. Taken as whole, the file
    would be folded under a task nobody sent (the first 85 characters of the id)."""
    world = legacy_world()
    task = "é" * 200
    with_a_cut_id_file(world)
    code, said = await find(world, "--task", task)
    assert code == NOT_FOUND and "ws-acme/long/x.pdf (the upgrade leaves it as it is: its ids may have been cut" in said
    report = await migrate(world.storage, now=world.now)
    assert "ws-acme/long/x.pdf" in report.left_doubtful, report
    assert world.record("é" * 85, "ws-acme") is None


def with_manifest_over_a_mib(world: World, name: str) -> None:
    """The release before took bodies up to 100 MiB and kept their extra fields in the manifest: one over the
    1 MiB this release reads."""
    manifest = world.storage.stored(f"{name}.json")
    assert manifest is not None
    document = {**json.loads(manifest.data), "ocrText": "x" * (1536 * 1024)}
    world.storage.load(
        f"{name}.json", json.dumps(document).encode(), content_type="application/json",
        metadata=dict(manifest.metadata), created=manifest.created, last_modified=manifest.last_modified,
    )  # fmt: skip


async def test_a_legacy_manifest_over_a_mib_leaves_its_file_as_it_is_and_the_migration_goes_on() -> None:
    """One manifest too large to read made every run's page fail: no task on it or after it ever got a record.
    Now its file is left as it is (named in the run's report), the others are folded, the migration ends, and
    `ops find` says why that task has no record instead of "nothing to do"."""
    world = legacy_world()
    big = FILES[("ws-acme", "task-102")]
    with_manifest_over_a_mib(world, big)
    code, said = await find(world, "--task", "task-102", "--workspace", "ws-acme")
    assert code == NOT_FOUND and "larger than the 1 MiB" in said and "nothing to do by hand" not in said, said
    report = await reconcile_run(runtime=world.runtime, now=world.now, environ={})
    assert report.migration_failed is None and report.migration is not None, report
    assert big in report.migration.left_doubtful and report.migration.done, report.migration
    missing = [task for (workspace, task) in FILES if world.record(task, workspace) is None]
    assert missing == ["task-102"], missing
    assert world.storage.stored(big) is not None and world.storage.stored(f"{big}.json") is not None


async def test_a_task_whose_newest_legacy_manifest_cannot_be_read_is_left_whole_never_made_current_from_an_older() -> (
    None
):
    """The newest file's manifest (over 1 MiB) lists an older delivery as replaced, whose file is still there: not
    read, the older one would be folded alone as the task's current file. The task is left whole, and `ops find`
    names both files, during the upgrade and once it has ended (its marker keeps them)."""
    world = legacy_world()
    older_delivery, older = "0" * 64, "ws-acme/task-102/zz-older.pdf"
    newer = replaced_file_still_there(world, older_delivery, older)
    with_manifest_over_a_mib(world, newer.name)
    code, said = await find(world, "--task", "task-102", "--workspace", "ws-acme")
    assert code == NOT_FOUND and "nothing to do by hand" not in said and older in said, said
    await reconcile(world)
    assert world.record("task-102", "ws-acme") is None
    assert world.storage.stored(newer.name) is not None and world.storage.stored(older) is not None
    code, said = await find(world, "--task", "task-102", "--workspace", "ws-acme")
    assert code == NOT_FOUND and "upgrade from the release without task records has ended" in said, said
    assert newer.name in said and "larger than the 1 MiB" in said and older in said, said
    data = json.loads((await find(world, "--task", "task-102", "--json"))[1])
    assert {file["name"] for file in data["legacyFiles"]} == {newer.name, older}, data


async def test_a_legacy_manifest_in_the_archive_tier_leaves_its_file_as_it_is_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from receiver.storage import Misconfigured

    world = legacy_world()
    name = FILES[("ws-acme", "task-102")]
    real = world.storage.read_bytes

    async def read_bytes(blob: str, *, max_bytes: int) -> Any:
        if blob == f"{name}.json":
            raise Misconfigured(f"{blob} is in the Archive tier", code="BlobArchived", status=409)
        return await real(blob, max_bytes=max_bytes)

    monkeypatch.setattr(world.storage, "read_bytes", read_bytes)
    await reconcile(world)
    assert world.record("task-102", "ws-acme") is None and world.record("task-101", "ws-acme") is not None
    code, said = await find(world, "--task", "task-102", "--workspace", "ws-acme")
    assert code == NOT_FOUND and "Archive tier" in said and "export the document again" in said, said


async def test_ops_find_once_the_upgrade_ended_names_a_left_file_whose_id_was_cut_by_the_task_id_as_sent() -> None:
    """The cut-id file (ids may have been cut at 512): `ops find --task <the id as SmartDocumentor sends it>`
    names it during the upgrade (from the listing) and once it ended (from the marker's note, which holds the
    cut id)."""
    world = legacy_world()
    task = "é" * 200
    with_a_cut_id_file(world)
    code, said = await find(world, "--task", task)
    assert code == NOT_FOUND and "ws-acme/long/x.pdf" in said, said  # during the upgrade: named
    report = await migrate(world.storage, now=world.now)
    assert report.done and "ws-acme/long/x.pdf" in report.left_doubtful, report
    code, said = await find(world, "--task", task)
    assert code == NOT_FOUND and "ws-acme/long/x.pdf" in said, said  # once it ended: the same command


async def test_the_migrations_marker_with_200_long_non_ascii_notes_stays_readable_by_the_next_run() -> None:
    """The marker's notes (name, ids, why) are JSON, ASCII-escaped, and the marker is read with a 1 MiB limit; a
    blob name may hold 1024 characters, a non-ASCII one 6 bytes each escaped. 200 such left files: the notes stay
    within their 256 KiB (the rest counted in leftMore), and the next run reads the marker."""
    world = legacy_world()
    stamp = world.now - timedelta(days=1)
    for number in range(200):
        name = f"ws-acme/t{number:03d}/" + "文" * 1000 + ".pdf"
        world.storage.load(
            name, b"%PDF", content_type="application/pdf",
            metadata={"taskid": f"t{number:03d}", "workspaceid": "ws-acme", "delivery": f"{number:064d}"},
            created=stamp, last_modified=stamp,
        )  # fmt: skip
        manifest = {"delivery": f"{number:064d}", "copyStatus": "failed"}
        world.storage.load(
            f"{name}.json", json.dumps({**manifest, "taskId": f"t{number:03d}", "workspaceId": "ws-acme"}).encode(),
            content_type="application/json", metadata={"receiverkind": "manifest"}, created=stamp, last_modified=stamp,
        )  # fmt: skip
    # each manifest made unreadable (over the 1 MiB read): each file left as it is, noted in the marker
    for number in range(200):
        name = f"ws-acme/t{number:03d}/" + "文" * 1000 + ".pdf"
        with_manifest_over_a_mib(world, name)
    fill(world, 1, prefix="zzz-after")
    report = await migrate(world.storage, now=world.now, page_size=5000)
    assert len(report.left_notes) == 200, len(report.left_notes)
    marker = world.storage.blob_bytes(MARKER_NAME)
    assert marker is not None
    size = len(marker)
    assert size <= 512 * 1024, size
    ran = await reconcile_run(runtime=world.runtime, now=world.now, environ={})
    assert ran.migration_failed is None, f"marker {size} bytes: {ran.migration_failed}"
    state = json.loads(marker)
    assert len(state["left"]) + state["leftMore"] == 200 and state["leftMore"] > 0, (len(state["left"]), size)


async def test_ops_find_names_a_file_the_upgrade_left_for_a_task_it_gave_a_record_from_another_page() -> None:
    """task-102's newest file's manifest cannot be read (over 1 MiB; it lists the older delivery as
    replaced), and the older file is on an earlier page: that page folds it alone (documented: the task is left
    whole only on that page), so the task's record names the replaced export current. `ops find` for that task
    names the newer file the upgrade left (from the marker), with the next step."""
    world = legacy_world()
    older_delivery, older = "0" * 64, "ws-acme/task-102/a-older.pdf"
    newer = replaced_file_still_there(world, older_delivery, older)
    with_manifest_over_a_mib(world, newer.name)
    fill(world, 2500, prefix="ws-acme/task-102/b-filler")  # between the two: the newer one on the next page
    for _ in range(6):
        report = await migrate(world.storage, now=world.now)
        if report.done:
            break
    assert report.done
    found = world.record("task-102", "ws-acme")
    assert found is not None and found.current_delivery is not None
    assert found.current_delivery.blob == older  # the documented cross-page limit
    marker = json.loads(world.storage.blob_bytes(MARKER_NAME) or b"{}")
    assert newer.name in {note["name"] for note in marker["left"]}, marker
    code, said = await find(world, "--task", "task-102", "--workspace", "ws-acme")
    assert code == NOT_FOUND and newer.name in said and "export the document again" in said, said


async def test_ops_find_stops_naming_a_left_file_once_a_re_export_overwrote_it_and_the_record_names_it() -> None:
    """The advice `find` gives for the left newer file is 'export the document again'. Done: the re-export (same
    display name, so the same name) overwrites the left file and the record names it stored and current; `ops find`
    no longer names it as left (the marker's note stays: find checks the file against the record)."""
    world = legacy_world()
    older_delivery, older = "0" * 64, "ws-acme/task-102/a-older.pdf"
    newer = replaced_file_still_there(world, older_delivery, older)
    with_manifest_over_a_mib(world, newer.name)
    fill(world, 2500, prefix="ws-acme/task-102/b-filler")
    for _ in range(6):
        report = await migrate(world.storage, now=world.now)
        if report.done:
            break
    assert report.done
    code, said = await find(world, "--task", "task-102", "--workspace", "ws-acme")
    assert code == NOT_FOUND and newer.name in said, said
    # The next step followed: exported again from SmartDocumentor (invoice-102.pdf: the same name).
    export = world.export("task-102", newer.name.rsplit("/", 1)[1], workspace_id="ws-acme")
    answer = await world.post(export)
    assert answer.status_code == 200, answer.body
    found = world.record("task-102", "ws-acme")
    assert found is not None and found.current_delivery is not None
    assert found.current_delivery.blob == newer.name and world.storage.blob_bytes(newer.name) == export.data
    await reconcile(world)
    code, said = await find(world, "--task", "task-102", "--workspace", "ws-acme")
    assert "no record names it" not in said and code == OK, (code, said)


@pytest.mark.parametrize("marker", ["503 on its read", "over the 1 MiB read"])
async def test_ops_find_for_a_task_with_a_record_still_tells_its_story_when_the_upgrade_marker_cannot_be_read(
    marker: str,
) -> None:
    """task-101 has a record (the upgrade ended). Its `ops find` reads the migration marker too (for files the
    upgrade left): a marker that cannot be read (a 503, or one over the 1 MiB read, edited by hand) leaves the
    task's story as it is, instead of failing the command."""
    world = legacy_world()
    await reconcile(world)
    assert world.record("task-101", "ws-acme") is not None
    if marker == "503 on its read":
        world.faults.fail_before("read_bytes", MARKER_NAME, times=5)
    else:
        stored = world.storage.stored(MARKER_NAME)
        assert stored is not None
        state = json.loads(stored.data)
        state["left"] = [{"name": "x" * 1024, "why": "é" * 2000, "taskId": "t", "workspaceId": "w"}] * 200
        world.storage.load(
            MARKER_NAME, json.dumps(state).encode(), content_type="application/json", metadata={},
            created=stored.created, last_modified=stored.last_modified,
        )  # fmt: skip
        assert len(world.storage.blob_bytes(MARKER_NAME) or b"") > 1024 * 1024
    code, said = await find(world, "--task", "task-101", "--workspace", "ws-acme")
    assert "invoice-101.pdf" in said, (code, said)
