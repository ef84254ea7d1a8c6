"""What needs a person, findable without listing every task record (docs/reference.md, "Attention blobs").

Two kinds of small blobs under ``.smartdocumentor/attention/``, for ``python -m ops failed`` and
``python -m ops pending``, whose cost must follow the window asked for, not the container's history
(blob index tags cannot do it: accounts with a hierarchical namespace have none):

- a **failure marker** for each failure, at
  ``failed/<YYYY-MM-DDTHH>/<workspace>/<task>/<delivery>-<failedAt>``: under the hour it was marked
  (UTC), named by the delivery and when it failed (one marker per failure; the ids made safe as in
  record names); empty; its metadata the ids, when it failed, when it was marked and how, never a
  file's ``delivery``. The engine sends it beside the record's compare-and-swap that fails the
  delivery (:func:`mark_failures`: marked when it failed; no extra round trip, and nothing on any
  other path). A marker is only a hint: a swap that lost leaves one for a delivery that did not fail,
  so the command line confirms each from the task record. A driver that stopped between the two
  leaves the record without its marker: the reconciliation, which lists every record's labels anyway,
  writes the marker of any failure of the last MARKER_RETENTION that has none (:func:`after_run`),
  marked when it does so when the failure is under NOTICE_WINDOW old, so a ``--since`` window that
  had already passed it still sees it once. Markers marked over MARKER_RETENTION ago are deleted by
  the reconciliation, a bounded number a run.
- the **pending summary** ``pending.json``: written by each reconciliation run that listed the
  records, it names the tasks whose labels show a delivery still ``copying`` (the MAX_SUMMARY_TASKS
  due first) and when the run listed and completed; its age says whether the safety net is alive.

Nothing else reads these: the reconciliation's sweep and the operator's ``find`` list only the task
records' prefix, the migration skips the whole reserved prefix, and neither kind carries a file's
``delivery`` metadata or a manifest's ``receiverkind``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, unquote

from .models import MAX_RECORD_BYTES, Delivery, State, TaskRecord, parse_time, record_name
from .plan import identity_segment
from .storage import Conflict, Listed, Rejected, Storage, StoreError

log = logging.getLogger("receiver.attention")

ATTENTION_PREFIX = ".smartdocumentor/attention/"
FAILED_PREFIX = f"{ATTENTION_PREFIX}failed/"
PENDING_NAME = f"{ATTENTION_PREFIX}pending.json"
MARKER_KIND = "failure-marker"
SUMMARY_KIND = "pending-summary"
BUCKET_FORMAT = "%Y-%m-%dT%H"
# How long a failure stays findable by marker (`ops failed` without --since looks this far back).
MARKER_RETENTION = timedelta(days=7)
# A marker the reconciliation writes for a failure younger than this is marked when it is written (a
# later `ops failed --since` window sees it); an older failure's is marked when it failed (records
# from before markers existed do not all come back as new at the upgrade).
NOTICE_WINDOW = timedelta(hours=24)
# Per reconciliation run: markers written for failures that have none, old markers deleted.
MAX_BACKFILL = 50
MAX_PRUNE = 200
# The summary's size stays bounded (about 200 bytes a task): the tasks due first are kept.
MAX_SUMMARY_TASKS = 2000
MAX_SUMMARY_BYTES = 4 * 1024 * 1024
# A summary older than this says the reconciliation stopped completing runs: twice the default
# schedule (every 10 minutes) and a slow run's 5 minutes, as the heartbeat alert (docs/operations.md).
DEFAULT_STALE_AFTER = timedelta(minutes=25)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def bucket(at: datetime) -> str:
    """The hour a failure falls in, UTC: markers of one hour share a prefix."""
    return at.astimezone(UTC).strftime(BUCKET_FORMAT)


def bucket_prefixes(since: datetime, until: datetime) -> list[str]:
    """The fewest prefixes under FAILED_PREFIX that hold every marker from ``since`` to ``until``:
    one an hour for a window of a day or less, else one a day."""
    since, until = since.astimezone(UTC), until.astimezone(UTC)
    if until < since:
        return []
    if until - since <= timedelta(hours=24):
        hour = since.replace(minute=0, second=0, microsecond=0)
        found = []
        while hour <= until:
            found.append(f"{FAILED_PREFIX}{bucket(hour)}/")
            hour += timedelta(hours=1)
        return found
    day = since.replace(hour=0, minute=0, second=0, microsecond=0)
    days = []
    while day <= until:
        days.append(f"{FAILED_PREFIX}{day.strftime('%Y-%m-%d')}T")
        day += timedelta(days=1)
    return days


def marker_name(
    workspace_id: str, task_id: str, delivery: str, failed_at: datetime, marked_at: datetime | None = None
) -> str:
    """Under the hour it was marked (by default when it failed), one name per failure."""
    return (
        f"{FAILED_PREFIX}{bucket(marked_at or failed_at)}/{identity_segment(workspace_id)}/"
        f"{identity_segment(task_id)}/{delivery}-{failed_at.astimezone(UTC):%Y%m%dT%H%M%S%f}"
    )


@dataclass(frozen=True)
class Marker:
    """One failure marker as a listing shows it."""

    name: str
    etag: str
    workspace_id: str
    task_id: str
    delivery: str
    failed_at: datetime
    marked_at: datetime  # when it was written: its hour is its prefix
    kind: str  # the arrow that failed it (expired, source-failed, immutable, name-taken, adopted, ...) or backfilled

    @property
    def task(self) -> tuple[str, str]:
        return self.workspace_id, self.task_id

    @property
    def failure(self) -> tuple[str, str, str, datetime]:
        """The failure it marks: workspace, task, delivery, when it failed."""
        return self.workspace_id, self.task_id, self.delivery, self.failed_at


_MARKER_NAME = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2})/[^/]+/[^/]+/([0-9a-f]+)-(\d{8}T\d{12})$")


def marker_of(item: Listed) -> Marker | None:
    """The marker ``item`` is, or None for anything else (only blobs carrying the marker's kind count)."""
    if not item.name.startswith(FAILED_PREFIX):
        return None
    meta = {key.lower(): value for key, value in item.metadata.items()}
    matched = _MARKER_NAME.match(item.name[len(FAILED_PREFIX) :])
    if meta.get("receiverkind") != MARKER_KIND or matched is None:
        return None
    failed_at = datetime.strptime(matched.group(3), "%Y%m%dT%H%M%S%f").replace(tzinfo=UTC)
    bucketed = datetime.strptime(matched.group(1), BUCKET_FORMAT).replace(tzinfo=UTC)
    marked_at = parse_time(meta.get("markedat")) or bucketed
    return Marker(
        name=item.name,
        etag=item.etag,
        workspace_id=unquote(meta.get("workspaceid") or ""),
        task_id=unquote(meta.get("taskid") or ""),
        delivery=matched.group(2),
        failed_at=failed_at,
        marked_at=max(marked_at, failed_at),
        kind=meta.get("kind") or "",
    )


def newly_failed(before: TaskRecord | None, after: TaskRecord) -> list[Delivery]:
    """The deliveries ``after`` holds ``failed`` that ``before`` did not."""
    was = {item.delivery: item.state for item in before.deliveries} if before is not None else {}
    return [
        item
        for item in after.deliveries
        if item.state is State.FAILED and item.failed_at is not None and was.get(item.delivery) is not State.FAILED
    ]


def marker_blob(
    record: TaskRecord, item: Delivery, kind: str, marked_at: datetime | None = None
) -> tuple[str, dict[str, str]]:
    """The name and metadata of the marker of ``item``, failed in ``record``, marked at ``marked_at``
    (by default when it failed)."""
    assert item.failed_at is not None
    marked = marked_at or item.failed_at
    metadata = {
        "receiverkind": MARKER_KIND,
        "workspaceid": quote(record.workspace_id, safe=""),
        "taskid": quote(record.task_id, safe=""),
        "failedat": _iso(item.failed_at),
        "markedat": _iso(marked),
        "kind": kind,
    }
    return marker_name(record.workspace_id, record.task_id, item.delivery, item.failed_at, marked), metadata


async def write_marker(
    storage: Storage, record: TaskRecord, item: Delivery, kind: str, marked_at: datetime | None = None
) -> bool:
    """Create the marker of ``item`` (failed in ``record``); False when it is there already."""
    name, metadata = marker_blob(record, item, kind, marked_at)
    try:
        await storage.put(name, b"", if_match=None, content_type="application/octet-stream", metadata=metadata)
    except Conflict:
        return False
    return True


async def mark_failures(storage: Storage, before: TaskRecord | None, after: TaskRecord, kind: str) -> None:
    """The engine's hook, sent beside the record's compare-and-swap (receiver/engine.py ``_change``):
    a marker for each delivery the change fails; nothing at all (no request) otherwise. It never
    raises for storage: a marker that could not be written is written by the next reconciliation."""
    items = newly_failed(before, after)
    if not items:
        return
    outcomes = await asyncio.gather(
        *(write_marker(storage, after, item, kind) for item in items), return_exceptions=True
    )
    for item, outcome in zip(items, outcomes, strict=True):
        if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
            raise outcome  # a cancellation
        if isinstance(outcome, Exception):
            log.warning(
                "the failure marker of task %s delivery %s was not written (%s): the reconciliation writes it",
                after.task_id,
                item.delivery[:12],
                outcome if isinstance(outcome, StoreError) else type(outcome).__name__,
            )


# --- the pending summary -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CopyingTask:
    """A task whose record's labels show deliveries still copying."""

    workspace_id: str
    task_id: str
    copying: int
    oldest_copying: datetime
    copying_expires: datetime | None = None

    def due(self, coverage: timedelta) -> datetime:
        """When nothing can finish it any more by itself: its first link expires, or its oldest copy
        has waited past every try of its queue message (``coverage``), whichever comes first."""
        late = self.oldest_copying + coverage
        return min(late, self.copying_expires) if self.copying_expires is not None else late

    def dump(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "workspaceId": self.workspace_id,
            "taskId": self.task_id,
            "copying": self.copying,
            "oldestCopying": _iso(self.oldest_copying),
        }
        if self.copying_expires is not None:
            data["copyingExpires"] = _iso(self.copying_expires)
        return data


@dataclass(frozen=True)
class Summary:
    """``pending.json``: what the last reconciliation run saw still copying."""

    listed_at: datetime  # the run's time, when it listed the records
    completed_at: datetime
    schedule: str
    stale_after: timedelta
    records: int  # task records the listing returned
    copying_tasks: int  # of them, with a delivery still copying
    tasks: list[CopyingTask]  # the MAX_SUMMARY_TASKS due first, due first
    poison: int | None = None  # messages in the poison queue when the run began (None: not known)

    @property
    def truncated(self) -> bool:
        return self.copying_tasks > len(self.tasks)

    def to_bytes(self) -> bytes:
        document = {
            "kind": SUMMARY_KIND,
            "version": 1,
            "listedAt": _iso(self.listed_at),
            "completedAt": _iso(self.completed_at),
            "schedule": self.schedule,
            "staleAfterMinutes": self.stale_after.total_seconds() / 60,
            "records": self.records,
            "copyingTasks": self.copying_tasks,
            "truncated": self.truncated,
            "poisonMessages": self.poison,
            "tasks": [task.dump() for task in self.tasks],
        }
        return json.dumps(document, separators=(",", ":")).encode("ascii")

    @classmethod
    def from_bytes(cls, data: bytes) -> Summary:
        document = json.loads(data)
        if not isinstance(document, dict) or document.get("kind") != SUMMARY_KIND:
            raise ValueError("not a pending summary")
        listed, completed = parse_time(document.get("listedAt")), parse_time(document.get("completedAt"))
        if listed is None or completed is None:
            raise ValueError("a pending summary without its times")
        tasks = []
        for entry in document.get("tasks") or []:
            oldest = parse_time(entry.get("oldestCopying")) if isinstance(entry, dict) else None
            if oldest is None:
                continue
            tasks.append(
                CopyingTask(
                    workspace_id=str(entry.get("workspaceId") or ""),
                    task_id=str(entry.get("taskId") or ""),
                    copying=int(entry.get("copying") or 0),
                    oldest_copying=oldest,
                    copying_expires=parse_time(entry.get("copyingExpires")),
                )
            )
        return cls(
            listed_at=listed,
            completed_at=completed,
            schedule=str(document.get("schedule") or ""),
            stale_after=timedelta(minutes=float(document.get("staleAfterMinutes") or 25)),
            records=int(document.get("records") or 0),
            copying_tasks=int(document.get("copyingTasks") or len(tasks)),
            tasks=tasks,
            poison=_count(document.get("poisonMessages")),
        )


def _count(value: object) -> int | None:
    """A count the summary carries: a whole number 0 or more, else not known (None)."""
    return value if type(value) is int and value >= 0 else None


def stale_after(schedule: str) -> timedelta:
    """Twice the run interval of an NCRONTAB schedule that repeats every N minutes or hours, plus a
    slow run's 5 minutes; DEFAULT_STALE_AFTER for any other schedule."""
    fields = schedule.split()
    if len(fields) != 6 or fields[3:] != ["*", "*", "*"]:
        return DEFAULT_STALE_AFTER
    minutes, hours = fields[1], fields[2]
    every = re.fullmatch(r"(?:\*|0)/(\d+)", minutes)
    if every and hours == "*" and int(every.group(1)) > 0:
        return timedelta(minutes=2 * int(every.group(1)) + 5)
    if minutes.isdigit() and (hours == "*" or re.fullmatch(r"(?:\*|0)/(\d+)", hours)):
        step = int(hours.split("/")[1]) if "/" in hours else 1
        return timedelta(hours=2 * step, minutes=5)
    return DEFAULT_STALE_AFTER


async def read_summary(storage: Storage) -> Summary | None:
    """The last run's summary; None when no run wrote one. Raises ValueError when it is unreadable."""
    try:
        found = await storage.read_bytes(PENDING_NAME, max_bytes=MAX_SUMMARY_BYTES)
    except Rejected:
        raise ValueError(f"{PENDING_NAME} is larger than any summary the receiver writes") from None
    if found is None:
        return None
    try:
        return Summary.from_bytes(found[1])
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{PENDING_NAME} is not a summary the receiver wrote ({type(exc).__name__})") from None


# --- what the reconciliation does with its listing ----------------------------------------------------


@dataclass
class Watch:
    """What one listing of the task records shows for the attention blobs (fed item by item)."""

    now: datetime
    records: int = 0
    copying: list[CopyingTask] = field(default_factory=list)
    recent_failures: list[tuple[str, str, datetime]] = field(default_factory=list)  # (workspace, task, lastfailed)

    def see(self, item: Listed) -> None:
        meta = {key.lower(): value for key, value in item.metadata.items()}
        if meta.get("receiverkind") != "task-record":
            return
        self.records += 1
        workspace_id, task_id = unquote(meta.get("workspaceid") or ""), unquote(meta.get("taskid") or "")
        try:
            copying = int(meta.get("copying") or 0)
        except ValueError:
            copying = 0
        oldest = parse_time(meta.get("oldestcopying"))
        if copying and oldest is not None:
            expires = parse_time(meta.get("copyingexpires"))
            self.copying.append(CopyingTask(workspace_id, task_id, copying, oldest, expires))
        last_failed = parse_time(meta.get("lastfailed"))
        if last_failed is not None and self.now - last_failed < MARKER_RETENTION:
            self.recent_failures.append((workspace_id, task_id, last_failed))


@dataclass
class AttentionReport:
    markers: int = 0  # listed
    backfilled: int = 0
    pruned: int = 0
    summary_written: bool = False
    failed: str | None = None


async def after_run(
    storage: Storage,
    watch: Watch,
    *,
    schedule: str,
    coverage: timedelta,
    poison: int | None,
    wall: Callable[[], datetime],
) -> AttentionReport:
    """After a reconciliation run's sweep: one listing of the attention prefix; markers written for
    recent failures that have none (newest first, at most MAX_BACKFILL); markers older than
    MARKER_RETENTION deleted (at most MAX_PRUNE); the pending summary written (If-Match on the
    listed one). Never raises for storage: what failed is in the report, and the next run tries again."""
    report = AttentionReport()
    now = watch.now
    try:
        markers: list[Marker] = []
        summary_etag: str | None = None
        async for item in storage.list(ATTENTION_PREFIX):
            if item.name == PENDING_NAME:
                summary_etag = item.etag
            elif (marker := marker_of(item)) is not None:
                markers.append(marker)
        report.markers = len(markers)
        failures = {marker.failure for marker in markers}
        marked_tasks = {(m.workspace_id, m.task_id, m.failed_at) for m in markers}
        missing = [entry for entry in watch.recent_failures if entry not in marked_tasks]
        missing.sort(key=lambda entry: entry[2], reverse=True)
        for workspace_id, task_id, _ in missing[:MAX_BACKFILL]:
            report.backfilled += await _backfill(storage, workspace_id, task_id, failures, now)
        old = sorted((m for m in markers if now - m.marked_at > MARKER_RETENTION), key=lambda m: m.marked_at)
        for marker in old[:MAX_PRUNE]:
            try:
                if await storage.delete(marker.name, if_match=marker.etag):
                    report.pruned += 1
            except Conflict:
                continue
        due = sorted(watch.copying, key=lambda task: (task.due(coverage), task.oldest_copying))
        summary = Summary(
            listed_at=now,
            completed_at=max(now, wall()),
            schedule=schedule,
            stale_after=stale_after(schedule),
            records=watch.records,
            copying_tasks=len(due),
            tasks=due[:MAX_SUMMARY_TASKS],
            poison=poison,
        )
        try:
            await storage.put(
                PENDING_NAME,
                summary.to_bytes(),
                if_match=summary_etag,
                content_type="application/json",
                metadata={"receiverkind": SUMMARY_KIND},
            )
            report.summary_written = True
        except Conflict:
            pass  # another run wrote it meanwhile: its summary stands
    except StoreError as exc:
        report.failed = exc.message
        log.warning("the attention markers or the pending summary could not be kept up (%s): next run", exc)
    return report


async def _backfill(
    storage: Storage, workspace_id: str, task_id: str, failures: set[tuple[str, str, str, datetime]], now: datetime
) -> int:
    """The markers of the task's failures of the last MARKER_RETENTION that are missing (its record
    read once); marked now when the failure is under NOTICE_WINDOW old, else when it failed."""
    try:
        found = await storage.read_bytes(record_name(workspace_id, task_id), max_bytes=MAX_RECORD_BYTES)
        record = TaskRecord.from_bytes(found[1]) if found is not None else None
    except (Rejected, ValueError):
        return 0
    if record is None:
        return 0
    written = 0
    for item in record.deliveries:
        if item.state is not State.FAILED or item.failed_at is None or now - item.failed_at >= MARKER_RETENTION:
            continue
        if (record.workspace_id, record.task_id, item.delivery, item.failed_at) in failures:
            continue
        marked_at = now if now - item.failed_at < NOTICE_WINDOW else None
        written += await write_marker(storage, record, item, "backfilled", marked_at)
    return written


__all__ = [
    "ATTENTION_PREFIX",
    "FAILED_PREFIX",
    "MARKER_RETENTION",
    "NOTICE_WINDOW",
    "PENDING_NAME",
    "AttentionReport",
    "CopyingTask",
    "Marker",
    "Summary",
    "Watch",
    "after_run",
    "bucket_prefixes",
    "mark_failures",
    "marker_blob",
    "marker_name",
    "marker_of",
    "newly_failed",
    "read_summary",
    "stale_after",
    "write_marker",
]
