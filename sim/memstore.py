"""An in-memory blob container with the service's semantics, for the decision tests and the simulator.

:class:`MemoryStorage` implements :class:`receiver.storage.Storage` exactly. It is deterministic and
synchronous inside: its async methods never await anything, so one call is one atomic step of a
simulated schedule, and two stores fed the same calls end in equal :meth:`MemoryStorage.snapshot`\\ s.

What it models, as Azure Blob Storage does (docs/reference.md, "Destination accounts" and "Faults and retries"):

- ETags: every change (content, metadata, headers, a commit) gives the blob a new opaque ETag
  (``"0x8D..."``, quoted); staging a block changes nothing visible.
- Conditions: ``if_match=None`` creates only (an existing blob: :class:`Conflict` 409
  ``BlobAlreadyExists``); ``if_match=etag`` acts only on that version (another version or no blob:
  :class:`Conflict` 412 ``ConditionNotMet``). ``delete`` answers False when the blob is gone.
- Copy Blob From URL: the source is read through :class:`MemorySources` with the SAS checks the
  service makes (no ``sig``/``se``: 404; a bad signature or an ``se`` past the store's clock: 403;
  no such source: 404; all ``CannotVerifyCopySource``). A source over ``sync_limit_bytes`` or empty
  raises :class:`TooLargeForSyncCopy` (409 ``CannotVerifyCopySource``). The source's headers are
  carried, metadata is the call's, tags are set (when ``tags_supported``).
- Blocks: ``stage_block`` keeps uncommitted blocks per blob name (invisible to reads);
  ``commit_blocks`` makes the listed ones (uncommitted first, else the blob's committed block of
  that id: the SDK's "Latest") the content and discards every other uncommitted block of that
  name, so a second delivery's commit spoils the first's staged blocks (its commit then raises
  :class:`Conflict` 400 ``InvalidBlockList``). Uncommitted blocks also vanish with a Put Blob, a
  copy or a delete of the name, and a week after they were staged.
- Tags: at most 10, Azure's characters and lengths (else :class:`Rejected` 400 ``InvalidTag``).
  With ``tags_supported=False`` (an account with a hierarchical namespace) tags are dropped silently,
  as :class:`receiver.store.AzureStorage` does once it has learnt the account refuses them.
- Immutability (a retention policy or legal hold, via :class:`Faults`): overwriting, changing or
  deleting an existing blob raises :class:`Immutable` 409; creating a new blob is allowed.
- Time from an injectable clock (:class:`ManualClock` by default), in whole seconds as HTTP dates.

Fault injection (:class:`Faults`, :class:`FaultPlan`): before an operation acts (it then does
nothing), after it acted (its answer is lost: the state changed, the caller sees
:class:`Unavailable`), and immutable names.

Checked by hand against Azurite 3.35 with the raw SDK (the contract suite repeats it through
AzureStorage): copy carries Content-MD5 and the other headers and replaces metadata; 403 for an
expired or tampered SAS, 404 for a missing source; Put Blob stores an MD5; Put Block leaves the ETag;
Set Blob Properties clears every header not given (MD5 too); an unknown block: 400 InvalidBlockList;
If-Match on a missing blob: 412 for Put Blob, Put Block List and Set Blob Properties. Where Azurite
differs, this store follows Azure: a source without a SAS is 404 here (Azurite: 403); an empty source
is refused here (Azurite copies it). Azurite also answers 412, not 404, to a conditional delete of a
missing blob: the seam's ``delete`` must still return False there.

Not modelled: asynchronous Copy Blob (the design uses none), leases, snapshots, versions, soft
delete, Find Blobs by Tags, the equal-length rule for block ids, metadata name rules beyond ASCII.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import hmac
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Protocol
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from receiver.storage import (
    Blob,
    Conflict,
    Headers,
    Immutable,
    Listed,
    Rejected,
    SourceChanged,
    SourceUnreadable,
    SourceVersion,
    TooLargeForSyncCopy,
    Unavailable,
    Written,
)

__all__ = [
    "SYNC_COPY_LIMIT_BYTES",
    "FaultPlan",
    "Faults",
    "ManualClock",
    "MemorySources",
    "MemoryStorage",
    "NoFaults",
    "Source",
    "State",
    "StoredBlob",
]

SYNC_COPY_LIMIT_BYTES = 256 * 1024 * 1024
UNCOMMITTED_BLOCK_LIFETIME = timedelta(days=7)
MAX_TAGS = 10
_TAG_CHARS = re.compile(r"[A-Za-z0-9 +\-./:=_]*")
START = datetime(2026, 1, 1, tzinfo=UTC)


class ManualClock:
    """A clock that moves only when told: ``clock()`` is the time, ``clock.advance(...)`` moves it."""

    def __init__(self, start: datetime = START) -> None:
        self.time = start

    def __call__(self) -> datetime:
        return self.time

    def advance(self, by: timedelta) -> datetime:
        self.time += by
        return self.time


# ----------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    """One file in the sender's export storage."""

    data: bytes
    headers: Headers
    metadata: dict[str, str] = field(default_factory=dict)  # the sender's; a copy never carries it
    etag: str = '"0x0"'  # a new one each time the file is written (add, publish)


