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
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from .plan import CopyPlan
from .settings import SYNC_COPY_LIMIT_MIB
from .store import BlobState, BlobStore, Conflict, Manifest, StorageUnavailable, SyncCopyRefused
from .transitions import (
    UNREAD,
    Snapshot,
    Step,
    conclude_failure,
    conclude_success,
    merge_replaced,
    record_manifest,
)

log = logging.getLogger("receiver.delivery")

POLL_FIRST_SECONDS = 0.2
POLL_MAX_SECONDS = 2.0
MAX_ROUNDS = 4
MIB = 1024 * 1024


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
    retired: tuple[str, ...] = ()


@dataclass
class Progress:
    """What a delivery has done so far, read by the caller when it ends early (timeout, failure)."""

    mode: Literal["sync", "async"] = "sync"
    copy_sent: bool = False
    copy_id: str | None = None
    tags_written: bool = True
    replaces: list[str] = field(default_factory=list)  # what the copy replaces, for the records written later
    previous: dict[str, Any] | None = None  # the snapshot a failed asynchronous overwrite is undone from


Sleep = Callable[[float], Awaitable[None]]


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


async def use_sync_copy(store: BlobStore, source_url: str, sync_copy_max_mib: int) -> bool:
    """Copy synchronously? Up to the service's 256 MiB the service itself says when a file is too
    large (then the copy falls back to asynchronous); a lower setting asks the source's size first."""
    if sync_copy_max_mib <= 0:
        return False
    if sync_copy_max_mib >= SYNC_COPY_LIMIT_MIB:
        return True
    size = await store.source_size(source_url)
    return size is None or size <= sync_copy_max_mib * MIB


def _replaces(manifest: Manifest | None) -> list[str]:
    if manifest is None or manifest.foreign:
        return []
    return [item for item in manifest.document.get("replaced") or [] if isinstance(item, str)]


