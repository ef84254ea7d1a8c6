"""Upgrading a container the release before the task record wrote: task records from what is there.

That release kept no record: one file per task at the template's name, its manifest ``<name>.json``
(metadata ``receiverkind=manifest``, or ``copystatus`` on older ones) and, in the file's metadata,
``taskid``, ``workspaceid`` (non-ASCII as percent-encoded UTF-8, ``%`` itself encoded: it decodes
back exactly) and ``delivery``. The reconciliation calls :func:`migrate` once a run; each call
lists one bounded page of the container with metadata and folds what it finds into the task
records, by compare-and-swap like every other change, then keeps where it stopped in
``.smartdocumentor/migration.json`` (``{"done": bool, "marker": ...}``, written If-Match too).
Once a whole pass is done, a run reads that marker and nothing else. The first page waits OVERLAP after the
first run of this release (see BEGUN_NAME).

The rules, for each file whose metadata holds ``taskid``, ``workspaceid`` and ``delivery`` (and whose
asynchronous copy, if Azure still reports one, succeeded: a pending, failed or aborted one left the metadata
without the bytes, and is left alone):

- its manifest beside it, when it describes the same delivery, must say ``success``; ``pending`` or
  ``failed`` leaves the file alone (an old queue message, converted by
  :func:`receiver.verification.read_message`, finishes it through the new code). A manifest about
  another delivery (a copy over it that never landed) does not stop the file: the file holds its
  own delivery whole;
- ids come from the file's metadata, decoded, never from the folded index tags; a value that may
  have been cut (at the 512 characters the release kept) counts only when the manifest of the same
  delivery spells the same ids; anything doubtful is left alone;
- a delivery the record already knows is not added again, and a file with this release's ``copyid`` or
  ``taskkey`` metadata is never folded (a copy whose driver stopped before its record: the task's next
  delivery decides it, never as an older legacy file); a legacy file at a name the record knows (a delivery
  since the upgrade whose copy never landed there) is folded as any other, older than that delivery;
- a file written in the last two minutes (``IN_FLIGHT``) is left, and its page taken again next run (an
  instance of the release before may still write during a deployment); so is a legacy copy of a delivery sent
  again since the upgrade and still copying at another name (kept or retired once that copy ends);
- one delivery at two names enters the record once, at its newest copy's name when both are on one page
  (with every copy's ``replaced`` list), else at the copy the record holds; every other copy of a delivery
  the record holds stored or superseded (migrated, or sent again since the upgrade) is listed to retire, and
  what its manifest lists as replaced enters the record;
- the record's current file stays current when a delivery after the upgrade made it so: the legacy
  file is older, ``superseded`` and listed to ``retire``. Otherwise the newest legacy file (the
  manifest's ``receivedAt``, else the file's last-modified) is ``stored`` and current, and older
  legacy files of the same task are ``superseded`` and listed to retire. Nothing is deleted here:
  the record's retire list is carried out by the reconciliation's sweep (If-Match, only while the
  name still holds that delivery);
- the deliveries a legacy manifest lists as ``replaced`` enter the record as ``superseded`` (before
  the file's own), so a late retry of one is answered ``superseded`` and never replaces the newer file;
- a legacy manifest of a migrated file gets the ``delivery`` metadata the release did not write
  (same bytes, If-Match), so retiring it later removes the manifest with its file.

Snapshots the release sometimes left are not listed and are left as they are.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

from .engine import MAX_MANIFEST_BYTES, manifest_name
from .machine import IN_FLIGHT
from .models import (
    MAX_RECORD_BYTES,
    RECORD_CONTENT_TYPE,
    Delivery,
    Retirement,
    State,
    Step,
    TaskRecord,
    parse_time,
    record_name,
    with_step,
)
from .storage import Blob, Conflict, Immutable, Leased, Listed, Misconfigured, Rejected, Storage, copy_incomplete

log = logging.getLogger("receiver.migration")

MARKER_NAME = ".smartdocumentor/migration.json"
MARKER_MAX_BYTES = 1024 * 1024
# Files it left as they are, named in the marker (for `ops find` once it is done), up to LEFT_KEPT of them and
# LEFT_BYTES of JSON (a name may hold 1024 characters, 6 bytes each escaped): the rest are counted.
LEFT_KEPT = 200
LEFT_BYTES = 256 * 1024
RESERVED_PREFIX = ".smartdocumentor/"
PAGE_SIZE = 2000
# The previous release cut taskid/workspaceid metadata at 512 characters (plan.metadata_value).
CUT_AT = 512
MAYBE_CUT = CUT_AT - 2  # it cut on a whole escape: a value cut in the middle of one is 510 or 511 long
MIGRATED = "migrated"
MIGRATED_REPLACED = "migrated-replaced"
ATTEMPTS = 5
# The first run after the upgrade lists nothing: it creates BEGUN_NAME, and the listing begins OVERLAP after that
# blob's creation, once every execution of the release before has ended (each lasts up to functionTimeout,
# 5 minutes, after a deployment; a slot swap's warm-up comes on top). A file that release wrote behind a listing
# already past its name would stay out of every record. (A blob of its own, created once: the marker itself is
# created by the first page, so a container policy that refuses overwrites does not stop a one-page upgrade.)
BEGUN_NAME = ".smartdocumentor/migration-begun"
OVERLAP = timedelta(minutes=15)


@dataclass
class MigrationReport:
    done: bool = False
    already_done: bool = False
    listed: int = 0
    tasks: int = 0
    stored: list[str] = field(default_factory=list)  # names that became a task's current file
    superseded: list[str] = field(default_factory=list)  # legacy names listed to retire
    left_pending: list[str] = field(default_factory=list)  # names whose manifest says pending (or failed)
    left_notes: list[dict[str, str]] = field(default_factory=list)  # left as they are, doubtful: name, ids and why
    left_unread: list[str] = field(default_factory=list)  # of those, files whose manifest could not be read
    left_waiting: list[dict[str, str]] = field(default_factory=list)  # left_pending's files: name, ids and why
    left_recent: list[str] = field(default_factory=list)  # written in the last two minutes: this release's
    left_copying: list[str] = field(default_factory=list)  # legacy copies of deliveries copying elsewhere since
    stopped: str | None = None  # why this page was not finished (a conflict that kept coming back)

    @property
    def left_doubtful(self) -> list[str]:
        """The files it left as they are for doubt (its notes' names)."""
        return [note["name"] for note in self.left_notes]


@dataclass(frozen=True)
class LegacyFile:
    name: str
    etag: str
    delivery: str
    workspace_id: str
    task_id: str
    received_at: datetime
    replaced: tuple[str, ...] = ()


async def migrate(storage: Storage, *, now: datetime, page_size: int = PAGE_SIZE) -> MigrationReport:
    """One bounded page of the migration (one read of the marker once it is done)."""
    report = MigrationReport()
    found = await storage.read_bytes(MARKER_NAME, max_bytes=MARKER_MAX_BYTES)
    state = json_object(found)
    if state.get("done") is True:
        report.done = report.already_done = True
        return report
    if found is None and (begins := await _listing_begins(storage, now)) > now:
        report.stopped = f"it begins at {begins.isoformat()}, once the release before's last executions have ended"
        return report
    marker = state.get("marker") if isinstance(state.get("marker"), str) else None
    page, next_marker = await storage.list_page("", marker=marker, size=page_size)
    report.listed = len(page)
    by_task: dict[tuple[str, str], list[Listed]] = {}
    for item in page:
        ids = legacy_ids(item)
        if ids is not None and item.last_modified is not None and now - item.last_modified < IN_FLIGHT:
            # Written since the upgrade by this release (its copy on its way to the record): never
            # folded, or the migration would take a fresh re-export for an older legacy file.
            report.left_recent.append(item.name)
        elif ids is not None:
            by_task.setdefault(ids, []).append(item)
    if report.left_recent:
        # Legacy files an instance of the release before may still be writing (a deployment's overlap): the page is
        # taken again next run, when they are older; the marker does not move past them.
        report.stopped = f"{len(report.left_recent)} file(s) written in the last two minutes; the page is taken again"
    for (workspace_id, task_id), items in by_task.items():
        unread = len(report.left_unread)
        files = [f for item in items if (f := await _legacy_file(storage, item, workspace_id, task_id, report))]
        if len(report.left_unread) > unread:
            # A manifest it could not read may list the others as replaced: the task is left whole, as it is.
            why = "another file of the task is left as it is (its manifest could not be read)"
            report.left_notes += [_left_note(file.name, workspace_id, task_id, why) for file in files]
            continue
        if not files:
            continue
        report.tasks += 1
        if not await _fold(storage, files, now=now, report=report):
            report.stopped = f"the record of task {task_id} kept changing; the page is taken again next run"
            return report
    if report.left_copying and report.stopped is None:
        # Sent again since the upgrade and still copying at another name: whether the legacy copy is the file to
        # keep or to retire is known once that copy ends. The page is taken again until then.
        report.stopped = f"{len(report.left_copying)} legacy copy(ies) of deliveries still copying elsewhere"
    if report.stopped is not None:
        return report
    earlier: list[Any] = state["left"] if isinstance(state.get("left"), list) else []
    more: int = state["leftMore"] if isinstance(state.get("leftMore"), int) else 0
    left: list[dict[str, Any]] = []
    room = LEFT_BYTES
    for note in [note for note in earlier if isinstance(note, dict)] + report.left_notes + report.left_waiting:
        room -= len(json.dumps(note))
        if len(left) < LEFT_KEPT and room >= 0:
            left.append(note)
        else:
            more += 1
    document: dict[str, Any] = {"done": next_marker is None, "marker": next_marker, "at": now.isoformat()}
    document.update(left=left, leftMore=more)
    try:
        await storage.put(
            MARKER_NAME,
            json.dumps(document).encode("ascii"),  # (ensure_ascii: every name and id escaped)
            if_match=None if found is None else found[0].etag,
            content_type="application/json",
            metadata=_KIND,
        )
    except Conflict:
        report.stopped = "another run moved the migration's marker first"
        return report
    report.done = next_marker is None
    return report


async def _listing_begins(storage: Storage, now: datetime) -> datetime:
    """When the first page may be listed (BEGUN_NAME created by this call when it was not there)."""
    begun = await storage.read(BEGUN_NAME)
    if begun is None:
        with contextlib.suppress(Conflict):  # another run created it a moment ago
            await storage.put(BEGUN_NAME, b"", if_match=None, content_type="text/plain", metadata=_KIND)
        return now + OVERLAP
    return listing_begins(begun) or now


def listing_begins(begun: Blob) -> datetime | None:
    """OVERLAP after BEGUN_NAME was created (None when the store dates nothing: the listing waits for nothing)."""
    dated = begun.created or begun.last_modified
    return None if dated is None else dated + OVERLAP


_KIND = {"receiverkind": "migration"}


def _left_note(name: str, workspace_id: str, task_id: str, why: str) -> dict[str, str]:
    return {"name": name, "workspaceId": workspace_id, "taskId": task_id, "why": why}


def json_object(found: tuple[Blob, bytes] | None) -> dict[str, Any]:
    """The JSON object a blob holds; {} when there is none (no blob, not JSON, not an object)."""
    try:
        loaded = json.loads(found[1]) if found is not None else {}
    except ValueError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _lower(metadata: dict[str, str]) -> dict[str, str]:
    return {key.lower(): value for key, value in metadata.items()}


def legacy_ids(item: Listed) -> tuple[str, str] | None:
    """(workspace id, task id) of a file the previous release wrote, from its metadata; else None."""
    if item.name.startswith(RESERVED_PREFIX):
        return None
    meta = _lower(item.metadata)
    if "receiverkind" in meta or "copystatus" in meta:
        return None  # a manifest, a record, a marker
    if "copyid" in meta or "taskkey" in meta:
        return None  # written since the upgrade (a copy whose driver stopped before its record): never legacy
    if not (meta.get("taskid") and meta.get("workspaceid") and meta.get("delivery")):
        return None
    if copy_incomplete(item.copy_status):
        return None  # its asynchronous copy is pending, failed or aborted: not its delivery's bytes
    try:
        return unquote(meta["workspaceid"], errors="strict"), unquote(meta["taskid"], errors="strict")
    except UnicodeDecodeError:
        return None


def _is_manifest(metadata: dict[str, str]) -> bool:
    meta = _lower(metadata)
    return meta.get("receiverkind") == "manifest" or "copystatus" in meta


# The key, in what :func:`legacy_manifest` returns, that says why a manifest there was not read (no manifest
# the receiver writes has a key with a space).
UNREAD = "not read"


async def legacy_manifest(storage: Storage, name: str) -> tuple[tuple[Blob, bytes] | None, dict[str, Any]]:
    """The manifest beside the legacy file ``name`` as read, and its JSON object ({} when it is none). One that
    cannot be read, however often it is tried (larger than this release reads: the release before took larger
    bodies; in the Archive tier), is ``{UNREAD: why}``: its file is left as it is, not the whole page."""
    try:
        found = await storage.read_bytes(manifest_name(name), max_bytes=MAX_MANIFEST_BYTES)
    except Rejected as exc:
        if exc.status is not None:  # the service refused the read itself: not a size
            raise
        return None, {UNREAD: f"its manifest is larger than the {MAX_MANIFEST_BYTES // 1024 // 1024} MiB it reads"}
    except Misconfigured as exc:
        if exc.code not in ("BlobArchived", "BlobBeingRehydrated"):
            raise
        return None, {UNREAD: "its manifest is in the Archive tier"}
    return found, json_object(found) if found is not None and _is_manifest(found[0].metadata) else {}


def left_as_is(metadata: dict[str, str], document: dict[str, Any], workspace_id: str, task_id: str) -> str | None:
    """Why the upgrade leaves a legacy file as it is (None: it folds it), from the file's metadata and its manifest's
    JSON: that manifest, of the same delivery, says pending or failed (its queue message finishes it) or names other
    ids; or, with no manifest of it, its ids may have been cut at CUT_AT characters."""
    meta = _lower(metadata)
    if UNREAD in document:
        return str(document[UNREAD])
    if document.get("delivery") == meta["delivery"]:
        if document.get("copyStatus") != "success":
            return f"its manifest says {document.get('copyStatus') or 'no copy status'}"
        if (document.get("workspaceId"), document.get("taskId")) != (workspace_id, task_id):
            return "its manifest names other ids than its metadata"
        return None
    if len(meta["taskid"]) >= MAYBE_CUT or len(meta["workspaceid"]) >= MAYBE_CUT:
        return f"its ids may have been cut at {CUT_AT} characters and no manifest of it confirms them"
    return None


async def _legacy_file(
    storage: Storage, item: Listed, workspace_id: str, task_id: str, report: MigrationReport
) -> LegacyFile | None:
    delivery = _lower(item.metadata)["delivery"]
    received = item.last_modified or datetime.now(UTC)
    replaced: tuple[str, ...] = ()
    found, document = await legacy_manifest(storage, item.name)
    if document.get("delivery") not in (None, delivery) and document.get("copyStatus") == "pending":
        # A copy over this file that never landed: the file is its own delivery, whole; the pending
        # one is left to its queue message.
        report.left_pending.append(manifest_name(item.name))
    left = left_as_is(item.metadata, document, workspace_id, task_id)
    if UNREAD in document:
        report.left_unread.append(item.name)
    if left is not None:
        unfinished = document.get("delivery") == delivery and document.get("copyStatus") != "success"
        if unfinished:
            report.left_pending.append(item.name)
            report.left_waiting.append(_left_note(item.name, workspace_id, task_id, left))
        else:
            report.left_notes.append(_left_note(item.name, workspace_id, task_id, left))
        return None
    if document.get("delivery") == delivery:
        received = parse_time(document.get("receivedAt")) or received
        replaced = tuple(str(d) for d in document.get("replaced") or [] if isinstance(d, str) and d != delivery)
        assert found is not None
        if "delivery" not in _lower(found[0].metadata):
            # The ``delivery`` label the new release's retirement checks, on the legacy manifest (same bytes).
            try:
                await storage.put(
                    manifest_name(item.name),
                    found[1],
                    if_match=found[0].etag,
                    content_type="application/json",
                    metadata={**found[0].metadata, "delivery": delivery},
                )
            except Conflict:
                log.info("the manifest of %s changed while it was labelled: left to whoever changed it", item.name)
            except (Immutable, Leased) as exc:
                # Left unlabelled (a retirement still removes it once its file is gone): one held manifest must not
                # stop the migration of the whole container.
                log.warning("the manifest of %s was not labelled with its delivery: %s", item.name, exc.message)
    return LegacyFile(item.name, item.etag, delivery, workspace_id, task_id, received, replaced)


async def _fold(storage: Storage, files: Sequence[LegacyFile], *, now: datetime, report: MigrationReport) -> bool:
    """Fold ``files`` (of one task) into the task's record by compare-and-swap; False when it kept changing."""
    workspace_id, task_id = files[0].workspace_id, files[0].task_id
    name = record_name(workspace_id, task_id)
    for _ in range(ATTEMPTS):
        found = await storage.read_bytes(name, max_bytes=MAX_RECORD_BYTES)
        record = (
            TaskRecord.from_bytes(found[1])
            if found is not None
            else TaskRecord(workspace_id=workspace_id, task_id=task_id)
        )
        if (record.workspace_id, record.task_id) != (workspace_id, task_id):
            why = f"the name of its task's record holds task {record.task_id} of workspace {record.workspace_id}"
            report.left_notes += [_left_note(f.name, workspace_id, task_id, why) for f in files]
            return True
        copying = [f.name for f in files if _copying_elsewhere(record.find(f.delivery), f.name)]
        report.left_copying.extend(name for name in copying if name not in report.left_copying)
        updated, stored, superseded = fold(record, files, now=now)
        if updated is None:
            return True
        try:
            await storage.put(
                name,
                updated.to_bytes(),
                if_match=None if found is None else found[0].etag,
                content_type=RECORD_CONTENT_TYPE,
                metadata=updated.labels(),
            )
        except Conflict:
            continue
        report.stored.extend(stored)
        report.superseded.extend(superseded)
        return True
    return False


def _migrated(item: Delivery) -> bool:
    return bool(item.history) and item.history[0].outcome in (MIGRATED, MIGRATED_REPLACED)


def _copying_elsewhere(item: Delivery | None, name: str) -> bool:
    return item is not None and item.blob != name and item.state is State.COPYING


def _kept_elsewhere(item: Delivery | None, name: str) -> bool:
    """Does the record hold ``item`` stored or superseded at another name than ``name`` (so a legacy copy of it
    there is garbage)?"""
    return item is not None and item.blob != name and item.state in (State.STORED, State.SUPERSEDED)


def fold(
    record: TaskRecord, files: Sequence[LegacyFile], *, now: datetime
) -> tuple[TaskRecord | None, list[str], list[str]]:
    """The record with ``files`` in it (None: nothing to add), the names made current, and the names
    listed to retire. Pure."""
    # (A delivery entered from a replaced list holds the name of the file that replaced it: not its own.)
    owned = [item for item in record.deliveries if not (item.history and item.history[0].outcome == MIGRATED_REPLACED)]
    known_names = {item.blob for item in owned} | {item.blob for item in record.retire}
    # A legacy file of a delivery the record does not know is folded wherever it is: at a name a delivery since the
    # upgrade was accepted at too, that delivery's copy never landed there (it failed, was superseded, or still
    # copies), and the legacy bytes are there, older than it.
    fresh = [f for f in files if record.find(f.delivery) is None]
    # Another copy of a delivery the record holds stored or superseded (migrated by an earlier page, or sent again
    # since the upgrade and recorded at another name): listed to retire, the record keeps the copy it holds.
    extra = [f for f in files if f.name not in known_names and _kept_elsewhere(record.find(f.delivery), f.name)]
    # What the manifest of a delivery the record already holds says it replaced (sent again since the upgrade,
    # before the migration reached its task): still entered, so a late retry of one is superseded.
    known = [f for f in files if record.find(f.delivery) and any(record.find(old) is None for old in f.replaced)]
    if not fresh and not extra and not known:
        return None, [], []
    # One delivery at two names on this page: the record holds it once, at its newest copy's name, with what every
    # copy's manifest says it replaced; the other names are listed to retire.
    newest: dict[str, LegacyFile] = {}
    for legacy in sorted(fresh, key=lambda f: (f.received_at, f.name)):
        newest[legacy.delivery] = legacy
    extra += [f for f in fresh if newest[f.delivery] is not f]
    fresh = [
        replace(f, replaced=tuple(dict.fromkeys(old for g in fresh if g.delivery == f.delivery for old in g.replaced)))
        for f in fresh
        if newest[f.delivery] is f
    ]
    if not fresh and not known:
        retire = [*record.retire, *(Retirement(blob=f.name, delivery=f.delivery, etag=f.etag) for f in extra)]
        return record.model_copy(update={"retire": retire}), [], [f.name for f in extra]
    added: list[Delivery] = []
    with_files = {f.delivery for f in fresh}  # a replaced one whose file is still there enters with its file
    for legacy in [*fresh, *known]:
        for old in legacy.replaced:
            if record.find(old) is None and old not in with_files and all(item.delivery != old for item in added):
                note = "replaced before the upgrade (its manifest's replaced list); its own name is not known"
                step = Step(at=now, by="reconciliation", outcome=MIGRATED_REPLACED, note=note)
                added.append(
                    Delivery(
                        delivery=old,
                        blob=legacy.name,
                        state=State.SUPERSEDED,
                        received_at=legacy.received_at,
                        history=[step],
                    )
                )
    for legacy in fresh:
        step = Step(at=now, by="reconciliation", outcome=MIGRATED, note="written by the release before the record")
        added.append(
            Delivery(
                delivery=legacy.delivery,
                blob=legacy.name,
                state=State.SUPERSEDED,
                received_at=legacy.received_at,
                etag=legacy.etag,
                completed_at=legacy.received_at,
                history=[step],
            )
        )
    # Legacy deliveries come first (accepted before the upgrade), oldest first; a replaced one before
    # the file that replaced it.
    legacy_items = [item for item in record.deliveries if _migrated(item)] + added
    legacy_items.sort(key=lambda item: (item.received_at, item.history[0].outcome == MIGRATED))
    others = [item for item in record.deliveries if not _migrated(item)]
    current = record.current_delivery
    files_only = [item for item in legacy_items if item.history[0].outcome == MIGRATED]
    newest_legacy = max(files_only, key=lambda item: item.received_at) if files_only else None
    retire = list(record.retire)
    stored_names: list[str] = []
    superseded_names: list[str] = []
    new_current = record.current
    newest_replaced = next((f.replaced for f in fresh if newest_legacy and f.delivery == newest_legacy.delivery), ())
    late = current is not None and not _migrated(current) and current.delivery in newest_replaced
    if late and current is not None and newest_legacy is not None:
        # A late retry of an export the previous release had replaced, stored before the migration
        # reached its task: the legacy manifest says the legacy file replaced it. It goes before the
        # legacy file (accepted earlier, as far as the task is concerned), superseded, its name retired.
        note = "the previous release had replaced it (the legacy manifest's replaced list)"
        step = Step(at=now, by="reconciliation", outcome="superseded", note=note)
        demoted = current.model_copy(update={"state": State.SUPERSEDED, "history": with_step(current, step)})
        others = [item for item in others if item.delivery != current.delivery]
        legacy_items.insert(legacy_items.index(newest_legacy), demoted)
        if current.blob != newest_legacy.blob:
            retire.append(
                Retirement(blob=current.blob, delivery=current.delivery, etag=current.etag, copy_id=current.copy_id)
            )
            superseded_names.append(current.blob)
    if newest_legacy is not None and (
        current is None or late or (_migrated(current) and newest_legacy.received_at > current.received_at)
    ):
        new_current = newest_legacy.delivery
    items: list[Delivery] = []
    fresh_deliveries = {f.delivery for f in fresh}
    for item in legacy_items:
        if item.delivery == new_current and item.state is not State.STORED:
            item = item.model_copy(update={"state": State.STORED})
            stored_names.append(item.blob)
        elif item.state is State.STORED and item.delivery != new_current:
            note = "an export received after it is the current file"
            step = Step(at=now, by="reconciliation", outcome="superseded", note=note)
            item = item.model_copy(update={"state": State.SUPERSEDED, "history": with_step(item, step)})
            retire.append(Retirement(blob=item.blob, delivery=item.delivery, etag=item.etag, copy_id=item.copy_id))
            superseded_names.append(item.blob)
        elif (
            item.delivery in fresh_deliveries
            and item.delivery != new_current
            and item.etag is not None
            and item.history[0].outcome == MIGRATED
        ):
            retire.append(Retirement(blob=item.blob, delivery=item.delivery, etag=item.etag, copy_id=item.copy_id))
            superseded_names.append(item.blob)
        items.append(item)
    for legacy in extra:
        retire.append(Retirement(blob=legacy.name, delivery=legacy.delivery, etag=legacy.etag))
        superseded_names.append(legacy.name)
    current_blob = next((item.blob for item in items + others if item.delivery == new_current), None)
    retire = [r for r in retire if r.blob != current_blob]
    updated = record.model_copy(update={"current": new_current, "retire": retire, "deliveries": items + others})
    return updated, stored_names, superseded_names


__all__ = [
    "BEGUN_NAME",
    "CUT_AT",
    "MARKER_MAX_BYTES",
    "MARKER_NAME",
    "MAYBE_CUT",
    "MIGRATED",
    "OVERLAP",
    "PAGE_SIZE",
    "UNREAD",
    "LegacyFile",
    "MigrationReport",
    "fold",
    "json_object",
    "left_as_is",
    "legacy_ids",
    "legacy_manifest",
    "listing_begins",
    "migrate",
]
