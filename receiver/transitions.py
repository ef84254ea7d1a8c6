"""The destination's state machine, once: the transitions the four drivers share.

The webhook (:mod:`receiver.delivery`, knows the payload), the queue verifier
(:mod:`receiver.verification`, knows the queue message), the reconciliation
(:mod:`receiver.reconciliation`, knows storage alone) and the operator command line (``ops``, a
person's decision) move the same blob and manifest through the same states
(docs/state-machine.md). Each transition here:

- owns the blob by ETag: every write or delete after a copy is If-Match on what was read or
  produced, and a conflict (412/409) ends the step with nothing written ("someone newer owns it");
- writes the manifest conditionally (:func:`record_manifest`), appending one ``history`` entry
  that says which driver did what, so the manifest tells the delivery's story;
- never lets ``failed`` replace the ``success`` of the same delivery, and never concludes
  ``failed`` while something can still finish the copy (the drivers decide that before calling
  :func:`conclude_failure`, and the reason they pass says how to retry).

The transitions: :func:`record_manifest` (pending, success or failed), :func:`conclude_success`
(headers, manifest, the task's older files retired), :func:`conclude_failure` (the earlier export put
back from its snapshot, or the empty blob removed; the manifest marked failed),
:func:`retire_older_exports` (one current file per task) and :func:`repair_manifest` (a manifest
rebuilt from its blob, never inventing facts).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal, Protocol
from urllib.parse import unquote

from .plan import MANIFEST_SUFFIX, MAX_TAG_VALUE, fold_tag_text, manifest_bytes, manifest_labels
from .store import BlobState, BlobStore, Conflict, Manifest, StorageUnavailable, StoreError
from .telemetry import about

log = logging.getLogger("receiver.transitions")

Driver = Literal["webhook", "verifier", "reconciliation", "operator"]
CopyStatus = Literal["pending", "success", "failed"]
MAX_HISTORY = 50
MAX_REPLACED = 50
MAX_ROUNDS = 4


def iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Step:
    """One history entry: who did what, when (CONTRACT section 6, ``history``)."""

    by: Driver
    at: datetime
    outcome: str
    details: dict[str, Any] = field(default_factory=dict)

    def entry(self) -> dict[str, Any]:
        return {"at": iso(self.at), "by": self.by, "outcome": self.outcome, **self.details}


def with_history(document: dict[str, Any], step: Step | dict[str, Any]) -> dict[str, Any]:
    """The document with ``step`` appended to its history (oldest first, the last MAX_HISTORY kept)."""
    entry = step.entry() if isinstance(step, Step) else step
    history = [item for item in document.get("history") or [] if isinstance(item, dict)]
    return {**document, "history": [*history, entry][-MAX_HISTORY:]}


def merge_replaced(*lists: Any) -> list[str]:
    """Delivery hashes this export replaced, newest first, without repeats, bounded."""
    merged: list[str] = []
    for items in lists:
        for item in items or []:
            if isinstance(item, str) and item and item not in merged:
                merged.append(item)
    return merged[:MAX_REPLACED]


class Target(Protocol):
    """What a transition needs to know of a delivery: a CopyPlan, or what a queue message or a
    manifest knows."""

    @property
    def blob_name(self) -> str: ...
    @property
    def content_type(self) -> str: ...
    @property
    def manifest_name(self) -> str | None: ...
    @property
    def manifest(self) -> dict[str, Any]: ...
    @property
    def delivery(self) -> str: ...
    @property
    def task_id(self) -> str: ...
    @property
    def workspace_id(self) -> str: ...
    @property
    def task_prefix(self) -> str | None: ...


# The manifest as read before the blob was last seen to be this delivery's; None: believed absent.
Snapshot = Manifest | None | Literal["unread"]
UNREAD: Literal["unread"] = "unread"


def describes(manifest: Manifest | None, delivery: str, copy_status: CopyStatus, *, partial_ok: bool = False) -> bool:
    """The manifest is about this delivery and already says as much as ``copy_status`` would.

    A concluded status (success, failed) is never taken back to ``pending`` by a late writer, and
    ``failed`` never replaces ``success``. A partial (repaired) manifest does not count unless
    ``partial_ok``: a writer that has the payload completes it.
    """
    if manifest is None or manifest.foreign or manifest.document.get("delivery") != delivery:
        return False
    if manifest.document.get("partial") and not partial_ok:
        return False
    stored = manifest.document.get("copyStatus")
    if stored == copy_status:
        return True
    return (copy_status == "pending" and stored in ("success", "failed")) or (
        copy_status == "failed" and stored == "success"
    )


async def _put(store: BlobStore, name: str, document: dict[str, Any], *, etag: str | None, status: str) -> str:
    """Write a manifest with its labels (tags and metadata, the marker among them), If-Match ``etag``
    or If-None-Match: * when None. Raises Conflict when someone wrote it first."""
    tags, metadata = manifest_labels(document, status)
    return await store.write_manifest(name, manifest_bytes(document), etag=etag, tags=tags, metadata=metadata)


@dataclass(frozen=True)
class Recorded:
    """How :func:`record_manifest` ended: ``ours`` False when the blob is another delivery's (nothing
    written); ``etag`` of what it wrote (None when the manifest already said as much)."""

    ours: bool
    etag: str | None = None
    document: dict[str, Any] | None = None  # what it wrote


def compose(
    target: Target,
    prior: Manifest | None,
    *,
    copy_status: CopyStatus,
    copy_id: str | None,
    tags_written: bool,
    step: Step,
    replaced: list[str] | None = None,
    failure_reason: str | None = None,
    previous: dict[str, Any] | None = None,
    completed_at: datetime | None = None,
) -> dict[str, Any]:
    """The manifest to write: the delivery's payload document, its story so far (from the stored
    manifest when that is this delivery's), the new status and one history entry."""
    base = dict(target.manifest)
    ours = prior is not None and not prior.foreign and prior.document.get("delivery") == target.delivery
    before = prior.document if ours and prior is not None else base
    document = {
        **base,
        "copyId": copy_id or before.get("copyId"),
        "copyStatus": copy_status,
        "tagsWritten": tags_written,
        "history": before.get("history") or base.get("history") or [],
        "replaced": merge_replaced(replaced, before.get("replaced"), base.get("replaced")),
    }
    for key in ("completedAt", "failedAt", "failureReason", "previous"):
        document.pop(key, None)
    if copy_status == "success":
        document["completedAt"] = before.get("completedAt") or base.get("completedAt") or iso(completed_at or step.at)
    elif copy_status == "failed":
        document["failedAt"] = iso(step.at)
        document["failureReason"] = failure_reason or "The copy failed."
    else:
        kept = previous if previous is not None else before.get("previous")
        if kept:
            document["previous"] = kept
    return with_history(document, step)


