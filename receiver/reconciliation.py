"""Reconciliation (timer-triggered): nothing depends on one queue message surviving.

A delivery answered 202 (or 503 after its copy was sent) has a manifest that says ``copyStatus:
pending``, tagged so (index tag ``copyStatus=pending`` and its ``receivedAt``). Each run finds
those older than RECONCILE_AFTER_MINUTES with one Find Blobs by Tags call (a listing of the
container on accounts without index tags), and settles each with the queue function's own rules
and the shared transitions (:func:`receiver.verification.settle_pending`,
:mod:`receiver.transitions`): finish a copy that completed, fail one whose link expired or whose
source is gone. It never has the link's signature (that lives only in the queue message), so a
copy that is missing or failed while its link is still valid is left ``waiting``: a queue or poison
message can still finish it (the run's report says how many, and what to run). A pending manifest
whose blob now holds another export is repaired to describe that blob.

Each run also reports what will not be retried by itself: the poison queue's depth (an ERROR
naming ``python -m ops replay-poison`` when it is not empty) and the age of the oldest pending
delivery (a metric).

Safe to run concurrently with the queue function and with itself: every write is conditional
(If-Match / If-None-Match), and a manifest that is no longer ``pending`` when read is skipped.
Bounded per run by count and time; running it twice does nothing new.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from . import transitions
from .runtime import Runtime
from .store import BlobState, BlobStore, ContainerMissing, Manifest, TagsUnsupported
from .telemetry import Record, recording, report_oldest_pending, report_poison_depth
from .transitions import Driver, Step, retire_older_exports
from .verification import MAX_DEQUEUE_COUNT, POISON_QUEUE, PendingCopy, settle_pending, target_of

log = logging.getLogger("receiver.reconciliation")

MAX_PER_RUN = 200
# Pending manifests one run reads the names of (one Find Blobs by Tags page); it settles MAX_PER_RUN.
FIND_LIMIT = 5000
# How long the queue keeps trying a copy: host.json retries it every minute up to 40 times, each try
# waiting up to COPY_WAIT_SECONDS; with slack. A delivery still waiting after that has lost its message.
QUEUE_COVERAGE = timedelta(minutes=MAX_DEQUEUE_COUNT * 1.5 + 30)
# Deliveries stored this recently are checked for an older file of their task that a lagging tag
# index hid from them (the index lags by seconds; the timer runs every few minutes).
SWEEP_WINDOW = timedelta(hours=1)
MAX_LINK_LIFETIME = timedelta(hours=168)  # CONTRACT section 1
# Below host.json's functionTimeout (5 minutes), leaving room for the item in progress.
RUN_BUDGET_SECONDS = 180.0


@dataclass
class RunReport:
    found: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    storage_requests: int = 0
    stopped_early: bool = False
    poison_depth: int | None = None
    oldest_pending_seconds: float = 0.0
    retired: int = 0
    processed: int = 0

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
    environ: dict[str, str] | None = None,
    rng: random.Random | None = None,
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
            found = await store.pending_manifests(received_before=_iso(cutoff), limit=FIND_LIMIT)
        except ContainerMissing:
            found = []  # no container yet: no delivery, nothing pending
        report.found = len(found)
        report.oldest_pending_seconds = _oldest_age(found, now)
        # Oldest first, from a different point each run: deliveries that can only wait (for a message
        # that holds their link) must not keep the others out of a run's bounded share.
        found.sort(key=lambda item: item[1])
        start = (rng or random).randrange(len(found)) if len(found) > max_items else 0
        chosen = (found[start:] + found[:start])[:max_items]
        report.processed = len(chosen)
        lost: list[str] = []
        for name, received in chosen:
            if time.monotonic() > deadline:
                report.stopped_early = True
                break
            with recording("reconciliation") as record:
                try:
                    record.outcome = await reconcile_one(
                        store, name, now=now, record=record, task_template=settings.blob_name_template
                    )
                except Exception as exc:  # one bad item must not stop the run; the next run tries again
                    record.outcome, record.reason = "error", f"{type(exc).__name__}: {exc}"
                if record.outcome == "waiting" and _age(received, now) > QUEUE_COVERAGE.total_seconds():
                    lost.append(name.removesuffix(".json"))
            report.count(record.outcome)
            run.storage_requests += record.storage_requests
        if store.tags_supported and time.monotonic() < deadline:
            # A delivery's look-up of its task's other files may have failed, or (without a task prefix,
            # through the tag index) lagged a write by seconds: finish what it missed.
            with recording("reconciliation") as sweep:
                sweep.outcome = "sweep"
                report.retired = await sweep_recent(store, now=now, deadline=deadline)
                sweep.reason = f"retired={report.retired}"
            run.storage_requests += sweep.storage_requests
        report.poison_depth = await _poison_depth(environ)
        run.reason = (
            f"found={report.found} {report.outcomes} stopped_early={report.stopped_early} "
            f"oldest_pending_s={report.oldest_pending_seconds:.0f} poison={report.poison_depth}"
        )
        if report.processed < report.found:
            run.reason += f"; settled {report.processed} of {report.found} this run (the next run starts elsewhere)"
        waiting = report.outcomes.get("waiting", 0)
        if lost:
            # Past every try the queue would have made: its message was lost or poisoned. Nothing
            # retries it by itself (CONTRACT 8), and it fails only when its link expires: a person decides.
            run.final_failure = True
            run.reason += (
                f"; {len(lost)} delivery(ies) have waited over {QUEUE_COVERAGE.total_seconds() / 60:.0f} minutes "
                f"for the queue message that holds their link (lost or poisoned), e.g. {store.describe(lost[0])}: "
                f"run python -m ops check '{lost[0]}' (it looks in both queues and says what to run next)"
            )
        elif waiting:
            run.reason += (
                f"; {waiting} delivery(ies) wait for their link's queue message (only it can restart the copy; "
                "the queue function is still trying): nothing to do yet"
            )
        report.storage_requests = run.storage_requests
    _report_metrics(report)
    return report


def _age(received: str, now: datetime) -> float:
    """Seconds since an ISO time (0 when it is not one)."""
    try:
        when = datetime.fromisoformat(received.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return (now - (when if when.tzinfo else when.replace(tzinfo=UTC))).total_seconds()


def _oldest_age(found: list[tuple[str, str]], now: datetime) -> float:
    return max((_age(received, now) for _, received in found), default=0.0)


async def _poison_depth(environ: dict[str, str] | None) -> int | None:
    from .hostqueue import queue_depth

    return await queue_depth(POISON_QUEUE, os.environ if environ is None else environ)


def _report_metrics(report: RunReport) -> None:
    """The run's gauges and records: the poison queue (an ERROR while messages wait there) and the
    oldest pending delivery's age."""
    if report.poison_depth is not None:
        report_poison_depth(report.poison_depth, queue=POISON_QUEUE)
    report_oldest_pending(report.oldest_pending_seconds or None)


