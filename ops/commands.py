"""The commands: find, pending, failed, check, fail, replay-poison. Each reads the task records and
asks :func:`receiver.machine.decide` (through :mod:`ops.records`); each change goes through
:func:`receiver.engine.run`, whose steps record ``by: operator`` in the record's history.

Every command returns a :class:`~ops.output.Result`; the caller prints it (redacted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from receiver import engine
from receiver.attention import (
    MARKER_RETENTION,
    PENDING_NAME,
    CopyingTask,
    Marker,
    Summary,
    bucket_prefixes,
    marker_of,
    read_summary,
)
from receiver.engine import Job, Trace, manifest_name, own_alerts
from receiver.machine import NAME_TAKEN, Answer, Sweep
from receiver.models import Delivery, State, Step, TaskRecord, record_name, with_step
from receiver.outcome import ARCHIVED, option_words
from receiver.plan import has_manifest_name, of_another_task
from receiver.reconciliation import QUEUE_COVERAGE
from receiver.settings import Settings
from receiver.source import redact
from receiver.storage import Conflict, ContainerMissing, Misconfigured, Storage, StoreError
from receiver.verification import POISON_QUEUE

from .output import NOT_FOUND, OK, STORAGE, Console, Result, age_seconds, human_age, table
from .queues import NOT_LOOKED, PEEK_LIMIT, HostQueue, Look, Parsed, QueueMessage, QueueMissing, look, parse
from .records import (
    Foreseen,
    Unreadable,
    drive,
    first_records,
    foresee_sweep,
    locate,
    observe_arrival,
    observe_sweep,
    read_record,
    stuck,
    workspace_prefix,
)
from .upgrade import left_by_upgrade, legacy_advice, unfinished_upgrade

# One record per operator change on the ``receiver`` logger: ERROR when it fails or gives up a
# delivery (nothing will retry it), WARNING otherwise.
log = logging.getLogger("receiver")


def operator_record(
    outcome: str,
    task_id: str,
    workspace_id: str,
    *,
    delivery: str | None = None,
    blob: str | None = None,
    reason: str | None = None,
    final: bool = False,
) -> dict[str, Any]:
    """The fields of an operator's log record, named as the receiver's records name theirs (so the
    alert and the queries read them the same way when the command line sends them: ops/telemetry.py).
    ``final``: a delivery failed for good, an ERROR an operator must act on (export it again)."""
    values: dict[str, Any] = {
        "operation": "operator",
        "outcome": outcome,
        "taskId": task_id,
        "workspaceId": workspace_id,
        "delivery": delivery[:12] if delivery else None,
        "blob": blob,
        "reason": redact(reason) if reason else None,
        "finalFailure": True if final else None,
    }
    return {f"receiver.{key}": value for key, value in values.items() if value is not None}


# Long enough to send and delete one page of messages; a message left unreadable becomes visible
# in the poison queue again after this.
VISIBILITY_SECONDS = 120


@dataclass
class Context:
    storage: Storage | None
    settings: Settings
    queues: tuple[HostQueue, HostQueue] | None  # the verification queue and its poison queue
    now: datetime
    console: Console


def _iso(value: datetime | None) -> str:
    return value.isoformat().replace("+00:00", "Z") if value is not None else "-"


def _need_storage(ctx: Context) -> Storage:
    assert ctx.storage is not None
    return ctx.storage


# --- one task: find and check ------------------------------------------------------------------------


@dataclass
class Inspection:
    """One task as its record, its blobs and the queues show it, with ``decide``'s verdict."""

    workspace_id: str
    task_id: str
    record: TaskRecord | None
    etag: str | None
    foreseen: Foreseen | None = None
    look: Look = NOT_LOOKED
    current_blob: str | None = None
    file_matches: bool | None = None  # the current file's `delivery` metadata == record.current
    manifest_matches: bool | None = None
    problems: list[str] = field(default_factory=list)
    verdicts: dict[str, tuple[str, str]] = field(default_factory=dict)  # delivery -> (verdict, why)
    next: list[str] = field(default_factory=list)
    legacy: dict[str, Any] = field(default_factory=dict)  # no record, the upgrade unfinished: ops/upgrade.py
    notes: list[str] = field(default_factory=list)  # no record: what the upgrade's look found (lines of the story)


async def _check_container(storage: Storage) -> None:
    """Before an answer of "nothing here": a wrong --container is said so (exit 3) instead. Asked only
    then, so a command that finds something costs no extra request. An identity that may not read the
    container's properties gets the answer as it is."""
    try:
        exists = await storage.container_exists()
    except Misconfigured:
        return
    if not exists:
        raise ContainerMissing(
            f"The container {storage.container!r} does not exist in this storage account: check --container "
            "(the function app's DESTINATION_CONTAINER setting) and the account. A new deployment creates it with "
            "its first delivery or reconciliation run. Nothing was read or written."
        )


def _link_valid(item: Delivery, now: datetime) -> bool:
    return item.link_expires_on is None or item.link_expires_on > now


def _newer_copying(record: TaskRecord, delivery: str, now: datetime) -> list[Delivery]:
    """The exports accepted after ``delivery`` that still copy, their links valid: once one is stored, it supersedes
    this one."""
    later = record.deliveries[record.index(delivery) + 1 :]
    return [item for item in later if item.state is State.COPYING and _link_valid(item, now)]


def _behind_newer(record: TaskRecord, delivery: Delivery, now: datetime) -> Delivery | None:
    """The newest of :func:`_newer_copying`."""
    newer = _newer_copying(record, delivery.delivery, now)
    return newer[-1] if newer else None


def _revivable(record: TaskRecord, delivery: str, now: datetime) -> bool:
    """Would a queue try of ``delivery`` accept it again (failed, its link valid, no export after it stored)?"""
    item = record.find(delivery)
    if item is None or item.state is not State.FAILED or not _link_valid(item, now):
        return False
    return not any(later.state is State.STORED for later in record.deliveries[record.index(delivery) + 1 :])


def _archived(item: Delivery) -> str:
    """Where the person in SmartDocumentor finds the document of a delivery that failed or will not finish: archived
    when a request for it was answered 202 (its `promised` step says so; a queue try, the reconciliation or an
    operator handling it, or its still copying, says it may be)."""
    if any(step.outcome == "promised" for step in item.history):
        return (
            "'s archive: a resend of it was answered 202 (step promised), so SmartDocumentor archived it and does not "
            "show it in To Review"
        )
    handled = any(step.by in ("verifier", "reconciliation", "operator") for step in item.history)
    if handled or item.state is State.COPYING:
        return f" ({ARCHIVED})"
    return ""


def _task_args(workspace_id: str, task_id: str) -> str:
    """The options naming a task, quoted for a shell (an id may hold spaces, ``&`` or ``;``, or start with ``-``)."""
    return f"{option_words('task', task_id)} {option_words('workspace', workspace_id)}"