class MemorySources:
    """SmartDocumentor's export storage stand-in: files by URL path behind SAS URLs the store checks.

    A SAS here is ``sv``, ``se`` (expiry, ISO 8601), ``sr``, ``sp`` and ``sig`` (an HMAC of the path
    and the other fields with this registry's key): a tampered field fails the signature, as it
    does on the service.
    """

    def __init__(
        self,
        account_url: str = "https://exports.blob.core.windows.net",
        container: str = "anonymized-exports",
        *,
        now: Callable[[], datetime] | None = None,
        key: bytes = b"memory-sources-key",
    ) -> None:
        self.account_url = account_url.rstrip("/")
        self.container = container
        self.now = now or ManualClock()
        self._key = key
        self._files: dict[str, Source] = {}
        self._written = 0  # files written so far: each write's ETag
        self._foreign: dict[str, Source] = {}
        self._host = urlsplit(self.account_url).netloc
        self._links: dict[str, tuple[str | None, tuple[str, int] | None, datetime | None]] = {}  # see _read_link

    def path(self, name: str) -> str:
        return f"{urlsplit(self.account_url).path}/{self.container}/{name}"

    def add(
        self, name: str, data: bytes, headers: Headers | None = None, metadata: dict[str, str] | None = None
    ) -> None:
        """Store (or replace) the file ``name``; no URL is handed out."""
        self._written += 1
        etag = f'"0x{self._written:X}"'
        self._files[self.path(name)] = Source(data, headers or Headers(), dict(metadata or {}), etag)

    def remove(self, name: str) -> None:
        """The file is gone (the sender deleted it): copies from its URLs then answer 404."""
        self._files.pop(self.path(name), None)

    def rewrite(self, name: str, data: bytes) -> bool:
        """The sender writes the file again, at the same name, with its headers (a new ETag; its URLs still
        read it): False when it is gone."""
        found = self._files.get(self.path(name))
        if found is not None:
            self.add(name, data, found.headers, found.metadata)
        return found is not None

    def publish(
        self,
        name: str,
        data: bytes,
        headers: Headers | None = None,
        *,
        metadata: dict[str, str] | None = None,
        expires: datetime | None = None,
        expires_in: timedelta = timedelta(hours=2),
    ) -> str:
        """Store the file and return a SAS URL for it valid until ``expires`` (or now + ``expires_in``)."""
        self.add(name, data, headers, metadata)
        return self.sas_url(name, expires=expires or self.now() + expires_in)

    def sas_url(self, name: str, *, expires: datetime) -> str:
        """A SAS URL for ``name`` (whether or not the file exists) valid until ``expires``."""
        se = expires.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        fields = {"sv": "2025-01-05", "se": se, "sr": "b", "sp": "r"}
        fields["sig"] = self._sign(self.path(name), fields)
        return f"{self.account_url}/{self.container}/{quote(name, safe='~/')}?{urlencode(fields)}"

    def _sign(self, path: str, fields: dict[str, str]) -> str:
        """An HMAC of the path and every SAS field but ``sig``: change any of them and it fails."""
        signed = "\n".join([path, *(f"{key}={fields[key]}" for key in sorted(fields) if key != "sig")])
        return base64.b64encode(hmac.new(self._key, signed.encode(), hashlib.sha256).digest()).decode()

    def admit(self, url: str, data: bytes, headers: Headers | None = None) -> None:
        """Serve ``url``, a link signed elsewhere (a fixture's), exactly as given until its ``se``."""
        self._foreign[url] = Source(data, headers or Headers())

    def open(self, url: str, now: datetime) -> Source:
        """The file behind ``url`` as the service reads a copy source, or :class:`SourceUnreadable`."""
        if url in self._foreign:
            until = parse_qs(urlsplit(url).query).get("se", [""])[0]
            if not until or datetime.fromisoformat(until.replace("Z", "+00:00")) <= now:
                raise _unreadable("The copy source's SAS has expired.", 403)
            return self._foreign[url]
        link = self._links.get(url)
        if link is None:
            link = self._links[url] = self._read_link(url)
        path, refused, expiry = link
        if refused is not None:
            raise _unreadable(*refused)
        if expiry is not None and expiry <= now:
            raise _unreadable("The copy source's SAS has expired.", 403)
        found = self._files.get(path) if path is not None else None
        if found is None:
            raise _unreadable("The copy source does not exist.", 404)
        return found

    def _read_link(self, url: str) -> tuple[str | None, tuple[str, int] | None, datetime | None]:
        """What of ``url`` never changes: the path it names on this host (None: another host), the
        refusal its SAS earns whatever the time (missing, badly signed, unreadable expiry), its expiry."""
        parts = urlsplit(url)
        path = unquote(parts.path)
        fields = {key: values[0] for key, values in parse_qs(parts.query).items()}
        se, sig = fields.get("se"), fields.get("sig")
        here = path if parts.netloc == self._host else None
        if se is None or sig is None:
            # A private source without a SAS: the service does not admit it exists.
            return here, ("The copy source is private and the URL has no SAS.", 404), None
        if not hmac.compare_digest(self._sign(path, fields), sig):
            return here, ("The copy source's SAS signature does not match.", 403), None
        try:
            expiry = datetime.fromisoformat(se)
        except ValueError:
            return here, ("The copy source's SAS expiry is unreadable.", 403), None
        return here, None, expiry


