"""Reconciliation (timer-triggered): nothing depends on one queue message surviving.

Each run lists the task records (one small blob per task, under the records' prefix: a listing
works on every kind of account, with or without index tags) and reads the labels each record
carries in its metadata: how many deliveries are still ``copying`` and since when, and how many
names are still to retire. A record with work older than RECONCILE_AFTER_MINUTES (any name to
retire at once) is driven through the same loop and the same ``decide`` as the webhook and the
queue function (:class:`receiver.machine.Sweep`): a copy whose bytes are at its name is recorded
as stored (its manifest written from the record), one whose link expired is failed, names to
retire are deleted If-Match. It never has a link's signature (that lives only in the queue
message), so a copy that is not there while its link is valid is left ``waiting``: its queue or
poison message can still finish it.

Last, the run keeps the attention blobs up from the same listing (receiver/attention.py): the
failure markers a driver could not write, old markers deleted, and the pending summary that
``python -m ops pending`` and ``failed`` read instead of listing every record.

Every run ends in one record: ``completed`` with what it did, or ``failed`` at ERROR with what to
check (the identity's role, the account's network rules) when storage refused it. Whatever else
failed, the run reports the poison queue's depth (an ERROR naming ``python -m ops replay-poison``
when messages wait there) and the age of the oldest delivery still copying (a metric).

Safe beside the queue function and itself: every write is conditional, a conflict observes again.
Bounded per run by count and time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import unquote

from .attention import AttentionReport, Watch, after_run, stale_after
from .engine import Job, Trace, alerts_of, run
from .machine import Sweep
from .migration import MigrationReport, migrate
from .models import (
    MAX_RECORD_BYTES,
    RECORD_CONTENT_TYPE,
    RECORD_PREFIX,
    TaskRecord,
    parse_time,
    record_name,
    unreadable_record,
)
from .outcome import ops_command
from .runtime import Runtime
from .storage import Conflict, Immutable, Leased, Listed, Storage, StoreError, UnreadableRecord
from .telemetry import recording, report_oldest_pending, report_poison_depth
from .verification import MAX_DEQUEUE_COUNT, POISON_QUEUE

log = logging.getLogger("receiver.reconciliation")

MAX_PER_RUN = 200
# How long the poison queue's depth may take to read (it is read first, inside the run's budget).
POISON_DEPTH_SECONDS = 20
# How long the queue keeps trying a copy: host.json retries it every minute up to 40 times; with
# slack. A delivery still copying after that has lost its message (or it was poisoned).
QUEUE_COVERAGE = timedelta(minutes=MAX_DEQUEUE_COUNT * 1.5 + 30)
# Below host.json's functionTimeout (5 minutes), leaving room for the item in progress.
RUN_BUDGET_SECONDS = 180.0
# Tasks changed this recently (beyond RECONCILE_AFTER_MINUTES) get their current file's manifest checked:
# a driver that stopped between the record and the manifest leaves it to the next run or two.
VERIFY_WINDOW = timedelta(minutes=20)


@dataclass
class RunReport:
    found: int = 0
    processed: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    stopped_early: bool = False
    poison_depth: int | None = None
    oldest_copying_seconds: float = 0.0
    failed: str | None = None  # why the run could not do its work (storage refused it)
    lost: list[str] = field(default_factory=list)  # tasks whose copy waited past every queue try
    migration: MigrationReport | None = None  # this run's page of the upgrade from the release without records
    migration_failed: str | None = None
    attention: AttentionReport | None = None  # the failure markers kept up, the pending summary written

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


@dataclass(frozen=True)
class Candidate:
    name: str
    workspace_id: str
    task_id: str
    oldest_copying: datetime | None
    retire: int
    recent: bool = False


def candidate(item: Listed, *, now: datetime, after: timedelta, window: timedelta = VERIFY_WINDOW) -> Candidate | None:
    """A record the listing shows has work: a name to retire, a delivery copying for ``after``, or a
    change in the last VERIFY_WINDOW beyond ``after`` (its current file's manifest is checked)."""
    meta = {key.lower(): value for key, value in item.metadata.items()}
    if meta.get("receiverkind") != "task-record":
        return None
    retire = int(meta.get("retire", "0") or 0)
    oldest = parse_time(meta.get("oldestcopying"))
    due = oldest is not None and now - oldest >= after
    recent = item.last_modified is not None and now - item.last_modified < after + window
    if not retire and not due and not recent:
        return None
    ids = (meta.get("workspaceid") or "", meta.get("taskid") or "")
    return Candidate(item.name, _decode(ids[0]), _decode(ids[1]), oldest, retire, recent)


def _decode(value: str) -> str:
    return unquote(value)


# Records without their labels read and written again per run (a few: they come from hand-made uploads).
MAX_RELABELLED_PER_RUN = 20


def unlabelled(item: Listed) -> bool:
    """A blob at a task record's place whose metadata lost the labels (uploaded again by hand, say): the
    listing cannot show its work, so the reconciliation reads it and writes it back with them."""
    meta = {key.lower() for key in item.metadata}
    depth = item.name.count("/") == RECORD_PREFIX.count("/") + 1
    return "receiverkind" not in meta and depth and item.name.startswith(RECORD_PREFIX) and item.name.endswith(".json")


async def relabel(storage: Storage, name: str) -> str:
    """Write the record at ``name`` again with its labels (a compare-and-swap, the same content): "relabelled",
    or "left" when it changed meanwhile, is gone, or is not this place's record. Raises UnreadableRecord."""
    found = await storage.read_bytes(name, max_bytes=MAX_RECORD_BYTES)
    if found is None:
        return "left"
    blob, data = found
    try:
        record = TaskRecord.from_bytes(data)
    except ValueError as exc:
        task = name.rsplit("/", 1)[-1].removesuffix(".json")
        raise UnreadableRecord(unreadable_record(name, task, exc)) from None
    if record_name(record.workspace_id, record.task_id) != name:
        return "left"  # another task's record copied here: not ours to label
    try:
        await storage.put(
            name, record.to_bytes(), if_match=blob.etag, content_type=RECORD_CONTENT_TYPE, metadata=record.labels()
        )
    except Conflict:
        return "left"  # a driver wrote it meanwhile, with its labels
    return "relabelled"


async def reconcile_run(
    *,
    runtime: Runtime,
    now: datetime,
    environ: dict[str, str] | None = None,
    verify_window: timedelta = VERIFY_WINDOW,
) -> RunReport:
    """One run of the timer. Never raises: a failure is its ERROR record."""
    report = RunReport()
    deadline = time.monotonic() + RUN_BUDGET_SECONDS
    with recording("reconciliation") as run_record:
        run_record.outcome = "run"
        try:
            # First, so it is reported whatever else fails, and written in the summary `ops pending` reads.
            report.poison_depth = await _poison_depth(environ)
            await _work(runtime, now, report, deadline=deadline, window=verify_window)
            run_record.outcome = "completed"
        except StoreError as exc:
            report.failed = exc.message
            run_record.outcome, run_record.final_failure = "failed", True
            run_record.reason = (
                f"the reconciliation could not read the task records ({exc.message}). Nothing checks unfinished "
                "copies until this is fixed: check that the function app's identity still has Storage Blob Data "
                "Owner on the destination account or container, the account's network rules, and that the account "
                "and container exist; then watch the next run's record"
            )
        except Exception as exc:  # the safety net itself must never fail silently
            report.failed = f"{type(exc).__name__}"
            run_record.outcome, run_record.final_failure = "failed", True
            run_record.reason = f"the reconciliation failed unexpectedly ({type(exc).__name__}); see the exception log"
            log.exception("reconciliation run failed")
        finally:
            _report_metrics(report)
        if run_record.outcome == "completed":
            run_record.reason = _summary(report)
            if report.lost:
                run_record.final_failure = True
    return report


async def _work(
    runtime: Runtime,
    now: datetime,
    report: RunReport,
    *,
    deadline: float,
    window: timedelta = VERIFY_WINDOW,
) -> None:
    settings = runtime.settings()
    storage = runtime.store()
    await _migrate(storage, now, report)
    after = timedelta(minutes=settings.reconcile_after_minutes)
    period = (stale_after(settings.reconcile_schedule) - timedelta(minutes=5)) / 2  # its runs' interval
    watch = Watch(now)  # what the listing shows for `ops pending` and `ops failed` (receiver/attention.py)
    found: list[Candidate] = []
    bare: list[str] = []
    async for listed in storage.list(RECORD_PREFIX):
        watch.see(listed)
        if (c := candidate(listed, now=now, after=after, window=window)) is not None:
            found.append(c)
        elif len(bare) < MAX_RELABELLED_PER_RUN and unlabelled(listed):
            bare.append(listed.name)
    for name in bare:
        with recording("reconciliation") as record:
            try:
                record.outcome = await relabel(storage, name)
                if record.outcome == "relabelled":
                    record.reason = f"the task record {name} had lost its labels (metadata): written again with them"
            except StoreError as exc:
                record.outcome, record.reason = "error", exc.message
                record.final_failure = isinstance(exc, UnreadableRecord)  # a person must restore it: ERROR
            report.count(record.outcome)
    report.found = len(found)
    ages = [(now - c.oldest_copying).total_seconds() for c in found if c.oldest_copying is not None]
    report.oldest_copying_seconds = max(ages, default=0.0)
    # From a different point each run: tasks that can only wait must not keep the others out.
    start = random.randrange(len(found)) if len(found) > MAX_PER_RUN else 0  # noqa: S311 (not a secret)
    chosen = (found[start:] + found[:start])[:MAX_PER_RUN]
    for item in chosen:
        if time.monotonic() > deadline:
            report.stopped_early = True
            break
        report.processed += 1
        with recording("reconciliation") as record:
            record.task_id, record.workspace_id = item.task_id, item.workspace_id
            trace = Trace()  # filled as it goes: a step failing after a winning swap leaves that swap known
            refused: str | None = None  # what a step storage refused said
            job = Job(
                event=Sweep(now=now, verify=item.recent, manifests=settings.write_manifest),
                workspace_id=item.workspace_id,
                task_id=item.task_id,
                write_manifest=settings.write_manifest,
                alert_window=period,
            )
            try:
                answer, _ = await run(storage, job, now=now, wall=runtime.clock, trace=trace)
                record.outcome, record.arrows = answer.arrow, ",".join(trace.arrows)
                done = [f"retired {', '.join(trace.retired)}"] if trace.retired else []
                # A name left listed (a lease refused its delete) is named on the task's own record, with what to do.
                record.reason = "; ".join(done + [f"not retired: {why}" for why in trace.deferred]) or None
            except StoreError as exc:
                record.arrows, refused = ",".join(trace.arrows), exc.message
                if isinstance(exc, Immutable | Leased) or exc.code == "fence-refused":
                    # What becomes of a delivery still copying (stored, or failed once its link expired) cannot be
                    # recorded while a policy or lease lasts (nor the file fenced first): counted lost past the
                    # queue's coverage (the run's ERROR), as if waiting.
                    what = exc.message if exc.code != "fence-refused" else "A policy or lease refused fencing the file."
                    record.outcome = "held"
                    record.reason = (
                        f"{what} Tried again each run until that is lifted; "
                        f"{ops_command('find', task=item.task_id, workspace=item.workspace_id)} tells its story"
                    )
                else:
                    record.outcome, record.reason = "error", exc.message
                    record.final_failure = isinstance(exc, UnreadableRecord)  # a person must restore it: ERROR
            except Exception as exc:  # one task's bug must not stop the others: logged, and the run goes on
                record.outcome, record.final_failure = "error", True
                record.reason = f"unexpected {type(exc).__name__} on this task; the run went on with the others"
                log.exception("reconciliation of task %s failed", item.task_id)
            # A swap of this run whose answer was lost (or came back as a 412 to the SDK's retry of it) may have failed
            # a delivery all the same: the record tells, by this run's own step.
            alerts = await alerts_of(storage, job, trace, sender=False)
            if alerts:  # this run failed deliveries for good (its swap won, or may have): the alert, naming each
                # (A step refused after it is only named: what it was for is decided anew by the next run.)
                # A lost answer (the failing swap's own, perhaps) is not a refusal: what is left is the next run's.
                then = "a record change got no answer" if trace.unsure else "a later step was refused"
                done_after = f"{then}: {refused}" if refused is not None else record.reason
                first = (alerts.failed or alerts.maybe)[0]
                record.final_failure = True
                record.outcome = "expired" if "expired" in trace.arrows else record.outcome
                record.blob, record.delivery = f"{settings.destination_container}/{first.blob}", first.delivery
                said = alerts.said("this run's")
                record.reason = "; ".join(filter(None, [said, done_after]))
            waited = now - item.oldest_copying if item.oldest_copying is not None else timedelta(0)
            if record.outcome in ("waiting", "held") and waited > QUEUE_COVERAGE:
                report.lost.append(item.task_id)
            report.count(record.outcome)
    report.attention = await after_run(
        storage,
        watch,
        schedule=settings.reconcile_schedule,
        coverage=QUEUE_COVERAGE,
        poison=report.poison_depth,
        wall=runtime.clock,
    )


async def _migrate(storage: Storage, now: datetime, report: RunReport) -> None:
    """One bounded page of the upgrade (receiver.migration) before the records are listed, so the
    records it builds are swept in the same run. It never stops the run: a failure is logged."""
    try:
        report.migration = await migrate(storage, now=now)
    except StoreError as exc:
        report.migration_failed = exc.message
        log.warning("the migration of the previous release's files could not run (%s): tried again next run", exc)
    except Exception as exc:
        report.migration_failed = type(exc).__name__
        log.exception("the migration of the previous release's files failed")
    migration = report.migration
    if migration is not None and not migration.already_done:
        log.info(
            "migration: listed=%d tasks=%d stored=%d superseded=%d left_pending=%s left_doubtful=%s left_recent=%s "
            "left_copying=%s done=%s stopped=%s",
            migration.listed,
            migration.tasks,
            len(migration.stored),
            len(migration.superseded),
            migration.left_pending,
            migration.left_doubtful,
            migration.left_recent,
            migration.left_copying,
            migration.done,
            migration.stopped,
        )


def _summary(report: RunReport) -> str:
    text = (
        f"found={report.found} processed={report.processed} {report.outcomes} stopped_early={report.stopped_early} "
        f"oldest_copying_s={report.oldest_copying_seconds:.0f} poison={report.poison_depth}"
    )
    if report.migration is not None and not report.migration.already_done:
        text += f"; migration listed={report.migration.listed} done={report.migration.done}"
    if report.migration_failed is not None:
        text += f"; migration failed ({report.migration_failed}), tried again next run"
    attention = report.attention
    if attention is not None and (attention.backfilled or attention.pruned or attention.failed):
        text += f"; failure markers backfilled={attention.backfilled} pruned={attention.pruned}"
        if attention.failed:
            text += f", not kept up ({attention.failed}): tried again next run"
    if report.lost:
        text += (
            f"; {len(report.lost)} task(s) have a delivery copying for over {QUEUE_COVERAGE.total_seconds() / 60:.0f} "
            "minutes whose queue message (which holds the link) is lost or poisoned, or that a retention policy or "
            "legal hold refuses recording: python -m ops pending names each delivery, with the command that tells "
            "its story and what to run next; "
            + "; ".join(ops_command("find", task=task) for task in report.lost[:3])
            + (f"; and {len(report.lost) - 3} more" if len(report.lost) > 3 else "")
        )
    return text


async def _poison_depth(environ: dict[str, str] | None) -> int | None:
    """Bounded: measured first, a slow host storage must not eat the run's budget (None: not known)."""
    from .hostqueue import queue_depth

    try:
        return await asyncio.wait_for(
            queue_depth(POISON_QUEUE, environ if environ is not None else dict(os.environ)), POISON_DEPTH_SECONDS
        )
    except TimeoutError:
        log.warning("the poison queue's depth was not read within %s s: reported next run", POISON_DEPTH_SECONDS)
        return None


def _report_metrics(report: RunReport) -> None:
    if report.poison_depth is not None:
        report_poison_depth(report.poison_depth, queue=POISON_QUEUE)
    report_oldest_pending(report.oldest_copying_seconds if report.found else None)
