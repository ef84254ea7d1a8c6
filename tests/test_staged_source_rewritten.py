"""A staged copy whose exported file is written again while its blocks are staged (docs/reference.md,
"Atomic copies"): every block requires the version the HEAD saw (x-ms-source-if-match), so a rewrite fails
the next block instead of a commit of two versions, or of a file cut at the earlier size. The delivery stays
copying (202) and the queue function stages the file again, whole, from a new look at it.

On Azurite through the fault proxy, which performs Put Block From URL as the service does (reading the
source range through the link's SAS with the source condition) and holds one block while the test rewrites
the source behind the same link."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from aiohttp import web
from azure.storage.blob import ContainerClient

from receiver import verification as verification_module
from receiver import webhook as webhook_module
from receiver.intake import arrival_job
from receiver.runtime import RUNTIME

from .conftest import EXPORT_CONTAINER, Exports, Webhook, assert_delivered, name_of, notification, reached, run_verifier
from .faultproxy import FaultProxy, Rule

BLOCK = 16
FIRST = b"%PDF-first-" + b"A" * 53  # 64 bytes: four blocks
SECOND = b"%PDF-second" + b"B" * 53


@pytest.fixture
async def staged(proxied: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> FaultProxy:
    """Every file staged in blocks of 16 bytes, inside the request while COPY_WAIT_SECONDS lasts."""
    monkeypatch.setenv("SYNC_COPY_MAX_MIB", "0")
    monkeypatch.setenv("COPY_WAIT_SECONDS", "10")
    await RUNTIME.reset()

    def job(*args: Any, **kwargs: Any) -> Any:
        return dataclasses.replace(arrival_job(*args, **kwargs), block_bytes=BLOCK)

    monkeypatch.setattr(webhook_module, "arrival_job", job)
    monkeypatch.setattr(verification_module, "arrival_job", job)
    return proxied


def stages_from(first_byte: int) -> Any:
    def match(request: web.Request) -> bool:
        return request.query.get("comp") == "block" and request.headers.get("x-ms-source-range", "").startswith(
            f"bytes={first_byte}-"
        )

    return match


async def rewritten_while_staging(
    staged: FaultProxy, exports: Exports, webhook: Webhook, *, held_at: int, then: bytes
) -> tuple[dict[str, Any], str]:
    """The webhook stages FIRST; the block at ``held_at`` is held while the source becomes ``then``."""
    source = f"rewritten-{held_at}-{len(then)}/export.pdf"
    payload = notification(exports.publish(FIRST, name=source))
    release = asyncio.Event()
    held = staged.add(Rule(stages_from(held_at), times=1, hold=release))
    answer = asyncio.ensure_future(webhook.post(payload))
    await reached(held)
    exports.client.get_blob_client(EXPORT_CONTAINER, source).upload_blob(then, overwrite=True)
    release.set()
    response = await answer
    assert response.status == 202 and response.body["status"] == "copying", response.body
    assert response.verification is not None
    return payload, response.verification


@pytest.mark.parametrize(
    ("held_at", "then"),
    [(48, SECOND), (0, SECOND + b"C" * 40), (48, SECOND[:40])],
    ids=["same size", "grown", "shrunk"],
)
async def test_a_source_written_again_while_its_blocks_are_staged_is_stored_whole_as_its_new_version(
    staged: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    held_at: int,
    then: bytes,
) -> None:
    """Never a 200 for a file of blocks of two versions, or cut at the size the HEAD saw, nor a final failure
    for a link that works: 202, then the queue function's try stores the file the link serves now, whole."""
    payload, message = await rewritten_while_staging(staged, exports, webhook, held_at=held_at, then=then)
    await run_verifier(message)
    again = await webhook.post(payload)
    assert again.status == 200 and again.body["status"] == "duplicate", again.body
    assert_delivered(destination, payload, name_of(again.body), then)
