"""Reconciliation (timer-triggered): nothing depends on one queue message surviving.

A delivery answered 202 has a manifest that says ``copyStatus: pending``, tagged so (index tag
``copyStatus=pending`` and its ``receivedAt``). Each run finds those older than
RECONCILE_AFTER_MINUTES with one Find Blobs by Tags call (a listing of the container on
accounts without index tags), and settles each with the queue function's own rules
(:func:`receiver.verification.settle_pending`): finish a copy that completed, fail one whose link
expired or whose source is gone. It never has the link's signature (that lives only in the queue
message), so a copy that failed while its link was still valid is failed for good, with the advice
to replay the poison queue. A pending manifest whose blob now holds another export is repaired to
describe that blob.

Safe to run concurrently with the queue function and with itself: every write is conditional
(If-Match / If-None-Match), and a manifest that is no longer ``pending`` when read is skipped.
Bounded per run by count and time; running it twice does nothing new.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import unquote

from .plan import manifest_bytes, manifest_labels
from .runtime import Runtime
from .store import BlobState, BlobStore, Conflict, ContainerMissing, Manifest
from .telemetry import Record, recording
from .verification import PendingCopy, settle_pending

log = logging.getLogger("receiver.reconciliation")

MAX_PER_RUN = 200
# Below host.json's functionTimeout (5 minutes), leaving room for the item in progress.
RUN_BUDGET_SECONDS = 180.0


@dataclass
class RunReport:
    found: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    storage_requests: int = 0
    stopped_early: bool = False

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


async def reconcile_run(
    *,
    runtime: Runtime,
    now: datetime,
    max_items: int = MAX_PER_RUN,
    budget_seconds: float = RUN_BUDGET_SECONDS,
) -> RunReport:
    """One run of the timer: find old pending deliveries and settle each. Never raises for one item."""
    settings = runtime.settings()
    store = runtime.store()
    cutoff = now - timedelta(minutes=settings.reconcile_after_minutes)
    report = RunReport()
    deadline = time.monotonic() + budget_seconds
    with recording("reconciliation") as run:
        run.outcome = "run"
        try:
            names = await store.pending_manifests(received_before=_iso(cutoff), limit=max_items)
        except ContainerMissing:
            names = []  # no container yet: no delivery, nothing pending
        report.found = len(names)
        for name in names:
            if time.monotonic() > deadline:
                report.stopped_early = True
                break
            with recording("reconciliation") as record:
                try:
                    record.outcome = await reconcile_one(store, name, now=now, record=record)
                except Exception as exc:  # one bad item must not stop the run; the next run tries again
                    record.outcome, record.reason = "error", f"{type(exc).__name__}: {exc}"
            report.count(record.outcome)
            run.storage_requests += record.storage_requests
        run.reason = f"found={report.found} {report.outcomes} stopped_early={report.stopped_early}"
        report.storage_requests = run.storage_requests
    return report


def pending_from_manifest(document: dict[str, Any], container: str, manifest_name: str) -> PendingCopy:
    """What the queue message would say, minus the link's signature (never stored)."""
    blob = str(document.get("blob") or "")
    blob_name = blob.split("/", 1)[1] if "/" in blob else manifest_name.removesuffix(".json")
    return PendingCopy.model_validate(
        {
            "container": container,
            "blob": blob_name,
            "copyId": document.get("copyId"),
            "sourceUrl": "",
            "source": document.get("source") or "",
            "expiresOn": document.get("linkExpiresOn") or document.get("exportedFileExpiresOn"),
            "delivery": document.get("delivery") or "",
            "contentType": document.get("exportedFileContentType") or "application/octet-stream",
            "metadata": {},
            "tags": document.get("tags") or {},
            "tagsWritten": bool(document.get("tagsWritten", True)),
            "manifestName": manifest_name,
            "manifest": document,
            "taskId": str(document.get("taskId") or ""),
            "workspaceId": str(document.get("workspaceId") or ""),
        }
    )


async def reconcile_one(store: BlobStore, manifest_name: str, *, now: datetime, record: Record | None = None) -> str:
    """Settle one delivery whose manifest was found ``pending``."""
    snapshot = await store.read_manifest(manifest_name)
    if snapshot is None or snapshot.document.get("copyStatus") != "pending":
        return "skipped"  # settled meanwhile (the tag index lags writes by seconds)
    pending = pending_from_manifest(snapshot.document, store.container_name, manifest_name)
    if record is not None:
        record.task_id, record.workspace_id = pending.task_id, pending.workspace_id
        record.blob = store.describe(pending.blob_name)
    state = await store.state(pending.blob_name)
    if state is not None and state.delivery != pending.delivery:
        return await repair_manifest(store, manifest_name, state, snapshot, now=now)
    return await settle_pending(
        store, pending, now=now, wait_seconds=0, sync_copy_max_mib=0, known=state, manifest=snapshot
    )


async def repair_manifest(
    store: BlobStore, manifest_name: str, state: BlobState, snapshot: Manifest | None, *, now: datetime
) -> str:
    """Make a manifest that describes another export describe the blob next to it, from what the
    blob itself carries (metadata, tags). Marked ``partial``: the payload's other fields were in the
    lost manifest. Conditional on the manifest as read; a conflict means someone wrote it: leave it."""
    blob_name = manifest_name.removesuffix(".json")
    meta = state.metadata
    status = "success" if state.copy_settled else (state.copy_status or "success")
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
        "receivedAt": (snapshot.document.get("receivedAt") if snapshot else None) or _iso(now),
        "repairedAt": _iso(now),
        "partial": True,
    }
    tags, metadata = manifest_labels(document, status)
    try:
        await store.write_manifest(
            manifest_name,
            manifest_bytes(document),
            etag=None if snapshot is None else snapshot.etag,
            tags=tags,
            metadata=metadata,
        )
    except Conflict:
        return "skipped"
    return "repaired"