async def record_manifest(
    store: BlobStore,
    target: Target,
    *,
    copy_status: CopyStatus,
    step: Step,
    copy_id: str | None,
    tags_written: bool,
    snapshot: Snapshot,
    confirmed: bool,
    replaced: list[str] | None = None,
    failure_reason: str | None = None,
    previous: dict[str, Any] | None = None,
    absent_ok: bool = False,
    rewrite: bool = False,
    completed_at: datetime | None = None,
) -> Recorded:
    """Make the manifest describe this delivery, unless the blob is no longer this delivery's.

    ``snapshot`` is the manifest as read *before* the blob was last seen to hold this delivery
    (``confirmed``), or None when it is believed absent. The write is conditional on it (If-Match,
    or If-None-Match: *), so it lands only if nobody wrote the manifest since; and nobody newer can
    have, because the blob was still this delivery's after that read (a newer export's manifest
    write always comes after its copy). On a conflict: read both again. ``absent_ok``: a missing
    blob does not stop the write (a ``pending`` record of a copy whose answer was lost).
    ``rewrite``: this request's own copy changed the blob, so it writes the manifest even when the
    manifest already describes its delivery. Whoever changes the blob changes the manifest after it: that is
    what makes another request's write, conditional on the manifest it read before, fail.
    """
    name = target.manifest_name
    if name is None:
        return Recorded(True)
    for _ in range(MAX_ROUNDS):
        if snapshot == UNREAD:
            snapshot = await store.read_manifest(name)
            confirmed = False
        if snapshot is not None and snapshot.foreign:
            log.error(
                "a blob that is not a manifest sits at %s; the manifest of %s was not written: move that blob "
                "away, then run python -m ops check --repair %s",
                store.describe(name),
                store.describe(target.blob_name),
                target.blob_name,
            )
            return Recorded(True)
        if describes(snapshot, target.delivery, copy_status) and not rewrite:
            return Recorded(True)
        if not confirmed:
            state = await store.state(target.blob_name)
            if (state is None and not absent_ok) or (state is not None and state.delivery != target.delivery):
                return Recorded(False)
            confirmed = True
        document = compose(
            target,
            snapshot,
            copy_status=copy_status,
            copy_id=copy_id,
            tags_written=tags_written,
            step=step,
            replaced=replaced,
            failure_reason=failure_reason,
            previous=previous,
            completed_at=completed_at,
        )
        try:
            etag = await _put(
                store, name, document, etag=None if snapshot is None else snapshot.etag, status=copy_status
            )
            return Recorded(True, etag, document)
        except Conflict:
            snapshot = UNREAD
    raise StorageUnavailable("The manifest kept changing while this delivery wrote it; send the document again.")