async def inspect(ctx: Context, workspace_id: str, task_id: str) -> Inspection:
    storage = _need_storage(ctx)
    record, etag = await read_record(storage, workspace_id, task_id)
    found = Inspection(workspace_id, task_id, record, etag)
    if record is None:
        await _check_container(storage)
        found.problems.append("no task record")
        next_step = (
            f"drop --workspace {workspace_id} to look in every workspace; a task whose every delivery was refused "
            "has no record: Application Insights has its answers (task-lookup.kql, docs/operations.md)"
        )
        found.notes, next_step, found.legacy = await legacy_advice(storage, task_id, workspace_id, next_step, ctx.now)
        found.next.append(next_step)
        return found
    seen, looked, left = await asyncio.gather(
        observe_sweep(storage, record, etag),
        _look(ctx, workspace_id, task_id),
        left_by_upgrade(storage, record),
    )
    found.look = looked
    for file, older in left:  # (its record was built from the task's other files: one may be a newer export)
        said = f"the upgrade from the release without task records left {file.name} as it is, no record names it: "
        if older:  # an export older than the current one: nothing needs it (not a problem)
            found.notes.append(f"note: {said}{file.left_as_is}; it is older than the current export: delete it by "
                               "hand if it is not wanted")  # fmt: skip
            continue
        found.problems.append(f"{said}{file.left_as_is}")
        found.next.append(
            "compare that file with the current one; to have the newest export current, export the document again "
            "from SmartDocumentor"
        )
    room_left = engine.RECORD_ROOM - len(record.to_bytes())  # (the room the engine refuses by)
    failed_kept = [item for item in record.deliveries if item.state is State.FAILED and item.manifest]
    if failed_kept and room_left < ctx.settings.max_body_bytes:
        found.problems.append(
            f"the task record has {max(room_left, 0)} bytes of room left for another export's notification (a "
            f"body may have {ctx.settings.max_body_bytes}): {len(failed_kept)} failed export(s) keep theirs"
        )
        found.next.append(
            "remove the task record's failed entries by hand, or start the document as a new task, before exporting "
            "it again (docs/reference.md, Known limits: the record's room); an export now may be refused the same way"
        )
    if looked.note.startswith(HOST_UNREADABLE):
        found.problems.append(looked.note)  # the verdicts that need the queues are not known: exit 1
    manifests = ctx.settings.write_manifest
    found.foreseen = foresee_sweep(seen, Sweep(ctx.now, by="operator", verify=True, manifests=manifests))
    args = _task_args(workspace_id, task_id)
    current = record.current_delivery
    newest = record.deliveries[-1] if record.deliveries else None
    again = "export the document again from SmartDocumentor"
    refused = newest.failure_reason if newest is not None and newest.state is State.FAILED else None
    if refused == NAME_TAKEN:
        again = (
            "set BLOB_NAME_TEMPLATE back to the template the other task's file was stored under (never move that "
            f"file), then {again}"
        )
    elif refused is not None and refused.endswith("refused replacing the stored file."):
        again = f"have the storage account's owner lift the policy (or use version-level immutability), then {again}"
    if current is None and record.deliveries and not any(i.state is State.COPYING for i in record.deliveries):
        found.problems.append("the task has no current file: every delivery failed or was replaced before it landed")
        found.next.append(f"{again}{_archived(newest) if newest is not None else ''}")
    if current is not None and newest is not None and newest.state is State.FAILED:
        # SmartDocumentor archived it (a 202 before it failed, or its last answer): the customer has the older one.
        found.problems.append(
            f"the newest export {newest.delivery[:12]} failed ({newest.failure_reason or 'no reason'}); the current "
            f"file is an older export, {current.delivery[:12]}"
        )
        found.next.append(f"{again}{_archived(newest)}")
    policy: str | None = None
    if current is not None:
        found.current_blob = current.blob
        blob, manifest, policy = await asyncio.gather(
            storage.read(current.blob), storage.read(manifest_name(current.blob)), storage.container_policy()
        )
        foreign = blob is not None and of_another_task(blob.metadata, workspace_id, task_id)
        found.file_matches = blob is not None and blob.delivery == record.current and not foreign
        if not found.file_matches:
            there = "is gone" if blob is None else f"holds delivery {(blob.delivery or 'none')[:12]}"
            meta = {key.lower(): value for key, value in blob.metadata.items()} if blob is not None else {}
            if foreign:  # (two tasks sent one link share the delivery hash: its taskkey tells them apart)
                there += f" of another task (workspace {meta.get('workspaceid')}, task {meta.get('taskid')})"
            if found.foreseen.action == "adopt":  # a newer delivery's bytes landed there: recorded by the repair
                there += ", whose copy landed there: check --repair records it"
            else:
                found.next.append("export the document again from SmartDocumentor (the record keeps the story)")
            found.problems.append(f"the current file {current.blob} {there}, not {current.delivery[:12]}")
        if ctx.settings.write_manifest and has_manifest_name(current.blob):  # (none for a name over 1019)
            marked = manifest is not None and manifest.metadata.get("receiverkind") == "manifest"
            found.manifest_matches = (
                marked
                and manifest is not None
                and manifest.delivery == record.current
                and not of_another_task(manifest.metadata, workspace_id, task_id)
            )
            if not found.manifest_matches:
                what = "is missing" if manifest is None else "describes another delivery"
                if manifest is not None and not marked:
                    what = "is not a manifest the receiver wrote"
                found.problems.append(f"the manifest {manifest_name(current.blob)} {what}")
                if not current.manifest:
                    # (a delivery the upgrade migrated: the release before kept no notification in a record)
                    found.next.append(
                        "the task record keeps no notification to write this manifest from: send the document again "
                        "from SmartDocumentor (a duplicate writes it), or export it again if its link expired"
                    )
                else:
                    found.next.append(
                        (
                            f"once the container's {policy} is lifted (it refuses rewriting the manifest): "
                            if policy
                            else ""
                        )
                        + f"python -m ops check {args} --repair (writes it again from the task record while the file "
                        "holds the current delivery)"
                    )
    for item in record.deliveries:
        if item.state is State.COPYING:
            found.verdicts[item.delivery] = _copying_verdict(ctx, found, item)
    if current is None:
        policy = await storage.container_policy()
    if policy is not None and found.verdicts:
        found.problems.append(
            f"the container's {policy} refuses every change of this task's record: no driver (the queue function, "
            "fail, check --repair) can record what becomes of a delivery still copying while it lasts"
        )
        found.next.append(f"have the storage account's owner lift the {policy}; then python -m ops find {args}")
    verdicts = {verdict for verdict, _ in found.verdicts.values()}
    if found.foreseen.action in ("adopt", "expire", "retire", "repair"):
        found.problems.append(f"the reconciliation has work here: {found.foreseen.action} ({found.foreseen.why})")
        if policy is not None:  # every write the repair needs (a delete, the record) is refused while it lasts
            found.next.append(
                f"nothing to do while the container's {policy} lasts (it refuses what the repair writes); once it "
                f"is lifted: python -m ops check {args} --repair"
            )
        else:  # (it says why a name is not retired: a lease, a hold on it, a missing delete permission)
            deletes = " (it names what refuses a delete, if anything)" if found.foreseen.action == "retire" else ""
            found.next.append(f"python -m ops check {args} --repair{deletes}")
    known = {item.delivery for item in record.deliveries}
    unknown = [d for d, where in found.look.deliveries.items() if where == "poison" and d not in known]
    if unknown:  # its driver stopped before the record named it (a lease on the record, say): its copy may be there
        found.problems.append(
            f"the poison queue holds a message of this task for delivery {', '.join(d[:12] for d in unknown)}, which "
            "its record does not know (a copy of it may sit at a name no record holds)"
        )
        found.next.append("python -m ops replay-poison --dry-run, then python -m ops replay-poison (or send it again)")
    lifted = f"once the container's {policy} is lifted: " if policy is not None else ""
    if "poisoned" in verdicts:
        found.problems.append("a delivery's message is in the poison queue")
        found.next.append(f"{lifted}python -m ops replay-poison --dry-run, then python -m ops replay-poison")
    settled = [d for d, where in found.look.deliveries.items() if where == "poison" and d in known]
    settled = [d for d in settled if d not in found.verdicts]  # not copying: its record already ended it
    # A failed one whose link still works, with no newer export stored: its try accepts it again and may store it.
    revivable = [d for d in settled if _revivable(record, d, ctx.now)]
    ended = [d for d in settled if d not in revivable]
    if ended:
        # Nothing is left to do for it, but the reconciliation's poison ERROR fires until the message is gone.
        found.problems.append(
            f"the poison queue still holds a message of delivery {', '.join(d[:12] for d in ended)}, which its "
            "record has ended: the reconciliation's poison ERROR fires until it is moved back (its try then ends at "
            "once, unless a policy refuses what it still needs: the dry run says BLOCKED then)"
        )
    if revivable:
        found.problems.append(
            f"the poison queue still holds a message of delivery {', '.join(d[:12] for d in revivable)}, which its "
            "record failed while its link still works: moved back, its try accepts it again and stores it if the "
            "copy now succeeds, undoing that failure (the dry run says FINISH); to keep it failed, delete that "
            f"message from the queue {POISON_QUEUE} by hand (Azure portal or Storage Explorer) instead: the "
            "reconciliation's poison ERROR fires until one or the other is done"
        )
    if settled:
        found.next.append(f"{lifted}python -m ops replay-poison --dry-run, then python -m ops replay-poison")
    if "lost" in verdicts:
        found.problems.append("a delivery is copying and no message can finish it")
        lost = next(item for item in record.deliveries if found.verdicts.get(item.delivery, ("",))[0] == "lost")
        found.next.append(
            f"export the document again{_archived(lost)}, or {lifted}python -m ops fail {args} --reason '...'"
        )
    return found


async def _look(ctx: Context, workspace_id: str, task_id: str) -> Look:
    if ctx.queues is None:
        return NOT_LOOKED
    try:
        return await look(ctx.queues[0], ctx.queues[1], workspace_id=workspace_id, task_id=task_id)
    except Exception as exc:  # the host storage's failure leaves the verdict unknown; the record still tells
        if not _is_azure_error(exc):
            raise
        code = getattr(exc, "error_code", None) or getattr(exc, "status_code", None) or type(exc).__name__
        note = (
            f"{HOST_UNREADABLE} ({code}): check --host-connection-string or --host-queue-url, the network path to "
            "it, and Storage Queue Data Contributor"
        )
        return Look("unknown", "unknown", note=note)


HOST_UNREADABLE = "the function's host storage (its queues) could not be read"


def _is_azure_error(exc: Exception) -> bool:
    try:
        from azure.core.exceptions import AzureError
    except ImportError:  # pragma: no cover - the SDK is in requirements-ops.txt
        return False
    return isinstance(exc, AzureError)


