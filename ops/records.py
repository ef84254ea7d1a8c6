"""The task records as the operator command line reads them, and what ``decide`` says about them.

Every verdict the command line gives comes from :func:`receiver.machine.decide` on the same
observation the engine would make (:func:`observe_sweep`, :func:`observe_arrival`), never from a
rule of its own: the operator's check, the reconciliation, a replay's dry run (the queue function's
own loop on :class:`ops.imagined.Imagined`) and the queue function cannot disagree. Lists
(``pending``, ``failed``, ``find --workspace``) are built from the records' listing labels
(``TaskRecord.labels``) and read only the records they show.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from receiver.engine import Job, Trace, manifest_name, observe, own_alerts, run
from receiver.intake import arrival_job, is_large
from receiver.machine import (
    Answer,
    Apply,
    Change,
    Decision,
    Seen,
    Sweep,
    decide,
    watched_copying,
)
from receiver.models import MAX_RECORD_BYTES, RECORD_PREFIX, State, TaskRecord, record_name, unreadable_record
from receiver.outcome import Outcome, held_from_queue
from receiver.plan import identity_segment
from receiver.reconciliation import QUEUE_COVERAGE, unlabelled
from receiver.settings import Settings
from receiver.storage import Blob, Immutable, Listed, Rejected, Storage, StoreError
from receiver.verification import Message, Reference, body_from_record, ended_elsewhere, plan_message, queue_outcome

from .imagined import Imagined, imagining
from .queues import Parsed


class Unreadable(Exception):
    """A blob under the records' prefix that is not a task record the receiver wrote."""


@dataclass(frozen=True)
class Labels:
    """What a listing of the records' prefix shows of one record, without reading it."""

    name: str
    workspace_id: str
    task_id: str
    copying: int
    oldest_copying: datetime | None
    copying_expires: datetime | None
    last_failed: datetime | None
    retire: int
    last_modified: datetime | None


