"""A staged copy requires the version of the exported file its HEAD saw (docs/reference.md, Atomic copies), in
memory: a HEAD that names no version stages nothing it would commit; a file written again during every try is
named as the reason when the message is poisoned."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from receiver.storage import Headers
from receiver.verification import CopyStillRunning, verify_copy
from sim.world import World


async def test_a_source_written_again_during_every_try_is_poisoned_saying_the_exported_file_kept_changing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The sender writes the file again while each try stages it: every try ends unfinished. The last try's
    poison message should say why (the exported file kept changing while it was copied), not only that the copy
    is 'still not finished', which points at nothing an operator can act on."""
    world = World.make(sync_copy_max_mib=0, copy_wait_seconds=0)
    export = world.export(display_name="big.pdf", data=b"%PDF" + b"x" * 100)
    answer = await world.post(export)
    assert answer.status_code == 202 and answer.verification is not None, answer.body
    real = world.storage.stage_block
    writes = {"n": 0}

    async def stage_block(name: str, block_id: str, source_url: str, **kwargs: Any) -> None:
        writes["n"] += 1
        world.sources.add("ws-1/task-1/export-1.pdf", b"%PDF" + bytes([65 + writes["n"] % 26]) * 100, Headers())
        await real(name, block_id, source_url, **kwargs)

    monkeypatch.setattr(world.storage, "stage_block", stage_block)
    caplog.set_level(logging.INFO)
    for count in (1, 40):
        with pytest.raises(CopyStillRunning):
            await verify_copy(answer.verification.encode(), runtime=world.runtime, now=world.now, dequeue_count=count)
    last = [r.getMessage() for r in caplog.records if "poisoned" in r.getMessage()]
    assert last and any(word in last[-1] for word in ("changed", "written again", "rewritten")), last


async def test_a_head_without_an_etag_never_leads_to_a_200_for_blocks_of_two_versions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A HEAD whose answer carries no ETag (SourceVersion(size, None)): the blocks are then staged with no source
    condition, so a rewrite between two blocks is committed as one file of two versions and answered 200."""
    import dataclasses

    import receiver.engine
    from receiver import intake, webhook

    world = World.make(sync_copy_max_mib=0, copy_wait_seconds=10)
    first, second = b"%PDF" + b"A" * 60, b"%PDF" + b"B" * 60
    export = world.export(display_name="big.pdf", data=first)

    def job(*args: Any, **kwargs: Any) -> Any:
        return dataclasses.replace(intake.arrival_job(*args, **kwargs), block_bytes=16)

    monkeypatch.setattr(webhook, "arrival_job", job)
    real_version, real_stage = world.storage.source_version, world.storage.stage_block

    async def source_version(url: str) -> Any:
        found = await real_version(url)
        return None if found is None else dataclasses.replace(found, etag=None)

    async def stage_block(name: str, block_id: str, source_url: str, **kwargs: Any) -> None:
        if kwargs["offset"] >= 32:
            world.sources.add("ws-1/task-1/export-1.pdf", second, Headers())
        await real_stage(name, block_id, source_url, **kwargs)

    monkeypatch.setattr(world.storage, "source_version", source_version)
    monkeypatch.setattr(world.storage, "stage_block", stage_block)
    monkeypatch.setattr(receiver.engine, "STAGE_PARALLEL", 1)
    answer = await world.post(export)
    stored = world.files().get("ws-1/task-1/big.pdf")
    assert not (answer.status_code == 200 and stored not in (first, second)), (answer.status_code, stored)


async def test_a_block_that_fails_stops_the_other_blocks_of_its_try_before_the_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One Put Block From URL answers 503 (after the SDK's tries) while the others of the same try are still
    on their way: the try ends (503, the queue stages the file again), and the blocks still on their way are
    stopped with it, not left running on the worker's loop after the answer, staging bytes nothing commits."""
    import asyncio
    import dataclasses

    import receiver.engine
    from receiver import intake, webhook
    from receiver.storage import Unavailable

    world = World.make(sync_copy_max_mib=0, copy_wait_seconds=10)
    export = world.export(display_name="big.pdf", data=b"%PDF" + b"x" * 156)

    def job(*args: Any, **kwargs: Any) -> Any:
        return dataclasses.replace(intake.arrival_job(*args, **kwargs), block_bytes=16)

    monkeypatch.setattr(webhook, "arrival_job", job)
    monkeypatch.setattr(receiver.engine, "STAGE_PARALLEL", 4)
    real_stage = world.storage.stage_block
    release, others_on_their_way = asyncio.Event(), asyncio.Event()
    started: list[int] = []

    async def stage_block(name: str, block_id: str, source_url: str, **kwargs: Any) -> None:
        started.append(kwargs["offset"])
        if len(started) == 4:
            others_on_their_way.set()
        if kwargs["offset"] == 0:
            await others_on_their_way.wait()
            raise Unavailable("503 ServerBusy")
        await release.wait()
        await real_stage(name, block_id, source_url, **kwargs)

    monkeypatch.setattr(world.storage, "stage_block", stage_block)
    answer = await world.post(export)
    assert answer.status_code == 503 and "checks the copy again" in answer.body["message"], answer.body
    release.set()
    for _ in range(20):
        await asyncio.sleep(0)
    assert world.storage.staged_blocks("ws-1/task-1/big.pdf") == [], "blocks staged after the answer"
    assert len(started) == 4, started
