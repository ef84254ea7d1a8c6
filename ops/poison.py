"""replay-poison: move verification messages the host poisoned back to the verification queue.

The Functions host moves a message to ``<queue>-poison`` after maxDequeueCount failed tries. Such
a message still holds what the queue function needs to finish, restart or fail the copy, the
export link with its SAS included, which is why it must go back rather than be retyped. Each
message is received from the poison queue (hidden from other readers meanwhile), sent to the
verification queue exactly as it was (base64, as the host wrote it), and only then deleted from the
poison queue: a crash in between leaves a duplicate (the queue function handles it as an
idempotent retry), never a loss. Nothing here prints a message's content: only the ids and the
blob, parsed with receiver.verification.PendingCopy, whose repr hides the link.

Before moving (and in a dry run) each message is judged from what is stored now, by the queue
function's own rules (receiver.verification.settle_pending): *finish* (the blob holds this export,
or the link is still valid so the copy restarts), *superseded* (the blob holds another export, or
the stored manifest lists this export in ``replaced``), or *fail* (the link expired), with why.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from receiver.store import BlobStore
from receiver.transitions import Step, note, replaced_elsewhere
from receiver.verification import PendingCopy, target_of

from .connect import ConfigError
from .deliveries import read_delivery
from .history import iso
from .output import NOT_FOUND, OK, Console, Result
from .queues import PEEK_LIMIT, count, parse

# Long enough to send and delete one page of messages; a message left unreadable becomes visible
# in the poison queue again after this.
VISIBILITY_SECONDS = 120


async def foresee(store: BlobStore | None, pending: PendingCopy, now: datetime) -> tuple[str, str]:
    """What the queue function will do with this message, from what is stored now."""
    expired = pending.expires_on <= now
    link = (
        f"the link expired at {iso(pending.expires_on)}" if expired else f"link valid until {iso(pending.expires_on)}"
    )
    if store is None:
        fate = "fail" if expired else "unknown"
        why = f"{link}; give the destination (--connection-string) to see what is stored"
        return fate, why
    if pending.container != store.container_name:
        return "unknown", f"its blob is in container {pending.container}, not {store.container_name}: pass --container"
    stored = await read_delivery(store, pending.blob_name)
    state, document = stored.state, stored.document
    if state is not None and state.delivery == pending.delivery:
        if state.copy_settled:
            return "finish", "the blob already holds this export: its manifest is completed"
        if state.copy_status == "pending":
            return "finish", "its copy is still running"
        if expired:
            return "fail", f"its copy {state.copy_status} and {link}: export the document again"
        return "finish", f"its copy {state.copy_status}; it restarts ({link})"
    if pending.delivery in (document.get("replaced") or []):
        return "superseded", "the stored export replaced this one (it is in the manifest's replaced list)"
    if state is not None:
        return "superseded", f"the blob holds another export ({(state.delivery or 'none')[:12]}): nothing is copied"
    newer = await replaced_elsewhere(store, target_of(pending, pending.manifest_document or {}, None))
    if newer is not None:
        return "superseded", f"the task's export at {newer} replaced this one: nothing is copied"
    if expired:
        return "fail", f"no copy exists and {link}: export the document again"
    return "finish", f"no copy exists; it copies again ({link})"


def _entry(message: Any, pending: PendingCopy | None, action: str, fate: tuple[str, str]) -> dict[str, Any]:
    if pending is None:
        return {"messageId": message.id, "action": action, "readable": False, "will": "nothing", "why": fate[1]}
    return {
        "messageId": message.id,
        "action": action,
        "readable": True,
        "taskId": pending.task_id,
        "workspaceId": pending.workspace_id,
        "blob": f"{pending.container}/{pending.blob_name}",
        "delivery": pending.delivery[:12],
        "linkExpiresOn": iso(pending.expires_on),
        "will": fate[0],
        "why": fate[1],
    }


UNREADABLE = ("nothing", "the queue function cannot read it either; it stays in the poison queue")


async def replay(
    main_queue: Any,
    poison_queue: Any,
    store: BlobStore | None,
    console: Console,
    *,
    dry_run: bool,
    limit: int,
    now: datetime,
) -> Result:
    waiting = await count(poison_queue)
    entries: list[dict[str, Any]] = []
    problems: list[str] = []
    if dry_run:
        try:
            peeked = await poison_queue.peek_messages(max_messages=min(limit, PEEK_LIMIT))
        except ResourceNotFoundError:
            peeked = []
        for message in peeked:
            pending = parse(message.content)
            fate = UNREADABLE if pending is None else await foresee(store, pending, now)
            entries.append(_entry(message, pending, "would-move" if pending else "would-leave", fate))
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
                    entries.append(_entry(message, None, "left", UNREADABLE))
                    progress.update(1)
                    continue
                fate = await foresee(store, pending, now)
                try:
                    await main_queue.send_message(message.content)
                except ResourceNotFoundError:
                    raise ConfigError(
                        f"The queue {main_queue.queue_name} does not exist in this host storage: is it the "
                        "function app's? (The message stays in the poison queue.)"
                    ) from None
                action = "moved"
                try:
                    await poison_queue.delete_message(message.id, message.pop_receipt)
                except (ResourceNotFoundError, HttpResponseError):
                    # Its hidden time ran out and someone received it meanwhile (or it was deleted):
                    # it was sent back all the same, and a copy may still wait in the poison queue.
                    action = "moved-copy-left"
                    problems.append(
                        f"{pending.task_id}: sent back, but it could not be deleted from {poison_queue.queue_name} "
                        "(it became visible again while being moved); a replay later moves the copy (harmless)"
                    )
                if store is not None and pending.manifest_name:
                    # The delivery's story: the operator moved its message back (best effort).
                    await note(
                        store,
                        pending.manifest_name,
                        pending.delivery,
                        Step(
                            "operator", now, "replayed", {"reason": f"replay-poison: expected to {fate[0]} ({fate[1]})"}
                        ),
                    )
                entries.append(_entry(message, pending, action, fate))
                progress.update(1)
        except ResourceNotFoundError:
            pass  # no poison queue yet: the host creates it with the first poisoned message
        finally:
            progress.close()
    moved = sum(1 for entry in entries if entry["action"] in ("moved", "moved-copy-left", "would-move"))
    left = sum(1 for entry in entries if not entry["readable"])
    fates = {
        fate: sum(1 for entry in entries if entry["will"] == fate)
        for fate in ("finish", "superseded", "fail", "unknown")
    }
    data = {
        "dryRun": dry_run,
        "queue": main_queue.queue_name,
        "poisonQueue": poison_queue.queue_name,
        "waitingBefore": waiting,
        "moved": 0 if dry_run else moved,
        "wouldMove": moved if dry_run else 0,
        "leftUnreadable": left,
        "will": fates,
        "messages": entries,
    }
    text: list[str] = []
    for entry in entries:
        what = (
            f"{entry['taskId']}  {entry['blob']}" if entry["readable"] else f"(unreadable message {entry['messageId']})"
        )
        text.append(f"{entry['action']:<10} {entry['will'].upper():<10} {what}")
        text.append(f"{'':<10} {'':<10} {entry['why']}")
    counted = ", ".join(f"{number} will {fate}" for fate, number in fates.items() if number)
    counted = counted.replace("will superseded", "superseded").replace("will unknown", "unknown")
    if dry_run:
        shown = (
            f" (a dry run can show at most {PEEK_LIMIT})" if limit > PEEK_LIMIT and len(entries) == PEEK_LIMIT else ""
        )
        text.append(
            f"Dry run: {moved} message(s) would move back to {main_queue.queue_name}{shown}"
            f"{': ' + counted if counted else ''}; nothing changed."
        )
    else:
        text.append(
            f"Moved {moved} message(s) from {poison_queue.queue_name} back to {main_queue.queue_name}"
            f"{': ' + counted if counted else ''}."
        )
    text += problems
    if waiting:
        text.append(f"About {waiting} message(s) were waiting in {poison_queue.queue_name} (hidden ones included).")
    if left:
        text.append(
            f"{left} unreadable message(s) stay in {poison_queue.queue_name}"
            f"{'' if dry_run else f' (hidden for {VISIBILITY_SECONDS} s)'}: they cannot be verified."
        )
    if fates["fail"]:
        text.append("Messages marked FAIL will be failed by the queue function: export those documents again.")
    return Result(NOT_FOUND if left or problems else OK, data, text)
