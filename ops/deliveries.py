"""find, pending, failed and check: what is stored, read through the receiver's BlobStore.

A delivery is a blob and, beside it, its manifest ``<blob>.json``. The manifest *matches* the blob
when its ``delivery`` (sha256 of the export link) equals the blob's ``delivery`` metadata: then it
describes that very export (CONTRACT section 6). A blob counts as a manifest only when the receiver
marked it so (metadata ``receiverkind=manifest``, or ``copystatus`` on older manifests): nothing
here reads, repairs or overwrites anything else as one.

Manifests carry index tags (copyStatus, receivedAt, taskId, workspaceId, linkExpiresOn, failedAt:
receiver.plan.manifest_labels), so each listing is Find Blobs by Tags queries at container level,
summarised from the tags alone; only the rows shown are downloaded. Accounts without index tags
fall back to a listing with metadata, which reads the whole container.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import unquote

from receiver.plan import MAX_TAG_VALUE, fold_tag_text, metadata_value
from receiver.reconciliation import pending_from_manifest
from receiver.store import BlobState, BlobStore, Manifest, TagsUnsupported
from receiver.transitions import Step, blob_received, conclude_failure, conclude_success, repair_manifest
from receiver.verification import target_of

from .history import is_manifest, iso, record
from .output import NOT_FOUND, OK, Console, Result, age_seconds, each, human_age, parse_time
from .queues import NOT_LOOKED, Look, look

MANIFEST_SUFFIX = ".json"
# Sorts after every ISO time: naming receivedAt in the query makes the service return its value.
LATEST = "9999"
# Sorts before every ISO time: a condition that every manifest carrying the tag satisfies.
EARLIEST = "0"
# Rows are cut to this width: a terminal, a mail, a chat message.
ROW_WIDTH = 99
READ_CONCURRENCY = 32


def _tag_query(*conditions: tuple[str, str, str]) -> str:
    """``"key" op 'value'`` joined by AND. Folded values hold only Azure's tag alphabet, which has
    no quote: nothing to escape."""
    return " AND ".join(f"\"{key}\" {op} '{value}'" for key, op, value in conditions)


def _short(delivery: Any) -> str:
    return str(delivery)[:12] if delivery else "none"


def _delivery_of(name: str) -> str:
    return name.removesuffix(MANIFEST_SUFFIX)


def _cut(text: str, width: int = ROW_WIDTH) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def link_expiry(document: dict[str, Any]) -> datetime | None:
    return parse_time(document.get("linkExpiresOn") or document.get("exportedFileExpiresOn"))


# --- what is stored under one name ---------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    """The blob and its manifest as read now. ``foreign``: ``<name>.json`` exists but the receiver
    did not write it as a manifest (then ``manifest`` is None and nothing overwrites it)."""

    name: str
    state: BlobState | None
    manifest: Manifest | None
    foreign: bool = False

    @property
    def document(self) -> dict[str, Any]:
        return self.manifest.document if self.manifest is not None else {}


async def read_delivery(store: BlobStore, name: str) -> Stored:
    state, labels, manifest = await asyncio.gather(
        store.state(name), store.state(name + MANIFEST_SUFFIX), store.read_manifest(name + MANIFEST_SUFFIX)
    )
    foreign = labels is not None and not is_manifest(labels.metadata)
    if labels is None or foreign:
        manifest = None
    return Stored(name, state, manifest, foreign)


# --- verdicts ------------------------------------------------------------------------------------

Repair = Literal["finish", "rebuild", "fail"]


@dataclass(frozen=True)
class Verdict:
    name: str
    explanation: str
    next: str | None
    code: int
    repair: Repair | None = None


def _check_command(name: str) -> str:
    return f"python -m ops check {shlex.quote(name)}"


def _without_copy(stored: Stored, what: str, now: datetime, seen: Look | None, queue: str) -> Verdict:
    """A pending manifest with no copy of its export in the blob: can anyone still finish it?"""
    check = _check_command(stored.name)
    expires = link_expiry(stored.document)
    if expires is not None and expires <= now:
        return Verdict(
            "expired",
            f"{what}, and the export link expired at {iso(expires)}: nothing can finish it",
            f"{check} --repair (marks it failed), then export the document again",
            NOT_FOUND,
            "fail",
        )
    valid = f"valid until {iso(expires)}" if expires is not None else "expiry not recorded"
    if seen is None:
        return Verdict(
            "unconfirmed",
            f"{what}; the manifest still says pending (link {valid})",
            f"{check} --host-connection-string <host storage> (looks at the queues)",
            NOT_FOUND,
        )
    if seen.poison == "there":
        return Verdict(
            "recoverable",
            f"{what}, but its verification message waits in {queue}-poison and the link is {valid}: "
            "replay-poison will finish it",
            f"python -m ops replay-poison --queue {queue} --dry-run (says what each message will do), "
            f"then python -m ops replay-poison --queue {queue}",
            NOT_FOUND,
        )
    if seen.queue == "there":
        return Verdict(
            "waiting",
            f"{what}; its verification message waits in {queue}: the queue function will restart or finish it",
            f"wait a few minutes, then {check}",
            NOT_FOUND,
        )
    if not seen.nowhere:
        return Verdict(
            "unknown",
            f"{what}; I don't know whether a queue can still finish it ({seen.note}), and the link is {valid}: "
            "not concluding failed",
            f"{check} --host-connection-string <host storage>, or wait and check again",
            NOT_FOUND,
        )
    return Verdict(
        "stranded",
        f"{what}, and no queue message holds its link ({valid}): nothing will finish it",
        f"{check} --repair (marks it failed), then export the document again "
        "(or have SmartDocumentor send the notification again while the link is valid)",
        NOT_FOUND,
        "fail",
    )


def judge(stored: Stored, *, now: datetime, seen: Look | None, queue: str) -> Verdict:
    """What state the delivery is in, and what to do next; ``seen`` is None when the queues were not
    asked (``find``): then a delivery without a copy is never called lost."""
    state, check = stored.state, _check_command(stored.name)
    if stored.foreign:
        return Verdict(
            "not-a-manifest",
            f"{stored.name}.json is not a manifest the receiver wrote (no receiverkind or copystatus metadata)",
            "move that file out of the way (nothing here overwrites it), then " + check + " --repair",
            NOT_FOUND,
        )
    if stored.manifest is None:
        if state is None:
            return Verdict(
                "not-found",
                "neither the blob nor its manifest exists",
                "python -m ops find --task <taskId> (its name may differ)",
                NOT_FOUND,
            )
        return Verdict(
            "manifest-missing",
            "the blob has no manifest",
            f"{check} --repair (rebuilds it from the blob)",
            NOT_FOUND,
            "rebuild",
        )
    document = stored.document
    status, delivery = document.get("copyStatus"), document.get("delivery")
    if state is None:
        if status == "failed":
            reason = document.get("failureReason") or "no reason recorded"
            return Verdict(
                "failed",
                f"the delivery failed for good ({reason}); its blob was removed, as designed",
                "export the document again in SmartDocumentor",
                OK,
            )
        if status == "success":
            return Verdict(
                "blob-missing",
                "the manifest says success but the blob is gone (deleted after it was stored)",
                "restore the blob (soft delete or versioning, where enabled) or export the document again; "
                f"then {check}",
                NOT_FOUND,
            )
        return _without_copy(stored, "no copy exists", now, seen, queue)
    if not state.delivery or delivery != state.delivery:
        return Verdict(
            "stale",
            f"the manifest describes another export ({_short(delivery)}) "
            f"than the blob holds ({_short(state.delivery)})",
            f"{check} --repair (rebuilds it from the blob)",
            NOT_FOUND,
            "rebuild",
        )
    if state.copy_status == "pending":
        if status == "pending":
            return Verdict(
                "ok", "the copy is still running; the queue function or the reconciliation records it", None, OK
            )
        return Verdict(
            "unfinished", f"the manifest says {status} while the copy still runs", f"wait, then {check}", NOT_FOUND
        )
    if state.copy_settled:
        if status == "success":
            last = (document.get("history") or [{}])[-1]
            if isinstance(last, dict) and last.get("outcome") == "restored":
                return Verdict(
                    "restored",
                    f"the latest re-export ({_short(last.get('failedDelivery'))}) failed for good and this earlier "
                    f"export was put back: {last.get('reason') or 'no reason recorded'}",
                    "export the document again in SmartDocumentor (the file stored is not the latest export)",
                    NOT_FOUND,
                )
            partial = " (rebuilt from the blob: the payload's other fields are lost)" if document.get("partial") else ""
            return Verdict("ok", f"the manifest describes the blob{partial}", None, OK)
        return Verdict(
            "unfinished",
            f"the copy has completed but the manifest says {status}",
            f"{check} --repair (records it as the queue function would)",
            NOT_FOUND,
            "finish",
        )
    if status == "pending":
        return _without_copy(stored, f"its copy {state.copy_status}", now, seen, queue)
    if status == "failed":
        return Verdict(
            "failed",
            f"the delivery failed for good ({document.get('failureReason') or 'no reason recorded'})",
            "export the document again",
            OK,
        )
    return Verdict(
        "unfinished",
        f"the manifest says {status} but the blob's copy {state.copy_status}",
        "export the document again",
        NOT_FOUND,
    )


# --- how a delivery is shown ---------------------------------------------------------------------


def summary(store: BlobStore, stored: Stored, verdict: Verdict | None = None) -> dict[str, Any]:
    """One delivery as the commands show it (and --json prints it)."""
    state, document = stored.state, stored.manifest.document if stored.manifest is not None else None
    meta = state.metadata if state is not None else {}
    task_id = (document or {}).get("taskId") or unquote(meta.get("taskid", "")) or None
    workspace_id = (document or {}).get("workspaceId") or unquote(meta.get("workspaceid", "")) or None
    matches: bool | None = None
    if state is not None and document is not None:
        matches = bool(state.delivery) and document.get("delivery") == state.delivery
    return {
        "blob": stored.name,
        "container": store.container_name,
        "url": store.blob_url(stored.name),
        "taskId": task_id,
        "workspaceId": workspace_id,
        "exists": state is not None,
        "size": state.size if state is not None else None,
        "contentType": state.content_type if state is not None else None,
        "blobCopyStatus": state.copy_status if state is not None else None,
        "delivery": state.delivery if state is not None else None,
        "manifest": None
        if document is None
        else {
            "name": stored.name + MANIFEST_SUFFIX,
            "copyStatus": document.get("copyStatus"),
            "receivedAt": document.get("receivedAt"),
            "receivedAtFrom": document.get("receivedAtFrom"),
            "completedAt": document.get("completedAt"),
            "failedAt": document.get("failedAt"),
            "failureReason": document.get("failureReason"),
            "linkExpiresOn": document.get("linkExpiresOn") or document.get("exportedFileExpiresOn"),
            "delivery": document.get("delivery"),
            "replaced": list(document.get("replaced") or []),
            "history": list(document.get("history") or []),
            "partial": bool(document.get("partial", False)),
        },
        "notAManifest": stored.foreign,
        "matches": matches,
        "verdict": None if verdict is None else verdict.name,
        "explanation": None if verdict is None else verdict.explanation,
        "next": None if verdict is None else verdict.next,
    }


def _history_line(entry: Any) -> str:
    if not isinstance(entry, dict):
        return f"    {entry}"
    status = f" ({entry['status']})" if entry.get("status") is not None else ""
    text = f"    {entry.get('at', '?')}  {entry.get('by', '?')!s:<14} {entry.get('outcome', '?')}{status}"
    for key in ("reason", "repaired"):
        if entry.get(key):
            text += f": {entry[key]}"
    if entry.get("retired"):
        text += f": {', '.join(str(name) for name in entry['retired'])}"
    return text


def summary_lines(item: dict[str, Any], now: datetime) -> list[str]:
    manifest = item["manifest"]
    lines = [item["blob"], f"  url:        {item['url']}"]
    lines.append(f"  task:       {item['taskId'] or '?'}   workspace: {item['workspaceId'] or '?'}")
    if item["exists"]:
        copy = f", copy {item['blobCopyStatus']}" if item["blobCopyStatus"] not in (None, "success") else ""
        lines.append(
            f"  blob:       {item['size']} bytes, {item['contentType'] or '?'}, "
            f"delivery {_short(item['delivery'])}{copy}"
        )
    else:
        lines.append("  blob:       missing")
    if manifest is None:
        lines.append("  manifest:   " + ("NOT a receiver manifest (left alone)" if item["notAManifest"] else "missing"))
    else:
        received = manifest["receivedAt"] or "?"
        age = human_age(age_seconds(manifest["receivedAt"], now))
        source = f" (from {manifest['receivedAtFrom']})" if manifest["receivedAtFrom"] else ""
        partial = ", rebuilt from the blob" if manifest["partial"] else ""
        lines.append(f"  manifest:   {manifest['copyStatus']}, delivery {_short(manifest['delivery'])}{partial}")
        lines.append(f"  received:   {received} ({age} ago){source}")
        if manifest["completedAt"]:
            lines.append(f"  completed:  {manifest['completedAt']}")
        if manifest["copyStatus"] == "failed" or manifest["failedAt"] or manifest["failureReason"]:
            lines.append(
                f"  failed:     {manifest['failedAt'] or '?'}: {manifest['failureReason'] or 'no reason recorded'}"
            )
        if manifest["linkExpiresOn"] and manifest["copyStatus"] == "pending":
            lines.append(f"  link until: {manifest['linkExpiresOn']}")
        if manifest["replaced"]:
            lines.append(f"  replaced:   {', '.join(_short(d) for d in manifest['replaced'])}")
        if manifest["history"]:
            lines.append("  history:")
            lines += [_history_line(entry) for entry in manifest["history"]]
    verdict = {True: "yes", False: "NO", None: "-"}[item["matches"]]
    lines.append(f"  matches:    {verdict}")
    if item["verdict"] is not None:
        lines.append(f"  verdict:    {item['verdict']}: {item['explanation']}")
    if item["next"]:
        lines.append(f"  next:       {item['next']}")
    return lines


# --- find --------------------------------------------------------------------------------------


async def _collect(pairs: AsyncIterator[tuple[str, dict[str, str]]]) -> list[tuple[str, dict[str, str]]]:
    return [pair async for pair in pairs]


async def find(
    store: BlobStore,
    console: Console,
    *,
    task_id: str | None,
    workspace_id: str | None,
    limit: int,
    now: datetime,
) -> Result:
    """The stored file(s) of a task (or a workspace), newest first: Find Blobs by Tags on the folded
    ids (blobs and manifests), and the same with receivedAt named (the manifests' receive times, to
    order them before reading), then each candidate confirmed against the real ids."""
    conditions = [
        (key, "=", fold_tag_text(value, MAX_TAG_VALUE))
        for key, value in (("taskId", task_id), ("workspaceId", workspace_id))
        if value is not None
    ]
    received: dict[str, str] = {}  # blob name -> its manifest's receivedAt
    names: set[str] = set()
    method = "tags"
    try:
        hits, timed = await asyncio.gather(
            _collect(store.find_tagged(_tag_query(*conditions))),
            _collect(store.find_tagged(_tag_query(*conditions, ("receivedAt", "<", LATEST)))),
        )
        names.update(_delivery_of(name) for name, _ in hits)
        for name, tags in timed:
            if name.endswith(MANIFEST_SUFFIX):
                received[_delivery_of(name)] = tags.get("receivedAt", "")
    except TagsUnsupported:
        method = "listing"
        wanted = {
            "taskid": None if task_id is None else metadata_value(task_id, 512),
            "workspaceid": None if workspace_id is None else metadata_value(workspace_id, 512),
        }
        walk = console.progress("listing", unit="blob")
        async for name, meta in store.listing():
            walk.update(1)
            if name.endswith(MANIFEST_SUFFIX) and "receivedat" in meta:
                received[_delivery_of(name)] = unquote(meta["receivedat"])
            if all(value is None or meta.get(key) == value for key, value in wanted.items()):
                names.add(name)
        walk.close()
        names = {name for name in names if not name.endswith(MANIFEST_SUFFIX)} | {
            _delivery_of(name) for name in names if name.endswith(MANIFEST_SUFFIX)
        }
    # Newest first; a blob without a manifest (no receive time) leads: it needs a look.
    candidates = sorted(names, key=lambda name: received.get(name) or LATEST, reverse=True)
    truncated = len(candidates) > limit
    read = await each(
        candidates[:limit],
        lambda name: read_delivery(store, name),
        console.progress("reading", total=min(len(candidates), limit)),
        concurrency=READ_CONCURRENCY,
    )
    found = []
    for stored in read:
        item = summary(store, stored, judge(stored, now=now, seen=None, queue=""))
        if (stored.state is None and stored.manifest is None and not stored.foreign) or (
            (task_id is not None and item["taskId"] != task_id)
            or (workspace_id is not None and item["workspaceId"] != workspace_id)
        ):
            continue  # another id that folds to the same tag value, or gone meanwhile
        found.append(item)
    inconsistent = [item for item in found if item["verdict"] not in ("ok", "failed")]
    query = {"taskId": task_id, "workspaceId": workspace_id}
    where = f"container {store.container_name} of {store.account}"
    data = {
        "query": query,
        "container": store.container_name,
        "account": store.account,
        "method": method,
        "count": len(found),
        "inconsistent": len(inconsistent),
        "truncated": truncated,
        "documents": found,
    }
    what = " and ".join(f"{key} {value}" for key, value in query.items() if value is not None)
    text = [f"Searched {where} for {what}{' (Find Blobs by Tags)' if method == 'tags' else ''}.", ""]
    for item in found:
        text += [*summary_lines(item, now), ""]
    text.append(f"{len(found)} document(s), newest first." if found else f"Nothing stored for {what} in {where}.")
    if inconsistent:
        text.append(f"{len(inconsistent)} need(s) attention: see verdict and next above.")
    if truncated:
        text.append(f"Only the newest {limit} were read: narrow the search or raise --max.")
    if method == "listing":
        text.append("(This account has no blob index tags: the whole container was listed.)")
    return Result(OK if found and not inconsistent else NOT_FOUND, data, text)


# --- pending, failed ---------------------------------------------------------------------------

Status = Literal["pending", "failed"]
AGE_BUCKETS = ((3600, "under 1h"), (86400, "1h-1d"), (7 * 86400, "1d-7d"), (None, "over 7d"))


@dataclass
class Indexed:
    """A manifest as the tag index (or the listing) knows it, without reading it."""

    name: str
    received: str = ""
    link_expires: str = ""
    failed_at: str = ""

    def when(self, status: Status) -> str:
        return (self.failed_at or self.received) if status == "failed" else self.received


async def _indexed(store: BlobStore, status: Status, console: Console) -> tuple[dict[str, Indexed], str]:
    """Every manifest saying ``status``, with its times, from the index alone: one query for all of
    them (receivedAt named so its value comes back) and one per optional tag (linkExpiresOn,
    failedAt), which only manifests carrying that tag satisfy."""
    found: dict[str, Indexed] = {}
    walk = console.progress(f"finding {status}", unit="manifest")
    try:
        queries = [_tag_query(("copyStatus", "=", status), ("receivedAt", "<", LATEST))]
        queries.append(_tag_query(("copyStatus", "=", status), ("linkExpiresOn", ">=", EARLIEST)))
        if status == "failed":
            queries.append(_tag_query(("copyStatus", "=", status), ("failedAt", ">=", EARLIEST)))
        results = await asyncio.gather(*(_collect(store.find_tagged(query)) for query in queries))
        for name, tags in results[0]:
            found[name] = Indexed(name, received=tags.get("receivedAt", ""))
            walk.update(1)
        for hits in results[1:]:
            for name, tags in hits:
                item = found.get(name)
                if item is not None:
                    item.link_expires = tags.get("linkExpiresOn", item.link_expires)
                    item.failed_at = tags.get("failedAt", item.failed_at)
        return found, "tags"
    except TagsUnsupported:
        async for name, meta in store.listing():
            walk.update(1)
            if name.endswith(MANIFEST_SUFFIX) and meta.get("copystatus") == status:
                found[name] = Indexed(
                    name,
                    received=unquote(meta.get("receivedat", "")),
                    link_expires=unquote(meta.get("linkexpireson", "")),
                    failed_at=unquote(meta.get("failedat", "")),
                )
        return found, "listing"
    finally:
        walk.close()


def _bucket(seconds: int | None) -> str:
    if seconds is None:
        return "age unknown"
    for bound, label in AGE_BUCKETS:
        if bound is None or seconds < bound:
            return label
    return AGE_BUCKETS[-1][1]


@dataclass
class Summary:
    total: int = 0
    by_age: dict[str, int] = field(default_factory=dict)
    links_expired: int = 0
    links_unknown: int = 0

    def line(self, status: Status, window: str) -> str:
        noun = "delivery" if self.total == 1 else "deliveries"
        if not self.total:
            return f"No {status} deliveries{window}."
        ages = ", ".join(f"{count} {label}" for label, count in self.by_age.items() if count)
        unknown = f", {self.links_unknown} not recorded" if self.links_unknown else ""
        return f"{self.total} {status} {noun}{window}: {ages}; links expired: {self.links_expired}{unknown}."


async def deliveries_in(
    store: BlobStore,
    console: Console,
    *,
    status: Status,
    older_than: timedelta,
    since: datetime | None,
    limit: int,
    alert: bool,
    now: datetime,
) -> Result:
    """Deliveries whose manifest says ``status``: a summary of all of them from the index tags, then
    the oldest ``limit``, each read for its ids and (failed) its reason."""
    indexed, method = await _indexed(store, status, console)
    cutoff = iso(now - older_than) if older_than > timedelta(0) else LATEST
    start = iso(since) if since is not None else ""
    chosen = sorted(
        (item for item in indexed.values() if start <= item.when(status) < cutoff),
        key=lambda item: (item.when(status), item.name),
    )
    totals = Summary(total=len(chosen), by_age={label: 0 for _, label in AGE_BUCKETS})
    for item in chosen:
        label = _bucket(age_seconds(item.when(status), now))
        totals.by_age[label] = totals.by_age.get(label, 0) + 1
        expires = parse_time(item.link_expires)
        if expires is None:
            totals.links_unknown += 1
        elif expires <= now:
            totals.links_expired += 1
    shown = chosen[:limit]
    manifests = await each(
        [item.name for item in shown],
        store.read_manifest,
        console.progress("reading manifests", total=len(shown), unit="manifest"),
        concurrency=READ_CONCURRENCY,
    )
    items: list[dict[str, Any]] = []
    for item, manifest in zip(shown, manifests, strict=True):
        if manifest is None or manifest.document.get("copyStatus") != status:
            continue  # settled meanwhile (the tag index lags writes by seconds)
        document = manifest.document
        blob = _delivery_of(item.name)
        expires = link_expiry(document)
        when = (
            (document.get("failedAt") or document.get("receivedAt"))
            if status == "failed"
            else document.get("receivedAt")
        )
        items.append(
            {
                "blob": blob,
                "url": store.blob_url(blob),
                "manifest": item.name,
                "taskId": document.get("taskId"),
                "workspaceId": document.get("workspaceId"),
                "copyStatus": status,
                "copyId": document.get("copyId"),
                "receivedAt": document.get("receivedAt"),
                "failedAt": document.get("failedAt"),
                "failureReason": document.get("failureReason"),
                "ageSeconds": age_seconds(when, now),
                "linkExpiresOn": iso(expires) if expires is not None else None,
                "linkExpired": None if expires is None else expires <= now,
            }
        )
    truncated = len(chosen) > limit
    window = ""
    if older_than > timedelta(0):
        window += f" older than {human_age(int(older_than.total_seconds()))}"
    if since is not None:
        window += f" since {iso(since.replace(microsecond=0))}"
    data = {
        "status": status,
        "container": store.container_name,
        "olderThanMinutes": older_than.total_seconds() / 60,
        "since": start or None,
        "method": method,
        "summary": {
            "total": totals.total,
            "byAge": totals.by_age,
            "linksExpired": totals.links_expired,
            "linksNotRecorded": totals.links_unknown,
        },
        "count": len(items),
        "total": len(chosen),
        "truncated": truncated,
        "deliveries": items,
    }
    text = [totals.line(status, window)]
    if items:
        text.append(_cut(f"{'AGE':<8} {'LINK':<8} {'TASK':<36} FILE"))
        for entry in items:
            link = "?" if entry["linkExpired"] is None else "expired" if entry["linkExpired"] else "valid"
            task = _cut(str(entry["taskId"] or "?"), 36)
            text.append(
                _cut(f"{human_age(entry['ageSeconds']):<8} {link:<8} {task:<36} {entry['blob'].rsplit('/', 1)[-1]}")
            )
            if status == "failed":
                text.append(_cut(f"         why: {entry['failureReason'] or 'no reason recorded (an older manifest)'}"))
        text.append(
            _cut(f"Oldest first. The whole story: python -m ops find --task TASK (container {store.container_name}).")
        )
    if truncated:
        text.append(f"Showing the oldest {limit} of {len(chosen)}: raise --max to see more.")
    if method == "listing":
        text.append("(This account has no blob index tags: the whole container was listed.)")
    if alert:
        text.append("ALERT: needs a person." if chosen else "OK: nothing needs a person.")
    return Result(NOT_FOUND if alert and chosen else OK, data, text)


# --- check -------------------------------------------------------------------------------------


def blob_name_of(argument: str, store: BlobStore) -> str:
    """A blob given by name, as ``container/name`` (as logs and manifests write it), by URL, or by
    its manifest's name."""
    name = argument
    base = store.blob_url("")
    if name.startswith(base):
        name = unquote(name[len(base) :].split("?", 1)[0])
    elif name.startswith(f"{store.container_name}/"):
        name = name[len(store.container_name) + 1 :]
    return _delivery_of(name)


