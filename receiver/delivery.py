"""Carry out a :class:`CopyPlan`: copy server-side, then record it, owning the blob by ETag.

The destination blob's states and who may move it where are drawn in docs/state-machine.md.
The rules, in short:

- the copy creates the blob (If-None-Match: *) or overwrites the version it read (If-Match);
- every later write or delete of the blob carries If-Match on the ETag this request produced or
  read; a conflict means a newer request owns it now: leave it;
- a copy that succeeded is never deleted because a later step failed;
- the manifest is written conditionally too (see :func:`record_manifest`), so a delayed write from
  an older delivery can never replace the manifest of the blob next to it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from .plan import CopyPlan, manifest_bytes, manifest_labels
from .settings import SYNC_COPY_LIMIT_MIB
from .store import BlobState, BlobStore, Conflict, Manifest, StorageUnavailable, SyncCopyRefused
from .telemetry import about

log = logging.getLogger("receiver.delivery")

POLL_FIRST_SECONDS = 0.2
POLL_MAX_SECONDS = 2.0
MAX_ROUNDS = 4
MIB = 1024 * 1024

CopyStatus = Literal["pending", "success", "failed"]


class CopyFailed(Exception):
    """Azure Storage could not read the source (the copy failed or was refused): 502."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotStored(Exception):
    """The file is not (or not surely) stored, through no fault of the source: 503.

    ``track`` asks for a verification message: a copy was sent and how it ended is not known, so
    the queue function finishes the blob (manifest) or cleans it up later.
    """

    def __init__(self, message: str, *, track: bool) -> None:
        super().__init__(message)
        self.message = message
        self.track = track


@dataclass(frozen=True)
class Delivered:
    kind: Literal["stored", "duplicate", "copying", "superseded"]
    blob_name: str
    copy_id: str | None
    tags_written: bool = True


@dataclass
class Progress:
    """What a delivery has done so far, read by the caller when it ends early (timeout, failure)."""

    mode: Literal["sync", "async"] = "sync"
    copy_sent: bool = False
    copy_id: str | None = None
    tags_written: bool = True


class Target(Protocol):
    """What recording a copied blob needs: a CopyPlan, or what the queue function knows."""

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


Sleep = Callable[[float], Awaitable[None]]
# The manifest as read before the blob was last seen to be this delivery's; None: believed absent.
Snapshot = Manifest | None | Literal["unread"]
UNREAD: Literal["unread"] = "unread"


async def wait_for_copy(
    store: BlobStore, name: str, *, deadline: float, sleep: Sleep = asyncio.sleep
) -> BlobState | None:
    """Poll with short backoff until the copy leaves ``pending`` or the deadline passes."""
    delay = POLL_FIRST_SECONDS
    while True:
        state = await store.state(name)
        if state is None or state.copy_status != "pending":
            return state
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return state
        await sleep(min(delay, remaining))
        delay = min(delay * 2, POLL_MAX_SECONDS)


def manifest_document(target: Target, copy_id: str | None, *, tags_written: bool, copy_status: CopyStatus) -> bytes:
    return manifest_bytes(
        {**target.manifest, "copyId": copy_id, "copyStatus": copy_status, "tagsWritten": tags_written}
    )


def describes(manifest: Manifest | None, delivery: str, copy_status: CopyStatus, *, partial_ok: bool = False) -> bool:
    """The manifest is about this delivery and already says as much as ``copy_status`` would.

    A concluded status (success, failed) is never taken back to ``pending`` by a late writer. A partial
    (repaired) manifest does not count unless ``partial_ok``: a writer that has the payload completes it.
    """
    if manifest is None or manifest.document.get("delivery") != delivery:
        return False
    if manifest.document.get("partial") and not partial_ok:
        return False
    stored = manifest.document.get("copyStatus")
    return stored == copy_status or (copy_status == "pending" and stored in ("success", "failed"))


