"""A task with no record while the upgrade from the release without task records is unfinished.

The reconciliation folds that release's files into task records a page a run (receiver/migration.py) and keeps
where it is in ``.smartdocumentor/migration.json``. Until it reaches a task, the task has no record, and `find`
or `check` would say only that. They look, bounded, at the files the upgrade has not folded yet for one naming
the task, and say what happens to it: folded by a later run (how many blobs ahead), or left as it is (and why).
Read only: nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from receiver.migration import (
    BEGUN_NAME,
    CUT_AT,
    MARKER_MAX_BYTES,
    MARKER_NAME,
    MAYBE_CUT,
    OVERLAP,
    PAGE_SIZE,
    UNREAD,
    json_object,
    left_as_is,
    legacy_ids,
    legacy_manifest,
    listing_begins,
)
from receiver.models import TaskRecord
from receiver.outcome import ops_command
from receiver.plan import metadata_value
from receiver.storage import Listed, Storage, StoreError, copy_incomplete

SCAN_PAGES = 5  # of PAGE_SIZE blobs: bounded, as every listing of the command line
UPGRADING = "docs/reference.md, Upgrading from the release without task records"


@dataclass(frozen=True)
class LegacyFile:
    name: str
    position: int  # blobs between where the upgrade is and this file
    left_as_is: str | None  # why the upgrade leaves it as it is (None: it folds it)
    newer_pending: bool = False  # its manifest describes a newer export whose copy was pending
    unread: bool = False  # its manifest could not be read: the upgrade leaves the task's other files too


@dataclass
class LegacyLook:
    started: bool  # a reconciliation run has begun the upgrade (its marker, or BEGUN_NAME, is there)
    done: bool = False  # it ended: ``files`` are the ones its marker says it left as they are
    readable: bool = True  # that marker is a JSON object (else the upgrade starts again from the first blob)
    scanned: int = 0  # blobs looked at, from where the upgrade is
    whole: bool = False  # ... to the end of the container
    files: list[LegacyFile] = field(default_factory=list)
    begins: datetime | None = None  # no page done yet: when the first may be listed (a run created BEGUN_NAME)


def _same(decoded: str, value: str, wanted: str) -> bool:
    """Does an id of the release before (``value`` as its metadata holds it) name ``wanted``: whole, or as that
    release cut it (at 512 characters)?"""
    return decoded == wanted or (len(value) >= MAYBE_CUT and metadata_value(wanted, CUT_AT) == value)


def _left_in(state: dict[str, Any], task_id: str, workspace_id: str | None) -> list[LegacyFile]:
    """The files of the task the upgrade's marker says it left as they are (the first LEFT_KEPT)."""
    notes: list[Any] = state["left"] if isinstance(state.get("left"), list) else []
    return [
        LegacyFile(str(note.get("name")), 0, str(note.get("why")))
        for note in notes
        if isinstance(note, dict)
        and _noted(note.get("taskId"), task_id)
        and (workspace_id is None or _noted(note.get("workspaceId"), workspace_id))
    ]


async def left_by_upgrade(storage: Storage, record: TaskRecord) -> list[tuple[LegacyFile, bool]]:
    """For a task with a record: files of it the upgrade left as they are and that no record names still (its
    record was built without them): each is read, and one gone, or holding a delivery the record holds, or at a
    name the record holds, is not named. Best effort: a marker or file that cannot be read names nothing."""
    try:
        found = await storage.read_bytes(MARKER_NAME, max_bytes=MARKER_MAX_BYTES)
        left = _left_in(json_object(found), record.task_id, record.workspace_id)
        held = {item.blob for item in record.deliveries} | {item.blob for item in record.retire}
        left = [file for file in left if file.name not in held]
        blobs = [await storage.read(file.name) for file in left]
    except StoreError:
        return []
    current = record.current_delivery
    return [
        (
            file,
            current is not None and (blob.last_modified or blob.created or current.received_at) < current.received_at,
        )
        for file, blob in zip(left, blobs, strict=True)
        if blob is not None and (blob.delivery is None or record.find(blob.delivery) is None)
    ]


def _noted(decoded: Any, wanted: str) -> bool:
    """Does an id a marker's note holds (decoded from the release before's metadata) name ``wanted``?"""
    return isinstance(decoded, str) and _same(decoded, metadata_value(decoded, CUT_AT), wanted)