async def fix_content_type(store: BlobStore, target: Target, state: BlobState | None) -> BlobState | None:
    """The copied blob with the delivery's Content-Type (set only when it differs, If-Match, every
    other header kept). Reads the blob when ``state`` is None. Returns the blob as last seen; None
    (or another delivery's state) when it is no longer this delivery's.

    The blob is read after the copy, never through the link: a HEAD through the link's SAS may
    show response-header overrides (rsct) instead of what the copy carried.
    """
    if state is None:
        state = await store.state(target.blob_name)
    for _ in range(MAX_ROUNDS):
        if state is None or state.delivery != target.delivery or state.content_type == target.content_type:
            return state
        try:
            etag = await store.set_content_type(target.blob_name, state, target.content_type)
            return replace(state, etag=etag)
        except Conflict:
            state = await store.state(target.blob_name)  # changed since read: by a twin, or by a newer export
    return state


@dataclass
class Concluded:
    """What :func:`conclude_success` did."""

    ours: bool  # False: the blob (or the task) turned out to be another delivery's
    retired: list[str] = field(default_factory=list)
    superseded_by: str | None = None  # the newer export's blob, when this one was retired itself


async def conclude_success(
    store: BlobStore,
    target: Target,
    state: BlobState | None,
    *,
    step: Step,
    snapshot: Snapshot,
    confirmed: bool,
    tags_written: bool,
    copy_id: str | None,
    replaced: list[str] | None = None,
    previous: dict[str, Any] | None = None,
    rewrite: bool = False,
    look_up: bool = True,
) -> Concluded:
    """A copy of this delivery that succeeded: Content-Type, manifest ``success``, the snapshot kept
    for a failed overwrite dropped, then the task's older files retired (one current file per task).

    The header fix, the manifest write and the look-up of the task's other files run side by side:
    the copy's answer (or ``state``) already proves the blob is this delivery's, and the manifest's
    own condition covers the rest. When the manifest already said ``success`` for this delivery
    (a duplicate), whoever wrote it did the rest: nothing more is asked of storage.
    """
    # ``look_up`` False: this copy went over the same name (a re-export, a restart), which retires
    # nothing new; the reconciliation's sweep covers a look-up that failed. A manifest that already
    # said success (a duplicate) was written by whoever did the rest, unless this request copied again.
    look_up = (
        look_up
        and target.manifest_name is not None
        and (rewrite or not describes(snapshot if isinstance(snapshot, Manifest) else None, target.delivery, "success"))
    )
    headers, recorded, names = await asyncio.gather(
        fix_content_type(store, target, state),
        record_manifest(
            store,
            target,
            copy_status="success",
            step=step,
            copy_id=copy_id,
            tags_written=tags_written,
            snapshot=snapshot,
            confirmed=confirmed,
            replaced=replaced,
            rewrite=rewrite,
            # When storage finished the copy, not when this driver noticed (a verifier, hours later).
            completed_at=(state.copy_completion_time or state.last_modified) if state is not None else None,
        ),
        _task_manifests(store, target) if look_up and snapshot != UNREAD else _nothing(),
    )
    if headers is None or headers.delivery != target.delivery or not recorded.ours:
        return Concluded(False)
    if recorded.etag is None:
        return Concluded(True)  # the manifest already said so: nothing new to retire
    if not previous:
        # Noted in the pending manifest by whoever started the copy (a twin or a verifier concludes it).
        prior = snapshot.document if isinstance(snapshot, Manifest) and not snapshot.foreign else {}
        mine = prior if prior.get("delivery") == target.delivery else {}
        stored = target.manifest.get("previous") or mine.get("previous")
        previous = stored if isinstance(stored, dict) else {}
    if previous.get("snapshot"):
        try:
            await store.delete_snapshot(target.blob_name, str(previous["snapshot"]))
        except StoreError as exc:  # billed only for the blocks that differ; never worth failing a delivery
            log.warning("could not delete the snapshot kept for %s (%s)", target.blob_name, exc.message)
    if snapshot == UNREAD and look_up:  # not looked up beside the write (a repaired manifest)
        names = await _task_manifests(store, target)
    if names is None:
        # Stored, recorded, but whether a newer export already replaced it is not known: no 2xx on a guess
        # (a replay must never be answered "stored"). The queue function or the sweep decides it later.
        raise StorageUnavailable(
            "Azure Storage did not answer the look-up of this task's other files; the receiver checks again by itself."
        )
    return await retire_older_exports(
        store, target, headers, names, manifest_etag=recorded.etag, manifest=recorded.document, step=step
    )


