"""Faults Azurite cannot produce, injected by the fault proxy between the SDK and Azurite: throttling,
dropped connections, refusals, and Put Block From URL (which the proxy performs for Azurite)."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest
from aiohttp import web
from azure.storage.blob import ContainerClient

from devtools.azurite import CUSTOMER_ACCOUNT, CUSTOMER_KEY, connection_string
from receiver.models import State
from receiver.runtime import RUNTIME

from .conftest import (
    PDF_BYTES,
    Exports,
    Webhook,
    assert_delivered,
    delivery_of,
    every_blob,
    files,
    manifest_of,
    name_of,
    notification,
    reached,
    record_of,
    run_verifier,
)
from .faultproxy import (
    FaultProxy,
    Rule,
    is_copy,
    is_create_copy,
    is_manifest_write,
    is_record_read,
    is_record_write,
)


@pytest.fixture
async def staged(proxied: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> FaultProxy:
    """SYNC_COPY_MAX_MIB=0 and COPY_WAIT_SECONDS=0: every file is staged in blocks, and the answer never
    waits for them (202): the queue function stages and commits."""
    monkeypatch.setenv("SYNC_COPY_MAX_MIB", "0")
    monkeypatch.setenv("COPY_WAIT_SECONDS", "0")
    await RUNTIME.reset()
    return proxied


def is_commit(request: web.Request) -> bool:
    return request.method == "PUT" and request.query.get("comp") == "blocklist"


async def test_the_record_read_and_the_create_copy_go_out_side_by_side(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """The first round: the copy is held, and the record read is already on its way beside it."""
    release = asyncio.Event()
    held = proxied.add(Rule(is_create_copy, times=1, hold=release))
    read = proxied.add(Rule(is_record_read, times=1))
    payload = notification(exports.publish())
    answer = asyncio.ensure_future(webhook.post(payload))
    await reached(held)
    await asyncio.wait_for(read.reached.wait(), timeout=5)
    release.set()
    response = await answer
    assert response.status == 200 and response.body["status"] == "stored", response.body
    assert_delivered(destination, payload, name_of(response.body), PDF_BYTES)
    assert sum(1 for method, _ in proxied.seen if method == "PUT") == 3  # the copy, the record, the manifest


async def test_throttled_and_dropped_calls_are_retried_quickly(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    proxied.add(Rule(is_copy, times=1, drop=True))
    proxied.add(Rule(is_copy, times=1, status=503, code="ServerBusy"))
    proxied.add(Rule(is_record_write, times=1, status=500, code="OperationTimedOut"))
    proxied.add(Rule(is_manifest_write, times=1, status=503, code="ServerBusy"))
    payload = notification(exports.publish())
    started = time.monotonic()
    response = await webhook.post(payload)
    assert time.monotonic() - started < 5  # RECEIVER_STORAGE_RETRY_BACKOFF: no seconds of back-off
    assert response.status == 200 and response.body["status"] == "stored", response.body
    assert all(rule.fired == 1 for rule in proxied.rules)
    assert_delivered(destination, payload, name_of(response.body), PDF_BYTES)


async def test_exhausted_retries_answer_503_and_leave_nothing_untracked(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """Every try of the copy is refused 503: nothing was written, the record lists the delivery copying
    (the copy may have landed as far as the request knows), and the queue function stores it."""
    refuse = proxied.add(Rule(is_copy, times=1000, status=503, code="ServerBusy"))
    payload = notification(exports.publish())
    response = await webhook.post(payload)
    assert response.status == 503 and response.body["error"] == "storage-unavailable", response.body
    assert "again" in response.body["message"]
    assert refuse.fired == 4  # the first try and three retries
    assert files(destination) == []
    record = record_of(destination, payload)
    entry = record.find(delivery_of(payload["exportedFileUrl"])) if record is not None else None
    assert entry is not None and entry.state is State.COPYING
    assert response.verification is not None
    proxied.reset()
    await run_verifier(response.verification)
    [name] = files(destination)
    assert_delivered(destination, payload, name, PDF_BYTES)


async def test_a_staged_file_answers_202_and_the_queue_function_commits_it(
    staged: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    payload = notification(exports.publish())
    response = await webhook.post(payload)
    assert response.status == 202 and response.body["status"] == "copying", response.body
    assert response.verification is not None
    name = name_of(response.body)
    assert files(destination) == []
    record = record_of(destination, payload)
    entry = record.find(delivery_of(payload["exportedFileUrl"])) if record is not None else None
    assert entry is not None and entry.state is State.COPYING and entry.staged

    await run_verifier(response.verification)
    assert_delivered(destination, payload, name, PDF_BYTES)
    assert any(m == "PUT" and "comp=block&" in p for m, p in staged.seen)
    assert any(m == "PUT" and "comp=blocklist" in p for m, p in staged.seen)
    again = await webhook.post(payload)
    assert again.status == 200 and again.body["status"] == "duplicate", again.body


async def test_a_staged_re_export_keeps_the_earlier_file_whole_until_its_commit(
    staged: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    first = notification(exports.publish(b"%PDF first"))
    stored = await webhook.post(first)
    assert stored.status == 202 and stored.verification is not None
    await run_verifier(stored.verification)
    name = name_of(stored.body)
    release = asyncio.Event()
    held = staged.add(Rule(is_commit, times=1, hold=release))
    second = {**first, "exportedFileUrl": exports.publish(b"%PDF second")}
    answer = await webhook.post(second)
    assert answer.status == 202 and answer.verification is not None
    verifier = asyncio.ensure_future(run_verifier(answer.verification))
    await reached(held)
    assert destination.get_blob_client(name).download_blob().readall() == b"%PDF first"  # blocks staged only
    release.set()
    await verifier
    assert_delivered(destination, second, name, b"%PDF second")


async def test_a_manifest_write_failure_keeps_the_copied_file_and_queues_the_manifest(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    proxied.add(Rule(is_manifest_write, times=1000, status=503, code="ServerBusy"))
    payload = notification(exports.publish())
    response = await webhook.post(payload)
    assert response.status == 503 and response.verification is not None, response.body
    [name] = files(destination)  # a copy that landed is never removed because a later step failed
    assert not destination.get_blob_client(f"{name}.json").exists()
    record = record_of(destination, payload)
    assert record is not None and record.current == delivery_of(payload["exportedFileUrl"])

    proxied.reset()
    await run_verifier(response.verification)  # the queue function writes the manifest
    assert_delivered(destination, payload, name, PDF_BYTES)
    again = await webhook.post(payload)
    assert again.status == 200 and again.body["status"] == "duplicate", again.body


async def test_tags_permission_refused_names_the_role(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    proxied.add(Rule(is_copy, times=1, status=403, code="AuthorizationPermissionMismatch"))
    response = await webhook.post(notification(exports.publish()))
    assert response.status == 500
    assert response.body["error"] == "misconfigured"
    assert "Storage Blob Data Owner" in response.body["message"]
    assert CUSTOMER_ACCOUNT in response.body["message"]
    assert files(destination) == []


async def test_an_account_without_index_tags_still_stores_the_file(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    proxied.hierarchical_namespace()
    await RUNTIME.reset()
    payload = notification(exports.publish())
    response = await webhook.post(payload)
    assert response.status == 200 and response.body["status"] == "stored", response.body
    assert "tags are in the manifest" in response.body["message"]
    name = name_of(response.body)
    manifest = assert_delivered(destination, payload, name, PDF_BYTES)
    assert manifest["tagsWritten"] is False
    assert manifest["tags"]["taskId"] == payload["taskId"]


async def test_firewall_refusal_is_misconfigured(proxied: FaultProxy, exports: Exports, webhook: Webhook) -> None:
    proxied.add(Rule(is_copy, times=1, status=403, code="AuthorizationFailure"))
    response = await webhook.post(notification(exports.publish()))
    assert response.status == 500
    assert response.body["error"] == "misconfigured"
    assert "firewall" in response.body["message"]


async def test_missing_container_that_cannot_be_created_is_misconfigured(
    configured: dict[str, str],
    proxy: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    monkeypatch: pytest.MonkeyPatch,
    container_name: str,
) -> None:
    monkeypatch.setenv("DESTINATION_CONNECTION_STRING", connection_string(CUSTOMER_ACCOUNT, CUSTOMER_KEY, proxy.port))
    await RUNTIME.reset()

    def creates_container(request: web.Request) -> bool:
        return request.method == "PUT" and request.query.get("restype") == "container"

    proxy.add(Rule(creates_container, times=10, status=403, code="AuthorizationPermissionMismatch"))
    response = await webhook.post(notification(exports.publish()))
    assert response.status == 500
    assert response.body["error"] == "misconfigured"
    assert container_name in response.body["message"]
    assert CUSTOMER_ACCOUNT in response.body["message"]


async def test_a_request_storage_refuses_is_reported_as_a_bug_not_an_outage(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    refuse = proxied.add(Rule(is_copy, times=10, status=400, code="InvalidMetadata"))
    response = await webhook.post(notification(exports.publish()))
    assert response.status == 500
    assert response.body["error"] == "internal-error"
    assert "InvalidMetadata" in response.body["message"]
    assert refuse.fired == 1  # not retried: retrying cannot fix a refused request
    assert files(destination) == []


async def test_the_largest_notification_still_fits_the_verification_queue(
    staged: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """Azure Queue messages hold 64 KiB after the host's base64 encoding; the queue message carries the
    notification, so the largest one accepted (MAX_BODY_BYTES, 64 KiB by default) must still fit."""
    metadata = {f"field{i:02d}": "v" * 3900 for i in range(15)}
    payload = notification(exports.publish(), metadata=metadata, displayName="D" * 3000)
    assert len(json.dumps(payload).encode()) < 64 * 1024
    response = await webhook.post(payload)
    assert response.status == 202 and response.verification, response.body
    assert len(base64.b64encode(response.verification.encode())) < 64 * 1024
    await run_verifier(response.verification)
    assert manifest_of(destination, name_of(response.body))["metadata"]["field00"] == "v" * 3900
    assert len(every_blob(destination)) == 3  # the file, its manifest, the task record
