"""The verification queue and its poison queue, as the operator command line sees them.

A message (``receiver.verification.message``: ``{"v": 2, "receivedAt": ..., "body": <the
notification>}``, base64 as the host writes it) holds the export link with its SAS: the only copy of
it outside SmartDocumentor. Nothing here prints or logs a message's content: only the ids parsed
from it (:class:`Parsed`).

:class:`HostQueue` is the little the command line asks of a queue; :class:`AzureQueue` adapts the
SDK's aio ``QueueClient`` to it, :class:`MemoryQueue` keeps messages in memory for the tests.
Peeking shows at most 32 visible messages (a service limit) and none a function is processing right
now, so "not there" is said only when the queue holds no more messages than were seen; otherwise
the answer is "cannot tell".
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import itertools
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from receiver.payload import PayloadError, parse_notification
from receiver.verification import Message, Reference, read_message

# A peek sees at most 32 messages (a service limit).
PEEK_LIMIT = 32

Where = Literal["there", "absent", "unknown"]


@dataclass(frozen=True)
class QueueMessage:
    id: str
    content: str
    pop_receipt: str | None = None


class HostQueue(Protocol):
    """One storage queue of the function app's host storage."""

    name: str

    async def count(self) -> int:
        """About how many messages wait (hidden ones included); 0 when the queue does not exist."""
        ...

    async def peek(self, limit: int) -> list[QueueMessage]:
        """Up to ``limit`` (at most 32) visible messages, without hiding them."""
        ...

    async def receive(self, limit: int, *, visibility_seconds: int) -> list[QueueMessage]:
        """Up to ``limit`` messages, hidden from other readers for ``visibility_seconds``."""
        ...

    async def send(self, content: str) -> None: ...

    async def delete(self, message: QueueMessage) -> bool:
        """False when it could not be deleted (its hidden time ran out and someone received it)."""
        ...

    async def release(self, message: QueueMessage) -> None:
        """A received message visible again at once (one left where it is); never raises."""
        ...


class QueueMissing(Exception):
    """The queue a message must go to does not exist in this host storage."""


@dataclass(frozen=True)
class Parsed:
    """What the command line may show of a message: never its link."""

    message: Message | Reference
    task_id: str
    workspace_id: str
    delivery: str  # sha256 of the full exportedFileUrl, as the receiver computes it
    expires_on: datetime | None

    def __repr__(self) -> str:
        return f"Parsed(task_id={self.task_id!r}, workspace_id={self.workspace_id!r}, delivery={self.delivery[:12]})"


def parse(content: str) -> Parsed | None:
    """The message as the queue function reads it (base64, the host's encoding, or plain JSON)."""
    if not isinstance(content, str):
        return None
    candidates: list[bytes] = []
    with contextlib.suppress(binascii.Error, ValueError):
        # As the host decodes it: .NET's Convert.FromBase64String skips space, tab, CR and LF (a wrapped message reads).
        candidates.append(base64.b64decode(re.sub(r"[ \t\r\n]", "", content), validate=True))
    candidates.append(content.encode("utf-8", "replace"))
    for data in candidates:
        found = read_message(data)
        if found is None:
            continue
        if isinstance(found, Reference):
            return Parsed(found, found.task_id, found.workspace_id, found.delivery, None)
        try:  # the ids as the queue function reads them (trimmed, a sig value hashed), so they match the record's
            notification = parse_notification(found.body, queued=True, rebuilt=found.rebuilt)
        except PayloadError:
            continue
        delivery = hashlib.sha256(notification.exported_file_url.encode("utf-8")).hexdigest()
        expires = notification.exported_file_expires_on
        return Parsed(found, notification.task_id, notification.workspace_id, delivery, expires)
    return None


@dataclass(frozen=True)
class Look:
    """Where a task's messages are: in each queue ``there``, ``absent`` or ``unknown``, and which
    deliveries they carry."""

    queue: Where
    poison: Where
    deliveries: dict[str, str] = field(default_factory=dict)  # delivery -> "queue" | "poison"
    note: str = ""
    whole: bool = False  # every message of both queues was seen (none hidden while tried)

    def where(self, delivery: str) -> Where | str:
        """``queue``/``poison`` when a message of this delivery was seen; else ``absent`` (both queues were
        read whole, or hold nothing of the task) or ``unknown``."""
        if delivery in self.deliveries:
            return self.deliveries[delivery]
        return "absent" if self.whole or (self.queue == "absent" and self.poison == "absent") else "unknown"


NOT_LOOKED = Look("unknown", "unknown", note="the queues were not looked at (no host storage given)")


async def _seen_in(queue: HostQueue, workspace_id: str, task_id: str) -> tuple[Where, list[str], str, bool]:
    """Whether the queue holds a message of the task, the deliveries of those seen, a note, and whether every
    message in it was seen (a delivery of the task not among them then has none there)."""
    try:
        waiting = await queue.count()
        if waiting == 0:
            return "absent", [], "", True
        peeked = await queue.peek(PEEK_LIMIT)
    except QueueMissing:
        return "absent", [], "", True
    found = []
    for message in peeked:
        parsed = parse(message.content)
        if parsed is not None and parsed.task_id == task_id and parsed.workspace_id == workspace_id:
            found.append(parsed.delivery)
    whole = waiting <= len(peeked)
    hidden = waiting - len(peeked)
    note = (
        ""
        if whole
        else f"{queue.name} holds about {waiting} message(s), {hidden} of them hidden while they are tried or wait "
        "for their next try (normal for a copy still being retried); this task's may be one of them"
    )
    if found:
        return "there", found, note, whole
    return ("absent" if whole else "unknown"), [], note, whole