async def _nothing() -> list[str] | None:
    return []


# --- one current file per task ---------------------------------------------------------------


def _tag_query(target: Target) -> str:
    task = fold_tag_text(target.task_id, MAX_TAG_VALUE)
    workspace = fold_tag_text(target.workspace_id, MAX_TAG_VALUE)
    # copyStatus is a tag only manifests carry (a sender's metadata can never write it).
    return f"\"taskId\"='{task}' AND \"workspaceId\"='{workspace}' AND \"copyStatus\" >= '0'"


def _same_task(document: dict[str, Any], target: Target) -> bool:
    """Exactly this task: tag values are folded and cut, so two tasks may share them. A repaired
    (``partial``) manifest took its ids from blob metadata, which cuts long ones: it is never trusted
    to name a task, so its file is left for a person (``ops find`` shows it)."""
    return (
        not document.get("partial")
        and str(document.get("taskId")) == target.task_id
        and str(document.get("workspaceId")) == target.workspace_id
    )


def _newer(document: dict[str, Any], target: Target) -> bool:
    """Was the other export received after this one? By the receiver's own receive times (never the
    export dates SmartDocumentor sends), the delivery hash breaking a tie."""
    theirs = (str(document.get("receivedAt") or ""), str(document.get("delivery") or ""))
    ours = (str(target.manifest.get("receivedAt") or ""), target.delivery)
    return theirs > ours


async def _task_manifests(store: BlobStore, target: Target) -> list[str] | None:
    """The task's manifests; None when the look-up failed (an index that lags is covered by the
    reconciliation's sweep)."""
    try:
        return await store.task_manifests(prefix=target.task_prefix, tag_query=_tag_query(target))
    except StoreError as exc:
        log.warning("could not look up the task's other files (%s) %s", exc.message, about())
        return None


async def retire_older_exports(
    store: BlobStore,
    target: Target,
    state: BlobState,
    names: list[str],
    *,
    manifest_etag: str | None,
    step: Step,
    manifest: dict[str, Any] | None = None,
) -> Concluded:
    """After this delivery's copy succeeded: remove the task's other files (and their manifests)
    that hold older exports, each If-Match on what was read, and name them in this manifest's
    history and ``replaced``. If another file of the task holds an export that already replaced
    this one (a late retry or a replay that landed under another name), this one is the stale one:
    its own blob and manifest are removed instead, and the answer is ``superseded``.

    A task's files are found under its name prefix (a strongly consistent listing) when the
    template gives one, else by index tags (eventually consistent: the reconciliation finishes
    what a lagging index hid). Exports still copying are not deleted here: they are named in
    ``replaced``, and their own driver removes them when they conclude.
    """
    if target.manifest_name is None:
        return Concluded(True)
    others = [name for name in names if name != target.manifest_name and name.endswith(MANIFEST_SUFFIX)]
    if not others:
        return Concluded(True)
    # Every candidate's manifest and file in one round: the names all come from the look-up.
    files = [name.removesuffix(MANIFEST_SUFFIX) for name in others]
    read = await asyncio.gather(*(store.read_manifest(name) for name in others), *(store.state(f) for f in files))
    manifests, states = read[: len(others)], read[len(others) :]
    doomed: list[tuple[str, BlobState | None, Manifest]] = []
    replaced: list[str] = []
    ours = manifest if manifest is not None else target.manifest
    already = set(ours.get("replaced") or [])
    for name, file, found, file_state in zip(others, files, manifests, states, strict=True):
        if not isinstance(found, Manifest) or found.foreign or not _same_task(found.document, target):
            continue
        theirs = str(found.document.get("delivery") or "")
        if target.delivery in (found.document.get("replaced") or []) and theirs not in already:
            return await _retire_self(store, target, state, manifest_etag, newer=name.removesuffix(MANIFEST_SUFFIX))
        # Older: one this export replaced, the same export under an older name (a retry after midnight
        # with a date in the template), or one received before this one. A newer one retires this.
        if theirs not in already and theirs != target.delivery and _newer(found.document, target):
            continue
        replaced.append(theirs)  # still copying: named here, and it retires itself when it concludes
        if file_state is None or (
            isinstance(file_state, BlobState) and file_state.delivery == theirs and file_state.copy_settled
        ):
            doomed.append((file, file_state if isinstance(file_state, BlobState) else None, found))
    if not replaced:
        return Concluded(True)
    # The intent first: once this manifest names them as replaced, none of them can come back.
    entry = Step(step.by, step.at, "retired", {"retired": [file for file, _, _ in doomed]})
    if not await _note(store, target, manifest_etag, entry, replaced, manifest):
        return Concluded(True)
    retired: list[str] = []
    for file, file_state, older in doomed:
        try:
            if file_state is not None:
                await store.delete(file, etag=file_state.etag)
            await store.delete(file + MANIFEST_SUFFIX, etag=older.etag)
            retired.append(file)
        except Conflict:
            log.info("left %s to the request that changed it (%s)", store.describe(file), about())
        except StoreError as exc:  # this export is stored: the reconciliation's sweep retries the rest
            log.warning("could not retire %s (%s); the reconciliation will (%s)", file, exc.message, about())
    if retired:
        log.info("retired %d older file(s) of the task %s", len(retired), about())
    return Concluded(True, retired)


