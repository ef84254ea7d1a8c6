"""AzureStorage (receiver/store.py) against a real Azurite: each method of the storage seam, as observed.

Azurite cannot stage blocks from a URL, refuse tags, or hold a retention policy: those go through the
fault proxy (tests/faultproxy.py), which performs Put Block From URL and answers with the service's
real codes. The retry back-off is 10 ms (RECEIVER_STORAGE_RETRY_BACKOFF): nothing sleeps for real.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import web
from azure.storage.blob import ContainerClient
from azure.storage.blob.aio import BlobServiceClient as AioBlobServiceClient

from devtools.azurite import CUSTOMER_ACCOUNT, CUSTOMER_KEY, Azurite, connection_string
from devtools.staging_proxy import StagingProxy
from receiver.settings import Settings
from receiver.storage import (
    Conflict,
    Headers,
    Immutable,
    Misconfigured,
    Rejected,
    SourceUnreadable,
    Storage,
    TooLargeForSyncCopy,
    Unavailable,
)
from receiver.store import RETRY, RETRY_BACKOFF_VARIABLE, AzureStorage, retry_settings

from .conftest import EXPORT_CONTAINER, PDF_BYTES, Exports
from .faultproxy import FaultProxy, Rule, carries_tags, is_account_info

BLOCK = 1000
SOURCE = bytes(range(256)) * 12  # 3072 bytes: three full blocks and a short one


def block_id(n: int) -> str:
    return f"{n:06d}"  # one width for every id of a blob, as the service requires


Opener = Callable[..., Awaitable[AzureStorage]]


@pytest.fixture
async def open_storage(azurite: Azurite, container_name: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Opener]:
    """Open AzureStorage on Azurite directly, or through a proxy's port; every one is closed after the test."""
    monkeypatch.setenv(RETRY_BACKOFF_VARIABLE, "0.01")
    monkeypatch.delenv("DESTINATION_ACCOUNT_URL", raising=False)
    opened: list[AzureStorage] = []

    async def open_(port: int | None = None, *, key: str = CUSTOMER_KEY) -> AzureStorage:
        settings = Settings(
            destination_connection_string=connection_string(CUSTOMER_ACCOUNT, key, port or azurite.blob_port),
            destination_container=container_name,
        )
        storage = AzureStorage.open(settings)
        opened.append(storage)
        return storage

    yield open_
    for storage in opened:
        await storage.close()


@pytest.fixture
async def store(open_storage: Opener) -> AzureStorage:
    return await open_storage()


@pytest.fixture
async def via_proxy(open_storage: Opener, proxy: FaultProxy) -> AzureStorage:
    return await open_storage(proxy.port)


def seam(storage: Storage) -> Storage:
    """mypy checks here that AzureStorage honours the protocol, method for method."""
    return storage


def puts(proxy: FaultProxy, name: str) -> list[str]:
    return [path for method, path in proxy.seen if method == "PUT" and path.split("?", 1)[0].endswith(name)]


class Recorder:
    """A rule that changes nothing and remembers the headers of the requests it matched."""

    def __init__(self, match: Callable[[web.Request], bool]) -> None:
        self.headers: list[dict[str, str]] = []
        self.match = match

    def __call__(self, request: web.Request) -> bool:
        if self.match(request):
            self.headers.append(dict(request.headers))
        return False  # never taken: the request goes on unchanged


def record(proxy: FaultProxy, match: Callable[[web.Request], bool]) -> Recorder:
    recorder = Recorder(match)
    proxy.add(Rule(recorder, times=1))
    return recorder


# --- put, read, delete, set_headers ------------------------------------------------------------------


async def test_put_creates_only_once_and_replaces_only_the_version_it_names(store: AzureStorage) -> None:
    storage = seam(store)
    first = await storage.put(
        "a/record.json", b"{}", if_match=None, content_type="application/json", metadata={"k": "1"}
    )
    with pytest.raises(Conflict):
        await storage.put("a/record.json", b"{}", if_match=None, content_type="application/json", metadata={})
    second = await storage.put(
        "a/record.json", b'{"v":2}', if_match=first.etag, content_type="application/json", metadata={"k": "2"}
    )
    assert second.etag != first.etag and second.last_modified is not None
    with pytest.raises(Conflict):  # that version is gone
        await storage.put("a/record.json", b"{}", if_match=first.etag, content_type="application/json", metadata={})
    found = await storage.read_bytes("a/record.json", max_bytes=1024)
    assert found is not None
    blob, data = found
    assert (data, blob.etag, blob.size, blob.metadata) == (b'{"v":2}', second.etag, 7, {"k": "2"})
    assert blob.headers.content_type == "application/json"
    assert await storage.read("a/missing.json") is None
    assert await storage.read_bytes("a/missing.json", max_bytes=10) is None


