"""The task's state machine: one pure ``decide``, and the table of every arrow. No I/O here.

Every driver (the webhook, the queue function, the reconciliation, the operator command line)
runs the same loop (:mod:`receiver.engine`): observe the task record and the blob, ask
:func:`decide` for the next step, apply it (every write conditional), and on a conflict observe
again. A step is one batch of storage requests sent side by side; the loop ends with an
:class:`Answer`. Because all four ask the same function, the queue function and the reconciliation
cannot disagree about what a task needs; a replay's dry run runs that loop itself, its writes kept in
memory (``ops/imagined.py``).

The states of a delivery in its record (docs/reference.md, "The task record"):

- ``copying``: accepted, bytes not committed yet (a staged copy of a large file, or an answer lost);
- ``stored``: committed; exactly one delivery of a task is ``stored``, and it is ``current``;
- ``superseded``: a newer export was accepted before this one was stored, or replaced it;
- ``failed``: the copy can never succeed.

"Newest" is the record's order: a delivery is superseded when a delivery accepted after it is
``stored`` or ``copying``. The arrows are listed in :data:`ARROWS`; docs/state-machine.md's table is
generated from it (``python -m devtools.state_machine_page``; ``python -m receiver.machine`` prints it),
and a test keeps the two equal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from .models import COPY_ID, COPYING_STEPS, Delivery, Driver, Retirement, State, Step, TaskRecord, with_step
from .plan import has_manifest_name, of_another_task
from .storage import Blob

# --- what a driver knows and sees -----------------------------------------------------------------


@dataclass(frozen=True)
class Notice:
    """The delivery an event is about: what the payload (or the queue message) says of it."""

    workspace_id: str
    task_id: str
    delivery: str
    blob: str
    received_at: datetime
    link_expires_on: datetime | None
    manifest: dict[str, object]
    large: bool = False  # known to be above SYNC_COPY_MAX_MIB: staged in blocks, never Copy Blob From URL


Unseen = Literal["unseen"]
UNSEEN: Unseen = "unseen"
# What this driver's last copy or commit answered, when it did not land: the blob existed (a create),
# the blob changed (If-Match), the answer was lost, the source is too large for Copy Blob From URL,
# the source was refused or is gone, a retention policy refused it, or staging ran out of the
# answer's time.
Attempt = Literal["exists", "changed", "lost", "too-large", "source-refused", "source-gone", "immutable", "unfinished"]
# A blob holding a delivery the record does not know, written this recently, may be another
# driver's copy on its way to being recorded: it is never overwritten. Older, it is an orphan
# (a driver that crashed between its copy and its record), and a newer export replaces it.
IN_FLIGHT = timedelta(minutes=2)
# A driver records a copy the record does not know within this of the copy's answer, or leaves it
# to a retry: inside IN_FLIGHT with room for the record write's own retries (about a minute at
# most, receiver/store.py), so a file older than that is an orphan indeed.
RECORD_WITHIN = timedelta(seconds=30)
# No driver still sends this long after its delivery last changed in the record: the host stops a function after
# host.json's functionTimeout (5 minutes), and a request it sent ends within its server timeout.
DRIVER_LIFETIME = timedelta(minutes=10)


@dataclass(frozen=True)
class Seen:
    """What one driver has observed of a task so far, in this step of its loop."""

    record: TaskRecord | None = None
    record_etag: str | None = None  # None: the record does not exist
    record_read: bool = False
    blob: Blob | Unseen | None = UNSEEN  # the blob at the notice's name (a sweep: at ``watched``)
    watched: str | None = None  # the name ``blob`` was read at
    manifest: Blob | Unseen | None = UNSEEN  # the manifest beside it (read when a write over it is coming)
    copied: bool = False  # this driver's own copy or commit put the blob there (``blob`` is what it wrote)
    attempt: Attempt | None = None
    large: bool = False  # above SYNC_COPY_MAX_MIB, or refused by Copy Blob From URL: staged in blocks
    retired: frozenset[str] = frozenset()  # retirements (Retirement.key) this driver carried out
    deferred: frozenset[str] = frozenset()  # retirements that failed: left listed for the next driver
    kept: frozenset[str] = frozenset()  # of the retired, names left alone: they no longer held the delivery
    manifest_done: bool = False  # this driver made sure of the manifest (a verifier's duplicate)
    # Manifests of names to retire, read beside the change that listed them (None: absent), so the
    # deletes that follow are If-Match without another round trip.
    peeked: tuple[tuple[str, Blob | None], ...] = ()
    concluded: str | None = None  # the arrow of this driver's change that made the notice current
    changed: str | None = None  # the arrow of this driver's last change to the record
    policy: str | None = None  # "retention policy" | "legal hold": what refused this driver's write
    locked: str | None = None  # the container's own policy (known before anything is written)
    fence: bool = False  # this driver's change asks for a fence on its file (see :class:`Fence`)
    blind: bool = False  # the look after a lost answer failed too: what the blob holds is not known
    rechecked: str | None = None  # the blob version the record was read again for before overwriting it
    fenced: str | None = None  # the version this driver's own fence made (a sweep fences before it adopts)
    redirected: bool = False  # decided at a name other than the notice's (the record's: Observe ``at``)
    began_attempt: bool = False  # this driver wrote the first step of its delivery's current attempt (accepted it)


# --- the steps decide returns ---------------------------------------------------------------------


@dataclass(frozen=True)
class Observe:
    """Read the blob at the notice's name (a sweep: the record, then the blob of what is copying).
    The record itself is read again only after a conflict on it. ``manifest``: its manifest too."""

    arrow: str = "observe"
    manifest: bool = False
    record: bool = False  # the record too (before overwriting a file its last read may be behind)
    # The name the record holds the delivery at, when the notice's is another (an earlier template's):
    # from here on the delivery is decided there, as a retry under that template would be.
    at: str | None = None


@dataclass(frozen=True)
class Copy:
    """Copy Blob From URL onto the notice's name: create (``if_match`` None) or over that version."""

    if_match: str | None
    arrow: str = "copy"


@dataclass(frozen=True)
class Stage:
    """Stage the source in blocks and commit them in one Put Block List over ``if_match`` (None: create)."""

    if_match: str | None
    arrow: str = "stage"


@dataclass(frozen=True)
class WriteManifest:
    """The delivery's manifest beside its file, and the file's Content-Type: written only while the
    file still holds that delivery (created, or over the manifest there, If-Match on what was read).
    ``document`` is the payload part (plan.manifest); the record adds its story."""

    blob: str
    delivery: str
    document: dict[str, object]


@dataclass(frozen=True)
class Retire:
    """Delete a retired export's file and manifest, each only while it still holds that delivery.
    ``manifest`` False: this driver's own copy, whose manifest it never wrote."""

    retirement: Retirement
    manifest: bool = True


@dataclass(frozen=True)
class Fence:
    """Set the file's headers again (If-Match on the version this driver records or just recorded): a
    copy another delivery prepared over that version then fails instead of landing after the record.
    Its ``copyid`` stays: a retirement listed for that copy still finds it."""

    blob: str
    delivery: str


Effect = WriteManifest | Retire | Fence


@dataclass(frozen=True)
class Change:
    """Compare-and-swap the record to ``record`` (If-Match on the ETag read; create when there was
    none), with ``effects`` sent side by side: each is safe whether or not the swap wins."""

    record: TaskRecord
    arrow: str
    effects: tuple[Effect, ...] = ()
    observe: bool = False  # read the blob and its manifest side by side with the swap
    fence: bool = False  # a delivery accepted at the same name was superseded: fence its copy off after