def _copying_verdict(ctx: Context, found: Inspection, item: Delivery) -> tuple[str, str]:
    assert found.foreseen is not None
    action = found.foreseen.action
    adopted = found.record.find(found.foreseen.delivery or "") if action == "adopt" and found.record else None
    if adopted is not None and adopted.delivery == item.delivery:
        return "adopt", "its bytes are at its name: check --repair (or the reconciliation) records it stored"
    if (
        adopted is not None
        and found.record is not None
        and found.record.index(adopted.delivery) > found.record.index(item.delivery)
    ):
        return "superseded", (
            f"the bytes of delivery {adopted.delivery[:12]}, accepted after it, are at its name: check --repair (or "
            "the reconciliation) records that one stored, and this one superseded"
        )
    expires = item.link_expires_on
    if expires is not None and expires <= ctx.now:
        record = found.record
        later = record.deliveries[record.index(item.delivery) + 1 :] if record is not None else []
        if any(other.state is State.COPYING for other in later):  # the sweep looks at the newest copying one
            return "behind", (
                f"its link expired at {_iso(expires)}; it waits for a newer export still copying: superseded once "
                "that is stored, else its bytes adopted or failed as expired (the reconciliation decides it)"
            )
        return "expired", f"its link expired at {_iso(expires)}: check --repair (or the reconciliation) fails it"
    where = found.look.where(item.delivery)
    until = f"link valid until {_iso(expires)}"
    if where == "queue":
        return "queued", f"its message is in the verification queue: the queue function is on it ({until})"
    if where == "poison":
        return "poisoned", f"its message is in the poison queue: replay-poison moves it back ({until})"
    if where == "absent":
        newer = _newer_copying(found.record, item.delivery, ctx.now) if found.record is not None else []
        finishing = [other for other in newer if found.look.where(other.delivery) in ("queue", "poison")]
        if finishing:  # giving this one up helps nothing: the newer one's store supersedes it
            return "behind", (
                f"no message holds its link, but newer export {finishing[-1].delivery[:12]} still copies with a "
                "message that can finish it: this one is superseded once that is stored (nothing to do for it); find "
                "says if that one fails"
            )
        # (the queues were looked at: none holds it, so pending's "if that message waits in the poison queue" is moot)
        late = ctx.now - item.copying_since > QUEUE_COVERAGE
        why = f"; copying for over {int(QUEUE_COVERAGE.total_seconds() // 60)} minutes, past every try" if late else ""
        return "lost", f"no queue or poison message holds its link: nothing will finish it ({until}{why})"
    if ctx.queues is None:
        return "unconfirmed", f"give the host storage options to see whether a message can finish it ({until})"
    # A message tried again is hidden between its tries: it cannot be seen, only outlived.
    ends = item.copying_since + QUEUE_COVERAGE
    when = (
        f": its message's tries end by {_iso(ends)}; look again then (QUEUED, POISONED or LOST), or, only if it "
        f"must end now, python -m ops fail {_task_args(found.workspace_id, found.task_id)} --reason '...' --force"
        if ends > ctx.now
        else ""
    )
    return "unknown", f"{found.look.note or 'the queues could not be read'}{when} ({until})"


def _delivery_data(item: Delivery, record: TaskRecord, verdict: tuple[str, str] | None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "delivery": item.delivery[:12],
        "blob": item.blob,
        "state": item.state.value,
        "current": record.current == item.delivery,
        "receivedAt": _iso(item.received_at),
        "linkExpiresOn": _iso(item.link_expires_on) if item.link_expires_on else None,
        "completedAt": _iso(item.completed_at) if item.completed_at else None,
        "failedAt": _iso(item.failed_at) if item.failed_at else None,
        "failureReason": item.failure_reason,
        "history": [step.dump() for step in item.history],
    }
    if verdict is not None:
        data["verdict"], data["why"] = verdict
    return data


def _inspection_data(ctx: Context, found: Inspection) -> dict[str, Any]:
    record = found.record
    data: dict[str, Any] = {
        "taskId": found.task_id,
        "workspaceId": found.workspace_id,
        "record": record_name(found.workspace_id, found.task_id),
        "found": record is not None,
        "container": _need_storage(ctx).container,
    }
    if record is None:
        return {**data, **found.legacy, "problems": found.problems, "next": found.next}
    data.update(
        {
            "current": record.current[:12] if record.current else None,
            "currentBlob": found.current_blob,
            "currentUrl": _need_storage(ctx).url(found.current_blob) if found.current_blob else None,
            "fileMatches": found.file_matches,
            "manifestMatches": found.manifest_matches,
            "retire": [item.blob for item in record.retire],
            "deliveries": [
                _delivery_data(item, record, found.verdicts.get(item.delivery)) for item in record.deliveries
            ],
            "queues": {"queue": found.look.queue, "poison": found.look.poison, "note": found.look.note},
            "reconciliation": {"action": found.foreseen.action, "why": found.foreseen.why} if found.foreseen else None,
            "problems": found.problems,
            "next": found.next,
        }
    )
    return data


def _story(ctx: Context, found: Inspection) -> list[str]:
    record = found.record
    head = f"task {found.task_id}  workspace {found.workspace_id}"
    if record is None:
        return [f"{head}: no task record ({record_name(found.workspace_id, found.task_id)})", *found.notes]
    name = record_name(found.workspace_id, found.task_id)
    lines = [f"{head}  ({len(record.deliveries)} delivery(ies), record {name})"]
    for number, item in enumerate(record.deliveries, 1):
        mark = "  <- current" if record.current == item.delivery else ""
        lines.append(f"  {number}. {item.delivery[:12]}  {item.state.value:<10}  {item.blob}{mark}")
        if item.moved_from:
            lines.append(f"     moved from {item.moved_from} (the name an earlier template gave it)")
        times = [f"received {_iso(item.received_at)}"]
        if item.completed_at:
            times.append(f"completed {_iso(item.completed_at)}")
        if item.failed_at and item.state is State.FAILED:
            times.append(f"failed {_iso(item.failed_at)}: {item.failure_reason or '(no reason)'}")
        elif item.failed_at:  # an earlier attempt's failure: its history tells it
            times.append(f"accepted again {_iso(item.copying_since)} after it failed {_iso(item.failed_at)}")
        if item.state is State.COPYING and item.link_expires_on:
            times.append(f"link valid until {_iso(item.link_expires_on)}")
        lines.append("     " + "; ".join(times))
        for step in item.history:
            extra = " ".join(
                part
                for part in (
                    # (only a webhook's step answered someone: a queue try's status is what a webhook would answer)
                    f"{step.status}" if step.status is not None and step.by == "webhook" else "",
                    f"({step.note})" if step.note else "",
                    ("" if step.outcome == "retired" else "listed to retire ") + ", ".join(step.retired)
                    if step.retired
                    else "",
                )
                if part
            )
            lines.append(f"     - {_iso(step.at)} {step.by} {step.outcome} {extra}".rstrip())
        if item.delivery in found.verdicts:
            verdict, why = found.verdicts[item.delivery]
            lines.append(f"     verdict: {verdict.upper()}: {why}")
    lines += _current_file_lines(ctx, found) + found.notes
    for listed in record.retire:
        copy = f", copy {listed.copy_id}" if listed.copy_id else ("" if listed.etag else ", only if a copy of it lands")
        lines.append(f"still to retire: {listed.blob} (delivery {listed.delivery[:12]}{copy})")
    if ctx.queues is not None:
        said = {
            "there": "has a message of this task",
            "absent": "has none of this task",
            "unknown": "may hold one of this task (some of its messages are hidden while they are tried)",
        }
        lines.append(
            f"queues: the verification queue {said.get(found.look.queue, found.look.queue)}; the poison queue "
            f"{said.get(found.look.poison, found.look.poison)}"
        )
    return lines


def _current_file_lines(ctx: Context, found: Inspection) -> list[str]:
    """Where the current file is, and whether it and its manifest hold the current delivery."""
    if not found.current_blob:
        return ["current file: none (no delivery of the task is stored)"]
    state = {True: "matches", False: "DOES NOT MATCH", None: "not checked"}
    return [
        f"current file: {_need_storage(ctx).url(found.current_blob)}",
        f"  file holds the current delivery: {state[found.file_matches]}; manifest: {state[found.manifest_matches]}",
    ]


def _verdict_lines(found: Inspection) -> list[str]:
    lines = []
    if found.foreseen is not None:
        lines.append(
            f"check --repair now would (decide, as operator): {found.foreseen.action.upper()}: {found.foreseen.why} "
            "(the timer acts alike once the task is due: RECONCILE_AFTER_MINUTES)"
        )
    for problem in found.problems:
        lines.append(f"problem: {problem}")
    for step in dict.fromkeys(found.next):
        lines.append(f"next: {step}")
    return lines


