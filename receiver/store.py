"""The only module that talks to Azure Storage.

It owns the aio client (one per process and event loop), the retry policy, and the
translation of storage errors, by ``error_code`` and status rather than exception class,
into the core's own :class:`StoreError` kinds. Nothing here ever formats a source URL with
its query into a message.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any
from urllib.parse import quote

import aiohttp
from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError
from azure.storage.blob import BlobBlock, ContentSettings
from azure.storage.blob.aio import BlobClient, BlobServiceClient, ExponentialRetry
from yarl import URL

from . import storage as seam
from .settings import Settings, SettingsError
from .source import redact
from .telemetry import about, count_storage_request

__all__ = ["AzureStorage", "retry_settings"]

log = logging.getLogger("receiver.store")
# azure-core logs every request's headers at INFO; in Functions (INFO and up go to Application
# Insights) that is two multi-line records per storage call. Warnings and errors still show.
logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)

# The SDK default (15 s initial backoff, base 3) can sleep about a minute on a throttled
# call; SmartDocumentor needs an answer well inside 60 s. ExponentialRetry sleeps
# initial_backoff + increment_base**n (n = 1, 2, 3) +- jitter: about 1.7, 2.5 and 3.6 s,
# so an exhausted call gives up after ~8 s asleep. (Floats work; the SDK hints say int.)
RETRY: dict[str, Any] = {"initial_backoff": 0.2, "increment_base": 1.5, "retry_total": 3, "random_jitter_range": 0.3}
# RECEIVER_STORAGE_RETRY_BACKOFF=<seconds> (a float, e.g. 0.01) replaces that back-off for
# AzureStorage.open(): every retry then sleeps about that long (flat: no growth, no jitter), with the
# same number of retries. For tests, which must never sleep on the real clock; unset in deployments.
RETRY_BACKOFF_VARIABLE = "RECEIVER_STORAGE_RETRY_BACKOFF"
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


def retry_settings(backoff: float | None = None) -> dict[str, Any]:
    """ExponentialRetry's keyword arguments: :data:`RETRY`, or a flat ``backoff`` (seconds) when one is
    given or RECEIVER_STORAGE_RETRY_BACKOFF is set (an unreadable value is ignored)."""
    if backoff is None:
        raw = os.environ.get(RETRY_BACKOFF_VARIABLE, "").strip()
        try:
            backoff = float(raw) if raw else None
        except ValueError:
            log.warning("%s=%r is not a number of seconds; using the default back-off", RETRY_BACKOFF_VARIABLE, raw)
    if backoff is None or backoff < 0:
        return dict(RETRY)
    # ExponentialRetry sleeps initial_backoff + increment_base**n (n >= 1) +- jitter: base 0 makes it flat.
    return {**RETRY, "initial_backoff": backoff, "increment_base": 0, "random_jitter_range": 0}


_NO_TAGS_ON_WRITE = {
    "FeatureNotYetSupportedForHierarchicalNamespaceAccounts",  # any feature: the account has a namespace
    "FeatureNotSupportedOnHierarchicalNamespaceEnabledAccount",
    "BlobTagsNotSupportedForAccountType",
}
# Generic "not supported" codes: about tags only when the error says so (FeatureName, message).
_NO_FEATURE_ON_WRITE = {"FeatureNotSupportedForAccount", "FeatureNotEnabled"}
_LEASE_CODES = {"LeaseIdMissing", "LeaseIdMismatchWithBlobOperation"}
_ARCHIVED_CODES = {"BlobArchived", "BlobBeingRehydrated"}  # 409 on reading a blob in the Archive tier
_SEAM_CONFLICT_CODES = {
    "BlobAlreadyExists",
    "ConditionNotMet",
    "TargetConditionNotMet",
    "PendingCopyOperation",
    "InvalidBlockList",  # a block the commit lists is gone: another commit discarded it
    "BlobOverwritten",
}


class _TagsRefused(seam.Rejected):
    """The account refused index tags (hierarchical namespace, v1): learnt, then the write goes without."""


# Failures the callers handle (logged at DEBUG); any other is a WARNING.
_EXPECTED = (seam.Conflict, seam.ContainerMissing, seam.BlobMissing, seam.TooLargeForSyncCopy, _TagsRefused)


@dataclass(frozen=True)
class Call:
    """The storage request that failed, as :func:`classify` reads it. ``sync_copy``: Copy Blob From URL
    (its 409 CannotVerifyCopySource means "too large or empty for a synchronous copy"). ``tags_sent``:
    the request carried x-ms-tags; ``tags_call``: it was Get/Set Blob Tags (comp=tags)."""

    operation: str
    sync_copy: bool = False
    tags_sent: bool = False
    tags_call: bool = False
    blob: str | None = None  # the blob written: a lease's refusal names it (the leased one may not be the file)


def _endpoint_of(exc: Exception) -> str:
    """ ", at host:port" from a connection failure's own words (a wrong port or name shows there); no URL."""
    found = re.search(r"host ([\w.-]+:\d+)", str(exc))
    return f", at {found.group(1)}" if found else ""