async def _note(
    store: BlobStore,
    target: Target,
    etag: str | None,
    step: Step,
    replaced: list[str] | None = None,
    document: dict[str, Any] | None = None,
) -> bool:
    """Append ``step`` (and ``replaced``) to this delivery's own manifest, If-Match on what this
    request wrote (``etag``, ``document``), reading it again only when someone wrote it since. False
    when the manifest is no longer this delivery's."""
    name = target.manifest_name or ""
    current = Manifest(document, etag) if document is not None and etag is not None else None
    for _ in range(MAX_ROUNDS):
        if current is None:
            current = await store.read_manifest(name)
        if current is None or current.foreign or current.document.get("delivery") != target.delivery:
            return False
        updated = with_history(current.document, step)
        updated["replaced"] = merge_replaced(replaced, current.document.get("replaced"))
        try:
            await _put(store, name, updated, etag=current.etag, status=str(updated.get("copyStatus") or "success"))
            return True
        except Conflict:
            current = None  # someone (a twin) wrote it since: build on what is there now
    return False


async def note(store: BlobStore, manifest_name: str, delivery: str, step: Step) -> bool:
    """Append ``step`` to the manifest of ``delivery`` (If-Match on what was read), best effort: a step
    that changes nothing else (a message poisoned, replayed) still belongs in the delivery's story.
    False when the manifest is not this delivery's, changed meanwhile, or storage failed."""
    try:
        current = await store.read_manifest(manifest_name)
        if current is None or current.foreign or current.document.get("delivery") != delivery:
            return False
        document = with_history(current.document, step)
        await _put(
            store, manifest_name, document, etag=current.etag, status=str(document.get("copyStatus") or "pending")
        )
        return True
    except StoreError:
        return False


async def _retire_self(
    store: BlobStore, target: Target, state: BlobState, manifest_etag: str | None, *, newer: str
) -> Concluded:
    """This export was already replaced by the task's export at ``newer``: remove this copy (If-Match:
    only as this delivery left it) and its manifest."""
    try:
        await store.delete(target.blob_name, etag=state.etag)
        manifest = await store.read_manifest(target.manifest_name or "")
        if manifest is not None and not manifest.foreign and manifest.document.get("delivery") == target.delivery:
            await store.delete(target.manifest_name or "", etag=manifest.etag)
    except Conflict:
        pass  # changed meanwhile: whoever changed it owns it
    except StoreError as exc:  # the newer export's sweep retires it later
        log.warning("could not remove the replaced copy %s (%s)", target.blob_name, exc.message)
    log.info("an export already replaced arrived again; removed its copy, %s is current (%s)", newer, about())
    return Concluded(False, superseded_by=newer)