async def _one_task(ctx: Context, task_id: str, workspace_id: str | None) -> tuple[str, str] | Result:
    pairs = await locate(_need_storage(ctx), task_id, workspace_id)
    if not pairs:
        storage = _need_storage(ctx)
        await _check_container(storage)
        where = f"container {storage.container} of {getattr(storage, 'account', 'the storage account')}"
        scope = f" in workspace {workspace_id}" if workspace_id else ""
        next_step = (
            "check the task id (SmartDocumentor's taskId), --container and the account; a task whose every delivery "
            "was refused has no record: Application Insights has its answers (task-lookup.kql, docs/operations.md); "
            "a record deleted by hand: restore it from the blob's versions or soft delete (docs/operations.md)"
        )
        if workspace_id:
            next_step = f"drop --workspace to look in every workspace, or {next_step}"
        text = [f"No task record for task {task_id}{scope} in {where}."]
        data: dict[str, Any] = {
            "taskId": task_id,
            "workspaceId": workspace_id,
            "record": None,
            "found": False,
            "container": storage.container,
            "problems": ["no task record"],
        }  # (the keys an inspection of a task with no record has)
        lines, next_step, legacy = await legacy_advice(storage, task_id, workspace_id, next_step, ctx.now)
        text += lines
        data.update(legacy)
        text.append(f"next: {next_step}")
        data["next"] = [next_step]  # a list, as in every inspection's JSON
        return Result(NOT_FOUND, data, text)
    if len(pairs) > 1:
        text = [f"Task {task_id} has records in {len(pairs)} workspaces: give --workspace, one of:"]
        text += [f"  {workspace}" for workspace, _ in pairs]
        return Result(NOT_FOUND, {"taskId": task_id, "workspaces": [w for w, _ in pairs]}, text)
    return pairs[0]


async def find_task(ctx: Context, task_id: str, workspace_id: str | None) -> Result:
    one = await _one_task(ctx, task_id, workspace_id)
    if isinstance(one, Result):
        return one
    found = await inspect(ctx, *one)
    data = _inspection_data(ctx, found)
    code = NOT_FOUND if found.record is None or found.problems else OK
    return Result(code, data, _story(ctx, found) + _verdict_lines(found))


async def find_workspace(ctx: Context, workspace_id: str, limit: int) -> Result:
    storage = _need_storage(ctx)
    labels, more, bare = await first_records(storage, workspace_prefix(workspace_id), limit)
    records = await asyncio.gather(
        *(read_record(storage, item.workspace_id, item.task_id) for item in labels), return_exceptions=True
    )
    rows: list[list[str]] = []
    tasks: list[dict[str, Any]] = []
    unreadable: list[str] = []
    for item, read in zip(labels, records, strict=True):
        if isinstance(read, Unreadable):  # one bad record must not hide the others: named below
            unreadable.append(str(read))
            rows.append([item.task_id, "?", str(item.copying), "-", "(record unreadable: see below)"])
            tasks.append({"taskId": item.task_id, "unreadable": str(read)})
            continue
        if isinstance(read, BaseException):
            raise read
        record = read[0]
        current = record.current_delivery if record is not None else None
        tasks.append(
            {
                "taskId": item.task_id,
                "deliveries": len(record.deliveries) if record else 0,
                "current": current.blob if current else None,
                "copying": item.copying,
                "retire": item.retire,
                "lastFailed": _iso(item.last_failed) if item.last_failed else None,
            }
        )
        rows.append(
            [
                item.task_id,
                str(len(record.deliveries) if record else 0),
                str(item.copying),
                _iso(item.last_failed) if item.last_failed else "-",
                current.blob if current else "(none stored)",
            ]
        )
    data = {"workspaceId": workspace_id, "tasks": tasks, "more": more}
    if not tasks and not bare:
        await _check_container(storage)
        upgrade = await unfinished_upgrade(storage, ctx.now)
        data["upgradeUnfinished"] = upgrade is not None
        return Result(
            NOT_FOUND, data, [f"No task records for workspace {workspace_id}.", *([upgrade] if upgrade else [])]
        )
    text = table(["TASK", "DELIVERIES", "COPYING", "LAST FAILED", "CURRENT FILE"], rows)
    if more:
        text.append(f"(the first {limit} tasks in name order; --max N for more)")
    text += [f"problem: {problem}" for problem in unreadable]
    text += [
        f"problem: the task record {name} has no labels (uploaded again without its metadata?): the next "
        "reconciliation run labels it again; find --task T shows its task now"
        for name in bare
    ]
    data["unlabelled"] = bare
    return Result(NOT_FOUND if unreadable or bare else OK, data, text)


async def check(ctx: Context, task_id: str, workspace_id: str | None, *, repair: bool, dry_run: bool) -> Result:
    one = await _one_task(ctx, task_id, workspace_id)
    if isinstance(one, Result):
        return one
    workspace_id, task_id = one
    found = await inspect(ctx, workspace_id, task_id)
    data = _inspection_data(ctx, found)
    text = _verdict_lines(found)
    if found.record is None:
        return Result(NOT_FOUND, data, [f"No task record for task {task_id} in workspace {workspace_id}.", *text])
    text = _current_file_lines(ctx, found) + text
    assert found.foreseen is not None
    action = found.foreseen.action
    repairable = action in ("adopt", "expire", "retire", "repair")
    if not repair or not repairable or dry_run:
        if repairable:
            text.append(f"--repair would {action}: {found.foreseen.why}")
        elif repair:
            text.append("nothing for --repair to do")
        if dry_run:
            text.append("dry run: nothing changed")
            data["dryRun"] = True
        return Result(NOT_FOUND if found.problems else OK, data, text)
    job = Job(
        event=Sweep(ctx.now, by="operator", verify=True, manifests=ctx.settings.write_manifest),
        workspace_id=workspace_id,
        task_id=task_id,
        write_manifest=ctx.settings.write_manifest,
    )
    trace, stopped = Trace(), None
    try:
        answer, _ = await drive(_need_storage(ctx), job, now=ctx.now, trace=trace)
    except StoreError as exc:  # a step was refused (a lease, say): what went before it stands, and is shown
        answer, stopped = Answer("failed", 503, "stopped"), exc.message
    if stopped is None and trace.effect_failed is not None:
        stopped = trace.effect_failed.message  # the manifest (or Content-Type) the repair wrote was refused
    arrows = ",".join(trace.arrows)
    try:
        after = await inspect(ctx, workspace_id, task_id)
    except StoreError as exc:
        raise _alert_unread(exc, trace, "check --repair", workspace_id, task_id) from None
    # What the record says now, not what was tried: a step storage refused changed nothing.
    before = {item.delivery: item.state for item in found.record.deliveries}

    # This repair's failures: its swaps that won, and (a swap's outcome not known) its own steps read back.
    own = {item.delivery for item in trace.failed}
    own |= {
        item.delivery for item in own_alerts(after.record.deliveries if after.record else [], trace.mine, sender=False)
    }

    def failed_by_this_repair(item: Delivery) -> bool:  # (another driver may have failed it meanwhile: its alert)
        return item.delivery in own and before.get(item.delivery) is not State.FAILED

    now_failed = [
        item
        for item in (after.record.deliveries if after.record is not None else [])
        if item.state is State.FAILED and failed_by_this_repair(item)
    ]
    failed = bool(now_failed)
    # A retirement every delete of which was refused did not happen: the record says so, not `retire`.
    unretired = action == "retire" and trace.deferred and not trace.retired
    outcome = "expired" if failed and action == "expire" else action if stopped is None and not unretired else "stopped"
    notes = [
        f"; delivery {item.delivery[:12]} ({item.blob}) failed for good: {item.failure_reason or 'no reason'}"
        for item in now_failed
    ]
    notes += [f"; not done: storage refused a step ({stopped})"] if stopped is not None else []
    notes += [f"; not retired: {why}" for why in trace.deferred]
    log.log(
        logging.ERROR if failed else logging.WARNING,
        "operator check --repair task=%s workspace=%s: %s (%s)%s",
        task_id,
        workspace_id,
        action,
        arrows,
        "".join(notes),
        extra=operator_record(
            outcome,
            task_id,
            workspace_id,
            delivery=now_failed[0].delivery if now_failed else None,
            blob=now_failed[0].blob if now_failed else None,
            reason=found.foreseen.why,
            final=failed,
        ),
    )
    repaired: dict[str, Any] = {"arrows": trace.arrows, "retired": trace.retired, "answer": answer.kind}
    repaired.update(notRetired=trace.deferred, stopped=stopped)
    data["repaired"] = repaired
    if trace.deferred or stopped is not None:  # running it again changes nothing until what refused it is gone
        after.next = [step for step in after.next if "--repair" not in step]
    if trace.deferred:
        after.next.append(
            "the names not retired stay listed until what refused them is gone (named above: a lease broken or "
            "expired, a hold or policy lifted, the delete permission granted; a busy or unreachable service answers "
            "again later); then run this again (the reconciliation also tries every run)"
        )
    data["after"] = _inspection_data(ctx, after)
    done = "steps tried" if stopped or trace.deferred else "repaired"
    text.append(f"{done}: {arrows}" + (f"; retired {', '.join(trace.retired)}" if trace.retired else ""))
    text += [f"not retired: {why}" for why in trace.deferred]
    if stopped is not None:
        text.append(f"not done: storage refused a step ({stopped}); once that is fixed, run this again")
    text += [f"after: {line}" for line in _verdict_lines(after)]
    return Result(NOT_FOUND if after.problems or stopped else OK, data, text)