@dataclass(frozen=True)
class Apply:
    """Effects with no record change (retirements, removing a copy nobody needs)."""

    effects: tuple[Effect, ...]
    arrow: str


Kind = Literal["stored", "duplicate", "superseded", "copying", "failed", "waiting", "nothing"]


@dataclass(frozen=True)
class Answer:
    """How the loop ends. ``status`` is the webhook's HTTP status; ``enqueue``: the queue function
    must finish this delivery (a staged copy still running, or a copy whose answer was lost)."""

    kind: Kind
    status: int
    arrow: str
    error: str | None = None
    reason: str | None = None
    enqueue: bool = False


Decision = Observe | Copy | Stage | Change | Apply | Answer

# --- the table --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arrow:
    name: str
    source: str  # the delivery's state before ("new": not in the record)
    target: str  # after
    who: str
    when: str


# An arrow a paragraph: "name | from | to | who |", then when it is taken (indented lines).
# docs/state-machine.md shows this table.
_TABLE = """
stored | new, copying, failed, superseded | stored | webhook, verifier |
    its own copy or commit landed and no delivery accepted after it is stored; the deliveries before it become
    superseded, and a replaced file under another name is listed to retire
adopted | new, copying, superseded | stored | any driver |
    the blob at its name already holds its bytes (a copy whose answer was lost, a crash before the record), no
    delivery accepted after it is stored, the record does not list them to retire, and no other delivery at that
    name may still send a copy over them (else a webhook or verifier copies them again; the reconciliation fences
    the file, and leaves bytes listed to retire to their retirement); adopted bytes are fenced after the swap (a
    copy another prepared over them from a view since outdated then fails); or its late copy replaced the
    current file, which was not put back (a current delivery accepted after it then fails: the record follows it)
duplicate | stored | stored | webhook, verifier |
    the same delivery again while it is current and its file holds it: nothing is written but the removal of a
    copy of it this request left under today's name (listed to retire first when its answer was lost), and a
    fence when another delivery copying (or failed, or superseded while copying) at that name may still commit
    over the file (only while that delivery changed within DRIVER_LIFETIME: no driver of it sends later; a policy
    refusing the fence, or its manifest's rewrite: 503); one current under an earlier template's name is then
    decided there, from its file
restored | stored, failed | stored | webhook, verifier |
    the same delivery again while it is current, but its file was gone or held an older export: the copy (a large
    file: the staged commit) put it back; the current delivery is never accepted again as `copying`. Also its own
    driver, right after storing it, when an older export's late copy replaced the file (and the record followed it).
    And when its file holds another copy of it than the record's (deleted and copied again by a retry whose answer
    was lost, or a restore whose record write failed): that copy is recorded as its file, so retirements follow it
superseded | any | unchanged (new: superseded) | webhook, verifier |
    a delivery accepted after it is stored or copying: nothing is copied; a file of it at a name of its own (a
    copy made before the record was read) is removed If-Match (one another driver left: listed to retire first).
    A delivery the record does not hold yet (a stalled request, a queued one whose webhook answered 503 first) is
    put in it before the deliveries the receiver received after it: superseded when one of them is stored
accepted | new, failed, superseded | copying | webhook, verifier |
    its copy would overwrite a file: recorded first, at that very name (one accepted under an earlier template is
    accepted again at today's), so a crash after the copy leaves it tracked; earlier copying deliveries become
    superseded
accepted-staged | new, failed, superseded | copying | webhook, verifier |
    a large file: accepted before its blocks are staged; earlier copying deliveries become superseded
queued | new, copying | copying | webhook, verifier |
    the staged copy cannot finish inside the answer, or another copy of the task is in flight at its name, or a
    retention policy or legal hold refuses a resend of a delivery still copying: 202, the queue function finishes it
unconfirmed | new, copying | copying | webhook, verifier |
    a copy was sent and its answer lost, and the blob does not hold it: tracked, 503, the queue function finishes
    or restarts it (the current delivery stays stored and current: only the 503)
source-failed | new, copying, stored | failed (when it was in the record) | webhook, verifier |
    the service could not read the source (the link refused or the file gone): a final failure; a current
    delivery whose file another accepted delivery's late copy replaced fails so, and that one is current
expired | new, copying, stored | failed | any driver |
    its link expired before the copy finished (or before its file, replaced by an earlier export's late copy,
    was put back): nothing can finish it; bytes of it left at its name and not adopted are listed to retire (a
    driver still recording them copies again first, so the listing misses its file)
promised | copying | copying | webhook |
    a resend answered 202 while another driver's attempt holds the delivery (its copy in flight or staging): noted
    in its history first (a step `promised`; not under a container policy, which refuses it), so the driver that
    ends that attempt failed raises the alert, also when it began the attempt itself and told its own sender
waiting | copying | copying | reconciliation |
    its link is valid and its queue message may still finish it: left as it is
operator-failed | copying | failed | operator |
    an operator gave it up (the reason says how to retry)
repaired | stored | stored | reconciliation, operator |
    the current file holds its delivery but its manifest is missing or describes another (a driver stopped between
    the record and the manifest): the manifest is written again from the record
behind | new, copying, failed, superseded | copying | webhook, verifier |
    a delivery accepted after it is still copying: it waits (202, its queue message retries), superseded once that
    one is stored, copied again if that one fails (a new one received before it is put in the record before it)
immutable | any | unchanged | webhook, verifier |
    a retention policy or legal hold refused the write: nothing half-done, 409
kept-name | copying, failed | unchanged | webhook, verifier |
    a delivery a template change moved once, arriving at another name (not its first, nor the current file's),
    is decided at the name it moved to, never moved again (the record keeps one earlier name, where a copy of it
    may still land); a copy of it this request made there is removed first (one an earlier try left there is
    listed to retire, then removed)
name-taken | new, copying | failed (when it was in the record) | webhook, verifier |
    the file at its name is another task's (its metadata names another workspaceId or taskId: a template change
    gave two tasks one name): nothing is written over it, 409; one the record holds at another name (current
    under an earlier template's name, or accepted there before) is decided at that name instead
retire | superseded (its name listed to retire) | name deleted, dropped from the list | any driver |
    after the record lists the name: the file and its manifest are deleted only while they still hold the retired
    delivery (If-Match; a version changed since is followed only while it is the same copy, its copyid); the
    record then drops the name and adds a step `retired` (the names deleted, the driver; a name another wrote
    since is left in place, said in its note) to that delivery's history
"""


def _arrows(table: str) -> tuple[Arrow, ...]:
    found = []
    for paragraph in re.split(r"\n(?=\S)", table.strip()):
        head, when = paragraph.split("\n", 1)
        name, source, target, who = (cell.strip() for cell in head.rstrip(" |").split(" | "))
        found.append(Arrow(name, source, target, who, " ".join(when.split())))
    return tuple(found)


ARROWS = _arrows(_TABLE)

# --- helpers on the record --------------------------------------------------------------------------


def watched_copying(record: TaskRecord) -> Delivery | None:
    """The delivery a sweep looks at: the newest still copying (it decides the task's next file; the
    ones before it are superseded when it is stored, and go on if it fails)."""
    return next((item for item in reversed(record.deliveries) if item.state is State.COPYING), None)


def _new_record(notice: Notice) -> TaskRecord:
    return TaskRecord(workspace_id=notice.workspace_id, task_id=notice.task_id)


