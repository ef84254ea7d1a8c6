"""The storage seam: the few operations the receiver asks of a blob container, as plain values.

Two implementations honour it: :class:`receiver.store.AzureStorage` (the Azure SDK, the only module
that imports ``azure.storage``) and ``sim.memstore.MemoryStorage`` (in memory, for the decision
tests and the simulator). One differential suite (tests/test_storage_contract.py) runs the same
checks against both, the second through a real Azurite, so the fake cannot drift from the service.

Rules every implementation keeps, as the service does:

- every write returns the blob's new ETag; any change to a blob (content, metadata, headers)
  gives it a new ETag;
- ``if_match=None`` on a write means "create only" (If-None-Match: *): an existing blob raises
  :class:`Conflict`; ``if_match=etag`` means "only over exactly this version": another version,
  or no blob, raises :class:`Conflict` (412);
- a delete is always conditional (If-Match); a blob already gone is not an error (returns False);
- a copy or commit either lands whole or leaves the destination exactly as it was;
- a read in a missing container finds nothing; a write creates the container again first (it may
  have been deleted while the app ran).

Errors are :class:`StoreError` kinds, decided by the service's error code and status, never by
exception class; their messages never carry a URL's query.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

__all__ = [
    "Blob",
    "BlobMissing",
    "Conflict",
    "ContainerMissing",
    "Headers",
    "Immutable",
    "Listed",
    "Misconfigured",
    "Rejected",
    "SourceChanged",
    "SourceUnreadable",
    "SourceVersion",
    "Storage",
    "StoreError",
    "TooLargeForSyncCopy",
    "Unavailable",
    "Written",
    "copy_incomplete",
]


@dataclass(frozen=True)
class Headers:
    """A blob's HTTP headers. Setting one replaces them all, so they travel together."""

    content_type: str | None = None
    content_md5: bytes | None = None
    content_encoding: str | None = None
    content_language: str | None = None
    content_disposition: str | None = None
    cache_control: str | None = None


@dataclass(frozen=True)
class Blob:
    """A blob's properties (no content)."""

    name: str
    etag: str
    size: int
    headers: Headers
    metadata: dict[str, str] = field(default_factory=dict)
    created: datetime | None = None
    last_modified: datetime | None = None
    # The status of the Copy Blob that last wrote it (None: none did, or Set Blob Properties cleared it since).
    copy_status: str | None = None

    @property
    def delivery(self) -> str | None:
        """The ``delivery`` hash the receiver wrote in the blob's metadata (None: not the receiver's file, or
        one whose asynchronous copy, by the release before the task record, is pending, failed or aborted: its
        metadata is there, its delivery's bytes are not)."""
        return None if copy_incomplete(self.copy_status) else self.metadata.get("delivery")


def copy_incomplete(status: str | None) -> bool:
    """Did an asynchronous Copy Blob leave the blob without its source's bytes (still pending, failed, aborted)?"""
    return status is not None and status != "success"


@dataclass(frozen=True)
class Written:
    """What a write answered: the blob's new ETag and the service's time of the write."""

    etag: str
    last_modified: datetime | None = None


@dataclass(frozen=True)
class SourceVersion:
    """What a HEAD through the link's own SAS says of the exported file: its size, and its ETag (None
    when the answer has none), which every block staged from it then requires (a rewrite between two
    blocks fails the next one instead of mixing two versions)."""

    size: int
    etag: str | None = None


@dataclass(frozen=True)
class Listed:
    """One blob of a listing, with its metadata."""

    name: str
    etag: str
    metadata: dict[str, str]
    last_modified: datetime | None = None
    copy_status: str | None = None  # as :attr:`Blob.copy_status`


class StoreError(Exception):
    """A storage call failed; ``kind`` tells the core what to answer."""

    kind = "unavailable"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


class Unavailable(StoreError):
    """Unreachable, throttled, timed out, or an answer that was lost: it may or may not have acted."""

    kind = "unavailable"


class Conflict(StoreError):
    """A condition failed (412, or 409 on a create): someone else changed the blob first."""

    kind = "conflict"


class BlobMissing(StoreError):
    kind = "blob-missing"


class ContainerMissing(StoreError):
    kind = "container-missing"


class SourceChanged(Unavailable):
    """A block's source condition failed (412): the exported file was rewritten since its size was read.
    Staged again from a new look at it, never committed with blocks of two versions."""


class SourceUnreadable(StoreError):
    """The service could not read the source (the SAS refused, the file gone): a 502 for the sender."""

    kind = "source"


class TooLargeForSyncCopy(StoreError):
    """Copy Blob From URL refused the source (over 256 MiB, or empty): stage it in blocks instead."""

    kind = "too-large"