def _alert_operator_failed(
    command: str, task_id: str, workspace_id: str, item: Delivery, said: str, reason: str | None
) -> None:
    """The ERROR for a delivery an operator command failed for good (one each): why, where the document is in
    SmartDocumentor, and the command that tells the task's story, as the receiver's own ERRORs end."""
    story = f"python -m ops find {_task_args(workspace_id, task_id)} tells its story"
    log.error(
        "%s task=%s workspace=%s delivery=%s blob=%s: %s; %s; %s",
        command,
        task_id,
        workspace_id,
        item.delivery[:12],
        item.blob,
        said.rstrip("."),
        ARCHIVED,
        story,
        extra=operator_record(
            "operator-failed", task_id, workspace_id, delivery=item.delivery, blob=item.blob, reason=reason, final=True
        ),
    )


# The code of a storage error after an operator command's change was recorded: the error says what was done.
RECORDED_BEFORE_READ = "recorded-before-read"


def _alert_unread(exc: StoreError, trace: Trace, command: str, workspace_id: str, task_id: str) -> StoreError:
    """The record could not be read after this command's change: what that change failed (or may have, its answer
    lost) is alerted now, one ERROR each, and the error says it was recorded."""
    named = {item.delivery for item in trace.failed}
    maybe = [item for item in trace.maybe_failed if item.delivery not in named] if trace.unsure else []
    failed = [(item, "failed for good") for item in trace.failed]
    failed += [(item, "may have failed for good (its change got no answer)") for item in maybe]
    for item, how in failed:
        said = (
            f"{how} by this command ({item.failure_reason or 'no reason'}); the record could not be read after it "
            f"({exc.message}). Export the document again from SmartDocumentor"
        )
        _alert_operator_failed(f"operator {command}", task_id, workspace_id, item, said, item.failure_reason)
    if failed:
        said = "; ".join(f"delivery {item.delivery[:12]} ({item.blob}) {how}" for item, how in failed)
        exc.message = (
            f"{exc.message} This command's change was recorded before that read: {said}. Do not run it again for that "
            f"(it would find it done); python -m ops find {_task_args(workspace_id, task_id)} shows the task once "
            "storage answers."
        )
        exc.code = RECORDED_BEFORE_READ
    return exc


async def fail(ctx: Context, task_id: str, workspace_id: str | None, *, reason: str, force: bool) -> Result:
    """Give up every delivery of the task still copying (the sweep fails them all), each checked first:
    refused while any of them has a valid link and a message that may still finish it, unless forced."""
    one = await _one_task(ctx, task_id, workspace_id)
    if isinstance(one, Result):
        return one
    workspace_id, task_id = one
    storage = _need_storage(ctx)
    record, _ = await read_record(storage, workspace_id, task_id)
    copying = [item for item in record.deliveries if item.state is State.COPYING] if record else []
    data: dict[str, Any] = {"taskId": task_id, "workspaceId": workspace_id, "failed": None}
    if not copying:
        data["message"] = f"Task {task_id} has no delivery copying: nothing to give up."
        return Result(NOT_FOUND, data, [data["message"]])
    policy = await storage.container_policy()
    if policy is not None:  # it refuses every change of the record: nothing can give a delivery up, forced or not
        data["refused"] = [f"the container's {policy}"]
        return Result(
            NOT_FOUND,
            data,
            [
                f"Not failed: the container's {policy} refuses every change of the task record while it lasts, so "
                "no command can give a delivery up (--force cannot help).",
                f"Have the storage account's owner lift the {policy}; then python -m ops find "
                f"{_task_args(workspace_id, task_id)} says what finishes each delivery (replay-poison for a message "
                "in the poison queue; the reconciliation for one whose link expired).",
            ],
        )
    live = [item for item in copying if _link_valid(item, ctx.now)]
    looked = await _look(ctx, workspace_id, task_id) if live else None
    holds, held = [], []
    for item in live:
        assert looked is not None
        where = looked.where(item.delivery) if ctx.queues is not None else "unknown"
        until = _iso(item.link_expires_on)
        if where in ("queue", "poison", "unknown"):
            why = {
                "queue": f"its message is in the verification queue and its link is valid until {until}",
                "poison": f"its message is in the poison queue (replay-poison finishes it); link valid until {until}",
                "unknown": "no one can tell whether a queue or poison message can still finish it ("
                + (
                    "give the host storage options, --host-connection-string or --host-queue-url"
                    if ctx.queues is None
                    else f"{looked.note or 'a message may be hidden while it is tried'}: look again in a few minutes"
                )
                + f"); link valid until {until}",
            }[where]
            holds.append(f"delivery {item.delivery[:12]} ({item.blob}): {why}")
            held.append(item.delivery[:12])
    if holds and not force:
        data["refused"] = holds
        several = " (every delivery of the task still copying is given up together)" if len(copying) > 1 else ""
        return Result(
            NOT_FOUND,
            data,
            [
                *(f"Not failed: {why}." for why in holds),
                f"Give --force to give it up anyway (it is recorded){several}.",
            ],
        )
    # The reason recorded names the deliveries a message could still finish, briefly (the refusal's whole text
    # is for the operator's screen, not the record).
    forced = f" (given up with --force while a message may still finish {', '.join(held)})" if holds else ""
    give_up = redact(reason.strip() or "given up by an operator") + forced
    job = Job(
        # Only what was checked above: a delivery accepted since (its message live) is not given up unseen.
        event=Sweep(ctx.now, by="operator", give_up=give_up, giving_up=frozenset(item.delivery for item in copying)),
        workspace_id=workspace_id,
        task_id=task_id,
        write_manifest=ctx.settings.write_manifest,
    )
    stopped, trace = None, Trace()
    try:
        await drive(storage, job, now=ctx.now, trace=trace)
        data["arrows"] = trace.arrows
    except StoreError as exc:  # after the give-up was recorded, perhaps (the fence after it, say): the record tells
        stopped, data["arrows"] = exc.message, []
    try:
        after, _ = await read_record(storage, workspace_id, task_id)
    except StoreError as exc:
        raise _alert_unread(exc, trace, "fail", workspace_id, task_id) from None
    now_held = {item.delivery: item for item in after.deliveries} if after else {}
    states = {delivery: item.state for delivery, item in now_held.items()}

    def failing_step(delivery: str) -> Step | None:
        item = now_held.get(delivery)
        if item is None or item.state is not State.FAILED:
            return None
        return next((step for step in reversed(item.history) if step.outcome == "failed"), None)

    # This command's failures: its swaps that won, and (a swap's outcome not known) its own steps read back.
    own = {item.delivery for item in trace.failed}
    own |= {item.delivery for item in own_alerts(after.deliveries if after else [], trace.mine, sender=False)}

    def by_this_command(delivery: str) -> bool:  # (another driver may have failed it meanwhile: its own alert)
        return delivery in own

    failed = [item for item in copying if by_this_command(item.delivery)]
    others = [
        (item, failing_step(item.delivery)) for item in copying if failing_step(item.delivery) and item not in failed
    ]
    adopted = [item for item in copying if states.get(item.delivery) is State.STORED]
    data["failed"] = [item.delivery[:12] for item in failed] or None
    text = [
        f"Not failed by this command: delivery {item.delivery[:12]} was failed meanwhile by the {step.by} "
        f"({step.note or 'no reason'})."
        for item, step in others
        if step is not None
    ]
    for item in failed:
        _alert_operator_failed("operator fail", task_id, workspace_id, item, give_up, give_up)
        text.append(f"Failed delivery {item.delivery[:12]} ({item.blob}) of task {task_id}: {give_up}")
    text += [f"Not failed: delivery {item.delivery[:12]} was stored after all (adopted)." for item in adopted]
    if failed and forced:
        text.append(
            "It was given up with --force: a message still holding its link may yet copy it, and it is then "
            f"stored after all (python -m ops find {_task_args(workspace_id, task_id)} shows it)."
        )
    if not failed and not adopted:
        why = stopped or f"the record changed meanwhile ({','.join(data['arrows'])})"
        story = f"python -m ops find {_task_args(workspace_id, task_id)} shows the task and what to run next."
        return Result(NOT_FOUND, data, [f"Nothing failed: {why.rstrip('.')}.", *text, story])
    if stopped is not None:
        data["stopped"] = stopped
        text.append(
            f"Storage then refused a step ({stopped}): python -m ops find {_task_args(workspace_id, task_id)} shows "
            "the task."
        )
    return Result(OK, data, text)


# --- lists -----------------------------------------------------------------------------------------------


