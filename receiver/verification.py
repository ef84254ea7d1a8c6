"""The queue function: finish a delivery the HTTP answer could not (a staged copy of a large file,
or a copy whose answer was lost).

The message is the notification itself and when it was received (:func:`message`): the same
delivery, driven through the same loop as the webhook (:func:`receiver.engine.run`) by the
``verifier``, which may stage for as long as the function may run. The message carries the link's
signature (a copy needs it), so nothing here logs the message.

Final outcomes return normally (stored, duplicate, superseded, or a failure nothing can undo: the
link expired, the source refused or gone, a retention policy): raising would only make the host
try again. Anything that may still finish raises :class:`CopyStillRunning`, and the host retries;
the last try logs an ERROR before the host moves the message to the poison queue.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from .engine import Alerts, Job, Trace, alerts_of, run
from .intake import arrival_job, is_large, prepare
from .machine import Answer
from .models import MAX_RECORD_BYTES, State, TaskRecord, record_name, unreadable_record
from .outcome import ARCHIVED, Outcome, held_from_queue, ops_command, refused_by
from .payload import FIELDS
from .plan import RECEIVER_MANIFEST_KEYS, CopyPlan, kept_name
from .runtime import Runtime
from .settings import Settings
from .storage import Immutable, Leased, Unavailable, UnreadableRecord
from .telemetry import Record, recording

log = logging.getLogger("receiver.verification")

# host.json extensions.queues.maxDequeueCount: the try after which the host poisons the message.
MAX_DEQUEUE_COUNT = 40
QUEUE = "smartdocumentor-copy-verifications"
POISON_QUEUE = f"{QUEUE}-poison"
# The fields of a message written by the release before the task record: its manifest and link.
_EARLIER_RELEASE_KEYS = ("sourceUrl", "manifest")


class CopyStillRunning(Exception):
    """Raised so the Functions host puts the message back and tries again after visibilityTimeout."""


@dataclass(frozen=True)
class Message:
    body: bytes
    received_at: datetime
    blob: str | None = None  # the name the delivery was given when it arrived (a release before: none)
    # Made again from what a sender's body became at intake (the record, an earlier release's message), not
    # the body as received: its ids already hashed are kept (see receiver.payload.parse_notification).
    rebuilt: bool = False


@dataclass(frozen=True)
class Reference:
    """A message too large to carry its notification: the link, and where the record keeps the rest."""

    url: str
    workspace_id: str
    task_id: str
    delivery: str
    received_at: datetime
    blob: str | None = None


# Queue messages hold 64 KiB once the host has base64-encoded them: a message up to this size carries
# the whole notification; a larger one carries the link and the record's name (its manifest document).
MAX_MESSAGE_BYTES = 45 * 1024


def message(body: bytes, received_at: datetime, *, plan: CopyPlan | None = None) -> str:
    """The queue message for a notification: the body as received, when, and the name it was given
    (the queue function copies to that name, whatever the template says by then)."""
    named = {"blob": plan.blob_name} if plan is not None else {}
    text = json.dumps({"v": 2, "receivedAt": received_at.isoformat(), "body": body.decode("utf-8-sig"), **named})
    if len(text.encode("utf-8")) <= MAX_MESSAGE_BYTES or plan is None:
        return text
    return json.dumps(
        {
            "v": 2,
            "receivedAt": received_at.isoformat(),
            "url": plan.source.url,
            "workspaceId": plan.workspace_id,
            "taskId": plan.task_id,
            "delivery": plan.delivery,
            **named,
        }
    )


def body_from_record(reference: Reference, record: TaskRecord | None) -> bytes | None:
    """The notification again, from the manifest document the record keeps for a delivery still
    copying (the payload without the link's query) and the link the message carries."""
    entry = record.find(reference.delivery) if record is not None else None
    if entry is None or not entry.manifest:
        return None
    document = dict(entry.manifest)
    sender = document.pop("senderFields", None)
    fields = {key: value for key, value in document.items() if key not in RECEIVER_MANIFEST_KEYS}
    fields["metadata"] = document.get("metadata")
    if isinstance(sender, dict):
        fields.update(sender)
    fields["exportedFileUrl"] = reference.url
    return json.dumps(fields).encode("utf-8")


def read_message(data: bytes) -> Message | Reference | None:
    """The message's notification, or None when it is unreadable. A message written by the release
    before the task record (its manifest and link) is turned back into the notification it came from."""
    try:
        document: Any = json.loads(data)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    try:
        blob = document.get("blob") if isinstance(document.get("blob"), str) else None
        if document.get("v") == 2 and isinstance(document.get("body"), str):
            received = _aware(document["receivedAt"])
            return Message(document["body"].encode("utf-8"), received, blob)
        if document.get("v") == 2 and all(
            isinstance(document.get(key), str) for key in ("url", "workspaceId", "taskId", "delivery")
        ):
            received = _aware(document["receivedAt"])
            return Reference(
                document["url"], document["workspaceId"], document["taskId"], document["delivery"], received, blob
            )
        if all(isinstance(document.get(key), str | dict) for key in _EARLIER_RELEASE_KEYS):
            manifest = dict(document["manifest"])
            received = _aware(str(manifest.get("receivedAt", "")).replace("Z", "+00:00"))
            # The manifest's payload fields; its link (without the query) gives way to the message's own.
            fields = {key: value for key, value in manifest.items() if key in FIELDS}
            fields["exportedFileUrl"] = document["sourceUrl"]
            return Message(json.dumps(fields).encode("utf-8"), received, rebuilt=True)
    except (ValueError, TypeError, KeyError):
        return None
    return None


def _aware(value: Any) -> datetime:
    """A message's time: ISO 8601 with its offset (the receiver writes no other); else ValueError (unreadable)."""
    found = datetime.fromisoformat(str(value))
    if found.tzinfo is None:
        raise ValueError(f"{value} has no UTC offset")
    return found


async def verify_copy(data: bytes, *, runtime: Runtime, now: datetime, dequeue_count: int = 1) -> str:
    """Drive one queued delivery to its end. Raises CopyStillRunning to have the host try again."""
    with recording("verification") as record:
        found = read_message(data)
        if found is None:
            record.outcome, record.final_failure = "unreadable", True
            record.reason = "the verification message is unreadable; it was dropped"
            return "unreadable"
        settings = runtime.settings()
        if isinstance(found, Reference):
            name = record_name(found.workspace_id, found.task_id)
            try:
                record_found = await runtime.store().read_bytes(name, max_bytes=MAX_RECORD_BYTES)
            except Exception as exc:
                record.task_id, record.workspace_id = found.task_id, found.workspace_id
                _failed_try(record, found.task_id, exc, last_try=dequeue_count >= MAX_DEQUEUE_COUNT)
                raise
            try:
                task_record = TaskRecord.from_bytes(record_found[1]) if record_found is not None else None
            except ValueError as exc:
                record.task_id, record.workspace_id = found.task_id, found.workspace_id
                unreadable = UnreadableRecord(unreadable_record(name, found.task_id, exc))
                _failed_try(record, found.task_id, unreadable, last_try=dequeue_count >= MAX_DEQUEUE_COUNT)
                raise unreadable from None
            rebuilt = body_from_record(found, task_record)
            entry = task_record.find(found.delivery) if task_record is not None else None
            if rebuilt is None and entry is not None and entry.state is not State.COPYING:
                # Ended by another driver meanwhile (superseded: its payload is not kept), which said so then.
                record.outcome, record.delivery = entry.state.value, found.delivery
                record.task_id, record.workspace_id = found.task_id, found.workspace_id
                record.reason = f"its task record already ended it ({entry.state.value}): this message ends"
                return entry.state.value
            if rebuilt is None:
                # Never recorded: its webhook answered 503 before the record and asked for the document again.
                never = task_record is None or task_record.find(found.delivery) is None
                record.outcome, record.final_failure = "unreadable", not never
                record.task_id, record.workspace_id = found.task_id, found.workspace_id
                record.reason = (
                    "the verification message names a delivery its task record never held (its webhook answered 503 "
                    "before recording it and asked for the document again); it was dropped"
                    if never
                    else "the verification message names a delivery its task record no longer describes; it was "
                    f"dropped. Run {ops_command('find', task=found.task_id)}"
                )
                return "unreadable"
            found = Message(rebuilt, found.received_at, found.blob, rebuilt=True)
        plan = plan_message(found, settings)
        if isinstance(plan, Outcome):
            record.outcome, record.final_failure = "unreadable", True
            record.reason = "the verification message holds a notification the receiver refuses; it was dropped"
            return "unreadable"
        record.task_id, record.workspace_id, record.delivery = plan.task_id, plan.workspace_id, plan.delivery
        record.blob = f"{settings.destination_container}/{plan.blob_name}"
        last_try = dequeue_count >= MAX_DEQUEUE_COUNT
        trace = Trace()  # filled as it goes: a change whose answer was lost stays known when the try raises
        job: Job | None = None
        try:
            storage = runtime.store()
            large = await is_large(storage, plan, settings)
            job = arrival_job(plan, settings, by="verifier", patient=True, large=large, deadline=None)
            answer, trace = await run(storage, job, now=now, wall=runtime.clock, trace=trace)
        except Immutable as exc:
            # A policy refused a write the delivery needs (its record too): nothing failed it, and a hold is lifted
            # some day. Tried again; poisoned after the last try, to be replayed once the policy is lifted.
            record.outcome, record.final_failure = "poisoned" if last_try else "held", last_try
            held = held_from_queue(exc.policy, exc.copied)
            record.reason = _held(plan.task_id, exc.policy, held, last_try=last_try)
            if job is not None:  # (a failure an earlier change of this try wrote stays its alert)
                _alert_own_failures(record, await alerts_of(storage, job, trace, sender=False))
            raise CopyStillRunning(f"task={plan.task_id}: {exc.policy}") from None
        except Exception as exc:
            if isinstance(exc, Unavailable) and exc.code == "record-full":
                # Refused for the record's room, its own copy removed: its webhook answered 503 (in the same words,
                # asking for the document again), so nothing waits for this try. The message ends.
                record.outcome, record.reason = "record-full", f"{exc.message} This message ends."
                return "record-full"
            _failed_try(record, plan.task_id, exc, last_try=last_try)
            if job is not None:
                # What a change of this try failed (its answer lost, perhaps: read back) is this try's alert: the next
                # try finds it failed by an earlier one and stays quiet.
                _alert_own_failures(record, await alerts_of(storage, job, trace, sender=False))
            raise
        record.outcome, record.arrows = answer.arrow, ",".join(trace.arrows)
        record.copy_mode = trace.mode
        result = queue_outcome(answer, plan.source.expires_on, now)
        alerts = await alerts_of(storage, job, trace, sender=False)
        own = plan.delivery in {item.delivery for item in [*alerts.failed, *alerts.maybe]}
        # Others this try failed too (a current file an older late copy replaced): named in its ERROR.
        others = replace(
            alerts,
            failed=[d for d in alerts.failed if d.delivery != plan.delivery],
            maybe=[d for d in alerts.maybe if d.delivery != plan.delivery],
        )
        if result == "failed" and not own and ended_elsewhere(trace.record, plan.delivery):
            # Its record failed it by another change than this try's (the reconciliation, an operator, a webhook, an
            # earlier try: each raised its ERROR then), or this try accepted it again and failed it anew: this message
            # only ends, as when a replay clears the poison queue of it.
            record.reason = f"its task record already failed it ({answer.reason or answer.error}): this message ends"
            _alert_own_failures(record, others)
            return "failed"
        try:
            return _settle(record, answer, trace, plan, result, last_try=last_try)
        finally:
            _alert_own_failures(record, others)


def _settle(record: Record, answer: Answer, trace: Trace, plan: CopyPlan, result: str, *, last_try: bool) -> str:
    """The try's end, once its own alert is known: the message's outcome, or CopyStillRunning (tried again)."""
    if result in ("stored", "duplicate", "superseded"):
        return result
    if result == "failed":
        record.final_failure = True
        why = (
            f"immutable: the delivery failed for good. {refused_by(answer.reason or 'retention policy')}"
            if answer.error == "immutable"
            else f"the delivery failed for good (the earlier file, if any, is kept): {answer.reason}"
            if answer.reason and "again" in answer.reason
            else f"{(answer.reason or answer.error or '').rstrip('.')}: the delivery failed for good (the earlier "
            "file, if any, is kept). Export the document again from SmartDocumentor."
        )
        story = ops_command("find", task=plan.task_id, workspace=plan.workspace_id)
        record.reason = f"{why.rstrip('.')}; {ARCHIVED}; {story} tells its story"
        return "failed"
    if result == "waiting":
        record.reason = "its link expired while it waited behind a newer export; the reconciliation decides it"
        return "waiting"
    if answer.error == "immutable":  # refused before anything was written or recorded: a hold is lifted some day
        record.outcome, record.final_failure = "poisoned" if last_try else "held", last_try
        policy = answer.reason or "retention policy"
        record.reason = _held(plan.task_id, policy, held_from_queue(policy), last_try=last_try)
        raise CopyStillRunning(f"task={plan.task_id}: {answer.reason}")
    if trace.effect_failed is not None:  # its arrow says stored or duplicate: say what is still missing
        record.reason = (
            f"the file is stored; its manifest could not be written yet ({trace.effect_failed.message}): "
            "the queue tries again"
        )
    if trace.source_changed:
        record.reason = "the exported file was written again while it was staged: staged again from it next try"
    if last_try:
        record.outcome, record.final_failure = "poisoned", True
        why = "the exported file was written again while each try staged it" if trace.source_changed else ""
        record.reason = _poisoned(plan.task_id, why or "the copy is still not finished")
    raise CopyStillRunning(f"task={plan.task_id} not finished yet ({answer.arrow})")


def queue_outcome(answer: Answer, link_expires_on: datetime, now: datetime) -> str:
    """What the queue function makes of the engine's answer: ``stored``, ``duplicate``, ``superseded`` (done),
    ``failed`` (for good), ``waiting`` (ended: the reconciliation decides it) or ``retry`` (the host tries again).
    A policy's refusal of a delivery the record has not ended (``enqueue``) is tried again: a 202 promised it,
    and a hold is lifted some day."""
    if answer.kind in ("stored", "duplicate", "superseded"):
        return answer.kind
    if answer.error == "immutable" and answer.enqueue:
        return "retry"
    if answer.kind == "failed" and answer.status in (409, 410, 502):
        return "failed"
    if answer.arrow == "behind" and link_expires_on <= now:
        # It waits behind a newer export still copying, and its link can copy nothing any more: retries
        # would only end in the poison queue. The record keeps it; the reconciliation decides it once the
        # newer one ends (superseded when it is stored; else its bytes adopted, or it fails as expired).
        return "waiting"
    return "retry"


def plan_message(found: Message, settings: Settings) -> CopyPlan | Outcome:
    """The plan for a queued notification: as the webhook made it, under the name it was given then."""
    plan = prepare(found.body, {}, settings, now=found.received_at, queued=True, rebuilt=found.rebuilt)
    return kept_name(plan, found.blob, settings) if isinstance(plan, CopyPlan) and found.blob else plan


def _alert_own_failures(record: Record, alerts: Alerts) -> None:
    """The ERROR of a try whose changes failed deliveries for good (or may have: the record could not be read back)."""
    if alerts:
        record.final_failure = True
        record.reason = "; ".join(filter(None, [alerts.said("this try's"), record.reason]))


def ended_elsewhere(record: TaskRecord | None, delivery: str) -> bool:
    """Does the record hold ``delivery`` failed (with no alert of this try's: another change's, alerted then)?"""
    item = record.find(delivery) if record is not None else None
    return item is not None and item.state is State.FAILED


def _failed_try(record: Record, task_id: str, exc: Exception, *, last_try: bool) -> None:
    """What a try that raised says: an unreadable task record in the words the webhook and ops use (what to
    restore); on the last try, that the host poisons the message (nothing retries it by itself) and what to run."""
    named = isinstance(exc, UnreadableRecord | Leased)  # its own words say what to do
    if last_try:
        record.outcome, record.final_failure = "poisoned", True
        why = "its task record is not readable" if isinstance(exc, UnreadableRecord) else "the last try failed"
        record.reason = _poisoned(task_id, why if named else f"{why} ({type(exc).__name__})") + (
            f". {exc}" if named else ""
        )
    elif named:
        record.reason = str(exc)


def _held(task_id: str, policy: str, held: str, *, last_try: bool) -> str:
    if last_try:
        return _poisoned(task_id, f"{held} Still refused", first=f"Once the {policy} is lifted, check")
    return f"{held} The queue function tries again."


def _poisoned(task_id: str, why: str, *, first: str = "Check") -> str:
    return (
        f"{why} after {MAX_DEQUEUE_COUNT} tries; the host moves the message to {POISON_QUEUE}. "
        f"{first} the task with {ops_command('find', task=task_id)}, then run python -m ops replay-poison --dry-run "
        "and python -m ops replay-poison to try again"
    )
