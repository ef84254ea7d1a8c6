"""What the receiver answers: one :class:`Outcome` per request, turned into HTTP by function_app. Pure."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Outcome:
    """An HTTP answer: status code and JSON body, plus a queue message when a copy must be verified later."""

    status_code: int
    body: dict[str, Any]
    verification: str | None = field(default=None, repr=False)

    def json(self) -> str:
        return json.dumps(self.body, ensure_ascii=False)


def ops_command(command: str, *flags: str, **options: str) -> str:
    """``python -m ops <command> --<option> <value> ... <flags>``, each value quoted for a shell (an id may hold
    spaces, ``&`` or ``;``), one that starts with ``-`` given as ``--<option>=<value>`` (else it reads as an option)."""
    return " ".join(["python -m ops", command, *(option_words(name, value) for name, value in options.items()), *flags])


def option_words(name: str, value: str) -> str:
    quoted = shlex.quote(value)
    return f"--{name}={quoted}" if value.startswith("-") else f"--{name} {quoted}"


def rejected(status_code: int, error: str, message: str, **extra: Any) -> Outcome:
    return Outcome(status_code, {"status": "rejected", "error": error, "message": message, **_known(extra)})


def failed(status_code: int, error: str, message: str, *, verification: str | None = None, **extra: Any) -> Outcome:
    """A non-2xx after the checks; ``verification``: the queue message when a copy must be verified later."""
    body = {"status": "failed", "error": error, "message": message, **_known(extra)}
    return Outcome(status_code, body, verification)


_IMMUTABLE = (
    "The destination container has a {policy} that refuses replacing or removing stored files (a file, its "
    "manifest, the task's record), so this export was not stored (an earlier export of it, if any, is kept). "
    "Ask the storage account's owner to lift the {policy} or use version-level immutability, then send the "
    "document again."
)


# Where the person in SmartDocumentor finds a document whose failure is alerted: an alert follows a 2xx as a rule.
ARCHIVED = (
    "if a request for it was answered 2xx (a 202 while it copied), SmartDocumentor archived the document and does "
    "not show it in To Review: export it again from the archive"
)


LEASED = (
    "A blob this delivery writes (the file at this name, its manifest or the task record) is leased by another "
    "client, so the receiver could not finish this delivery; nothing stored is lost. Whoever holds the lease breaks "
    "it or lets it expire; then send the document again."
)
LEASED_QUEUED = LEASED.replace(
    "then send the document again.",
    "the receiver tries again by itself for about 40 minutes; if the lease lasts longer, send the document again "
    "once it is gone.",
)


_IMMUTABLE_AFTER_COPY = (
    "The destination container has a {policy} that refuses replacing or removing stored files. This export was "
    "copied to {blob} before the {policy} refused recording it, and it cannot be removed while the {policy} lasts "
    "(it replaced any earlier export stored at that very name; the task's files at other names are kept). Ask the "
    "storage account's owner to lift the {policy} or use version-level immutability, then send the document "
    "again: its retry records that file."
)


def held_from_queue(policy: str, copied: str | None = None) -> str:
    """Why the queue function tries a delivery again while a retention policy or legal hold (``policy``)
    refuses a write it needs; ``copied``: where a copy of it landed before the policy refused its record."""
    landed = f" Its copy landed at {copied} before the {policy} refused recording it." if copied else ""
    return (
        f"The destination container's {policy} refuses a write this delivery needs (replacing its file, its "
        f"manifest or its task record).{landed} Nothing recorded it failed: it is finished once the storage "
        f"account's owner lifts the {policy}."
    )


def refused_by(policy: str, copied: str | None = None) -> str:
    """What a write refused by a retention policy or a legal hold (``policy``) tells the sender; ``copied``: the
    name this export's copy landed at before the policy refused its record."""
    if copied is None:
        return _IMMUTABLE.format(policy=policy)
    return _IMMUTABLE_AFTER_COPY.format(policy=policy, blob=copied)


def _known(extra: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in extra.items() if value is not None}


_DELIVERED = {
    "stored": (200, "The file was copied to the customer's storage."),
    "duplicate": (200, "This delivery was already received; the file is stored."),
    "copying": (
        202,
        "Azure Storage is still copying the file; the receiver will finish the job when the copy completes.",
    ),
    # A newer export of the same document replaced this one (mid-copy, or before this late retry or
    # replay arrived): the newest export wins.
    "superseded": (
        200,
        "A newer export of this document replaced this one; the newer file is stored (or still being copied).",
    ),
}


def delivered(
    status: str, *, task_id: str, blob: str, url: str, note: str | None = None, verification: str | None = None
) -> Outcome:
    """A 2xx: ``stored``, ``duplicate``, ``superseded`` or ``copying`` (202, with the queue message to
    verify it later). No ``copyId``: no copy in this design has one to report (docs/reference.md)."""
    status_code, message = _DELIVERED[status]
    if note:
        message = f"{message} {note}"
    return Outcome(
        status_code, {"status": status, "message": message, "taskId": task_id, "blob": blob, "url": url}, verification
    )
