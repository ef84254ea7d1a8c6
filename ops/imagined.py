"""A dry run's container: the real one as it is now, changed only in memory.

A replay's dry run runs the queue function's own loop (:func:`receiver.engine.run`) on it, so what it
foresees is what that loop decides, step after step (a stray copy removed first, then the delivery decided
at the name its record holds), not a guess from the first step. Reads go to the real container until a
name is written here; every write lands here only, with the service's conditions (If-Match, create-only,
a container policy refusing overwrites and deletes). Nothing is ever sent to the real container but reads.
A copy lands while its link is valid and its size (a HEAD on the source) fits a synchronous copy: the dry
run assumes the source can still be read, and sees no lease or blob-level hold (a container's policy it sees).
"""

from __future__ import annotations

import builtins
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import replace
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

from receiver.settings import SYNC_COPY_LIMIT_MIB
from receiver.storage import (
    Blob,
    Conflict,
    Headers,
    Immutable,
    Listed,
    SourceUnreadable,
    SourceVersion,
    Storage,
    TooLargeForSyncCopy,
    Written,
)

_IMAGINING: ContextVar[bool] = ContextVar("imagining", default=False)


class _NotImagined(logging.Filter):
    """Drops the receiver's log records of an imagined run: they tell of writes that never happen."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _IMAGINING.get()


@contextlib.contextmanager
def imagining() -> Iterator[None]:
    """The receiver's log records are dropped while (and where: a context variable) this lasts."""
    quiet = _NotImagined()
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict) if name.startswith("receiver")]
    for logger in loggers:
        logger.addFilter(quiet)
    token = _IMAGINING.set(True)
    try:
        yield
    finally:
        _IMAGINING.reset(token)
        for logger in loggers:
            logger.removeFilter(quiet)


