"""What a 2xx guarantees, under the races that could break it: the real function app on a real Azurite,
the fault proxy holding, delaying or failing the competing request so each interleaving happens on
every run.

1. A 2xx stored/duplicate/superseded: the task's file exists, holds one of the task's 2xx'd exports, its
   metadata `delivery` names it, its manifest describes it (:func:`assert_delivered`).
2. No request deletes or alters a file another request produced (every write If-Match / create-only; a
   compare-and-swap that loses observes again).
3. A copy answered 503 after the service acted ends tracked in the record, and the queue function
   finishes it.
4. A delivery is superseded only when a newer one is stored or copying.
5. The reconciliation and the queue function leave a file alone on a 412.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.storage.blob import BlobSasPermissions, ContainerClient, generate_blob_sas

from devtools.azurite import EXPORTS_ACCOUNT, EXPORTS_KEY
from receiver.models import State
from receiver.reconciliation import reconcile_run
from receiver.runtime import RUNTIME
from receiver.verification import CopyStillRunning

from .conftest import (
    EXPORT_CONTAINER,
    PDF_BYTES,
    Exports,
    Webhook,
    assert_delivered,
    delivery_of,
    every_blob,
    files,
    name_of,
    notification,
    reached,
    record_of,
    run_verifier,
)
from .faultproxy import (
    FaultProxy,
    Rule,
    is_create_copy,
    is_delete,
    is_header_write,
    is_manifest_write,
    is_overwrite_copy,
    is_record_read,
    is_record_write,
    on_path,
)

A, B, C = b"%PDF export A", b"%PDF export B", b"%PDF export C"


def again(payload: dict[str, Any], exports: Exports, data: bytes, **changes: Any) -> dict[str, Any]:
    """A re-export of ``payload``'s task: a new link (a new delivery), and ``changes``."""
    return {**payload, "exportedFileUrl": exports.publish(data), **changes}


def refused(proxy: FaultProxy, method: str, suffix: str) -> list[int]:
    """What Azurite answered the forwarded ``method`` requests on a path ending with ``suffix``."""
    return [status for m, path, status in proxy.answered if m == method and path.endswith(suffix)]


# --- 1. what a 2xx guarantees, beside a competing delivery -----------------------------------------------


