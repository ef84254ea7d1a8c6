"""What the operator command line writes into a manifest, and the one log line beside each change.

Every manifest change the command line makes appends ``{"at", "by": "operator", "outcome",
"reason", ...}`` to the manifest's ``history`` (CONTRACT section 6) and logs one line: ERROR when
it fails or retires a delivery (CONTRACT section 8: nothing that will not be retried is quiet),
WARNING otherwise.
"""

from __future__ import annotations

import logging

from receiver.plan import is_manifest_metadata as is_manifest
from receiver.store import BlobStore
from receiver.transitions import iso

__all__ = ["is_manifest", "iso", "record"]

log = logging.getLogger("ops")


def record(store: BlobStore, blob_name: str, outcome: str, reason: str, *, error: bool) -> None:
    """The one log line of an operator change (never a URL query: none is ever in these)."""
    document_of = store.describe(blob_name)
    log.log(logging.ERROR if error else logging.WARNING, "operator %s %s: %s", outcome, document_of, reason)
