"""Finish copies that were still pending when the HTTP answer had to go out (queue-triggered).

The message carries the SAS URL (a restart needs it), so nothing here logs the message,
and the model's repr hides it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .delivery import discard, finish, wait_for_copy
from .plan import CopyPlan
from .runtime import Runtime
from .store import BlobState, BlobStore

log = logging.getLogger("receiver.verification")


class CopyStillRunning(Exception):
    """Raised so the Functions host puts the message back and tries again after visibilityTimeout."""


class CopyLost(Exception):
    """The copy cannot succeed any more; the host moves the message to the poison queue."""


class PendingCopy(BaseModel):
    """The queue message: what is needed to finish, restart or report the copy."""

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    container: str
    blob_name: str = Field(alias="blob")
    copy_id: str | None = Field(default=None, alias="copyId")
    source_url: str = Field(alias="sourceUrl", repr=False)
    expires_on: datetime = Field(alias="expiresOn")
    delivery: str
    content_type: str = Field(alias="contentType")
    metadata: dict[str, str]
    tags: dict[str, str]
    tags_written: bool = Field(default=True, alias="tagsWritten")
    manifest_name: str | None = Field(default=None, alias="manifestName")  # written with copyStatus "pending"
    task_id: str = Field(alias="taskId")
    workspace_id: str = Field(alias="workspaceId")

    def describe(self) -> str:
        return f"task={self.task_id} workspace={self.workspace_id} blob={self.container}/{self.blob_name}"


def verification_message(plan: CopyPlan, copy_id: str | None, container: str, *, tags_written: bool) -> str:
    message = PendingCopy(
        container=container,
        blob_name=plan.blob_name,
        copy_id=copy_id,
        source_url=plan.source.url,
        expires_on=plan.source.expires_on,
        delivery=plan.delivery,
        content_type=plan.content_type,
        metadata=plan.metadata,
        tags=plan.tags,
        tags_written=tags_written,
        manifest_name=plan.manifest_name,
        task_id=plan.task_id,
        workspace_id=plan.workspace_id,
    )
    return message.model_dump_json(by_alias=True)


Result = Literal["finished", "superseded"]


async def verify_copy(body: bytes, *, runtime: Runtime, now: datetime, wait_seconds: float | None = None) -> Result:
    """Finish, restart or give up on one pending copy. Raises to have the host retry (or poison)."""
    try:
        pending = PendingCopy.model_validate(json.loads(body))
    except (ValueError, ValidationError):
        log.error("copy verification message is unreadable; it will go to the poison queue")
        raise CopyLost("unreadable copy verification message") from None
    settings = runtime.settings()
    store = runtime.store()
    wait = settings.copy_wait_seconds if wait_seconds is None else wait_seconds
    deadline = time.monotonic() + wait
    state = await wait_for_copy(store, pending.blob_name, deadline=deadline)
    if state is not None and state.delivery != pending.delivery:
        log.info("copy superseded by a newer export %s", pending.describe())
        return "superseded"
    if state is not None and state.copy_status in (None, "success"):
        await _finish(store, pending, state, tags_written=pending.tags_written)
        log.info("copy finished %s", pending.describe())
        return "finished"
    if state is not None and state.copy_status == "pending":
        raise CopyStillRunning(f"copy still pending {pending.describe()}")
    # failed, aborted, or the blob is gone: copy again while the link still works.
    if pending.expires_on <= now:
        if state is not None:
            await discard(store, pending.blob_name)
            if pending.manifest_name:
                await discard(store, pending.manifest_name)
            log.error(
                "copy lost: it failed and the file link expired at %s; export the document again %s",
                pending.expires_on.isoformat(),
                pending.describe(),
            )
        raise CopyLost(f"copy failed after the link expired {pending.describe()}")
    await _restart(store, pending, etag=state.etag if state else None)
    state = await wait_for_copy(store, pending.blob_name, deadline=time.monotonic() + wait)
    if state is not None and state.delivery == pending.delivery and state.copy_status in (None, "success"):
        await _finish(store, pending, state, tags_written=store.tags_supported)
        log.info("copy restarted and finished %s", pending.describe())
        return "finished"
    raise CopyStillRunning(f"copy restarted, still running {pending.describe()}")


@dataclass(frozen=True)
class _Finishing:
    blob_name: str
    content_type: str
    manifest_name: str | None
    manifest: dict[str, Any]


async def _finish(store: BlobStore, pending: PendingCopy, state: BlobState, *, tags_written: bool) -> None:
    """Content-Type fixed if needed, and the pending manifest completed (copy id, status)."""
    manifest = await store.read_json(pending.manifest_name) if pending.manifest_name else None
    if pending.manifest_name and manifest is None:
        log.warning("manifest missing, file finished without it %s", pending.describe())
    target = _Finishing(
        pending.blob_name, pending.content_type, pending.manifest_name if manifest else None, manifest or {}
    )
    await finish(store, target, state.copy_id, state, tags_written=tags_written)


async def _restart(store: BlobStore, pending: PendingCopy, *, etag: str | None) -> None:
    log.warning("copy restarted %s", pending.describe())
    await store.start_copy(
        pending.blob_name, pending.source_url, metadata=pending.metadata, tags=pending.tags, if_etag=etag
    )
