"""Observe, decide, apply: the one loop every driver runs (webhook, queue function, reconciliation, operator).

The loop asks :func:`receiver.machine.decide` for the next step and carries it out against the
:class:`~receiver.storage.Storage` seam, every write conditional: the record by compare-and-swap,
a copy over a file If-Match on the version read, a delete If-Match. A conflict is never an error
here: it means somebody else moved the task, so the loop observes again and decides again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any, cast

from .attention import mark_failures
from .machine import (
    RECORD_WITHIN,
    UNSEEN,
    Answer,
    Apply,
    Arrival,
    Change,
    Copy,
    Decision,
    Event,
    Fence,
    Observe,
    Retire,
    Seen,
    Stage,
    Sweep,
    WriteManifest,
    decide,
    replaced_by,
    watched_copying,
)
from .models import (
    COPY_ID,
    MAX_RECORD_BYTES,
    RECORD_CONTENT_TYPE,
    RECORD_ROOM,
    Delivery,
    Manifest,
    Retirement,
    State,
    Step,
    TaskRecord,
    record_name,
    unreadable_record,
)
from .outcome import ARCHIVED, ops_command
from .plan import MANIFEST_SUFFIX, has_manifest_name, of_another_task, task_key
from .storage import (
    Blob,
    Conflict,
    Headers,
    Immutable,
    Leased,
    Misconfigured,
    SourceChanged,
    SourceUnreadable,
    Storage,
    StoreError,
    TooLargeForSyncCopy,
    Unavailable,
    UnreadableRecord,
    Written,
)

log = logging.getLogger("receiver.engine")

MAX_STEPS = 24
MANIFEST_MARKER = {"receiverkind": "manifest"}
MAX_MANIFEST_BYTES = 1024 * 1024
MIB = 1024 * 1024
BLOCK_BYTES = 100 * MIB  # Put Block From URL: a block a request; several at a time
STAGE_PARALLEL = 4
MAX_BLOCKS = 50_000
CONCLUDING = frozenset({"stored", "adopted", "restored"})

Clock = Callable[[], float]


@dataclass(frozen=True)
class Job:
    """What a driver needs beyond the event: the source link (the only place it lives) and what a
    copy writes. A reconciliation or operator job has no source."""

    event: Event
    workspace_id: str
    task_id: str
    source_url: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None
    write_manifest: bool = True
    deadline: float | None = None  # ``clock`` time after which staging stops (the webhook's answer)
    clock: Clock = time.monotonic
    block_bytes: int = BLOCK_BYTES
    alert_window: timedelta = timedelta(minutes=10)  # the reconciliation's period: one of its tries a day falls in it


@dataclass
class Trace:
    """What the loop did, for the delivery's log record and the tests."""

    arrows: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)  # the arrows of the record changes that won their swap
    copy_sent: bool = False
    mode: str | None = None  # "sync" | "staged"
    source_changed: bool = False  # the exported file was written again while this run staged it
    effect_failed: StoreError | None = None
    retired: list[str] = field(default_factory=list)
    blob: str | None = None  # the name the delivery was decided at, when not the notice's (its record's)
    deferred: list[str] = field(default_factory=list)  # names left listed to retire, and why
    failed: list[Delivery] = field(default_factory=list)  # deliveries a record change of this run failed
    # A record change whose outcome is not known: an answer lost, a 412 (which a retry of a change that landed gets
    # too), or cancelled on its way. What it failed may be this run's doing: the record is read back to tell.
    unsure: bool = False
    maybe_failed: list[Delivery] = field(default_factory=list)  # what those changes would have failed
    record: TaskRecord | None = None  # the task record as this run last read or wrote it
    mine: set[StepKey] = field(default_factory=set)  # the steps this run's changes wrote (or may have: unsure)
    # The manifests this run wrote and kept (name -> (ETag, delivery)): one whose file moved on meanwhile is its to
    # remove when it ends without the delivery stored (a retirement may have looked before it landed).
    manifests: dict[str, tuple[str, str]] = field(default_factory=dict)


StepKey = tuple[str, str, datetime, str, str | None]  # delivery, driver, time, outcome, note


def step_keys(record: TaskRecord | None) -> set[StepKey]:
    return {
        (item.delivery, step.by, step.at, step.outcome, step.note)
        for item in (record.deliveries if record is not None else [])
        for step in item.history
    }


def own_alerts(deliveries: list[Delivery], mine: set[StepKey], *, sender: bool) -> list[Delivery]:
    """The failed deliveries whose alert is this run's (one ERROR per failure after a 2xx, by the driver whose change
    failed it): failed by a step this run wrote (``mine``), unless that failure ended an attempt this run began
    itself, as its sender's answer (``sender``: a webhook's 502) or by accepting again a delivery already failed
    (whose failure was alerted then)."""

    def own(item: Delivery, step: Step) -> bool:
        return (item.delivery, step.by, step.at, step.outcome, step.note) in mine

    found = []
    for item in deliveries:
        steps = item.history if item.state is State.FAILED else []
        for at, step in enumerate(steps):
            if step.outcome != "failed" or not own(item, step):
                continue
            # The attempt it ended began with the first step after the failure before it (or with the first step
            # kept): accepted, stored or adopted by whom? (At the failure itself: created failed, by this run.)
            began = next((i + 1 for i in range(at - 1, -1, -1) if steps[i].outcome == "failed"), 0)
            # Another request's 202 for it during the attempt (a step `promised`): its sender was promised it.
            promised = any(step.outcome == "promised" and not own(item, step) for step in steps[began:at])
            if not own(item, steps[began]) or promised or (not sender and began == 0 and began < at):
                found.append(item)
                break
            if not sender and began == at and at == 0:
                found.append(item)  # created failed by a queue try (its webhook answered 202 or 503)
                break
    return found


async def alerts_of(storage: Storage, job: Job, trace: Trace, *, sender: bool, read_back: bool = True) -> Alerts:
    """What this run's ERROR names: the deliveries its changes failed for good (:func:`own_alerts`), from the record
    as it last saw it, or read again after a change whose outcome was not known; when it cannot be read again (or
    ``read_back`` is False: a webhook out of time), what those changes would have failed, as "may have failed"."""
    record, sure = trace.record, True
    if trace.unsure and read_back:
        try:
            record, _ = await _read_record(task_view(storage, job), job)
        except StoreError:
            sure = False
    elif trace.unsure:
        sure = False
    failed = own_alerts(record.deliveries if record else [], trace.mine, sender=sender)
    named = {item.delivery for item in failed}
    maybe = [] if sure else own_alerts(trace.maybe_failed, trace.mine, sender=sender)
    return Alerts(failed, [item for item in maybe if item.delivery not in named], job.task_id, job.workspace_id)