async def test_a_conditional_write_on_a_missing_blob_is_a_conflict(store: AzureStorage) -> None:
    await store.ensure_container()
    etag = '"0x8DC0000000000000"'
    with pytest.raises(Conflict):
        await store.put("gone.json", b"{}", if_match=etag, content_type="application/json", metadata={})
    with pytest.raises(Conflict):
        await store.set_headers("gone.json", Headers(content_type="text/plain"), if_match=etag)
    assert await store.read("gone.json") is None


async def test_container_is_created_by_a_write_also_after_it_was_deleted(
    store: AzureStorage, destination: ContainerClient
) -> None:
    assert await store.read("x.json") is None  # no container: nothing there, not an error
    assert [item async for item in store.list("")] == []
    await store.put("x.json", b"1", if_match=None, content_type="application/json", metadata={})
    destination.delete_container()  # while the app runs
    written = await store.put("y.json", b"2", if_match=None, content_type="application/json", metadata={})
    blob = await store.read("y.json")
    assert blob is not None and blob.etag == written.etag
    assert await store.read("x.json") is None


async def test_delete_is_conditional_and_a_missing_blob_is_not_an_error(store: AzureStorage) -> None:
    first = await store.put("d.json", b"1", if_match=None, content_type="application/json", metadata={})
    second = await store.put("d.json", b"2", if_match=first.etag, content_type="application/json", metadata={})
    with pytest.raises(Conflict):
        await store.delete("d.json", if_match=first.etag)
    assert await store.read("d.json") is not None
    assert await store.delete("d.json", if_match=second.etag) is True
    assert await store.read("d.json") is None
    assert await store.delete("d.json", if_match=second.etag) is False


async def test_the_container_policy_is_asked_once_a_process_also_when_the_container_was_missing(
    via_proxy: AzureStorage, proxy: FaultProxy
) -> None:
    """A missing container has no policy, and the first write creates it without one: the first delivery
    of a process asks, later ones never do (one request, whatever the answer)."""
    assert await via_proxy.container_policy() is None
    await via_proxy.put("p.json", b"{}", if_match=None, content_type="application/json", metadata={})
    assert await via_proxy.container_policy() is None
    container_reads = [a for a in proxy.answered if a[0] == "GET" and a[1].strip("/").count("/") == 1]
    assert [status for _, _, status in container_reads] == [404], proxy.answered


async def test_set_headers_replaces_them_all_and_changes_the_etag(store: AzureStorage) -> None:
    first = await store.put(
        "h.bin", b"abc", if_match=None, content_type="application/octet-stream", metadata={"m": "1"}
    )
    md5 = hashlib.md5(b"abc").digest()  # noqa: S324 - the service's own content hash
    headers = Headers(content_type="application/pdf", content_md5=md5, cache_control="no-cache", content_language="pt")
    written = await store.set_headers("h.bin", headers, if_match=first.etag)
    assert written.etag != first.etag
    blob = await store.read("h.bin")
    assert blob is not None and blob.headers == headers and blob.metadata == {"m": "1"} and blob.etag == written.etag
    with pytest.raises(Conflict):
        await store.set_headers("h.bin", Headers(content_type="text/plain"), if_match=first.etag)


async def test_read_bytes_never_reads_past_the_cap(
    store: AzureStorage, proxy: FaultProxy, open_storage: Opener
) -> None:
    await store.put("big.json", b"x" * 100, if_match=None, content_type="application/json", metadata={})
    await store.put("empty.json", b"", if_match=None, content_type="application/json", metadata={})
    through = await open_storage(proxy.port)
    reads = record(proxy, lambda request: request.method == "GET" and request.path.endswith("big.json"))
    with pytest.raises(Rejected):
        await through.read_bytes("big.json", max_bytes=10)
    assert [headers.get("x-ms-range") for headers in reads.headers] == ["bytes=0-9"]
    found = await through.read_bytes("empty.json", max_bytes=10)
    assert found is not None and found[1] == b"" and found[0].size == 0
    exact = await through.read_bytes("big.json", max_bytes=100)
    assert exact is not None and exact[1] == b"x" * 100 and exact[0].size == 100