def _entry(notice: Notice, record: TaskRecord | None) -> Delivery:
    found = record.find(notice.delivery) if record is not None else None
    if found is not None:
        # Its manifest document goes with it again (a superseded delivery's was dropped).
        return found if found.manifest else found.model_copy(update={"manifest": dict(notice.manifest)})
    return Delivery(
        delivery=notice.delivery,
        blob=notice.blob,
        state=State.COPYING,
        received_at=notice.received_at,
        link_expires_on=notice.link_expires_on,
        manifest=dict(notice.manifest),
    )


def _overtaken(record: TaskRecord, notice: Notice, now: datetime, by: Driver) -> TaskRecord | None:
    """A delivery the record does not hold yet (a request that stalled, or a queued one whose webhook answered
    503 before recording it), when the record holds one the receiver received after it (answered, and
    archived by SmartDocumentor if 2xx): it is put in the record before that one, so it never replaces it:
    superseded when a later one is stored, else copying behind the later ones still copying (copied again if
    they all fail, as any delivery waiting behind). Then it is decided as any delivery so recorded."""
    # A queue message's receive time is an earlier request's: one the record holds received at that very instant
    # (an earlier answer of which may have been a 2xx) is taken as the later, so it is never replaced by it.
    ties = by == "verifier"
    later = [
        n
        for n, item in enumerate(record.deliveries)
        if (item.received_at > notice.received_at or (ties and item.received_at == notice.received_at))
        and item.state is not State.FAILED
    ]
    if not later:
        return None
    # Before the first of them (a failed one received after it may sit earlier in the list: it changes nothing),
    # and decided by what follows it there: superseded when one is stored, else behind (its bytes may already
    # be at its name, even when its link has expired: the reconciliation adopts them if those fail).
    stored = any(item.state is State.STORED for item in record.deliveries[later[0] :])
    state = State.SUPERSEDED if stored else State.COPYING
    note = "overtaken: a delivery received after it was recorded first"
    step = Step(at=now, by=by, outcome=state.value, note=note)
    # It keeps its manifest document: behind one still copying, it is copied again if that one fails.
    entry = _entry(notice, None).model_copy(update={"state": state, "history": [step], "staged": notice.large})
    items = list(record.deliveries)
    items.insert(later[0], entry)
    return record.model_copy(update={"deliveries": items})


def _put(record: TaskRecord, entry: Delivery) -> list[Delivery]:
    """The record's deliveries with ``entry`` in its place, or appended (accepted now)."""
    items = list(record.deliveries)
    for number, item in enumerate(items):
        if item.delivery == entry.delivery:
            items[number] = entry
            return items
    return [*items, entry]


def conclude_stored(
    record: TaskRecord,
    entry: Delivery,
    *,
    blob: Blob,
    now: datetime,
    by: Driver,
    outcome: str,
) -> TaskRecord:
    """``entry`` is committed at ``entry.blob`` (the version ``blob``): it becomes the current file.
    Every delivery accepted before it that is stored or copying becomes superseded; a replaced file
    under another name is listed to retire, and so is the name of a superseded copy (it may still
    land there: deleted only if it does). A delivery accepted after it and still copying goes on (it
    will replace this one). The same delivery stored before under another name (the template changed)
    moves: its earlier name is retired."""
    name = entry.blob
    position = record.index(entry.delivery)
    replaced: list[Retirement] = []
    items: list[Delivery] = []
    for number, item in enumerate(record.deliveries):
        earlier = position < 0 or number < position
        superseded = item.state in (State.STORED, State.COPYING) and (earlier or item.state is State.STORED)
        moves = item.delivery == entry.delivery or superseded
        if moves and item.moved_from is not None and item.moved_from not in (name, item.blob):
            # The name it was accepted at under an earlier template: a copy it sent there may still land.
            replaced.append(Retirement(blob=item.moved_from, delivery=item.delivery))
        if item.delivery == entry.delivery:
            if item.blob != name:
                replaced.append(
                    Retirement(blob=item.blob, delivery=item.delivery, etag=item.etag, copy_id=item.copy_id)
                )
        elif superseded:
            if item.blob != name:
                known = item.state is State.STORED
                etag, copy_id = (item.etag, item.copy_id) if known else (None, None)
                replaced.append(Retirement(blob=item.blob, delivery=item.delivery, etag=etag, copy_id=copy_id))
            step = Step(at=now, by=by, outcome="superseded", note=f"replaced by {entry.delivery[:12]}")
            # At this very name its late copy may still land over the new file: the record keeps what its
            # manifest says until the next file replaces this one (then the record follows the file).
            keep = item.manifest if item.blob == name else None
            # Its earlier name is kept when it is this very name: a copy it sent there may still land over the new file.
            here = item.moved_from if item.moved_from == name else None
            update = {"state": State.SUPERSEDED, "history": with_step(item, step), "manifest": keep, "moved_from": here}
            item = item.model_copy(update=update)
        elif item.state is State.SUPERSEDED and item.manifest:
            item = item.model_copy(update={"manifest": None})
        items.append(item)
    stored = entry.model_copy(
        update={
            "blob": name,
            "state": State.STORED,
            "etag": blob.etag,
            "copy_id": blob.metadata.get(COPY_ID),
            "moved_from": None,
            "completed_at": now,
            "failed_at": None,
            "failure_reason": None,
            # Kept while it is current: whoever finds its manifest missing (the reconciliation) writes it again.
            "manifest": entry.manifest,
            "history": with_step(
                entry,
                Step(
                    at=now,
                    by=by,
                    outcome=outcome,
                    status=200,
                    retired=[item.blob for item in replaced if item.blob != name] or None,
                ),
            ),
        }
    )
    # The new file's own name is never retired (an export that came back to an earlier name).
    retire = [item for item in [*record.retire, *replaced] if item.blob != name]
    unique = list({item.key: item for item in retire}.values())
    updated = record.model_copy(update={"current": entry.delivery, "retire": unique, "deliveries": items})
    return updated.model_copy(update={"deliveries": _put(updated, stored)})


def replaced_by(record: TaskRecord, delivery: str) -> list[str]:
    """The deliveries ``delivery`` replaced (for its manifest's ``replaced``), newest first."""
    return [
        item.delivery
        for item in reversed(record.deliveries)
        if item.delivery != delivery and item.state is State.SUPERSEDED
    ][:50]


def _with_state(record: TaskRecord, entry: Delivery, state: State, step: Step, **changes: object) -> TaskRecord:
    updated = entry.model_copy(update={"state": state, "history": with_step(entry, step), **changes})
    return record.model_copy(update={"deliveries": _put(record, updated)})


# --- decide -----------------------------------------------------------------------------------------

SUPERSEDED_REASON = "A newer export of this document was received after this one; it is the one kept."


@dataclass(frozen=True)
class Arrival:
    """A notification to store (the webhook), or its queue message (the verifier: ``patient``, it
    may stage for as long as it takes)."""

    notice: Notice
    by: Driver = "webhook"
    patient: bool = False


@dataclass(frozen=True)
class Sweep:
    """The reconciliation (or an operator's check) looking at one task with no payload."""

    now: datetime
    by: Driver = "reconciliation"
    give_up: str | None = None  # an operator's reason to fail a delivery still copying: one of ``giving_up``
    giving_up: frozenset[str] = frozenset()  # the deliveries the operator checked before (one accepted since is not)
    verify: bool = False  # also make sure the current file's manifest describes it (recently changed tasks)
    manifests: bool = True  # WRITE_MANIFEST: off, a missing or stale manifest is left as it is (none is written)


Event = Arrival | Sweep


def decide(seen: Seen, event: Event, now: datetime) -> Decision:
    """The next step for ``event`` given what was ``seen``. Pure; see :data:`ARROWS`."""
    if isinstance(event, Sweep):
        return _sweep(seen, event)
    return _promised(seen, event, now, _arrival(seen, event, now))