@dataclass(frozen=True)
class Alerts:
    """A run's own failures for good (its ERROR), and those it may have made (its change got no answer), of the
    task ``task_id`` in ``workspace_id``."""

    failed: list[Delivery]
    maybe: list[Delivery]
    task_id: str = ""
    workspace_id: str = ""

    def __bool__(self) -> bool:
        return bool(self.failed or self.maybe)

    def said(self, whose: str) -> str:
        """Each delivery, where it was and why it failed (``whose`` names the change: "this request's"), where
        the document is, and the command that tells the task's story."""
        sure = [f"delivery {d.delivery[:12]} at {d.blob} failed for good: {d.failure_reason}" for d in self.failed]
        maybe = [
            f"delivery {d.delivery[:12]} at {d.blob} may have failed for good ({whose} change failing it got no "
            f"answer): {d.failure_reason}"
            for d in self.maybe
        ]
        whether = " and whether it did" if self.maybe else ""
        story = ops_command("find", task=self.task_id, workspace=self.workspace_id)  # (built only for an alert)
        return "; ".join([*sure, *maybe, ARCHIVED, f"{story} tells its story{whether}"])


def manifest_name(blob: str) -> str:
    return f"{blob}{MANIFEST_SUFFIX}"


async def run(
    storage: Storage,
    job: Job,
    *,
    now: datetime,
    trace: Trace | None = None,
    wall: Callable[[], datetime] | None = None,
) -> tuple[Answer, Trace]:
    """Drive ``job`` to its answer. Raises :class:`StoreError` when storage fails in a way the loop
    cannot answer for (the caller maps it to 503/500); ``trace`` then still says what was sent.
    ``now`` is when the event came; ``wall`` tells the time of each step (its history entry)."""
    trace = trace if trace is not None else Trace()
    storage = task_view(storage, job)
    seen = Seen(large=isinstance(job.event, Arrival) and job.event.notice.large)
    clock = wall or (lambda: now)
    copied_at: datetime | None = None  # when this driver's last copy answered
    if isinstance(job.event, Arrival):
        # A container that refuses overwrites is asked about once a process; there the record is read
        # before anything is copied (a create that the record then refuses could not be removed).
        seen = replace(seen, locked=await storage.container_policy())
        expires = job.event.notice.link_expires_on
        if (expires is None or expires > now) and not seen.large and job.source_url is not None and not seen.locked:
            seen, copied_at = await _first_round(storage, job, seen, trace, clock)
    for _ in range(MAX_STEPS):
        at = max(now, clock())
        if seen.record_read:
            trace.record = seen.record
        if isinstance(job.event, Arrival) and not job.event.patient and seen.record is not None:
            seen = replace(seen, began_attempt=_began_attempt(seen.record, job.event.notice.delivery, trace.mine))
        decision = decide(seen, job.event, at)
        if isinstance(decision, Change) and copied_at is not None and at - copied_at > RECORD_WITHIN:
            _record_in_time(job, seen)
        trace.arrows.append(decision.arrow)
        if isinstance(decision, Answer):
            if decision.kind in ("superseded", "failed") and job.deadline is None:
                await drop_own_manifests(storage, trace)  # (the webhook does it in what its answer's time leaves)
            return _finish(decision, trace), trace
        if isinstance(decision, Observe) and decision.at is not None:
            job, seen, trace.blob = _decided_at(job, decision.at), _unlooked(seen), decision.at
        seen = await _apply(storage, job, seen, decision, trace, now=at)
        if isinstance(decision, Copy | Stage) and (seen.copied or seen.attempt == "lost"):
            copied_at = max(now, clock())
    raise Unavailable("The task kept changing while this delivery stored it. Send the document again.")


async def drop_own_manifests(storage: Storage, trace: Trace) -> None:
    """Each manifest this run wrote whose file no longer holds its delivery goes (If-Match on what it wrote: a
    newer export's manifest is never touched). Best effort: the answer stands whatever storage says."""
    for name, (etag, delivery) in trace.manifests.items():
        with contextlib.suppress(StoreError):
            holder = await storage.read(name.removesuffix(MANIFEST_SUFFIX))
            if holder is None or holder.delivery != delivery:
                await _delete_quietly(storage, name, etag)


def _began_attempt(record: TaskRecord, delivery: str, mine: set[StepKey]) -> bool:
    """Did this run write the first step of ``delivery``'s current attempt (since its last failure)?"""
    item = record.find(delivery)
    if item is None or item.state is not State.COPYING or not item.attempt:
        return False
    first = item.attempt[0]
    return (delivery, first.by, first.at, first.outcome, first.note) in mine


def _decided_at(job: Job, name: str) -> Job:
    """``job`` about its delivery at ``name`` (where the record holds it): its copy, manifest and answer too."""
    assert isinstance(job.event, Arrival)
    notice = job.event.notice
    container = str(notice.manifest.get("blob", ""))[: -len(notice.blob)]
    moved = replace(notice, blob=name, manifest={**notice.manifest, "blob": f"{container}{name}"})
    return replace(job, event=replace(job.event, notice=moved))


def _unlooked(seen: Seen) -> Seen:
    """What was seen at the notice's name, forgotten: nothing has been looked at at the new one yet."""
    return replace(
        seen, blob=UNSEEN, manifest=UNSEEN, watched=None, copied=False, attempt=None, rechecked=None, redirected=True
    )


def _record_in_time(job: Job, seen: Seen) -> None:
    """A copy the record does not know yet is recorded within RECORD_WITHIN of its answer, or never by
    this driver: after IN_FLIGHT others take such a file for an orphan and may replace it."""
    assert isinstance(job.event, Arrival)
    if seen.record is None or seen.record.find(job.event.notice.delivery) is None:
        raise Unavailable("This delivery stalled between its copy and its record. Send the document again.")


def _finish(answer: Answer, trace: Trace) -> Answer:
    if trace.effect_failed is not None and answer.kind in ("stored", "duplicate"):
        # Stored, but its manifest (or Content-Type) could not be written: 503, and the queue function
        # writes it. The file is never removed for that.
        return Answer(
            "failed",
            503,
            answer.arrow,
            error="storage-unavailable",
            reason=(
                "The file was stored, but its manifest could not be written yet"
                + (
                    " (a lease another client holds on it refused the write)"
                    if trace.effect_failed.kind == "leased"
                    else ""
                )
                + "; the receiver retries by itself. If the document stays in review, send it again in a few minutes."
            ),
            enqueue=True,
        )
    return answer