def _unreadable(message: str, status: int) -> SourceUnreadable:
    """The service's answer to a copy source it cannot read: 403 for a refused SAS, 404 for no such file."""
    return SourceUnreadable(message, code="CannotVerifyCopySource", status=status)


# ------------------------------------------------------------------------------------------- faults


class Faults(Protocol):
    """Consulted by :class:`MemoryStorage` around every operation (``op`` is the method's name).

    ``before`` may raise a :class:`StoreError`: the operation then does nothing. ``after`` may raise
    one once the operation has acted: the state changed but the caller never hears the answer.
    ``immutable`` names the policy code (``BlobImmutableDueToPolicy``/``...LegalHold``) guarding an
    existing blob, or None.
    """

    def before(self, op: str, name: str) -> None: ...

    def after(self, op: str, name: str) -> None: ...

    def immutable(self, name: str) -> str | None: ...


class NoFaults:
    def before(self, op: str, name: str) -> None:
        return None

    def after(self, op: str, name: str) -> None:
        return None

    def immutable(self, name: str) -> str | None:
        return None


@dataclass
class _Rule:
    op: str | None
    name: str | None
    times: int
    fired: int = 0

    def take(self, op: str, name: str) -> bool:
        if self.fired >= self.times or self.op not in (None, op) or self.name not in (None, name):
            return False
        self.fired += 1
        return True