PROMISED_NOTE = "answered 202 while another driver copies it"


def _promised(seen: Seen, event: Arrival, now: datetime, decision: Decision) -> Decision:
    """A webhook's 202 for a delivery whose copying another driver's attempt holds (one it did not begin, also when it
    accepted it again at another name meanwhile) is noted in its history first: the driver that began the attempt may
    end it failed and tell only its own sender (a 502), so this 202 needs the alert then."""
    if not isinstance(decision, Answer) or decision.status != 202 or event.patient or seen.began_attempt:
        return decision
    if seen.locked is not None:  # a container policy refuses every record change, this note too (Known limits)
        return decision
    record = seen.record
    entry = record.find(event.notice.delivery) if record is not None else None
    if record is None or entry is None or entry.state is not State.COPYING:
        return decision
    if any(step.outcome == "promised" for step in entry.attempt):
        return decision  # one such note an attempt is enough: the driver that ends it failed alerts
    step = Step(at=now, by=event.by, outcome="promised", note=PROMISED_NOTE)
    return Change(_with_state(record, entry, State.COPYING, step), "promised")


def _arrival(seen: Seen, event: Arrival, now: datetime) -> Decision:
    notice, by, record, blob = event.notice, event.by, seen.record, seen.blob
    entry = record.find(notice.delivery) if record is not None else None
    base = record if record is not None else _new_record(notice)
    current = record is not None and entry is not None and record.current == entry.delivery
    current_stored = current and entry is not None and entry.state is State.STORED

    if entry is None and record is not None:
        overtaken = _overtaken(record, notice, now, by)
        if overtaken is not None:
            inserted = overtaken.find(notice.delivery)
            return Change(overtaken, "superseded" if inserted and inserted.state is State.SUPERSEDED else "behind")

    elsewhere = current_stored and entry is not None and entry.blob != notice.blob
    # A delivery a newer stored one superseded is answered so, whatever its name holds now (nothing is written).
    superseded = record is not None and entry is not None and _later(record, entry, State.STORED)
    if isinstance(blob, Blob) and _of_another_task(blob, notice) and not elsewhere and not superseded:
        # The file at its name is another task's (a BLOB_NAME_TEMPLATE change gave two tasks one name): nothing
        # is ever written over it. (One current under an earlier template's name is decided there, below.) A
        # delivery the record holds as copying at another name (accepted there before, or moved from there just
        # now: its bytes or its late copy may be there) is decided at that name instead, once.
        copying = entry is not None and entry.state is State.COPYING
        other = (entry.blob if entry.blob != notice.blob else entry.moved_from) if copying and entry else None
        if other is not None and other != notice.blob and not seen.redirected:
            return Observe(at=other)
        if entry is not None and entry.state is State.COPYING:
            step = Step(at=now, by=by, outcome="failed", status=409, note=NAME_TAKEN)
            failed = _with_state(base, entry, State.FAILED, step, failed_at=now, failure_reason=NAME_TAKEN)
            return Change(failed, "name-taken")
        return Answer("failed", 409, "name-taken", error="name-taken", reason=NAME_TAKEN)

    if seen.concluded is not None and record is not None:
        # A delivery accepted after it and still copying does not excuse a file that is not this one's (it may
        # fail): only one stored after it does.
        newer = entry is not None and _later(record, entry, State.STORED)
        if seen.fence and isinstance(blob, Blob) and blob.delivery == notice.delivery and not newer:
            # Another delivery accepted at this name may still be sending a copy over the file read before
            # this change: change the file's ETag so that copy fails (a copy that came first shows here).
            return Apply((Fence(notice.blob, notice.delivery),), seen.concluded)
        ours = isinstance(blob, Blob) and blob.delivery == notice.delivery
        # One failed since it was stored here (the record followed an older delivery's late copy over its file)
        # is put back too: this driver has its link (seed 12667516: it once answered 200 for bytes not there).
        followed = entry is not None and entry.state is State.FAILED
        restorable = (current_stored or followed) and not newer and not ours and entry is not None
        if restorable and entry is not None and _stale(record, entry, blob, now):
            # An older delivery's copy landed over this one's file after it was recorded: it goes back.
            if _behind(seen, record, blob):
                return Observe(record=True)
            return Copy(blob.etag if isinstance(blob, Blob) else None, arrow="restored")
        return _retire_or_answer(seen, record, now, by)

    if current_stored and record is not None and entry is not None and entry.blob != notice.blob:
        # Stored and current under the name an earlier template gave it. A copy this driver made under
        # today's name is removed; one whose answer was lost is looked for, and one found there is listed
        # in the record first (a swap), then removed like any retirement. Then the delivery is decided at
        # its recorded name, from its file there: a duplicate only while that file holds it.
        return (
            _stray_first(seen, record, notice, now, by, "duplicate")
            or _clear_retired(seen, record, now, by)
            or Observe(manifest=True, at=entry.blob)
        )

    moved_once = entry is not None and entry.moved_from is not None and entry.state in (State.COPYING, State.FAILED)
    # Not at its first name (a late copy of it there may be over the current file), nor at the current file's.
    current_name = record.current_delivery.blob if record is not None and record.current_delivery is not None else None
    elsewhere_now = entry is not None and notice.blob not in (entry.blob, entry.moved_from, current_name)
    # At the current file's name, a third one, it is decided at its recorded name too, unless the file there holds
    # it (its late copy over the current file: decided there, the way it was before).
    at_current = entry is not None and notice.blob == current_name and notice.blob not in (entry.blob, entry.moved_from)
    if moved_once and record is not None and entry is not None and at_current and not seen.redirected:
        if blob == UNSEEN:
            return Observe()
        if not (isinstance(blob, Blob) and blob.delivery == notice.delivery):
            return Observe(at=entry.blob)
    if moved_once and record is not None and entry is not None and elsewhere_now and not seen.redirected:
        # Moved once by a template change: decided at the name it moved to, never moved again (the record keeps one
        # earlier name, where a copy of it may still land, and fences count it there). A copy this request made at
        # today's name is removed first; one an earlier try left there is listed, then removed.
        return _stray_first(seen, record, notice, now, by, "kept-name") or Observe(at=entry.blob)

    if isinstance(blob, Blob) and blob.delivery == notice.delivery:
        # The blob holds this delivery's bytes: recorded as the current file, unless a delivery accepted
        # after it is stored (then it is a stale file: removed, unless it sits at the current file's name).
        if record is not None and entry is not None and _later(record, entry, State.STORED):
            at_current = record.current_delivery is not None and record.current_delivery.blob == blob.name
            if at_current and seen.rechecked != blob.etag:
                # Its bytes at the current file's name (its create landed there, its answer perhaps lost): that file
                # was gone, so the record read may be behind (a renamed re-export retired the name meanwhile): read
                # once more before deciding on them.
                return Observe(record=True)
            if at_current:  # still the current file's name: its driver puts that file back (a restore)
                return Answer("superseded", 200, "superseded", reason=SUPERSEDED_REASON)
            # This driver's own copy goes at once (If-Match on what it wrote: whoever wants the name changes
            # it first). One it found is listed in the record first (a swap): a record that moved on since it
            # was read (a newer delivery made current at this very name) is seen before anything is deleted.
            stale = _listing(blob, notice.delivery)
            return _remove_stray(seen, record, stale, (now, by), "superseded") or Answer(
                "superseded", 200, "superseded", reason=SUPERSEDED_REASON
            )
        recorded = entry is not None and (not seen.copied or entry.etag == blob.etag)  # these very bytes
        # Another copy of it than the one recorded (a retry's create-only copy landed at a name retired since the
        # record was read, its answer lost): the record may have moved on; read once more before answering. Still
        # current there (its file deleted and copied again, or a restore whose record write failed), that copy is
        # recorded as its file (restored), so a later retirement follows it; then answered as stored.
        copy_id = blob.metadata.get(COPY_ID)
        # (an entry from before copyids has none: a file with one is a copy made since)
        other_copy = entry is not None and copy_id is not None and copy_id != entry.copy_id
        if current_stored and other_copy and entry is not None:
            if seen.rechecked != blob.etag:
                return Observe(record=True)
            if entry.blob == notice.blob and not seen.locked:
                stored = conclude_stored(base, entry, blob=blob, now=now, by=by, outcome="restored")
                effects = (WriteManifest(notice.blob, notice.delivery, notice.manifest),)
                return Change(stored, "restored", effects, fence=True)
        if current_stored and entry is not None and entry.blob == notice.blob and recorded:
            # A duplicate is answered once its manifest describes it too (the first request's manifest
            # write may still be failing): written here when it does not.
            if seen.manifest == UNSEEN and not seen.manifest_done:
                return Observe(manifest=True)
            described = isinstance(seen.manifest, Blob) and seen.manifest.delivery == notice.delivery
            # Under a container policy only a missing one can be written (a create; an overwrite is refused): one
            # that describes another delivery stays so until the policy is lifted, and nothing is confirmed before.
            if not described and not seen.manifest_done and seen.locked is not None and seen.manifest is not None:
                if event.patient:  # the queue function's: tried again until it is lifted (the manifest then written)
                    return Answer("failed", 409, "immutable", error="immutable", reason=seen.locked, enqueue=True)
                return Answer(
                    "failed", 503, "duplicate", error="storage-unavailable", reason=_manifest_held(notice, seen.locked)
                )
            if not described and not seen.manifest_done:
                return Apply((WriteManifest(notice.blob, notice.delivery, notice.manifest),), "duplicate")
            # A 2xx for the file as it is: a copy another delivery at this name prepared over this version (its
            # driver alive, its view older) could still replace it, so it is fenced first (the fence after the
            # record, by the driver that stored it, may have failed: seed 11617866). That record superseded the
            # ones still copying there, whose drivers may still be sending (seed 100187129): only while such a driver
            # may be alive (DRIVER_LIFETIME). A policy on the file or the container that refuses the fence: 503, as it
            # may be lifted before such a copy lands.
            alive = now - DRIVER_LIFETIME
            may_land = _copies_may_land(base, notice.blob, notice.delivery, adopted=False, cut_short=True, since=alive)
            if may_land and seen.fenced is None:
                return Apply((Fence(notice.blob, notice.delivery),), "duplicate")
            return Answer("duplicate", 200, "duplicate")
        # Bytes this driver did not write just now are recorded as they are (adopted) only while no other
        # delivery at that name may still send a copy prepared over that version; else they are copied
        # again over it below (a copy replaces the version atomically: such a copy then fails). Under a
        # retention policy nothing can be copied over them, by anyone: they are adopted as they are.
        locked = seen.attempt == "immutable"
        # Nor bytes the record lists to retire (a failure's, from a view this change overrides): that delete
        # may be on its way, and it follows these very bytes; a copy over them gives the name another copy,
        # which it does not follow. This driver's own copy too, when a failure listed it meanwhile.
        doomed = _doomed(base, blob) and not locked
        if doomed and seen.copied:
            return Stage(blob.etag) if seen.large else Copy(blob.etag)
        adoptable = not doomed and not _copies_may_land(base, notice.blob, notice.delivery, adopted=True)
        if seen.copied or locked or adoptable:
            arrow = ("restored" if current else "stored") if seen.copied else "adopted"
            # Adopted bytes are always fenced after the swap: another delivery's copy may have been prepared over
            # that version from a listing of its earlier name that one look has dropped since (it was not there).
            adopting = not seen.copied and not locked
            fence = adopting or _copies_may_land(base, notice.blob, notice.delivery, adopted=not seen.copied)
            moved = _entry(notice, record).model_copy(update={"blob": notice.blob})  # today's name (template)
            stored = conclude_stored(base, moved, blob=blob, now=now, by=by, outcome=arrow)
            effects = (WriteManifest(notice.blob, notice.delivery, notice.manifest),)
            return Change(stored, arrow, effects, fence=fence)

    if record is not None and entry is not None and _later(record, entry, State.STORED):
        elsewhere = record.current_delivery is None or record.current_delivery.blob != notice.blob
        # A file at its own name may be a copy of it that landed (late): removed. At the current file's name too when
        # its create's answer was lost: it landed only if that file was gone (retired since the record was read).
        if blob == UNSEEN and (seen.attempt == "lost" or (seen.attempt == "exists" and elsewhere)):
            return Observe()
        return _clear_retired(seen, record, now, by) or Answer(
            "superseded", 200, "superseded", reason=SUPERSEDED_REASON
        )
    waits = record is not None and entry is not None and not seen.copied and not current_stored
    if waits and record is not None and entry is not None and _later(record, entry, State.COPYING):
        # A newer export is still copying: this one waits for it (superseded once it is stored; copied
        # again if it fails), tracked in the record and by its queue message. The current delivery itself
        # never waits (its duplicate is a duplicate). A copy of it this try's create may have left at a name the
        # record does not hold it at (a try under another template, its answer lost) is removed by the queue
        # function's try (its message carries that name), before it waits again: left, it stays for good once the
        # delivery fails. The webhook answers 202 at once, as it always did (under a container policy placed since
        # its process asked, a look and a listing would turn that 202 into a 409).
        astray = notice.blob not in (entry.blob, entry.moved_from)
        stray = _stray_first(seen, record, notice, now, by, "behind") if astray and event.patient else None
        if stray is not None:
            return stray
        if entry.state is State.COPYING:
            return Answer("copying", 202, "behind", enqueue=True)
        step = Step(at=now, by=by, outcome="copying", note="waits for a newer export still copying")
        return Change(_with_state(base, entry, State.COPYING, step, staged=seen.large), "behind")

    def final(answer: Answer, reason: str) -> Decision:
        """A failure nothing can undo: an accepted delivery fails in the record; a current one whose file
        another's late copy replaced fails too, and the record follows the file; else only the answer.
        Bytes of this delivery left at its name (not adopted: another delivery there may still copy, or
        its driver crashed) are listed to retire with the failure, so no file is left that no record names."""
        # A fresh copy too (its driver may have crashed): if that driver is alive and records it, it fences
        # its file first (a new copyid, since the record lists the name), and this retirement misses it.
        own = isinstance(blob, Blob) and blob.delivery == notice.delivery and not current_stored
        # Never the current file's name: what it holds is the current delivery's (and the verifier's) to sort out.
        holding = record.current_delivery if record is not None else None
        own = own and not (holding is not None and isinstance(blob, Blob) and holding.blob == blob.name)
        stale = _listing(blob, notice.delivery) if isinstance(blob, Blob) else None
        if own and stale is not None and stale.key in {item.key for item in base.retire}:
            return _retire(seen, base, now, by) or answer
        if (entry is not None and entry.state is State.COPYING) or (own and stale is not None):
            step = Step(at=now, by=by, outcome="failed", status=answer.status, note=reason)
            failing = entry if entry is not None else _entry(notice, record)
            failed = _with_state(base, failing, State.FAILED, step, failed_at=now, failure_reason=reason)
            if own and stale is not None:
                failed = failed.model_copy(update={"retire": [*failed.retire, stale]})
            return Change(failed, answer.arrow)
        followed = _follow_file(record, blob, now, by, reason) if current_stored and record is not None else None
        return Change(followed[0], answer.arrow, followed[1]) if followed is not None else answer

    if seen.attempt == "immutable":
        policy = seen.policy or "retention policy"
        if entry is not None and entry.state is State.COPYING:
            # A delivery its record tracks (a 202 promised it): a hold is lifted some day, so it is tried again, the
            # record left as it is; the queue function's try again later, and a resend of it is told 202 again.
            if event.patient:
                return Answer("failed", 409, "immutable", error="immutable", reason=policy, enqueue=True)
            return Answer("copying", 202, "queued", enqueue=True)
        # The webhook's: refused, failed for good, so nothing waits for it (the sender is told 409).
        reason = f"A {policy} on the destination container refused replacing the stored file."
        return final(Answer("failed", 409, "immutable", error="immutable", reason=policy), reason)
    if seen.attempt in ("source-refused", "source-gone"):
        reason = SOURCE_REFUSED if seen.attempt == "source-refused" else SOURCE_GONE
        return final(Answer("failed", 502, "source-failed", error="copy-failed", reason=reason), reason)
    if notice.link_expires_on is not None and notice.link_expires_on <= now:
        # Nothing can copy it any more (a queued delivery whose link expired while it waited).
        if blob == UNSEEN or not seen.record_read:
            return Observe()
        return final(Answer("failed", 410, "expired", error="link-expired", reason=EXPIRED_REASON), EXPIRED_REASON)

    if seen.locked is not None:
        # Under a container-level retention policy or legal hold only creates pass: the first export of a
        # task is stored (a file, its manifest, its record: all new); anything that would replace one is
        # refused before a byte is written. A staged copy needs its record changed after it: refused too.
        if not seen.record_read or blob == UNSEEN:
            return Observe()
        # A record that exists must be overwritten to name this delivery (refused), current file or not.
        if record is not None or seen.large or isinstance(blob, Blob):
            # The queue function tries again while the record has not ended the delivery (a hold is lifted some day);
            # a resend of one it tracks copying is told 202 again, as under a hold on the file alone.
            if entry is not None and entry.state is State.COPYING and not event.patient:
                return Answer("copying", 202, "queued", enqueue=True)
            # A stored one (another driver recorded it meanwhile) is not failed either: decided after the lift.
            ongoing = entry is None or entry.state is State.COPYING or (event.patient and entry.state is State.STORED)
            return Answer("failed", 409, "immutable", error="immutable", reason=seen.locked, enqueue=ongoing)
    # Accepted at this very name: one accepted under an earlier template is accepted again here first, so
    # a delivery at this name that is stored meanwhile sees it in the record (and fences its file).
    accepted = entry is not None and entry.state is State.COPYING and (entry.staged or not seen.large)
    accepted = accepted and entry is not None and entry.blob == notice.blob
    if blob == UNSEEN and seen.attempt in ("exists", "too-large") and not accepted and not current_stored:
        # A file is at the name (or the source needs staging): accepted before anything overwrites it,
        # and the file and its manifest read side by side with that.
        return _accept(seen, notice, record, by, now, observe=True)
    if blob == UNSEEN and seen.attempt == "lost" and seen.blind:
        # A copy's answer was lost and the look after it failed too: tracked all the same, so the
        # reconciliation can find it; the queue message finishes it.
        if entry is not None and (entry.state is State.COPYING or current_stored):  # the current file stays current
            return Answer("copying", 503, "unconfirmed", error="storage-unavailable", enqueue=True)
        step = Step(at=now, by=by, outcome="unconfirmed", status=503)
        return Change(_with_state(base, _entry(notice, record), State.COPYING, step, staged=seen.large), "unconfirmed")
    if blob == UNSEEN:
        return Observe(manifest=current_stored)
    if seen.attempt == "lost":
        # A copy was sent, its answer lost, and the blob does not hold it: tracked, then finished by the queue.
        if entry is not None and (entry.state is State.COPYING or current_stored):  # the current file stays current
            return Answer("copying", 503, "unconfirmed", error="storage-unavailable", enqueue=True)
        step = Step(at=now, by=by, outcome="unconfirmed", status=503)
        return Change(_with_state(base, _entry(notice, record), State.COPYING, step, staged=seen.large), "unconfirmed")
    if seen.attempt == "unfinished":
        return Answer("copying", 202, "queued", enqueue=True)

    if blob is None and not seen.large:
        return Copy(None)  # a create destroys nothing: it needs no acceptance first
    if isinstance(blob, Blob) and blob.delivery is not None and (record is None or record.find(blob.delivery) is None):
        modified = blob.last_modified or blob.created
        if modified is not None and now - modified < IN_FLIGHT:
            # Another driver's copy on its way to the record: never overwritten. Tracked, and retried later.
            if accepted or current_stored:
                return Answer("copying", 202, "queued", enqueue=True)
            step = Step(at=now, by=by, outcome="copying", note="another copy of this task was in flight")
            return Change(_with_state(base, _entry(notice, record), State.COPYING, step, staged=seen.large), "queued")
    if current_stored and record is not None and entry is not None:
        # The current delivery is never accepted again (that would make it `copying`): a large one too.
        if not _stale(record, entry, blob, now):
            return Answer("copying", 202, "queued", enqueue=True)
        # The current file holds an older delivery (a copy that raced this one's record, or an orphan):
        # the current delivery puts its own bytes back.
        if _behind(seen, record, blob):
            return Observe(record=True)
        version = blob.etag if isinstance(blob, Blob) else None
        return Stage(version, arrow="restored") if seen.large else Copy(version, arrow="restored")
    if not accepted:
        # Only an accepted delivery overwrites (or stages): a crash after the copy leaves it tracked.
        return _accept(seen, notice, record, by, now, observe=False)
    if _behind(seen, record, blob):
        return Observe(record=True)
    if_match = blob.etag if isinstance(blob, Blob) else None
    return Stage(if_match) if seen.large else Copy(if_match)


