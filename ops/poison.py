"""replay-poison: move verification messages the host poisoned back to the verification queue.

The Functions host moves a message to ``<queue>-poison`` after maxDequeueCount failed tries. Such
a message still holds what the queue function needs to finish, restart or fail the copy, the
export link with its SAS included, which is why it must go back rather than be retyped. Each
message is received from the poison queue (hidden from other readers meanwhile), sent to the
verification queue exactly as it was (base64, as the host wrote it), and only then deleted from the
poison queue: a crash in between leaves a duplicate (the queue function handles it as an
idempotent retry), never a loss. Nothing here prints a message's content: only the ids and the
blob, parsed with receiver.verification.PendingCopy, whose repr hides the link.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from pydantic import ValidationError

from receiver.verification import PendingCopy

from .connect import ConfigError
from .output import NOT_FOUND, OK, Console, Result, table

# A peek sees at most 32 messages (a service limit), so a dry run shows at most that many.
PEEK_LIMIT = 32
# Long enough to send and delete one page of messages; a message left unreadable becomes visible
# in the poison queue again after this.
VISIBILITY_SECONDS = 120


def parse(content: str) -> PendingCopy | None:
    """The message as the queue function reads it: base64 (the host's encoding) of the JSON."""
    for decode in (lambda text: base64.b64decode(text, validate=True), lambda text: text.encode()):
        try:
            return PendingCopy.model_validate(json.loads(decode(content)))
        except (ValueError, binascii.Error, ValidationError):
            continue
    return None


def _entry(message: Any, pending: PendingCopy | None, action: str, now: datetime) -> dict[str, Any]:
    if pending is None:
        return {"messageId": message.id, "action": action, "readable": False}
    return {
        "messageId": message.id,
        "action": action,
        "readable": True,
        "taskId": pending.task_id,
        "workspaceId": pending.workspace_id,
        "blob": f"{pending.container}/{pending.blob_name}",
        "linkExpiresOn": pending.expires_on.isoformat().replace("+00:00", "Z"),
        "linkExpired": pending.expires_on <= now,
    }


async def _count(queue: Any) -> int:
    try:
        properties = await queue.get_queue_properties()
    except ResourceNotFoundError:
        return 0
    return int(properties.approximate_message_count or 0)


async def replay(
    main_queue: Any, poison_queue: Any, console: Console, *, dry_run: bool, limit: int, now: datetime
) -> Result:
    waiting = await _count(poison_queue)
    entries: list[dict[str, Any]] = []
    if dry_run:
        try:
            peeked = await poison_queue.peek_messages(max_messages=min(limit, PEEK_LIMIT))
        except ResourceNotFoundError:
            peeked = []
        for message in peeked:
            pending = parse(message.content)
            entries.append(_entry(message, pending, "would-move" if pending else "would-leave", now))
    else:
        progress = console.progress("replaying", total=min(limit, waiting) or None, unit="message")
        try:
            received = poison_queue.receive_messages(
                messages_per_page=min(limit, PEEK_LIMIT), visibility_timeout=VISIBILITY_SECONDS, max_messages=limit
            )
            async for message in received:
                pending = parse(message.content)
                if pending is None:
                    # The queue function could not read it either: leave it for a person to look at.
                    entries.append(_entry(message, None, "left", now))
                else:
                    try:
                        await main_queue.send_message(message.content)
                    except ResourceNotFoundError:
                        raise ConfigError(
                            f"The queue {main_queue.queue_name} does not exist in this host storage: is it the "
                            "function app's? (The message stays in the poison queue.)"
                        ) from None
                    await poison_queue.delete_message(message.id, message.pop_receipt)
                    entries.append(_entry(message, pending, "moved", now))
                progress.update(1)
        except ResourceNotFoundError:
            pass  # no poison queue yet: the host creates it with the first poisoned message
        finally:
            progress.close()
    moved = sum(1 for entry in entries if entry["action"] in ("moved", "would-move"))
    left = sum(1 for entry in entries if not entry["readable"])
    data = {
        "dryRun": dry_run,
        "queue": main_queue.queue_name,
        "poisonQueue": poison_queue.queue_name,
        "waitingBefore": waiting,
        "moved": 0 if dry_run else moved,
        "wouldMove": moved if dry_run else 0,
        "leftUnreadable": left,
        "messages": entries,
    }
    rows = [
        [
            entry["action"],
            str(entry.get("taskId", "-")),
            str(entry.get("workspaceId", "-")),
            str(entry.get("blob", f"(unreadable message {entry['messageId']})")),
            "expired" if entry.get("linkExpired") else "",
        ]
        for entry in entries
    ]
    text = table(["ACTION", "TASK", "WORKSPACE", "BLOB", "LINK"], rows) if rows else []
    if dry_run:
        shown = (
            f" (a dry run can show at most {PEEK_LIMIT})" if limit > PEEK_LIMIT and len(entries) == PEEK_LIMIT else ""
        )
        text.append(f"Dry run: {moved} message(s) would move back to {main_queue.queue_name}{shown}; nothing changed.")
    else:
        text.append(f"Moved {moved} message(s) from {poison_queue.queue_name} back to {main_queue.queue_name}.")
    if waiting:
        text.append(f"About {waiting} message(s) were waiting in {poison_queue.queue_name}.")
    if left:
        text.append(f"{left} unreadable message(s) stay in {poison_queue.queue_name}: they cannot be verified.")
    if any(entry.get("linkExpired") for entry in entries):
        text.append("Messages whose link expired will be marked failed by the queue function: export those again.")
    return Result(NOT_FOUND if left else OK, data, text)
