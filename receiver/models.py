"""The two documents the receiver keeps beside the files: the task record and the manifest. Typed.

The **task record** (one JSON blob per task, see :func:`record_name`) is the only thing any
decision reads (docs/reference.md, "The task record"): every delivery of the task the receiver
accepted, in the order it accepted them, which one is current, and which names still have to be
retired. It is changed only by compare-and-swap.

The **manifest** (``<blob name>.json``) is the stored file's public description for people and
downstream tools; nothing decides from it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from .outcome import ops_command
from .plan import identity_segment
from .source import redact

Driver = Literal["webhook", "verifier", "reconciliation", "operator"]

# Every record lives under this prefix; no file name can start with it (plan.outside_reserved).
RECORD_PREFIX = ".smartdocumentor/tasks/"
RECORD_CONTENT_TYPE = "application/json"
# A record is small (a few hundred bytes a delivery plus the notifications it still keeps, each up to
# MAX_BODY_BYTES, 1 MiB); more than this is not one of ours and is never read whole, nor written.
MAX_RECORD_BYTES = 64 * 1024 * 1024
# A change that keeps one more notification is refused past this (503 until kept ones leave it); every other
# change, which ends deliveries and so frees the record, still has the rest up to MAX_RECORD_BYTES.
RECORD_ROOM = 48 * 1024 * 1024
MAX_HISTORY = 50
# The blob metadata naming one copy's bytes (new with each copy or commit, kept when headers are set).
COPY_ID = "copyid"


def unreadable_record(name: str, task_id: str, why: ValueError | str) -> str:
    """What to do about a task record that does not parse: the same words for the drivers and the operator."""
    return (
        f"The task record {name} is not readable ({_parse_problem(why)}): it was changed outside the receiver. "
        "Do not delete it (the files it lists would be left where no record names them): restore its previous "
        "version (the blob's versions, where versioning is on) or a backup, then run "
        f"{ops_command('check', '--repair', task=task_id)}. Until then every delivery of this task is refused."
    )


def _parse_problem(why: ValueError | str) -> str:
    """Where the record fails to parse and why (a few of pydantic's errors: place and message, never the
    values), so the operator sees what was edited."""
    if isinstance(why, ValidationError):
        problems = [
            f"{'.'.join(str(part) for part in error['loc']) or 'the document'}: {error['msg']}"
            for error in why.errors(include_url=False, include_input=False)[:3]
        ]
        more = why.error_count() - len(problems)
        text = "; ".join(problems) + (f"; and {more} more" if more > 0 else "")
    else:
        text = str(why).strip().splitlines()[0] if str(why).strip() else "not JSON"
    return redact(text)[:300]


def record_name(workspace_id: str, task_id: str) -> str:
    """The record's blob name: from the two ids alone (one-to-one, like file names), never from the
    template, so a template change cannot hide it."""
    return f"{RECORD_PREFIX}{identity_segment(workspace_id)}/{identity_segment(task_id)}.json"


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class State(StrEnum):
    """A delivery's state in its task record."""

    COPYING = "copying"  # accepted; its bytes are not committed yet (a staged copy, or an answer lost)
    STORED = "stored"  # committed; it is the current file, or was until a newer one replaced it
    SUPERSEDED = "superseded"  # a newer export was accepted before this one was stored, or replaced it
    FAILED = "failed"  # the copy can never succeed (link expired, source refused or gone)


class Step(_Model):
    """One history entry: who did what, when."""

    at: datetime
    by: Driver
    outcome: str
    status: int | None = None
    note: str | None = None
    retired: list[str] | None = None


# The steps that put a delivery in `copying` (accepted, or a copy whose answer was lost: tracked).
COPYING_STEPS = ("copying", "unconfirmed")


class Delivery(_Model):
    """One export of the task, as the record knows it."""

    delivery: str  # sha256 of the full exportedFileUrl (the blob's `delivery` metadata)
    blob: str
    state: State
    received_at: datetime
    link_expires_on: datetime | None = None
    staged: bool = False  # copied in blocks (large): the queue function may still finish it
    etag: str | None = None  # the committed file's ETag, when this request saw it
    copy_id: str | None = None  # the committed file's `copyid` (its retirement follows only that copy)
    # The name it was accepted at before, under an earlier template: a copy sent there may still land, so
    # that name is retired when it is stored elsewhere.
    moved_from: str | None = None
    completed_at: datetime | None = None
    failed_at: datetime | None = None
    failure_reason: str | None = None
    # The manifest to write once the file is committed: whoever finishes the copy (the queue function, the
    # reconciliation) writes it without the payload. Kept while `copying`, while current (its manifest can be
    # written again), while superseded at the current file's name, and once `failed` (a late copy of either
    # may still land, and the record then follows the file).
    manifest: dict[str, Any] | None = None
    history: list[Step] = Field(default_factory=list)

    @property
    def copying_since(self) -> datetime:
        """When its current attempt began: its receipt, or when it was accepted again after it failed (a message
        sent then is what can still finish it)."""
        since, failed = self.received_at, False
        for step in self.history:
            if step.outcome == "failed":
                failed = True
            elif failed and step.outcome in COPYING_STEPS:
                since, failed = step.at, False
        return since

    @property
    def attempt(self) -> list[Step]:
        """The steps of its current attempt: those after its last failure (all of them when it never failed)."""
        failures = [number for number, step in enumerate(self.history) if step.outcome == "failed"]
        return self.history[failures[-1] + 1 :] if failures else self.history

    @property
    def last_changed(self) -> datetime | None:
        """Its newest step's time (a step a command stamped earlier does not hide a later one)."""
        return max((step.at for step in self.history), default=None)