def _accept(
    seen: Seen, notice: Notice, record: TaskRecord | None, by: Driver, now: datetime, *, observe: bool
) -> Change:
    note = "staged in blocks" if seen.large else "overwrites the file at its name"
    step = Step(at=now, by=by, outcome="copying", note=note)
    arrow = "accepted-staged" if seen.large else "accepted"
    base = record if record is not None else _new_record(notice)
    # Accepted here, at today's name: one accepted before under an earlier template moves. Its earlier name
    # is retired only once it is stored (a driver of it may still commit there, and then records that name).
    entry = _entry(notice, record)
    moved_from = entry.blob if entry.blob != notice.blob else entry.moved_from
    accepted = _with_state(base, entry, State.COPYING, step, staged=seen.large, blob=notice.blob, moved_from=moved_from)
    return Change(accepted, arrow, observe=observe)


SOURCE_REFUSED = "Azure Storage could not read the exported file: the link was refused."
SOURCE_GONE = "Azure Storage could not read the exported file: it no longer exists."


NAME_TAKEN = (
    "The file at this name belongs to another task (its metadata names another workspaceId or taskId), so "
    "nothing was written over it. Whoever runs the receiver: BLOB_NAME_TEMPLATE gives both tasks this name (most "
    "likely it changed since that file was stored); set it back to the template that file was stored under, then "
    "send the document again. Never move or rename that file: its task's record names it."
)