async def replaced_elsewhere(store: BlobStore, target: Target) -> str | None:
    """The blob name of a task export that already replaced this delivery, if there is one: checked
    before a copy is restarted into an empty name, so a replay never brings an older export back."""
    # Not best effort: a look-up that fails must not let a replay restart (the caller tries again later).
    for name in await store.task_manifests(prefix=target.task_prefix, tag_query=_tag_query(target)):
        if name == target.manifest_name or not name.endswith(MANIFEST_SUFFIX):
            continue
        manifest = await store.read_manifest(name)
        if manifest is None or manifest.foreign or not _same_task(manifest.document, target):
            continue
        if target.delivery in (manifest.document.get("replaced") or []):
            return name.removesuffix(MANIFEST_SUFFIX)
    return None


# --- failure -----------------------------------------------------------------------------------

FailureResult = Literal["failed", "restored", "left"]


async def conclude_failure(
    store: BlobStore,
    target: Target,
    state: BlobState | None,
    *,
    step: Step,
    reason: str,
    snapshot: Snapshot = UNREAD,
    copy_id: str | None = None,
    tags_written: bool = True,
) -> FailureResult:
    """A copy of this delivery that can never succeed (the drivers decide that: no queue message,
    poison message or valid link can finish it, or the reason says how to retry).

    The blob this copy emptied gets the task's earlier export back when there is a snapshot of it
    (an asynchronous re-export over a stored file), else it is removed; both If-Match on the
    failed blob as read. A conflict (412) ends here with nothing written: someone newer owns the
    blob. Then the manifest says ``failed`` (with ``failedAt`` and ``failureReason``), unless it
    already says ``success`` for this delivery or belongs to another one.
    """
    if state is not None:
        if state.delivery != target.delivery:
            return "left"
        try:
            if await _restore_earlier(store, target, state, step=step, reason=reason):
                return "restored"
            await store.delete(target.blob_name, etag=state.etag)
        except Conflict:
            log.info("left %s to the newer request that changed it (%s)", store.describe(target.blob_name), about())
            return "left"
    if target.manifest_name is None:
        return "failed"
    for _ in range(MAX_ROUNDS):
        if snapshot == UNREAD:
            snapshot = await store.read_manifest(target.manifest_name)
        if snapshot is not None and (
            snapshot.foreign or snapshot.document.get("delivery") not in (None, target.delivery)
        ):
            return "failed"  # another delivery's manifest (or not a manifest): leave it
        if describes(snapshot, target.delivery, "failed"):
            return "failed"
        document = compose(
            target,
            snapshot,
            copy_status="failed",
            copy_id=copy_id,
            tags_written=tags_written,
            step=step,
            failure_reason=reason,
        )
        try:
            await _put(
                store, target.manifest_name, document, etag=None if snapshot is None else snapshot.etag, status="failed"
            )
            return "failed"
        except Conflict:
            snapshot = UNREAD
    return "failed"


async def _restore_earlier(store: BlobStore, target: Target, state: BlobState, *, step: Step, reason: str) -> bool:
    """Put the task's earlier export back over the blob this failed copy emptied, from the snapshot
    taken before the overwrite, and its manifest with it (history: ``restored``). Raises Conflict when
    the blob changed since it was read."""
    manifest = await store.read_manifest(target.manifest_name) if target.manifest_name else None
    previous: dict[str, Any] = {}
    if manifest is not None and not manifest.foreign and manifest.document.get("delivery") == target.delivery:
        stored = manifest.document.get("previous")
        previous = stored if isinstance(stored, dict) else {}
    snapshot_id, earlier_delivery = str(previous.get("snapshot") or ""), str(previous.get("delivery") or "")
    if not snapshot_id:
        # No pending manifest says it (failed within the webhook's wait, or lost): the blob's own
        # snapshots still say what it held.
        for candidate, metadata in await store.snapshots(target.blob_name):
            if metadata.get("delivery") and metadata.get("delivery") != target.delivery:
                snapshot_id, earlier_delivery = candidate, metadata["delivery"]
                break
    if not snapshot_id:
        return False
    status = await store.restore_snapshot(target.blob_name, snapshot_id, etag=state.etag)
    if status == "success":
        await store.delete_snapshot(target.blob_name, snapshot_id)
    earlier = previous.get("manifest")
    if not isinstance(earlier, dict) and manifest is not None and not manifest.foreign:
        earlier = manifest.document if manifest.document.get("delivery") == earlier_delivery else None
    if target.manifest_name is not None and not isinstance(earlier, dict):
        # Its manifest is kept nowhere: rebuild one from the restored blob, so the two still agree.
        restored = await store.state(target.blob_name)
        if restored is not None and restored.delivery == earlier_delivery:
            await repair_manifest(
                store,
                target.manifest_name,
                restored,
                manifest,
                step=step,
                reason=f"the re-export {target.delivery[:12]} failed ({reason}); the earlier export was put back",
            )
    if target.manifest_name is not None and isinstance(earlier, dict):
        document = with_history(
            earlier,
            Step(
                step.by,
                step.at,
                "restored",
                {
                    "reason": f"The re-export {target.delivery[:12]} failed ({reason}); this export was put back.",
                    "failedDelivery": target.delivery,
                },
            ),
        )
        with contextlib.suppress(Conflict):  # written meanwhile by a newer delivery: its manifest stays
            await _put(
                store,
                target.manifest_name,
                document,
                etag=None if manifest is None else manifest.etag,
                status=str(document.get("copyStatus") or "success"),
            )
    log.warning(
        "the re-export %s of %s failed (%s); the earlier export was put back",
        target.delivery[:12],
        store.describe(target.blob_name),
        reason,
    )
    return True


