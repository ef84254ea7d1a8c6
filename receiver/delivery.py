"""Carry out a :class:`CopyPlan` against the store: copy, wait, finish. The imperative part of the core."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from .plan import CopyPlan, manifest_bytes
from .store import BlobState, BlobStore, Conflict, ContentSettings, StoreError

log = logging.getLogger("receiver.delivery")

POLL_FIRST_SECONDS = 0.2
POLL_MAX_SECONDS = 2.0
MAX_CONFLICT_ROUNDS = 4


class CopyFailed(Exception):
    """Azure Storage could not read the source (the copy failed or was refused)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Delivered:
    kind: Literal["stored", "duplicate", "copying", "superseded"]
    blob_name: str
    copy_id: str | None
    tags_written: bool = True


class Finishable(Protocol):
    """What finishing a copied blob needs: a CopyPlan, or a verification message."""

    @property
    def blob_name(self) -> str: ...
    @property
    def content_type(self) -> str: ...
    @property
    def manifest_name(self) -> str | None: ...
    @property
    def manifest(self) -> dict[str, Any]: ...


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


def manifest_document(
    target: Finishable, copy_id: str | None, *, tags_written: bool, copy_status: str = "success"
) -> bytes:
    return manifest_bytes(
        {**target.manifest, "copyId": copy_id, "copyStatus": copy_status, "tagsWritten": tags_written}
    )


async def finish(
    store: BlobStore,
    target: Finishable,
    copy_id: str | None,
    state: BlobState | None,
    *,
    tags_written: bool,
    only_missing_manifest: bool = False,
    copied_headers: ContentSettings | None = None,
) -> None:
    """After a successful copy: Content-Type fixed if it differs, manifest written, concurrently.

    The copy's headers come from ``state`` or ``copied_headers`` (the source's, which Copy Blob
    carries); only when neither is known is the copied blob read.
    """

    known = state.content_settings if state is not None else copied_headers

    async def headers() -> None:
        current = known
        if current is None:
            fresh = await store.state(target.blob_name)
            current = fresh.content_settings if fresh is not None else None
        if current is not None and current.content_type != target.content_type:
            await store.set_content_type(target.blob_name, current, target.content_type)

    async def manifest() -> None:
        name = target.manifest_name
        if name is None or (only_missing_manifest and await store.exists(name)):
            return
        await store.write_json(name, manifest_document(target, copy_id, tags_written=tags_written))

    if known is not None and known.content_type == target.content_type:
        await manifest()  # the common case: nothing to fix, no second task needed
    else:
        await asyncio.gather(headers(), manifest())


async def discard(store: BlobStore, name: str) -> None:
    """Remove a blob this delivery created but could not finish (best effort)."""
    try:
        await store.delete(name)
    except StoreError:
        log.warning("could not remove %s after a failed delivery", name)


async def deliver(store: BlobStore, plan: CopyPlan, *, wait_seconds: float, sleep: Sleep = asyncio.sleep) -> Delivered:
    """Copy the file server-side unless this delivery is already stored. Raises StoreError/CopyFailed."""
    # Read the source's headers while the copy runs: then nothing but the manifest waits on it.
    source_probe = asyncio.ensure_future(store.source_headers(plan.source.url))
    try:
        return await _copy(store, plan, source_probe, wait_seconds=wait_seconds, sleep=sleep)
    finally:
        source_probe.cancel()


async def _copy(
    store: BlobStore,
    plan: CopyPlan,
    source_probe: asyncio.Future[ContentSettings | None],
    *,
    wait_seconds: float,
    sleep: Sleep,
) -> Delivered:
    deadline = time.monotonic() + wait_seconds
    if_etag: str | None = None
    overwrite = False
    for _ in range(MAX_CONFLICT_ROUNDS):
        try:
            started = await store.start_copy(
                plan.blob_name,
                plan.source.url,
                metadata=plan.metadata,
                tags=plan.tags,
                if_etag=if_etag,
                overwrite=overwrite,
            )
        except Conflict:
            existing = await store.state(plan.blob_name)
            if existing is None:  # deleted meanwhile: create it again
                if_etag, overwrite = None, False
                continue
            if existing.delivery == plan.delivery and existing.copy_status in (None, "success", "pending"):
                return await _same_delivery(store, plan, existing, deadline=deadline, sleep=sleep)
            if existing.copy_status == "pending" and existing.copy_id:
                # An older export is still copying: the newest export wins.
                await store.abort_copy(plan.blob_name, existing.copy_id)
                if_etag, overwrite = None, True
                continue
            if_etag, overwrite = existing.etag, False  # a re-export (or a failed leftover): overwrite it
            continue
        state = None
        if started.status != "success":
            state = await wait_for_copy(store, plan.blob_name, deadline=deadline, sleep=sleep)
            if state is None:
                raise StoreError("The copied blob disappeared while the copy was being checked; send it again.")
            if state.delivery != plan.delivery:
                return Delivered("superseded", plan.blob_name, started.copy_id, started.tags_written)
        copied = source_probe.result() if source_probe.done() and not source_probe.cancelled() else None
        return await _settle(
            store, plan, started.copy_id, state, tags_written=started.tags_written, fresh=True, copied_headers=copied
        )
    raise StoreError("The destination blob kept changing while this delivery tried to store it; send it again.")


async def _same_delivery(
    store: BlobStore, plan: CopyPlan, existing: BlobState, *, deadline: float, sleep: Sleep
) -> Delivered:
    """The same delivery again (a retry, or a concurrent twin): no second copy."""
    state = existing
    if existing.copy_status == "pending":
        waited = await wait_for_copy(store, plan.blob_name, deadline=deadline, sleep=sleep)
        if waited is None:
            raise StoreError("The stored file disappeared while this delivery waited for it; send it again.")
        if waited.delivery != plan.delivery:
            return Delivered("superseded", plan.blob_name, waited.copy_id, store.tags_supported)
        state = waited
    return await _settle(store, plan, state.copy_id, state, tags_written=store.tags_supported, fresh=False)


async def _settle(
    store: BlobStore,
    plan: CopyPlan,
    copy_id: str | None,
    state: BlobState | None,
    *,
    tags_written: bool,
    fresh: bool,
    copied_headers: ContentSettings | None = None,
) -> Delivered:
    """Turn the copy's state into a result: finish it, hand it to the verifier, or clean up."""
    status = "success" if state is None else state.copy_status
    if status == "pending":
        # The manifest is written now (copyStatus "pending"): durable before the 202, and the queue
        # message stays small; the verifier completes it when the copy succeeds.
        name = plan.manifest_name
        if name is not None and (fresh or not await store.exists(name)):
            document = manifest_document(plan, copy_id, tags_written=tags_written, copy_status="pending")
            await store.write_json(name, document)
        return Delivered("copying", plan.blob_name, copy_id, tags_written)
    if status in ("failed", "aborted"):
        await discard(store, plan.blob_name)
        reason = (state.copy_description if state else None) or status
        raise CopyFailed(f"Azure Storage could not copy the file ({reason}).")
    try:
        await finish(
            store,
            plan,
            copy_id,
            state,
            tags_written=tags_written,
            only_missing_manifest=not fresh,
            copied_headers=copied_headers,
        )
    except StoreError:
        if fresh:
            await discard(store, plan.blob_name)
        raise
    return Delivered("stored" if fresh else "duplicate", plan.blob_name, copy_id, tags_written)