async def _of_task(storage: Storage, item: Listed, position: int, task: tuple[str, str | None]) -> LegacyFile | None:
    """``item`` as a file of the release before naming the task (workspace None: any), else None."""
    # (one whose asynchronous copy did not succeed too: the migration leaves it, so it is named with why)
    ids = legacy_ids(replace(item, copy_status=None))
    meta = {key.lower(): value for key, value in item.metadata.items()}
    if ids is None or not (_same(ids[1], meta["taskid"], task[0]) and task[1] in (None, ids[0])):
        return None
    if copy_incomplete(item.copy_status):
        why = f"Azure reports its copy {item.copy_status}: it has the export's metadata, not its bytes"
        return LegacyFile(item.name, position, why)
    _, document = await legacy_manifest(storage, item.name)
    newer = document.get("delivery") not in (None, meta["delivery"]) and document.get("copyStatus") == "pending"
    return LegacyFile(item.name, position, left_as_is(item.metadata, document, *ids), newer, UNREAD in document)


async def _where_the_upgrade_is(storage: Storage) -> tuple[dict[str, Any], LegacyLook]:
    """The upgrade's marker (a JSON object, or {}) and what it says: done, or where it is (its wait included)."""
    found = await storage.read_bytes(MARKER_NAME, max_bytes=MARKER_MAX_BYTES)
    state = json_object(found)
    look = LegacyLook(started=found is not None, done=state.get("done") is True, readable=found is None or bool(state))
    if found is None and (begun := await storage.read(BEGUN_NAME)) is not None:
        look.started, look.begins = True, listing_begins(begun)
    return state, look


async def unfinished_upgrade(storage: Storage, now: datetime) -> str | None:
    """For a command that found no task record: a line saying the upgrade has begun and not ended (else None; a
    failed look is said, not raised: the answer "no record" stands)."""
    try:
        _, look = await _where_the_upgrade_is(storage)
    except StoreError as exc:
        return f"could not tell whether the upgrade from the release without task records has ended: {exc.message}"
    if look.done or not look.started:
        return None
    where, _ = _first_page(look, now)
    return (
        "The upgrade from the release without task records has not finished in this container "
        f"({where}): a task that got its file before the upgrade has no record until the upgrade reaches it; "
        "find --task T looks for such a task's file"
    )


async def look_for_legacy(storage: Storage, task_id: str, workspace_id: str | None) -> LegacyLook | None:
    """The files of the release before naming this task that the upgrade has not folded yet, from where it is: to
    the end of the page holding the first one it folds (at most SCAN_PAGES pages). None once the upgrade is done,
    or when it has not begun and the whole container holds none."""
    state, look = await _where_the_upgrade_is(storage)
    if look.done:
        # Done: the files it left as they are, as its marker names them.
        left = _left_in(state, task_id, workspace_id)
        return LegacyLook(started=True, done=True, files=left) if left else None
    marker = state.get("marker") if isinstance(state.get("marker"), str) else None
    for _ in range(SCAN_PAGES):
        page, marker = await storage.list_page("", marker=marker, size=PAGE_SIZE)
        for position, item in enumerate(page, look.scanned):
            if (file := await _of_task(storage, item, position, (task_id, workspace_id))) is not None:
                look.files.append(file)
        look.scanned += len(page)
        if marker is None or any(file.left_as_is is None for file in look.files):
            break
    look.whole = marker is None
    return look if look.started or look.files or not look.whole else None


async def legacy_advice(
    storage: Storage, task_id: str, workspace_id: str | None, otherwise: str, now: datetime
) -> tuple[list[str], str, dict[str, Any]]:
    """For a task with no record: what to print (lines), the next step (``otherwise`` when the upgrade is done or
    nothing it has not folded names the task), and the JSON. A storage failure of the look is said, not raised:
    the answer "no record" stands."""
    try:
        look = await look_for_legacy(storage, task_id, workspace_id)
    except StoreError as exc:
        why = f"could not look for files of the release before the task record (an unfinished upgrade): {exc.message}"
        return [why], otherwise, {"legacyLookFailed": exc.message}
    if look is None:
        return [], otherwise, {}
    return _advice(look, task_id, otherwise, now)