# --- repair ------------------------------------------------------------------------------------


def blob_received(state: BlobState) -> tuple[str | None, str]:
    """When storage says the blob's export arrived: its copy's completion time (the copy was started
    on receipt), else its last write, else its creation. Never the time of a repair."""
    if state.copy_completion_time is not None:
        return iso(state.copy_completion_time), "the blob's copy completion time"
    if state.last_modified is not None:
        return iso(state.last_modified), "the blob's last-modified time"
    if state.creation_time is not None:
        return iso(state.creation_time), "the blob's creation time"
    return None, "nothing: storage did not say"


async def repair_manifest(
    store: BlobStore,
    manifest_name: str,
    state: BlobState,
    snapshot: Manifest | None,
    *,
    step: Step,
    reason: str = "the manifest did not describe the blob",
) -> Literal["repaired", "skipped"]:
    """Make a manifest that describes another export (or none) describe the blob next to it, from
    what the blob itself carries (metadata, tags). Marked ``partial`` and ``repairedAt``: the
    payload's other fields were in the lost manifest. ``receivedAt`` comes from the blob
    (:func:`blob_received`, named in ``receivedAtFrom``), never from the older export's manifest or
    the repair's clock. Conditional on the manifest as read; a conflict means someone wrote it:
    leave it."""
    if snapshot is not None and snapshot.foreign:
        return "skipped"
    blob_name = manifest_name.removesuffix(MANIFEST_SUFFIX)
    meta = state.metadata
    status: CopyStatus = (
        "success" if state.copy_settled else ("pending" if state.copy_status == "pending" else "failed")
    )
    received, received_from = blob_received(state)
    document: dict[str, Any] = {
        "taskId": unquote(meta.get("taskid", "")),
        "taskNumber": meta.get("tasknumber"),
        "workspaceId": unquote(meta.get("workspaceid", "")),
        "displayName": unquote(meta.get("displayname", "")),
        "totalPages": meta.get("totalpages") or None,
        "exportedFileUrl": unquote(meta.get("source", "")),
        "exportedFileContentType": state.content_type,
        "source": unquote(meta.get("source", "")),
        "blob": store.describe(blob_name),
        "delivery": state.delivery,
        "copyId": state.copy_id,
        "copyStatus": status,
        "tags": await store.blob_tags(blob_name),
        "receivedAt": received,
        "receivedAtFrom": received_from,
        "repairedAt": iso(step.at),
        "partial": True,
    }
    if status == "success" and received:
        document["completedAt"] = received
    earlier = snapshot.document if snapshot is not None and snapshot.document.get("delivery") == state.delivery else {}
    document["history"] = earlier.get("history") or []
    document["replaced"] = merge_replaced(earlier.get("replaced"))
    repaired = f"manifest rebuilt from the blob; receivedAt from {received_from}"
    document = with_history(
        document, Step(step.by, step.at, "repaired", {"reason": reason, "repaired": repaired, **step.details})
    )
    try:
        await _put(store, manifest_name, document, etag=None if snapshot is None else snapshot.etag, status=status)
    except Conflict:
        return "skipped"
    return "repaired"