def _of_another_task(blob: Blob, notice: Notice) -> bool:
    return of_another_task(blob.metadata, notice.workspace_id, notice.task_id)


def _stale(record: TaskRecord, entry: Delivery, blob: Blob | Unseen | None, now: datetime) -> bool:
    """May ``entry``, the current delivery, put its bytes back over what its name holds? Yes when the
    file is gone, holds a delivery accepted before it, or an orphan (unknown, not written just now)."""
    if not isinstance(blob, Blob):
        return blob is None
    holder = record.find(blob.delivery) if blob.delivery else None
    if holder is None:
        modified = blob.last_modified or blob.created
        return modified is None or now - modified >= IN_FLIGHT
    return record.index(holder.delivery) < record.index(entry.delivery)


def _manifest_held(notice: Notice, policy: str) -> str:
    return (
        f"The file {notice.blob} is stored, but a {policy} on the storage refuses rewriting its manifest, which "
        f"describes an earlier export. Send the document again once the {policy} is lifted to confirm it."
    )


def _copies_may_land(
    record: TaskRecord,
    name: str,
    delivery: str,
    *,
    adopted: bool,
    cut_short: bool = False,
    since: datetime | None = None,
) -> bool:
    """May another delivery's copy, decided from an older view, still land at ``name`` over the version
    being recorded? One still copying there may; when the version is adopted (its ETag not made by this
    driver, so others may have read it), one superseded there may too (its driver may still be sending);
    one failed there may in either case (an operator gives up a delivery whose driver is alive, and that
    driver may overwrite a file it reads as another failed delivery's). Then bytes are not adopted as they
    are: a webhook or verifier copies them again, the reconciliation fences them first (:class:`Fence`); a
    driver's own copy is fenced after its swap. ``cut_short``: one superseded while it was copying there may
    too (the change that stored this version superseded it, its driver still sending). ``since``: only a
    delivery whose last step is that recent (its drivers may still be alive: see DRIVER_LIFETIME)."""
    states = (State.COPYING, State.SUPERSEDED, State.FAILED) if adopted else (State.COPYING, State.FAILED)

    def recent(found: Delivery | None) -> bool:
        changed = found.last_changed if found is not None else None
        return since is None or changed is None or changed >= since

    def may(item: Delivery) -> bool:
        landing = item.state in states or (cut_short and item.state is State.SUPERSEDED and _superseded_copying(item))
        return landing and recent(item)

    # At its name, or at the name an earlier template gave it (a copy it sent there may still land); or listed to
    # retire there without a version (a copy of it that may still land there: one moved twice, say).
    return any(
        name in (item.blob, item.moved_from) and item.delivery != delivery and may(item) for item in record.deliveries
    ) or any(
        item.blob == name and item.etag is None and item.delivery != delivery and recent(record.find(item.delivery))
        for item in record.retire
    )


