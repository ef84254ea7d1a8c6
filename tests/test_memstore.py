"""MemoryStorage on its own: its fault hooks, its clock, and what Azurite cannot show (the 256 MiB
limit, empty sources, accounts without tags, uncommitted blocks expiring). What both backends must
agree on lives in tests/test_storage_contract.py."""

from __future__ import annotations

from datetime import timedelta

import pytest

from receiver.storage import (
    Conflict,
    Headers,
    Immutable,
    Rejected,
    SourceUnreadable,
    TooLargeForSyncCopy,
    Unavailable,
)
from sim.memstore import START, FaultPlan, ManualClock, MemorySources, MemoryStorage

PDF = Headers(content_type="application/pdf")
META = {"delivery": "abc"}


def build(**options: object) -> tuple[MemoryStorage, MemorySources, ManualClock, FaultPlan]:
    clock = ManualClock()
    sources = MemorySources(now=clock)
    faults = FaultPlan()
    store = MemoryStorage(sources=sources, now=clock, faults=faults, **options)  # type: ignore[arg-type]
    return store, sources, clock, faults


async def put(store: MemoryStorage, name: str, data: bytes = b"v1", *, if_match: str | None = None) -> str:
    return (await store.put(name, data, if_match=if_match, content_type="application/json", metadata=META)).etag


# ------------------------------------------------------------------------------------------ faults


async def test_a_fault_before_the_operation_changes_nothing() -> None:
    store, _, _, faults = build()
    etag = await put(store, "a.json")
    before = store.snapshot()
    faults.fail_before("put", "a.json")
    with pytest.raises(Unavailable) as failed:
        await put(store, "a.json", b"v2", if_match=etag)
    assert (failed.value.kind, failed.value.status) == ("unavailable", 503)
    assert store.snapshot() == before
    assert await put(store, "a.json", b"v2", if_match=etag)  # the rule fired once: the retry goes through
    assert faults.fired == [("before", "put", "a.json")]


async def test_a_lost_answer_leaves_the_operation_done() -> None:
    store, sources, _, faults = build()
    url = sources.publish("x/export.pdf", b"%PDF-1.4", PDF)
    faults.lose_answer("copy_from_url")
    with pytest.raises(Unavailable):
        await store.copy_from_url("f.pdf", url, if_match=None, metadata=META, tags=None)
    assert store.blob_bytes("f.pdf") == b"%PDF-1.4"  # it acted; the caller must observe to learn it
    blob = await store.read("f.pdf")
    assert blob is not None and blob.delivery == "abc"
    with pytest.raises(Conflict):  # a blind retry of the create now meets its own copy
        await store.copy_from_url("f.pdf", url, if_match=None, metadata=META, tags=None)


async def test_a_lost_delete_answer_then_a_retry_answers_false() -> None:
    store, _, _, faults = build()
    etag = await put(store, "d.json")
    faults.lose_answer("delete", "d.json")
    with pytest.raises(Unavailable):
        await store.delete("d.json", if_match=etag)
    assert store.names() == []
    assert await store.delete("d.json", if_match=etag) is False


async def test_faults_match_by_operation_and_name_and_fire_a_bounded_number_of_times() -> None:
    store, _, _, faults = build()
    faults.fail_before("put", "b.json", times=2)
    await put(store, "a.json")  # another name: untouched
    for _ in range(2):
        with pytest.raises(Unavailable):
            await put(store, "b.json")
    await put(store, "b.json")
    assert store.names() == ["a.json", "b.json"]
    assert ("put", "b.json") in store.calls and len(store.calls) == 4


async def test_a_fault_on_a_listing_or_a_read() -> None:
    store, _, _, faults = build()
    await put(store, "a.json")
    faults.fail_before("list").fail_before("read")
    with pytest.raises(Unavailable):
        [item async for item in store.list("")]
    with pytest.raises(Unavailable):
        await store.read("a.json")
    assert [item.name async for item in store.list("")] == ["a.json"]