def _failed_since(item_time: datetime | None, since: datetime | None) -> bool:
    return item_time is not None and (since is None or item_time >= since)


def _span(value: timedelta) -> str:
    minutes = value.total_seconds() / 60
    return f"{minutes:.0f} minutes" if minutes == int(minutes) else human_age(int(value.total_seconds()))


@dataclass
class SummaryState:
    """The reconciliation's pending summary as the list commands report it."""

    summary: Summary | None
    data: dict[str, Any]
    problems: list[str]  # shown first: missing, unreadable, or older than its schedule allows
    lines: list[str]  # when the run completed, what it listed


async def _summary_of(ctx: Context) -> SummaryState:
    storage = _need_storage(ctx)
    try:
        summary = await read_summary(storage)
    except ValueError as exc:
        text = f"PROBLEM: the reconciliation's summary {PENDING_NAME} is unreadable ({exc}): its next run rewrites it"
        return SummaryState(None, {"name": PENDING_NAME, "found": True, "readable": False}, [text], [])
    if summary is None:
        await _check_container(storage)
        text = (
            f"PROBLEM: no reconciliation run has written its summary ({PENDING_NAME}), so deliveries still copying "
            "are not known. Is the timer reconcile_deliveries running, and is --container the app's "
            "DESTINATION_CONTAINER? A new deployment writes it in its first "
            "run; run one now with POST /admin/functions/reconcile_deliveries on the function app (docs/operations.md, "
            "the reconciliation heartbeat, says how)."
        )
        return SummaryState(None, {"name": PENDING_NAME, "found": False}, [text], [])
    age = ctx.now - summary.completed_at
    age_s = max(0, int(age.total_seconds()))
    stale = age > summary.stale_after
    data = {
        "name": PENDING_NAME,
        "found": True,
        "listedAt": _iso(summary.listed_at),
        "completedAt": _iso(summary.completed_at),
        "ageSeconds": age_s,
        "stale": stale,
        "staleAfterMinutes": summary.stale_after.total_seconds() / 60,
        "records": summary.records,
        "copyingTasks": summary.copying_tasks,
        "truncated": summary.truncated,
        "poisonMessages": summary.poison,
    }
    line = (
        f"last reconciliation run completed {_iso(summary.completed_at)} ({human_age(age_s)} ago): "
        f"{summary.records} task record(s) listed, {summary.copying_tasks} with a delivery copying"
    )
    if summary.truncated:
        line += f" (its summary names the {len(summary.tasks)} due first)"
    problems = []
    if summary.poison:
        # Their copies wait for nothing: the poison queue is retried by no one but an operator.
        problems.append(
            f"PROBLEM: {summary.poison} message(s) were in the poison queue at that run: their deliveries are not "
            "retried by anything. python -m ops replay-poison --dry-run says what moving them back would do."
        )
    policy = await storage.container_policy() if stale else None
    if policy is not None:  # its runs may complete: the policy refuses rewriting the summary they leave
        problems.append(
            f"PROBLEM: the reconciliation's summary is {human_age(age_s)} old: the container's {policy} refuses "
            f"rewriting {PENDING_NAME}, so its runs (which may be completing: their records say) cannot keep it; "
            f"what follows is as old as that. Lift the {policy}, or look each task up with python -m ops find."
        )
    elif stale:
        problems.append(
            f"PROBLEM: the reconciliation has not completed a run for {human_age(age_s)} (its schedule "
            f"{summary.schedule!r} allows {_span(summary.stale_after)}): nothing finishes what the queue missed, "
            "and what follows is as old as its last run. Look for its failed runs' ERRORs, and whether the "
            "function app runs; after a fix, run one now with POST /admin/functions/reconcile_deliveries "
            "(docs/operations.md, the reconciliation heartbeat)."
        )
    return SummaryState(summary, data, problems, [line])


async def pending(
    ctx: Context, *, older_than: timedelta | None, since: datetime | None, limit: int, alert: bool
) -> Result:
    """Deliveries still copying past their time (received before now - ``older_than``; by default
    RECONCILE_AFTER_MINUTES), oldest first: the tasks the last reconciliation run saw copying (its
    summary), each confirmed from its record. Only the records shown are read."""
    storage = _need_storage(ctx)
    if older_than is None:
        older_than = timedelta(minutes=ctx.settings.reconcile_after_minutes)
    cutoff = ctx.now - older_than
    state = await _summary_of(ctx)
    summary = state.summary
    tasks = [
        item
        for item in (summary.tasks if summary is not None else [])
        if item.oldest_copying <= cutoff and (since is None or item.oldest_copying >= since)
    ]
    tasks.sort(key=lambda item: item.oldest_copying)
    shown = tasks[:limit]
    unreadable: list[str] = []
    records = await _records(storage, [(item.workspace_id, item.task_id) for item in shown], unreadable)
    held = await _held_by(storage, records, ctx.now)
    rows, entries = [], []
    for item, record in zip(shown, records, strict=True):
        if record is None:
            continue
        for delivery in record.deliveries:
            if delivery.state is not State.COPYING or delivery.copying_since > cutoff:
                continue
            if since is not None and delivery.copying_since < since:
                continue
            why = stuck(delivery.link_expires_on, delivery.copying_since, ctx.now, held=held)
            newer = _behind_newer(record, delivery, ctx.now)
            if why is not None and newer is not None:  # nothing to do for it: what finishes the newer one decides
                why, behind = None, f"behind newer export {newer.delivery[:12]}: superseded once that one is stored"
            else:
                behind = None
            age = age_seconds(delivery.copying_since.isoformat(), ctx.now)
            entries.append(
                {
                    "taskId": item.task_id,
                    "workspaceId": item.workspace_id,
                    "delivery": delivery.delivery[:12],
                    "blob": delivery.blob,
                    "receivedAt": _iso(delivery.received_at),
                    "ageSeconds": age,
                    "linkExpiresOn": _iso(delivery.link_expires_on) if delivery.link_expires_on else None,
                    "stuck": why,
                    "heldBy": held if why else None,
                    "behind": behind,
                }
            )
            rows.append([human_age(age), item.task_id, delivery.delivery[:12], delivery.blob, why or behind or "-"])
    stuck_count = sum(1 for entry in entries if entry["stuck"])
    waiting = sum(1 for entry in entries if entry["heldBy"])
    data = {
        "container": storage.container,
        "olderThanMinutes": older_than.total_seconds() / 60,
        "summary": state.data,
        "problems": state.problems,
        "tasks": len(tasks),
        "shown": len(entries),
        "stuck": stuck_count,
        "deliveries": entries,
    }
    problem = bool(state.problems or unreadable)
    data["problems"] = [*state.problems, *unreadable]
    text = [*state.problems, *(f"PROBLEM: {why}" for why in unreadable)]
    if not entries and summary is not None:
        text.append(
            f"No deliveries still copying for over {_span(older_than)}, as of the last completed reconciliation run "
            f"({_iso(summary.listed_at)})."
        )
    elif entries:
        more = f" (of {len(tasks)}; --max N for more)" if len(tasks) > len(shown) else ""
        counted = len({(entry["workspaceId"], entry["taskId"]) for entry in entries})
        text.append(
            f"{len(entries)} delivery(ies) still copying for over {_span(older_than)} in {counted} task(s){more}"
            f"; {stuck_count} will not finish by themselves (see failed)"
            + (f", {waiting} of them until the container's {held} is lifted" if waiting else "")
            # (the poison queue is not read here: a delivery whose message is there shows no reason yet)
            + (
                ", besides any whose message is in the poison queue (find --task T says)"
                if summary and summary.poison
                else ", besides any whose message is in the poison queue, which the last run could not look at (find "
                "--task T says)"
                if summary and summary.poison is None
                else ""
            )
            + ". One task's whole story: python -m ops find --task T --workspace W"
        )
    text += state.lines
    if summary is not None and summary.listed_at < cutoff:
        text.append(
            f"(deliveries received after {_iso(summary.listed_at)}, when that run listed the records, are not in its "
            "summary yet: the next run lists them)"
        )
    if entries:
        text += table(["AGE", "TASK", "DELIVERY", "BLOB", "WILL NOT FINISH BECAUSE"], rows)
    return Result(NOT_FOUND if problem or (alert and entries) else OK, data, text)


async def _held_by(storage: Storage, records: list[TaskRecord | None], now: datetime) -> str | None:
    """The container's retention policy or legal hold, asked only when a delivery in ``records`` is copying and
    will not finish by itself (such a policy keeps its tries, and the reconciliation's change, from ending it)."""
    waiting = any(
        delivery.state is State.COPYING and stuck(delivery.link_expires_on, delivery.copying_since, now) is not None
        for record in records
        if record is not None
        for delivery in record.deliveries
    )
    return await storage.container_policy() if waiting else None


def _stuck_at(item: CopyingTask, now: datetime) -> datetime | None:
    """When a task the summary saw copying stopped being finishable by itself (None: not yet)."""
    due = item.due(QUEUE_COVERAGE)
    return due if due <= now else None


