"""The reconciliation (timer): nothing depends on one queue message surviving. It lists the task
records, and drives those with work through the same loop as the webhook: it adopts a copy that landed,
fails one whose link expired, retires listed names, and leaves a copy its queue message can still
finish `waiting`. Its clock is injected (``now``): nothing here sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import ContainerClient
from azure.storage.queue import QueueClient

from devtools.azurite import Azurite
from receiver.migration import OVERLAP
from receiver.models import State
from receiver.reconciliation import reconcile_run
from receiver.runtime import RUNTIME
from receiver.verification import POISON_QUEUE

from .conftest import (
    Exports,
    Webhook,
    assert_delivered,
    delivery_of,
    files,
    name_of,
    notification,
    record_of,
    run_timer,
)
from .faultproxy import FaultProxy, Rule, is_create_copy, is_delete, is_overwrite_copy

A, B = b"%PDF export A", b"%PDF export B"


@pytest.fixture
async def sweeping(proxied: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> FaultProxy:
    """Reconcile any copying delivery at once (RECONCILE_AFTER_MINUTES=0)."""
    monkeypatch.setenv("RECONCILE_AFTER_MINUTES", "0")
    monkeypatch.setenv("RECONCILE_SCHEDULE", "0 */10 * * * *")
    await RUNTIME.reset()
    return proxied


def state_of(destination: ContainerClient, payload: dict[str, Any]) -> State | None:
    record = record_of(destination, payload)
    entry = record.find(delivery_of(payload["exportedFileUrl"])) if record is not None else None
    return None if entry is None else entry.state


def errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


async def landed_unrecorded(proxy: FaultProxy, exports: Exports, webhook: Webhook) -> dict[str, Any]:
    """A re-export accepted (copying), whose copy landed while every answer and read was a 503: the record
    says copying, the file holds it. Its queue message is dropped."""
    first = notification(exports.publish(A))
    assert (await webhook.post(first)).status == 200
    payload = {**first, "exportedFileUrl": exports.publish(B)}
    copy = proxy.add(Rule(is_overwrite_copy, times=10, status=503, code="ServerBusy", after=True))
    proxy.add(Rule(lambda r: r.method == "HEAD" and copy.fired > 0, times=20, status=503, code="ServerBusy"))
    response = await webhook.post(payload)
    assert response.status == 503, response.body
    proxy.reset()
    return payload


async def never_copied(
    proxy: FaultProxy, exports: Exports, webhook: Webhook, link: timedelta = timedelta(hours=2), **fields: Any
) -> dict[str, Any]:
    """A first export whose every copy was refused 503: the record says copying, nothing is at its name."""
    payload = notification(exports.publish(A, expires_in=link), **fields)
    refuse = proxy.add(Rule(is_create_copy, times=100, status=503, code="ServerBusy"))
    response = await webhook.post(payload)
    assert response.status == 503, response.body
    proxy.rules.remove(refuse)
    return payload


async def test_a_copy_that_landed_without_its_message_is_adopted(
    sweeping: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    payload = await landed_unrecorded(sweeping, exports, webhook)
    assert state_of(destination, payload) is State.COPYING
    await run_timer()
    [name] = files(destination)
    manifest = assert_delivered(destination, payload, name, B)  # its manifest written from the record
    assert manifest["metadata"] == payload["metadata"]
    await run_timer()  # nothing left to do
    assert_delivered(destination, payload, name, B)


async def test_a_copy_whose_link_expired_is_failed_with_one_error(
    sweeping: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    expires = datetime.now(UTC) + timedelta(hours=1)
    payload = await never_copied(sweeping, exports, webhook, exportedFileExpiresOn=expires.isoformat())
    caplog.clear()
    later = expires + timedelta(minutes=1)
    report = await reconcile_run(runtime=RUNTIME, now=later)
    assert report.outcomes == {"expired": 1}, report
    assert state_of(destination, payload) is State.FAILED
    assert files(destination) == []
    report = await reconcile_run(runtime=RUNTIME, now=later)  # idempotent: nothing left to do
    assert report.found == 0, report
    [error] = [r for r in errors(caplog) if "poison" not in r.getMessage()]  # the alert, once
    assert error.__dict__.get("receiver.outcome") == "expired", error.getMessage()
    assert error.__dict__.get("receiver.taskId") == payload["taskId"], error.__dict__
    # It names the delivery it failed: the file's name and the link's hash, as the delivery's own records do.
    assert f"/{payload['taskId']}/" in error.__dict__.get("receiver.blob", ""), error.__dict__
    assert error.__dict__.get("receiver.delivery") == delivery_of(payload["exportedFileUrl"])[:12], error.__dict__
    assert "Export the document again" in error.getMessage(), error.getMessage()
    assert f"python -m ops find --task {payload['taskId']} --workspace" in error.getMessage(), error.getMessage()


async def test_a_copy_its_queue_message_can_still_finish_is_reported_waiting(
    sweeping: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    payload = await never_copied(sweeping, exports, webhook, link=timedelta(days=2))
    caplog.clear()
    report = await reconcile_run(runtime=RUNTIME, now=datetime.now(UTC))
    assert report.outcomes == {"waiting": 1} and report.lost == [], report
    assert state_of(destination, payload) is State.COPYING  # left to its queue message
    assert errors(caplog) == []
    # Long after every queue try, it is reported lost: an ERROR naming the command to run.
    report = await reconcile_run(runtime=RUNTIME, now=datetime.now(UTC) + timedelta(hours=2))
    assert report.lost == [payload["taskId"]], report
    [error] = errors(caplog)
    assert "python -m ops pending names each" in error.getMessage()
    assert f"python -m ops find --task {payload['taskId']}" in error.getMessage(), error.getMessage()


async def test_a_name_listed_to_retire_is_deleted_with_its_manifest(
    sweeping: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    first = notification(exports.publish(A), displayName="A")
    old_name = name_of((await webhook.post(first)).body)
    refuse = sweeping.add(Rule(is_delete, times=100, status=503, code="ServerBusy"))
    renamed = {**first, "exportedFileUrl": exports.publish(B), "displayName": "B"}
    moved = await webhook.post(renamed)
    assert moved.status == 200 and moved.body["status"] == "stored", moved.body
    assert old_name in files(destination)  # its delete failed: still listed to retire
    sweeping.rules.remove(refuse)

    report = await reconcile_run(runtime=RUNTIME, now=datetime.now(UTC))
    assert report.processed == 1, report
    assert files(destination) == [name_of(moved.body)]
    assert not destination.get_blob_client(f"{old_name}.json").exists()
    record = record_of(destination, first)
    assert record is not None and record.retire == []
    assert_delivered(destination, renamed, name_of(moved.body), B)


async def test_a_run_storage_refuses_is_one_error_naming_what_to_check_and_still_reports_poison(
    sweeping: FaultProxy,
    azurite: Azurite,
    exports: Exports,
    webhook: Webhook,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await never_copied(sweeping, exports, webhook)
    poison = QueueClient.from_connection_string(azurite.host_storage, POISON_QUEUE)
    with contextlib.suppress(ResourceExistsError):  # another test made it
        poison.create_queue()
    poison.clear_messages()
    poison.send_message("a poisoned message")
    sweeping.add(
        Rule(
            lambda r: r.method == "GET" and r.query.get("comp") == "list",
            times=100,
            status=403,
            code="AuthorizationPermissionMismatch",
            message="This request is not authorized to perform this operation using this permission.",
        )
    )
    caplog.clear()
    report = await reconcile_run(
        runtime=RUNTIME, now=datetime.now(UTC), environ={"AzureWebJobsStorage": azurite.host_storage}
    )
    poison.clear_messages()
    assert report.failed is not None and report.poison_depth == 1, report
    failed = [r for r in errors(caplog) if r.__dict__.get("receiver.outcome") == "failed"]
    assert len(failed) == 1, [r.getMessage() for r in errors(caplog)]
    text = failed[0].getMessage()
    assert "Storage Blob Data Owner" in text and "network rules" in text
    assert [r for r in errors(caplog) if r.__dict__.get("receiver.outcome") == "poison"]


async def test_two_reconciliations_at_once_do_the_work_once(
    sweeping: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    payloads = [await landed_unrecorded(sweeping, exports, webhook) for _ in range(3)]
    sweeping.reset()
    reports = await asyncio.gather(*(reconcile_run(runtime=RUNTIME, now=datetime.now(UTC)) for _ in range(2)))

    swaps = [s for m, path, s in sweeping.answered if m == "PUT" and "/.smartdocumentor/tasks/" in path and s < 300]
    manifests = [
        s
        for m, path, s in sweeping.answered
        if m == "PUT" and path.endswith(".json") and "/.smartdocumentor/" not in path and s < 300
    ]
    assert len(swaps) == 3, sweeping.answered  # each record adopted once; the other run lost or found it done
    assert len(manifests) <= 6
    for payload in payloads:
        [name] = [n for n in files(destination) if f"/{payload['taskId']}/" in n]
        assert_delivered(destination, payload, name, B)
    assert all(r.failed is None for r in reports), reports
    assert sum(r.outcomes.get("adopted", 0) for r in reports) == 3, reports


async def test_a_run_with_nothing_to_do_reads_only_the_listings_and_writes_its_summary(
    sweeping: FaultProxy, exports: Exports, webhook: Webhook
) -> None:
    assert (await webhook.post(notification(exports.publish()))).status == 200  # stored: no work
    # The first run after the upgrade waits for the release before; the next, past the wait, ends the migration.
    await reconcile_run(runtime=RUNTIME, now=datetime.now(UTC))
    await reconcile_run(runtime=RUNTIME, now=datetime.now(UTC) + OVERLAP + timedelta(minutes=1))
    sweeping.reset()
    # An hour on: the delivery is past the window in which its manifest is checked again.
    report = await reconcile_run(runtime=RUNTIME, now=datetime.now(UTC) + timedelta(hours=1))
    assert report.found == 0 and report.processed == 0 and report.failed is None, report
    # The migration marker (done: one read), one listing of the records (none read), one of the attention
    # blobs (receiver/attention.py), and the pending summary written.
    assert [m for m, _ in sweeping.seen] == ["GET", "GET", "GET", "PUT"]
    assert "/.smartdocumentor/attention/pending.json" in sweeping.seen[-1][1]


async def test_a_poison_depth_that_does_not_answer_in_time_is_not_known(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    from receiver import hostqueue, reconciliation

    async def never(queue: str, environ: object) -> int:
        await asyncio.Event().wait()
        return 0

    monkeypatch.setattr(hostqueue, "queue_depth", never)
    monkeypatch.setattr(reconciliation, "POISON_DEPTH_SECONDS", 0)
    assert await reconciliation._poison_depth({}) is None