async def deliver(
    store: BlobStore,
    plan: CopyPlan,
    *,
    now: datetime,
    wait_seconds: float,
    sync_copy_max_mib: int = SYNC_COPY_LIMIT_MIB,
    progress: Progress | None = None,
    sleep: Sleep = asyncio.sleep,
) -> Delivered:
    """Copy the file server-side unless this delivery is already stored, or already replaced.

    Raises CopyFailed (the source), NotStored, or StoreError; ``progress`` tells the caller whether
    a copy was sent, should the call end early.
    """
    progress = progress or Progress()
    sync = await use_sync_copy(store, plan.source.url, sync_copy_max_mib)
    deadline = time.monotonic() + wait_seconds
    if_etag: str | None = None  # None: create (If-None-Match: *); else overwrite exactly this version
    prior: Manifest | None = None  # the manifest as read before an overwrite; None: believed absent
    existing: BlobState | None = None
    previous: dict[str, Any] | None = None  # the stored export an asynchronous overwrite can be undone to
    made_snapshot = False
    for _ in range(MAX_ROUNDS):
        progress.mode = "sync" if sync else "async"
        if not sync and existing is not None and if_etag == existing.etag and previous is None:
            previous = await _keep_earlier(store, plan, existing, prior)
            made_snapshot = previous is not None
        progress.replaces, progress.previous = _replaced_by_this(plan, existing, prior), previous
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
            if previous is not None and made_snapshot:  # the blob changed before this copy landed
                await store.delete_snapshot(plan.blob_name, str(previous["snapshot"]))
            previous, made_snapshot = None, False
            # The blob and its manifest side by side (one round trip): the manifest is read before anything
            # is overwritten, so a delivery it says was replaced (a late retry, a replayed message) never
            # brings the older export back, and the copy that follows confirms what it read.
            existing, prior = await asyncio.gather(
                store.state(plan.blob_name),
                store.read_manifest(plan.manifest_name) if plan.manifest_name is not None else _absent(),
            )
            if (
                existing is not None
                and existing.delivery != plan.delivery
                and plan.delivery in _replaces(prior)
                and existing.copy_status in (None, "success", "pending")
            ):
                return Delivered("superseded", plan.blob_name, None, progress.tags_written)
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
            previous = _inherited(existing, prior, plan)
            if existing.delivery == plan.delivery and existing.copy_status in (None, "success", "pending"):
                return await _same_delivery(store, plan, existing, prior, now=now, deadline=deadline, sleep=sleep)
            # A re-export, or a failed leftover: overwrite exactly the version read.
            if_etag = existing.etag
            continue
        progress.copy_id, progress.tags_written = started.copy_id, started.tags_written
        replaces = _replaced_by_this(plan, existing, prior)
        if started.status == "success" and sync:
            # Copy Blob From URL answers only once the bytes are committed: its answer is proof enough to
            # record the manifest beside the header read (two round trips in all, not three).
            concluded = await conclude_success(
                store,
                plan,
                None,
                step=Step("webhook", now, "stored", {"status": 200, "copyId": started.copy_id}),
                snapshot=prior,
                confirmed=True,  # the copy's own answer: the blob was this delivery's after ``prior`` was read
                tags_written=started.tags_written,
                copy_id=started.copy_id,
                replaced=replaces,
                previous=previous or {},
                rewrite=True,
                look_up=if_etag is None,
            )
            if concluded.superseded_by is not None:
                return Delivered("superseded", plan.blob_name, started.copy_id, started.tags_written)
            if not concluded.ours:
                return replaced(plan, await store.state(plan.blob_name), started.copy_id, started.tags_written)
            return Delivered("stored", plan.blob_name, started.copy_id, started.tags_written, tuple(concluded.retired))
        state = await wait_for_copy(store, plan.blob_name, deadline=deadline, sleep=sleep)
        if state is None or state.delivery != plan.delivery:
            return replaced(plan, state, started.copy_id, started.tags_written)
        return await _settle(
            store,
            plan,
            state,
            kind="stored",
            now=now,
            snapshot=prior,
            tags_written=started.tags_written,
            replaces=replaces,
            previous=previous,
            rewrite=True,
            look_up=if_etag is None,
        )
    raise StorageUnavailable("The destination blob kept changing while this delivery tried to store it.")


def _inherited(existing: BlobState, prior: Manifest | None, plan: CopyPlan) -> dict[str, Any] | None:
    """A copy over another export's copy that did not finish (aborted, failed, still running) takes
    over the snapshot that copy kept of the task's stored export: failing too, it puts that one back."""
    if existing.delivery in (None, plan.delivery) or existing.copy_settled or prior is None or prior.foreign:
        return None
    kept = prior.document.get("previous") if prior.document.get("delivery") == existing.delivery else None
    return kept if isinstance(kept, dict) and kept.get("snapshot") else None


def _replaced_by_this(plan: CopyPlan, existing: BlobState | None, prior: Manifest | None) -> list[str]:
    """The exports this one replaces at its name: the one it overwrote, and what that one replaced."""
    if existing is None or existing.delivery in (None, plan.delivery):
        return []
    earlier = _replaces(prior) if prior is not None and prior.document.get("delivery") == existing.delivery else []
    return merge_replaced([existing.delivery], earlier)


async def _keep_earlier(
    store: BlobStore, plan: CopyPlan, existing: BlobState, prior: Manifest | None
) -> dict[str, Any] | None:
    """Before an asynchronous copy over a stored export (it empties the blob while it runs, and a
    failed one leaves it empty): a snapshot of that export, and its manifest, so a failure can put
    it back (CONTRACT 7: a re-export never leaves the task without a file)."""
    if existing.delivery in (None, plan.delivery) or not existing.copy_settled:
        return None
    snapshot = await store.snapshot(plan.blob_name, etag=existing.etag)
    earlier = None
    if prior is not None and not prior.foreign and prior.document.get("delivery") == existing.delivery:
        earlier = {key: value for key, value in prior.document.items() if key != "previous"}
    return {"snapshot": snapshot, "delivery": existing.delivery, "manifest": earlier}