@dataclass
class FaultPlan:
    """A small, deterministic :class:`Faults`: rules that fire a bounded number of times, by op and name.

    ``op``/``name`` None match any. The simulator can also subclass it, or write its own
    :class:`Faults` (a seeded random one), since the store only calls the three methods.
    """

    _before: list[_Rule] = field(default_factory=list)
    _after: list[_Rule] = field(default_factory=list)
    _immutable: dict[str, str] = field(default_factory=dict)
    fired: list[tuple[str, str, str]] = field(default_factory=list)  # (when, op, name), in order

    def fail_before(self, op: str | None = None, name: str | None = None, *, times: int = 1) -> FaultPlan:
        """The operation raises :class:`Unavailable` (503 ServerBusy) without acting."""
        self._before.append(_Rule(op, name, times))
        return self

    def heal(self) -> None:
        """No more 503s or lost answers: the storage answers again (immutable names stay)."""
        self._before.clear()
        self._after.clear()

    def lose_answer(self, op: str | None = None, name: str | None = None, *, times: int = 1) -> FaultPlan:
        """The operation acts, then raises :class:`Unavailable` (its answer was lost on the way)."""
        self._after.append(_Rule(op, name, times))
        return self

    def make_immutable(self, name: str, *, legal_hold: bool = False) -> FaultPlan:
        """The existing blob ``name`` is under a retention policy (or a legal hold)."""
        self._immutable[name] = "BlobImmutableDueToLegalHold" if legal_hold else "BlobImmutableDueToPolicy"
        return self

    def release(self, name: str) -> FaultPlan:
        self._immutable.pop(name, None)
        return self

    def before(self, op: str, name: str) -> None:
        if any(rule.take(op, name) for rule in self._before):
            self.fired.append(("before", op, name))
            raise Unavailable(f"Injected: {op} {name} did not reach the service.", code="ServerBusy", status=503)

    def after(self, op: str, name: str) -> None:
        if any(rule.take(op, name) for rule in self._after):
            self.fired.append(("after", op, name))
            raise Unavailable(f"Injected: the answer to {op} {name} was lost.", code=None, status=None)

    def immutable(self, name: str) -> str | None:
        return self._immutable.get(name)


# -------------------------------------------------------------------------------------------- state


@dataclass(frozen=True)
class StoredBlob:
    """A committed blob, everything the service keeps about it (comparable, hashable)."""

    name: str
    data: bytes
    etag: str
    headers: Headers
    metadata: tuple[tuple[str, str], ...]
    tags: tuple[tuple[str, str], ...]
    created: datetime
    last_modified: datetime
    blocks: tuple[tuple[str, bytes], ...] = ()  # committed blocks (id, bytes), for a later "Latest" commit
    copy_status: str | None = None  # an asynchronous Copy Blob's (only blobs loaded as another writer left them)

    def as_blob(self) -> Blob:
        return Blob(
            name=self.name,
            etag=self.etag,
            size=len(self.data),
            headers=self.headers,
            metadata=dict(self.metadata),
            created=self.created,
            last_modified=self.last_modified,
            copy_status=self.copy_status,
        )


@dataclass(frozen=True)
class _Staged:
    data: bytes
    staged: datetime


@dataclass(frozen=True)
class State:
    """The whole container at one moment: compare two with ``==``."""

    container_exists: bool
    blobs: tuple[StoredBlob, ...]
    staged: tuple[tuple[str, tuple[tuple[str, bytes], ...]], ...]  # (blob name, ((block id, bytes), ...))


# -------------------------------------------------------------------------------------------- store