def _target(store: BlobStore, name: str, document: dict[str, Any], state: BlobState) -> Any:
    """The delivery as the shared transitions (receiver.transitions) see it."""
    pending = pending_from_manifest(
        {**document, "exportedFileContentType": document.get("exportedFileContentType") or state.content_type},
        store.container_name,
        name + MANIFEST_SUFFIX,
    )
    return target_of(pending, document, None)


async def _rebuild(store: BlobStore, stored: Stored, now: datetime) -> tuple[str, str]:
    """A manifest for the blob as it is, from its metadata and tags (marked partial and repaired)."""
    state = stored.state
    assert state is not None
    before = stored.document
    if stored.manifest is None:
        why = "the blob had no manifest"
    else:
        why = (
            f"the manifest described another export ({_short(before.get('delivery'))}, received "
            f"{before.get('receivedAt') or '?'}) than the blob holds ({_short(state.delivery)})"
        )
    done = await repair_manifest(
        store, stored.name + MANIFEST_SUFFIX, state, stored.manifest, step=Step("operator", now, "repaired"), reason=why
    )
    if done == "skipped":
        return "skipped", "nothing: the manifest changed meanwhile (someone else wrote it); run check again"
    repaired = f"manifest rebuilt from the blob; receivedAt from {blob_received(state)[1]}"
    record(store, stored.name, "repaired", f"{why}; {repaired}", error=False)
    return "repaired", f"{repaired} (marked partial): {why}"