async def record_manifest(
    store: BlobStore,
    target: Target,
    document: bytes,
    *,
    copy_status: CopyStatus,
    snapshot: Snapshot,
    confirmed: bool,
) -> bool:
    """Make the manifest describe this delivery, unless the blob is no longer this delivery's.

    ``snapshot`` is the manifest as read *before* the blob was last seen to hold this delivery
    (``confirmed``), or None when it is believed absent. The write is conditional on it (If-Match,
    or If-None-Match: *), so it lands only if nobody wrote the manifest since; and nobody newer can
    have, because the blob was still this delivery's after that read. On a conflict: read both
    again. Returns False, writing nothing, when the blob belongs to another delivery.
    """
    name = target.manifest_name
    if name is None:
        return True
    for _ in range(MAX_ROUNDS):
        if snapshot == UNREAD:
            snapshot = await store.read_manifest(name)
            confirmed = False
        if describes(snapshot, target.delivery, copy_status):
            return True
        if not confirmed:
            state = await store.state(target.blob_name)
            if state is None or state.delivery != target.delivery:
                return False
            confirmed = True
        tags, metadata = manifest_labels(target.manifest, copy_status)
        try:
            await store.write_manifest(
                name, document, etag=None if snapshot is None else snapshot.etag, tags=tags, metadata=metadata
            )
            return True
        except Conflict:
            snapshot = UNREAD
    raise StorageUnavailable("The manifest kept changing while this delivery wrote it; send the document again.")


async def finish(
    store: BlobStore,
    target: Target,
    state: BlobState,
    *,
    snapshot: Snapshot,
    tags_written: bool,
    confirmed: bool = True,
) -> bool:
    """A successful copy that is this delivery's: Content-Type fixed if it differs, manifest recorded.

    The blob is read (``state``) after the copy, not before: a HEAD through the link's SAS may show
    response-header overrides (rsct) instead of what the copy carried. ``confirmed``: ``state`` was
    read after ``snapshot`` (see :func:`record_manifest`). Returns False when the blob turned out to
    be another delivery's.
    """
    for _ in range(MAX_ROUNDS):
        if state.content_type == target.content_type:
            break
        try:
            await store.set_content_type(target.blob_name, state, target.content_type)
            break
        except Conflict:
            fresh = await store.state(target.blob_name)  # changed since read: by a twin, or by a newer export
            if fresh is None or fresh.delivery != target.delivery:
                return False
            state = fresh
    document = manifest_document(target, state.copy_id, tags_written=tags_written, copy_status="success")
    return await record_manifest(store, target, document, copy_status="success", snapshot=snapshot, confirmed=confirmed)


async def remove_failed_copy(store: BlobStore, name: str, state: BlobState) -> None:
    """Delete the empty blob a failed copy left, as it was read (If-Match); if it changed, it is not ours."""
    try:
        await store.delete(name, etag=state.etag)
    except Conflict:
        log.info("left %s to the newer request that changed it (%s)", store.describe(name), about())


async def use_sync_copy(store: BlobStore, source_url: str, sync_copy_max_mib: int) -> bool:
    """Copy synchronously? Up to the service's 256 MiB the service itself says when a file is too
    large (then the copy falls back to asynchronous); a lower setting asks the source's size first."""
    if sync_copy_max_mib <= 0:
        return False
    if sync_copy_max_mib >= SYNC_COPY_LIMIT_MIB:
        return True
    size = await store.source_size(source_url)
    return size is None or size <= sync_copy_max_mib * MIB