async def test_an_older_export_whose_manifest_write_fails_never_touches_the_newer_file(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """A's manifest write is held, then refused (503 every retry) after re-export B was stored: A answers
    503 with a queue message; neither A's answer nor its queue function alters B's file or manifest."""
    release = asyncio.Event()
    held = proxied.add(Rule(is_manifest_write, times=1, hold=release, status=503, code="ServerBusy"))
    proxied.add(Rule(lambda r: is_manifest_write(r) and release.is_set(), times=5, status=503, code="ServerBusy"))
    older = notification(exports.publish(A))
    first = asyncio.ensure_future(webhook.post(older))
    await reached(held)
    newer = again(older, exports, B)
    second = await webhook.post(newer)
    release.set()
    answer = await first

    assert second.status == 200 and second.body["status"] == "stored", second.body
    assert answer.status == 503 and answer.verification is not None, answer.body
    name = name_of(second.body)
    assert_delivered(destination, newer, name, B)
    await run_verifier(answer.verification)  # the older delivery's queue message: superseded
    assert_delivered(destination, newer, name, B)
    assert not [method for method, _ in proxied.seen if method == "DELETE"]


async def test_a_twin_answered_duplicate_keeps_its_file_when_the_first_request_fails(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """The same delivery twice; the first request's manifest write fails after its twin answered 200."""
    release = asyncio.Event()
    held = proxied.add(Rule(is_manifest_write, times=1, hold=release, status=503, code="ServerBusy"))
    proxied.add(Rule(lambda r: is_manifest_write(r) and release.is_set(), times=5, status=503, code="ServerBusy"))
    payload = notification(exports.publish())
    first = asyncio.ensure_future(webhook.post(payload))
    await reached(held)
    twin = await webhook.post(payload)
    release.set()
    answer = await first

    assert twin.status == 200 and twin.body["status"] == "duplicate", twin.body
    assert answer.status == 503 and answer.verification is not None, answer.body
    name = name_of(twin.body)
    record = record_of(destination, payload)
    assert record is not None and record.current == delivery_of(payload["exportedFileUrl"])
    assert destination.get_blob_client(name).download_blob().readall() == PDF_BYTES
    # The manifest the first request could not write: its queue message writes it.
    await run_verifier(answer.verification)
    assert_delivered(destination, payload, name, PDF_BYTES)


async def test_a_duplicate_is_answered_only_once_its_manifest_exists(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    release = asyncio.Event()
    held = proxied.add(Rule(is_manifest_write, times=1, hold=release, status=503, code="ServerBusy"))
    payload = notification(exports.publish())
    first = asyncio.ensure_future(webhook.post(payload))
    await reached(held)
    try:
        twin = await webhook.post(payload)
        assert twin.status == 200 and twin.body["status"] == "duplicate", twin.body
        assert destination.get_blob_client(f"{name_of(twin.body)}.json").exists(), "200 duplicate without a manifest"
    finally:
        release.set()
        await first


async def test_a_request_whose_manifest_a_twin_created_first_answers_200_without_rewriting_it(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """The first request's manifest create is held while its twin writes the manifest; released, it is refused
    (the twin's is there). Any rewrite of it would be refused too (as by further twins rewriting it meanwhile):
    the first request still answers 200, as the manifest there describes its delivery."""
    release = asyncio.Event()
    held = proxied.add(Rule(is_manifest_write, times=1, hold=release))
    rewrites = proxied.add(
        Rule(lambda r: is_manifest_write(r) and held.done.is_set(), times=5, status=412, code="ConditionNotMet")
    )
    payload = notification(exports.publish())
    first = asyncio.ensure_future(webhook.post(payload))
    await reached(held)
    twin = await webhook.post(payload)
    release.set()
    answer = await first

    assert twin.status == 200 and twin.body["status"] == "duplicate", twin.body
    assert answer.status == 200 and answer.body["status"] == "stored", answer.body
    assert rewrites.fired == 0
    assert_delivered(destination, payload, name_of(answer.body), PDF_BYTES)


async def test_the_queue_function_of_an_older_export_never_writes_its_manifest_beside_the_newer_file(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """A's manifest write failed (503 + message). A's queue function is held at its record read while
    re-export B is stored; released, it finds B current and writes nothing of A's."""
    proxied.add(Rule(is_manifest_write, times=10, status=503, code="ServerBusy"))
    older = notification(exports.publish(A))
    first = await webhook.post(older)
    assert first.status == 503 and first.verification is not None, first.body
    proxied.reset()

    release = asyncio.Event()
    held = proxied.add(Rule(is_record_read, times=1, hold=release))
    verifier = asyncio.ensure_future(run_verifier(first.verification))
    await reached(held)
    newer = again(older, exports, B)
    second = await webhook.post(newer)
    assert second.status == 200 and second.body["status"] == "stored", second.body
    release.set()
    await verifier
    assert_delivered(destination, newer, name_of(second.body), B)


@pytest.mark.parametrize(
    ("step", "code", "status"),
    [("header write", "InvalidHeaderValue", 400), ("manifest write", "AuthorizationPermissionMismatch", 403)],
)
async def test_a_step_refused_after_the_copy_leaves_the_file_tracked(
    proxied: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    step: str,
    code: str,
    status: int,
) -> None:
    """The copy landed; the Content-Type fix or the manifest write is refused with a 4xx. The file is
    kept, and the record lists it (stored, or copying for the queue function): nothing is untracked."""
    match = is_header_write if step == "header write" else is_manifest_write
    proxied.add(Rule(match, times=100, status=status, code=code))
    payload = notification(exports.publish(content_type="application/octet-stream"))  # its header needs fixing
    response = await webhook.post(payload)
    assert response.status >= 500, response.body
    record = record_of(destination, payload)
    for name in files(destination):
        holder = destination.get_blob_client(name).get_blob_properties().metadata["delivery"]
        assert record is not None and record.find(holder) is not None, f"{name} is untracked: {response.body}"


# --- 2. no request deletes or alters a file another request produced -------------------------------------


async def test_a_held_retirement_never_deletes_a_newer_export_back_at_the_old_name(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """A at A.pdf; renamed re-export B retires A.pdf, and its delete is held while C (back to the name
    A.pdf) is stored there. B's delete goes out If-Match A's version: C's file stays."""
    first = notification(exports.publish(A), displayName="A")
    assert (await webhook.post(first)).status == 200
    old_name = name_of((await webhook.post(first)).body)
    release = asyncio.Event()
    held = proxied.add(Rule(lambda r: is_delete(r) and r.path.endswith("/A.pdf"), times=1, hold=release))
    renamed = again(first, exports, B, displayName="B")
    second = asyncio.ensure_future(webhook.post(renamed))
    await reached(held)
    back = again(first, exports, C, displayName="A")
    third = await webhook.post(back)
    release.set()
    moved = await second

    assert moved.status == 200 and moved.body["status"] == "stored", moved.body
    assert third.status == 200 and third.body["status"] == "stored", third.body
    assert name_of(third.body) == old_name
    assert_delivered(destination, back, old_name, C)
    assert files(destination) == [old_name]  # B's name is retired in turn
    assert refused(proxied, "DELETE", "/A.pdf")[-1] in (404, 412)  # B's held delete, refused


async def test_a_retrys_copy_landing_at_a_name_retired_meanwhile_is_superseded_and_removed(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """A stored at A.pdf. SmartDocumentor's retry of A reads the record (A current) while its create-only copy is held
    in the network; renamed B is stored and retires A.pdf. The held copy then lands at the free name A.pdf, its
    answer lost (the SDK's retry gets 409). The retry must not answer `duplicate` from its old view of the record
    (another copy than the one recorded is there): it reads the record again, answers `superseded` and removes its
    copy, so only B's file is left."""
    first = notification(exports.publish(A), displayName="A")
    assert (await webhook.post(first)).status == 200
    release = asyncio.Event()
    copy = proxied.add(Rule(is_create_copy, times=1, hold=release, status=503, code="ServerBusy", after=True))
    read = proxied.add(Rule(is_record_read, times=1))  # passed through: ``done`` once storage answered it
    retry = asyncio.ensure_future(webhook.post(first))
    await reached(copy)
    await asyncio.wait_for(read.done.wait(), timeout=20)
    renamed = again(first, exports, B, displayName="B")
    stored = await webhook.post(renamed)
    assert stored.status == 200 and stored.body["status"] == "stored", stored.body
    release.set()
    late = await retry

    assert late.status == 200 and late.body["status"] == "superseded", late.body
    assert_delivered(destination, renamed, name_of(stored.body), B)
    assert files(destination) == [name_of(stored.body)], files(destination)
    record = record_of(destination, first)
    assert record is not None and [d.state for d in record.deliveries] == [State.SUPERSEDED, State.STORED]


async def test_a_current_file_deleted_and_copied_again_with_its_answer_lost_is_recorded_and_retired_later(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """X stored; its file deleted (by hand, a lifecycle rule). SmartDocumentor sends X again: the create-only copy
    lands, answered 503 (the SDK's retry gets 409): the record, read once more, takes that copy as X's file, so a
    later renamed re-export Y retires it and Y's file is the task's only one."""
    first = notification(exports.publish(A), displayName="X")
    stored = await webhook.post(first)
    assert stored.status == 200, stored.body
    name = name_of(stored.body)
    destination.get_blob_client(name).delete_blob()
    proxied.add(Rule(is_create_copy, times=1, status=503, code="ServerBusy", after=True))
    retry = await webhook.post(first)
    assert retry.status == 200 and retry.body["status"] == "stored", retry.body
    again = await webhook.post(first)
    assert again.status == 200 and again.body["status"] == "duplicate", again.body
    assert_delivered(destination, first, name, A)
    renamed = again_export = {**first, "exportedFileUrl": exports.publish(B), "displayName": "Y"}
    other = await webhook.post(again_export)
    assert other.status == 200 and other.body["status"] == "stored", other.body
    assert files(destination) == [name_of(other.body)], files(destination)
    assert_delivered(destination, renamed, name_of(other.body), B)


async def test_a_record_swap_that_loses_observes_again(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """Export 1 stored. Export 2's compare-and-swap accepting it is held while export 3 is accepted and
    stored; released, 2's swap gets 412 and 2 decides again from the record as 3 left it."""
    first = notification(exports.publish(A))
    assert (await webhook.post(first)).status == 200
    release = asyncio.Event()
    held = proxied.add(Rule(is_record_write, times=1, hold=release))
    second_payload = again(first, exports, B)
    second = asyncio.ensure_future(webhook.post(second_payload))
    await reached(held)
    third_payload = again(first, exports, C)
    third = await webhook.post(third_payload)
    release.set()
    late = await second

    assert 412 in refused(proxied, "PUT", ".json"), proxied.answered  # the held swap lost
    assert third.status == 200 and third.body["status"] == "stored", third.body
    assert late.status == 200, late.body
    record = record_of(destination, first)
    assert record is not None
    winner = second_payload if record.current == delivery_of(second_payload["exportedFileUrl"]) else third_payload
    assert_delivered(destination, winner, name_of(third.body), B if winner is second_payload else C)
    assert {item.delivery for item in record.deliveries} == {
        delivery_of(p["exportedFileUrl"]) for p in (first, second_payload, third_payload)
    }


async def test_a_held_same_name_copy_never_replaces_a_newer_accepted_export(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """Export 1 stored. Export 2 is accepted and its copy over the file is held; export 3 is accepted and
    stored meanwhile. 2's copy then goes out If-Match the version 2 read: 412, the newer file stays; 2
    answers 202 (its record was read before 3's) and its queue function ends it superseded."""
    first = notification(exports.publish(A))
    assert (await webhook.post(first)).status == 200
    release = asyncio.Event()
    held = proxied.add(Rule(is_overwrite_copy, times=1, hold=release))
    second_payload = again(first, exports, B)
    second = asyncio.ensure_future(webhook.post(second_payload))
    await reached(held)
    third_payload = again(first, exports, C)
    third = await webhook.post(third_payload)
    release.set()
    late = await second

    assert third.status == 200 and third.body["status"] == "stored", third.body
    name = name_of(third.body)
    assert_delivered(destination, third_payload, name, C)
    copies = [status for method, path, status in proxied.answered if method == "PUT" and path.endswith(".pdf")]
    assert copies[-1] == 412, proxied.answered  # 2's held copy, refused
    assert late.status in (200, 202), late.body
    if late.status == 202:
        assert late.verification is not None
        await run_verifier(late.verification)
    else:
        assert late.body["status"] == "superseded", late.body
    assert_delivered(destination, third_payload, name, C)
    record = record_of(destination, first)
    assert record is not None
    entry = record.find(delivery_of(second_payload["exportedFileUrl"]))
    assert entry is not None and entry.state is State.SUPERSEDED


# --- 3. a copy answered 503 after the service acted ----------------------------------------------------


@pytest.mark.parametrize("over", [pytest.param(False, id="first-export"), pytest.param(True, id="re-export")])
async def test_a_copy_answered_503_after_it_landed_ends_tracked_and_finished(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient, over: bool
) -> None:
    """Every try of the copy reaches Azurite, and every answer is a 503; the read after it fails too, so
    the request cannot tell. The answer is 503 with a queue message, the record lists the delivery (a
    re-export: accepted before its copy), and the real queue function records it stored."""
    first = notification(exports.publish(A))
    if over:
        assert (await webhook.post(first)).status == 200
    payload = again(first, exports, B) if over else first
    copy = proxied.add(
        Rule(is_overwrite_copy if over else is_create_copy, times=10, status=503, code="ServerBusy", after=True)
    )
    proxied.add(Rule(lambda r: r.method == "HEAD" and copy.fired > 0, times=20, status=503, code="ServerBusy"))
    response = await webhook.post(payload)
    assert response.status == 503 and response.verification is not None, response.body
    [name] = files(destination)
    assert destination.get_blob_client(name).get_blob_properties().metadata["delivery"] == delivery_of(
        payload["exportedFileUrl"]
    )  # the service did copy it
    record = record_of(destination, payload)
    entry = record.find(delivery_of(payload["exportedFileUrl"])) if record is not None else None
    proxied.reset()
    await run_verifier(response.verification)
    assert_delivered(destination, payload, name, B if over else A)
    assert entry is not None and entry.state is State.COPYING, record


async def test_a_first_export_whose_copy_and_read_are_answered_503_is_finished_by_the_queue(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """The create-only copy lands but is answered 503 every try, and the read after it too: 503 with a
    queue message, and the real queue function records the file stored."""
    payload = notification(exports.publish(A))
    copy = proxied.add(Rule(is_create_copy, times=10, status=503, code="ServerBusy", after=True))
    proxied.add(Rule(lambda r: r.method == "HEAD" and copy.fired > 0, times=20, status=503, code="ServerBusy"))
    response = await webhook.post(payload)
    assert response.status == 503 and response.verification is not None, response.body
    [name] = files(destination)
    proxied.reset()
    await run_verifier(response.verification)
    assert_delivered(destination, payload, name, A)


@pytest.mark.parametrize("over", [False, True], ids=["first-export", "re-export"])
async def test_a_copy_answered_503_after_it_landed_is_recorded_in_the_same_request(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient, over: bool
) -> None:
    """Every try of the copy reaches Azurite and is answered 503, but the read after it works: the request
    finds its own bytes at the name and records them (adopted), 200 stored."""
    first = notification(exports.publish(A))
    if over:
        assert (await webhook.post(first)).status == 200
    payload = again(first, exports, B) if over else first
    copy = proxied.add(
        Rule(is_overwrite_copy if over else is_create_copy, times=10, status=503, code="ServerBusy", after=True)
    )
    response = await webhook.post(payload)
    assert copy.fired >= 1
    assert response.status == 200 and response.body["status"] == "stored", response.body
    assert_delivered(destination, payload, name_of(response.body), B if over else A)


async def test_a_resend_whose_failing_record_swap_is_answered_503_after_it_landed_raises_the_one_error(
    proxied: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A re-export tracked `copying` by an earlier request (503, its queue message sent); its source is then gone.
    SmartDocumentor sends it again: that request's swap failing it reaches Azurite and is answered 503, so the SDK
    sends it again, If-Match on the version it replaced, and Azurite answers 412. The request reads the record back,
    finds its own step, and raises the one ERROR (docs/reference.md, "The reconciliation", step 3); the message's
    try after it adds none."""
    older, message_text = await tracked_copy(proxied, exports, webhook)
    exports.client.get_blob_client(
        EXPORT_CONTAINER, older["exportedFileUrl"].split(f"/{EXPORT_CONTAINER}/")[1].split("?")[0]
    ).delete_blob()
    lost = proxied.add(Rule(is_record_write, times=1, status=503, code="ServerBusy", after=True))
    caplog.set_level(logging.INFO, logger="receiver")
    caplog.clear()
    response = await webhook.post(older)
    assert lost.fired == 1 and response.status >= 400, response.body
    record = record_of(destination, older)
    delivery = delivery_of(older["exportedFileUrl"])
    item = record.find(delivery) if record is not None else None
    assert item is not None and item.state is State.FAILED, record
    alerts = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(alerts) == 1 and delivery[:12] in alerts[0] and "failed for good" in alerts[0], alerts
    caplog.clear()
    await run_verifier(message_text)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


# --- 4. superseded only when a newer export is stored or copying ----------------------------------------


async def tracked_copy(proxy: FaultProxy, exports: Exports, webhook: Webhook) -> tuple[dict[str, Any], str]:
    """Export 1 stored; re-export A accepted, and its copy refused 503 every try before Azurite saw it:
    A is `copying` in the record, and its queue message is returned."""
    first = notification(exports.publish(PDF_BYTES))
    assert (await webhook.post(first)).status == 200
    older = again(first, exports, A)
    refuse = proxy.add(Rule(is_overwrite_copy, times=10, status=503, code="ServerBusy"))
    response = await webhook.post(older)
    assert response.status == 503 and response.verification is not None, response.body
    proxy.rules.remove(refuse)
    return older, response.verification


@pytest.mark.parametrize("newer_ends", ["stored", "failed"])
async def test_a_tracked_copy_is_superseded_only_by_a_newer_export_that_is_stored(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient, newer_ends: str
) -> None:
    older, message = await tracked_copy(proxied, exports, webhook)
    newer = again(older, exports, B)
    if newer_ends == "failed":
        source = newer["exportedFileUrl"].split("?", 1)[0].rsplit("/anonymized-exports/", 1)[1]
        exports.client.get_blob_client("anonymized-exports", source).delete_blob()
    answer = await webhook.post(newer)
    [name] = files(destination)
    if newer_ends == "stored":
        assert answer.status == 200 and answer.body["status"] == "stored", answer.body
        await run_verifier(message)  # the older delivery: superseded, nothing copied
        assert_delivered(destination, newer, name, B)
    else:
        assert answer.status == 502, answer.body
        await run_verifier(message)  # the newer one failed: the older one is not superseded, it is stored
        assert_delivered(destination, older, name, A)


async def test_a_tracked_copy_waits_while_a_newer_export_is_copying(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """A is copying (tracked); newer B's copy is held. A's queue function runs meanwhile: it neither copies
    nor answers superseded, it waits (the host retries it). B stored, A's next try is superseded."""
    older, message = await tracked_copy(proxied, exports, webhook)
    release = asyncio.Event()
    held = proxied.add(Rule(is_overwrite_copy, times=1, hold=release))
    newer = again(older, exports, B)
    pending = asyncio.ensure_future(webhook.post(newer))
    await reached(held)
    with pytest.raises(CopyStillRunning):
        await run_verifier(message)
    release.set()
    answer = await pending
    assert answer.status == 200 and answer.body["status"] == "stored", answer.body
    await run_verifier(message)
    assert_delivered(destination, newer, name_of(answer.body), B)
    record = record_of(destination, older)
    entry = record.find(delivery_of(older["exportedFileUrl"])) if record is not None else None
    assert entry is not None and entry.state is State.SUPERSEDED


# --- 5. the queue function and the reconciliation leave a file alone on a 412 ---------------------------


async def test_the_queue_function_leaves_a_newer_file_alone_when_its_copy_gets_412(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """A is copying (tracked); its queue function's copy over the file is held while B is stored. The held
    copy goes out If-Match the version A read: 412, and B's file stays."""
    older, message = await tracked_copy(proxied, exports, webhook)
    release = asyncio.Event()
    held = proxied.add(Rule(is_overwrite_copy, times=1, hold=release))
    verifier = asyncio.ensure_future(run_verifier(message))
    await reached(held)
    newer = again(older, exports, B)
    answer = await webhook.post(newer)
    assert answer.status == 200 and answer.body["status"] == "stored", answer.body
    release.set()
    try:
        await verifier
    except CopyStillRunning:  # its record was read before B's: the next try finds it superseded
        await run_verifier(message)
    copies = [status for method, path, status in proxied.answered if method == "PUT" and path.endswith(".pdf")]
    assert 412 in copies, proxied.answered
    assert_delivered(destination, newer, name_of(answer.body), B)


async def test_the_reconciliation_leaves_a_newer_file_alone_when_its_retirement_gets_412(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """A at A.pdf; renamed B could not delete A.pdf (503 every try), so A.pdf stays listed to retire. The
    reconciliation's delete of it is held while C comes back to A.pdf: it goes out If-Match A's version,
    and C's file stays."""
    first = notification(exports.publish(A), displayName="A")
    old_name = name_of((await webhook.post(first)).body)
    refuse = proxied.add(Rule(is_delete, times=100, status=503, code="ServerBusy"))
    renamed = again(first, exports, B, displayName="B")
    moved = await webhook.post(renamed)
    assert moved.status == 200 and moved.body["status"] == "stored", moved.body
    record = record_of(destination, first)
    assert record is not None and [item.blob for item in record.retire] == [old_name]
    proxied.rules.remove(refuse)

    release = asyncio.Event()
    held = proxied.add(Rule(lambda r: is_delete(r) and on_path("/A.pdf")(r), times=1, hold=release))
    sweep = asyncio.ensure_future(reconcile_run(runtime=RUNTIME, now=datetime.now(UTC)))
    await reached(held)
    back = again(first, exports, C, displayName="A")
    third = await webhook.post(back)
    assert third.status == 200 and third.body["status"] == "stored", third.body
    release.set()
    report = await sweep
    assert report.failed is None, report
    assert refused(proxied, "DELETE", "/A.pdf")[-1] in (404, 412)
    assert_delivered(destination, back, old_name, C)
    assert [name for name in files(destination) if name.endswith("B.pdf")] == []  # C's answer retired B


# --- what else a 2xx keeps (from the earlier suites, on the task record) --------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"taskId": "INV/2026/7"}, {"taskId": "INV_2026_7"}),
        ({"taskId": "task-17."}, {"taskId": "task-17"}),
        ({"workspaceId": "acme:legal"}, {"workspaceId": "acme_legal"}),
        ({"taskId": "x" * 299 + "1"}, {"taskId": "x" * 299 + "2"}),
    ],
)
async def test_tasks_that_look_alike_never_share_a_file_or_a_record(
    configured: dict[str, str],
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    first: dict[str, str],
    second: dict[str, str],
) -> None:
    one = notification(exports.publish(A), **first)
    two = notification(exports.publish(B), **second)
    answers = await asyncio.gather(webhook.post(one), webhook.post(two))
    assert [a.body["status"] for a in answers] == ["stored", "stored"], [a.body for a in answers]
    assert name_of(answers[0].body) != name_of(answers[1].body)
    assert_delivered(destination, one, name_of(answers[0].body), A)
    assert_delivered(destination, two, name_of(answers[1].body), B)


async def test_the_content_type_is_right_when_the_sas_overrides_response_headers(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """The source is stored as octet-stream; its SAS says rsct=application/pdf. The stored file is a PDF."""
    name = f"rsct-{uuid.uuid4().hex[:8]}/export.pdf"
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
    payload = notification(url)
    response = await webhook.post(payload)
    assert response.status == 200, response.body
    stored = name_of(response.body)
    assert destination.get_blob_client(stored).get_blob_properties().content_settings.content_type == "application/pdf"
    assert_delivered(destination, payload, stored, PDF_BYTES)


async def test_the_signature_never_reaches_storage_whatever_field_repeats_it(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """The file, its metadata and tags, its manifest and the task record: no SAS signature in any."""
    url = exports.publish()
    signature = sorted(exports.secrets.signatures, key=len)[-1]
    payload = notification(
        url, displayName=url, taskId=f"T-{url}", metadata={"link": url, "sig": signature, url: "as a key"}
    )
    response = await webhook.post(payload)  # the fixture scans the answer and every log line
    assert response.status == 200, response.body
    stored: list[Any] = [every_blob(destination)]
    for name in every_blob(destination):
        blob = destination.get_blob_client(name)
        stored += [blob.get_blob_properties().metadata, blob.get_blob_tags(), blob.download_blob().readall().decode()]
    text = json.dumps(stored)
    assert not exports.secrets.leaks_in(text), text[:400]


async def test_a_container_deleted_while_the_app_runs_is_created_again(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    assert (await webhook.post(notification(exports.publish()))).status == 200
    destination.delete_container()  # Azurite frees the name at once (Azure after a while)
    payload = notification(exports.publish(B))
    response = await webhook.post(payload)
    assert response.status == 200 and response.body["status"] == "stored", response.body
    assert_delivered(destination, payload, name_of(response.body), B)


async def test_an_unreadable_queue_message_is_dropped_with_an_error(
    configured: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    await run_verifier("not json")  # returns: retrying cannot make it readable
    assert any(r.levelno >= logging.ERROR and r.name.startswith("receiver") for r in caplog.records)
