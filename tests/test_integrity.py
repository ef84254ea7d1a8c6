"""What a 2xx guarantees (docs/reference.md, "What a 2xx guarantees"), under the races and faults that used to break it.

Each test makes its interleaving happen on every run: the fault proxy holds a chosen request
until the competing delivery is done, or fails it, and the test then checks what is in storage.
The arrows of docs/state-machine.md name the tests that cover them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.functions.queue import QueueMessage
from azure.storage.blob import BlobSasPermissions, ContainerClient, generate_blob_sas

from devtools.azurite import EXPORTS_ACCOUNT, EXPORTS_KEY
from receiver import webhook as webhook_module
from receiver.runtime import RUNTIME

from .conftest import EXPORT_CONTAINER, FUNCTIONS, PDF_BYTES, PNG_BYTES, Exports, Webhook, notification
from .faultproxy import (
    FaultProxy,
    Rule,
    is_copy,
    is_header_write,
    is_manifest_write,
    is_properties,
    is_sync_copy,
)


def delivery_of(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


def name_of(response_body: dict[str, Any]) -> str:
    return str(response_body["blob"].split("/", 1)[1])


def files(destination: ContainerClient) -> list[str]:
    return sorted(b.name for b in destination.list_blobs())


def assert_stored(destination: ContainerClient, name: str, data: bytes, url: str) -> dict[str, Any]:
    """Invariant 1: the blob holds this export's bytes, names it in `delivery`, and so does its manifest."""
    blob = destination.get_blob_client(name)
    assert blob.download_blob().readall() == data
    props = blob.get_blob_properties()
    assert props.metadata["delivery"] == delivery_of(url)
    manifest: dict[str, Any] = json.loads(destination.get_blob_client(f"{name}.json").download_blob().readall())
    assert manifest["delivery"] == delivery_of(url), "the manifest describes another export"
    assert manifest["copyStatus"] == "success"
    if props.content_settings.content_md5:
        assert bytes(props.content_settings.content_md5) == hashlib.md5(data).digest()  # noqa: S324
    return manifest


async def run_verifier(message: str, *, dequeue_count: int = 1) -> None:
    function = FUNCTIONS["verify_pending_copy"].get_user_function()
    await function(QueueMessage(id="m", body=message.encode(), dequeue_count=dequeue_count))  # type: ignore[no-untyped-call]


async def reached(rule: Rule) -> None:
    await asyncio.wait_for(rule.reached.wait(), timeout=20)