async def _markers(storage: Storage, since: datetime, now: datetime) -> list[Marker]:
    """The failure markers marked from ``since`` to ``now`` (when it failed, or when the reconciliation
    wrote a lost one): one listing per hour of the window (per day over a day), side by side."""

    async def one(prefix: str) -> list[Marker]:
        return [m async for item in storage.list(prefix) if (m := marker_of(item)) is not None]

    found = await asyncio.gather(*(one(prefix) for prefix in bucket_prefixes(since, now)))
    return [marker for page in found for marker in page if marker.marked_at >= since]


async def failed(ctx: Context, *, since: datetime | None, limit: int, alert: bool) -> Result:
    """Every delivery that will not finish by itself: failed in its record (found by its failure marker:
    failed in the window, or failed earlier and its lost marker written by the reconciliation in the
    window), and copying ones whose link expired or that waited past the queue's coverage (the last
    reconciliation run's summary; since then). Each confirmed from its record; only the records of the
    newest ``limit`` tasks are read."""
    storage = _need_storage(ctx)
    now = ctx.now
    oldest = now - MARKER_RETENTION
    start = max(since, oldest) if since is not None else oldest
    state, markers = await asyncio.gather(_summary_of(ctx), _markers(storage, start, now))
    summary = state.summary
    times: dict[tuple[str, str], datetime] = {}
    for marker in markers:
        times[marker.task] = max(marker.marked_at, times.get(marker.task, marker.marked_at))
    marked = {marker.failure for marker in markers}
    for item in summary.tasks if summary is not None else []:
        at = _stuck_at(item, now)
        if _failed_since(at, since) and at is not None:
            key = (item.workspace_id, item.task_id)
            times[key] = max(at, times.get(key, at))
    ordered = sorted(times.items(), key=lambda pair: pair[1], reverse=True)  # the newest first
    found: list[list[tuple[dict[str, Any], tuple[datetime | None, list[str]]]]] = []  # per task, newest first
    unreadable: list[str] = []
    read = 0
    # The newest ``limit`` tasks that still have something to show, read ``limit`` records at a time: a task
    # a later export has fixed since does not take one of the slots.
    held: str | None = None
    while read < len(ordered) and len(found) < limit:
        batch = ordered[read : read + limit]
        read += len(batch)
        records = await _records(storage, [task for task, _ in batch], unreadable)
        held = held or await _held_by(storage, records, now)
        for record in records:
            failures = _failures_of(record, (start, now), marked, held) if record is not None else []
            if failures:
                found.append(failures)
    more = read < len(ordered) or len(found) > limit
    shown_tasks = found[:limit]
    entries = [entry for failures in shown_tasks for entry, _ in failures]
    rows = [row for failures in shown_tasks for _, row in failures]
    listed = {(entry["workspaceId"], entry["taskId"]) for entry in entries}
    rows.sort(key=lambda pair: pair[0] or now)
    entries.sort(key=lambda entry: entry["at"])
    data = {
        "container": storage.container,
        "since": _iso(start),
        "summary": state.data,
        "problems": state.problems,
        "markers": len(markers),
        "tasks": len(listed),
        "shown": len(entries),
        "deliveries": entries,
    }
    problem = bool(state.problems or unreadable)
    data["problems"] = [*state.problems, *unreadable]
    text = [*state.problems, *(f"PROBLEM: {why}" for why in unreadable)]
    if not entries:
        text.append("No failed deliveries.")
    else:
        hint = f" (only the newest {limit} tasks with failures are shown; --max N for more)" if more else ""
        waiting = sum(1 for entry in entries if entry.get("heldBy"))
        replayable = sum(1 for entry in entries if entry.get("replayable"))
        advice = [
            f"{waiting} of them wait for the container's {held} to be lifted (the row says what follows)"
            if waiting
            else "",
            f"{replayable} of them may still be finished from the poison queue (python -m ops replay-poison --dry-run)"
            if replayable
            else "",
        ]
        plain = len(entries) - waiting - replayable
        advice.append(
            f"export {'the others' if waiting or replayable else 'those documents'} again from SmartDocumentor (from "
            "its archive for one a request was answered 2xx for, such as a 202 while it copied: find --task T says)"
            if plain
            else ""
        )
        said = "; ".join(
            [*(line for line in advice if line), "one task's whole story: python -m ops find --task T --workspace W"]
        )
        text.append(
            f"{len(entries)} delivery(ies) will not finish by themselves, in {len(listed)} task(s){hint}. "
            + said[:1].upper()
            + said[1:]
            + "."
        )
    text += state.lines
    if since is None or since < oldest:
        text.append(
            f"(failures before {_iso(oldest)} are not listed: their markers are kept {MARKER_RETENTION.days} days; "
            "find --task T tells any task's whole story)"
        )
    if entries:
        text += table(["WHEN", "STATE", "TASK", "BLOB", "WHY"], [row for _, row in rows])
    return Result(NOT_FOUND if problem or (alert and entries) else OK, data, text)


def _failures_of(
    record: TaskRecord,
    window: tuple[datetime, datetime],
    marked: set[tuple[str, str, str, datetime]],
    held: str | None,
) -> list[tuple[dict[str, Any], tuple[datetime | None, list[str]]]]:
    """The deliveries of ``record`` that will not finish by themselves (none before its current file); ``held``:
    the container's policy, which keeps a copying one waiting until it is lifted (not failed)."""
    start, now = window
    found = []
    current = record.current_delivery
    position = record.index(current.delivery) if current is not None else -1
    workspace_id, task_id = record.workspace_id, record.task_id
    for number, delivery in enumerate(record.deliveries):
        if number < position:
            continue  # a newer export is the current file: nothing left to do for this one
        waits_for: str | None = None
        if delivery.state is State.FAILED and (
            _failed_since(delivery.failed_at, start)
            or (workspace_id, task_id, delivery.delivery, delivery.failed_at) in marked
        ):
            when_, what, why = delivery.failed_at, "failed", delivery.failure_reason or "(no reason)"
        elif delivery.state is State.COPYING:
            why_stuck = stuck(delivery.link_expires_on, delivery.copying_since, now, held=held)
            if why_stuck is None or _behind_newer(record, delivery, now) is not None:
                continue  # (one behind a newer copy is superseded once that is stored: listed with it, not here)
            expired = delivery.link_expires_on is not None and delivery.link_expires_on <= now
            waits_for = held  # a hold keeps it as it is (tried again, or failed by the reconciliation, once lifted)
            replayable = not expired and held is None  # its message may wait in the poison queue
            # When it stopped being finishable (its link's expiry, or past its queue message's tries): what
            # --since filters on too.
            ends = [delivery.link_expires_on, delivery.copying_since + QUEUE_COVERAGE]
            when_ = min(end for end in ends if end is not None and end <= now)
            what, why = "copying", why_stuck if waits_for or replayable else f"{why_stuck}; nothing will finish it"
        else:
            continue  # e.g. a marker whose swap lost: the record does not hold that failure
        kept = current.blob if current is not None and current.delivery != delivery.delivery else None
        entry: dict[str, Any] = {
            "taskId": task_id,
            "workspaceId": workspace_id,
            "delivery": delivery.delivery[:12],
            "blob": delivery.blob,
            "state": what,
            "at": _iso(when_),
            "reason": why,
            "currentFileKept": kept,
        }
        if what == "copying" and waits_for:
            entry["heldBy"] = waits_for
        if what == "copying" and replayable:
            entry["replayable"] = True
        shown_why = why + (f" (current file kept: {kept})" if kept else "")
        found.append((entry, (when_, [_iso(when_), what, task_id, delivery.blob, shown_why])))
    return found


# --- replay-poison ---------------------------------------------------------------------------------------


async def _note_replayed(storage: Storage, parsed: Parsed, note: str, now: datetime) -> None:
    """Best effort: the delivery's history says an operator moved its message back (CAS, If-Match)."""
    name = record_name(parsed.workspace_id, parsed.task_id)
    for _ in range(3):
        record, etag = await read_record(storage, parsed.workspace_id, parsed.task_id)
        entry = record.find(parsed.delivery) if record is not None else None
        if record is None or entry is None or etag is None:
            return
        step = Step(at=now, by="operator", outcome="replayed", note=note)
        updated_entry = entry.model_copy(update={"history": with_step(entry, step)})
        items = [updated_entry if item.delivery == entry.delivery else item for item in record.deliveries]
        updated = record.model_copy(update={"deliveries": items})
        try:
            await storage.put(
                name, updated.to_bytes(), if_match=etag, content_type="application/json", metadata=updated.labels()
            )
            return
        except Conflict:
            continue
        except StoreError as exc:
            # The message is already moved: a record a policy keeps (or a storage error) only loses the note.
            log.warning("the task record %s does not note this replay: %s", name, exc.message)
            return