async def _finish(store: BlobStore, stored: Stored, now: datetime) -> tuple[str, str]:
    """A completed copy of this export whose manifest says pending or failed: recorded as the queue
    function records it (the shared transition: Content-Type, manifest success, older files retired)."""
    state, snapshot = stored.state, stored.manifest
    assert state is not None and snapshot is not None
    before = snapshot.document
    document = {key: value for key, value in before.items() if key not in ("failedAt", "failureReason")}
    completed, _ = blob_received(state)
    if completed is not None:
        document["completedAt"] = completed  # when storage finished it, not when the operator noticed
    why = f"the copy had completed but the manifest said {before.get('copyStatus')}"
    concluded = await conclude_success(
        store,
        _target(store, stored.name, document, state),
        state,
        step=Step("operator", now, "finished", {"reason": why}),
        snapshot=snapshot,
        confirmed=False,
        tags_written=store.tags_supported,
        copy_id=state.copy_id,
    )
    if not concluded.ours:
        return "superseded", "nothing: a newer export owns the blob now"
    record(store, stored.name, "finished", why, error=False)
    return "finished", "recorded the completed copy as the queue function would (headers, manifest success)"


async def _fail(store: BlobStore, stored: Stored, verdict: Verdict, now: datetime) -> tuple[str, str]:
    """Nothing can finish the delivery any more: the shared transition puts the task's earlier export
    back (or removes the failed copy, If-Match) and marks the manifest failed with the reason."""
    snapshot = stored.manifest
    assert snapshot is not None
    reason = f"{verdict.explanation}; export the document again"
    state = stored.state
    target = _target(store, stored.name, snapshot.document, state) if state is not None else None
    if target is None:
        pending = pending_from_manifest(snapshot.document, store.container_name, stored.name + MANIFEST_SUFFIX)
        target = target_of(pending, snapshot.document, None)
    ended = await conclude_failure(
        store,
        target,
        state,
        step=Step("operator", now, "failed", {"reason": reason}),
        reason=reason,
        snapshot=snapshot,
        copy_id=str(snapshot.document.get("copyId") or "") or None,
    )
    if ended == "left":
        return "skipped", "nothing: the blob changed meanwhile (someone newer owns it); run check again"
    stored_now = await store.read_manifest(stored.name + MANIFEST_SUFFIX)
    if ended == "failed" and (stored_now is None or stored_now.document.get("copyStatus") != "failed"):
        return "skipped", "nothing: the manifest changed meanwhile (someone else wrote it); run check again"
    what = "marked the delivery failed" + (" and put the task's earlier export back" if ended == "restored" else "")
    record(store, stored.name, "failed", reason, error=True)
    return "failed", f"{what} ({reason})"