async def _absent() -> None:
    return None


async def _same_delivery(
    store: BlobStore,
    plan: CopyPlan,
    existing: BlobState,
    manifest: Manifest | None,
    *,
    now: datetime,
    deadline: float,
    sleep: Sleep,
) -> Delivered:
    """The same delivery again (a retry, or a concurrent twin): no second copy. ``manifest`` was read
    beside ``existing``, not before it: a write it needs confirms the blob again first."""
    state: BlobState | None = existing
    if existing.copy_status == "pending":
        state = await wait_for_copy(store, plan.blob_name, deadline=deadline, sleep=sleep)
        if state is None or state.delivery != plan.delivery:
            return replaced(plan, state, existing.copy_id, store.tags_supported)
    assert state is not None
    return await _settle(
        store,
        plan,
        state,
        kind="duplicate",
        now=now,
        snapshot=manifest,
        confirmed=False,
        tags_written=store.tags_supported,
    )


async def _settle(
    store: BlobStore,
    plan: CopyPlan,
    state: BlobState,
    *,
    kind: Literal["stored", "duplicate"],
    now: datetime,
    snapshot: Snapshot,
    tags_written: bool,
    replaces: list[str] | None = None,
    previous: dict[str, Any] | None = None,
    rewrite: bool = False,
    look_up: bool = True,
    confirmed: bool | None = None,
) -> Delivered:
    """This delivery's blob, as last read: finish it, track it, or clean up after a failed copy."""
    name = plan.blob_name
    if confirmed is None:
        confirmed = snapshot != UNREAD  # read before the copy this state comes after
    if state.copy_status == "pending":
        # Recorded before the 202 (copyStatus "pending"); the queue function completes it.
        recorded = await record_manifest(
            store,
            plan,
            copy_status="pending",
            step=Step("webhook", now, "copying", {"status": 202, "copyId": state.copy_id}),
            copy_id=state.copy_id,
            tags_written=tags_written,
            snapshot=snapshot,
            confirmed=confirmed,
            replaced=replaces,
            previous=previous,
            rewrite=rewrite,
        )
        if not recorded.ours:
            return replaced(plan, await store.state(name), state.copy_id, tags_written)
        return Delivered("copying", name, state.copy_id, tags_written)
    if state.copy_status == "failed":
        reason = f"Azure Storage could not copy the file ({state.copy_description or 'failed'})."
        ended = await conclude_failure(
            store,
            plan,
            state,
            step=Step("webhook", now, "failed", {"status": 502, "copyId": state.copy_id}),
            reason=f"{reason} Export the document again from SmartDocumentor.",
            copy_id=state.copy_id,
            tags_written=tags_written,
        )
        if ended == "restored":
            reason += " The file stored before stays in place."
        raise CopyFailed(reason)
    if state.copy_status == "aborted":
        # Only a newer export aborts a copy, and it owns the blob's next step: nothing to delete here.
        raise NotStored(
            "A newer export of this document cancelled this copy while it ran. "
            "If that export does not arrive, send this one again.",
            track=True,
        )
    concluded = await conclude_success(
        store,
        plan,
        state,
        step=Step("webhook", now, kind, {"status": 200, "copyId": state.copy_id}),
        snapshot=snapshot,
        confirmed=confirmed,
        tags_written=tags_written,
        copy_id=state.copy_id,
        replaced=replaces,
        previous=previous,
        rewrite=rewrite,
        look_up=look_up,
    )
    if concluded.superseded_by is not None:
        return Delivered("superseded", name, state.copy_id, tags_written)
    if not concluded.ours:
        return replaced(plan, await store.state(name), state.copy_id, tags_written)
    return Delivered(kind, name, state.copy_id, tags_written, tuple(concluded.retired))


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