async def _first_round(
    storage: Storage, job: Job, seen: Seen, trace: Trace, clock: Callable[[], datetime]
) -> tuple[Seen, datetime | None]:
    """The record read and a create-only copy side by side: a create destroys nothing, so it needs no
    decision first, and most deliveries are then stored in two round trips. Also when the copy answered
    (if it may have landed): the record must follow within RECORD_WITHIN of that."""
    assert isinstance(job.event, Arrival)
    name = job.event.notice.blob

    async def copy() -> tuple[Seen, datetime | None]:
        copied = await _copy(storage, job, name, None, seen, trace)
        return copied, clock() if copied.copied or copied.attempt == "lost" else None

    record, landed = await asyncio.gather(_read_record(storage, job), copy(), return_exceptions=True)
    if isinstance(record, BaseException):
        if (
            isinstance(record, UnreadableRecord | Misconfigured)
            and not isinstance(landed, BaseException)
            and landed[0].copied
        ):
            # Never deleted here: once the record can be read a retry (or a repair) may adopt it before a delete
            # lands, and an adoption keeps the version. Named instead, with what makes it recorded.
            fixed = "the record is restored" if isinstance(record, UnreadableRecord) else "that is done"
            raise type(record)(
                f"{record.message} A copy of this export was made at {name} meanwhile: once {fixed}, "
                "send the document again (its retry records that file).",
                code=record.code,
                status=record.status,
            ) from None
        raise record
    if isinstance(landed, BaseException):
        raise landed
    copied, answered = landed
    return replace(copied, record=record[0], record_etag=record[1], record_read=True), answered


async def _apply(storage: Storage, job: Job, seen: Seen, decision: Decision, trace: Trace, *, now: datetime) -> Seen:
    if isinstance(decision, Observe):
        try:
            # After a conditional copy or commit that lost (412) the record is read again too: a delivery
            # superseded since its acceptance must not copy again over the version another made its own.
            again = decision.record or seen.attempt == "changed"
            observed = await _observe(storage, job, seen, record=again, manifest=decision.manifest)
            if decision.record and isinstance(observed.blob, Blob):
                observed = replace(observed, rechecked=observed.blob.etag)
            return observed
        except Unavailable:
            if seen.attempt != "lost" or seen.blind:
                raise
            return replace(seen, blind=True)  # decide records it without knowing what landed
    if isinstance(decision, Copy):
        assert isinstance(job.event, Arrival)
        copied = await _copy(storage, job, job.event.notice.blob, decision.if_match, seen, trace)
        # A restore was decided from the record this driver last wrote: it is recorded again (a swap),
        # so a record that moved on meanwhile is seen, and the restored copy removed if it is stale now.
        return replace(copied, concluded=None) if decision.arrow == "restored" else copied
    if isinstance(decision, Stage):
        staged = await _stage(storage, job, decision.if_match, seen, trace)
        return replace(staged, concluded=None) if decision.arrow == "restored" else staged
    if isinstance(decision, Change):
        return await _change(storage, job, seen, decision, trace, now=now)
    if isinstance(decision, Apply):
        fences = [effect for effect in decision.effects if isinstance(effect, Fence)]
        if fences:
            return await _fence(storage, seen, fences[0])
        return await _effects(storage, job, seen, decision, trace, now=now)
    raise AssertionError(f"unknown decision {decision!r}")


# --- observing ----------------------------------------------------------------------------------------


async def _read_record(storage: Storage, job: Job) -> tuple[TaskRecord | None, str | None]:
    found = await storage.read_bytes(record_name(job.workspace_id, job.task_id), max_bytes=MAX_RECORD_BYTES)
    if found is None:
        return None, None
    blob, data = found
    try:
        return TaskRecord.from_bytes(data), blob.etag
    except ValueError as exc:
        raise UnreadableRecord(unreadable_record(blob.name, job.task_id, exc)) from None


def _watched(job: Job, record: TaskRecord | None) -> str | None:
    """The name whose blob the decision needs: the notice's, or (a sweep) the delivery still copying."""
    if isinstance(job.event, Arrival):
        return job.event.notice.blob
    if record is None:
        return None
    copying = watched_copying(record)
    if copying is not None:
        return copying.blob
    current = record.current_delivery
    return current.blob if job.event.verify and current is not None else None


async def _observe(storage: Storage, job: Job, seen: Seen, *, record: bool = False, manifest: bool = False) -> Seen:
    """Read the record when asked (and for a sweep, or before anything was read), then the watched blob
    (and its manifest): a blob read after the record is at least as new as it, so a blob a delivery adopts
    can only change after the record did (its compare-and-swap then fails).

    A delivery that asked for the record again (before overwriting a file, or after a copy that lost)
    reads it once more after the blob, until the two record reads agree: a copy prepared over that blob
    then comes from a record at least as new as it too (a driver records, then fences its file; from a
    record read before that, a copy over the fenced version would replace the delivery just stored)."""
    if record or isinstance(job.event, Sweep) or not seen.record_read:
        found, etag = await _read_record(storage, job)
        seen = replace(seen, record=found, record_etag=etag, record_read=True)
    name = _watched(job, seen.record)
    if name is None:
        return replace(seen, blob=None, manifest=None, attempt=None, watched=None)
    manifest = manifest or (isinstance(job.event, Sweep) and job.event.verify and job.write_manifest)
    # With WRITE_MANIFEST off, none is written, so none is needed: one left from before is not looked at.
    for _ in range(3):
        wanted = manifest and job.write_manifest
        there_read = storage.read(manifest_name(name)) if wanted else _absent() if manifest else _unseen()
        blob, there = await asyncio.gather(storage.read(name), there_read)
        if not (record and isinstance(job.event, Arrival)):
            break
        found, etag = await _read_record(storage, job)
        if etag == seen.record_etag:
            break
        seen = replace(seen, record=found, record_etag=etag)
    else:
        raise Unavailable("The task kept changing while this delivery looked at it. Send the document again.")
    delivery = job.event.notice.delivery if isinstance(job.event, Arrival) else None
    copied = seen.copied and isinstance(blob, Blob) and blob.delivery == delivery
    # A lost answer stays known: the copy may land later, so the delivery must end up tracked.
    attempt = seen.attempt if seen.attempt == "lost" else None
    return replace(seen, blob=blob, manifest=there, copied=copied, attempt=attempt, watched=name)