def when(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def labels_of(item: Listed) -> Labels | None:
    meta = {key.lower(): value for key, value in item.metadata.items()}
    if meta.get("receiverkind") != "task-record":
        return None

    def number(key: str) -> int:
        try:
            return int(meta.get(key) or 0)
        except ValueError:
            return 0

    return Labels(
        name=item.name,
        workspace_id=unquote(meta.get("workspaceid") or ""),
        task_id=unquote(meta.get("taskid") or ""),
        copying=number("copying"),
        oldest_copying=when(meta.get("oldestcopying")),
        copying_expires=when(meta.get("copyingexpires")),
        last_failed=when(meta.get("lastfailed")),
        retire=number("retire"),
        last_modified=item.last_modified,
    )


def workspace_prefix(workspace_id: str) -> str:
    return f"{RECORD_PREFIX}{identity_segment(workspace_id)}/"


async def listed(storage: Storage, prefix: str = RECORD_PREFIX, *, limit: int | None = None) -> list[Labels]:
    """The records under ``prefix`` as their labels show them (at most ``limit``: the listing stops there)."""
    found: list[Labels] = []
    async for item in storage.list(prefix):
        labels = labels_of(item)
        if labels is not None:
            found.append(labels)
            if limit is not None and len(found) >= limit:
                break
    return found


MAX_PAGE = 5000  # the most List Blobs returns a page


async def first_records(storage: Storage, prefix: str, limit: int) -> tuple[list[Labels], bool, list[str]]:
    """The first ``limit`` records under ``prefix`` in name order, listed a page of about ``limit`` at a
    time (so the cost follows ``limit``, not how many records there are), whether there are more, and the
    names of records seen without their labels (uploaded again without metadata)."""
    found: list[Labels] = []
    bare: list[str] = []
    marker: str | None = None
    while True:
        size = min(MAX_PAGE, max(1, limit - len(found)))
        page, marker = await storage.list_page(prefix, marker=marker, size=size)
        for item in page:
            labels = labels_of(item)
            if labels is None:
                if unlabelled(item):
                    bare.append(item.name)
                continue
            if len(found) == limit:
                return found, True, bare
            found.append(labels)
        if marker is None:
            return found, False, bare
        if len(found) >= limit:
            return found, True, bare


async def read_record(storage: Storage, workspace_id: str, task_id: str) -> tuple[TaskRecord | None, str | None]:
    """The record and its ETag; (None, None) when the task has none."""
    name = record_name(workspace_id, task_id)
    try:
        found = await storage.read_bytes(name, max_bytes=MAX_RECORD_BYTES)
    except Rejected:
        raise Unreadable(f"{name} is larger than any task record: it is not one the receiver wrote") from None
    if found is None:
        return None, None
    blob, data = found
    try:
        return TaskRecord.from_bytes(data), blob.etag
    except ValueError as exc:
        raise Unreadable(unreadable_record(name, task_id, exc)) from None


async def locate(storage: Storage, task_id: str, workspace_id: str | None) -> list[tuple[str, str]]:
    """The (workspaceId, taskId) pairs that have a record for ``task_id``: the one named, or (no
    workspace given) every workspace's, from one listing of the records' labels (no record read)."""
    if workspace_id is not None:
        return [(workspace_id, task_id)]
    found = [(item.workspace_id, item.task_id) for item in await listed(storage) if item.task_id == task_id]
    if found:
        return found
    # A record that lost its labels (uploaded again by hand) is found by its name; the reconciliation's
    # next run writes the labels again.
    place = f"/{identity_segment(task_id)}.json"
    bare = [item.name async for item in storage.list(RECORD_PREFIX) if item.name.endswith(place) and unlabelled(item)]
    for name in bare:
        blob = await storage.read_bytes(name, max_bytes=MAX_RECORD_BYTES)
        try:
            record = TaskRecord.from_bytes(blob[1]) if blob is not None else None
        except ValueError:
            record = None
        if record is not None and record.task_id == task_id:
            found.append((record.workspace_id, record.task_id))
    return found


def copying_of(record: TaskRecord) -> list[int]:
    return [number for number, item in enumerate(record.deliveries) if item.state is State.COPYING]


# --- what decide says ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Foreseen:
    """What a driver would do next, and in the operator's words."""

    decision: Decision
    # adopt | expire | give-up | retire | waiting | nothing | finish | duplicate | superseded | fail | ended
    action: str
    why: str
    delivery: str | None = None  # adopt: the delivery whose bytes are recorded


async def observe_sweep(storage: Storage, record: TaskRecord | None, etag: str | None) -> Seen:
    """What the engine observes for a sweep (:func:`receiver.engine.observe`): the record, and the blob
    it watches (the newest delivery still copying, else the current file and its manifest)."""
    if record is None:
        return Seen(record=None, record_etag=etag, record_read=True)
    job = Job(event=Sweep(now=datetime.now(UTC), verify=True), workspace_id=record.workspace_id, task_id=record.task_id)
    return await observe(storage, job)


def foresee_sweep(seen: Seen, event: Sweep) -> Foreseen:
    decision = decide(seen, event, event.now)
    record = seen.record
    copying = watched_copying(record) if record else None
    if isinstance(decision, Apply) and decision.arrow == "repaired" and record is not None and record.current:
        return Foreseen(
            decision, "repair", "the current file's manifest is missing or stale: written again from the record"
        )
    holder = seen.blob.delivery if isinstance(seen.blob, Blob) else None
    if isinstance(decision, (Apply, Change)) and decision.arrow == "adopted" and holder is not None and record:
        if copying is not None and holder == copying.delivery:
            fenced = " (its version is made its own first, so a copy another delivery prepared over it fails)"
            why = f"the file at {copying.blob} holds delivery {holder[:12]}: recorded as stored"
            return Foreseen(decision, "adopt", why + (fenced if isinstance(decision, Apply) else ""), holder)
        current = record.current_delivery
        name = seen.blob.name if isinstance(seen.blob, Blob) else "?"
        earlier = current is not None and record.index(current.delivery) > record.index(holder)
        if earlier and current is not None:  # as machine._follow_file decides
            why = (
                f"the file at {name} holds delivery {holder[:12]}, an earlier export whose late copy landed over the "
                f"current file: the record follows the file, and the current delivery {current.delivery[:12]} is "
                "failed (export it again)"
            )
        else:
            why = (
                f"the file at {name} holds delivery {holder[:12]}, a newer export whose copy landed: recorded as stored"
            )
        return Foreseen(decision, "adopt", why, holder)
    if isinstance(decision, Change) and decision.arrow == "expired" and copying is not None:
        expired = copying.link_expires_on.isoformat() if copying.link_expires_on else "?"
        return Foreseen(decision, "expire", f"its link expired at {expired}: delivery {copying.delivery[:12]} failed")
    if isinstance(decision, Change) and decision.arrow == "operator-failed" and copying is not None:
        return Foreseen(decision, "give-up", f"delivery {copying.delivery[:12]} failed: {event.give_up}")
    if isinstance(decision, (Apply, Change)) and decision.arrow == "retire" and record is not None:
        names = ", ".join(item.blob for item in record.retire)
        return Foreseen(decision, "retire", f"still to delete (If-Match): {names}")
    if isinstance(decision, Answer) and decision.arrow == "waiting" and copying is not None:
        expires = copying.link_expires_on.isoformat() if copying.link_expires_on else "unknown"
        return Foreseen(
            decision,
            "waiting",
            f"delivery {copying.delivery[:12]} is copying and its link is valid until {expires}: "
            "only its queue (or poison) message can finish it",
        )
    if record is None:
        return Foreseen(decision, "nothing", "the task has no record")
    return Foreseen(decision, "nothing", "nothing to do: no delivery copying, no name to retire")


_POLICY = ("allowed_source_hosts", "allow_http_sources")


def _only_refused_by_defaults(message: Message, settings: Settings) -> bool:
    """Would the link pass with the policy settings not given to ops at their most permissive (its own
    host allowed, http allowed)? Then the refusal is this machine's defaults, not the app's policy; a
    link refused for what it is (too long, spaces, no host) is refused either way."""
    missing = [name for name in _POLICY if name not in settings.model_fields_set]
    if not missing:
        return False
    try:
        link = json.loads(message.body).get("exportedFileUrl")
        netloc = urlsplit(link).netloc.rpartition("@")[2] if isinstance(link, str) else ""
    except (ValueError, AttributeError):
        return False
    if "[" in netloc:
        return False  # an IPv6 literal: no ALLOWED_SOURCE_HOSTS entry can name one, so no setting lets it pass
    lenient: dict[str, Any] = {}
    if "allowed_source_hosts" in missing and netloc:
        lenient["allowed_source_hosts"] = (netloc.lower(),)
    if "allow_http_sources" in missing:
        lenient["allow_http_sources"] = True
    lenient_plan = plan_message(message, settings.model_copy(update=lenient))  # as the queue function reads it
    return not isinstance(lenient_plan, Outcome)


async def observe_arrival(storage: Storage, parsed: Parsed, settings: Settings, *, now: datetime) -> Foreseen:
    """What the queue function will do with this message: its own loop (:func:`receiver.engine.run` on the
    message's ``Arrival``, as :func:`receiver.verification.verify_copy` runs it) to its answer, on the container
    as it is with every write kept in memory (:class:`ops.imagined.Imagined`). Sends nothing but reads."""
    message = parsed.message
    if isinstance(message, Reference):
        # A large notification's message names the record that keeps the rest of it.
        held, _ = await read_record(storage, message.workspace_id, message.task_id)
        body = body_from_record(message, held)
        entry = held.find(message.delivery) if held is not None else None
        if body is None and entry is not None and entry.state is not State.COPYING:
            ended = Answer("superseded" if entry.state is State.SUPERSEDED else "failed", 200, entry.state.value)
            why = f"its task record already ended it ({entry.state.value}): the queue function ends the message"
            return Foreseen(ended, "superseded" if entry.state is State.SUPERSEDED else "ended", why)
        if body is None:
            refused = Answer("failed", 400, "refused")
            return Foreseen(refused, "fail", "its task record no longer describes it: the queue function drops it")
        message = Message(body, message.received_at, message.blob, rebuilt=True)
    plan = plan_message(message, settings)
    if isinstance(plan, Outcome):
        error = str(plan.body.get("error") or plan.status_code)
        refused = Answer("failed", plan.status_code, "refused")
        if error == "source-not-allowed" and _only_refused_by_defaults(message, settings):
            # Judged by this machine's defaults, not the function app's policy: not a prediction.
            return Foreseen(
                refused,
                "unknown",
                "its link is refused only by a source policy setting this machine does not have (the function app's "
                "ALLOWED_SOURCE_HOSTS / ALLOW_HTTP_SOURCES): set them as the app has them to know",
            )
        return Foreseen(refused, "fail", f"the queue function refuses it ({error}): it drops the message")
    await read_record(storage, plan.workspace_id, plan.task_id)  # raises Unreadable: the queue function is refused too
    imagined = Imagined(storage, now=now, content_type=plan.content_type)
    large = await is_large(imagined, plan, settings)
    job = arrival_job(plan, settings, by="verifier", patient=True, large=large, deadline=None)
    trace = Trace()
    with imagining():
        try:
            answer, _ = await run(imagined, job, now=now, trace=trace)
        except Immutable as exc:
            refused = Answer("failed", 409, "immutable", error="immutable", reason=exc.policy)
            return Foreseen(refused, "blocked", _held(exc.policy, exc.copied))
        except StoreError as exc:
            ended = Answer("failed", 503, "unavailable", error="storage-unavailable")
            return Foreseen(ended, "finish", f"its try ends with {exc.message} (tried again){_steps(trace, imagined)}")
    outcome = queue_outcome(answer, plan.source.expires_on, now)
    return _arrival_words(answer, outcome, trace, imagined, plan.delivery)


def _held(policy: str, copied: str | None) -> str:
    return (
        f"{held_from_queue(policy, copied)} Moved back now, its message would only be poisoned again: replay it once "
        f"the {policy} is lifted"
    )


def _steps(trace: Trace, imagined: Imagined) -> str:
    """What the imagined run did on its way to its answer, in the operator's words."""
    sent = "; would send: " + ", ".join(imagined.sent) if imagined.sent else "; sends nothing"
    return f" [arrows: {' -> '.join(trace.arrows)}{sent}]"


def _arrival_words(answer: Answer, outcome: str, trace: Trace, imagined: Imagined, delivery: str) -> Foreseen:
    """The queue function's run of a message (:func:`receiver.verification.verify_copy`), as the operator reads it."""
    steps = _steps(trace, imagined)
    name = f" at {trace.blob}" if trace.blob else ""
    if outcome == "superseded":
        return Foreseen(
            answer, "superseded", f"a newer export of the task is stored{name}: nothing of it is kept{steps}"
        )
    own = own_alerts(trace.record.deliveries if trace.record else [], trace.mine, sender=False)
    if (
        outcome == "failed"
        and delivery not in {item.delivery for item in own}
        and ended_elsewhere(trace.record, delivery)
    ):
        why = f"its task record already failed it ({answer.reason or answer.error}): moving it back only clears it"
        return Foreseen(answer, "ended", f"{why} from the poison queue{steps}")
    if outcome == "failed":
        return Foreseen(answer, "fail", f"{answer.reason or answer.error}{steps}")
    if outcome == "duplicate":
        return Foreseen(answer, "duplicate", f"already stored and current{name}: nothing is copied{steps}")
    if outcome == "waiting":
        why = (
            "a newer export is still copying and its link has expired: the queue function ends the message; the "
            "reconciliation decides it when that export ends (superseded, its bytes adopted, or failed as expired)"
        )
        return Foreseen(answer, "waiting", why + steps)
    if outcome == "stored":
        how = "recorded as stored" if trace.copy_sent else "the file already holds it: recorded as stored"
        return Foreseen(answer, "finish", f"{how}{name} (if its source can still be read){steps}")
    if answer.error == "immutable" and answer.enqueue:  # tried again until the policy is lifted
        return Foreseen(answer, "blocked", _held(answer.reason or "retention policy", None) + steps)
    if answer.arrow == "behind":
        why = "a newer export is still copying: it waits (superseded once that is stored, copied again if it fails)"
        return Foreseen(answer, "finish", why + steps)
    return Foreseen(answer, "finish", f"{answer.reason or answer.arrow}: the queue function tries again{steps}")


async def drive(storage: Storage, job: Job, *, now: datetime, trace: Trace | None = None) -> tuple[Answer, Trace]:
    """An operator's sweep: the same loop as every driver (:func:`receiver.engine.run`); ``trace`` says what
    it did, also when a step raises."""
    assert isinstance(job.event, Sweep)
    return await run(storage, job, now=now, trace=trace)


def stuck(item_expires: datetime | None, received: datetime, now: datetime, *, held: str | None = None) -> str | None:
    """Why a delivery still copying will not finish by itself, and what finishes it, or None. ``held``: the
    container's policy, which refuses what its queue message's tries and the reconciliation's change need."""
    if item_expires is not None and item_expires <= now:
        expired = f"its link expired at {item_expires.isoformat()}"
        if held is not None:
            return (
                f"{expired}; the container's {held} keeps the reconciliation from deciding it: once it is lifted, "
                "it records the file if its copy landed (find --task T says), else fails it: then export the "
                "document again"
            )
        return expired
    if now - received > QUEUE_COVERAGE:
        minutes = int(QUEUE_COVERAGE.total_seconds() // 60)
        if held is not None:
            return (
                f"copying for over {minutes} minutes: the container's {held} refused what every try of its queue "
                f"message needed; once it is lifted, python -m ops replay-poison finishes it (find --task T says "
                "whether its message is in the poison queue)"
            )
        return (
            f"copying for over {minutes} minutes: past every try of its queue message; if that message waits in the "
            "poison queue (find --task T says), python -m ops replay-poison finishes it, else export the document again"
        )
    return None


__all__ = [
    "Foreseen",
    "Labels",
    "Unreadable",
    "copying_of",
    "drive",
    "first_records",
    "foresee_sweep",
    "labels_of",
    "listed",
    "locate",
    "manifest_name",
    "observe_arrival",
    "observe_sweep",
    "read_record",
    "record_name",
    "stuck",
    "workspace_prefix",
]
