"""Carry out a :class:`CopyPlan` against the store: copy, wait, finish. The imperative part of the core."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from .plan import CopyPlan, manifest_bytes
from .store import BlobState, BlobStore, Conflict, StoreError

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
    kind: Literal["stored", "duplicate", "copying"]
    blob_name: str
    copy_id: str | None
    verification: str | None = None  # queue message for a copy still pending


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


def _manifest_for(plan: CopyPlan, copy_id: str | None, copy_status: str) -> bytes:
    return manifest_bytes({**plan.manifest, "copyId": copy_id, "copyStatus": copy_status})


async def finish(store: BlobStore, plan: CopyPlan, copy_id: str | None, state: BlobState | None) -> None:
    """After a successful copy: Content-Type fixed if needed, manifest written, concurrently."""

    async def headers() -> None:
        current = state if state is not None else await store.state(plan.blob_name)
        if current is not None and current.content_type != plan.content_type:
            await store.set_content_type(plan.blob_name, current.content_settings, plan.content_type)

    steps: list[Awaitable[None]] = [headers()]
    if plan.manifest_name:
        steps.append(store.write_json(plan.manifest_name, _manifest_for(plan, copy_id, "success")))
    await asyncio.gather(*steps)


async def _repair_duplicate(store: BlobStore, plan: CopyPlan, state: BlobState) -> None:
    """A repeated delivery of a stored file: make sure the earlier one's last steps happened."""

    async def manifest() -> None:
        if plan.manifest_name and not await store.exists(plan.manifest_name):
            await store.write_json(plan.manifest_name, _manifest_for(plan, state.copy_id, "success"))

    async def headers() -> None:
        if state.content_type != plan.content_type:
            await store.set_content_type(plan.blob_name, state.content_settings, plan.content_type)

    await asyncio.gather(manifest(), headers())


def verification_message(plan: CopyPlan, copy_id: str | None, container: str) -> str:
    """What the queue-triggered verifier needs to finish (or restart) the copy later."""
    document: dict[str, Any] = {
        "container": container,
        "blob": plan.blob_name,
        "copyId": copy_id,
        "sourceUrl": plan.source.url,  # secret: never logged; the verifier may need to restart the copy
        "expiresOn": plan.source.expires_on.isoformat(),
        "delivery": plan.delivery,
        "contentType": plan.content_type,
        "metadata": plan.metadata,
        "tags": plan.tags,
        "manifestName": plan.manifest_name,
        "manifest": plan.manifest,
        "taskId": plan.task_id,
        "workspaceId": plan.workspace_id,
    }
    return json.dumps(document)


async def _settle(
    store: BlobStore, plan: CopyPlan, copy_id: str | None, state: BlobState | None, *, duplicate: bool, container: str
) -> Delivered:
    """Turn the copy's state after waiting into a result, cleaning up a failed copy."""
    kind: Literal["stored", "duplicate"] = "duplicate" if duplicate else "stored"
    if state is None:
        raise StoreError("The copied blob disappeared while the copy was being checked.")
    if state.copy_status == "pending":
        return Delivered("copying", plan.blob_name, copy_id, verification_message(plan, copy_id, container))
    if state.copy_status in ("failed", "aborted"):
        await store.delete(plan.blob_name)
        reason = state.copy_description or state.copy_status
        raise CopyFailed(f"Azure Storage could not copy the file ({reason}).")
    try:
        if duplicate:
            await _repair_duplicate(store, plan, state)
        else:
            await finish(store, plan, copy_id, state)
    except StoreError:
        if not duplicate:
            await _delete_quietly(store, plan)
        raise
    return Delivered(kind, plan.blob_name, copy_id)


async def _delete_quietly(store: BlobStore, plan: CopyPlan) -> None:
    try:
        await store.delete(plan.blob_name)
    except StoreError:
        log.warning("could not remove %s after a failed delivery", plan.blob_name)


async def deliver(store: BlobStore, plan: CopyPlan, *, wait_seconds: float, sleep: Sleep = asyncio.sleep) -> Delivered:
    """Copy the file server-side unless this delivery is already stored. Raises StoreError/CopyFailed."""
    deadline = time.monotonic() + wait_seconds
    container = store.container_name
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
            if existing is None:  # deleted meanwhile: try to create it again
                if_etag, overwrite = None, False
                continue
            if existing.delivery == plan.delivery and existing.copy_status in (None, "success", "pending"):
                # The same delivery again (a retry, or a concurrent twin): no second copy.
                if existing.copy_status == "pending":
                    existing = await wait_for_copy(store, plan.blob_name, deadline=deadline, sleep=sleep)
                    if existing is not None and existing.delivery != plan.delivery:
                        continue
                return await _settle(
                    store, plan, existing.copy_id if existing else None, existing, duplicate=True, container=container
                )
            if existing.copy_status == "pending" and existing.copy_id:
                # An older export is still copying: the newest export wins.
                await store.abort_copy(plan.blob_name, existing.copy_id)
                if_etag, overwrite = None, True
                continue
            if_etag, overwrite = existing.etag, False  # re-export (or a failed leftover): overwrite it
            continue
        if started.status == "success":
            # The copy finished synchronously (same account, small file): no polling needed.
            try:
                await finish(store, plan, started.copy_id, None)
            except StoreError:
                await _delete_quietly(store, plan)
                raise
            return Delivered("stored", plan.blob_name, started.copy_id)
        state = await wait_for_copy(store, plan.blob_name, deadline=deadline, sleep=sleep)
        return await _settle(store, plan, started.copy_id, state, duplicate=False, container=container)
    raise StoreError("The destination blob kept changing while this delivery tried to store it; send it again.")