async def test_list_names_in_order_with_metadata(store: AzureStorage) -> None:
    for name in ("t/b.json", "t/a.json", "u/c.json"):
        await store.put(name, b"{}", if_match=None, content_type="application/json", metadata={"name": name[-6]})
    listed = [item async for item in store.list("t/")]
    assert [(item.name, item.metadata) for item in listed] == [("t/a.json", {"name": "a"}), ("t/b.json", {"name": "b"})]
    assert all(item.etag and item.last_modified for item in listed)


def test_url_has_no_query_and_is_encoded(store: AzureStorage) -> None:
    url = store.url("ws/task/Relatório 1.pdf")
    assert "?" not in url and url.endswith(f"/{store.container}/ws/task/Relat%C3%B3rio%201.pdf")


# --- Copy Blob From URL, source size ----------------------------------------------------------------


async def test_sync_copy_carries_the_source_headers_and_honours_conditions(
    store: AzureStorage, exports: Exports
) -> None:
    source = exports.publish(PDF_BYTES, content_type="application/pdf")
    written = await store.copy_from_url(
        "c/doc.pdf", source, if_match=None, metadata={"delivery": "d1"}, tags={"taskId": "t1"}
    )
    blob = await store.read("c/doc.pdf")
    assert blob is not None and blob.etag == written.etag and blob.size == len(PDF_BYTES)
    assert blob.headers.content_type == "application/pdf" and blob.delivery == "d1"
    assert await store.read_tags("c/doc.pdf") == {"taskId": "t1"}
    with pytest.raises(Conflict):  # create only
        await store.copy_from_url("c/doc.pdf", source, if_match=None, metadata={}, tags=None)
    again = await store.copy_from_url(
        "c/doc.pdf", source, if_match=written.etag, metadata={"delivery": "d2"}, tags=None
    )
    assert again.etag != written.etag
    with pytest.raises(Conflict):
        await store.copy_from_url("c/doc.pdf", source, if_match=written.etag, metadata={}, tags=None)


async def test_a_refused_or_missing_source_is_source_unreadable(store: AzureStorage, exports: Exports) -> None:
    name = f"{uuid.uuid4()}/export.pdf"
    exports.publish(PDF_BYTES, name=name)
    expired = exports.sas_url(name, expires_in=timedelta(hours=-1))
    missing = exports.sas_url(f"{uuid.uuid4()}/none.pdf")
    for url, status in ((expired, 403), (missing, 404)):
        with pytest.raises(SourceUnreadable) as caught:
            await store.copy_from_url("s/doc.pdf", url, if_match=None, metadata={}, tags=None)
        assert caught.value.status == status and caught.value.code == "CannotVerifyCopySource"
        assert "sig=" not in str(caught.value) and "?" not in str(caught.value)
    assert await store.read("s/doc.pdf") is None


async def test_a_source_too_large_for_a_sync_copy(via_proxy: AzureStorage, proxy: FaultProxy, exports: Exports) -> None:
    proxy.refuse_sync_copies()
    with pytest.raises(TooLargeForSyncCopy):
        await via_proxy.copy_from_url("big.pdf", exports.publish(), if_match=None, metadata={}, tags=None)
    assert await via_proxy.read("big.pdf") is None


async def test_source_version_by_a_head_through_its_own_sas(store: AzureStorage, exports: Exports) -> None:
    name = f"{uuid.uuid4()}/export.pdf"
    url = exports.publish(SOURCE, name=name)
    found = await store.source_version(url)
    etag = exports.client.get_blob_client(EXPORT_CONTAINER, name).get_blob_properties().etag
    assert found is not None and found.size == len(SOURCE) and found.etag == etag, found
    assert await store.source_version(exports.sas_url(name, expires_in=timedelta(hours=-1))) is None


# --- Put Block From URL, Put Block List (through the proxy: Azurite answers 501) ----------------------


async def stage_all(storage: AzureStorage, name: str, url: str, *, first: int = 0) -> list[str]:
    ids = []
    for n, offset in enumerate(range(0, len(SOURCE), BLOCK)):
        ids.append(block_id(first + n))
        await storage.stage_block(name, ids[-1], url, offset=offset, length=min(BLOCK, len(SOURCE) - offset))
    return ids


