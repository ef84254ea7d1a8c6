"""The two backends of the storage contract suite (tests/test_storage_contract.py), built the same way.

A :class:`Backend` is a :class:`receiver.storage.Storage` plus what a test needs around it and
that the seam does not offer: a place to publish a copy source behind a SAS, and a look at a
blob's index tags. ``memory`` is ``sim.memstore.MemoryStorage`` with ``MemorySources`` and a
manual clock; ``azurite`` is ``receiver.store.AzureStorage`` on the session's Azurite, with the
exports account (tests/conftest.py) behind real SAS URLs, through the team's fault proxy.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Protocol, cast

from azure.storage.blob import ContentSettings
from azure.storage.blob.aio import BlobServiceClient

from devtools.azurite import CUSTOMER_ACCOUNT, CUSTOMER_KEY, Azurite, connection_string
from receiver.storage import Headers, Storage
from sim.memstore import ManualClock, MemorySources, MemoryStorage

from .conftest import EXPORT_CONTAINER, Exports
from .faultproxy import FaultProxy


class Sources(Protocol):
    """The sender's export storage, as the contract tests need it."""

    def publish(
        self,
        data: bytes,
        headers: Headers,
        *,
        metadata: dict[str, str] | None = None,
        expires_in: timedelta = timedelta(hours=2),
    ) -> str:
        """Upload ``data`` with ``headers`` (as the sender's Put Blob: the service adds its Content-MD5)
        and return a SAS URL valid for ``expires_in`` (negative: already expired)."""
        ...

    def missing(self) -> str:
        """A correctly signed, unexpired SAS URL to a file that does not exist."""
        ...

    def rewrite(self, url: str, data: bytes) -> None:
        """The sender writes the file behind ``url`` (one :meth:`publish` returned) again: a new version."""
        ...


def unsigned(url: str) -> str:
    """The same URL without its SAS."""
    return url.split("?", 1)[0]


@dataclass
class Backend:
    name: str
    storage: Storage
    sources: Sources
    tags: Callable[[str], Awaitable[dict[str, str]]]  # the blob's index tags, read beside the seam
    close: Callable[[], Awaitable[None]]
    drop_container: Callable[[], Awaitable[None]]  # someone deletes the container, beside the seam


# ------------------------------------------------------------------------------------------- memory


@dataclass
class _MemorySources:
    registry: MemorySources
    names: dict[str, str] = field(default_factory=dict)  # each published URL's file

    def publish(
        self,
        data: bytes,
        headers: Headers,
        *,
        metadata: dict[str, str] | None = None,
        expires_in: timedelta = timedelta(hours=2),
    ) -> str:
        stored = replace(headers, content_md5=hashlib.md5(data).digest())  # noqa: S324 (what Put Blob stores)
        name = f"{uuid.uuid4()}/export.pdf"
        url = self.registry.publish(name, data, stored, metadata=metadata, expires_in=expires_in)
        self.names[url] = name
        return url

    def missing(self) -> str:
        return self.registry.sas_url(f"{uuid.uuid4()}/missing.pdf", expires=self.registry.now() + timedelta(hours=2))

    def rewrite(self, url: str, data: bytes) -> None:
        self.registry.add(self.names[url], data, Headers(content_md5=hashlib.md5(data).digest()))  # noqa: S324


def memory_backend() -> Backend:
    clock = ManualClock()
    registry = MemorySources(now=clock)
    store = MemoryStorage(f"dest-{uuid.uuid4().hex[:12]}", sources=registry, now=clock)

    async def tags(name: str) -> dict[str, str]:
        return store.tags(name) or {}

    async def close() -> None:
        return None

    async def drop_container() -> None:
        store.drop_container()

    return Backend("memory", store, _MemorySources(registry), tags, close, drop_container)


# ------------------------------------------------------------------------------------------ azurite


@dataclass
class _AzuriteSources:
    exports: Exports
    names: dict[str, str] = field(default_factory=dict)  # each published URL's file

    def publish(
        self,
        data: bytes,
        headers: Headers,
        *,
        metadata: dict[str, str] | None = None,
        expires_in: timedelta = timedelta(hours=2),
    ) -> str:
        name = f"{uuid.uuid4()}/export.pdf"
        settings = ContentSettings(
            content_type=headers.content_type,
            content_encoding=headers.content_encoding,
            content_language=headers.content_language,
            content_disposition=headers.content_disposition,
            cache_control=headers.cache_control,
        )
        blob = self.exports.client.get_blob_client(EXPORT_CONTAINER, name)
        blob.upload_blob(data, overwrite=True, content_settings=settings, metadata=metadata)
        url = self.exports.sas_url(name, expires_in=expires_in)
        self.names[url] = name
        return url

    def missing(self) -> str:
        return self.exports.sas_url(f"{uuid.uuid4()}/missing.pdf")

    def rewrite(self, url: str, data: bytes) -> None:
        self.exports.client.get_blob_client(EXPORT_CONTAINER, self.names[url]).upload_blob(data, overwrite=True)


async def azurite_storage(azurite: Azurite, container: str, *, blob_port: int) -> Storage:
    """``receiver.store.AzureStorage`` as the app opens it, on the customer account, its container
    created. ``blob_port`` is where the customer's storage answers (the fault proxy in front of Azurite)."""
    from receiver.settings import Settings
    from receiver.store import AzureStorage

    settings = Settings(
        destination_connection_string=connection_string(CUSTOMER_ACCOUNT, CUSTOMER_KEY, blob_port),
        destination_account_url=None,
        destination_container=container,
        allowed_source_hosts=(azurite.blob_host,),
        allow_http_sources=True,
    )
    storage = cast(Storage, AzureStorage.open(settings))
    await storage.ensure_container()
    return storage


async def azurite_backend(azurite: Azurite, exports: Exports) -> Backend:
    proxy = await FaultProxy(azurite.blob_port).start()  # performs Put Block From URL, which Azurite cannot
    container = f"dest-{uuid.uuid4().hex[:12]}"
    storage = await azurite_storage(azurite, container, blob_port=proxy.port)
    reader = BlobServiceClient.from_connection_string(azurite.customer)

    async def tags(name: str) -> dict[str, str]:
        return dict(await reader.get_blob_client(container, name).get_blob_tags())

    async def close() -> None:
        await reader.close()
        closing = getattr(storage, "close", None)
        if closing is not None:
            await closing()
        await proxy.stop()

    async def drop_container() -> None:
        await reader.delete_container(container)

    return Backend("azurite", storage, _AzuriteSources(exports), tags, close, drop_container)