async def check(
    store: BlobStore,
    argument: str,
    *,
    repair: bool,
    now: datetime,
    queues: Any = None,
    queue_name: str,
) -> Result:
    """Does the manifest describe its blob, and if not, what next? With ``repair``, what can be made
    right is: a completed copy recorded, a missing or stale manifest rebuilt from the blob, and a
    delivery nothing can finish any more (its link expired, or no queue message holds it) marked
    failed. A delivery a queue may still finish is left alone. Every write is conditional."""
    name = blob_name_of(argument, store)
    stored = await read_delivery(store, name)
    seen = await _look(store, stored, queues, queue_name)
    verdict = judge(stored, now=now, seen=seen, queue=queue_name)
    before = summary(store, stored, verdict)
    action: str | None = None
    done = ""
    if repair and verdict.repair is not None:
        if verdict.repair == "rebuild":
            action, done = await _rebuild(store, stored, now)
        elif verdict.repair == "finish":
            action, done = await _finish(store, stored, now)
        else:
            action, done = await _fail(store, stored, verdict, now)
        stored = await read_delivery(store, name)
        verdict = judge(stored, now=now, seen=seen, queue=queue_name)
    elif repair and verdict.code != OK:
        action, done = "none", "nothing: " + (verdict.next or "nothing here can repair this")
    after = summary(store, stored, verdict)
    data = {**after, "action": action, "before": before if action is not None else None}
    if seen is not None:
        data["queues"] = {"queue": seen.queue, "poison": seen.poison, "note": seen.note or None}
    text = summary_lines(after, now)
    if action is not None:
        text.insert(-2 if after["next"] else -1, f"  repair:     {done}")
    if seen is NOT_LOOKED and verdict.name == "unknown":
        text.append("  (the queues could not be looked at: give --host-connection-string or --host-queue-url)")
    return Result(verdict.code, data, text)


async def _look(store: BlobStore, stored: Stored, queues: Any, queue_name: str) -> Look | None:
    """The queues, asked only about a pending delivery without a finished copy of its own."""
    document = stored.document
    if stored.manifest is None or document.get("copyStatus") != "pending":
        return None
    state = stored.state
    if state is not None and (
        state.delivery != document.get("delivery") or state.copy_status not in ("failed", "aborted")
    ):
        return None  # another export's blob, or this export's copy done or running: no queue decides
    if queues is None:
        return NOT_LOOKED
    return await look(
        queues.queue(queue_name),
        queues.queue(f"{queue_name}-poison"),
        container=store.container_name,
        blob=stored.name,
        delivery=str(document.get("delivery") or ""),
    )