async def test_staged_blocks_commit_with_headers_metadata_and_tags_and_the_earlier_blob_stays_until_then(
    via_proxy: AzureStorage, proxy: FaultProxy, exports: Exports
) -> None:
    earlier = await via_proxy.copy_from_url("big/doc.pdf", exports.publish(), if_match=None, metadata={}, tags=None)
    ids = await stage_all(via_proxy, "big/doc.pdf", exports.publish(SOURCE))
    assert proxy.emulator is not None and len(proxy.emulator.performed) == 4
    still = await via_proxy.read_bytes("big/doc.pdf", max_bytes=10_000)
    assert still is not None and still[1] == PDF_BYTES and still[0].etag == earlier.etag
    md5 = hashlib.md5(SOURCE).digest()  # noqa: S324 - the service's own content hash
    headers = Headers(content_type="application/pdf", content_md5=md5, content_disposition="inline")
    written = await via_proxy.commit_blocks(
        "big/doc.pdf", ids, if_match=earlier.etag, headers=headers, metadata={"delivery": "d2"}, tags={"taskId": "t"}
    )
    found = await via_proxy.read_bytes("big/doc.pdf", max_bytes=10_000)
    assert found is not None
    blob, data = found
    assert data == SOURCE and blob.etag == written.etag != earlier.etag
    assert blob.headers == headers and blob.metadata == {"delivery": "d2"}
    assert await via_proxy.read_tags("big/doc.pdf") == {"taskId": "t"}


async def test_staging_recreates_a_missing_container(via_proxy: AzureStorage, exports: Exports) -> None:
    ids = await stage_all(via_proxy, "fresh.pdf", exports.publish(SOURCE))  # no container yet
    await via_proxy.commit_blocks("fresh.pdf", ids, if_match=None, headers=Headers(), metadata={}, tags=None)
    found = await via_proxy.read_bytes("fresh.pdf", max_bytes=10_000)
    assert found is not None and found[1] == SOURCE


async def test_the_standalone_staging_proxy_stages_blocks(
    azurite: Azurite, open_storage: Opener, exports: Exports
) -> None:
    staging = await StagingProxy(azurite.blob_port).start()  # what `make run` could put in front of Azurite
    try:
        storage = await open_storage(staging.port)
        await storage.ensure_container()
        ids = await stage_all(storage, "via.pdf", exports.publish(SOURCE))
        await storage.commit_blocks("via.pdf", ids, if_match=None, headers=Headers(), metadata={}, tags={"a": "b"})
        found = await storage.read_bytes("via.pdf", max_bytes=10_000)
        assert found is not None and found[1] == SOURCE
        assert await storage.read_tags("via.pdf") == {"a": "b"}
        assert staging.emulator is not None and len(staging.emulator.performed) == len(ids)
    finally:
        await staging.stop()


async def test_a_commit_creates_only_once(via_proxy: AzureStorage, exports: Exports) -> None:
    ids = await stage_all(via_proxy, "new.pdf", exports.publish(SOURCE))
    await via_proxy.commit_blocks("new.pdf", ids, if_match=None, headers=Headers(), metadata={}, tags=None)
    ids = await stage_all(via_proxy, "new.pdf", exports.publish(SOURCE))
    with pytest.raises(Conflict):
        await via_proxy.commit_blocks("new.pdf", ids, if_match=None, headers=Headers(), metadata={}, tags=None)


async def test_a_commit_over_a_changed_blob_is_a_conflict_and_changes_nothing(
    via_proxy: AzureStorage, exports: Exports
) -> None:
    first = await via_proxy.put("doc.pdf", b"one", if_match=None, content_type="application/pdf", metadata={})
    ids = await stage_all(via_proxy, "doc.pdf", exports.publish(SOURCE))
    second = await via_proxy.put("doc.pdf", b"two", if_match=first.etag, content_type="application/pdf", metadata={})
    with pytest.raises(Conflict):
        await via_proxy.commit_blocks("doc.pdf", ids, if_match=first.etag, headers=Headers(), metadata={}, tags=None)
    found = await via_proxy.read_bytes("doc.pdf", max_bytes=100)
    assert found is not None and found[1] == b"two" and found[0].etag == second.etag