# What a refusal of the destination's credentials asks for, by what signs the requests (Storage.signed_by).
_REFUSED_ADVICE = {
    "identity": "grant the function's identity Storage Blob Data Owner on {account}, and check the account's firewall.",
    "sas": "the SAS in DESTINATION_CONNECTION_STRING expired or lacks a permission the receiver needs (read, add, "
    "create, write, delete, tag, list), or the account's firewall keeps the function out: make a new one with "
    "them, or use DESTINATION_ACCOUNT_URL and the function's identity.",
    "key": "DESTINATION_CONNECTION_STRING holds the account key, so the key was rotated, shared-key access is "
    "disabled, or the account's firewall keeps the function out: copy the connection string again, or use "
    "DESTINATION_ACCOUNT_URL and the function's identity.",
}


def classify(exc: Exception, call: Call, account: str, container: str, signed_by: str = "identity") -> seam.StoreError:
    """One storage failure as a :mod:`receiver.storage` error kind, by ``error_code`` and status only.
    Messages never carry a URL's query. ``signed_by``: "identity", "sas" or "key" (what a refusal asks for)."""
    operation, where = call.operation, f"{account}/{container}"
    if isinstance(exc, ClientAuthenticationError) and getattr(exc, "status_code", None) is None:
        return seam.Misconfigured(
            redact(
                f"The function could not get a token for {account} (managed identity): enable the "
                "function app's identity, or set DESTINATION_CONNECTION_STRING."
            )
        )
    if not isinstance(exc, HttpResponseError) or exc.status_code is None:
        return seam.Unavailable(
            redact(f"Azure Storage at {account} could not be reached ({type(exc).__name__}{_endpoint_of(exc)}).")
        )
    raw_code = getattr(exc, "error_code", None)  # a StorageErrorCode enum or a plain string: compare the value
    code, status = str(getattr(raw_code, "value", raw_code) or ""), exc.status_code
    info = getattr(exc, "additional_info", None) or {}

    def said(kind: type[seam.StoreError], message: str) -> seam.StoreError:
        return kind(redact(message), code=code or None, status=status)

    about_tags = "tag" in f"{exc.message} {info or ''}".lower()
    if (call.tags_sent and (code in _NO_TAGS_ON_WRITE or (code in _NO_FEATURE_ON_WRITE and about_tags))) or (
        call.tags_call and code == "InvalidQueryParameterValue"
    ):
        return said(_TagsRefused, f"{where} has no blob index tags ({status} {code})")
    if code in _LEASE_CODES and operation != "delete blob":
        # A lease another client holds (the customer's tool) refuses every write without its id while it lasts:
        # not a conflict to observe again at once, nor a final refusal (it lapses or is broken). A delete refused
        # so leaves its name listed to retire (receiver.engine.remove_if_holds).
        return said(
            seam.Leased,
            f"{operation}: a lease another client holds on {call.blob or 'a blob'} in {where} refused it ({code}); "
            "whoever holds the lease breaks it or lets it expire",
        )
    if code.startswith("BlobImmutableDueTo"):
        policy = "legal hold" if "LegalHold" in code else "retention policy"
        return said(seam.Immutable, f"{operation}: a {policy} on {where} refused the write ({code}).")
    if "CopySource" in code or code in {"InvalidSourceBlobUrl", "InvalidSourceBlobType"} or code.startswith("Source"):
        if call.sync_copy and status == 409 and code == "CannotVerifyCopySource":
            # Copy Blob From URL refuses a source over 256 MiB, or an empty one, with 409, while a
            # refused or missing source is 403/404 with the same code.
            return said(seam.TooLargeForSyncCopy, f"{operation}: the source cannot be copied synchronously ({code}).")
        # The source's own status from the error body (<CopySourceStatusCode>), else the answer's.
        raw_status = str(info.get("copysourcestatuscode") or "")
        source_status = int(raw_status) if raw_status.isdigit() else status
        if source_status == 412:  # a source condition (x-ms-source-if-match): the file changed since it was read
            return said(seam.SourceChanged, f"{operation}: the source changed since its size was read ({code}).")
        if source_status >= 500 or source_status in (408, 429):
            return said(seam.Unavailable, f"{operation}: the source answered {source_status} ({code}).")
        return said(seam.SourceUnreadable, f"{operation}: the source could not be read ({source_status} {code}).")
    if code in _ARCHIVED_CODES:
        # A lifecycle rule moved a blob the receiver reads (the task record, say) to the Archive tier: no retry
        # reads it until a person rehydrates it. Not a conflict to look at again.
        return said(
            seam.Misconfigured,
            f"{operation}: {call.blob or 'a blob'} in {where} is in the Archive tier ({code}), so it cannot be read: "
            "rehydrate it to Hot or Cool, and keep the lifecycle rule that archived it away from the "
            ".smartdocumentor/ prefix.",
        )
    if code in _SEAM_CONFLICT_CODES or status in (409, 412):
        return said(seam.Conflict, f"{operation}: {code or status}")
    if code == "ContainerNotFound":
        return said(seam.ContainerMissing, f"The container {container} does not exist in {account}.")
    if code in _PERMISSION_CODES or status in (401, 403):
        # A key has every permission: a refusal is the key itself or the network rules. (A permission mismatch
        # is an identity's: the tests stand in for one with Azurite's key.)
        keyed = signed_by == "key" and code != "AuthorizationPermissionMismatch"
        advice = _REFUSED_ADVICE["sas" if signed_by == "sas" else "key" if keyed else "identity"].format(
            account=account
        )
        return said(seam.Misconfigured, f"Azure Storage refused {operation} on {where} ({code or status}): {advice}")
    if status == 404:
        return said(seam.BlobMissing, f"{operation}: not found")
    if 400 <= status < 500 and status not in (408, 429):
        # The service refused the request itself: retrying cannot help, so it is not "unavailable".
        return said(seam.Rejected, f"Azure Storage rejected {operation} ({status} {code}).")
    return said(seam.Unavailable, f"Azure Storage answered {status} {code} to {operation} on {account}.")


