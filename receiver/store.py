"""The only module that talks to Azure Storage.

It owns the aio client (one per process and event loop), the retry policy, and the
translation of storage errors, by ``error_code`` and status rather than exception class,
into the core's own :class:`StoreError` kinds. Nothing here ever formats a source URL with
its query into a message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError
from azure.storage.blob import ContentSettings
from azure.storage.blob.aio import BlobClient, BlobServiceClient, ContainerClient, ExponentialRetry
from yarl import URL

from .plan import is_manifest_metadata
from .settings import Settings, SettingsError
from .source import redact
from .telemetry import about, count_storage_request

__all__ = ["BlobState", "BlobStore", "ContentSettings", "Manifest", "StoreError"]

log = logging.getLogger("receiver.store")
# azure-core logs every request's headers at INFO; in Functions (INFO and up go to Application
# Insights) that is two multi-line records per storage call. Warnings and errors still show.
logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)

# The SDK default (15 s initial backoff, base 3) can sleep about a minute on a throttled
# call; SmartDocumentor needs an answer well inside 60 s. ExponentialRetry sleeps
# initial_backoff + increment_base**n (n = 1, 2, 3) +- jitter: about 1.7, 2.5 and 3.6 s,
# so an exhausted call gives up after ~8 s asleep. (Floats work; the SDK hints say int.)
RETRY: dict[str, Any] = {"initial_backoff": 0.2, "increment_base": 1.5, "retry_total": 3, "random_jitter_range": 0.3}
CONNECTION_TIMEOUT_SECONDS = 3
READ_TIMEOUT_SECONDS = 10
# A manifest is a few KiB. Reading a blob as a manifest fetches at most this much before its metadata
# says whether it is one; a large file that is not is never downloaded whole.
MAX_MANIFEST_BYTES = 1024 * 1024
# A synchronous copy (Copy Blob From URL) answers only when the bytes are committed, so it may take
# many seconds. The service gives up after SYNC_COPY_SERVER_TIMEOUT_SECONDS (500 OperationTimedOut,
# nothing written); the client waits a little longer so that the service's answer, not a client
# timeout, normally ends the call. The delivery's own budget bounds everything (webhook.py).
SYNC_COPY_SERVER_TIMEOUT_SECONDS = 30
COPY_READ_TIMEOUT_SECONDS = 35

_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
_CONFLICT_CODES = {"BlobAlreadyExists", "PendingCopyOperation", "ConditionNotMet", "TargetConditionNotMet"}
_PERMISSION_CODES = {
    "AuthorizationPermissionMismatch",
    "AuthorizationFailure",
    "AuthenticationFailed",
    "InsufficientAccountPermissions",
    "KeyBasedAuthenticationNotPermitted",
    "AuthorizationSourceIPMismatch",
    "AuthorizationProtocolMismatch",
    "AccountIsDisabled",
}


class StoreError(Exception):
    """A storage call failed; ``kind`` tells the core what to answer."""

    kind = "unavailable"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(redact(message))
        self.message = redact(message)
        self.code = code
        self.status = status


class StorageUnavailable(StoreError):
    kind = "unavailable"


class StorageRejected(StoreError):
    """A 4xx the receiver did not expect (e.g. InvalidMetadata): a bug, not an outage."""

    kind = "rejected"


class SourceUnreadable(StoreError):
    kind = "source"


class DestinationMisconfigured(StoreError):
    kind = "misconfigured"


class Conflict(StoreError):
    kind = "conflict"


class SyncCopyRefused(StoreError):
    """The service will not copy this source synchronously (over 256 MiB, or empty): copy it asynchronously."""

    kind = "sync-refused"


class ContainerMissing(StoreError):
    kind = "container-missing"


class BlobMissing(StoreError):
    """404 on a blob the caller reads or deletes: an answer ("not there"), not a failure."""

    kind = "blob-missing"


class TagsUnsupported(StoreError):
    """The account has no blob index tags (e.g. hierarchical namespace, or not general-purpose v2)."""

    kind = "tags-unsupported"


def _tags_unsupported(code: str) -> bool:
    return ("Tag" in code and "NotSupported" in code) or code in {
        "FeatureNotSupportedForAccount",
        "FeatureNotSupportedOnHierarchicalNamespaceEnabledAccount",
    }


@dataclass(frozen=True)
class BlobState:
    """What the destination blob looks like now."""

    etag: str
    delivery: str | None
    copy_id: str | None
    copy_status: str | None  # pending | success | failed | aborted | None (no copy recorded)
    copy_description: str | None
    content_settings: ContentSettings
    size: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    # When storage says the blob was created, last written, and its last copy completed (None: unknown).
    creation_time: datetime | None = None
    last_modified: datetime | None = None
    copy_completion_time: datetime | None = None

    @property
    def content_type(self) -> str | None:
        return self.content_settings.content_type

    @property
    def copy_settled(self) -> bool:
        """The last copy is over (or there was none): the blob holds what it will hold."""
        return self.copy_status in (None, "success")


@dataclass(frozen=True)
class CopyStarted:
    copy_id: str
    status: str  # "success" or "pending"
    etag: str
    tags_written: bool = True


@dataclass(frozen=True)
class Manifest:
    """A manifest as read, with the ETag a conditional rewrite must match.

    ``foreign``: a blob sits at the manifest's name that the receiver did not write as a manifest
    (no marker): it is never read as one, repaired or overwritten.
    """

    document: dict[str, Any]
    etag: str
    foreign: bool = False


def _classify(exc: Exception, operation: str, account: str, container: str) -> StoreError:
    # A credential that cannot get a token raises ClientAuthenticationError without a response.
    if isinstance(exc, ClientAuthenticationError) and getattr(exc, "status_code", None) is None:
        return DestinationMisconfigured(
            f"The function could not get a token for {account} (managed identity): enable the "
            "function app's identity, or set DESTINATION_CONNECTION_STRING."
        )
    if isinstance(exc, HttpResponseError) and exc.status_code is not None:
        # error_code may be a StorageErrorCode enum or a plain string; compare on the value.
        raw_code = getattr(exc, "error_code", None)
        code = str(getattr(raw_code, "value", raw_code) or "")
        status = exc.status_code
        if _tags_unsupported(code):
            return TagsUnsupported(f"{operation}: {code}", code=code, status=status)
        if "CopySource" in code and status == 409:
            # Copy Blob From URL refuses a source over 256 MiB (or an empty one) with 409, while a
            # refused or missing source is 403/404 with the same code.
            return SyncCopyRefused(f"{operation}: {code}", code=code, status=status)
        if (
            "CopySource" in code
            or code.startswith("Source")
            or code in {"InvalidSourceBlobUrl", "InvalidSourceBlobType"}
        ):
            return SourceUnreadable(f"{operation}: {code}", code=code, status=status)
        if code in _CONFLICT_CODES or status in (409, 412):
            return Conflict(f"{operation}: {code or status}", code=code, status=status)
        if code == "ContainerNotFound":
            return ContainerMissing(f"The container {container} does not exist in {account}.", code=code, status=status)
        if code in _PERMISSION_CODES or status in (401, 403):
            return DestinationMisconfigured(
                f"Azure Storage refused {operation} on {account}/{container} ({code or status}): grant the "
                f"function's identity Storage Blob Data Owner on {account}, and check the account's firewall.",
                code=code,
                status=status,
            )
        if status == 404:
            return BlobMissing(f"{operation}: not found", code=code, status=status)
        if 400 <= status < 500 and status != 408:
            # The service refused the request itself: retrying cannot help, so it is not "unavailable".
            return StorageRejected(f"Azure Storage rejected {operation} ({status} {code}).", code=code, status=status)
        return StorageUnavailable(
            f"Azure Storage answered {status} {code} to {operation} on {account}.", code=code, status=status
        )
    return StorageUnavailable(f"Azure Storage at {account} could not be reached ({type(exc).__name__}).")


MAX_INDEXTAGS_METADATA = 2048


def tags_as_metadata(tags: dict[str, str]) -> dict[str, str]:
    """Index tags kept as one metadata value (``indextags``, URL-encoded) on accounts without tags.

    Capped at whole pairs so blob metadata stays under Azure's 8 KB; the manifest has them all.
    """
    kept = ""
    for key, value in tags.items():
        pair = urlencode({key: value}, quote_via=quote)
        candidate = f"{kept}&{pair}" if kept else pair
        if len(candidate) > MAX_INDEXTAGS_METADATA:
            break
        kept = candidate
    return {"indextags": kept}


class BlobStore:
    """Destination container operations. Create with :meth:`open` on the loop that will use it.

    Every write after a copy is conditional: the caller passes the ETag it owns (If-Match), or asks
    for a blob that must not exist yet (If-None-Match: *). A :class:`Conflict` then means that
    another request changed the blob first; the caller decides, never this module.
    """

    def __init__(self, service: BlobServiceClient, container: str, credential: Any = None) -> None:
        self._service = service
        self._credential = credential
        self.container_name = container
        self.account = service.account_name or "the storage account"
        self._container: ContainerClient = service.get_container_client(container)
        self._container_ready = False
        self._container_lock = asyncio.Lock()
        self.tags_supported = True  # learnt from the first refusal, then tags go to metadata directly
        self._blobs: dict[str, BlobClient] = {}
        self._http: aiohttp.ClientSession | None = None  # for the source size probe only

    @classmethod
    def open(cls, settings: Settings) -> BlobStore:
        options: dict[str, Any] = {
            "retry_policy": ExponentialRetry(**RETRY),
            "connection_timeout": CONNECTION_TIMEOUT_SECONDS,
            "read_timeout": READ_TIMEOUT_SECONDS,
            # With use_env_settings, aiohttp looks up ~/.netrc and the proxy variables on every request
            # (about 1 ms of CPU each, make bench). Only worth it when a proxy is actually configured.
            "use_env_settings": any(os.environ.get(name) for name in _PROXY_VARIABLES),
            # The receiver downloads only manifests: the first GET then covers a whole one.
            "max_single_get_size": MAX_MANIFEST_BYTES,
        }
        if settings.destination_connection_string is not None:
            try:
                service = BlobServiceClient.from_connection_string(
                    settings.destination_connection_string.get_secret_value(), **options
                )
            except ValueError:
                raise SettingsError(
                    "DESTINATION_CONNECTION_STRING",
                    "The app setting DESTINATION_CONNECTION_STRING is not a valid storage connection string: copy it "
                    "again from the storage account's Access keys page, or use DESTINATION_ACCOUNT_URL.",
                ) from None
            return cls(service, settings.destination_container)
        from azure.identity.aio import DefaultAzureCredential  # only deployments with identity pay for it

        credential = DefaultAzureCredential()
        assert settings.destination_account_url is not None
        service = BlobServiceClient(settings.destination_account_url, credential=credential, **options)
        return cls(service, settings.destination_container, credential)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
        await self._service.close()
        if self._credential is not None:
            await self._credential.close()

    def blob_url(self, name: str) -> str:
        """The blob's URL without any query (encoded as the SDK encodes it)."""
        return f"{self._container.url.split('?', 1)[0]}/{quote(name, safe='~/')}"

    def describe(self, name: str) -> str:
        """How logs and answers name a blob: ``container/name``."""
        return f"{self.container_name}/{name}"

    def _blob(self, name: str) -> BlobClient:
        """One client per blob name, reused across a delivery's calls (building one costs CPU)."""
        client = self._blobs.get(name)
        if client is None:
            if len(self._blobs) >= 256:
                self._blobs.clear()
            client = self._blobs[name] = self._container.get_blob_client(name)
        return client

    async def source_size(self, source_url: str) -> int | None:
        """The source file's size in bytes, from a plain HEAD with the link's own SAS; None when unknown.

        Only asked when SYNC_COPY_MAX_MIB is below the service's own limit. One try, short timeout;
        nothing here logs or raises the URL.
        """
        count_storage_request()
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=5, connect=CONNECTION_TIMEOUT_SECONDS), auto_decompress=False
            )
        try:
            async with self._http.head(URL(source_url, encoded=True), allow_redirects=False) as response:
                length = response.headers.get("Content-Length")
                return int(length) if response.status == 200 and length and length.isdigit() else None
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return None

    @asynccontextmanager
    async def _call(self, operation: str) -> AsyncIterator[None]:
        count_storage_request()
        try:
            yield
        except StoreError:
            raise
        except (TimeoutError, AzureError, OSError) as exc:
            error = _classify(exc, operation, self.account, self.container_name)
            # Conflicts, a missing container and a too-large synchronous copy are answers the caller handles.
            expected = isinstance(error, Conflict | ContainerMissing | BlobMissing | SyncCopyRefused)
            level = logging.DEBUG if expected else logging.WARNING
            log.log(level, "storage %s failed %s: %s", operation, about(), error.message)
            raise error from None

    async def ensure_container(self, *, again: bool = False) -> None:
        """Create the container (private) once per process; ``again`` after it was found missing."""
        if self._container_ready and not again:
            return
        async with self._container_lock:
            if self._container_ready and not again:
                return
            try:
                async with self._call("create container"):
                    await self._container.create_container()
                log.info("created the container %s in %s", self.container_name, self.account)
            except Conflict:
                pass  # ContainerAlreadyExists
            except DestinationMisconfigured as exc:
                # Allowed to write blobs but not to create containers: fine if it exists.
                if not await self.container_exists():
                    raise DestinationMisconfigured(
                        f"The container {self.container_name} does not exist in {self.account} and the function "
                        "may not create it: create it, or grant Storage Blob Data Owner on the account.",
                        code=exc.code,
                        status=exc.status,
                    ) from None
            self._container_ready = True

    async def container_exists(self) -> bool:
        async with self._call("read container"):
            return bool(await self._container.exists())

    async def start_copy(
        self,
        name: str,
        source_url: str,
        *,
        metadata: dict[str, str],
        tags: dict[str, str],
        sync: bool,
        if_etag: str | None = None,
    ) -> CopyStarted:
        """Server-side copy onto a missing blob (If-None-Match: *), or over the one with ``if_etag`` (If-Match).

        ``sync`` asks for Copy Blob From URL: the answer comes when the bytes are committed. A
        source the service will not copy that way raises :class:`SyncCopyRefused`.
        """
        conditions: dict[str, Any]
        if if_etag is not None:
            conditions = {"etag": if_etag, "match_condition": MatchConditions.IfNotModified}
        else:
            conditions = {"match_condition": MatchConditions.IfMissing}
        if sync:
            conditions |= {"requires_sync": True, "timeout": SYNC_COPY_SERVER_TIMEOUT_SECONDS}
        blob = self._blob(name)
        container_created = False
        while True:
            with_tags = self.tags_supported and bool(tags)
            try:
                async with self._call("copy"):
                    result = await blob.start_copy_from_url(
                        source_url,
                        metadata=metadata if with_tags or not tags else {**metadata, **tags_as_metadata(tags)},
                        tags=tags if with_tags else None,
                        read_timeout=COPY_READ_TIMEOUT_SECONDS,
                        **conditions,
                    )
                return CopyStarted(
                    str(result["copy_id"]),
                    str(result["copy_status"]),
                    str(result["etag"]),
                    tags_written=with_tags or not tags,
                )
            except ContainerMissing:
                if container_created:
                    raise
                await self.ensure_container(again=True)  # also when it was deleted while the app ran
                container_created = True
            except TagsUnsupported:
                if not with_tags:
                    raise
                log.warning("%s has no blob index tags; keeping tags in metadata instead", self.account)
                self.tags_supported = False

    async def state(self, name: str) -> BlobState | None:
        blob = self._blob(name)
        try:
            async with self._call("read blob"):
                props = await blob.get_blob_properties()
        except (BlobMissing, ContainerMissing):
            return None
        copy = props.copy
        return BlobState(
            etag=str(props.etag),
            delivery=(props.metadata or {}).get("delivery"),
            copy_id=copy.id if copy else None,
            copy_status=copy.status if copy else None,
            copy_description=redact(copy.status_description) if copy and copy.status_description else None,
            content_settings=props.content_settings,
            size=int(props.size or 0),
            metadata=dict(props.metadata or {}),
            creation_time=props.creation_time,
            last_modified=props.last_modified,
            copy_completion_time=copy.completion_time if copy else None,
        )

    async def set_content_type(self, name: str, current: BlobState, content_type: str) -> str:
        """Set Content-Type on the blob as ``current`` saw it (If-Match), every other header unchanged.

        Set Blob Properties replaces all headers, so Content-MD5 and the rest are passed back. It
        also clears the blob's x-ms-copy-* properties. Returns the new ETag.
        """
        old = current.content_settings
        settings = ContentSettings(
            content_type=content_type,
            content_encoding=old.content_encoding,
            content_language=old.content_language,
            content_disposition=old.content_disposition,
            cache_control=old.cache_control,
            content_md5=old.content_md5,
        )
        async with self._call("set headers"):
            result = await self._blob(name).set_http_headers(
                content_settings=settings, etag=current.etag, match_condition=MatchConditions.IfNotModified
            )
        return str(result["etag"])

    async def write_manifest(
        self, name: str, data: bytes, *, etag: str | None, tags: dict[str, str], metadata: dict[str, str]
    ) -> str:
        """Write a manifest over the one with ``etag`` (If-Match), or a new one (If-None-Match: *).

        ``tags`` (copyStatus, receivedAt, ids) make unfinished deliveries findable with one Find
        Blobs by Tags call; ``metadata`` carries the same status for accounts without index tags.
        """
        conditions: dict[str, Any] = (
            {"overwrite": True, "etag": etag, "match_condition": MatchConditions.IfNotModified}
            if etag is not None
            else {"overwrite": False}
        )
        while True:
            with_tags = self.tags_supported
            try:
                async with self._call("write manifest"):
                    result = await self._blob(name).upload_blob(
                        data,
                        content_settings=ContentSettings(content_type="application/json"),
                        metadata=metadata,
                        tags=tags if with_tags else None,
                        **conditions,
                    )
                return str(result["etag"])
            except TagsUnsupported:
                if not with_tags:
                    raise
                self.tags_supported = False

    async def pending_manifests(self, *, received_before: str, limit: int) -> list[tuple[str, str]]:
        """Manifests that still say ``pending``, received before the given ISO time, with their
        ``receivedAt``, oldest first as far as the service orders them. One Find Blobs by Tags call per
        page of results; on an account without index tags, a listing of the container with metadata
        (slower: its cost grows with the container)."""
        if self.tags_supported:
            query = f"\"copyStatus\"='pending' AND \"receivedAt\" < '{received_before}'"
            found: list[tuple[str, str]] = []
            try:
                # No page size: the service's own (up to 5000). Azurite filters within each page of
                # blobs and drops the continuation marker when a page has fewer matches than asked,
                # so a small page size would hide matches there; Azure returns NextMarker, followed here.
                pages: Any = self._container.find_blobs_by_tags(query).by_page()
                while len(found) < limit:
                    async with self._call("find pending manifests"):
                        page = await anext(pages, None)
                        if page is None:
                            break
                        found.extend([(item.name, str((item.tags or {}).get("receivedAt", ""))) async for item in page])
                    if not pages.continuation_token:
                        break
                return found[:limit]
            except TagsUnsupported:
                self.tags_supported = False
        found = []
        listing: Any = self._container.list_blobs(include=["metadata"]).by_page()
        while len(found) < limit:
            async with self._call("list manifests"):
                blobs = await anext(listing, None)
                if blobs is None:
                    break
                async for item in blobs:
                    meta = item.metadata or {}
                    if (
                        is_manifest_metadata(meta)
                        and meta.get("copystatus") == "pending"
                        and meta.get("receivedat", "") < received_before
                    ):
                        found.append((item.name, meta.get("receivedat", "")))
            if not listing.continuation_token:
                break
        return found[:limit]

    async def blob_tags(self, name: str) -> dict[str, str]:
        try:
            async with self._call("read tags"):
                return dict(await self._blob(name).get_blob_tags())
        except (BlobMissing, ContainerMissing, TagsUnsupported):
            return {}

    async def read_manifest(self, name: str) -> Manifest | None:
        """A manifest and its ETag, or None when it does not exist. Unreadable JSON reads as empty."""
        try:
            async with self._call("read manifest"):
                downloader = await self._blob(name).download_blob()
                etag = str(downloader.properties.etag)
                if not is_manifest_metadata(downloader.properties.metadata) or downloader.size > MAX_MANIFEST_BYTES:
                    return Manifest({}, etag, foreign=True)
                data = await downloader.readall()
        except (BlobMissing, ContainerMissing):
            return None
        try:
            document = json.loads(data)
        except ValueError:
            document = None
        return Manifest(document if isinstance(document, dict) else {}, etag)

    async def delete(self, name: str, *, etag: str) -> None:
        """Delete the blob as it was when read (If-Match), with any snapshots it has. One already gone
        is fine; 412 raises Conflict."""
        try:
            async with self._call("delete blob"):
                await self._blob(name).delete_blob(
                    etag=etag, match_condition=MatchConditions.IfNotModified, delete_snapshots="include"
                )
        except (BlobMissing, ContainerMissing):
            pass

    async def snapshot(self, name: str, *, etag: str) -> str:
        """Snapshot the blob as it was read (If-Match): a read-only copy that a failed overwrite can be
        undone from. Cheap and server-side; it does not change the blob's ETag."""
        async with self._call("snapshot blob"):
            result = await self._blob(name).create_snapshot(etag=etag, match_condition=MatchConditions.IfNotModified)
        return str(result["snapshot"])

    async def snapshots(self, name: str) -> list[tuple[str, dict[str, str]]]:
        """The blob's snapshots (id, metadata), newest first."""
        found: list[tuple[str, dict[str, str]]] = []
        async with self._call("list snapshots"):
            async for item in self._container.list_blobs(name_starts_with=name, include=["snapshots", "metadata"]):
                if item.name == name and item.snapshot:
                    found.append((str(item.snapshot), dict(item.metadata or {})))
        return sorted(found, reverse=True)

    async def restore_snapshot(self, name: str, snapshot: str, *, etag: str) -> str:
        """Copy a snapshot back over its blob as it was read (If-Match): the snapshot's bytes,
        headers and metadata, and its index tags. Returns the copy's status (same-account: quick)."""
        source = self._container.get_blob_client(name, snapshot=snapshot)
        async with self._call("read snapshot tags"):
            tags = dict(await source.get_blob_tags()) if self.tags_supported else {}
        async with self._call("restore snapshot"):
            result = await self._blob(name).start_copy_from_url(
                source.url, etag=etag, match_condition=MatchConditions.IfNotModified, tags=tags or None
            )
        return str(result["copy_status"])

    async def delete_snapshot(self, name: str, snapshot: str) -> None:
        """Delete one snapshot (once its blob no longer needs it); one already gone is fine."""
        try:
            async with self._call("delete snapshot"):
                await self._container.get_blob_client(name, snapshot=snapshot).delete_blob()
        except (BlobMissing, ContainerMissing, Conflict):
            pass  # gone already; or held by a lease or a copy: left, billed only for the blocks that differ

    async def task_manifests(self, *, prefix: str | None, tag_query: str) -> list[str]:
        """Names of the manifests of one task: a listing under the task's own name prefix when the
        template gives one (strongly consistent, works without index tags), else one Find Blobs by
        Tags query (its index may lag a write by seconds). [] on an account without index tags and
        no prefix: the look-up is then not possible."""
        names: list[str] = []
        if prefix is not None:
            async with self._call("list task blobs"):
                async for item in self._container.list_blobs(name_starts_with=prefix, include=["metadata"]):
                    if is_manifest_metadata(item.metadata):
                        names.append(item.name)
            return names
        if not self.tags_supported:
            return names
        try:
            async for name, _tags in self.find_tagged(tag_query):
                names.append(name)
        except TagsUnsupported:
            self.tags_supported = False
        return names

    async def abort_copy(self, name: str, copy_id: str) -> None:
        try:
            async with self._call("abort copy"):
                await self._blob(name).abort_copy(copy_id)
        except Conflict as exc:
            # 409 NoPendingCopyOperation: it finished meanwhile, nothing to abort.
            if exc.status != 409:
                raise

    async def probe(self) -> None:
        """Raise unless the container is reachable (for /api/health); a missing one is created again."""
        if not await self.container_exists():
            await self.ensure_container(again=True)

    async def find_tagged(self, query: str) -> AsyncIterator[tuple[str, dict[str, str]]]:
        """Names of this container's blobs whose index tags match ``query`` (Find Blobs by Tags at
        container level: one request per page of up to 5000), with the tags the service returned
        (those the query names). Raises :class:`TagsUnsupported` on an account without index tags."""
        pages: Any = self._container.find_blobs_by_tags(query, results_per_page=5000).by_page()
        while True:
            async with self._call("find blobs by tags"):
                page = await anext(pages, None)
                found = [] if page is None else [(item.name, dict(item.tags or {})) async for item in page]
            for item in found:
                yield item
            if page is None or not pages.continuation_token:
                return

    async def listing(self, *, prefix: str | None = None) -> AsyncIterator[tuple[str, dict[str, str]]]:
        """Every blob of the container (under ``prefix``) with its metadata, one request per page of up
        to 5000: the slow path on accounts without index tags (its cost grows with the container)."""
        pages: Any = self._container.list_blobs(name_starts_with=prefix, include=["metadata"]).by_page()
        while True:
            async with self._call("list blobs"):
                page = await anext(pages, None)
                found = [] if page is None else [(item.name, dict(item.metadata or {})) async for item in page]
            for item in found:
                yield item
            if page is None or not pages.continuation_token:
                return