def _message_entry(message_id: str, parsed: Parsed | None, action: str, fate: tuple[str, str]) -> dict[str, Any]:
    if parsed is None:
        return {"messageId": message_id, "action": action, "readable": False, "will": "nothing", "why": fate[1]}
    return {
        "messageId": message_id,
        "action": action,
        "readable": True,
        "taskId": parsed.task_id,
        "workspaceId": parsed.workspace_id,
        "delivery": parsed.delivery[:12],
        "linkExpiresOn": _iso(parsed.expires_on) if parsed.expires_on else None,
        "will": fate[0],
        "why": fate[1],
    }


UNREADABLE = ("nothing", "the queue function cannot read it either (it would drop it); it stays in the poison queue")
DROPPED = ("nothing", "the queue function cannot read it either (it would drop it): deleted (--drop-unreadable)")


async def _fate(ctx: Context, parsed: Parsed) -> tuple[str, str]:
    if ctx.storage is None:
        expired = parsed.expires_on is not None and parsed.expires_on <= ctx.now
        return ("fail" if expired else "unknown"), "give the destination options to see what the queue function will do"
    try:
        foreseen = await observe_arrival(ctx.storage, parsed, ctx.settings, now=ctx.now)
    except Unreadable as exc:  # the queue function would refuse it too (and poison it again): it stays
        return "blocked", str(exc)
    return foreseen.action, foreseen.why


async def _records(storage: Storage, tasks: list[tuple[str, str]], unreadable: list[str]) -> list[TaskRecord | None]:
    """The tasks' records side by side; one that does not parse is None here and named in ``unreadable``
    (it must not hide the others)."""
    found = await asyncio.gather(*(read_record(storage, *task) for task in tasks), return_exceptions=True)
    records: list[TaskRecord | None] = []
    for item in found:
        if isinstance(item, Unreadable):
            unreadable.append(str(item))
            records.append(None)
        elif isinstance(item, BaseException):
            raise item
        else:
            records.append(item[0])
    return records


async def replay(ctx: Context, *, dry_run: bool, limit: int, drop_unreadable: bool = False) -> Result:
    assert ctx.queues is not None
    main, poison = ctx.queues
    waiting = await poison.count()
    entries: list[dict[str, Any]] = []
    problems: list[str] = []
    missing = False  # the verification queue is not in this host storage: a wrong host (exit 3)
    if dry_run:
        for message in await poison.peek(min(limit, PEEK_LIMIT)):
            parsed = parse(message.content)
            fate = (DROPPED if drop_unreadable else UNREADABLE) if parsed is None else await _fate(ctx, parsed)
            moves = parsed is not None and fate[0] != "blocked"
            action = "would-move" if moves else "would-drop" if parsed is None and drop_unreadable else "would-leave"
            entries.append(_message_entry(message.id, parsed, action, fate))
    else:
        progress = ctx.console.progress("replaying", total=min(limit, waiting) or None, unit="message")
        received: list[QueueMessage] = []
        handled = 0  # the messages of `received` moved or left visible again
        try:
            received = await poison.receive(limit, visibility_seconds=VISIBILITY_SECONDS)
            for index, message in enumerate(received):
                parsed = parse(message.content)
                if parsed is None and drop_unreadable and await poison.delete(message):
                    entries.append(_message_entry(message.id, None, "dropped", DROPPED))
                    log.warning(
                        "operator replay-poison: deleted unreadable message %s from %s", message.id, poison.name
                    )
                    handled = index + 1
                    progress.update(1)
                    continue
                if parsed is None:
                    entries.append(_message_entry(message.id, None, "left", UNREADABLE))
                    await poison.release(message)  # visible again at once: a dry run just after shows it
                    handled = index + 1
                    progress.update(1)
                    continue
                fate = await _fate(ctx, parsed)
                if fate[0] == "blocked":  # left in the poison queue: it would only be poisoned again
                    entries.append(_message_entry(message.id, parsed, "left", fate))
                    await poison.release(message)
                    handled = index + 1
                    progress.update(1)
                    continue
                try:
                    await main.send(message.content)
                except QueueMissing:
                    missing = True
                    problems.append(
                        f"the queue {main.name} does not exist in this host storage: is it the function app's? "
                        "(the message stays in the poison queue)"
                    )
                    break
                action = "moved"
                handled = index + 1
                if not await poison.delete(message):
                    action = "moved-copy-left"
                    problems.append(
                        f"{parsed.task_id}: sent back, but it could not be deleted from {poison.name} (it became "
                        "visible again while being moved); a later replay moves the copy (harmless)"
                    )
                expected = "its outcome not foreseen" if fate[0] == "unknown" else f"foreseen: {fate[0].upper()}"
                if ctx.storage is not None:
                    note = f"replay-poison: {expected} ({fate[1]})"
                    await _note_replayed(ctx.storage, parsed, note, ctx.now)
                level = logging.ERROR if fate[0] == "fail" else logging.WARNING
                log.log(
                    level,
                    "operator replay-poison task=%s workspace=%s delivery=%s: moved back; %s (%s)",
                    parsed.task_id,
                    parsed.workspace_id,
                    parsed.delivery[:12],
                    expected,
                    fate[1],
                    extra=operator_record(
                        "replayed",
                        parsed.task_id,
                        parsed.workspace_id,
                        delivery=parsed.delivery,
                        reason=f"moved back; {expected} ({fate[1]})",
                        final=fate[0] == "fail",
                    ),
                )
                entries.append(_message_entry(message.id, parsed, action, fate))
                progress.update(1)
        finally:
            # Stopped early (the queue missing, a refusal, an error): the rest is visible again at once, as any
            # message left, so the next look sees it; what is still refused shows again in two minutes.
            for unmoved in received[handled:]:
                with contextlib.suppress(Exception):
                    await poison.release(unmoved)
            progress.close()
    blocked = sum(1 for entry in entries if entry["will"] == "blocked")
    if blocked:  # each row says which policy: named once here, the problem that sets the exit code
        problems.insert(
            0,
            f"{blocked} message(s) BLOCKED: they stay in the poison queue until what refuses them is fixed (each row "
            "says what: a retention policy or legal hold to lift, or a task record to restore), then replay them",
        )
    moved = sum(1 for entry in entries if entry["action"] in ("moved", "moved-copy-left", "would-move"))
    left = sum(1 for entry in entries if not entry["readable"] and "drop" not in entry["action"])
    dropped = sum(1 for entry in entries if entry["action"] in ("dropped", "would-drop"))
    fates = {
        fate: sum(1 for entry in entries if entry["will"] == fate)
        for fate in ("finish", "duplicate", "superseded", "waiting", "fail", "ended", "unknown", "blocked")
    }
    data = {
        "dryRun": dry_run,
        "queue": main.name,
        "poisonQueue": poison.name,
        "waitingBefore": waiting,
        "moved": 0 if dry_run else moved,
        "wouldMove": moved if dry_run else 0,
        "leftUnreadable": left,
        "droppedUnreadable": dropped,
        "will": fates,
        "messages": entries,
        "problems": problems,
    }
    text: list[str] = []
    for entry in entries:
        what = (
            f"{entry['taskId']}  {entry['workspaceId']}  {entry['delivery']}"
            if entry["readable"]
            else f"(unreadable message {entry['messageId']})"
        )
        text.append(f"{entry['action']:<15} {entry['will'].upper():<10} {what}")
        text.append(f"{'':<15} {'':<10} {entry['why']}")
    counted = ", ".join(f"{number} {fate}" for fate, number in fates.items() if number)
    if dry_run:
        cap = f" (a dry run shows at most {PEEK_LIMIT})" if limit > PEEK_LIMIT and len(entries) == PEEK_LIMIT else ""
        text.append(
            f"Dry run: {moved} message(s) would move back to {main.name}{cap}"
            f"{': ' + counted if counted else ''}; nothing changed."
        )
    else:
        counts = f": {counted}" if counted else ""
        text.append(f"Moved {moved} message(s) from {poison.name} back to {main.name}{counts}.")
    text += problems
    if waiting:
        text.append(f"About {waiting} message(s) were waiting in {poison.name} (hidden ones included).")
    if dropped:
        text.append(f"{dropped} unreadable message(s) {'would be' if dry_run else 'were'} deleted from {poison.name}.")
    if not dry_run and waiting > moved + left + dropped and not problems:
        text.append(f"More may wait in {poison.name} (--max {limit}): run it again to move the rest.")
    if left:
        text.append(
            f"{left} unreadable message(s) stay in {poison.name}: nothing can read them (not a verification "
            "message; the queue function would drop them too). Remove them with python -m ops replay-poison "
            "--drop-unreadable (see them first with --dry-run)."
        )
    if fates["fail"]:
        text.append(
            "Messages marked FAIL will be failed by the queue function: export those documents again from "
            "SmartDocumentor (look in its archive too: a request answered 202 for one archived it)."
        )
    return Result(STORAGE if missing else NOT_FOUND if left or problems else OK, data, text)