class Retirement(_Model):
    """A name whose file (and manifest) a newer export replaced: deleted If-Match, then dropped here."""

    blob: str
    delivery: str
    etag: str | None = None
    copy_id: str | None = None  # the listed version's `copyid`: a later change is followed only within that copy

    @property
    def key(self) -> str:
        """One retirement: a name, the delivery whose file there is to go, and which copy of it (another
        copy of the delivery there later is another retirement)."""
        return f"{self.blob}\n{self.delivery}\n{self.copy_id or ''}"


class TaskRecord(_Model):
    kind: Literal["task-record"] = "task-record"
    version: Literal[1] = 1
    workspace_id: str
    task_id: str
    current: str | None = None  # the `delivery` of the current file
    retire: list[Retirement] = Field(default_factory=list)
    deliveries: list[Delivery] = Field(default_factory=list)

    def find(self, delivery: str) -> Delivery | None:
        for item in self.deliveries:
            if item.delivery == delivery:
                return item
        return None

    def index(self, delivery: str) -> int:
        for number, item in enumerate(self.deliveries):
            if item.delivery == delivery:
                return number
        return -1

    @property
    def current_delivery(self) -> Delivery | None:
        return None if self.current is None else self.find(self.current)

    def to_bytes(self) -> bytes:
        # UTF-8, not escaped: a notification's text takes about its own size here, not up to three times it.
        return json.dumps(self.dump(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> TaskRecord:
        return cls.model_validate_json(data)

    def labels(self) -> dict[str, str]:
        """The record blob's metadata: what a listing of the records' prefix shows without reading
        them (the reconciliation and the operator tools find their work from it)."""
        copying = [item for item in self.deliveries if item.state is State.COPYING]
        labels = {
            "receiverkind": "task-record",
            "workspaceid": quote(self.workspace_id, safe=""),
            "taskid": quote(self.task_id, safe=""),
            "copying": str(len(copying)),
            "retire": str(len(self.retire)),
        }
        if copying:
            labels["oldestcopying"] = min(item.copying_since for item in copying).isoformat()
            expiring = [item.link_expires_on for item in copying if item.link_expires_on is not None]
            if expiring:
                # The first link of a copy to expire: the operator tools list a copy nothing can finish
                # any more without reading each record.
                labels["copyingexpires"] = min(expiring).isoformat()
        failed = [item.failed_at for item in self.deliveries if item.state is State.FAILED and item.failed_at]
        if failed:
            # When a delivery of the task last failed: `python -m ops failed --since` reads only the
            # records whose failures fall in its window.
            labels["lastfailed"] = max(failed).isoformat()
        return labels


def with_step(item: Delivery, step: Step) -> list[Step]:
    """The delivery's history with ``step`` appended (oldest first, the last MAX_HISTORY kept)."""
    return [*item.history, step][-MAX_HISTORY:]


class Manifest(_Model):
    """``<blob name>.json``: the payload (without the link's query) and what the receiver did with it.

    The payload's own fields are kept as sent (nested values stay JSON); the receiver's fields are
    typed here. A sender's extra field named like one of these is kept under ``senderFields``.
    """

    # Only the camelCase names fill the receiver's fields: a sender's "copy_status" stays its own field.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=False, extra="allow")

    receiver_kind: Literal["manifest"] = "manifest"
    blob: str
    delivery: str
    source: str
    received_at: datetime
    link_expires_on: datetime | None = None
    copy_status: Literal["success"] = "success"
    completed_at: datetime | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    tags_dropped: list[dict[str, str]] = Field(default_factory=list)
    tags_written: bool = True
    replaced: list[str] = Field(default_factory=list)
    history: list[Step] = Field(default_factory=list)

    def to_bytes(self) -> bytes:
        return json.dumps(self.dump(), ensure_ascii=True, separators=(",", ":")).encode("ascii")


def parse_time(value: object) -> datetime | None:
    """An ISO 8601 time from a label or metadata value (``Z`` accepted, naive taken as UTC); None if it is not one."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