async def observe(storage: Storage, job: Job) -> Seen:
    """What the loop observes first for ``job`` (a sweep: the record, then the blob it watches): the
    operator's dry runs decide from exactly this."""
    return await _observe(task_view(storage, job), job, Seen(), record=True)


class _TaskView:
    """The container as one task's driver sees it: a file whose metadata names another task holds none of
    this task's deliveries (its ``delivery`` is hidden), whatever link it was copied from (two tasks sent one
    link share the hash). So nothing of another task is adopted, fenced, retired or described as this one's."""

    def __init__(self, storage: Storage, workspace_id: str, task_id: str) -> None:
        self._storage, self._ids = storage, (workspace_id, task_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    async def read(self, name: str) -> Blob | None:
        blob = await self._storage.read(name)
        if blob is None or blob.delivery is None or not of_another_task(blob.metadata, *self._ids):
            return blob
        return replace(blob, metadata={key: value for key, value in blob.metadata.items() if key != "delivery"})


def task_view(storage: Storage, job: Job) -> Storage:
    return (
        storage if isinstance(storage, _TaskView) else cast(Storage, _TaskView(storage, job.workspace_id, job.task_id))
    )


async def _unseen() -> Any:
    return UNSEEN


async def _absent() -> None:
    return None


# --- copying ---------------------------------------------------------------------------------------------


def _copy_metadata(job: Job) -> dict[str, str]:
    """What a copy or commit writes as metadata: the plan's, and a new ``copyid`` naming these very
    bytes. Setting headers keeps it, a copy over them replaces it: a retirement of one version follows
    its header changes, never into another copy (see :func:`remove_if_holds`)."""
    return {**job.metadata, COPY_ID: secrets.token_hex(8)}


def _written_blob(name: str, etag: str, metadata: dict[str, str], headers: Headers | None = None) -> Blob:
    """The blob as this driver's own copy or commit left it (its metadata is what it sent)."""
    return Blob(name=name, etag=etag, size=0, headers=headers or Headers(), metadata=metadata)


async def _copy(storage: Storage, job: Job, name: str, if_match: str | None, seen: Seen, trace: Trace) -> Seen:
    assert job.source_url is not None
    trace.copy_sent, trace.mode = True, "sync"
    tags = job.tags if storage.tags_supported else None
    metadata = _copy_metadata(job)
    try:
        written = await storage.copy_from_url(name, job.source_url, if_match=if_match, metadata=metadata, tags=tags)
    except Conflict:
        return replace(seen, blob=UNSEEN, attempt="exists" if if_match is None else "changed")
    except TooLargeForSyncCopy:
        trace.copy_sent = False
        return replace(seen, attempt="too-large", large=True)
    except SourceUnreadable as exc:
        return replace(seen, attempt="source-gone" if exc.status == 404 else "source-refused")
    except Immutable as exc:
        return replace(seen, attempt="immutable", policy=exc.policy)
    except Unavailable:
        return replace(seen, blob=UNSEEN, attempt="lost")
    return replace(seen, blob=_written_blob(name, written.etag, metadata), copied=True, attempt=None)


def block_id(delivery: str, number: int, source_etag: str | None = None) -> str:
    """The same ids for the same delivery and version of its source whoever stages it (a retry re-stages the
    same blocks); another version's blocks have other ids, so one commit never lists blocks of two. Always 39
    characters before encoding (the service wants one length for every block id of a blob)."""
    version = hashlib.sha256((source_etag or "").encode()).hexdigest()[:8]
    return base64.b64encode(f"{delivery[:23]}-{version}-{number:06d}".encode("ascii")).decode("ascii")


async def _at_most(parallel: int, calls: Sequence[Callable[[], Awaitable[None]]]) -> None:
    """Run ``calls``, ``parallel`` at a time. The first to fail ends the rest: none starts after it, and those
    on their way are cancelled (gather alone would leave them, and every block not yet sent, running on the
    worker's loop after the answer, staging bytes that nothing commits)."""
    waiting, stopped = iter(calls), False

    async def worker() -> None:
        nonlocal stopped
        try:
            for call in waiting:
                if stopped:
                    return
                await call()
        except BaseException:
            stopped = True
            raise

    workers = [asyncio.ensure_future(worker()) for _ in range(min(parallel, len(calls)))]
    try:
        await asyncio.gather(*workers)
    except BaseException:
        stopped = True  # also when this try itself was cancelled (its time is up)
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        raise


async def _stage(storage: Storage, job: Job, if_match: str | None, seen: Seen, trace: Trace) -> Seen:
    """Put Block From URL, several blocks at a time, then one Put Block List: the earlier file stays
    readable and whole until that commit."""
    assert isinstance(job.event, Arrival) and job.source_url is not None
    notice = job.event.notice
    trace.mode = "staged"
    source = await storage.source_version(job.source_url)
    if source is None or source.etag is None:
        # The HEAD did not say (its size, or the version every block must require): staging its first byte
        # does, with the service's own answer (a source refused or gone is a final failure like any copy's;
        # anything else is tried again later).
        try:
            await storage.stage_block(notice.blob, block_id(notice.delivery, 0), job.source_url, offset=0, length=1)
        except SourceUnreadable as exc:
            return replace(seen, attempt="source-gone" if exc.status == 404 else "source-refused")
        raise Unavailable("The exported file's size or version could not be read. Send the document again.")
    size, etag = source.size, source.etag
    block = max(job.block_bytes, -(-size // MAX_BLOCKS))
    ranges = [(offset, min(block, size - offset)) for offset in range(0, size, block)]
    ids = [block_id(notice.delivery, number, etag) for number in range(len(ranges))]

    async def put(block_name: str, offset: int, length: int) -> None:
        if job.deadline is not None and job.clock() >= job.deadline:
            raise TimeoutError
        await storage.stage_block(
            notice.blob, block_name, job.source_url or "", offset=offset, length=length, source_etag=etag
        )

    trace.copy_sent = True
    metadata = _copy_metadata(job)
    try:
        blocks = [partial(put, name, offset, length) for name, (offset, length) in zip(ids, ranges, strict=True)]
        await _at_most(STAGE_PARALLEL, blocks)
        if job.deadline is not None and job.clock() >= job.deadline:
            raise TimeoutError
        tags = job.tags if storage.tags_supported else None
        headers = Headers(content_type=job.content_type)
        written = await storage.commit_blocks(
            notice.blob, ids, if_match=if_match, headers=headers, metadata=metadata, tags=tags
        )
    except (TimeoutError, SourceChanged) as exc:
        # Out of time, or the exported file was rewritten since its HEAD: staged again later (the queue
        # function), from a new look at it, under other block ids; nothing of this try is committed.
        trace.source_changed = trace.source_changed or isinstance(exc, SourceChanged)
        return replace(seen, attempt="unfinished")
    except Conflict:
        return replace(seen, blob=UNSEEN, attempt="changed")
    except SourceUnreadable as exc:
        return replace(seen, attempt="source-gone" if exc.status == 404 else "source-refused")
    except Immutable as exc:
        return replace(seen, attempt="immutable", policy=exc.policy)
    except Unavailable:
        return replace(seen, blob=UNSEEN, attempt="lost")
    headers = Headers(content_type=job.content_type)
    return replace(seen, blob=_written_blob(notice.blob, written.etag, metadata, headers), copied=True, attempt=None)


# --- changing the record, and the effects beside it ------------------------------------------------------


async def _drop_unrecorded_copy(storage: Storage, job: Job, seen: Seen) -> None:
    """Before a delivery the record does not hold is refused for the record's room: the copy this run made of it
    (its create-only copy, sent beside the record's read) goes, If-Match on what it wrote, so the refusal leaves
    nothing that no record names. Only its own: a copy found there may be a twin request's, about to be recorded
    (one that adopts this run's copy fences it first, so the delete is refused, or finds it gone at its fence and
    copies it again). One whose removal fails, or that a policy keeps, stays (a WARNING names it)."""
    if not isinstance(job.event, Arrival) or not seen.copied or not isinstance(seen.blob, Blob):
        return
    notice, blob, record = job.event.notice, seen.blob, seen.record
    if blob.name != notice.blob or (record is not None and record.find(notice.delivery) is not None):
        return
    try:
        await storage.delete(notice.blob, if_match=blob.etag)
    except Conflict:
        return  # changed since it was written: adopted (and fenced) by another driver
    except Immutable as exc:
        log.warning("%s stays, no task record names it: the %s on it refused removing it", notice.blob, exc.policy)
    except StoreError as exc:
        log.warning("%s may stay, no task record names it: its removal failed (%s)", notice.blob, exc.message)


async def _change(storage: Storage, job: Job, seen: Seen, decision: Change, trace: Trace, *, now: datetime) -> Seen:
    name = record_name(job.workspace_id, job.task_id)
    data = decision.record.to_bytes()
    held = [item for item in seen.record.deliveries if item.manifest] if seen.record else []
    more = bool({i.delivery for i in decision.record.deliveries if i.manifest} - {i.delivery for i in held})
    if len(data) > MAX_RECORD_BYTES or (more and len(data) > RECORD_ROOM):
        # Never written larger than any driver reads it. The notifications of exports still copying fill it (each
        # kept until its copy ends, then dropped): one more is refused while they do, never a change that ends one.
        failed = sum(1 for item in held if item.state is State.FAILED)
        await _drop_unrecorded_copy(storage, job, seen)
        raise Unavailable(
            f"The task record has no room for this notification ({len(data)} bytes, at most {RECORD_ROOM}): it keeps "
            f"the notifications of {len(held)} earlier export(s). "
            + (
                f"{failed} of them failed and stay: see the reference's Known limits (the record's room) before "
                "sending it again."
                if failed
                else "Send the document again once they are stored, in a few minutes."
            ),
            code="record-full",
        )
    write = storage.put(
        name,
        data,
        if_match=seen.record_etag,
        content_type=RECORD_CONTENT_TYPE,
        metadata=decision.record.labels(),
    )
    side = (
        _observe(storage, job, seen, manifest=True)
        if decision.observe
        else _effects(storage, job, replace(seen, record=decision.record), decision, trace, now=now)
    )
    known = {item.blob for item in seen.record.retire} if seen.record is not None else set()
    peek_names = [
        manifest_name(item.blob) for item in decision.record.retire if job.write_manifest and item.blob not in known
    ]
    was_failed = (
        {item.delivery for item in seen.record.deliveries if item.state is State.FAILED} if seen.record else set()
    )
    newly = [
        item for item in decision.record.deliveries if item.state is State.FAILED and item.delivery not in was_failed
    ]
    steps = step_keys(decision.record) - step_keys(seen.record)

    def unsure() -> None:  # landed or not, nobody will say: what it failed may be this run's to alert for
        trace.unsure = True
        trace.maybe_failed += newly
        trace.mine |= steps

    try:
        written, after, peeks, _ = await asyncio.gather(
            write,
            side,
            asyncio.gather(*(storage.read(n) for n in peek_names), return_exceptions=True),
            # A delivery this change fails gets its failure marker beside the swap (receiver/attention.py).
            mark_failures(storage, seen.record, decision.record, decision.arrow),
            return_exceptions=True,
        )
    except asyncio.CancelledError:  # the request's time ran out: the swap may have landed
        unsure()
        raise
    if isinstance(written, Conflict):
        unsure()
        # What the side effects did stays known (a manifest written beside a swap that lost).
        kept = after if isinstance(after, Seen) else seen
        observed = await _observe(storage, job, kept, record=True, manifest=decision.observe)
        if steps and not steps & step_keys(observed.record):  # read again: it did not land, so nothing of it is ours
            trace.maybe_failed = [item for item in trace.maybe_failed if all(item is not new for new in newly)]
            trace.mine -= steps
        return observed
    if isinstance(written, Immutable) and decision.arrow == "retire":
        # Only dropping names already deleted from the list was refused (a policy placed since): what the record
        # says of every delivery stands, and a later driver drops them. Left listed, as a retirement left for later.
        log.warning(
            "the task record %s keeps listing names already retired: the %s refused dropping them", name, written.policy
        )
        return replace(seen, retired=frozenset(), deferred=seen.deferred | seen.retired)
    if isinstance(written, Immutable) and decision.arrow == "promised":
        # A container policy placed since this process asked refused the note of a 202: decided as under it.
        return replace(seen, locked=written.policy)
    if isinstance(written, Immutable) and seen.copied and isinstance(job.event, Arrival):
        entry = seen.record.find(job.event.notice.delivery) if seen.record is not None else None
        if entry is None or entry.state is not State.STORED:
            # A policy placed since this process asked (creates pass it): the copy landed, its record cannot be
            # written, and nothing may remove it. The answer names it.
            written.copied = job.event.notice.blob
    if isinstance(written, BaseException):
        if isinstance(written, Unavailable):
            unsure()
        raise written
    if isinstance(after, BaseException):
        raise after
    assert isinstance(after, Seen) and isinstance(written, Written)
    found_peeks: list[Blob | BaseException | None] = list(peeks) if isinstance(peeks, list) else []
    concluded = decision.arrow if decision.arrow in CONCLUDING else seen.concluded
    trace.changes.append(decision.arrow)
    trace.failed += newly
    trace.record = decision.record
    trace.mine |= steps
    peeked = tuple(
        (name, found)
        for name, found in zip(peek_names, found_peeks, strict=False)
        if found is None or isinstance(found, Blob)
    )
    return replace(
        after,
        record=decision.record,
        record_etag=written.etag,
        record_read=True,
        concluded=concluded,
        changed=decision.arrow,
        fence=decision.fence,
        peeked=after.peeked + peeked,
    )


RETIRE_PATIENCE = timedelta(days=1)  # a retirement a lease holds back longer needs a person


def _unretired(job: Job, retirement: Retirement, refused: StoreError, *, age: timedelta, ours: bool) -> None:
    """A name a refused delete leaves listed (``age``: since it was listed; ``ours``: by this run). An ERROR (the
    alert) when a person must act (a hold, a policy, a missing permission; a lease past RETIRE_PATIENCE): by the run
    that listed it, and about once a day by the reconciliation (its try in each day's first ``job.alert_window``
    since the listing, its period), so a hold that lasts months alerts daily, not each run, nor once more for each
    request that touches the task meanwhile; else a WARNING. The task keeps the older file beside its current one."""
    for_good = isinstance(refused, Misconfigured | Immutable)
    if isinstance(refused, Immutable):
        fix = f"the {refused.policy} on it is lifted"
    elif for_good:
        fix = "the receiver's identity may delete blobs there"
    elif isinstance(refused, Leased):
        held = (
            f" (refused for over {RETIRE_PATIENCE.days} day(s): does it never lapse?)" if age > RETIRE_PATIENCE else ""
        )
        fix = f"the lease on it is broken or lapses{held}"
    elif refused.code == "kept-changing":  # (other drivers still setting its headers: a moment later it holds still)
        fix = "it holds still for a moment, tried again by the next request or reconciliation run"
    else:  # (a 503, a lost answer: the next driver to touch the task, or the next run, deletes it)
        held = f" (failing for over {RETIRE_PATIENCE.days} day(s): see the error)" if age > RETIRE_PATIENCE else ""
        fix = f"Azure Storage takes the delete, tried again by the next request or reconciliation run{held}"
    then = "or, to try now, run" if not for_good and not isinstance(refused, Leased) else "then run"
    # The reconciliation's run in each day's first window since the listing (also the first day's: the listing run
    # may have stopped before trying); an operator's check prints it (no alert of its own).
    daily = job.event.by == "reconciliation" and age % timedelta(days=1) < job.alert_window
    due = job.event.by != "operator" and ((for_good and ours) or (daily and (for_good or age > RETIRE_PATIENCE)))
    log.log(
        logging.ERROR if due else logging.WARNING,
        "could not retire %s of task %s in workspace %s (%s): it stays listed in the task record, beside the task's "
        "current file, until %s; %s %s",
        retirement.blob,
        job.task_id,
        job.workspace_id,
        refused,
        fix,
        then,
        ops_command("check", "--repair", task=job.task_id, workspace=job.workspace_id),
        extra={  # the columns the final-failures view shows (infra/app/queries/final-failures.kql)
            "receiver.taskId": job.task_id,
            "receiver.workspaceId": job.workspace_id,
            "receiver.operation": _OPERATION_OF[job.event.by],
            "receiver.outcome": "unretired",
            "receiver.reason": f"{retirement.blob} not retired ({refused.message}): it stays listed until {fix}",
        },
    )


# The operation whose record names a driver's work (receiver/telemetry.py Record.operation; the CLI's `operator`).
_OPERATION_OF = {
    "webhook": "delivery",
    "verifier": "verification",
    "reconciliation": "reconciliation",
    "operator": "operator",
}


def _listing_step(record: TaskRecord | None, retirement: Retirement) -> StepKey | None:
    """The step that listed ``retirement``'s name to retire: the latest that names it in its ``retired`` (a store
    that replaced it, a stray copy found), else the retired delivery's last step (the one that ended it). Later
    steps of that delivery (another stray copy, a retirement elsewhere) do not move it."""
    if record is None:
        return None
    naming = [
        (step.at, (item.delivery, step.by, step.at, step.outcome, step.note))
        for item in record.deliveries
        for step in item.history
        if step.retired and retirement.blob in step.retired and step.outcome != "retired"
    ]
    if naming:
        return max(naming, key=lambda found: found[0])[1]
    item = record.find(retirement.delivery)
    if item is None or not item.history:
        return None
    step = item.history[-1]
    return (item.delivery, step.by, step.at, step.outcome, step.note)


async def _effects(
    storage: Storage, job: Job, seen: Seen, decision: Change | Apply, trace: Trace, *, now: datetime
) -> Seen:
    """The decision's effects side by side. Beside a change, ``seen`` holds the record being written; on
    their own (an Apply, off the webhook's common path) they are ``careful``: see :func:`write_manifest`."""
    effects, careful = decision.effects, isinstance(decision, Apply)
    outcomes = await asyncio.gather(
        *(_effect(storage, job, seen, effect, now=now, careful=careful) for effect in effects),
        return_exceptions=True,
    )
    retired, deferred, kept = set(seen.retired), set(seen.deferred), set(seen.kept)
    manifest_done = seen.manifest_done
    for effect, outcome in zip(effects, outcomes, strict=True):
        if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
            raise outcome  # a cancellation, not a failure of the effect
        if isinstance(outcome, Exception) and not isinstance(outcome, StoreError):
            # A bug in an effect must not undo what the record already says (the file is stored): it is
            # logged, and the effect counts as not done (a manifest: 503, and the queue writes it again).
            log.error("an effect failed unexpectedly (%s): %s", type(outcome).__name__, effect, exc_info=outcome)
            outcome = Unavailable(f"{type(outcome).__name__} while writing beside {getattr(effect, 'blob', '')}")
        failed = isinstance(outcome, StoreError)
        if isinstance(effect, Retire):
            (deferred if failed else retired).add(effect.retirement.key)
            if outcome is False:
                kept.add(effect.retirement.key)
            if not failed:
                trace.retired.append(effect.retirement.blob)
            else:
                trace.deferred.append(f"{effect.retirement.blob}: {outcome}")
                assert isinstance(outcome, StoreError)
                # This driver's own copy, unlisted until the refusal lists it (receiver.machine): listed now.
                listed = seen.record is not None and effect.retirement in seen.record.retire
                last = _listing_step(seen.record, effect.retirement) if listed else None
                since = last[2] if last is not None else now
                ours = not listed or since == now or last in trace.mine  # listed beside this change, or earlier
                _unretired(job, effect.retirement, outcome, age=now - since, ours=ours)
        else:
            manifest_done = True
            if isinstance(effect, WriteManifest) and isinstance(outcome, str | ManifestWritten):
                etag = outcome if isinstance(outcome, str) else outcome.etag
                trace.manifests[manifest_name(effect.blob)] = (etag, effect.delivery)
            if failed:
                assert isinstance(outcome, StoreError)
                trace.effect_failed = outcome
    removed = any(  # a delete refused (a hold, a lease) leaves the blob as it was seen
        isinstance(effect, Retire)
        and not isinstance(outcome, BaseException)
        and isinstance(seen.blob, Blob)
        and effect.retirement.blob == seen.blob.name
        for effect, outcome in zip(effects, outcomes, strict=True)
    )
    blob = None if removed else seen.blob
    return replace(
        seen,
        retired=frozenset(retired),
        deferred=frozenset(deferred),
        kept=frozenset(kept),
        manifest_done=manifest_done,
        blob=blob,
        copied=seen.copied and not removed,
    )


async def _effect(
    storage: Storage, job: Job, seen: Seen, effect: WriteManifest | Retire | Fence, *, now: datetime, careful: bool
) -> bool | str | None:
    """Carry out one effect. A retirement says False when it left a file in place (one that no longer holds the
    delivery, or another copy of it); else None (deleted, or nothing there). A manifest says its ETag when it
    wrote one and kept it."""
    if isinstance(effect, Retire):
        item = effect.retirement
        name = manifest_name(item.blob)
        peeked = dict(seen.peeked)
        removals = [remove_if_holds(storage, item)]
        if effect.manifest and job.write_manifest:
            # Read beside the change that listed the name (when it was): its ETag saves a read. Absent
            # then, it is read again: a manifest written late may have landed since.
            known = peeked.get(name)
            matches = known is not None and _is_manifest(known) and known.delivery == item.delivery
            etag = known.etag if known is not None and matches else None
            removals.append(remove_manifest(storage, name, item.delivery, etag))
        deleted = (await settled(*removals))[0]
        if deleted:
            return None
        # Not deleted: gone already (another driver's delete, a copy that never landed), or another's now.
        return False if await storage.read(item.blob) is not None else None
    if isinstance(effect, WriteManifest):
        return await write_manifest(storage, job, seen, effect, now=now, careful=careful)
    return None


async def _fence(storage: Storage, seen: Seen, fence: Fence) -> Seen:
    """Set the file's headers again, If-Match on the version read: a copy prepared against that version
    then fails. Whatever happens, the blob as it now is goes back to decide."""
    current = await storage.read(fence.blob)
    if current is None or current.delivery != fence.delivery:
        return replace(seen, blob=current, fence=False, watched=fence.blob, manifest=UNSEEN)
    try:
        written = await storage.set_headers(fence.blob, current.headers, if_match=current.etag)
    except Conflict:
        return replace(seen, blob=await storage.read(fence.blob), fence=False, watched=fence.blob, manifest=UNSEEN)
    except Immutable as exc:
        # The file stays as it is (a lease or policy refuses changing it), but it is not fenced: a lease can be
        # broken before a copy prepared over this version lands. Nothing is answered as settled meanwhile.
        raise Unavailable(
            f"The file {fence.blob} is stored, but a {exc.policy} on the storage refused the change that protects it "
            f"from an older export's copy that may still be on its way. Send the document again in about ten minutes "
            f"(or once the {exc.policy} is lifted) to confirm it.",
            code="fence-refused",
        ) from None
    return replace(seen, blob=replace(current, etag=written.etag), fence=False, watched=fence.blob, fenced=written.etag)


class ManifestWritten(Unavailable):
    """A manifest was written, and the look at its file beside it failed: the effect failed (the queue function
    writes it again), and ``etag`` is what this run wrote (:func:`drop_own_manifests`)."""

    def __init__(self, cause: Unavailable, etag: str) -> None:
        super().__init__(cause.message, code=cause.code, status=cause.status)
        self.etag = etag


async def settled(*requests: Awaitable[Any]) -> list[Any]:
    """Requests side by side, each to its end before any failure is raised (the first): a write left running
    after its effect was judged failed would land unseen, after the driver decided from that failure."""
    outcomes = await asyncio.gather(*requests, return_exceptions=True)
    _raise_first(outcomes)
    return outcomes


def _raise_first(outcomes: Sequence[Any]) -> None:
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


async def remove_manifest(storage: Storage, name: str, delivery: str, etag: str | None) -> bool:
    """Delete the manifest ``name`` of a retired file: while it describes ``delivery``, or when it
    describes no file at all (a manifest written late beside a file that was already gone). The
    manifest is read before the file, so a newer export's manifest (written after its file) is kept."""
    if etag is not None and await _delete_quietly(storage, name, etag):
        return True
    there = await storage.read(name)
    if there is None or not _is_manifest(there):
        return False
    if there.delivery != delivery:
        beside = await storage.read(name.removesuffix(MANIFEST_SUFFIX))
        if beside is not None and beside.delivery == there.delivery:
            return False
    try:
        return await storage.delete(name, if_match=there.etag)
    except Conflict as exc:
        again = await storage.read(name)
        if again is not None and again.etag == there.etag:  # refused on the very version: a lease, not a change
            raise Leased(f"{name} could not be deleted ({_leased(exc.code)})") from None
        return False


def _leased(code: str | None) -> str:
    """Why a delete was refused on the very version it named: a lease (its code says so, or nothing else can)."""
    lease = "a lease another client holds on it." if code == "LeaseIdMissing" else "a lease on it?"
    return f"{code or 'precondition failed'}: {lease} Whoever holds it breaks it, or it lapses"


async def _delete_quietly(storage: Storage, name: str, etag: str) -> bool:
    try:
        return await storage.delete(name, if_match=etag)
    except Conflict:
        return False


async def remove_if_holds(storage: Storage, item: Retirement) -> bool:
    """Delete ``item.blob`` only while it holds ``item.delivery``, If-Match on the version listed (or, when
    none is, the one read). A version changed since it was listed is followed only while it is the same
    copy (its ``copyid``: its headers were set since), never into another copy of the delivery (a retry's,
    recorded since); a listing with a version but no copyid (a file from before copyids) follows only
    versions without one. Another delivery's
    file, or one already gone, is left alone. True when it was deleted; :class:`Unavailable` when that copy
    changed at each of three tries."""
    etag, refused = item.etag, None
    for _ in range(3):
        if etag is None:
            blob = await storage.read(item.blob)
            if blob is None or blob.delivery != item.delivery:
                return False
            copy_id = blob.metadata.get(COPY_ID)
            if item.copy_id is not None and copy_id != item.copy_id:
                return False
            if item.copy_id is None and item.etag is not None and copy_id is not None:
                return False  # a file listed before copyids: a copy made since is another copy
            if refused is not None and blob.etag == refused[0]:
                # Refused, though it is the very version: not a change (a lease held on it). It stays listed.
                raise Leased(f"{item.blob} could not be deleted ({_leased(refused[1])})")
            etag = blob.etag
        try:
            return await storage.delete(item.blob, if_match=etag)
        except Conflict as exc:
            refused, etag = (etag, exc.code), None  # changed since: read again; deleted only if it holds that copy
    # Still that copy, changed each time (others still setting its headers): not "left alone", which would drop
    # the listing and leave the file for good. It stays listed for the next driver.
    changing = f"{item.blob} kept changing while it was retired; it stays listed to retire"
    raise Unavailable(changing, code="kept-changing")


def _is_manifest(blob: Blob) -> bool:
    """Did the receiver write this blob as a manifest? (Its marker; older releases' manifests carry
    ``copystatus``.) Nothing else is ever overwritten or deleted as one."""
    meta = {key.lower(): value for key, value in blob.metadata.items()}
    return meta.get("receiverkind") == "manifest" or "copystatus" in meta


async def write_manifest(
    storage: Storage, job: Job, seen: Seen, effect: WriteManifest, *, now: datetime, careful: bool = False
) -> str | None:
    """The manifest beside the file, and the file's Content-Type, while the file holds the delivery
    (``seen.record`` is the record that says so). ``careful`` (off the webhook's common path): the file
    is read again after the manifest is written."""
    record = seen.record
    blob_known = isinstance(seen.blob, Blob) and seen.blob.name == effect.blob and seen.blob.headers.content_type
    content_type = str(effect.document.get("exportedFileContentType") or job.content_type or "") or None
    entry = record.find(effect.delivery) if record is not None else None
    document = Manifest.model_validate(
        {
            **effect.document,
            "history": [step.dump() for step in entry.history] if entry is not None else [],
            "completedAt": (entry.completed_at or now) if entry is not None else now,
            "replaced": replaced_by(record, effect.delivery) if record is not None else [],
            "tagsWritten": storage.tags_supported,
        }
    )
    metadata = {**MANIFEST_MARKER, "delivery": effect.delivery, "taskkey": task_key(job.workspace_id, job.task_id)}

    def kept_content_type(current: Blob, policy: str) -> None:
        # The file is stored, and keeps the Content-Type it was copied with: said, naming both.
        log.warning(
            "%s keeps Content-Type %s: the %s refused setting %s",
            effect.blob,
            current.headers.content_type,
            policy,
            content_type,
        )

    async def fix_headers() -> Blob | None:
        current = seen.blob if blob_known and isinstance(seen.blob, Blob) else await storage.read(effect.blob)
        if current is None or current.delivery != effect.delivery or content_type is None:
            return current
        if seen.locked and current.headers.content_type != content_type:
            kept_content_type(current, seen.locked)  # a container policy refuses changing its headers: not tried
            return current
        if current.headers.content_type != content_type:
            headers = replace(current.headers, content_type=content_type)
            try:
                await storage.set_headers(effect.blob, headers, if_match=current.etag)
            except Conflict:
                return await storage.read(effect.blob)  # changed since read: by a newer export
            except Immutable as exc:  # a version under a default retention policy (version-level immutability)
                kept_content_type(current, exc.policy)
        return current

    async def put_manifest() -> str | None:
        """The manifest's new ETag, or None when nothing was written."""
        name = manifest_name(effect.blob)
        if not job.write_manifest or not has_manifest_name(effect.blob):
            # Too long for Azure: a file named with over 1019 characters while WRITE_MANIFEST was off has none.
            return None
        known = seen.manifest if isinstance(seen.manifest, Blob) and seen.blob != UNSEEN else None
        if_match: str | None = known.etag if known is not None and _is_manifest(known) else None
        for attempt in range(3):
            try:
                written = await storage.put(
                    name, document.to_bytes(), if_match=if_match, content_type="application/json", metadata=metadata
                )
                if attempt or careful:
                    # Written after a conflict: others are at this name now. Still this delivery's file?
                    holder = await storage.read(effect.blob)
                    if holder is None or holder.delivery != effect.delivery:
                        with contextlib.suppress(Conflict):
                            await storage.delete(name, if_match=written.etag)
                        return None
                return written.etag
            except Conflict:
                there, holder = await asyncio.gather(storage.read(name), storage.read(effect.blob))
                if there is None:
                    if_match = None
                    continue
                if not _is_manifest(there):
                    log.error(
                        "a blob that is not a manifest sits at %s: the manifest of %s was not written; move it away",
                        name,
                        effect.blob,
                    )
                    return None
                if holder is None or holder.delivery != effect.delivery:
                    return None  # the file is another delivery's now: its writer writes the manifest
                if there.delivery == effect.delivery and (seen.locked or if_match is None):
                    # Created for this very delivery meanwhile (a twin request, the queue function), or kept as
                    # written by a policy: it describes the file already. Rewriting it would only race the twins.
                    return there.etag
                if_match = there.etag
        raise Unavailable(f"The manifest {name} kept changing while it was written.")

    looked, wrote = await asyncio.gather(fix_headers(), put_manifest(), return_exceptions=True)
    if isinstance(looked, Unavailable) and isinstance(wrote, str):
        # Written, and the look at its file failed: it is this run's manifest all the same (dropped at the end
        # of a run that does not store its delivery, once its file is seen to have moved on).
        raise ManifestWritten(looked, wrote)
    _raise_first((looked, wrote))  # (as settled does)
    holder, written = cast(Blob | None, looked), cast(str | None, wrote)
    if written is not None and (holder is None or holder.delivery != effect.delivery):
        # The file moved on while the manifest was written (a newer export, a retirement): a manifest
        # describes the file beside it or is not there at all.
        with contextlib.suppress(Conflict):
            await storage.delete(manifest_name(effect.blob), if_match=written)
        return None
    return None if written is None else str(written)


__all__ = [
    "RECORD_ROOM",
    "Job",
    "Trace",
    "block_id",
    "drop_own_manifests",
    "manifest_name",
    "observe",
    "remove_if_holds",
    "run",
]