def _latest_expiry(received: Any) -> str:
    """When a link received at ``received`` has expired for sure (now, when that is not known)."""
    try:
        when = datetime.fromisoformat(str(received).replace("Z", "+00:00"))
    except ValueError:
        return _iso(datetime.now(UTC))
    return _iso((when if when.tzinfo else when.replace(tzinfo=UTC)) + MAX_LINK_LIFETIME)


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
            # A repaired manifest may know no expiry: a link lives at most 168 hours after it was sent.
            "expiresOn": document.get("linkExpiresOn")
            or document.get("exportedFileExpiresOn")
            or _latest_expiry(document.get("receivedAt")),
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


async def reconcile_one(
    store: BlobStore,
    manifest_name: str,
    *,
    now: datetime,
    record: Record | None = None,
    by: Driver = "reconciliation",
    task_template: str | None = None,
) -> str:
    """Settle one delivery whose manifest was found ``pending``."""
    snapshot = await store.read_manifest(manifest_name)
    if snapshot is None or snapshot.foreign or snapshot.document.get("copyStatus") != "pending":
        return "skipped"  # settled meanwhile (the tag index lags writes by seconds), or not a manifest
    pending = pending_from_manifest(snapshot.document, store.container_name, manifest_name)
    if record is not None:
        record.task_id, record.workspace_id = pending.task_id, pending.workspace_id
        record.delivery, record.copy_id = pending.delivery, pending.copy_id
        record.blob = store.describe(pending.blob_name)
    state = await store.state(pending.blob_name)
    if state is not None and state.delivery != pending.delivery:
        return await repair_manifest(store, manifest_name, state, snapshot, now=now, by=by)
    return await settle_pending(
        store,
        pending,
        now=now,
        wait_seconds=0,
        sync_copy_max_mib=0,
        by=by,
        task_template=task_template,
        known=state,
        manifest=snapshot,
    )