async def test_a_commit_whose_blocks_another_commit_discarded_is_a_conflict(
    via_proxy: AzureStorage, exports: Exports
) -> None:
    url = exports.publish(SOURCE)
    mine = await stage_all(via_proxy, "race.pdf", url)
    theirs = await stage_all(via_proxy, "race.pdf", url, first=100)
    won = await via_proxy.commit_blocks("race.pdf", theirs, if_match=None, headers=Headers(), metadata={}, tags=None)
    with pytest.raises(Conflict) as caught:
        await via_proxy.commit_blocks("race.pdf", mine, if_match=won.etag, headers=Headers(), metadata={}, tags=None)
    assert caught.value.code == "InvalidBlockList"
    blob = await via_proxy.read("race.pdf")
    assert blob is not None and blob.etag == won.etag


async def test_staging_from_a_refused_or_missing_source_is_source_unreadable(
    via_proxy: AzureStorage, exports: Exports
) -> None:
    name = f"{uuid.uuid4()}/export.pdf"
    exports.publish(SOURCE, name=name)
    for url, status in (
        (exports.sas_url(name, expires_in=timedelta(hours=-1)), 403),
        (exports.sas_url(f"{uuid.uuid4()}/none.pdf"), 404),
    ):
        with pytest.raises(SourceUnreadable) as caught:
            await via_proxy.stage_block("s.pdf", block_id(0), url, offset=0, length=BLOCK)
        assert (caught.value.status, caught.value.code) == (status, "CannotVerifyCopySource")
        assert "sig=" not in str(caught.value)


async def test_the_proxy_performs_put_blob_from_url_with_the_source_headers(
    azurite: Azurite, proxy: FaultProxy, exports: Exports, container_name: str
) -> None:
    # The aio client: a blocking one would stall the proxy, which runs on this test's loop.
    async with AioBlobServiceClient.from_connection_string(
        connection_string(CUSTOMER_ACCOUNT, CUSTOMER_KEY, proxy.port)
    ) as client:
        await client.create_container(container_name)
        blob = client.get_blob_client(container_name, "whole.pdf")
        source = exports.publish(SOURCE, content_type="application/pdf")
        await blob.upload_blob_from_url(source, overwrite=False, tags={"a": "b"})
        assert await (await blob.download_blob()).readall() == SOURCE
        assert (await blob.get_blob_properties()).content_settings.content_type == "application/pdf"
        assert await blob.get_blob_tags() == {"a": "b"}
    assert proxy.emulator is not None and [kind for kind, _ in proxy.emulator.performed] == ["blob"]


# --- accounts without index tags ----------------------------------------------------------------------


async def test_account_information_says_hierarchical_namespace_then_no_tags_are_sent(
    via_proxy: AzureStorage, proxy: FaultProxy
) -> None:
    await via_proxy.ensure_container()
    proxy.account_information(hns=True)
    tagged = record(proxy, carries_tags)
    await via_proxy.put(
        "r.json", b"{}", if_match=None, content_type="application/json", metadata={"m": "1"}, tags={"a": "b"}
    )
    assert via_proxy.tags_supported is False
    assert tagged.headers == [] and len(puts(proxy, "r.json")) == 1
    blob = await via_proxy.read("r.json")
    assert blob is not None and blob.metadata == {"m": "1"}  # tags are not folded into metadata
    asked = [path for _, path in proxy.seen if "restype=account" in path]
    await via_proxy.put("s.json", b"{}", if_match=None, content_type="application/json", metadata={}, tags={"a": "b"})
    assert [path for _, path in proxy.seen if "restype=account" in path] == asked  # asked once


async def test_an_ordinary_account_keeps_its_tags(via_proxy: AzureStorage, proxy: FaultProxy) -> None:
    await via_proxy.put("r.json", b"{}", if_match=None, content_type="application/json", metadata={}, tags={"a": "b"})
    assert via_proxy.tags_supported is True
    assert await via_proxy.read_tags("r.json") == {"a": "b"}


Write = Callable[[AzureStorage, str], Awaitable[Any]]


async def write_put(storage: AzureStorage, url: str) -> Any:
    return await storage.put(
        "w.pdf", b"{}", if_match=None, content_type="application/pdf", metadata={}, tags={"a": "b"}
    )


async def write_copy(storage: AzureStorage, url: str) -> Any:
    return await storage.copy_from_url("w.pdf", url, if_match=None, metadata={}, tags={"a": "b"})


async def write_commit(storage: AzureStorage, url: str) -> Any:
    ids = await stage_all(storage, "w.pdf", url)
    return await storage.commit_blocks("w.pdf", ids, if_match=None, headers=Headers(), metadata={}, tags={"a": "b"})