# The steps that change no state (an operator's replay, a retirement of its names, a stray copy of it listed); those
# that put a delivery in `copying` are models.COPYING_STEPS.
NOTE_STEPS = ("replayed", "retired", "stray-copy", "promised")


def _superseded_copying(item: Delivery) -> bool:
    """Was ``item`` superseded while it was copying (not after it was stored)? Its history says: the last
    step before its last `superseded` one that changed its state put it in `copying`."""
    outcomes = [step.outcome for step in item.history]
    if "superseded" not in outcomes:
        return False
    last = len(outcomes) - 1 - outcomes[::-1].index("superseded")
    before = [outcome for outcome in outcomes[:last] if outcome not in NOTE_STEPS]
    return bool(before) and before[-1] in COPYING_STEPS


def _behind(seen: Seen, record: TaskRecord | None, blob: Blob | Unseen | None) -> bool:
    """Before overwriting ``blob``: may the record read be behind the file? It is when the file holds a
    delivery the record read does not know (an orphan, or one accepted since), or knows but not as its
    current stored file (a restore, a late copy, or a record that moved on since it was read, whose
    current file this is). Then the record is read once more (never twice for one version), so an
    overwrite is never decided from a record older than the file."""
    if record is None or not isinstance(blob, Blob) or blob.delivery is None or seen.rechecked == blob.etag:
        return False
    holder = record.find(blob.delivery)
    return holder is None or not (holder.delivery == record.current and holder.state is State.STORED)


def _later(record: TaskRecord, entry: Delivery, *states: State) -> bool:
    """Is a delivery accepted after ``entry`` in one of ``states``?"""
    position = record.index(entry.delivery)
    return any(item.state in states for item in record.deliveries[position + 1 :])


def _listing(blob: Blob, delivery: str) -> Retirement:
    """A retirement of exactly these bytes of ``delivery`` (their version and their copy)."""
    return Retirement(blob=blob.name, delivery=delivery, etag=blob.etag, copy_id=blob.metadata.get(COPY_ID))


def _doomed(record: TaskRecord, blob: Blob) -> bool:
    """Does the record list these very bytes to retire (that copy, or that exact version)? A listing that
    names neither (a superseded copy that may still land) is not about any bytes in particular."""
    copy_id = blob.metadata.get(COPY_ID)
    return any(
        item.blob == blob.name
        and item.delivery == blob.delivery
        and (item.copy_id == copy_id if item.copy_id is not None else _same_old_file(item, blob, copy_id))
        for item in record.retire
    )


def _same_old_file(item: Retirement, blob: Blob, copy_id: str | None) -> bool:
    """A listing with a version and no copyid (a file written before copyids) covers that version, and a
    later version of it without a copyid (its headers set since); never a copy made since (it has one)."""
    return item.etag is not None and (item.etag == blob.etag or copy_id is None)


def _stray_first(
    seen: Seen, record: TaskRecord, notice: Notice, now: datetime, by: Driver, arrow: str
) -> Decision | None:
    """A copy of this delivery at the notice's name (a name it is not decided at) goes before anything else: this
    driver's own copy at once (If-Match on what it wrote), one it found listed in the record first (a swap, so a
    record that moved on is seen), then retired. A file there may be such a copy when an answer was lost: looked
    at first. None when there is none (left to retire, or nothing there)."""
    blob = seen.blob
    if blob == UNSEEN and seen.attempt in ("exists", "lost"):
        return Observe()
    if not (isinstance(blob, Blob) and blob.delivery == notice.delivery):
        return None
    return _remove_stray(seen, record, _listing(blob, notice.delivery), (now, by), arrow)


def _remove_stray(
    seen: Seen, record: TaskRecord, stray: Retirement, when: tuple[datetime, Driver], arrow: str
) -> Decision | None:
    """This driver's own copy goes at once (If-Match on what it wrote). One it found, or its own whose delete was
    refused (a hold or a lease on it), is listed in the record first, with a step on its delivery saying so (the
    alert about a name left listed counts from then), then retired like any listing."""
    now, by = when
    if seen.copied and stray.key not in seen.deferred:
        return Apply((Retire(stray),), arrow)
    if stray.key not in {item.key for item in record.retire}:
        note = "a copy of it landed at a name it is not kept at"
        step = Step(at=now, by=by, outcome="stray-copy", note=note, retired=[stray.blob])
        items = [
            item.model_copy(update={"history": with_step(item, step)}) if item.delivery == stray.delivery else item
            for item in record.deliveries
        ]
        return Change(record.model_copy(update={"deliveries": items, "retire": [*record.retire, stray]}), arrow)
    return _retire(seen, record, now, by)


def _retire_or_answer(seen: Seen, record: TaskRecord, now: datetime, by: Driver) -> Decision:
    """After this driver made the notice current: retire what the record lists, then answer."""
    return _retire(seen, record, now, by) or Answer("stored", 200, seen.concluded or "stored")


