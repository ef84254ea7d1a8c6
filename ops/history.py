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

from receiver.plan import is_manifest_metadata as is_manifest
from receiver.plan import manifest_bytes, manifest_labels
from receiver.store import BlobStore, Conflict, Manifest
from receiver.transitions import iso, with_history

__all__ = ["is_manifest", "iso", "operator_entry", "record", "with_history", "write"]

log = logging.getLogger("ops")


def operator_entry(now: datetime, outcome: str, reason: str, **extra: Any) -> dict[str, Any]:
    return {"at": iso(now), "by": "operator", "outcome": outcome, "reason": reason, **extra}


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
            metadata=metadata,
        )
    except Conflict:
        return False
    return True


def record(store: BlobStore, blob_name: str, outcome: str, reason: str, *, error: bool) -> None:
    """The one log line of an operator change (never a URL query: none is ever in these)."""
    document_of = store.describe(blob_name)
    log.log(logging.ERROR if error else logging.WARNING, "operator %s %s: %s", outcome, document_of, reason)