async def test_immutable_blobs_refuse_overwrites_changes_and_deletes_but_not_creates() -> None:
    store, sources, _, faults = build()
    etag = await put(store, "kept.pdf")
    faults.make_immutable("kept.pdf").make_immutable("held.pdf", legal_hold=True)
    before = store.snapshot()
    url = sources.publish("x/export.pdf", b"%PDF", PDF)
    attempts = [
        put(store, "kept.pdf", b"v2", if_match=etag),
        store.copy_from_url("kept.pdf", url, if_match=etag, metadata=META, tags=None),
        store.commit_blocks("kept.pdf", [], if_match=etag, headers=PDF, metadata=META, tags=None),
        store.set_headers("kept.pdf", PDF, if_match=etag),
        store.delete("kept.pdf", if_match=etag),
    ]
    for attempt in attempts:
        with pytest.raises(Immutable) as refused:
            await attempt
        assert (refused.value.status, refused.value.code) == (409, "BlobImmutableDueToPolicy")
        assert refused.value.policy == "retention policy"
    assert store.snapshot() == before
    with pytest.raises(Conflict):  # create-only over it is still the ordinary conflict
        await put(store, "kept.pdf")
    held = await put(store, "held.pdf")  # creating is allowed
    with pytest.raises(Immutable) as refused:
        await store.delete("held.pdf", if_match=held)
    assert refused.value.policy == "legal hold"
    faults.release("held.pdf")
    assert await store.delete("held.pdf", if_match=held)


# ------------------------------------------------------------------------------ copy limits, tags


async def test_sources_over_the_sync_limit_or_empty_are_too_large_for_a_sync_copy() -> None:
    store, sources, _, _ = build(sync_limit_bytes=8)
    for data in (b"123456789", b""):
        url = sources.publish("x/export.pdf", data, PDF)
        with pytest.raises(TooLargeForSyncCopy) as refused:
            await store.copy_from_url("f.pdf", url, if_match=None, metadata=META, tags=None)
        assert (refused.value.status, refused.value.code) == (409, "CannotVerifyCopySource")
    assert store.names() == []
    url = sources.publish("x/export.pdf", b"12345678", PDF)
    await store.copy_from_url("f.pdf", url, if_match=None, metadata=META, tags=None)
    assert store.blob_bytes("f.pdf") == b"12345678"


async def test_an_account_without_index_tags_drops_them() -> None:
    store, sources, _, _ = build(tags_supported=False)
    assert store.tags_supported is False
    url = sources.publish("x/export.pdf", b"%PDF", PDF)
    await store.copy_from_url("f.pdf", url, if_match=None, metadata=META, tags={"taskId": "1"})
    await store.put("r.json", b"{}", if_match=None, content_type="application/json", metadata={}, tags={"a": "b"})
    assert store.tags("f.pdf") == {} and store.tags("r.json") == {}


async def test_tags_follow_azures_rules() -> None:
    store, _, _, _ = build()
    await store.put("ok.json", b"{}", if_match=None, content_type="application/json", metadata={}, tags={"k": "v 1"})
    assert store.tags("ok.json") == {"k": "v 1"}
    for bad in ({"k": "ção"}, {f"k{i}": "v" for i in range(11)}, {"": "v"}):
        with pytest.raises(Rejected) as refused:
            await store.put("bad.json", b"{}", if_match=None, content_type="application/json", metadata={}, tags=bad)
        assert refused.value.code == "InvalidTag"
    assert store.names() == ["ok.json"]


async def test_non_ascii_metadata_is_refused() -> None:
    store, _, _, _ = build()
    with pytest.raises(Rejected):
        await store.put("m.json", b"{}", if_match=None, content_type="application/json", metadata={"a": "Relatório"})


# ---------------------------------------------------------------------------------- clock and SAS


