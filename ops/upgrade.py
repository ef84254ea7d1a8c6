"""A task with no record while the upgrade from the release without task records is unfinished.

The reconciliation folds that release's files into task records a page a run (receiver/migration.py) and keeps
where it is in ``.smartdocumentor/migration.json``. Until it reaches a task, the task has no record, and `find`
or `check` would say only that. They look, bounded, at the files the upgrade has not folded yet for one naming
the task, and say what happens to it: folded by a later run (how many blobs ahead), or left as it is (and why).
Read only: nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from receiver.migration import MARKER_NAME, PAGE_SIZE, json_object, left_as_is, legacy_ids, legacy_manifest
from receiver.storage import Storage

SCAN_PAGES = 5  # of PAGE_SIZE blobs: bounded, as every listing of the command line
UPGRADING = "docs/reference.md, Upgrading from the release without task records"


@dataclass(frozen=True)
class LegacyFile:
    name: str
    left_as_is: str | None  # why the upgrade leaves it as it is (None: it folds it)
    newer_pending: bool  # its manifest describes a newer export whose copy was still pending


@dataclass
class LegacyLook:
    started: bool  # a reconciliation run has begun the upgrade (its marker is there)
    scanned: int = 0  # blobs looked at, from where the upgrade is
    whole: bool = False  # ... to the end of the container
    files: list[LegacyFile] = field(default_factory=list)
    ahead: int = 0  # blobs from where the upgrade is to the first file found


async def look_for_legacy(storage: Storage, task_id: str, workspace_id: str | None) -> LegacyLook | None:
    """The files of the release before naming this task that the upgrade has not folded yet, from where it is; the
    scan stops at the end of the page holding the first (at most SCAN_PAGES pages). None once the upgrade is done,
    or when it has not begun and the whole container holds none."""
    found = await storage.read_bytes(MARKER_NAME, max_bytes=64 * 1024)
    state = json_object(found)
    if state.get("done") is True:
        return None
    look = LegacyLook(started=found is not None)
    marker = state.get("marker") if isinstance(state.get("marker"), str) else None
    for _ in range(SCAN_PAGES):
        page, marker = await storage.list_page("", marker=marker, size=PAGE_SIZE)
        for position, item in enumerate(page, look.scanned):
            ids = legacy_ids(item)
            if ids is None or ids[1] != task_id or workspace_id not in (None, ids[0]):
                continue
            _, document = await legacy_manifest(storage, item.name)
            look.ahead = look.ahead if look.files else position
            newer = document.get("delivery") not in (None, item.metadata.get("delivery"))
            pending = newer and document.get("copyStatus") == "pending"
            look.files.append(LegacyFile(item.name, left_as_is(item.metadata, document, *ids), pending))
        look.scanned += len(page)
        if marker is None or look.files:
            break
    look.whole = marker is None
    return look if look.started or look.files or not look.whole else None


def advice(look: LegacyLook, otherwise: str) -> tuple[list[str], str, dict[str, Any]]:
    """What to print (lines), the next step (``otherwise`` when nothing here names the task), and the JSON."""
    where = f"{MARKER_NAME} says where it is" if look.started else f"no run has begun it yet: no {MARKER_NAME}"
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
    }
    for file in look.files:
        lines.append(
            f"  file of the release before: {file.name}"
            + (f" (the upgrade leaves it as it is: {file.left_as_is})" if file.left_as_is else "")
            + (" (its manifest describes a newer export whose copy was pending)" if file.newer_pending else "")
        )
    left = [file.left_as_is for file in look.files if file.left_as_is]
    if look.files and not left:
        runs = look.ahead // PAGE_SIZE + 1
        newer = (
            "; the newer export its manifest describes is finished by the release before's queue message (look in "
            "the verification queue and its poison queue; else export the document again)"
            if any(file.newer_pending for file in look.files)
            else ""
        )
        return (
            lines,
            f"nothing to do by hand: the reconciliation builds the task's record from that file in about {runs} "
            f"run(s) ({look.ahead} blobs ahead of it); run this again then ({UPGRADING}, says how a delivery of "
            f"the task is decided meanwhile){newer}",
            data,
        )
    if left:
        return (
            lines,
            "the file stays as it is and no record names it: one whose manifest says pending is finished by the "
            "release before's queue message (look in the verification queue and its poison queue); else export "
            f"the document again, which gives the task a record ({UPGRADING}: What it leaves)",
            data,
        )
    # A file the upgrade passed and left as it is, is before its marker: its run's log line named it.
    passed = (
        " (one it passed and left as it is is named in the reconciliation's `migration:` log line: left_pending, "
        "left_doubtful)"
        if look.started
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
        "the rest is not looked at (the upgrade may yet find the task there): run this again after a few "
        f"reconciliation runs; else {otherwise}",
        data,
    )