class MemoryStorage:
    """One container in memory (see the module's docstring for what it models)."""

    def __init__(
        self,
        container: str = "smartdocumentor",
        *,
        sources: MemorySources | None = None,
        now: Callable[[], datetime] | None = None,
        tags_supported: bool = True,
        sync_limit_bytes: int = SYNC_COPY_LIMIT_BYTES,
        faults: Faults | None = None,
        container_exists: bool = True,
        account_url: str = "https://customer.blob.core.windows.net",
    ) -> None:
        self.container = container
        self.now: Callable[[], datetime] = now or ManualClock()
        self.sources = sources or MemorySources(now=self.now)
        self.faults: Faults = faults or NoFaults()
        self.sync_limit_bytes = sync_limit_bytes
        self.account_url = account_url.rstrip("/")
        self.calls: list[tuple[str, str]] = []  # (op, name) of every call, faulted ones too
        self._tags_supported = tags_supported
        # A container-level retention policy or legal hold ("retention policy" | "legal hold"): every
        # overwrite, header change and delete of an existing blob is refused; creates pass.
        self.policy: str | None = None
        self._container_exists = container_exists
        self._blobs: dict[str, StoredBlob] = {}
        self._staged: dict[str, dict[str, _Staged]] = {}
        self._etags = 0

    # ---------------------------------------------------------------- helpers for tests and the simulator

    def blob_bytes(self, name: str) -> bytes | None:
        blob = self._blobs.get(name)
        return None if blob is None else blob.data

    def tags(self, name: str) -> dict[str, str] | None:
        blob = self._blobs.get(name)
        return None if blob is None else dict(blob.tags)

    def names(self) -> list[str]:
        return sorted(self._blobs)

    def stored(self, name: str) -> StoredBlob | None:
        return self._blobs.get(name)

    def staged_blocks(self, name: str) -> list[str]:
        """The uncommitted block ids of ``name``, in id order."""
        return sorted(self._staged.get(name, {}))

    def drop_container(self) -> None:
        """Someone deleted the container (with everything in it)."""
        self._container_exists = False
        self._blobs.clear()
        self._staged.clear()

    def snapshot(self) -> State:
        return State(
            container_exists=self._container_exists,
            blobs=tuple(self._blobs[name] for name in sorted(self._blobs)),
            staged=tuple(
                (name, tuple((bid, block.data) for bid, block in sorted(blocks.items())))
                for name, blocks in sorted(self._staged.items())
                if blocks
            ),
        )

    # ---------------------------------------------------------------- the Storage protocol

    async def container_policy(self) -> str | None:
        return self.policy

    @property
    def tags_supported(self) -> bool:
        return self._tags_supported

    async def container_exists(self) -> bool:
        self._enter("container_exists", "")  # refused or unreachable like any other call
        exists = self._container_exists
        self._leave("container_exists", "")
        return exists

    async def ensure_container(self) -> None:
        self._enter("ensure_container", "")
        self._container_exists = True
        self._leave("ensure_container", "")

    async def read(self, name: str) -> Blob | None:
        self._enter("read", name)
        blob = self._blobs.get(name) if self._container_exists else None
        self._leave("read", name)
        return None if blob is None else blob.as_blob()

    async def read_bytes(self, name: str, *, max_bytes: int) -> tuple[Blob, bytes] | None:
        self._enter("read_bytes", name)
        blob = self._blobs.get(name) if self._container_exists else None
        if blob is not None and len(blob.data) > max_bytes:
            raise Rejected(f"{self.container}/{name} is {len(blob.data)} bytes, more than the {max_bytes} expected.")
        self._leave("read_bytes", name)
        return None if blob is None else (blob.as_blob(), blob.data)

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
        self._enter("put", name)
        self._need_container()
        old = self._writable(name, if_match)
        self._check_metadata(metadata)
        self._check_tags(tags)
        headers = Headers(content_type=content_type, content_md5=hashlib.md5(data).digest())  # noqa: S324 (the service's MD5)
        written = self._store(name, old, data, headers, metadata, tags, blocks=())
        self._leave("put", name)
        return written

    async def copy_from_url(
        self,
        name: str,
        source_url: str,
        *,
        if_match: str | None,
        metadata: dict[str, str],
        tags: dict[str, str] | None,
    ) -> Written:
        self._enter("copy_from_url", name)
        self._need_container()
        old = self._writable(name, if_match)
        self._check_metadata(metadata)
        self._check_tags(tags)
        source = self.sources.open(source_url, self.now())
        size = len(source.data)
        if size == 0 or size > self.sync_limit_bytes:
            reason = (
                "is empty"
                if size == 0
                else f"is {size} bytes, over the {self.sync_limit_bytes} a synchronous copy takes"
            )
            raise TooLargeForSyncCopy(f"The copy source {reason}.", code="CannotVerifyCopySource", status=409)
        written = self._store(name, old, source.data, source.headers, metadata, tags, blocks=())
        self._leave("copy_from_url", name)
        return written

    async def source_version(self, source_url: str) -> SourceVersion | None:
        self._enter("source_version", "")
        try:
            source = self.sources.open(source_url, self.now())
            found: SourceVersion | None = SourceVersion(len(source.data), source.etag)
        except SourceUnreadable:
            found = None
        self._leave("source_version", "")
        return found

    async def stage_block(
        self, name: str, block_id: str, source_url: str, *, offset: int, length: int, source_etag: str | None = None
    ) -> None:
        self._enter("stage_block", name)
        self._need_container()
        source = self.sources.open(source_url, self.now())
        if source_etag is not None and source.etag != source_etag:
            # As the service answers a failed x-ms-source-if-match: the source's 412.
            raise SourceChanged(
                "The copy source changed (its ETag is not the one required).", code="CannotVerifyCopySource", status=412
            )
        if offset < 0 or length < 0 or offset + length > len(source.data):
            raise Rejected(
                f"The range {offset}+{length} is outside the copy source ({len(source.data)} bytes).",
                code="InvalidRange",
                status=416,
            )
        blocks = self._live_blocks(name)
        blocks[block_id] = _Staged(source.data[offset : offset + length], self.now())
        self._staged[name] = blocks
        self._leave("stage_block", name)

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
        self._enter("commit_blocks", name)
        self._need_container()
        old = self._writable(name, if_match)
        self._check_metadata(metadata)
        self._check_tags(tags)
        staged = self._live_blocks(name)
        committed = dict(old.blocks) if old is not None else {}
        chosen: list[tuple[str, bytes]] = []
        for block_id in block_ids:
            if block_id in staged:
                chosen.append((block_id, staged[block_id].data))
            elif block_id in committed:
                chosen.append((block_id, committed[block_id]))
            else:
                raise Conflict(
                    f"The block list of {self.container}/{name} names a block that is not staged.",
                    code="InvalidBlockList",
                    status=400,
                )
        data = b"".join(part for _, part in chosen)
        written = self._store(name, old, data, headers, metadata, tags, blocks=tuple(dict(chosen).items()))
        self._leave("commit_blocks", name)
        return written

    async def set_headers(self, name: str, headers: Headers, *, if_match: str) -> Written:
        self._enter("set_headers", name)
        self._need_container()
        old = self._writable(name, if_match)
        assert old is not None  # if_match is a str: _writable refused a missing blob
        written = self._change(replace(old, headers=headers, copy_status=None))  # as Set Blob Properties clears it
        self._leave("set_headers", name)
        return written

    async def delete(self, name: str, *, if_match: str) -> bool:
        self._enter("delete", name)
        self._need_container()
        old = self._blobs.get(name)
        if old is None:
            self._leave("delete", name)
            return False
        self._writable(name, if_match)
        del self._blobs[name]
        self._staged.pop(name, None)
        self._leave("delete", name)
        return True

    async def list(self, prefix: str) -> AsyncIterator[Listed]:
        # One snapshot at the first step of the iteration, as a single page of the service's listing.
        self._enter("list", prefix)
        listed = [
            Listed(b.name, b.etag, dict(b.metadata), b.last_modified, b.copy_status)
            for name, b in sorted(self._blobs.items())
            if name.startswith(prefix)
        ]
        self._leave("list", prefix)
        for item in listed:
            yield item

    async def list_page(
        self, prefix: str, *, marker: str | None, size: int
    ) -> tuple[builtins.list[Listed], str | None]:
        """One page of :meth:`list` from ``marker`` (the next page's first name, opaque to callers), and
        the marker of the page after it (None: this was the last)."""
        self._enter("list", prefix)
        names = [name for name in sorted(self._blobs) if name.startswith(prefix) and (marker is None or name >= marker)]
        page = [self._blobs[name] for name in names[:size]]
        self._leave("list", prefix)
        listed = [Listed(b.name, b.etag, dict(b.metadata), b.last_modified, b.copy_status) for b in page]
        return listed, names[size] if len(names) > size else None

    def load(
        self,
        name: str,
        data: bytes,
        *,
        content_type: str | None,
        metadata: dict[str, str],
        tags: dict[str, str] | None = None,
        created: datetime,
        last_modified: datetime,
        copy_status: str | None = None,
    ) -> None:
        """Put a blob as another writer left it (a fixture of a real container), with its own times (and the
        status of the asynchronous copy that wrote it, as the release before the task record copied)."""
        self._blobs[name] = StoredBlob(
            name=name,
            data=data,
            etag=self._new_etag(),
            headers=Headers(content_type=content_type, content_md5=hashlib.md5(data).digest()),  # noqa: S324
            metadata=tuple(sorted(metadata.items())),
            tags=tuple(sorted((tags or {}).items())) if self._tags_supported else (),
            created=created,
            last_modified=last_modified,
            copy_status=copy_status,
        )

    def url(self, name: str) -> str:
        return f"{self.account_url}/{self.container}/{quote(name, safe='~/')}"

    # ---------------------------------------------------------------- inside

    def _enter(self, op: str, name: str) -> None:
        self.calls.append((op, name))
        self.faults.before(op, name)

    def _leave(self, op: str, name: str) -> None:
        self.faults.after(op, name)

    def _need_container(self) -> None:
        # As AzureStorage does: a write into a missing container (deleted while the app ran) creates it
        # again and goes on. Reads of a missing container find nothing.
        self._container_exists = True

    def _writable(self, name: str, if_match: str | None) -> StoredBlob | None:
        """The blob the write may replace (None: it creates), or the service's refusal."""
        old = self._blobs.get(name)
        if if_match is None:
            if old is not None:
                raise Conflict(f"{self.container}/{name} already exists.", code="BlobAlreadyExists", status=409)
            return None
        if old is None or old.etag != if_match:
            raise Conflict(
                f"{self.container}/{name} is not the version {if_match}.", code="ConditionNotMet", status=412
            )
        policy = self.faults.immutable(name) or self._container_policy_code()
        if policy is not None:
            raise Immutable(f"{self.container}/{name} is immutable ({policy}).", code=policy, status=409)
        return old

    def _container_policy_code(self) -> str | None:
        if self.policy is None:
            return None
        return "BlobImmutableDueToLegalHold" if self.policy == "legal hold" else "BlobImmutableDueToPolicy"

    def _live_blocks(self, name: str) -> dict[str, _Staged]:
        """The name's uncommitted blocks, without those past the service's week."""
        cutoff = self.now() - UNCOMMITTED_BLOCK_LIFETIME
        return {bid: block for bid, block in self._staged.get(name, {}).items() if block.staged > cutoff}

    def _new_etag(self) -> str:
        self._etags += 1
        return f'"0x8DE{self._etags:012X}"'

    def _time(self) -> datetime:
        return self.now().replace(microsecond=0)

    def _store(
        self,
        name: str,
        old: StoredBlob | None,
        data: bytes,
        headers: Headers,
        metadata: dict[str, str],
        tags: dict[str, str] | None,
        *,
        blocks: tuple[tuple[str, bytes], ...],
    ) -> Written:
        """Replace the blob whole (a Put Blob, a copy or a commit); its uncommitted blocks go."""
        now = self._time()
        kept_tags = tuple(sorted((tags or {}).items())) if self._tags_supported else ()
        self._staged.pop(name, None)
        stored = StoredBlob(
            name=name,
            data=data,
            etag=self._new_etag(),
            headers=headers,
            metadata=tuple(sorted(metadata.items())),
            tags=kept_tags,
            created=old.created if old is not None else now,
            last_modified=now,
            blocks=blocks,
        )
        self._blobs[name] = stored
        return Written(etag=stored.etag, last_modified=now)

    def _change(self, blob: StoredBlob) -> Written:
        changed = replace(blob, etag=self._new_etag(), last_modified=self._time())
        self._blobs[blob.name] = changed
        return Written(etag=changed.etag, last_modified=changed.last_modified)

    def _check_tags(self, tags: dict[str, str] | None) -> None:
        if not tags or not self._tags_supported:
            return
        bad = len(tags) > MAX_TAGS or any(
            not (
                1 <= len(key) <= 128 and len(value) <= 256 and _TAG_CHARS.fullmatch(key) and _TAG_CHARS.fullmatch(value)
            )
            for key, value in tags.items()
        )
        if bad:
            raise Rejected("The tags break the service's rules.", code="InvalidTag", status=400)

    def _check_metadata(self, metadata: dict[str, str]) -> None:
        # Values travel as HTTP headers: Azure refuses what is not ASCII (the receiver encodes it first).
        if any(not (key.isascii() and key.isidentifier() and value.isascii()) for key, value in metadata.items()):
            raise Rejected(
                "The metadata is not ASCII, or a name is not an identifier.", code="InvalidMetadata", status=400
            )