async def test_times_come_from_the_clock_in_whole_seconds() -> None:
    store, _, clock, _ = build()
    clock.advance(timedelta(seconds=1, microseconds=500))
    etag = await put(store, "a.json")
    clock.advance(timedelta(minutes=5))
    written = await store.put("a.json", b"v2", if_match=etag, content_type="application/json", metadata={})
    blob = await store.read("a.json")
    assert blob is not None
    assert blob.created == START + timedelta(seconds=1)
    assert blob.last_modified == written.last_modified == START + timedelta(minutes=5, seconds=1)


async def test_a_sas_expires_on_the_stores_clock() -> None:
    store, sources, clock, _ = build()
    url = sources.publish("x/export.pdf", b"%PDF", PDF, expires_in=timedelta(hours=1))
    found = await store.source_version(url)
    assert found is not None and found.size == 4
    clock.advance(timedelta(hours=1))
    assert await store.source_version(url) is None
    with pytest.raises(SourceUnreadable) as refused:
        await store.copy_from_url("f.pdf", url, if_match=None, metadata=META, tags=None)
    assert (refused.value.status, refused.value.code) == (403, "CannotVerifyCopySource")
    assert "sig" not in str(refused.value)


async def test_a_source_removed_after_its_link_was_handed_out() -> None:
    store, sources, _, _ = build()
    url = sources.publish("x/export.pdf", b"%PDF", PDF)
    sources.remove("x/export.pdf")
    with pytest.raises(SourceUnreadable) as refused:
        await store.stage_block("f.pdf", "b-000", url, offset=0, length=4)
    assert refused.value.status == 404


async def test_uncommitted_blocks_vanish_after_a_week() -> None:
    store, sources, clock, _ = build()
    url = sources.publish("x/export.pdf", b"%PDF", PDF, expires_in=timedelta(days=30))
    await store.stage_block("f.pdf", "b-000", url, offset=0, length=4)
    assert store.staged_blocks("f.pdf") == ["b-000"]
    clock.advance(timedelta(days=7))
    with pytest.raises(Conflict) as refused:
        await store.commit_blocks("f.pdf", ["b-000"], if_match=None, headers=PDF, metadata={}, tags=None)
    assert refused.value.code == "InvalidBlockList"


async def test_a_range_outside_the_source_is_rejected() -> None:
    store, sources, _, _ = build()
    url = sources.publish("x/export.pdf", b"%PDF", PDF)
    with pytest.raises(Rejected):
        await store.stage_block("f.pdf", "b-000", url, offset=2, length=3)
    assert store.staged_blocks("f.pdf") == []


async def test_a_later_commit_may_name_the_blobs_committed_blocks() -> None:
    store, sources, _, _ = build()
    url = sources.publish("x/export.pdf", b"abcd", PDF)
    await store.stage_block("f.bin", "b-000", url, offset=0, length=2)
    await store.stage_block("f.bin", "b-001", url, offset=2, length=2)
    first = await store.commit_blocks("f.bin", ["b-000", "b-001"], if_match=None, headers=PDF, metadata={}, tags=None)
    await store.commit_blocks("f.bin", ["b-001"], if_match=first.etag, headers=PDF, metadata={}, tags=None)
    assert store.blob_bytes("f.bin") == b"cd"


# ------------------------------------------------------------------------------- container, state


async def test_a_missing_container_reads_empty_and_a_write_creates_it_again() -> None:
    store, _, _, _ = build(container_exists=False)
    assert await store.read("a.json") is None
    await put(store, "a.json")
    assert await store.read("a.json") is not None
    store.drop_container()
    assert await store.read("a.json") is None
    await put(store, "b.json")
    assert store.names() == ["b.json"]


async def test_snapshots_compare_whole_states() -> None:
    one, two = build()[0], build()[0]
    for store in (one, two):
        etag = await put(store, "a.json")
        await store.set_headers("a.json", PDF, if_match=etag)
    assert one.snapshot() == two.snapshot()
    await put(two, "b.json")
    assert one.snapshot() != two.snapshot()
    assert one.snapshot().blobs[0].etag.startswith('"0x8D')
