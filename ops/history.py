"""What the operator command line writes into a manifest, and the one log line beside each change.

Every manifest change the command line makes appends ``{"at", "by": "operator", "outcome",
"reason", ...}`` to the manifest's ``history`` (CONTRACT section 6) and logs one line: ERROR when
it fails or retires a delivery (CONTRACT section 8: nothing that will not be retried is quiet),
WARNING otherwise.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from receiver.plan import manifest_bytes, manifest_labels
from receiver.store import BlobStore, Conflict, Manifest

log = logging.getLogger("ops")

MAX_HISTORY = 50
MARKER = {"receiverkind": "manifest"}


def iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _with_history(document: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """``document`` with ``entry`` appended to its history (oldest first, the last 50 kept).
    Stands in for receiver.transitions.with_history until the core provides it."""
    history = document.get("history")
    entries = list(history) if isinstance(history, list) else []
    return {**document, "history": [*entries, entry][-MAX_HISTORY:]}


def operator_entry(now: datetime, outcome: str, reason: str, **extra: Any) -> dict[str, Any]:
    return {"at": iso(now), "by": "operator", "outcome": outcome, "reason": reason, **extra}


def is_manifest(metadata: dict[str, str]) -> bool:
    """Written by the receiver as a manifest: the marker, or (older manifests) its copystatus."""
    return metadata.get("receiverkind") == "manifest" or "copystatus" in metadata


async def write(store: BlobStore, manifest_name: str, document: dict[str, Any], snapshot: Manifest | None) -> bool:
    """Write ``document`` over the manifest as read (If-Match), or where there was none
    (If-None-Match). False when someone else wrote it first: then it is left alone."""
    status = str(document.get("copyStatus") or "pending")
    tags, metadata = manifest_labels(document, status)
    try:
        await store.write_manifest(
            manifest_name,
            manifest_bytes(document),
            etag=None if snapshot is None else snapshot.etag,
            tags=tags,
            metadata={**metadata, **MARKER},
        )
    except Conflict:
        return False
    return True


def record(store: BlobStore, blob_name: str, outcome: str, reason: str, *, error: bool) -> None:
    """The one log line of an operator change (never a URL query: none is ever in these)."""
    document_of = store.describe(blob_name)
    log.log(logging.ERROR if error else logging.WARNING, "operator %s %s: %s", outcome, document_of, reason)
