"""Re-exports under another name (a change of BLOB_NAME_TEMPLATE, a renamed document), on Azurite through
the fault proxy (docs/reference.md, "Delivery semantics": a delivery current under an earlier template's
name is decided there; a moved delivery's earlier name is retired after the other listings of that name;
a name whose delete is refused stays listed to retire; a lease on a file is named in the answer)."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import pytest
from azure.storage.blob import BlobLeaseClient, ContainerClient

import receiver.webhook as webhook_module
from receiver.models import State
from receiver.runtime import RUNTIME

from .conftest import (
    Exports,
    Response,
    Webhook,
    delivery_of,
    every_blob,
    files,
    name_of,
    notification,
    reached,
    record_of,
    run_timer,
    run_verifier,
)
from .faultproxy import FaultProxy, Rule, is_delete, is_overwrite_copy

A, B = b"%PDF export A", b"%PDF export B"
EARLIER = "{workspaceId}/{taskId}/{fileName}"
TODAY = "archive/{workspaceId}/{taskId}/{fileName}"
BUDGET = webhook_module.STORAGE_BUDGET_SECONDS


async def use_template(monkeypatch: pytest.MonkeyPatch, template: str) -> None:
    monkeypatch.setenv("BLOB_NAME_TEMPLATE", template)
    await RUNTIME.reset()


def again(payload: dict[str, Any], exports: Exports, data: bytes) -> dict[str, Any]:
    """The same task, another export (same display name)."""
    return {**payload, "exportedFileUrl": exports.publish(data)}


def holdings(destination: ContainerClient) -> dict[str, bytes]:
    return {name: destination.get_blob_client(name).download_blob().readall() for name in files(destination)}


def assert_only_current(destination: ContainerClient, payload: dict[str, Any], data: bytes) -> None:
    """The record's current delivery is ``payload``'s, its file holds ``data``, and it is the task's only file."""
    record = record_of(destination, payload)
    assert record is not None and record.current == delivery_of(payload["exportedFileUrl"]), record
    assert record.current_delivery is not None and not record.retire, record
    assert holdings(destination) == {record.current_delivery.blob: data}, record


@dataclass
class HeldMove:
    """Export A stored (at ``earlier``); re-export B accepted at A's name, its copy over A held until the
    webhook gave up (503)."""

    older: dict[str, Any]
    earlier: str
    newer: dict[str, Any]
    stalled: Response
    copy: Rule
    release_copy: asyncio.Event