def _retire(seen: Seen, record: TaskRecord, now: datetime, by: Driver) -> Decision | None:
    """Delete each name the record lists to retire (once), then drop the ones that went from the list."""
    tried = seen.retired | seen.deferred

    def waits(item: Retirement) -> bool:
        # A listing without a version (a moved delivery's earlier name, its late copy deleted only if it
        # lands) comes after the other listings of that name: deleting what is there makes a copy prepared
        # over it fail, or shows it landed. One of those left for the next driver leaves this one too.
        return item.etag is None and any(
            other.blob == item.blob and other.etag is not None and other.key not in seen.retired
            for other in record.retire
        )

    pending = tuple(Retire(item) for item in record.retire if item.key not in tried and not waits(item))
    if pending:
        return Apply(pending, "retire")
    return _clear_retired(seen, record, now, by)


def _clear_retired(seen: Seen, record: TaskRecord, now: datetime, by: Driver) -> Decision | None:
    """Drop from the record's list the names this driver retired, each in its delivery's history (who
    retired it, when)."""
    names: dict[str, list[str]] = {}
    left: dict[str, list[str]] = {}
    for item in record.retire:
        if item.key in seen.retired:
            done = left if item.key in seen.kept else names
            if item.blob not in done.setdefault(item.delivery, []):
                done[item.delivery].append(item.blob)
            names.setdefault(item.delivery, [])
    if not names:
        return None

    def step(delivery: str) -> Step:
        # A name whose file another wrote since (the customer, say) is no longer this delivery's: left as it is.
        kept = left.get(delivery)
        note = f"left in place, no longer holding this delivery: {', '.join(kept)}" if kept else None
        return Step(at=now, by=by, outcome="retired", retired=names[delivery] or None, note=note)

    deliveries = [
        item.model_copy(update={"history": with_step(item, step(item.delivery))}) if item.delivery in names else item
        for item in record.deliveries
    ]
    retire = [item for item in record.retire if item.key not in seen.retired]
    return Change(record.model_copy(update={"retire": retire, "deliveries": deliveries}), "retire")


def _sweep(seen: Seen, event: Sweep) -> Decision:
    """The reconciliation, or an operator: finish, fail or leave what is still copying, and retire."""
    record, now, by = seen.record, event.now, event.by
    if not seen.record_read:
        return Observe()
    if record is None:
        return Answer("nothing", 200, "nothing")
    copying = watched_copying(record)
    if copying is not None:
        blob = seen.blob
        if blob == UNSEEN or seen.watched != copying.blob:
            return Observe()
        # Bytes the record lists to retire are not adopted (that delete may be on its way): they are
        # retired below, and the delivery waits for its queue message to copy it again.
        if isinstance(blob, Blob) and blob.delivery == copying.delivery and not _doomed(record, blob):
            # It cannot copy: it makes the version its own first (a fence), so a copy another delivery
            # prepared over the version read fails, and one that landed first is seen before any swap.
            if seen.fenced != blob.etag:  # always, as an arrival's adoption (a listing may have been dropped)
                return Apply((Fence(copying.blob, copying.delivery),), "adopted")
            stored = conclude_stored(record, copying, blob=blob, now=now, by=by, outcome="adopted")
            effects = (WriteManifest(copying.blob, copying.delivery, copying.manifest or {}),)
            return Change(stored, "adopted", effects)
        expired = copying.link_expires_on is not None and copying.link_expires_on <= now
        given_up = event.give_up is not None and copying.delivery in event.giving_up
        if expired or given_up:
            reason = (event.give_up if given_up else None) or EXPIRED_REASON
            arrow = "operator-failed" if given_up else "expired"
            step = Step(at=now, by=by, outcome="failed", note=reason)
            failed = _with_state(record, copying, State.FAILED, step, failed_at=now, failure_reason=reason)
            current = record.current_delivery
            # Its copy may still be on its way to the current file's name (its own, or the one an earlier
            # template gave it): fence it off.
            pending_names = [
                item.blob for item in record.retire if item.delivery == copying.delivery and item.etag is None
            ]
            targets = (copying.blob, copying.moved_from, *pending_names)
            return Change(failed, arrow, fence=current is not None and current.blob in targets)
    current = record.current_delivery
    if seen.fence and current is not None:
        return Apply((Fence(current.blob, current.delivery),), seen.changed or "expired")
    retiring = _retire(seen, record, now, by)
    if retiring is not None:
        return retiring
    # The current file is checked too when what is copying shares its name (the blob read is the same).
    checked = event.verify and current is not None and seen.watched == current.blob
    if copying is not None and not checked:
        return Answer("waiting", 202, "waiting")
    if event.verify and current is not None and current.manifest and not seen.manifest_done:
        if seen.watched != current.blob:
            return Observe()
        holds = isinstance(seen.blob, Blob) and seen.blob.delivery == current.delivery
        described = isinstance(seen.manifest, Blob) and seen.manifest.delivery == current.delivery
        holder = record.find(seen.blob.delivery) if isinstance(seen.blob, Blob) and seen.blob.delivery else None
        followed = _follow_file(record, seen.blob, now, by, OVERWRITTEN_REASON) if holder is not None else None
        if followed is not None:
            return Change(followed[0], "adopted", followed[1])
        if holds and not described and has_manifest_name(current.blob) and event.manifests:
            # A driver stored the file and the record, then stopped before the manifest: written again.
            return Apply((WriteManifest(current.blob, current.delivery, current.manifest),), "repaired")
    if copying is not None:
        return Answer("waiting", 202, "waiting")
    repaired = seen.manifest_done and seen.changed is None
    return Answer("nothing", 200, "repaired" if repaired else seen.changed or "nothing")


EXPIRED_REASON = "The file link expired before its copy finished. Export the document again from SmartDocumentor."
OVERWRITTEN_REASON = (
    "A late copy of an earlier export replaced this file and it could not be put back (that export is current "
    "again). Export the document again from SmartDocumentor."
)


def _follow_file(
    record: TaskRecord, blob: Blob | Unseen | None, now: datetime, by: Driver, reason: str
) -> tuple[TaskRecord, tuple[Effect, ...]] | None:
    """The current file holds the bytes of another delivery the record accepted (its late copy landed
    there): the record follows the file. A current delivery accepted after that one could not get its
    bytes back: it failed (``reason``), never "superseded" by an older export."""
    current = record.current_delivery
    holder = record.find(blob.delivery) if isinstance(blob, Blob) and blob.delivery else None
    if current is None or holder is None or holder.delivery == current.delivery or not isinstance(blob, Blob):
        return None
    if record.index(current.delivery) > record.index(holder.delivery):
        step = Step(at=now, by=by, outcome="failed", status=502, note=reason)
        record = _with_state(record, current, State.FAILED, step, failed_at=now, failure_reason=reason)
    # At the name the file was found (the holder may have been accepted under an earlier template's name).
    moved = holder.model_copy(update={"blob": blob.name})
    followed = conclude_stored(record, moved, blob=blob, now=now, by=by, outcome="adopted")
    rewrite = (WriteManifest(blob.name, holder.delivery, holder.manifest),) if holder.manifest else ()
    return followed, rewrite


__all__ = [
    "ARROWS",
    "Answer",
    "Apply",
    "Arrival",
    "Change",
    "Copy",
    "Decision",
    "Fence",
    "Notice",
    "Observe",
    "Retire",
    "Seen",
    "Stage",
    "Sweep",
    "WriteManifest",
    "conclude_stored",
    "decide",
]