@pytest.mark.parametrize("write", [write_put, write_copy, write_commit], ids=["put", "copy", "commit"])
async def test_a_write_refused_for_its_tags_is_sent_once_more_without_them(
    via_proxy: AzureStorage, proxy: FaultProxy, exports: Exports, write: Write
) -> None:
    # A container-scoped role may not ask for account information: unknown, never an error.
    proxy.add(Rule(is_account_info, times=100, status=403, code="AuthorizationPermissionMismatch"))
    refusal = proxy.refuse_tags_on_writes()
    await via_proxy.ensure_container()
    written = await write(via_proxy, exports.publish(SOURCE))
    assert refusal.fired == 1 and via_proxy.tags_supported is False
    blob = await via_proxy.read("w.pdf")
    assert blob is not None and blob.etag == written.etag and blob.metadata == {}
    assert len([p for p in puts(proxy, "w.pdf") if "comp=block&" not in p]) == 2  # refused, then without tags
    await via_proxy.put(
        "later.json", b"{}", if_match=None, content_type="application/json", metadata={}, tags={"a": "b"}
    )
    assert refusal.fired == 1 and len(puts(proxy, "later.json")) == 1


async def test_a_refused_tags_call_teaches_the_same(via_proxy: AzureStorage, proxy: FaultProxy) -> None:
    proxy.add(Rule(is_account_info, times=100, status=403, code="AuthorizationPermissionMismatch"))
    await via_proxy.put("r.json", b"{}", if_match=None, content_type="application/json", metadata={})
    refusal = proxy.refuse_tag_calls()
    assert await via_proxy.read_tags("r.json") == {}
    assert refusal.fired == 1 and via_proxy.tags_supported is False
    tagged = record(proxy, carries_tags)
    await via_proxy.put("s.json", b"{}", if_match=None, content_type="application/json", metadata={}, tags={"a": "b"})
    assert tagged.headers == [] and len(puts(proxy, "s.json")) == 1


# --- immutability, retries, identity ------------------------------------------------------------------


async def commit_over(storage: AzureStorage, name: str, url: str, etag: str) -> Any:
    ids = await stage_all(storage, name, url)  # staging is allowed: the blob itself does not change
    return await storage.commit_blocks(name, ids, if_match=etag, headers=Headers(), metadata={}, tags=None)


@pytest.mark.parametrize("code", ["BlobImmutableDueToPolicy", "BlobImmutableDueToLegalHold"])
async def test_a_retention_policy_or_legal_hold_refuses_every_change_but_a_create(
    via_proxy: AzureStorage, proxy: FaultProxy, exports: Exports, code: str
) -> None:
    first = await via_proxy.put("i.pdf", b"one", if_match=None, content_type="application/pdf", metadata={})
    proxy.immutable(code)
    created = await via_proxy.put("j.pdf", b"new", if_match=None, content_type="application/pdf", metadata={})
    assert created.etag
    attempts: list[Callable[[], Awaitable[Any]]] = [
        lambda: via_proxy.put("i.pdf", b"two", if_match=first.etag, content_type="application/pdf", metadata={}),
        lambda: via_proxy.copy_from_url("i.pdf", exports.publish(), if_match=first.etag, metadata={}, tags=None),
        lambda: via_proxy.set_headers("i.pdf", Headers(content_type="text/plain"), if_match=first.etag),
        lambda: via_proxy.delete("i.pdf", if_match=first.etag),
        lambda: commit_over(via_proxy, "i.pdf", exports.publish(SOURCE), first.etag),
    ]
    for attempt in attempts:
        with pytest.raises(Immutable) as caught:
            await attempt()
        assert caught.value.code == code and caught.value.status == 409
        assert caught.value.policy == ("legal hold" if "LegalHold" in code else "retention policy")
    found = await via_proxy.read_bytes("i.pdf", max_bytes=10)
    assert found is not None and found[1] == b"one" and found[0].etag == first.etag


async def test_retries_are_bounded_and_do_not_sleep(via_proxy: AzureStorage, proxy: FaultProxy) -> None:
    busy = proxy.add(
        Rule(lambda r: r.method == "PUT" and r.path.endswith("b.json"), times=2, status=503, code="ServerBusy")
    )
    started = time.monotonic()
    await via_proxy.put("b.json", b"{}", if_match=None, content_type="application/json", metadata={})
    assert busy.fired == 2 and await via_proxy.read("b.json") is not None
    always = proxy.add(Rule(lambda r: r.path.endswith("c.json"), times=100, status=503, code="ServerBusy"))
    with pytest.raises(Unavailable) as caught:
        await via_proxy.put("c.json", b"{}", if_match=None, content_type="application/json", metadata={})
    assert always.fired == 1 + RETRY["retry_total"] and caught.value.code == "ServerBusy"
    assert time.monotonic() - started < 3  # five back-offs of 10 ms, not seconds


