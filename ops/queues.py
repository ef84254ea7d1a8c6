"""Is a delivery's verification message still somewhere a function can act on it?

A verification message (receiver.verification.PendingCopy, JSON, base64 as the host writes it)
holds the export link with its SAS: the only copy of it outside SmartDocumentor. While one waits in
the verification queue the queue function will finish or restart the copy; one waiting in the
poison queue will, once ``replay-poison`` moves it back. Peeking shows at most 32 visible messages
(a service limit) and none that a function is processing right now, so "not there" is said only
when the queue holds no more messages than were seen; otherwise the answer is "cannot tell".
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Literal

from azure.core.exceptions import AzureError, ResourceNotFoundError
from pydantic import ValidationError

from receiver.verification import PendingCopy

# A peek sees at most 32 messages (a service limit).
PEEK_LIMIT = 32

Seen = Literal["there", "absent", "unknown"]


def parse(content: str) -> PendingCopy | None:
    """The message as the queue function reads it: base64 (the host's encoding) of the JSON."""
    for decode in (lambda text: base64.b64decode(text, validate=True), lambda text: text.encode()):
        try:
            return PendingCopy.model_validate(json.loads(decode(content)))
        except (ValueError, binascii.Error, ValidationError):
            continue
    return None


async def count(queue: Any) -> int:
    try:
        properties = await queue.get_queue_properties()
    except ResourceNotFoundError:
        return 0
    return int(properties.approximate_message_count or 0)


@dataclass(frozen=True)
class Look:
    """Where the delivery's message is: in each queue ``there``, ``absent`` or ``unknown``."""

    queue: Seen
    poison: Seen
    note: str = ""

    @property
    def anywhere(self) -> bool:
        return "there" in (self.queue, self.poison)

    @property
    def nowhere(self) -> bool:
        return self.queue == "absent" and self.poison == "absent"


NOT_LOOKED = Look("unknown", "unknown", "the queues were not looked at (no host storage given)")


async def _seen_in(queue: Any, container: str, blob: str, delivery: str) -> tuple[Seen, str]:
    try:
        waiting = await count(queue)
        if waiting == 0:
            return "absent", ""
        peeked = await queue.peek_messages(max_messages=PEEK_LIMIT)
    except ResourceNotFoundError:
        return "absent", ""
    except AzureError as exc:
        return "unknown", f"{queue.queue_name} could not be read ({type(exc).__name__})"
    for message in peeked:
        pending = parse(message.content)
        if (
            pending is not None
            and pending.delivery == delivery
            and pending.blob_name == blob
            and pending.container == container
        ):
            return "there", ""
    if waiting <= len(peeked):
        return "absent", ""
    return "unknown", f"{queue.queue_name} holds about {waiting} messages and only {len(peeked)} could be seen"


async def look(main: Any, poison: Any, *, container: str, blob: str, delivery: str) -> Look:
    queue, queue_note = await _seen_in(main, container, blob, delivery)
    in_poison, poison_note = await _seen_in(poison, container, blob, delivery)
    return Look(queue, in_poison, "; ".join(note for note in (queue_note, poison_note) if note))