def _first_page(look: LegacyLook, now: datetime) -> tuple[str, str]:
    """Where the upgrade is before its first page (for the lines) and when that page comes (for the next step)."""
    minutes = OVERLAP.seconds // 60
    if not look.started:
        return (
            f"no run of this release has begun it yet: the first starts a {minutes}-minute wait "
            "(.smartdocumentor/migration-begun), then a run lists the first page",
            f" after the first run's {minutes}-minute wait",
        )
    if look.begins is None:
        return (
            f"{MARKER_NAME} says where it is" if look.readable else f"{MARKER_NAME} is unreadable: it starts over"
        ), ""
    if look.begins > now:
        return (
            f"it waits until {look.begins:%Y-%m-%d %H:%M:%S} UTC, {minutes} minutes after this release's first run, "
            "for the release before's last executions to end, then a run lists its first page",
            f" after {look.begins:%H:%M:%S} UTC",
        )
    return f"its wait ended at {look.begins:%Y-%m-%d %H:%M:%S} UTC: the next run lists its first page", ""


def _advice(look: LegacyLook, task_id: str, otherwise: str, now: datetime) -> tuple[list[str], str, dict[str, Any]]:
    if look.done:
        return (
            ["The upgrade from the release without task records has ended; it left these files of the task as they "
             "are (no record names them):"]
            + [f"  file of the release before: {file.name} ({file.left_as_is})" for file in look.files],
            "they stay where they are; export the document again, which gives the task a record "
            f"({UPGRADING}: What it leaves)",
            {"legacyFiles": [{"name": f.name, "leftAsIs": f.left_as_is, "newerPending": False} for f in look.files]},
        )  # fmt: skip
    where, waited = _first_page(look, now)
    lines = [
        "The upgrade from the release without task records has not finished in this container (the reconciliation "
        f"folds a page of {PAGE_SIZE} blobs a run; {where}): a task that got its file before the upgrade has no "
        "record until the upgrade reaches it."
    ]
    data: dict[str, Any] = {
        "legacyFiles": [
            {"name": file.name, "leftAsIs": file.left_as_is, "newerPending": file.newer_pending} for file in look.files
        ],
        "legacyScanned": look.scanned,
        "legacyScanWhole": look.whole,
        "legacyListingBegins": None if look.begins is None else look.begins.isoformat(),
    }
    for file in look.files:
        lines.append(
            f"  file of the release before: {file.name}"
            + (f" (the upgrade leaves it as it is: {file.left_as_is})" if file.left_as_is else "")
            + (" (its manifest describes a newer export whose copy was pending)" if file.newer_pending else "")
        )
    again = ops_command("find", task=task_id)
    rest = "" if look.whole else f"; the blobs after the first {look.scanned} it has not folded are not looked at"
    # (a file whose manifest could not be read may list the others as replaced: the task is left whole)
    folded = [] if any(file.unread for file in look.files) else [f for f in look.files if f.left_as_is is None]
    if folded:
        first = folded[0]
        others = "; it leaves the other file(s) named as they are" if len(folded) < len(look.files) else ""
        newer = (
            "; a newer export a manifest describes is finished by the release before's queue message (look in "
            "the verification queue and its poison queue; else export the document again)"
            if any(file.newer_pending for file in look.files)
            else ""
        )
        return (
            lines,
            f"nothing to do by hand: the reconciliation builds the task's record from {first.name} in about "
            f"{first.position // PAGE_SIZE + 1} run(s){waited} ({first.position} blobs ahead of it){others}; "
            f"run {again} then ({UPGRADING}, says how a delivery of the task is decided meanwhile){newer}",
            data,
        )
    if look.files:
        return (
            lines,
            "the file(s) stay as they are and no record names them: a copy that was pending is finished by the "
            "release before's queue message (look in the verification queue and its poison queue); else export "
            f"the document again, which gives the task a record ({UPGRADING}: What it leaves){rest}",
            data,
        )
    # A file the upgrade passed and left as it is, is before its marker: its run's log line named it.
    passed = (
        " (one it passed and left as it is is named in the reconciliation's `migration:` log line: left_pending, "
        "left_doubtful)"
        if look.started and look.begins is None
        else ""
    )
    if look.whole:
        return (
            lines,
            f"no file of the release before names this task in what it has not folded{passed}; {otherwise}",
            data,
        )
    return (
        lines,
        f"no file of the release before names this task in the next {look.scanned} blobs it has not folded{passed}; "
        f"the rest is not looked at (the upgrade may yet find the task there): run {again} after a few "
        f"reconciliation runs; else {otherwise}",
        data,
    )
