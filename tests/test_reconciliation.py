"""The reconciliation (timer): nothing depends on one queue message surviving.

docs/reference.md, "The reconciliation"."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.functions.queue import QueueMessage
from azure.storage.blob import ContainerClient

from receiver.reconciliation import reconcile_run
from receiver.runtime import RUNTIME
from receiver.verification import CopyStillRunning

from .conftest import FUNCTIONS, PDF_BYTES, Exports, Webhook, notification
from .faultproxy import FaultProxy, Rule, is_manifest_write, is_properties


def manifest_of(destination: ContainerClient, name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(destination.get_blob_client(f"{name}.json").download_blob().readall())
    return document


def name_of(body: dict[str, Any]) -> str:
    return str(body["blob"].split("/", 1)[1])


async def run_timer() -> None:
    function = FUNCTIONS["reconcile_deliveries"].get_user_function()
    await function(None)


@pytest.fixture
async def pending_copies(proxied: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> FaultProxy:
    """Asynchronous copies that stay pending until the test lets them finish; reconcile at once."""
    monkeypatch.setenv("SYNC_COPY_MAX_MIB", "0")
    monkeypatch.setenv("RECONCILE_AFTER_MINUTES", "0")
    monkeypatch.setenv("RECONCILE_SCHEDULE", "0 */10 * * * *")
    await RUNTIME.reset()
    proxied.keep_copies_pending()
    return proxied


async def test_a_delivery_whose_queue_message_was_lost_is_finished(
    pending_copies: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    payload = notification(exports.publish(PDF_BYTES, content_type="application/octet-stream"))
    response = await webhook.post(payload)
    assert response.status == 202  # its verification message is dropped: never delivered
    name = name_of(response.body)
    pending_copies.reset()  # the copy completes

    await run_timer()

    manifest = manifest_of(destination, name)
    assert manifest["copyStatus"] == "success"
    assert manifest["taskId"] == payload["taskId"] and manifest["metadata"] == payload["metadata"]
    props = destination.get_blob_client(name).get_blob_properties()
    assert props.content_settings.content_type == "application/pdf"
    assert destination.get_blob_client(f"{name}.json").get_blob_tags()["copyStatus"] == "success"


async def test_a_copy_still_pending_after_the_last_dequeue_is_finished_when_it_completes(
    pending_copies: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    response = await webhook.post(notification(exports.publish()))
    assert response.status == 202 and response.verification
    name = name_of(response.body)
    caplog.clear()
    verify = FUNCTIONS["verify_pending_copy"].get_user_function()
    with pytest.raises(CopyStillRunning):  # the host poisons it: kept for replay-poison, with one ERROR
        await verify(QueueMessage(id="m", body=response.verification.encode(), dequeue_count=40))  # type: ignore[no-untyped-call]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "replay-poison" in errors[0].getMessage()

    await run_timer()  # still running: nothing changes
    assert manifest_of(destination, name)["copyStatus"] == "pending"
    pending_copies.reset()
    await run_timer()
    assert manifest_of(destination, name)["copyStatus"] == "success"


async def test_a_copy_that_failed_after_its_link_expired_is_marked_failed_with_one_error(
    pending_copies: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    payload = notification(
        exports.publish(), exportedFileExpiresOn=(datetime.now(UTC) + timedelta(seconds=3)).isoformat()
    )
    response = await webhook.post(payload)
    assert response.status == 202
    name = name_of(response.body)
    pending_copies.reset()
    pending_copies.add(Rule(is_properties, 10_000, copy_status="failed", copy_description="500 InternalError"))
    await asyncio.sleep(3.2)  # the link expires
    caplog.clear()

    await run_timer()

    assert not destination.get_blob_client(name).exists()
    assert manifest_of(destination, name)["copyStatus"] == "failed"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert payload["taskId"] in errors[0].getMessage() and name in errors[0].getMessage()
    await run_timer()  # idempotent: nothing left to do, no second ERROR
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1


async def test_two_reconciliations_at_once_do_the_work_once(
    pending_copies: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    names = []
    for _ in range(3):
        pending_copies.reset()
        pending_copies.keep_copies_pending()
        response = await webhook.post(notification(exports.publish()))
        assert response.status == 202
        names.append(name_of(response.body))
    pending_copies.reset()

    reports = await asyncio.gather(*(reconcile_run(runtime=RUNTIME, now=datetime.now(UTC)) for _ in range(2)))

    written = [
        path
        for method, path, status in pending_copies.answered
        if method == "PUT" and path.endswith(".json") and status < 300
    ]
    assert len(written) == 3  # each manifest completed once; the other run found it done or lost the race (412)
    assert all(manifest_of(destination, name)["copyStatus"] == "success" for name in names)
    assert all(r.found == 3 and set(r.outcomes) <= {"finished", "skipped"} for r in reports)


async def test_a_pending_manifest_whose_blob_holds_another_export_is_repaired(
    pending_copies: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    payload = notification(exports.publish(b"%PDF older"))
    response = await webhook.post(payload)
    assert response.status == 202
    name = name_of(response.body)
    pending_copies.reset()
    # A newer export's copy lands, but its request died before its own manifest write.
    newer_url = exports.publish(b"%PDF newer")
    pending_copies.add(Rule(is_manifest_write, times=10, status=503, code="ServerBusy"))
    newer = await webhook.post({**payload, "exportedFileUrl": newer_url})
    assert newer.status == 503
    pending_copies.reset()

    await run_timer()

    manifest = manifest_of(destination, name)
    assert manifest["delivery"] == hashlib.sha256(newer_url.encode()).hexdigest()
    assert manifest["delivery"] == destination.get_blob_client(name).get_blob_properties().metadata["delivery"]
    assert manifest["taskId"] == payload["taskId"] and manifest["partial"] is True


async def test_a_run_is_bounded_and_costs_two_queries_when_nothing_is_pending(
    configured: dict[str, str], proxied: FaultProxy, exports: Exports, webhook: Webhook
) -> None:
    assert (await webhook.post(notification(exports.publish()))).status == 200  # stored: not pending
    proxied.reset()
    report = await reconcile_run(runtime=RUNTIME, now=datetime.now(UTC))
    assert report.found == 0 and report.retired == 0 and report.storage_requests == 2
    # Two Find Blobs by Tags calls: the pending manifests, and the last hour's stored deliveries (one
    # current file per task); the one task found has one manifest, so nothing more is read.
    assert [method for method, _ in proxied.seen] == ["GET", "GET"]
    assert all("comp=blobs" in path for _, path in proxied.seen)