async def look(main: HostQueue, poison: HostQueue, *, workspace_id: str, task_id: str) -> Look:
    queue, in_queue, queue_note, queue_whole = await _seen_in(main, workspace_id, task_id)
    in_poison_state, in_poison, poison_note, poison_whole = await _seen_in(poison, workspace_id, task_id)
    deliveries = {delivery: "poison" for delivery in in_poison}
    deliveries.update({delivery: "queue" for delivery in in_queue})
    note = "; ".join(text for text in (queue_note, poison_note) if text)
    return Look(queue, in_poison_state, deliveries, note, whole=queue_whole and poison_whole)


# --- the Azure SDK's queues ------------------------------------------------------------------------


class AzureQueue:
    """:class:`HostQueue` on an aio ``QueueClient`` (whose errors the caller maps)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.name = str(client.queue_name)

    async def count(self) -> int:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            properties = await self.client.get_queue_properties()
        except ResourceNotFoundError:
            return 0
        return int(properties.approximate_message_count or 0)

    async def peek(self, limit: int) -> list[QueueMessage]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            peeked = await self.client.peek_messages(max_messages=min(limit, PEEK_LIMIT))
        except ResourceNotFoundError:
            return []
        return [QueueMessage(str(item.id), str(item.content)) for item in peeked]

    async def receive(self, limit: int, *, visibility_seconds: int) -> list[QueueMessage]:
        from azure.core.exceptions import ResourceNotFoundError

        received: list[QueueMessage] = []
        try:
            pages = self.client.receive_messages(
                messages_per_page=min(limit, PEEK_LIMIT), visibility_timeout=visibility_seconds, max_messages=limit
            )
            async for item in pages:
                received.append(QueueMessage(str(item.id), str(item.content), item.pop_receipt))
        except ResourceNotFoundError:
            return received
        except Exception:
            # A later page refused: what the earlier ones hid is visible again at once, as a caller that
            # stops early leaves every message it did not move.
            for message in received:
                with contextlib.suppress(Exception):
                    await self.release(message)
            raise
        return received

    async def send(self, content: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            await self.client.send_message(content)
        except ResourceNotFoundError:
            raise QueueMissing(self.name) from None

    async def delete(self, message: QueueMessage) -> bool:
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        try:
            await self.client.delete_message(message.id, message.pop_receipt)
        except (ResourceNotFoundError, HttpResponseError):
            return False
        return True

    async def release(self, message: QueueMessage) -> None:
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        # Else it stays hidden for the rest of its visibility time, and a dry run just after misses it.
        with contextlib.suppress(ResourceNotFoundError, HttpResponseError):
            await self.client.update_message(message.id, message.pop_receipt, visibility_timeout=0)


# --- in memory (tests) -----------------------------------------------------------------------------

_ids = itertools.count(1)


class MemoryQueue:
    """A queue in memory. ``hidden`` messages (received, not deleted) still count, like the service's."""

    def __init__(self, name: str, *, exists: bool = True) -> None:
        self.name = name
        self.exists = exists
        self.visible: list[QueueMessage] = []
        self.hidden: list[QueueMessage] = []
        self.lose_delete = False  # the next delete fails (its hidden time ran out meanwhile)

    def add(self, content: str) -> QueueMessage:
        message = QueueMessage(f"m{next(_ids)}", content)
        self.visible.append(message)
        return message

    async def count(self) -> int:
        return len(self.visible) + len(self.hidden)

    async def peek(self, limit: int) -> list[QueueMessage]:
        return list(self.visible[: min(limit, PEEK_LIMIT)])

    async def receive(self, limit: int, *, visibility_seconds: int) -> list[QueueMessage]:
        taken = self.visible[:limit]
        self.visible = self.visible[limit:]
        received = [QueueMessage(item.id, item.content, f"receipt-{item.id}") for item in taken]
        self.hidden.extend(received)
        return received

    async def send(self, content: str) -> None:
        if not self.exists:
            raise QueueMissing(self.name)
        self.add(content)

    async def delete(self, message: QueueMessage) -> bool:
        if self.lose_delete:
            self.lose_delete = False
            return False
        before = len(self.hidden)
        self.hidden = [item for item in self.hidden if item.id != message.id]
        return len(self.hidden) < before

    async def release(self, message: QueueMessage) -> None:
        released = [item for item in self.hidden if item.id == message.id]
        self.hidden = [item for item in self.hidden if item.id != message.id]
        self.visible.extend(QueueMessage(item.id, item.content) for item in released)

    def contents(self) -> list[str]:
        return [item.content for item in [*self.visible, *self.hidden]]