async def repair_manifest(
    store: BlobStore,
    manifest_name: str,
    state: BlobState,
    snapshot: Manifest | None,
    *,
    now: datetime,
    by: Driver = "reconciliation",
) -> str:
    """Make a manifest that describes another export describe the blob next to it (see
    :func:`receiver.transitions.repair_manifest`)."""
    return await transitions.repair_manifest(store, manifest_name, state, snapshot, step=Step(by, now, "repaired"))


async def sweep_recent(store: BlobStore, *, now: datetime, deadline: float) -> int:
    """One current file per task, for deliveries stored in the last SWEEP_WINDOW: a task with more than
    one ``success`` manifest keeps its newest export (the one no other lists as ``replaced``, then the
    latest received), and the others are retired by its rules
    (:func:`receiver.transitions.retire_older_exports`: exact ids, ``replaced``, If-Match)."""
    since = _iso(now - SWEEP_WINDOW)
    groups: dict[tuple[str, str], list[str]] = {}
    try:
        async for name, tags in store.find_tagged(f"\"copyStatus\"='success' AND \"receivedAt\" >= '{since}'"):
            groups.setdefault((tags.get("taskId", ""), tags.get("workspaceId", "")), []).append(name)
    except (TagsUnsupported, ContainerMissing):
        return 0
    retired = 0
    for names in groups.values():
        if len(names) < 2 or time.monotonic() > deadline:
            continue
        read = await asyncio.gather(*(store.read_manifest(name) for name in names))
        # Tag values are folded and cut: regroup by the exact ids (a repaired manifest names none).
        tasks: dict[tuple[str, str], list[tuple[str, Manifest]]] = {}
        for name, found in zip(names, read, strict=True):
            if found is not None and not found.foreign and not found.document.get("partial"):
                ids = (str(found.document.get("taskId")), str(found.document.get("workspaceId")))
                tasks.setdefault(ids, []).append((name, found))
        for task in tasks.values():
            if len(task) > 1:
                retired += await _keep_newest(store, task, now=now)
    return retired


async def _keep_newest(store: BlobStore, task: list[tuple[str, Manifest]], *, now: datetime) -> int:
    replaced = {item for _, found in task for item in found.document.get("replaced") or []}
    current = [(name, found) for name, found in task if found.document.get("delivery") not in replaced] or task
    name, newest = max(current, key=lambda item: (str(item[1].document.get("receivedAt")), item[0]))
    pending = pending_from_manifest(newest.document, store.container_name, name)
    state = await store.state(pending.blob_name)
    if state is None or state.delivery != pending.delivery:
        return 0
    concluded = await retire_older_exports(
        store,
        target_of(pending, newest.document, None),
        state,
        [other for other, _ in task],
        manifest_etag=newest.etag,
        manifest=newest.document,
        step=Step("reconciliation", now, "retired"),
    )
    return len(concluded.retired)
