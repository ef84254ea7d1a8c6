"""Faults Azurite cannot produce, injected by a proxy between the SDK and Azurite."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from azure.functions.queue import QueueMessage
from azure.storage.blob import ContainerClient

from devtools.azurite import CUSTOMER_ACCOUNT, CUSTOMER_KEY, connection_string
from receiver.runtime import RUNTIME
from receiver.verification import CopyStillRunning

from .conftest import FUNCTIONS, PDF_BYTES, Exports, Webhook, notification
from .faultproxy import FaultProxy, Rule, is_blob_write, is_copy, is_properties


async def run_verifier(message: str, *, dequeue_count: int = 1) -> None:
    function = FUNCTIONS["verify_pending_copy"].get_user_function()
    # The worker's own message class (untyped): it carries dequeue_count, which func.QueueMessage cannot.
    message_in = QueueMessage(id="test-message", body=message.encode(), dequeue_count=dequeue_count)  # type: ignore[no-untyped-call]
    await function(message_in)


@pytest.fixture
async def async_copies(proxied: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> FaultProxy:
    """SYNC_COPY_MAX_MIB=0: every copy takes the asynchronous path, which the proxy can keep pending."""
    monkeypatch.setenv("SYNC_COPY_MAX_MIB", "0")
    await RUNTIME.reset()
    return proxied


def manifest_of(destination: ContainerClient, name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(destination.get_blob_client(f"{name}.json").download_blob().readall())
    return document


def blob_of(body: dict[str, Any]) -> str:
    return str(body["blob"].split("/", 1)[1])


def files(destination: ContainerClient) -> list[str]:
    return sorted(b.name for b in destination.list_blobs())


async def test_common_path_is_two_round_trips_of_four_requests(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    # The synchronous copy; then, side by side, a read of the copied blob (its headers), the manifest
    # (created only where none exists) and the look-up of the task's other files. The header read is
    # held here: the other two must already be on their way, or they would cost a third round trip.
    release = asyncio.Event()
    head = proxied.add(Rule(is_properties, times=1, hold=release))
    answer = asyncio.ensure_future(webhook.post(notification(exports.publish())))
    await asyncio.wait_for(head.reached.wait(), timeout=20)
    for _ in range(100):
        if len(proxied.seen) >= 4:
            break
        await asyncio.sleep(0.05)
    in_flight = [method for method, _ in proxied.seen]
    release.set()
    response = await answer
    assert response.status == 200, response.body
    assert in_flight[0] == "PUT" and sorted(in_flight[1:]) == ["GET", "HEAD", "PUT"], in_flight
    assert len(proxied.seen) == 4
    manifest_write = next(path for method, path in proxied.seen[1:] if method == "PUT")
    assert ".json" not in proxied.seen[0][1] and manifest_write.split("?")[0].endswith(".json")
    listing = next(path for method, path in proxied.seen if method == "GET")
    assert "comp=list" in listing and "prefix=" in listing  # the task's own prefix: no index lag


async def test_content_type_fix_is_decided_from_the_copied_blob(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    url = exports.publish(PDF_BYTES, content_type="application/octet-stream")
    response = await webhook.post(notification(url))
    assert response.status == 200, response.body
    methods = [method for method, _ in proxied.seen]
    # copy; then read, manifest and the task look-up side by side; set headers (If-Match) after the read
    assert methods[0] == "PUT" and sorted(methods[1:]) == ["GET", "HEAD", "PUT", "PUT"], methods
    assert methods.index("HEAD") < len(methods) - 1 - methods[::-1].index("PUT")
    props = destination.get_blob_client(blob_of(response.body)).get_blob_properties()
    assert props.content_settings.content_type == "application/pdf"


async def test_duplicate_costs_at_most_three_storage_calls(
    proxied: FaultProxy, exports: Exports, webhook: Webhook
) -> None:
    payload = notification(exports.publish())
    await webhook.post(payload)
    proxied.reset()
    response = await webhook.post(payload)
    assert response.body["status"] == "duplicate"
    assert len(proxied.seen) <= 3


async def test_pending_copy_answers_202_and_the_queue_function_finishes_it(
    async_copies: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient, secrets: Any
) -> None:
    proxied = async_copies
    source = exports.publish(PDF_BYTES, content_type="application/octet-stream")
    proxied.keep_copies_pending()
    payload = notification(source)

    response = await webhook.post(payload)

    assert response.status == 202, response.body
    assert response.body["status"] == "copying"
    assert response.body["copyId"]
    assert response.verification is not None
    name = blob_of(response.body)
    pending = manifest_of(destination, name)  # durable before the 202, completed by the verifier
    assert pending["copyStatus"] == "pending"
    assert pending["copyId"] == response.body["copyId"]
    assert json.loads(response.verification)["manifest"]["delivery"] == pending["delivery"]  # small: it travels

    proxied.reset()  # the copy completes
    await run_verifier(response.verification)

    props = destination.get_blob_client(name).get_blob_properties()
    assert props.content_settings.content_type == "application/pdf"
    manifest = manifest_of(destination, name)
    assert manifest["copyStatus"] == "success"
    assert manifest["taskId"] == payload["taskId"]
    assert "sig=" not in json.dumps(manifest)


async def test_a_copy_still_pending_comes_back_later(
    async_copies: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient, caplog: Any
) -> None:
    proxied = async_copies
    proxied.keep_copies_pending()
    response = await webhook.post(notification(exports.publish()))
    assert response.status == 202 and response.verification

    with pytest.raises(CopyStillRunning) as caught:
        await run_verifier(response.verification)
    assert "sig" not in str(caught.value)
    assert manifest_of(destination, blob_of(response.body))["copyStatus"] == "pending"

    # The last try raises too, so the host moves the message (and the link it holds) to the poison
    # queue, where replay-poison can bring it back; nothing retries it by itself now: one ERROR says so.
    caplog.clear()
    with pytest.raises(CopyStillRunning):
        await run_verifier(response.verification, dequeue_count=40)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("receiver")]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    message = errors[0].getMessage()
    assert "poisoned" in message and "replay-poison" in message and response.body["taskId"] in message
    assert manifest_of(destination, blob_of(response.body))["copyStatus"] == "pending"


async def test_a_copy_that_fails_while_the_link_is_valid_is_restarted(
    async_copies: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    proxied = async_copies
    proxied.keep_copies_pending()
    response = await webhook.post(notification(exports.publish()))
    assert response.status == 202 and response.verification

    proxied.reset()
    proxied.add(Rule(is_properties, times=1, copy_status="failed", copy_description="500 InternalError Copy failed."))
    await run_verifier(response.verification)

    copies = [path for method, path in proxied.seen if method == "PUT" and "comp" not in path and ".json" not in path]
    assert len(copies) == 1  # the restart
    name = blob_of(response.body)
    assert destination.get_blob_client(name).download_blob().readall() == PDF_BYTES
    assert manifest_of(destination, name)["copyStatus"] == "success"


async def test_a_copy_that_fails_after_the_link_expired_is_cleaned_up_and_logged(
    async_copies: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient, caplog: Any
) -> None:
    proxied = async_copies
    proxied.keep_copies_pending()
    payload = notification(exports.publish())
    response = await webhook.post(payload)
    assert response.status == 202 and response.verification
    message = json.loads(response.verification)
    message["expiresOn"] = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()

    proxied.reset()
    proxied.add(Rule(is_properties, times=10_000, copy_status="failed", copy_description="500 InternalError"))
    caplog.clear()
    await run_verifier(json.dumps(message))  # final: returns, the host must not retry it

    name = blob_of(response.body)
    assert not destination.get_blob_client(name).exists()
    failed = manifest_of(destination, name)  # the manifest says what happened
    assert failed["copyStatus"] == "failed" and failed["taskId"] == payload["taskId"]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("receiver")]
    assert len(errors) == 1
    text = errors[0].getMessage()
    assert payload["taskId"] in text and payload["workspaceId"] in text and name in text
    assert "sig=" not in text


async def test_a_superseded_copy_is_left_to_the_newer_export(
    async_copies: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    proxied = async_copies
    proxied.keep_copies_pending()
    payload = notification(exports.publish(b"%PDF old"))
    response = await webhook.post(payload)
    assert response.status == 202 and response.verification
    proxied.reset()
    newer = await webhook.post({**payload, "exportedFileUrl": exports.publish(b"%PDF new")})
    assert newer.status == 200
    await run_verifier(response.verification)
    name = blob_of(response.body)
    assert destination.get_blob_client(name).download_blob().readall() == b"%PDF new"


async def test_throttled_and_dropped_calls_are_retried(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    proxied.add(Rule(is_copy, times=1, drop=True))
    proxied.add(Rule(is_copy, times=1, status=503, code="ServerBusy"))
    proxied.add(Rule(is_blob_write, times=1, status=500, code="OperationTimedOut"))  # the manifest
    response = await webhook.post(notification(exports.publish()))
    assert response.status == 200, response.body
    assert all(rule.fired == 1 for rule in proxied.rules)
    assert destination.get_blob_client(blob_of(response.body)).download_blob().readall() == PDF_BYTES


async def test_exhausted_retries_answer_503_and_leave_nothing_untracked(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    proxied.add(Rule(is_copy, times=1000, status=503, code="ServerBusy"))
    response = await webhook.post(notification(exports.publish()))
    assert response.status == 503
    assert response.body["error"] == "storage-unavailable"
    assert "again" in response.body["message"]
    assert proxied.rules[0].fired == 4  # the first try and three retries
    # A copy was sent: it is tracked in storage itself (a pending manifest the reconciliation finds,
    # no file), not only by the queue message, which looks again later.
    name = blob_of(
        {
            "blob": json.loads(response.verification or "{}")["container"]
            + "/"
            + json.loads(response.verification or "{}")["blob"]
        }
    )
    assert files(destination) == [f"{name}.json"]
    tracked = manifest_of(destination, name)
    assert tracked["copyStatus"] == "pending"
    assert tracked["history"][-1]["outcome"] == "unconfirmed" and tracked["history"][-1]["status"] == 503
    assert response.verification is not None
    proxied.reset()
    await run_verifier(response.verification)
    assert destination.get_blob_client(name).download_blob().readall() == PDF_BYTES
    assert manifest_of(destination, name)["copyStatus"] == "success"


async def test_a_manifest_write_failure_keeps_the_copied_blob_and_tracks_it(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    proxied.add(
        Rule(lambda r: r.method == "PUT" and r.path.endswith(".json"), times=1000, status=503, code="ServerBusy")
    )
    payload = notification(exports.publish())
    response = await webhook.post(payload)
    assert response.status == 503
    assert response.verification is not None
    name = json.loads(response.verification)["blob"]
    assert files(destination) == [name]  # a copy that succeeded is never deleted by a later failure

    proxied.reset()
    await run_verifier(response.verification)  # the queue function writes the manifest
    assert (
        manifest_of(destination, name)["delivery"]
        == destination.get_blob_client(name).get_blob_properties().metadata["delivery"]
    )
    again = await webhook.post(payload)
    assert again.status == 200 and again.body["status"] == "duplicate"


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


async def test_account_without_index_tags_still_stores_the_file(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    proxied.add(
        Rule(
            lambda r: is_copy(r) and "x-ms-tags" in r.headers,
            times=1000,
            status=400,
            code="BlobTagsNotSupportedForAccountType",
        )
    )
    payload = notification(exports.publish())
    response = await webhook.post(payload)
    assert response.status == 200, response.body
    assert "does not support blob index tags" in response.body["message"]
    name = blob_of(response.body)
    blob = destination.get_blob_client(name)
    assert blob.get_blob_tags() == {}
    indextags = blob.get_blob_properties().metadata["indextags"]
    assert f"taskId={payload['taskId']}" in indextags
    manifest = manifest_of(destination, name)
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


async def test_an_export_replaced_mid_copy_answers_superseded(
    async_copies: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    proxied = async_copies
    older = notification(exports.publish(b"%PDF older"))
    proxied.keep_copies_pending(delivery=hashlib.sha256(older["exportedFileUrl"].encode()).hexdigest())
    first = asyncio.ensure_future(webhook.post(older))
    for _ in range(200):  # wait until the older delivery polls its "pending" copy
        if any(method == "HEAD" for method, _ in proxied.seen):
            break
        await asyncio.sleep(0.05)
    newer = await webhook.post({**older, "exportedFileUrl": exports.publish(b"%PDF newer")})
    replaced = await first

    assert newer.status == 200 and newer.body["status"] == "stored"
    assert replaced.status == 200, replaced.body
    assert replaced.body["status"] == "superseded"
    assert replaced.verification is None
    name = blob_of(newer.body)
    assert destination.get_blob_client(name).download_blob().readall() == b"%PDF newer"


async def test_a_large_notification_still_fits_the_verification_queue(
    async_copies: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    # Azure Queue messages hold 64 KiB after the host's base64 encoding.
    proxied = async_copies
    proxied.keep_copies_pending()
    metadata = {f"field{i:02d}": "v" * 3900 for i in range(15)}
    response = await webhook.post(notification(exports.publish(), metadata=metadata, displayName="D" * 3000))
    assert response.status == 202 and response.verification
    assert len(base64.b64encode(response.verification.encode())) < 64 * 1024
    assert "manifest" not in json.loads(response.verification)  # too large to travel: the stored one is completed
    assert manifest_of(destination, blob_of(response.body))["metadata"]["field00"] == "v" * 3900


async def test_a_request_storage_refuses_is_reported_as_a_bug_not_an_outage(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    proxied.add(Rule(is_copy, times=10, status=400, code="InvalidMetadata"))
    response = await webhook.post(notification(exports.publish()))
    assert response.status == 500
    assert response.body["error"] == "internal-error"
    assert "InvalidMetadata" in response.body["message"]
    assert proxied.rules[0].fired == 1  # not retried: retrying cannot fix a refused request
    assert files(destination) == []
