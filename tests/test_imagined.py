"""The dry run's container (ops/imagined.py): the real one read through, every write kept in memory.

Held to the in-memory store (itself held to Azurite by tests/test_storage_contract.py): the same
writes, each with the condition a driver sends (create-only, If-Match on the version it read, or on
a version that is gone), under a container policy or not, answer the same on both (success, or the
same error and code), and leave the same blobs (which exist, their metadata and Content-Type). The
real container is never written.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ops.imagined import Imagined
from receiver.storage import Headers, StoreError
from sim.memstore import START, ManualClock, MemorySources, MemoryStorage

NAMES = ("a.pdf", "b.pdf")
GONE = '"0x0"'  # a version that never was
Op = tuple[str, str, str, int]  # (write, name, condition: new | read | stale, which metadata)


def _world() -> tuple[MemoryStorage, MemorySources, str]:
    clock = ManualClock()
    sources = MemorySources(now=clock)
    url = sources.publish("x/export.pdf", b"%PDF-1.7", Headers(content_type="application/pdf"))
    store = MemoryStorage("c", sources=sources, now=clock)
    for name in NAMES[:1]:
        store.load(name, b"old", content_type="application/pdf", metadata={"delivery": "d0"}, created=START,
                   last_modified=START)  # fmt: skip
    return store, sources, url


async def _apply(storage: Any, op: Op, url: str, stale: dict[str, str]) -> str:
    write, name, condition, meta = op
    current = await storage.read(name)
    if_match: str | None = None
    if condition == "read":
        if_match = current.etag if current is not None else GONE
    elif condition == "stale":
        if_match = stale.get(name, GONE)
    metadata = {"delivery": f"d{meta}"}
    try:
        if write == "put":
            await storage.put(name, b"{}", if_match=if_match, content_type="application/json", metadata=metadata)
        elif write == "copy":
            await storage.copy_from_url(name, url, if_match=if_match, metadata=metadata, tags=None)
        elif write == "stage-commit":
            await storage.stage_block(name, "b1", url, offset=0, length=8)
            headers = Headers(content_type="application/pdf")
            await storage.commit_blocks(name, ["b1"], if_match=if_match, headers=headers, metadata=metadata, tags=None)
        elif write == "headers":
            await storage.set_headers(name, Headers(content_type="text/plain"), if_match=if_match or GONE)
        elif write == "delete":
            deleted = await storage.delete(name, if_match=if_match or GONE)
            return f"deleted={deleted}"
    except StoreError as exc:
        return f"{type(exc).__name__} {exc.code}"
    finally:
        if current is not None:
            stale.setdefault(name, current.etag)
    return "ok"


async def _view(storage: Any) -> list[tuple[str, dict[str, str], str | None] | None]:
    found = [await storage.read(name) for name in NAMES]
    return [None if blob is None else (blob.name, blob.metadata, blob.headers.content_type) for blob in found]


OPS = st.tuples(
    st.sampled_from(["put", "copy", "stage-commit", "headers", "delete"]),
    st.sampled_from(NAMES),
    st.sampled_from(["new", "read", "stale"]),
    st.integers(1, 3),
)


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(OPS, min_size=1, max_size=8), policy=st.sampled_from([None, "legal hold", "retention policy"]))
def test_imagined_writes_answer_and_leave_what_the_store_does_and_the_real_container_is_untouched(
    ops: list[Op], policy: str | None
) -> None:
    async def go() -> None:
        real, _, url = _world()
        twin, _, twin_url = _world()
        real.policy = twin.policy = policy
        before = real.snapshot()
        imagined = Imagined(real, now=START + timedelta(minutes=1), content_type="application/pdf")
        stale_imagined: dict[str, str] = {}
        stale_twin: dict[str, str] = {}
        for op in ops:
            answered = await _apply(imagined, op, url, stale_imagined)
            expected = await _apply(twin, op, twin_url, stale_twin)
            assert answered == expected, (op, answered, expected)
            assert await _view(imagined) == await _view(twin), op
        assert real.snapshot() == before, "the dry run wrote to the real container"

    asyncio.run(go())


def test_an_imagined_copy_of_an_expired_link_is_refused_as_the_service_refuses_it() -> None:
    async def go() -> None:
        real, sources, _ = _world()
        url = sources.publish("x/late.pdf", b"%PDF", Headers(content_type="application/pdf"), expires_in=timedelta(0))
        imagined = Imagined(real, now=START + timedelta(minutes=1))
        answered = await _apply(imagined, ("copy", "b.pdf", "new", 1), url, {})
        expected = await _apply(real, ("copy", "b.pdf", "new", 1), url, {})
        assert answered == expected == "SourceUnreadable CannotVerifyCopySource", (answered, expected)

    asyncio.run(go())