class Misconfigured(StoreError):
    """The identity is refused, or the account cannot be reached by it: a setting or a role to fix."""

    kind = "misconfigured"


class Immutable(StoreError):
    """A retention policy or legal hold refused the write (409 BlobImmutableDueTo...). ``copied``: the name
    this delivery's copy had already landed at (a policy set since the process asked), which now stays."""

    kind = "immutable"
    copied: str | None = None

    @property
    def policy(self) -> str:
        return "legal hold" if "LegalHold" in (self.code or "") else "retention policy"


class Leased(StoreError):
    """A lease another client holds on the blob refused a write (412 LeaseIdMissing): nothing was written.
    Leases lapse or get broken, so the delivery is tried again, not failed; the request ends at once."""

    kind = "leased"


class Rejected(StoreError):
    """A 4xx the receiver did not expect: a bug, not an outage."""

    kind = "rejected"


class UnreadableRecord(Rejected):
    """A task record that does not parse (changed outside the receiver): a person restores it."""


class Storage(Protocol):
    """One destination container. Every method may raise :class:`StoreError`."""

    container: str

    @property
    def tags_supported(self) -> bool:
        """False once the account is known to have no blob index tags (hierarchical namespace):
        tags then go nowhere, and nothing the receiver decides depends on them."""
        ...

    async def container_policy(self) -> str | None:
        """What refuses overwrites in the container ("retention policy", "legal hold") or None; asked
        once (version-level immutability counts as None: an overwrite makes a new version)."""
        ...

    async def container_exists(self) -> bool:
        """Does the container exist? (The operator's command line: a wrong name is said so, never created.)"""
        ...

    async def ensure_container(self) -> None:
        """Create the container when it is missing (also when it was deleted while the app ran)."""
        ...

    async def read(self, name: str) -> Blob | None:
        """The blob's properties, or None when it does not exist."""
        ...

    async def read_bytes(self, name: str, *, max_bytes: int) -> tuple[Blob, bytes] | None:
        """A small blob (a record, a manifest) with its properties; None when it does not exist.
        Raises :class:`Rejected` when it is larger than ``max_bytes`` (nothing past that is read)."""
        ...

    async def put(
        self,
        name: str,
        data: bytes,
        *,
        if_match: str | None,
        content_type: str,
        metadata: dict[str, str],
        tags: dict[str, str] | None = None,
    ) -> Written:
        """Put a small blob (record, manifest): create it (``if_match=None``) or replace that version."""
        ...

    async def copy_from_url(
        self,
        name: str,
        source_url: str,
        *,
        if_match: str | None,
        metadata: dict[str, str],
        tags: dict[str, str] | None,
    ) -> Written:
        """Copy Blob From URL (synchronous): the answer comes once the bytes are committed. The
        source's headers are carried. Raises :class:`TooLargeForSyncCopy` for a source the service
        will not copy this way, :class:`SourceUnreadable` for a refused or missing one."""
        ...

    async def source_version(self, source_url: str) -> SourceVersion | None:
        """The source's size and ETag from a HEAD through its own SAS; None when the answer does not say."""
        ...

    async def stage_block(
        self, name: str, block_id: str, source_url: str, *, offset: int, length: int, source_etag: str | None = None
    ) -> None:
        """Put Block From URL: stage one range of the source as an uncommitted block of ``name``; with
        ``source_etag``, only from that version of it (x-ms-source-if-match), else :class:`SourceChanged`."""
        ...

    async def commit_blocks(
        self,
        name: str,
        block_ids: Sequence[str],
        *,
        if_match: str | None,
        headers: Headers,
        metadata: dict[str, str],
        tags: dict[str, str] | None,
    ) -> Written:
        """Put Block List: commit the staged blocks as the blob, with its headers, metadata and tags,
        in one step. A missing block raises :class:`Conflict` (InvalidBlockList: another delivery's
        commit discarded it): observe again."""
        ...

    async def set_headers(self, name: str, headers: Headers, *, if_match: str) -> Written:
        """Set Blob Properties (all headers at once) on exactly the version ``if_match``."""
        ...

    async def delete(self, name: str, *, if_match: str) -> bool:
        """Delete exactly the version ``if_match``; False when the blob was already gone."""
        ...

    def list(self, prefix: str) -> AsyncIterator[Listed]:
        """Every blob whose name starts with ``prefix``, in name order, with its metadata."""
        ...

    async def list_page(
        self, prefix: str, *, marker: str | None, size: int
    ) -> tuple[builtins.list[Listed], str | None]:
        """One page of :meth:`list` (at most ``size``) from ``marker`` (opaque: the last page's), and
        the marker of the next page (None: this was the last)."""
        ...

    def url(self, name: str) -> str:
        """The blob's URL without any query."""
        ...
