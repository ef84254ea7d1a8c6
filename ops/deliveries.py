"""find, pending, failed and check: what is stored, read through the receiver's BlobStore.

A delivery is a blob and, beside it, its manifest ``<blob>.json``. The manifest *matches* the blob
when its ``delivery`` (sha256 of the export link) equals the blob's ``delivery`` metadata: then it
describes that very export (CONTRACT section 6). Manifests carry index tags (copyStatus,
receivedAt, taskId, workspaceId: receiver.plan.manifest_labels), so each question here is one
Find Blobs by Tags query at container level; accounts without index tags fall back to a listing
with metadata, which reads the whole container.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import unquote

from receiver.delivery import CopyStatus, describes
from receiver.plan import MAX_TAG_VALUE, fold_tag_text, metadata_value
from receiver.reconciliation import reconcile_one, repair_manifest
from receiver.store import BlobState, BlobStore, Manifest, TagsUnsupported

from .output import NOT_FOUND, OK, Console, Result, age_seconds, each, human_age, table

MANIFEST_SUFFIX = ".json"
# Sorts after every ISO time: naming receivedAt in the query makes the service return its value.
LATEST = "9999"


def _tag_query(*conditions: tuple[str, str, str]) -> str:
    """``"key" op 'value'`` joined by AND. Folded values hold only Azure's tag alphabet, which has
    no quote: nothing to escape."""
    return " AND ".join(f"\"{key}\" {op} '{value}'" for key, op, value in conditions)


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _blob_status(state: BlobState) -> CopyStatus:
    if state.copy_settled:
        return "success"
    return "pending" if state.copy_status == "pending" else "failed"


def _delivery_of(name: str) -> str:
    return name.removesuffix(MANIFEST_SUFFIX)


def summary(store: BlobStore, name: str, state: BlobState | None, manifest: Manifest | None) -> dict[str, Any]:
    """One delivery as the commands show it: the blob (URL without any query), its manifest, and
    whether the manifest describes the blob."""
    document = manifest.document if manifest is not None else None
    meta = state.metadata if state is not None else {}
    task_id = (document or {}).get("taskId") or unquote(meta.get("taskid", "")) or None
    workspace_id = (document or {}).get("workspaceId") or unquote(meta.get("workspaceid", "")) or None
    matches: bool | None = None
    if state is not None and document is not None:
        matches = bool(state.delivery) and document.get("delivery") == state.delivery
    return {
        "blob": name,
        "container": store.container_name,
        "url": store.blob_url(name),
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
            "name": name + MANIFEST_SUFFIX,
            "copyStatus": document.get("copyStatus"),
            "receivedAt": document.get("receivedAt"),
            "delivery": document.get("delivery"),
            "partial": bool(document.get("partial", False)),
        },
        "matches": matches,
    }


async def read_delivery(store: BlobStore, name: str) -> tuple[BlobState | None, Manifest | None]:
    state, manifest = await asyncio.gather(store.state(name), store.read_manifest(name + MANIFEST_SUFFIX))
    return state, manifest


def _summary_lines(item: dict[str, Any], now: datetime) -> list[str]:
    manifest = item["manifest"]
    lines = [item["blob"], f"  url:        {item['url']}"]
    lines.append(f"  task:       {item['taskId'] or '?'}   workspace: {item['workspaceId'] or '?'}")
    if item["exists"]:
        copy = f", copy {item['blobCopyStatus']}" if item["blobCopyStatus"] not in (None, "success") else ""
        lines.append(f"  blob:       {item['size']} bytes, {item['contentType'] or '?'}{copy}")
    else:
        lines.append("  blob:       missing")
    if manifest is None:
        lines.append("  manifest:   missing")
    else:
        received = manifest["receivedAt"] or "?"
        age = human_age(age_seconds(manifest["receivedAt"], now))
        partial = " (partial: repaired from the blob)" if manifest["partial"] else ""
        delivery = (manifest["delivery"] or "?")[:12]
        lines.append(
            f"  manifest:   {manifest['copyStatus']}, received {received} ({age} ago), delivery {delivery}{partial}"
        )
    verdict = {True: "yes", False: "NO (run: check --repair)", None: "-"}[item["matches"]]
    lines.append(f"  matches:    {verdict}")
    return lines


# --- find --------------------------------------------------------------------------------------


async def find(
    store: BlobStore,
    console: Console,
    *,
    task_id: str | None,
    workspace_id: str | None,
    limit: int,
    now: datetime,
) -> Result:
    """The stored file(s) of a task (or a workspace): Find Blobs by Tags on the folded ids, then
    each candidate confirmed against the real ids in its manifest (folding can merge two ids)."""
    conditions = [
        (key, "=", fold_tag_text(value, MAX_TAG_VALUE))
        for key, value in (("taskId", task_id), ("workspaceId", workspace_id))
        if value is not None
    ]
    names: set[str] = set()
    method = "tags"
    walk = console.progress("finding", unit="blob")
    try:
        async for name, _ in store.find_tagged(_tag_query(*conditions)):
            names.add(_delivery_of(name))
            walk.update(1)
    except TagsUnsupported:
        method = "listing"
        wanted = {
            "taskid": None if task_id is None else metadata_value(task_id, 512),
            "workspaceid": None if workspace_id is None else metadata_value(workspace_id, 512),
        }
        async for name, meta in store.listing():
            walk.update(1)
            if all(value is None or meta.get(key) == value for key, value in wanted.items()):
                names.add(name)
    finally:
        walk.close()
    candidates = sorted(names)
    truncated = len(candidates) > limit
    read = await each(
        candidates[:limit],
        lambda name: read_delivery(store, name),
        console.progress("reading", total=min(len(candidates), limit)),
    )
    found = []
    for name, (state, manifest) in zip(candidates[:limit], read, strict=True):
        item = summary(store, name, state, manifest)
        if (state is None and manifest is None) or (
            (task_id is not None and item["taskId"] != task_id)
            or (workspace_id is not None and item["workspaceId"] != workspace_id)
        ):
            continue  # another id that folds to the same tag value, or gone meanwhile
        found.append(item)
    query = {"taskId": task_id, "workspaceId": workspace_id}
    data = {"query": query, "method": method, "count": len(found), "truncated": truncated, "documents": found}
    text: list[str] = []
    for item in found:
        text += [*_summary_lines(item, now), ""]
    what = " and ".join(f"{key} {value}" for key, value in query.items() if value is not None)
    text.append(f"{len(found)} document(s) for {what}." if found else f"Nothing stored for {what}.")
    if truncated:
        text.append(f"Only the first {limit} were read: narrow the search or raise --max.")
    if method == "listing":
        text.append("(This account has no blob index tags: the whole container was listed.)")
    return Result(OK if found else NOT_FOUND, data, text)


# --- pending, failed ---------------------------------------------------------------------------

Status = Literal["pending", "failed"]


async def deliveries_in(
    store: BlobStore,
    console: Console,
    *,
    status: Status,
    older_than: timedelta,
    limit: int,
    now: datetime,
) -> Result:
    """Deliveries whose manifest says ``status``, oldest first: one Find Blobs by Tags query (a
    page per 5000), then the oldest ``limit`` manifests read for their ids."""
    cutoff = _iso(now - older_than) if older_than > timedelta(0) else LATEST
    found: list[tuple[str, str]] = []  # (receivedAt, manifest name)
    method = "tags"
    walk = console.progress(f"finding {status}", unit="blob")
    try:
        async for name, tags in store.find_tagged(_tag_query(("copyStatus", "=", status), ("receivedAt", "<", cutoff))):
            found.append((tags.get("receivedAt", ""), name))
            walk.update(1)
    except TagsUnsupported:
        method = "listing"
        async for name, meta in store.listing():
            walk.update(1)
            received = unquote(meta.get("receivedat", ""))
            if name.endswith(MANIFEST_SUFFIX) and meta.get("copystatus") == status and received < cutoff:
                found.append((received, name))
    finally:
        walk.close()
    found.sort()
    chosen = [name for _, name in found[:limit]]
    manifests = await each(
        chosen, store.read_manifest, console.progress("reading manifests", total=len(chosen), unit="manifest")
    )
    items: list[dict[str, Any]] = []
    for name, manifest in zip(chosen, manifests, strict=True):
        if manifest is None or manifest.document.get("copyStatus") != status:
            continue  # settled meanwhile (the tag index lags writes by seconds)
        document = manifest.document
        blob = _delivery_of(name)
        items.append(
            {
                "blob": blob,
                "url": store.blob_url(blob),
                "manifest": name,
                "taskId": document.get("taskId"),
                "workspaceId": document.get("workspaceId"),
                "copyStatus": status,
                "copyId": document.get("copyId"),
                "receivedAt": document.get("receivedAt"),
                "ageSeconds": age_seconds(document.get("receivedAt"), now),
                "linkExpiresOn": document.get("linkExpiresOn") or document.get("exportedFileExpiresOn"),
            }
        )
    items.sort(key=lambda item: str(item["receivedAt"] or ""))
    truncated = len(found) > limit
    data = {
        "status": status,
        "olderThanMinutes": older_than.total_seconds() / 60,
        "method": method,
        "count": len(items),
        "total": len(found),
        "truncated": truncated,
        "deliveries": items,
    }
    rows = [
        [
            human_age(item["ageSeconds"]),
            str(item["receivedAt"]),
            str(item["taskId"]),
            str(item["workspaceId"]),
            item["blob"],
        ]
        for item in items
    ]
    text = table(["AGE", "RECEIVED", "TASK", "WORKSPACE", "BLOB"], rows) if rows else []
    noun = "delivery" if len(items) == 1 else "deliveries"
    text.append(f"{len(items)} {status} {noun}, oldest first." if items else f"No {status} deliveries.")
    if truncated:
        text.append(f"Showing the oldest {limit} of {len(found)}: raise --max to see more.")
    if method == "listing":
        text.append("(This account has no blob index tags: the whole container was listed.)")
    return Result(OK if items else NOT_FOUND, data, text)


# --- check -------------------------------------------------------------------------------------

Verdict = Literal["ok", "failed", "stale", "unfinished", "blob-missing", "not-found"]

_VERDICTS: dict[Verdict, str] = {
    "ok": "the manifest describes the blob",
    "failed": "the delivery failed for good and its blob was removed (as designed): export the document again",
    "stale": "the manifest does not describe the blob next to it (another export, or none)",
    "unfinished": "the manifest still says pending although the copy has concluded",
    "blob-missing": "the manifest describes a blob that is not there",
    "not-found": "neither the blob nor its manifest exists",
}
_ACTIONS = {
    "repaired": "rewrote the manifest from the blob's own metadata and tags (marked partial)",
    "finished": "finished the delivery as the queue function would (headers, manifest success)",
    "failed": "marked the delivery failed, as the queue function would (the link is gone or expired)",
    "superseded": "nothing: a newer export owns the blob",
    "pending": "nothing yet: the copy is still running",
    "skipped": "nothing: the manifest changed meanwhile (someone else wrote it); run check again",
    "unreadable": "nothing: the manifest could not be read",
}


def verdict_of(state: BlobState | None, manifest: Manifest | None) -> Verdict:
    if state is None:
        if manifest is None:
            return "not-found"
        status = manifest.document.get("copyStatus")
        return "failed" if status == "failed" else "unfinished" if status == "pending" else "blob-missing"
    if manifest is None or manifest.document.get("delivery") != state.delivery or not state.delivery:
        return "stale"
    return "ok" if describes(manifest, state.delivery, _blob_status(state), partial_ok=True) else "unfinished"


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


async def check(store: BlobStore, argument: str, *, repair: bool, now: datetime) -> Result:
    """Does the manifest describe its blob? With ``repair``, make it: a pending manifest is settled
    with the reconciliation's own rules (receiver.reconciliation.reconcile_one); any other stale
    one is rewritten from the blob (receiver.reconciliation.repair_manifest). Both write only on
    the manifest as read (If-Match / If-None-Match)."""
    name = blob_name_of(argument, store)
    manifest_name = name + MANIFEST_SUFFIX
    state, manifest = await read_delivery(store, name)
    verdict = verdict_of(state, manifest)
    before = summary(store, name, state, manifest)
    action: str | None = None
    if repair and verdict in ("stale", "unfinished", "blob-missing"):
        if manifest is not None and manifest.document.get("copyStatus") == "pending":
            action = await reconcile_one(store, manifest_name, now=now)
        elif state is not None:
            action = await repair_manifest(store, manifest_name, state, manifest, now=now)
        else:
            action = "impossible"
        state, manifest = await read_delivery(store, name)
        verdict = verdict_of(state, manifest)
    after = summary(store, name, state, manifest)
    data = {
        **after,
        "verdict": verdict,
        "explanation": _VERDICTS[verdict],
        "action": action,
        "before": before if action is not None else None,
    }
    text = _summary_lines(after, now)
    if action is not None:
        done = _ACTIONS.get(action, "nothing: there is no blob to describe; export the document again")
        text.append(f"  repair:     {done}")
    text.append(f"  verdict:    {verdict}: {_VERDICTS[verdict]}")
    if verdict in ("stale", "unfinished") and action is None:
        text.append("  (run again with --repair to fix it)")
    return Result(OK if verdict in ("ok", "failed") else NOT_FOUND, data, text)