async def held_reexport(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> HeldMove:
    older = notification(exports.publish(A))
    earlier = name_of((await webhook.post(older)).body)
    release_copy = asyncio.Event()
    copy = proxied.add(Rule(is_overwrite_copy, times=1, hold=release_copy))
    monkeypatch.setattr(webhook_module, "STORAGE_BUDGET_SECONDS", 1.0)  # the held copy outlives the answer
    newer = again(older, exports, B)
    stalled = await webhook.post(newer)
    assert copy.fired == 1 and stalled.status == 503 and stalled.verification is not None, stalled.body
    monkeypatch.setattr(webhook_module, "STORAGE_BUDGET_SECONDS", BUDGET)
    return HeldMove(older, earlier, newer, stalled, copy, release_copy)


async def held_move(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> HeldMove:
    """A held re-export under EARLIER; the template then changed to TODAY."""
    await use_template(monkeypatch, EARLIER)
    move = await held_reexport(proxied, exports, webhook, monkeypatch)
    await use_template(monkeypatch, TODAY)
    return move


async def test_a_retry_under_a_new_template_is_answered_from_the_file_at_its_recorded_name(
    proxied: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A duplicate names the file that holds the delivery (its recorded name), and the copy the retry made
    under today's name is gone."""
    await use_template(monkeypatch, EARLIER)
    payload = notification(exports.publish(A))
    first = await webhook.post(payload)
    assert first.status == 200, first.body
    await use_template(monkeypatch, TODAY)
    retry = await webhook.post(payload)
    assert (retry.status, retry.body["status"]) == (200, "duplicate"), retry.body
    assert name_of(retry.body) == name_of(first.body)
    assert holdings(destination) == {name_of(first.body): A}


async def test_a_retry_under_a_new_template_puts_back_a_current_file_that_is_gone(
    proxied: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The current file was deleted by hand: the retry restores it at its recorded name (never a 2xx with
    the bytes nowhere)."""
    await use_template(monkeypatch, EARLIER)
    payload = notification(exports.publish(A))
    first = await webhook.post(payload)
    destination.get_blob_client(name_of(first.body)).delete_blob()
    await use_template(monkeypatch, TODAY)
    retry = await webhook.post(payload)
    assert (retry.status, retry.body["status"]) == (200, "stored"), retry.body
    assert name_of(retry.body) == name_of(first.body)
    assert_only_current(destination, payload, A)


async def test_a_retry_under_a_new_template_waits_while_a_newer_accepted_copy_holds_its_name(
    proxied: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Export B, accepted at A's name, landed over it but its answer and the look after it were lost (B
    `copying`). A's retry under today's template is not a duplicate (its bytes are gone): it waits, as it
    does under the same template, and B wins once its queue message runs."""
    await use_template(monkeypatch, EARLIER)
    older = notification(exports.publish(A))
    name = name_of((await webhook.post(older)).body)
    newer = again(older, exports, B)
    lost = proxied.add(Rule(is_overwrite_copy, times=10, status=503, code="ServerBusy", after=True))
    look = proxied.add(Rule(lambda r: r.method == "HEAD" and lost.fired > 0, times=20, status=503, code="ServerBusy"))
    stalled = await webhook.post(newer)
    assert stalled.status == 503 and stalled.verification is not None, stalled.body
    assert lost.fired >= 1 and look.fired >= 1 and holdings(destination) == {name: B}
    proxied.reset()
    record = record_of(destination, older)
    waiting = record.find(delivery_of(newer["exportedFileUrl"])) if record is not None else None
    assert waiting is not None and waiting.state is State.COPYING, record
    await use_template(monkeypatch, TODAY)
    retry = await webhook.post(older)
    assert (retry.status, retry.body["status"]) == (202, "copying"), retry.body
    await run_verifier(stalled.verification)
    assert_only_current(destination, newer, B)


async def test_a_moved_deliverys_late_copy_at_its_earlier_name_is_retired_after_the_file_it_replaced(
    proxied: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Re-export B is accepted at A's name and its copy over A is held until the webhook gives up (503).
    The template changes; B's retry is stored under today's name and lists the earlier name twice: A's
    file, and B's own late copy should it land. A's delete is held while B's copy lands; it then finds
    B there (412) and leaves it; B's listing comes after it, and removes it."""
    move = await held_move(proxied, exports, webhook, monkeypatch)
    release_delete = asyncio.Event()
    held_delete = proxied.add(
        Rule(lambda r: is_delete(r) and r.path.endswith("/" + move.earlier), times=1, hold=release_delete)
    )
    retry = asyncio.ensure_future(webhook.post(move.newer))
    await reached(held_delete)
    move.release_copy.set()
    await asyncio.wait_for(move.copy.done.wait(), timeout=20)
    assert holdings(destination)[move.earlier] == B  # B's late copy landed over A
    release_delete.set()
    answer = await retry
    assert (answer.status, answer.body["status"]) == (200, "stored"), answer.body
    assert name_of(answer.body) != move.earlier
    assert_only_current(destination, move.newer, B)
    assert move.stalled.verification is not None
    await run_verifier(move.stalled.verification)
    await run_timer()
    assert_only_current(destination, move.newer, B)


async def test_a_moved_deliverys_earlier_name_stays_listed_while_the_file_it_replaced_cannot_be_deleted(
    proxied: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As above, but A's delete answers 503 every time: both listings of the earlier name stay in the record.
    B's held copy then lands over A; the reconciliation finds B there after A's listing, and removes it."""
    move = await held_move(proxied, exports, webhook, monkeypatch)
    refuse = proxied.add(
        Rule(lambda r: is_delete(r) and r.path.endswith("/" + move.earlier), times=100, status=503, code="ServerBusy")
    )
    answer = await webhook.post(move.newer)
    assert (answer.status, answer.body["status"]) == (200, "stored"), answer.body
    record = record_of(destination, move.newer)
    assert record is not None and [item.blob for item in record.retire] == [move.earlier, move.earlier], record
    proxied.rules.remove(refuse)
    move.release_copy.set()
    await asyncio.wait_for(move.copy.done.wait(), timeout=20)
    assert holdings(destination)[move.earlier] == B
    await run_timer()
    assert move.stalled.verification is not None
    await run_verifier(move.stalled.verification)
    assert_only_current(destination, move.newer, B)


async def test_a_replaced_file_whose_delete_a_lease_refuses_stays_listed_until_the_lease_is_broken(
    proxied: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A customer's tool holds a lease on the older file: its delete is refused (412, the very version). It
    is not dropped as if another delivery had taken the name: it stays listed, and goes once the lease is
    broken (the reconciliation's next run)."""
    older = notification(exports.publish(A), displayName="A")
    earlier = name_of((await webhook.post(older)).body)
    lease = BlobLeaseClient(destination.get_blob_client(earlier))
    lease.acquire(lease_duration=-1)
    renamed = {**again(older, exports, B), "displayName": "B"}
    answer = await webhook.post(renamed)
    assert (answer.status, answer.body["status"]) == (200, "stored"), answer.body
    record = record_of(destination, renamed)
    assert record is not None and [item.blob for item in record.retire] == [earlier], record
    assert holdings(destination) == {earlier: A, name_of(answer.body): B}
    lease.break_lease(lease_break_period=0)
    await run_timer()
    assert_only_current(destination, renamed, B)


@pytest.mark.parametrize(
    ("status", "code"), [(403, "AuthorizationPermissionMismatch"), (409, "BlobImmutableDueToLegalHold")]
)
async def test_a_replaced_file_no_retry_can_delete_is_an_error_naming_it_and_goes_once_that_is_fixed(
    status: int,
    code: str,
    proxied: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The destination refuses deleting the older file for good (a SAS without delete permission, a legal hold
    on that file): the renamed export is stored (200: its file is current), and the older one, left listed,
    is an ERROR (the alert) naming it and the next step, not a WARNING nobody sees. It goes once that is
    fixed (the reconciliation's next run)."""
    older = notification(exports.publish(A), displayName="A")
    earlier = name_of((await webhook.post(older)).body)
    proxied.add(Rule(is_delete, times=10_000, status=status, code=code, message="refused"))
    renamed = {**again(older, exports, B), "displayName": "B"}
    answer = await webhook.post(renamed)
    assert (answer.status, answer.body["status"]) == (200, "stored"), answer.body
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and r.name.startswith("receiver")]
    named = f"python -m ops check --task {older['taskId']} --workspace {older['workspaceId']} --repair"
    assert any(f"could not retire {earlier}" in line and named in line for line in errors), errors
    [alert] = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "receiver.engine"]
    assert alert.__dict__.get("receiver.taskId") == older["taskId"], alert.__dict__  # the alert's taskId column
    record = record_of(destination, renamed)
    assert record is not None and [item.blob for item in record.retire] == [earlier], record
    assert holdings(destination) == {earlier: A, name_of(answer.body): B}
    proxied.reset()
    await run_timer()
    assert_only_current(destination, renamed, B)


async def test_a_re_export_over_a_leased_file_is_answered_at_once_naming_the_lease_and_stored_after_it(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """A customer's tool holds a lease on the current file: a re-export at its name cannot replace it (412
    LeaseIdMissing on the copy). It is answered at once, 503 naming the lease (not after many tries saying
    nothing of it), the earlier file kept, and not failed: its queue message stores it once the lease is gone."""
    older = notification(exports.publish(A))
    name = name_of((await webhook.post(older)).body)
    lease = BlobLeaseClient(destination.get_blob_client(name))
    lease.acquire(lease_duration=-1)
    newer = again(older, exports, B)
    before = len(proxied.seen)
    answer = await webhook.post(newer)
    assert (answer.status, answer.body["error"]) == (503, "storage-unavailable"), answer.body
    assert "leased by another client" in answer.body["message"] and answer.verification is not None
    assert len(proxied.seen) - before <= 6, proxied.seen[before:]  # at once, not a loop of conflicts
    assert holdings(destination) == {name: A}
    with pytest.raises(Exception, match="lease"):  # the queue function's try while it lasts: tried again
        await run_verifier(answer.verification)
    lease.break_lease(lease_break_period=0)
    await run_verifier(answer.verification)
    assert_only_current(destination, newer, B)


async def test_a_duplicate_that_must_fence_a_leased_file_waits_for_the_lease_instead_of_saying_not_stored(
    proxied: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Re-export B's copy over the current file A is held (B copying at that name), then a customer's tool
    leases the file. A's retry must fence the file before it answers (B's copy could replace it), and the
    lease refuses that: 503, not 409 "not stored" (A is stored), file and record unchanged. With the lease
    broken, A's retry is 200 duplicate; B's held copy then fails on the fence, and its queue message stores it."""
    held = await held_reexport(proxied, exports, webhook, monkeypatch)
    older, name, newer, stalled = held.older, held.earlier, held.newer, held.stalled
    lease = BlobLeaseClient(destination.get_blob_client(name))
    lease.acquire(lease_duration=-1)

    leased = await webhook.post(older)
    assert leased.status == 503 and leased.body["error"] == "storage-unavailable", leased.body
    assert holdings(destination) == {name: A}
    record = record_of(destination, older)
    assert record is not None and record.current == delivery_of(older["exportedFileUrl"]), record

    lease.break_lease(lease_break_period=0)
    retry = await webhook.post(older)
    assert (retry.status, retry.body["status"]) == (200, "duplicate"), retry.body
    held.release_copy.set()
    await asyncio.wait_for(held.copy.done.wait(), timeout=20)
    assert holdings(destination) == {name: A}  # the held copy failed on the fence
    assert stalled.verification is not None
    await run_verifier(stalled.verification)
    assert_only_current(destination, newer, B)


async def test_a_replaced_files_manifest_whose_delete_a_lease_refuses_stays_listed_until_the_lease_is_broken(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """A customer's tool leases the older file's manifest: the older file goes, its name stays listed while the
    manifest's delete is refused, and the manifest goes once the lease is broken (the reconciliation)."""
    older = notification(exports.publish(A), displayName="A")
    earlier = name_of((await webhook.post(older)).body)
    lease = BlobLeaseClient(destination.get_blob_client(f"{earlier}.json"))
    lease.acquire(lease_duration=-1)
    renamed = {**again(older, exports, B), "displayName": "B"}
    answer = await webhook.post(renamed)
    assert (answer.status, answer.body["status"]) == (200, "stored"), answer.body
    record = record_of(destination, renamed)
    assert record is not None and [item.blob for item in record.retire] == [earlier], record
    lease.break_lease(lease_break_period=0)
    await run_timer()
    assert_only_current(destination, renamed, B)
    assert f"{earlier}.json" not in every_blob(destination)


async def test_a_re_export_whose_manifest_a_lease_refuses_says_so_and_its_queue_message_writes_it(
    proxied: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The current file's manifest is leased: a re-export at that name is stored, but its manifest cannot be
    written: 503 saying a lease refused it; the queue message writes it once the lease is broken."""
    older = notification(exports.publish(A))
    name = name_of((await webhook.post(older)).body)
    lease = BlobLeaseClient(destination.get_blob_client(f"{name}.json"))
    lease.acquire(lease_duration=-1)
    newer = again(older, exports, B)
    answer = await webhook.post(newer)
    assert answer.status == 503 and answer.verification is not None, answer.body
    assert "manifest could not be written yet (a lease another client holds on it" in answer.body["message"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="receiver"), pytest.raises(Exception, match="not finished yet"):
        await run_verifier(answer.verification)  # while the lease lasts: tried again, saying what is missing
    [line] = [r.getMessage() for r in caplog.records if r.name == "receiver" and r.getMessage().startswith("verif")]
    missing = "the file is stored; its manifest could not be written yet (put blob: a lease another client holds on"
    assert f"{missing} {name}.json" in line, line
    lease.break_lease(lease_break_period=0)
    await run_verifier(answer.verification)
    assert_only_current(destination, newer, B)
    manifest = json.loads(destination.get_blob_client(f"{name}.json").download_blob().readall())
    assert manifest["delivery"] == delivery_of(newer["exportedFileUrl"]), manifest


async def test_a_retry_after_manifests_were_turned_on_names_the_file_its_record_holds(
    proxied: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 1024-character name given while WRITE_MANIFEST was off is longer than today's limit (1019, room for
    `.json`): the retry is decided at the recorded name all the same, and its answer names that file (which
    gets no manifest: its name would be over Azure's 1024 characters)."""
    monkeypatch.setenv("WRITE_MANIFEST", "false")
    await use_template(monkeypatch, "p" * 731 + "/{workspaceId}/{taskId}/{fileName}")
    payload = notification(exports.publish(A), taskId="t" * 128, workspaceId="w" * 128, displayName="A" * 250)
    first = await webhook.post(payload)
    assert first.status == 200 and len(name_of(first.body)) == 1024, first.body
    monkeypatch.setenv("WRITE_MANIFEST", "true")
    await RUNTIME.reset()
    retry = await webhook.post(payload)
    assert (retry.status, retry.body["status"]) == (200, "duplicate"), retry.body
    assert name_of(retry.body) == name_of(first.body) and files(destination) == [name_of(first.body)]
    assert all(len(blob.name) <= 1024 for blob in destination.list_blobs())  # no manifest Azure would refuse