async def deliver(
    store: BlobStore,
    plan: CopyPlan,
    *,
    wait_seconds: float,
    sync_copy_max_mib: int = SYNC_COPY_LIMIT_MIB,
    progress: Progress | None = None,
    sleep: Sleep = asyncio.sleep,
) -> Delivered:
    """Copy the file server-side unless this delivery is already stored.

    Raises CopyFailed (the source), NotStored, or StoreError; ``progress`` tells the caller whether
    a copy was sent, should the call end early.
    """
    progress = progress or Progress()
    sync = await use_sync_copy(store, plan.source.url, sync_copy_max_mib)
    deadline = time.monotonic() + wait_seconds
    if_etag: str | None = None  # None: create (If-None-Match: *); else overwrite exactly this version
    manifest_read: asyncio.Future[Manifest | None] | None = None
    try:
        for _ in range(MAX_ROUNDS):
            progress.mode = "sync" if sync else "async"
            try:
                progress.copy_sent = True
                started = await store.start_copy(
                    plan.blob_name,
                    plan.source.url,
                    metadata=plan.metadata,
                    tags=plan.tags,
                    sync=sync,
                    if_etag=if_etag,
                )
            except SyncCopyRefused:
                sync = False  # over 256 MiB (or empty): the asynchronous copy takes it
                continue
            except Conflict:
                existing = await store.state(plan.blob_name)
                if (
                    existing is not None
                    and existing.copy_status == "pending"
                    and existing.copy_id
                    and existing.delivery != plan.delivery
                ):
                    # An older export is still copying: the newest export wins.
                    await store.abort_copy(plan.blob_name, existing.copy_id)
                    existing = await store.state(plan.blob_name)
                if existing is None:
                    if_etag = None
                    continue
                if existing.delivery == plan.delivery and existing.copy_status in (None, "success", "pending"):
                    return await _same_delivery(store, plan, existing, deadline=deadline, sleep=sleep)
                # A re-export, or a failed leftover: overwrite exactly the version read. The manifest
                # is read now, before the copy, so that the blob check after the copy comes after it.
                if_etag = existing.etag
                if manifest_read is None and plan.manifest_name is not None:
                    manifest_read = asyncio.ensure_future(store.read_manifest(plan.manifest_name))
                continue
            progress.copy_id, progress.tags_written = started.copy_id, started.tags_written
            snapshot: Snapshot = None if manifest_read is None else await manifest_read
            state = None
            if started.status != "success":
                state = await wait_for_copy(store, plan.blob_name, deadline=deadline, sleep=sleep)
            else:
                state = await store.state(plan.blob_name)  # the copy's headers, and proof it is still ours
            if state is None or state.delivery != plan.delivery:
                return replaced(plan, state, started.copy_id, started.tags_written)
            return await _settle(
                store, plan, state, kind="stored", snapshot=snapshot, tags_written=started.tags_written
            )
    finally:
        if manifest_read is not None and not manifest_read.done():
            manifest_read.cancel()
    raise StorageUnavailable("The destination blob kept changing while this delivery tried to store it.")


async def _same_delivery(
    store: BlobStore, plan: CopyPlan, existing: BlobState, *, deadline: float, sleep: Sleep
) -> Delivered:
    """The same delivery again (a retry, or a concurrent twin): no second copy."""
    state: BlobState | None = existing
    if existing.copy_status == "pending":
        state = await wait_for_copy(store, plan.blob_name, deadline=deadline, sleep=sleep)
        if state is None or state.delivery != plan.delivery:
            return replaced(plan, state, existing.copy_id, store.tags_supported)
    assert state is not None
    return await _settle(store, plan, state, kind="duplicate", snapshot=UNREAD, tags_written=store.tags_supported)


async def _settle(
    store: BlobStore,
    plan: CopyPlan,
    state: BlobState,
    *,
    kind: Literal["stored", "duplicate"],
    snapshot: Snapshot,
    tags_written: bool,
) -> Delivered:
    """This delivery's blob, as last read: finish it, track it, or clean up after a failed copy."""
    name = plan.blob_name
    if state.copy_status == "pending":
        # Recorded before the 202 (copyStatus "pending"); the queue function completes it.
        document = manifest_document(plan, state.copy_id, tags_written=tags_written, copy_status="pending")
        if not await record_manifest(
            store, plan, document, copy_status="pending", snapshot=snapshot, confirmed=snapshot != UNREAD
        ):
            return replaced(plan, await store.state(name), state.copy_id, tags_written)
        return Delivered("copying", name, state.copy_id, tags_written)
    if state.copy_status == "failed":
        await remove_failed_copy(store, name, state)
        raise CopyFailed(f"Azure Storage could not copy the file ({state.copy_description or 'failed'}).")
    if state.copy_status == "aborted":
        # Only a newer export aborts a copy, and it owns the blob's next step: nothing to delete here.
        raise NotStored(
            "A newer export of this document cancelled this copy while it ran. "
            "If that export does not arrive, send this one again.",
            track=True,
        )
    if not await finish(store, plan, state, snapshot=snapshot, tags_written=tags_written):
        return replaced(plan, await store.state(name), state.copy_id, tags_written)
    return Delivered(kind, name, state.copy_id, tags_written)


def replaced(plan: CopyPlan, state: BlobState | None, copy_id: str | None, tags_written: bool) -> Delivered:
    """The blob is no longer this delivery's. ``superseded`` only when the newer copy is stored or running."""
    if state is not None and state.delivery != plan.delivery and state.copy_status in (None, "success", "pending"):
        return Delivered("superseded", plan.blob_name, copy_id, tags_written)
    if state is None:
        raise NotStored("The stored file was removed while this delivery was storing it. Send it again.", track=False)
    raise NotStored(
        "A newer export of this document replaced this file, and its copy failed. Send the document again.",
        track=False,
    )