def _properties(name: str, props: Any, size: int) -> seam.Blob:
    """A blob's properties, from Get Blob Properties or a download's answer (``size``: the whole blob's)."""
    return seam.Blob(
        name=name,
        etag=str(props.etag),
        size=size,
        headers=_headers(props.content_settings),
        metadata=dict(props.metadata or {}),
        created=props.creation_time,
        last_modified=props.last_modified,
        copy_status=_copy_status(props),
    )


def _copy_status(props: Any) -> str | None:
    copy = getattr(props, "copy", None)
    return str(copy.status) if copy is not None and copy.status else None


def _listed(item: Any) -> seam.Listed:
    # Listings give the ETag bare; every other answer quotes it: one form for If-Match.
    etag = str(item.etag) if str(item.etag).startswith('"') else f'"{item.etag}"'
    return seam.Listed(
        name=item.name,
        etag=etag,
        metadata=dict(item.metadata or {}),
        last_modified=item.last_modified,
        copy_status=_copy_status(item),
    )


# seam.Headers has ContentSettings' attribute names; the SDK says "" for a header not set and keeps the MD5
# as a bytearray.
def _headers(settings: ContentSettings) -> seam.Headers:
    values = {item.name: getattr(settings, item.name) or None for item in fields(seam.Headers)}
    md5 = values.pop("content_md5")
    return seam.Headers(**values, content_md5=bytes(md5) if md5 else None)