def test_retry_backoff_is_injectable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RETRY_BACKOFF_VARIABLE, raising=False)
    assert retry_settings() == RETRY
    monkeypatch.setenv(RETRY_BACKOFF_VARIABLE, "0.05")
    flat = retry_settings()
    assert (flat["initial_backoff"], flat["increment_base"], flat["random_jitter_range"]) == (0.05, 0, 0)
    assert flat["retry_total"] == RETRY["retry_total"]
    assert retry_settings(0.5)["initial_backoff"] == 0.5
    monkeypatch.setenv(RETRY_BACKOFF_VARIABLE, "soon")
    assert retry_settings() == RETRY


async def test_a_wrong_key_is_misconfigured(open_storage: Opener) -> None:
    wrong = await open_storage(key=base64.b64encode(b"not-the-key").decode())
    with pytest.raises(Misconfigured) as caught:
        await wrong.put("x.json", b"{}", if_match=None, content_type="application/json", metadata={})
    assert caught.value.status == 403


async def test_a_refused_delete_asks_a_sas_signed_destination_for_the_sas_permissions_not_a_role(
    azurite: Azurite, proxy: FaultProxy, container_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a refusal asks to fix follows what signs the requests: with a SAS in the connection string, the
    SAS's permissions (granting a role to the function's identity would change nothing)."""
    from datetime import UTC, datetime

    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    monkeypatch.setenv(RETRY_BACKOFF_VARIABLE, "0.01")
    sas = generate_account_sas(
        CUSTOMER_ACCOUNT,
        CUSTOMER_KEY,
        ResourceTypes(service=True, container=True, object=True),
        AccountSasPermissions(read=True, add=True, create=True, write=True, delete=True, tag=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    endpoint = f"http://127.0.0.1:{proxy.port}/{CUSTOMER_ACCOUNT}"
    settings = Settings(
        destination_connection_string=f"BlobEndpoint={endpoint};SharedAccessSignature={sas}",
        destination_container=container_name,
    )
    storage = AzureStorage.open(settings)
    try:
        written = await storage.put("a.pdf", PDF_BYTES, if_match=None, content_type="application/pdf", metadata={})
        proxy.add(
            Rule(
                lambda request: request.method == "DELETE", times=10, status=403, code="AuthorizationPermissionMismatch"
            )
        )
        with pytest.raises(Misconfigured) as refused:
            await storage.delete("a.pdf", if_match=written.etag)
    finally:
        await storage.close()
    assert "SAS in DESTINATION_CONNECTION_STRING" in refused.value.message and "delete" in refused.value.message
    assert "Storage Blob Data Owner" not in refused.value.message and "sig=" not in refused.value.message


def test_a_key_signed_destination_refused_by_its_firewall_is_asked_about_the_key_and_firewall_not_a_role() -> None:
    from azure.core.exceptions import HttpResponseError

    from receiver.store import Call, classify

    refusal = HttpResponseError(message="AuthorizationFailure: refused")
    refusal.status_code = 403  # AuthorizationFailure: the network rules' answer to a keyed request
    refusal.error_code = "AuthorizationFailure"  # type: ignore[attr-defined]  # as the SDK sets it
    error = classify(refusal, Call("put blob"), "acct", "c", "key")
    assert isinstance(error, Misconfigured) and "firewall" in error.message, error.message
    assert "Storage Blob Data Owner" not in error.message, error.message


def test_a_connection_string_with_both_a_key_and_a_sas_is_signed_by_the_key() -> None:
    """The SDK signs with the key when a connection string holds both, and so the advice speaks of the key."""
    both = (
        f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={CUSTOMER_KEY};"
        "SharedAccessSignature=sv=2024-11-04&ss=b&srt=sco&sp=r&se=2030-01-01&sig=abc;EndpointSuffix=core.windows.net"
    )
    storage = AzureStorage.open(Settings(destination_connection_string=both, destination_container="customer"))
    assert storage.signed_by == "key"