class Imagined:
    """:class:`receiver.storage.Storage` over ``real``: reads through, writes in memory (see the module)."""

    def __init__(self, real: Storage, *, now: datetime, content_type: str | None = None) -> None:
        self.real = real
        self.content_type = content_type  # what a copy carries from its source (the notification says)
        self.container = real.container
        self.now = now
        self.sent: list[str] = []  # the writes the run would send, in order ("put <name>", ...)
        self._changed: dict[str, tuple[Blob, bytes] | None] = {}  # None: deleted here
        self._staged: dict[str, set[str]] = {}
        self._policy: str | None = None
        self._asked = False
        self._etags = 0

    @property
    def tags_supported(self) -> bool:
        return self.real.tags_supported

    async def container_policy(self) -> str | None:
        if not self._asked:
            self._policy, self._asked = await self.real.container_policy(), True
        return self._policy

    async def container_exists(self) -> bool:
        return await self.real.container_exists()

    async def ensure_container(self) -> None:
        self.sent.append("create the container")

    async def read(self, name: str) -> Blob | None:
        if name in self._changed:
            found = self._changed[name]
            return None if found is None else found[0]
        return await self.real.read(name)

    async def read_bytes(self, name: str, *, max_bytes: int) -> tuple[Blob, bytes] | None:
        if name in self._changed:
            return self._changed[name]
        return await self.real.read_bytes(name, max_bytes=max_bytes)

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
        await self._writable(name, if_match)
        return self._land("put", name, data, Headers(content_type=content_type), metadata)

    async def copy_from_url(
        self,
        name: str,
        source_url: str,
        *,
        if_match: str | None,
        metadata: dict[str, str],
        tags: dict[str, str] | None,
    ) -> Written:
        await self._writable(name, if_match)
        self._readable(source_url)
        # The service copies up to its limit this way (a store of its own may say another: the in-memory one's).
        limit = getattr(self.real, "sync_limit_bytes", SYNC_COPY_LIMIT_MIB * 1024 * 1024)
        source = await self.real.source_version(source_url)  # a HEAD on the source through its own link: a read
        size = source.size if source is not None else None
        if size is not None and (size == 0 or size > limit):
            raise TooLargeForSyncCopy(f"The copy source is {size} bytes.", code="CannotVerifyCopySource", status=409)
        return self._land("copy", name, b"", Headers(content_type=self.content_type), metadata)

    async def source_version(self, source_url: str) -> SourceVersion | None:
        return await self.real.source_version(source_url)  # a HEAD on the source through its own link: a read

    async def stage_block(
        self, name: str, block_id: str, source_url: str, *, offset: int, length: int, source_etag: str | None = None
    ) -> None:
        self._readable(source_url)
        self._staged.setdefault(name, set()).add(block_id)

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
        await self._writable(name, if_match)
        if not set(block_ids) <= self._staged.get(name, set()):
            raise Conflict(f"{self.container}/{name}: a block is missing.", code="InvalidBlockList", status=400)
        self._staged.pop(name, None)
        return self._land("commit", name, b"", headers, metadata)

    async def set_headers(self, name: str, headers: Headers, *, if_match: str) -> Written:
        current = await self._writable(name, if_match)
        assert current is not None  # If-Match on a missing blob is refused above
        found = self._changed.get(name)
        return self._land("set headers of", name, found[1] if found else b"", headers, current.metadata)

    async def delete(self, name: str, *, if_match: str) -> bool:
        current = await self.read(name)
        if current is None:
            return False
        await self._writable(name, if_match)
        self._changed[name] = None
        self.sent.append(f"delete {name}")
        return True

    async def list(self, prefix: str) -> AsyncIterator[Listed]:
        seen: set[str] = set()
        async for item in self.real.list(prefix):
            seen.add(item.name)
            if item.name not in self._changed:
                yield item
            elif (found := self._changed[item.name]) is not None:
                yield _listed(found[0])
        for name in sorted(set(self._changed) - seen):
            found = self._changed[name]
            if found is not None and name.startswith(prefix):
                yield _listed(found[0])

    async def list_page(
        self, prefix: str, *, marker: str | None, size: int
    ) -> tuple[builtins.list[Listed], str | None]:
        items = [item async for item in self.list(prefix)]
        start = int(marker or 0)
        following = start + size
        return items[start:following], (str(following) if following < len(items) else None)

    def url(self, name: str) -> str:
        return self.real.url(name)

    # ---------------------------------------------------------------- inside

    async def _writable(self, name: str, if_match: str | None) -> Blob | None:
        """The blob a write replaces, after the service's checks."""
        current = await self.read(name)
        if if_match is None and current is not None:
            raise Conflict(f"{self.container}/{name} already exists.", code="BlobAlreadyExists", status=409)
        if if_match is not None and (current is None or current.etag != if_match):
            raise Conflict(f"{self.container}/{name} is not that version.", code="ConditionNotMet", status=412)
        policy = await self.container_policy()
        if current is not None and policy is not None:
            code = "BlobImmutableDueToLegalHold" if policy == "legal hold" else "BlobImmutableDueToPolicy"
            raise Immutable(f"{self.container}/{name} is immutable ({policy}).", code=code, status=409)
        return current

    def _readable(self, source_url: str) -> None:
        until = parse_qs(urlsplit(source_url).query).get("se", [""])[0]
        with contextlib.suppress(ValueError):
            expires = datetime.fromisoformat(until.replace("Z", "+00:00"))
            if expires.tzinfo is None:
                expires = expires.replace(tzinfo=UTC)
            if expires <= self.now:
                raise SourceUnreadable("The copy source's SAS has expired.", code="CannotVerifyCopySource", status=403)

    def _land(self, op: str, name: str, data: bytes, headers: Headers, metadata: dict[str, str]) -> Written:
        self._etags += 1
        etag = f'"imagined-{self._etags}"'
        blob = Blob(name, etag, len(data), headers, dict(metadata), created=self.now, last_modified=self.now)
        previous = self._changed.get(name)
        if previous is not None and previous[0].created is not None:
            blob = replace(blob, created=previous[0].created)
        self._changed[name] = (blob, data)
        self.sent.append(f"{op} {name}")
        return Written(etag, self.now)


def _listed(blob: Blob) -> Listed:
    return Listed(name=blob.name, etag=blob.etag, metadata=dict(blob.metadata), last_modified=blob.last_modified)


__all__ = ["Imagined", "imagining"]
