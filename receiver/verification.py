"""Finish copies whose outcome was not known when the HTTP answer went out (queue-triggered).

A message is sent for a copy still running at the wait deadline (202), and for a copy whose
answer was lost to a timeout or a storage failure after it was sent (503). The message carries
the SAS URL (a restart needs it), so nothing here logs the message, and the model's repr hides it.

Final failures (the link expired, the source refused or gone) are final at once: one ERROR line,
the empty blob removed (If-Match), the manifest marked ``failed``, and the function returns
normally: raising would only make the host try again.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .delivery import use_sync_copy, wait_for_copy
from .plan import CopyPlan, manifest_bytes, task_prefix
from .runtime import Runtime
from .store import BlobState, BlobStore, Conflict, Manifest, SourceUnreadable, SyncCopyRefused
from .telemetry import CURRENT, recording
from .transitions import Driver, Step, conclude_failure, conclude_success, note, replaced_elsewhere

log = logging.getLogger("receiver.verification")

# host.json extensions.queues.maxDequeueCount: the try after which the host poisons the message.
MAX_DEQUEUE_COUNT = 40
# The whole manifest travels in the message when it is this small (queue messages hold 64 KiB
# after the host's base64); otherwise the manifest written before the 202 is completed instead.
MAX_MANIFEST_IN_MESSAGE = 24 * 1024
POISON_QUEUE = "smartdocumentor-copy-verifications-poison"


class CopyStillRunning(Exception):
    """Raised so the Functions host puts the message back and tries again after visibilityTimeout."""


class PendingCopy(BaseModel):
    """The queue message: what is needed to finish, restart or report the copy."""

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    container: str
    blob_name: str = Field(alias="blob")
    copy_id: str | None = Field(default=None, alias="copyId")
    source_url: str = Field(alias="sourceUrl", repr=False)
    public_url: str = Field(default="", alias="source")
    expires_on: datetime = Field(alias="expiresOn")
    delivery: str
    content_type: str = Field(alias="contentType")
    metadata: dict[str, str]
    tags: dict[str, str]
    tags_written: bool = Field(default=True, alias="tagsWritten")
    manifest_name: str | None = Field(default=None, alias="manifestName")
    manifest_document: dict[str, Any] | None = Field(default=None, alias="manifest", repr=False)
    task_id: str = Field(alias="taskId")
    workspace_id: str = Field(alias="workspaceId")
    task_prefix: str | None = Field(default=None, alias="taskPrefix")
    replaced: list[str] = Field(default_factory=list)  # the exports this copy replaces (CONTRACT 7)

    def describe(self) -> str:
        return f"task={self.task_id} workspace={self.workspace_id} blob={self.container}/{self.blob_name}"


def verification_message(
    plan: CopyPlan, copy_id: str | None, container: str, *, tags_written: bool, replaced: list[str] | None = None
) -> str:
    manifest = plan.manifest if len(manifest_bytes(plan.manifest)) <= MAX_MANIFEST_IN_MESSAGE else None
    message = PendingCopy(
        container=container,
        blob_name=plan.blob_name,
        copy_id=copy_id,
        source_url=plan.source.url,
        public_url=plan.source.public_url,
        expires_on=plan.source.expires_on,
        delivery=plan.delivery,
        content_type=plan.content_type,
        metadata=plan.metadata,
        tags=plan.tags,
        tags_written=tags_written,
        manifest_name=plan.manifest_name,
        manifest_document=manifest,
        task_id=plan.task_id,
        workspace_id=plan.workspace_id,
        task_prefix=plan.task_prefix,
        replaced=replaced or [],
    )
    return message.model_dump_json(by_alias=True, exclude_none=True)


@dataclass(frozen=True)
class _Target:
    """A pending copy as the transitions (receiver.transitions) see it."""

    blob_name: str
    content_type: str
    manifest_name: str | None
    manifest: dict[str, Any]
    delivery: str
    task_id: str
    workspace_id: str
    task_prefix: str | None


# "waiting": a copy only its link can restart, and the link is not here (the reconciliation): left
# pending while the link is valid, for a queue or poison message to finish. "left": a newer request
# changed the blob while this one concluded; it stopped with nothing written.
Result = Literal["finished", "superseded", "failed", "restored", "pending", "waiting", "left", "unreadable"]


async def verify_copy(
    body: bytes,
    *,
    runtime: Runtime,
    now: datetime,
    dequeue_count: int = 1,
    wait_seconds: float | None = None,
) -> Result:
    """Finish, restart or give up on one copy. Raises CopyStillRunning to have the host try again."""
    with recording("verification") as record:
        try:
            pending = PendingCopy.model_validate(json.loads(body))
        except (ValueError, ValidationError):
            record.outcome, record.final_failure = "unreadable", True
            record.reason = "the verification message is unreadable; it was dropped"
            return "unreadable"
        record.task_id, record.workspace_id = pending.task_id, pending.workspace_id
        record.blob = f"{pending.container}/{pending.blob_name}"
        record.delivery, record.copy_id = pending.delivery, pending.copy_id
        last_try = dequeue_count >= MAX_DEQUEUE_COUNT
        try:
            settings = runtime.settings()
            store = runtime.store()
            wait = settings.copy_wait_seconds if wait_seconds is None else wait_seconds
            result = await settle_pending(
                store,
                pending,
                now=now,
                wait_seconds=wait,
                sync_copy_max_mib=settings.sync_copy_max_mib,
                by="verifier",
                task_template=settings.blob_name_template,
            )
        except Exception as exc:
            if last_try:  # the host poisons the message after this try: nothing will retry it by itself
                record.outcome, record.final_failure = "poisoned", True
                record.reason = (
                    f"the last verification try failed ({type(exc).__name__}); the host moves the message to "
                    f"{POISON_QUEUE}: once storage is healthy, run python -m ops replay-poison"
                )
            raise
        record.outcome = result
        if result == "pending":
            if last_try:
                if pending.manifest_name:
                    await note(
                        store,
                        pending.manifest_name,
                        pending.delivery,
                        Step(
                            "verifier",
                            now,
                            "poisoned",
                            {
                                "reason": f"still pending after {MAX_DEQUEUE_COUNT} tries; "
                                f"its message (with the link) goes to {POISON_QUEUE}"
                            },
                        ),
                    )
                record.outcome, record.final_failure = "poisoned", True
                record.reason = (
                    f"the copy is still pending after {MAX_DEQUEUE_COUNT} verification tries; the host moves the "
                    f"message to {POISON_QUEUE} and its manifest stays pending for the reconciliation. Check the "
                    f"copy with python -m ops check '{pending.blob_name}', then run python -m ops replay-poison "
                    "--dry-run and python -m ops replay-poison to try again"
                )
            raise CopyStillRunning(f"copy still pending {pending.describe()}")
        return result


async def settle_pending(
    store: BlobStore,
    pending: PendingCopy,
    *,
    now: datetime,
    wait_seconds: float,
    sync_copy_max_mib: int,
    by: Driver,
    task_template: str | None = None,
    known: BlobState | Literal["unread"] | None = "unread",
    manifest: Manifest | Literal["unread"] | None = "unread",
) -> Result:
    """One look at a copy whose outcome is not known yet: the queue function's rules, which the
    reconciliation and the operator command line follow too (``by`` names the driver in the
    manifest's history). Without the link (``source_url`` empty: the reconciliation never has it),
    a failed or missing copy cannot be restarted: it is left ``waiting`` while the link is valid (a
    queue or poison message can still finish it) and fails only once the link has expired.
    ``known``: the blob as the caller just read it (no wait); ``manifest``: the manifest as the caller
    read it *before* that."""
    if known == "unread":
        state = await wait_for_copy(store, pending.blob_name, deadline=time.monotonic() + wait_seconds)
    else:
        state = known
    target = target_of(pending, pending.manifest_document or {}, task_template)
    for attempt in range(2):
        if state is not None and state.delivery != pending.delivery:
            log.info("copy superseded by a newer export %s", pending.describe())
            return "superseded"
        if state is not None and state.copy_settled:
            return await _finish(store, pending, state, manifest, by=by, now=now, task_template=task_template)
        if state is not None and state.copy_status == "pending":
            return "pending"
        # failed, aborted, or never created: copy again while the link works
        if state is None and attempt == 0 and await replaced_elsewhere(store, target) is not None:
            log.info("the task's newer export replaced it; nothing to finish or fail %s", pending.describe())
            return "superseded"
        reason = _final_reason(pending, state, now)
        if reason is not None:
            return await _give_up(store, pending, state, reason, manifest, by=by, now=now, task_template=task_template)
        if not pending.source_url:
            return "waiting"  # only its queue or poison message (which holds the link) can restart it
        if attempt:
            break
        try:
            await _restart(store, pending, state, sync_copy_max_mib=sync_copy_max_mib)
        except SourceUnreadable as exc:
            return await _give_up(
                store,
                pending,
                state,
                f"the source was refused or is gone ({exc.code})",
                manifest,
                by=by,
                now=now,
                task_template=task_template,
            )
        except Conflict:
            return "pending"  # someone changed the blob meanwhile: look again on the next try
        state = await wait_for_copy(store, pending.blob_name, deadline=time.monotonic() + wait_seconds)
    return "pending"


def _final_reason(pending: PendingCopy, state: BlobState | None, now: datetime) -> str | None:
    if pending.expires_on <= now:
        return f"the file link expired at {pending.expires_on.isoformat()}"
    description = (state.copy_description or "") if state is not None else ""
    if state is not None and state.copy_status == "failed" and description[:3] in ("403", "404"):
        return f"the source was refused or is gone ({description[:3]})"
    return None


def _prefix(pending: PendingCopy, task_template: str | None) -> str | None:
    """The task's name prefix: from the message, else from the current template when the blob's name
    still starts with it (the template may have changed since the delivery)."""
    if pending.task_prefix is not None:
        return pending.task_prefix
    if task_template is None:
        return None
    prefix = task_prefix(task_template, pending.workspace_id, pending.task_id)
    return prefix if prefix is not None and pending.blob_name.startswith(prefix) else None


def target_of(pending: PendingCopy, manifest: dict[str, Any], task_template: str | None) -> _Target:
    """A pending copy as the transitions see it."""
    return _Target(
        pending.blob_name,
        pending.content_type,
        pending.manifest_name,
        manifest,
        pending.delivery,
        pending.task_id,
        pending.workspace_id,
        _prefix(pending, task_template),
    )


async def _manifest_base(
    store: BlobStore, pending: PendingCopy, known: Manifest | Literal["unread"] | None = "unread"
) -> tuple[dict[str, Any], Manifest | None]:
    """The manifest to complete: the stored one when it is this delivery's, else the message's own,
    else what the message knows (``partial``). Returns it with the snapshot it was read as."""
    if known != "unread":
        snapshot = known
    else:
        snapshot = await store.read_manifest(pending.manifest_name) if pending.manifest_name else None
    stored_is_ours = (
        snapshot is not None and not snapshot.foreign and snapshot.document.get("delivery") == pending.delivery
    )
    if stored_is_ours and snapshot is not None and not snapshot.document.get("partial"):
        return snapshot.document, snapshot
    if pending.manifest_document is not None:  # the whole payload, better than a partial repair
        return pending.manifest_document, snapshot
    if stored_is_ours and snapshot is not None:
        return snapshot.document, snapshot
    return {
        "taskId": pending.task_id,
        "workspaceId": pending.workspace_id,
        "exportedFileUrl": pending.public_url,
        "exportedFileContentType": pending.content_type,
        "source": pending.public_url,
        "blob": f"{pending.container}/{pending.blob_name}",
        "delivery": pending.delivery,
        "tags": pending.tags,
        "blobMetadata": pending.metadata,
        "linkExpiresOn": pending.expires_on.isoformat().replace("+00:00", "Z"),
        "partial": True,
    }, snapshot


async def _finish(
    store: BlobStore,
    pending: PendingCopy,
    state: BlobState,
    manifest: Manifest | Literal["unread"] | None,
    *,
    by: Driver,
    now: datetime,
    task_template: str | None,
) -> Result:
    base, snapshot = await _manifest_base(store, pending, manifest)
    tags_written = pending.tags_written and store.tags_supported
    # A manifest read only now was read *after* the blob: the blob must be seen again before writing.
    confirmed = manifest != "unread"
    concluded = await conclude_success(
        store,
        target_of(pending, base, task_template),
        state,
        step=Step(by, now, "stored", {"copyId": state.copy_id}),
        snapshot=snapshot,
        confirmed=confirmed,
        tags_written=tags_written,
        copy_id=state.copy_id or pending.copy_id,
        replaced=pending.replaced,
    )
    if concluded.ours:
        log.info("copy finished %s", pending.describe())
        return "finished"
    log.info("copy superseded by a newer export %s", pending.describe())
    return "superseded"


async def _give_up(
    store: BlobStore,
    pending: PendingCopy,
    state: BlobState | None,
    reason: str,
    manifest: Manifest | Literal["unread"] | None = "unread",
    *,
    by: Driver,
    now: datetime,
    task_template: str | None,
) -> Result:
    """A copy that can never succeed: the earlier export put back (or the empty blob removed), the
    manifest marked failed, one ERROR. A 412 on the cleanup ends it with nothing written."""
    base, snapshot = await _manifest_base(store, pending, manifest)
    sentence = f"The copy failed for good: {reason}. Export the document again from SmartDocumentor."
    ended = await conclude_failure(
        store,
        target_of(pending, base, task_template),
        state,
        step=Step(by, now, "failed", {"reason": sentence}),
        reason=sentence,
        snapshot=snapshot,
        copy_id=pending.copy_id,
        tags_written=pending.tags_written,
    )
    if ended == "left":
        log.info("left the blob to the request that changed it %s", pending.describe())
        return "left"
    record = CURRENT.get()
    message = f"copy failed for good: {reason}; export the document again"
    if ended == "restored":
        message += " (the task's earlier export was put back)"
    if record is not None:  # the operation's one record is the ERROR line
        record.final_failure = True
        record.reason = message
    else:
        log.error("%s %s", message, pending.describe())
    return "restored" if ended == "restored" else "failed"


async def _restart(store: BlobStore, pending: PendingCopy, state: BlobState | None, *, sync_copy_max_mib: int) -> None:
    log.warning("copy restarted %s", pending.describe())
    sync = await use_sync_copy(store, pending.source_url, sync_copy_max_mib)
    for attempt_sync in (True, False) if sync else (False,):
        try:
            await store.start_copy(
                pending.blob_name,
                pending.source_url,
                metadata=pending.metadata,
                tags=pending.tags,
                sync=attempt_sync,
                if_etag=state.etag if state else None,
            )
            return
        except SyncCopyRefused:
            continue  # over 256 MiB (or empty): the asynchronous copy takes it