def _content_settings(headers: seam.Headers) -> ContentSettings:
    md5 = headers.content_md5
    return ContentSettings(**{**asdict(headers), "content_md5": bytearray(md5) if md5 is not None else None})


def _conditions(if_match: str | None) -> dict[str, Any]:
    """If-Match on exactly that version, or If-None-Match: * (create only)."""
    if if_match is None:
        return {"match_condition": MatchConditions.IfMissing}
    return {"etag": if_match, "match_condition": MatchConditions.IfNotModified}


def _written(result: dict[str, Any]) -> seam.Written:
    return seam.Written(str(result["etag"]), result.get("last_modified"))


class AzureStorage:
    """:class:`receiver.storage.Storage` over ``azure.storage.blob.aio``: one destination container.

    Create it with :meth:`open` on the running loop that will use it (one per process), and
    :meth:`close` it there. Errors are :mod:`receiver.storage` kinds, decided by error code and status.
    Writes recreate a missing container and send the write again, once; an account found to have no
    blob index tags (account information, or the first refusal) gets every later write without tags.
    """

    def __init__(self, service: BlobServiceClient, container: str, credential: Any = None, signed_by: str = "") -> None:
        self._service = service
        self._credential = credential
        self.signed_by = signed_by or "identity"  # "identity", "sas" or "key": what a refusal asks to fix
        self.container = container
        self.account = service.account_name or "the storage account"
        self._container = service.get_container_client(container)
        self._blobs: dict[str, BlobClient] = {}
        self._tags_supported = True
        self._account_checked = False
        self._policy: str | None = None
        self._policy_checked = False
        self._account_lock = asyncio.Lock()
        self._http: aiohttp.ClientSession | None = None  # the source size probe's, created when first needed

    @classmethod
    def open(cls, settings: Settings) -> AzureStorage:
        """The destination of ``settings``: by connection string, or by account URL with
        DefaultAzureCredential (closed with the store); retries as :func:`retry_settings` says."""
        options: dict[str, Any] = {
            "retry_policy": ExponentialRetry(**retry_settings()),
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
                    "The app setting DESTINATION_CONNECTION_STRING is not a valid storage connection string: copy "
                    "it again from the storage account's Access keys page, or use DESTINATION_ACCOUNT_URL.",
                ) from None
            lowered = settings.destination_connection_string.get_secret_value().lower()
            signed_by = "key" if "accountkey=" in lowered else "sas"  # the SDK signs with a key when both are given
            return cls(service, settings.destination_container, signed_by=signed_by)
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

    @property
    def tags_supported(self) -> bool:
        return self._tags_supported

    def url(self, name: str) -> str:
        return f"{self._container.url.split('?', 1)[0]}/{quote(name, safe='~/')}"

    def _blob(self, name: str) -> BlobClient:
        """One client per blob name, reused across a delivery's calls (building one costs CPU)."""
        client = self._blobs.get(name)
        if client is None:
            if len(self._blobs) >= 256:
                self._blobs.clear()
            client = self._blobs[name] = self._container.get_blob_client(name)
        return client

    @asynccontextmanager
    async def _call(self, call: Call | str, *, quiet: bool = False) -> AsyncIterator[None]:
        """One storage request (``call``: its name alone for a plain one); its failure as a StoreError."""
        call = call if isinstance(call, Call) else Call(call)
        count_storage_request()
        try:
            yield
        except seam.StoreError:
            raise
        except (TimeoutError, AzureError, OSError) as exc:
            error = classify(exc, call, self.account, self.container, self.signed_by)
            if isinstance(error, seam.Immutable):
                self._policy_checked = False  # perhaps placed since it was asked: the next delivery asks again
            expected = quiet or isinstance(error, _EXPECTED)
            level = logging.DEBUG if expected else logging.WARNING
            # The blob written or read when it is not the delivery's own (a retirement's delete, say).
            which = f" of {call.blob}" if call.blob else ""
            log.log(level, "storage %s%s failed %s: %s", call.operation, which, about(), error)
            raise error from None

    def _learn_no_tags(self, why: str) -> None:
        if self._tags_supported:
            log.warning("%s has no blob index tags (%s): writes go without them from now on", self.account, why)
        self._tags_supported = False

    async def container_policy(self) -> str | None:
        """What refuses overwrites in this container: "legal hold", "retention policy" (container level),
        or None (none, or version-level immutability, where an overwrite makes a new version). None is
        asked once a process, and again after a write a policy refused (one placed since); a policy is asked
        again each time (lifted, the next delivery goes on). A refusal of one blob (a policy on that blob
        alone) is answered where it happens."""
        if self._policy_checked and self._policy is None:
            return None
        try:
            async with self._call("read container properties", quiet=True):
                props = await self._container.get_container_properties()
        except seam.ContainerMissing:
            # None yet, and the first write creates it without one: not asked again by this process.
            self._policy_checked = True
            return None
        except seam.StoreError as exc:
            log.info("%s: container properties not read (%s); a refusal will tell", self.container, exc)
            return self._policy
        self._policy = None
        if not getattr(props, "immutable_storage_with_versioning_enabled", False):
            if getattr(props, "has_legal_hold", False):
                self._policy = "legal hold"
            elif getattr(props, "has_immutability_policy", False):
                self._policy = "retention policy"
        self._policy_checked = True
        return self._policy

    async def container_exists(self) -> bool:
        async with self._call("read container properties"):
            return bool(await self._container.exists())

    async def check_account(self) -> None:
        """Once a process: does the account have a hierarchical namespace (then no index tags)? Asked
        before the first write with tags, and by health (its ``indexTags`` is then right before the first
        delivery). A refusal of the question (a container-scoped role may not ask) leaves it unknown: the
        first write's refusal then tells. An outage or a missing container leaves it to be asked again."""
        if self._account_checked:
            return
        async with self._account_lock:
            if self._account_checked:
                return
            try:
                async with self._call("read account information", quiet=True):
                    info = await self._container.get_account_information()
            except (seam.Unavailable, seam.ContainerMissing):
                return
            except seam.StoreError as exc:
                log.info("%s: account information refused (%s); tag support unknown until a write", self.account, exc)
            else:
                if str(info.get("is_hns_enabled")).lower() == "true":
                    self._learn_no_tags("hierarchical namespace, by account information")
            self._account_checked = True

    async def _write(
        self,
        operation: str,
        send: Callable[[dict[str, str] | None], Awaitable[dict[str, Any]]],
        *,
        blob: str,
        tags: dict[str, str] | None,
        creates: bool,
        sync_copy: bool = False,
    ) -> dict[str, Any]:
        """Send one write. ``creates``: it may land where nothing is (no If-Match): a missing container
        is created and the write sent again, once; with If-Match, a missing container or blob is a
        :class:`Conflict` (that version is gone). Tags refused by the account: learnt, sent again without."""
        if tags:
            await self.check_account()
        container_created = tags_dropped = False
        while True:
            with_tags = tags if tags and self._tags_supported else None
            try:
                async with self._call(Call(operation, sync_copy, tags_sent=with_tags is not None, blob=blob)):
                    return await send(with_tags)
            except _TagsRefused as exc:
                if tags_dropped:
                    raise seam.Rejected(exc.message, code=exc.code, status=exc.status) from None
                self._learn_no_tags(f"{exc.status} {exc.code}")
                tags_dropped = True
            except seam.ContainerMissing as exc:
                if not creates:
                    raise seam.Conflict(f"{operation}: {exc.message}", code=exc.code, status=exc.status) from None
                if container_created:
                    raise
                await self.ensure_container()  # also when it was deleted while the app ran
                container_created = True
            except seam.BlobMissing as exc:
                if creates:
                    raise
                raise seam.Conflict(f"{operation}: the blob is gone", code=exc.code, status=exc.status) from None

    async def ensure_container(self) -> None:
        """Create Container (private); one that exists already is fine. Always asks: cheap, and a
        container deleted while the app ran comes back."""
        try:
            async with self._call("create container"):
                await self._container.create_container()
            log.info("created the container %s in %s", self.container, self.account)
        except seam.Conflict:
            pass  # ContainerAlreadyExists (or ContainerBeingDeleted: the next write says so)
        except seam.Misconfigured as exc:
            # Allowed to write blobs but not to create containers: fine if it exists.
            async with self._call("read container"):
                exists = bool(await self._container.exists())
            if not exists:
                raise seam.Misconfigured(
                    f"The container {self.container} does not exist in {self.account} and the function may not "
                    "create it: create it, or grant Storage Blob Data Owner on the account.",
                    code=exc.code,
                    status=exc.status,
                ) from None

    async def read(self, name: str) -> seam.Blob | None:
        try:
            async with self._call(Call("read blob", blob=name)):
                props = await self._blob(name).get_blob_properties()
        except (seam.BlobMissing, seam.ContainerMissing):
            return None
        return _properties(name, props, int(props.size or 0))

    async def read_bytes(self, name: str, *, max_bytes: int) -> tuple[seam.Blob, bytes] | None:
        """A ranged download of at most ``max_bytes``: the answer's Content-Range gives the blob's size,
        so a larger blob is refused having read no more than that (and the rest never)."""
        if max_bytes <= 0:
            blob = await self.read(name)
            if blob is None:
                return None
            if blob.size > 0:
                raise seam.Rejected(f"read {name}: {blob.size} bytes, more than {max_bytes}")
            return blob, b""
        try:
            async with self._call(Call("read blob content", blob=name)):
                downloader = await self._blob(name).download_blob(offset=0, length=max_bytes)
                props = downloader.properties
                total = int(str(props.content_range).rsplit("/", 1)[-1])
                if total > max_bytes:
                    raise seam.Rejected(f"read {name}: {total} bytes, more than {max_bytes}", status=None)
                data = await downloader.readall()
        except (seam.BlobMissing, seam.ContainerMissing):
            return None
        except seam.Rejected as exc:
            if exc.status != 416:
                raise
            # 416 InvalidRange: a ranged read of an empty blob. Its properties say the rest.
            blob = await self.read(name)
            return None if blob is None else (blob, b"")
        return _properties(name, props, total), bytes(data)

    async def put(
        self,
        name: str,
        data: bytes,
        *,
        if_match: str | None,
        content_type: str,
        metadata: dict[str, str],
        tags: dict[str, str] | None = None,
    ) -> seam.Written:
        async def send(with_tags: dict[str, str] | None) -> dict[str, Any]:
            return await self._blob(name).upload_blob(
                data,
                blob_type="BlockBlob",
                content_settings=ContentSettings(content_type=content_type),
                metadata=metadata,
                tags=with_tags,
                overwrite=if_match is not None,
                **_conditions(if_match),
            )

        return _written(await self._write("put blob", send, blob=name, tags=tags, creates=if_match is None))

    async def copy_from_url(
        self,
        name: str,
        source_url: str,
        *,
        if_match: str | None,
        metadata: dict[str, str],
        tags: dict[str, str] | None,
    ) -> seam.Written:
        async def send(with_tags: dict[str, str] | None) -> dict[str, Any]:
            return await self._blob(name).start_copy_from_url(
                source_url,
                metadata=metadata,
                tags=with_tags,
                requires_sync=True,
                timeout=SYNC_COPY_SERVER_TIMEOUT_SECONDS,
                read_timeout=COPY_READ_TIMEOUT_SECONDS,
                **_conditions(if_match),
            )

        result = await self._write("copy", send, blob=name, tags=tags, creates=if_match is None, sync_copy=True)
        return _written(result)

    async def source_version(self, source_url: str) -> seam.SourceVersion | None:
        """A plain HEAD with the link's own SAS: one try, short timeout, no decompression; nothing here
        logs or raises the URL."""
        if self._http is None or self._http.closed:
            timeout = aiohttp.ClientTimeout(total=5, connect=CONNECTION_TIMEOUT_SECONDS)
            self._http = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)
        count_storage_request()
        try:
            async with self._http.head(URL(source_url, encoded=True), allow_redirects=False) as response:
                length = response.headers.get("Content-Length")
                if response.status != 200 or not length or not length.isdigit():
                    return None
                return seam.SourceVersion(int(length), response.headers.get("ETag") or None)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return None

    async def stage_block(
        self, name: str, block_id: str, source_url: str, *, offset: int, length: int, source_etag: str | None = None
    ) -> None:
        """Put Block From URL. The SDK base64-encodes ``block_id``; the service wants every block id
        of one blob to have the same length, so callers use fixed-width ids. ``source_etag``: sent as
        x-ms-source-if-match (the SDK's method has no argument for it; a request's own headers it keeps)."""
        conditions: dict[str, Any] = {"headers": {"x-ms-source-if-match": source_etag}} if source_etag else {}

        async def send(_tags: dict[str, str] | None) -> dict[str, Any]:
            await self._blob(name).stage_block_from_url(
                block_id,
                source_url,
                source_offset=offset,
                source_length=length,
                timeout=SYNC_COPY_SERVER_TIMEOUT_SECONDS,
                read_timeout=COPY_READ_TIMEOUT_SECONDS,
                **conditions,
            )
            return {}

        await self._write("stage block", send, blob=name, tags=None, creates=True)

    async def commit_blocks(
        self,
        name: str,
        block_ids: Sequence[str],
        *,
        if_match: str | None,
        headers: seam.Headers,
        metadata: dict[str, str],
        tags: dict[str, str] | None,
    ) -> seam.Written:
        blocks = [BlobBlock(block_id) for block_id in block_ids]

        async def send(with_tags: dict[str, str] | None) -> dict[str, Any]:
            return await self._blob(name).commit_block_list(
                blocks,
                content_settings=_content_settings(headers),
                metadata=metadata,
                tags=with_tags,
                **_conditions(if_match),
            )

        # creates=False even for a create: a commit in a container that is gone has no blocks to commit.
        return _written(await self._write("commit blocks", send, blob=name, tags=tags, creates=False))

    async def set_headers(self, name: str, headers: seam.Headers, *, if_match: str) -> seam.Written:
        async def send(_tags: dict[str, str] | None) -> dict[str, Any]:
            return await self._blob(name).set_http_headers(
                content_settings=_content_settings(headers), **_conditions(if_match)
            )

        return _written(await self._write("set headers", send, blob=name, tags=None, creates=False))

    async def delete(self, name: str, *, if_match: str) -> bool:
        """Delete that version with its snapshots; False when it (or its container) is gone already."""
        try:
            async with self._call(Call("delete blob", blob=name)):
                await self._blob(name).delete_blob(delete_snapshots="include", **_conditions(if_match))
        except (seam.BlobMissing, seam.ContainerMissing):
            return False
        except seam.Conflict:
            # A conditional delete of a blob that is gone may be answered 412 rather than 404 (Azurite
            # does): only a blob that is still there, as another version, is a conflict.
            if await self.read(name) is None:
                return False
            raise
        return True

    async def list(self, prefix: str) -> AsyncIterator[seam.Listed]:
        """One List Blobs request per page (up to 5000), with metadata; a missing container lists nothing."""
        marker: str | None = None
        while True:
            page, marker = await self.list_page(prefix, marker=marker, size=5000)
            for item in page:
                yield item
            if marker is None:
                return

    async def list_page(
        self, prefix: str, *, marker: str | None, size: int
    ) -> tuple[builtins.list[seam.Listed], str | None]:
        """One page of :meth:`list` from ``marker`` (the service's continuation token), and the token of
        the next page (None: this was the last). The migration walks a large container run by run."""
        pages: Any = self._container.list_blobs(
            name_starts_with=prefix or None, include=["metadata", "copy"], results_per_page=size
        ).by_page(continuation_token=marker)
        try:
            async with self._call("list blobs"):
                page = await anext(pages, None)
                found = [] if page is None else [_listed(item) async for item in page]
        except seam.ContainerMissing:
            return [], None
        return found, pages.continuation_token or None

    async def read_tags(self, name: str) -> dict[str, str] | None:
        """Get Blob Tags (not part of the seam: for operators and tests). None when the blob is gone;
        {} on an account without index tags (learnt from 400 InvalidQueryParameterValue on comp=tags)."""
        if not self._tags_supported:
            return {}
        try:
            async with self._call(Call("read tags", tags_call=True)):
                return dict(await self._blob(name).get_blob_tags())
        except _TagsRefused as exc:
            self._learn_no_tags(f"{exc.status} {exc.code}")
            return {}
        except (seam.BlobMissing, seam.ContainerMissing):
            return None