@pytest.fixture
async def async_copies(proxied: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> FaultProxy:
    monkeypatch.setenv("SYNC_COPY_MAX_MIB", "0")
    monkeypatch.setenv("COPY_WAIT_SECONDS", "10")
    await RUNTIME.reset()
    return proxied


# --- a 2xx never points at a file that is gone ----------------------------------------------------


async def test_a_failing_older_export_never_deletes_the_newer_one(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """(a) Export A's manifest write fails through every retry while re-export B is stored."""
    release = asyncio.Event()
    held = proxied.add(Rule(is_manifest_write, times=1, hold=release, status=503, code="ServerBusy"))
    proxied.add(Rule(lambda r: is_manifest_write(r) and release.is_set(), times=3, status=503, code="ServerBusy"))
    older = notification(exports.publish(b"%PDF export A"))
    first = asyncio.ensure_future(webhook.post(older))
    await reached(held)

    newer = {**older, "exportedFileUrl": exports.publish(b"%PDF export B")}
    second = await webhook.post(newer)
    release.set()
    answer = await first

    assert second.status == 200 and second.body["status"] == "stored", second.body
    assert answer.status == 503 and answer.verification is not None, answer.body
    name = name_of(second.body)
    assert_stored(destination, name, b"%PDF export B", newer["exportedFileUrl"])
    await run_verifier(answer.verification)  # the older delivery's verification leaves the newer file alone
    assert_stored(destination, name, b"%PDF export B", newer["exportedFileUrl"])
    assert not [method for method, _ in proxied.seen if method == "DELETE"]


async def test_a_failing_first_delivery_never_deletes_what_its_twin_reported_stored(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """(b) The same delivery twice; the first one's manifest write fails after the twin answered 200."""
    release = asyncio.Event()
    held = proxied.add(Rule(is_manifest_write, times=1, hold=release, status=503, code="ServerBusy"))
    proxied.add(Rule(lambda r: is_manifest_write(r) and release.is_set(), times=3, status=503, code="ServerBusy"))
    payload = notification(exports.publish())
    first = asyncio.ensure_future(webhook.post(payload))
    await reached(held)

    twin = await webhook.post(payload)
    release.set()
    answer = await first

    assert twin.status == 200 and twin.body["status"] == "duplicate", twin.body
    assert answer.status == 503, answer.body
    assert_stored(destination, name_of(twin.body), PDF_BYTES, payload["exportedFileUrl"])


async def test_an_older_copy_aborted_by_a_newer_export_never_deletes_it(
    async_copies: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """(c) A's asynchronous copy is aborted by re-export B; A sees "aborted" before B's copy lands."""
    proxy = async_copies
    older = notification(exports.publish(b"%PDF export A"))
    newer = {**older, "exportedFileUrl": exports.publish(b"%PDF export B")}
    a = delivery_of(older["exportedFileUrl"])
    abort = proxy.add(Rule(lambda r: r.method == "PUT" and r.query.get("comp") == "copy", times=1))
    proxy.add(Rule(is_copy, times=1, copy_status="pending"))
    polling = proxy.add(Rule(is_properties, times=1))  # A's first poll (passes through to the rules below)
    proxy.add(
        Rule(lambda r: is_properties(r) and not abort.reached.is_set(), 10_000, copy_status="pending", of_delivery=a)
    )
    proxy.add(Rule(lambda r: is_properties(r) and abort.reached.is_set(), 10_000, copy_status="aborted", of_delivery=a))
    release_b = asyncio.Event()
    b_copy = proxy.add(Rule(lambda r: is_copy(r) and "If-Match" in r.headers, times=1, hold=release_b))

    first = asyncio.ensure_future(webhook.post(older))
    await reached(polling)  # A is polling its pending copy
    second = asyncio.ensure_future(webhook.post(newer))
    await reached(b_copy)
    answer = await first  # A has seen its copy aborted while B's copy is held
    release_b.set()
    stored = await second

    assert answer.status == 503 and answer.body["error"] == "storage-unavailable", answer.body
    assert stored.status == 200 and stored.body["status"] == "stored", stored.body
    name = name_of(stored.body)
    assert_stored(destination, name, b"%PDF export B", newer["exportedFileUrl"])
    assert answer.verification is not None
    await run_verifier(answer.verification)
    assert_stored(destination, name, b"%PDF export B", newer["exportedFileUrl"])


async def test_superseded_only_when_the_newer_copy_is_stored_or_running(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """A's copy landed, then B's copy replaced it and failed: A's file is gone, so A is no 2xx.

    Synchronous copies: B's copy answers only once committed, so the failed read is A's to see."""
    older = notification(exports.publish(b"%PDF export A"))
    newer = {**older, "exportedFileUrl": exports.publish(b"%PDF export B")}
    release_a = asyncio.Event()
    a_read = proxied.add(Rule(is_properties, times=1, hold=release_a))  # A's read after its copy
    proxied.add(
        Rule(
            is_properties,
            10_000,
            copy_status="failed",
            copy_description="500 x",
            of_delivery=delivery_of(newer["exportedFileUrl"]),
        )
    )

    first = asyncio.ensure_future(webhook.post(older))
    await reached(a_read)
    second = await webhook.post(newer)
    release_a.set()
    answer = await first

    assert second.status == 200, second.body  # B's own copy answered "committed"
    assert answer.status == 503, answer.body
    assert "failed" in answer.body["message"]


async def test_a_failed_asynchronous_re_export_puts_the_earlier_export_back(
    async_copies: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """Export 1 stored (200); export 2, copied asynchronously, empties the blob as it starts, then its
    source goes (404). The task must not be left without a file: export 1 is back, bytes and manifest."""
    first = notification(exports.publish(b"%PDF export 1"))
    stored = await webhook.post(first)
    assert stored.status == 200 and stored.body["status"] == "stored", stored.body
    name = name_of(stored.body)
    second = {**first, "exportedFileUrl": exports.publish(b"%PDF export 2, larger")}
    async_copies.source_gone(delivery_of(second["exportedFileUrl"]))

    failed = await webhook.post(second)

    assert failed.status == 502 and failed.body["error"] == "copy-failed", failed.body
    assert "stays" in failed.body["message"]
    manifest = assert_stored(destination, name, b"%PDF export 1", first["exportedFileUrl"])
    assert manifest["history"][-1]["outcome"] == "restored"
    assert manifest["history"][-1]["failedDelivery"] == delivery_of(second["exportedFileUrl"])
    snapshots = [b for b in destination.list_blobs(include=["snapshots"]) if b.snapshot]
    assert snapshots == [], "the snapshot that made the restore possible is gone once used"
    assert files(destination) == [name, f"{name}.json"]


# --- the manifest and headers describe the blob next to them ----------------------------------------


async def test_racing_exports_keep_headers_and_manifest_of_the_stored_one(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """A needs its Content-Type fixed; its header write and manifest write are held until B is stored."""
    older = notification(
        exports.publish(PNG_BYTES, content_type="application/octet-stream"), exportedFileContentType="image/png"
    )
    newer = {**older, "exportedFileUrl": exports.publish(PNG_BYTES + b"B", content_type="application/octet-stream")}
    release = asyncio.Event()
    held = proxied.add(Rule(is_header_write, times=1, hold=release))

    first = asyncio.ensure_future(webhook.post(older))
    await reached(held)
    second = await webhook.post(newer)
    release.set()
    answer = await first

    assert second.body["status"] == "stored", second.body
    assert answer.status == 200 and answer.body["status"] == "superseded", answer.body
    name = name_of(second.body)
    assert_stored(destination, name, PNG_BYTES + b"B", newer["exportedFileUrl"])
    props = destination.get_blob_client(name).get_blob_properties()
    assert props.content_settings.content_type == "image/png"


async def test_a_late_manifest_write_of_an_older_export_cannot_replace_the_newer_manifest(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    older = notification(exports.publish(b"%PDF export A"))
    newer = {**older, "exportedFileUrl": exports.publish(b"%PDF export B")}
    release = asyncio.Event()
    held = proxied.add(Rule(is_manifest_write, times=1, hold=release))  # A's manifest write, delayed

    first = asyncio.ensure_future(webhook.post(older))
    await reached(held)
    second = await webhook.post(newer)
    release.set()
    answer = await first

    assert second.body["status"] == "stored"
    assert answer.status == 200 and answer.body["status"] == "superseded", answer.body
    assert_stored(destination, name_of(second.body), b"%PDF export B", newer["exportedFileUrl"])


async def test_the_next_delivery_repairs_a_manifest_that_describes_another_export(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    payload = notification(exports.publish())
    first = await webhook.post(payload)
    name = name_of(first.body)
    stale = {"delivery": "0" * 64, "copyStatus": "success", "taskId": "someone else"}
    destination.get_blob_client(f"{name}.json").upload_blob(
        json.dumps(stale), overwrite=True, metadata={"receiverkind": "manifest", "copystatus": "success"}
    )

    again = await webhook.post(payload)

    assert again.body["status"] == "duplicate"
    manifest = assert_stored(destination, name, PDF_BYTES, payload["exportedFileUrl"])
    assert manifest["taskId"] == payload["taskId"]


async def test_content_type_is_right_when_the_sas_overrides_response_headers(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    # The source is stored as octet-stream; its SAS says rsct=application/pdf, so a HEAD through the link
    # shows application/pdf. The stored copy must be application/pdf, with its MD5 kept.
    name = "rsct/export.pdf"
    exports.publish(PDF_BYTES, name=name, content_type="application/octet-stream")
    sas = generate_blob_sas(
        EXPORTS_ACCOUNT,
        EXPORT_CONTAINER,
        name,
        account_key=EXPORTS_KEY,
        permission=BlobSasPermissions(read=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
        content_type="application/pdf",
        content_disposition="attachment",
    )
    url = f"{exports.client.get_blob_client(EXPORT_CONTAINER, name).url}?{sas}"
    exports.secrets.add_url(url)

    response = await webhook.post(notification(url))

    assert response.status == 200, response.body
    props = destination.get_blob_client(name_of(response.body)).get_blob_properties()
    assert props.content_settings.content_type == "application/pdf"
    assert_stored(destination, name_of(response.body), PDF_BYTES, url)


# --- names, inputs, settings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"taskId": "INV/2026/7"}, {"taskId": "INV_2026_7"}),
        ({"taskId": "task-17."}, {"taskId": "task-17"}),
        ({"workspaceId": "acme:legal"}, {"workspaceId": "acme_legal"}),
        ({"taskId": "x" * 299 + "1"}, {"taskId": "x" * 299 + "2"}),
    ],
)
async def test_tasks_that_look_alike_never_overwrite_each_other(
    configured: dict[str, str],
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    first: dict[str, str],
    second: dict[str, str],
) -> None:
    one = notification(exports.publish(b"%PDF one"), **first)
    two = notification(exports.publish(b"%PDF two"), **second)
    answers = [await webhook.post(one), await webhook.post(two)]
    assert [a.body["status"] for a in answers] == ["stored", "stored"], [a.body for a in answers]
    assert name_of(answers[0].body) != name_of(answers[1].body)
    assert_stored(destination, name_of(answers[0].body), b"%PDF one", one["exportedFileUrl"])
    assert_stored(destination, name_of(answers[1].body), b"%PDF two", two["exportedFileUrl"])


@pytest.mark.parametrize("value", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"])
async def test_extreme_dates_and_deep_nesting_get_a_json_4xx_and_leave_nothing(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient, value: str
) -> None:
    url = exports.publish()
    bodies: list[dict[str, Any] | bytes] = [
        notification(url, exportedFileExpiresOn=value),
        notification(url, lastCheckedOutUntil=value),
        notification(url.replace("se=", f"se={value.replace('+', '%2B')}&x=")),
        json.dumps(notification(url, extra="HOLE")).replace('"HOLE"', '{"a":[' * 256 + "1" + "]}" * 256).encode(),
    ]
    for payload in bodies:
        response = await webhook.post(payload)
        assert 400 <= response.status < 500, response.body
        assert response.body["status"] == "rejected"
    assert not destination.exists() or files(destination) == []


async def test_a_malformed_connection_string_is_misconfigured_and_health_answers(
    configured: dict[str, str], exports: Exports, webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DESTINATION_CONNECTION_STRING", "this is not a connection string")
    await RUNTIME.reset()
    response = await webhook.post(notification(exports.publish()))
    assert response.status == 500 and response.body["error"] == "misconfigured", response.body
    assert "DESTINATION_CONNECTION_STRING" in response.body["message"]
    health = await webhook.health()
    assert health.status == 503 and health.body["error"] == "misconfigured"
    assert "DESTINATION_CONNECTION_STRING" not in health.text  # general words only; the log names it ("Endpoints")


async def test_a_container_deleted_while_the_app_runs_is_created_again(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    assert (await webhook.post(notification(exports.publish()))).status == 200
    destination.delete_container()
    payload = notification(exports.publish(b"%PDF after"))
    for _ in range(50):  # Azurite removes a deleted container's name at once, Azure after a while
        response = await webhook.post(payload)
        if response.status == 200:
            break
        await asyncio.sleep(0.2)
    assert response.status == 200 and response.body["status"] == "stored", response.body
    assert_stored(destination, name_of(response.body), b"%PDF after", payload["exportedFileUrl"])
    destination.delete_container()
    for _ in range(50):
        health = await webhook.health()
        if health.status == 200:
            break
        await asyncio.sleep(0.2)
    assert health.status == 200 and destination.exists()


async def test_the_signature_never_leaves_the_link_whatever_field_repeats_it(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    url = exports.publish()
    signature = sorted(exports.secrets.signatures, key=len)[-1]
    payload = notification(
        url, displayName=url, taskId=f"T-{url}", metadata={"link": url, "sig": signature, url: "as a key"}
    )
    response = await webhook.post(payload)  # the response is scanned for signatures by the fixture
    assert response.status == 200, response.body
    name = name_of(response.body)
    blob = destination.get_blob_client(name)
    stored = json.dumps(
        [
            files(destination),
            blob.get_blob_properties().metadata,
            blob.get_blob_tags(),
            destination.get_blob_client(f"{name}.json").download_blob().readall().decode(),
        ]
    )
    assert not exports.secrets.leaks_in(stored), stored


# --- timeouts after the copy was accepted -------------------------------------------------------------


async def test_a_copy_answered_after_the_budget_is_tracked_and_finished(
    proxied: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(webhook_module, "STORAGE_BUDGET_SECONDS", 1.0)
    monkeypatch.setenv("COPY_WAIT_SECONDS", "0")
    await RUNTIME.reset()
    late = proxied.add(Rule(is_copy, times=1, delay_answer=3.0))  # Azurite copies; the answer comes too late
    payload = notification(exports.publish())

    response = await webhook.post(payload)

    assert response.status == 503 and response.body["error"] == "storage-unavailable", response.body
    assert late.fired == 1
    assert response.verification is not None  # the blob the copy made is tracked, not orphaned
    message = json.loads(response.verification)
    await asyncio.sleep(2.5)  # the late answer arrives at the proxy and is dropped
    monkeypatch.setattr(webhook_module, "STORAGE_BUDGET_SECONDS", 25.0)
    await run_verifier(response.verification)
    assert_stored(destination, message["blob"], PDF_BYTES, payload["exportedFileUrl"])


# --- synchronous and asynchronous copies ------------------------------------------------------------


async def test_a_file_too_large_for_a_synchronous_copy_is_copied_asynchronously(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    refused = proxied.refuse_sync_copies()
    asynchronous = proxied.add(Rule(lambda r: is_copy(r) and not is_sync_copy(r), times=10))  # counts, changes nothing
    payload = notification(exports.publish())
    response = await webhook.post(payload)
    assert response.status == 200 and response.body["status"] == "stored", response.body
    assert refused.fired == 1 and asynchronous.fired == 1
    assert_stored(destination, name_of(response.body), PDF_BYTES, payload["exportedFileUrl"])


@pytest.mark.parametrize(("size", "synchronous"), [(100 * 1024, True), (2 * 1024 * 1024 + 1, False)])
async def test_a_lower_sync_limit_asks_the_source_size_first(
    proxied: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    monkeypatch: pytest.MonkeyPatch,
    size: int,
    synchronous: bool,
) -> None:
    monkeypatch.setenv("SYNC_COPY_MAX_MIB", "2")
    await RUNTIME.reset()
    sync = proxied.add(Rule(is_sync_copy, times=10))
    data = b"%PDF" + b"x" * (size - 4)
    payload = notification(exports.publish(data))
    response = await webhook.post(payload)
    assert response.status == 200, response.body
    assert (sync.fired == 1) is synchronous
    assert_stored(destination, name_of(response.body), data, payload["exportedFileUrl"])


# --- the verifier's final failures --------------------------------------------------------------------


@pytest.mark.parametrize("revoked", ["copy-status", "restart"])
async def test_a_revoked_source_fails_for_good_at_once(
    async_copies: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    caplog: pytest.LogCaptureFixture,
    revoked: str,
) -> None:
    proxy = async_copies
    proxy.keep_copies_pending()
    payload = notification(exports.publish())
    response = await webhook.post(payload)
    assert response.status == 202 and response.verification
    name = name_of(response.body)
    proxy.reset()
    if revoked == "copy-status":  # the copy itself failed reading the source: 403
        proxy.add(Rule(is_properties, 10_000, copy_status="failed", copy_description="403 AuthenticationFailed"))
    else:  # a transient failure, then the restart is refused: the SAS was revoked
        proxy.add(Rule(is_properties, 10_000, copy_status="failed", copy_description="500 InternalError"))
        proxy.add(Rule(is_copy, times=10, status=403, code="CannotVerifyCopySource"))
    caplog.clear()

    await run_verifier(response.verification)  # returns: a final failure is not retried

    copies = [m for m, path in proxy.seen if m == "PUT" and ".json" not in path and "comp" not in path]
    assert len(copies) == (0 if revoked == "copy-status" else 1)
    assert not destination.get_blob_client(name).exists()
    manifest = json.loads(destination.get_blob_client(f"{name}.json").download_blob().readall())
    assert manifest["copyStatus"] == "failed"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("receiver")]
    assert len(errors) == 1
    text = errors[0].getMessage()
    assert payload["taskId"] in text and payload["workspaceId"] in text and name in text


async def test_an_unreadable_verification_message_is_dropped_with_an_error(
    configured: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    await run_verifier("not json")
    assert any(r.levelno >= logging.ERROR for r in caplog.records)
