"""Attacks on the task record's core (receiver/machine.py, receiver/engine.py and its four drivers).

Each test is a confirmed problem: it drives the real function app against Azurite through the fault
proxy (hold, delay or fail the chosen request, so the interleaving happens on every run) and judges
what storage ends with by docs/reference.md ("What is stored", "Delivery semantics"). Each one failed
on the code it was written against.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import unquote

import pytest
from azure.storage.blob import ContainerClient

from receiver import webhook as webhook_module
from receiver.runtime import RUNTIME
from receiver.store import StorageUnavailable

from .conftest import Exports, Webhook, notification
from .faultproxy import FaultProxy, Rule, copies_from, is_properties
from .test_integrity import assert_stored, delivery_of, files, name_of, reached, run_verifier
from .test_integrity import async_copies as async_copies  # a fixture
from .test_ops import ops as ops  # a fixture
from .test_ops import queues as queues  # a fixture
from .test_safety_nets import manifest_of, run_timer

DATED = "{yyyy}/{workspaceId}/{taskId}/{fileName}"


def is_task_listing(request: Any) -> bool:
    """List Blobs under a task's prefix (the task look-up of the default template), not a snapshot listing."""
    return bool(
        request.method == "GET"
        and request.query.get("comp") == "list"
        and "prefix" in request.query
        and "snapshots" not in request.query.get("include", "")
    )


def is_tag_lookup(request: Any) -> bool:
    """Find Blobs by Tags at container level (the task look-up of a template without a task prefix)."""
    return bool(request.method == "GET" and request.query.get("comp") == "blobs")


def deletes_file(name: str) -> Any:
    """Delete Blob of this exact blob (not a snapshot of it)."""
    return lambda request: (
        request.method == "DELETE" and unquote(request.path).endswith("/" + name) and "snapshot" not in request.query
    )


def is_snapshot_delete(request: Any) -> bool:
    return bool(request.method == "DELETE" and "snapshot" in request.query)


def snapshots(destination: ContainerClient) -> list[tuple[str, str]]:
    return [(blob.name, str(blob.snapshot)) for blob in destination.list_blobs(include=["snapshots"]) if blob.snapshot]


def busy(match: Any, times: int = 4) -> Rule:
    """503 ServerBusy through every SDK retry (retry_total 3: four tries)."""
    return Rule(match, times=times, status=503, code="ServerBusy")


# --- one current file per task: a retirement that failed once is never tried again --------------


async def test_default_template_a_failed_task_listing_leaves_two_current_files_for_good(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """Default template ({workspaceId}/{taskId}/{fileName}). A renamed re-export is stored while the
    listing of the task's prefix fails (503 through every retry). The look-up is "best effort: the
    reconciliation will", but the reconciliation's sweep runs only for templates WITHOUT a task prefix:
    nothing ever retires the older file, not the timer, not a retry of the same delivery."""
    first = notification(exports.publish(b"%PDF first"), displayName="ContratoA")
    renamed = {**first, "exportedFileUrl": exports.publish(b"%PDF renamed"), "displayName": "ContratoB"}
    old_name = name_of((await webhook.post(first)).body)
    listing = proxied.add(busy(is_task_listing))

    answer = await webhook.post(renamed)

    # Stored, but whether a newer export replaced it is unknown: 503, and the receiver checks again.
    assert answer.status == 503 and answer.verification, answer.body
    assert listing.fired == 4
    new_name = json.loads(answer.verification)["blob"]
    proxied.reset()
    await run_timer()  # the safety net the docstring promises
    again = await webhook.post(renamed)  # and SmartDocumentor sends it once more: duplicate
    assert again.status == 200 and again.body["status"] in ("duplicate", "stored"), again.body

    assert_stored(destination, new_name, b"%PDF renamed", renamed["exportedFileUrl"])
    assert files(destination) == sorted([new_name, f"{new_name}.json"]), (
        f"the task keeps its older file {old_name} next to {new_name} for good (two current files)"
    )


async def test_a_retire_delete_that_fails_once_is_never_retried(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """A renamed re-export B is stored; B's manifest already names A as replaced/retired ("the intent
    first"), then the Delete Blob of A's file fails (503 through every retry). B is answered 503 with a
    verification message. The verifier, a duplicate of B and the timer all see B's manifest already
    say success and stop at "nothing new to retire": A stays beside B for good."""
    first = notification(exports.publish(b"%PDF first"), displayName="ContratoA")
    renamed = {**first, "exportedFileUrl": exports.publish(b"%PDF renamed"), "displayName": "ContratoB"}
    old_name = name_of((await webhook.post(first)).body)
    failing = proxied.add(busy(deletes_file(old_name)))

    answer = await webhook.post(renamed)

    assert failing.fired == 4
    proxied.reset()
    if answer.verification:
        await run_verifier(answer.verification)
    again = await webhook.post(renamed)
    assert again.status == 200, again.body
    await run_timer()

    new_name = name_of(again.body)
    manifest = assert_stored(destination, new_name, b"%PDF renamed", renamed["exportedFileUrl"])
    assert delivery_of(first["exportedFileUrl"]) in manifest["replaced"]  # says A was replaced...
    assert files(destination) == sorted([new_name, f"{new_name}.json"]), (
        f"...yet A's file {old_name} is still there, and nothing will ever remove it "
        f"(B was answered {answer.status} {answer.body['status']}, its retry {again.body['status']})"
    )


async def test_a_replay_of_a_retired_export_comes_back_when_the_task_listing_fails(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """A stored; B (renamed) stored and retired A. A's notification arrives again (a late retry,
    replay-poison): its old name is empty, so its copy lands; the only thing that recognises it as
    replaced is the task look-up, which is best effort. With that listing failing, the replay is
    answered 200 stored and the older export is a current file again, for good (default template)."""
    older = notification(exports.publish(b"%PDF A"), displayName="ContratoA")
    newer = {**older, "exportedFileUrl": exports.publish(b"%PDF B"), "displayName": "ContratoB"}
    assert (await webhook.post(older)).body["status"] == "stored"
    stored = await webhook.post(newer)
    assert stored.body["status"] == "stored", stored.body
    name = name_of(stored.body)
    assert files(destination) == sorted([name, f"{name}.json"])
    proxied.add(busy(is_task_listing))

    replay = await webhook.post(older)
    proxied.reset()
    await run_timer()

    assert_stored(destination, name, b"%PDF B", newer["exportedFileUrl"])
    assert files(destination) == sorted([name, f"{name}.json"]), "the replayed older export is back beside B"
    # Whether it was replaced could not be looked up: no 2xx on a guess (503, the receiver checks again).
    assert replay.status == 503 and replay.verification, replay.body


async def test_the_sweep_groups_by_folded_tags_and_skips_the_second_task(
    proxied: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Template without a task prefix. Tasks 'Relatório' and 'Relatorio' fold to the same tag values;
    each gets a renamed re-export whose tag look-up failed. The sweep groups manifests by the folded
    tags and retires only for the group's newest task: the other task keeps two current files."""
    monkeypatch.setenv("BLOB_NAME_TEMPLATE", DATED)
    await RUNTIME.reset()
    x1 = notification(exports.publish(b"%PDF x1"), taskId="Relatório", displayName="X1")
    y1 = notification(exports.publish(b"%PDF y1"), taskId="Relatorio", displayName="Y1")
    x2 = {**x1, "exportedFileUrl": exports.publish(b"%PDF x2"), "displayName": "X2"}
    y2 = {**y1, "exportedFileUrl": exports.publish(b"%PDF y2"), "displayName": "Y2"}
    for payload in (x1, y1):
        assert (await webhook.post(payload)).body["status"] == "stored"
    names = {}
    for payload in (x2, y2):
        proxied.add(busy(is_tag_lookup))
        answer = await webhook.post(payload)
        assert answer.status == 503 and answer.verification, answer.body  # the look-up failed: no guess
        names[payload["displayName"]] = json.loads(answer.verification)["blob"]
        proxied.reset()

    await run_timer()

    expected = sorted(n for name in names.values() for n in (name, f"{name}.json"))
    assert files(destination) == expected, "one of the two tasks still has two current files"


# --- a re-export never leaves the task without a file; nothing left behind untracked --------------


async def test_a_snapshot_lingers_when_a_twin_concludes_the_asynchronous_re_export(
    async_copies: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """Export 1 stored; export 2 (asynchronous) snapshots it and answers 202 with `previous` in its
    pending manifest. SmartDocumentor's retry of export 2 arrives once the copy completed: the twin
    concludes success from the payload (no `previous`) and drops `previous` from the manifest; the
    verifier then finds `success` and does nothing. The snapshot, holding export 1's bytes (maybe the
    anonymization that was corrected), stays for good and nothing tracks it."""
    first = notification(exports.publish(b"%PDF export 1"))
    stored = await webhook.post(first)
    assert stored.body["status"] == "stored", stored.body
    name = name_of(stored.body)
    second = {**first, "exportedFileUrl": exports.publish(b"%PDF export 2")}
    async_copies.keep_copies_pending(delivery_of(second["exportedFileUrl"]))
    pending = await webhook.post(second)
    assert pending.status == 202 and pending.verification, pending.body
    assert manifest_of(destination, name)["previous"]["snapshot"]
    async_copies.reset()

    twin = await webhook.post(second)
    assert twin.status == 200 and twin.body["status"] == "duplicate", twin.body
    await run_verifier(pending.verification)

    assert_stored(destination, name, b"%PDF export 2", second["exportedFileUrl"])
    assert snapshots(destination) == [], "export 1's snapshot lingers, untracked"


async def test_a_snapshot_lingers_when_a_newer_export_aborts_the_asynchronous_re_export(
    async_copies: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Export 1 stored; export 2 (asynchronous) snapshots it and is still copying (202); export 3 aborts
    it and is stored. Export 3 concludes with `previous={}` (it never reads export 2's pending
    manifest's `previous`): export 1's snapshot stays forever."""
    first = notification(exports.publish(b"%PDF export 1"))
    name = name_of((await webhook.post(first)).body)
    second = {**first, "exportedFileUrl": exports.publish(b"%PDF export 2")}
    async_copies.keep_copies_pending(delivery_of(second["exportedFileUrl"]))
    pending = await webhook.post(second)
    assert pending.status == 202 and pending.verification, pending.body
    assert manifest_of(destination, name)["previous"]["snapshot"]
    third = {**first, "exportedFileUrl": exports.publish(b"%PDF export 3")}

    answer = await webhook.post(third)  # export 2 still reads "pending" here: export 3 aborts it

    assert answer.status == 200 and answer.body["status"] == "stored", answer.body
    async_copies.reset()
    await run_verifier(pending.verification)
    assert_stored(destination, name, b"%PDF export 3", third["exportedFileUrl"])
    assert snapshots(destination) == [], "export 1's snapshot lingers, untracked"


async def test_a_failed_asynchronous_re_export_whose_answer_was_lost_restores_bytes_but_not_the_manifest(
    async_copies: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Export 1 stored. Export 2 (asynchronous) snapshots it; its Copy Blob answer comes too late
    (503, the copy was sent): the "unconfirmed" pending manifest is written WITHOUT `previous`, so
    export 1's manifest now lives nowhere. Export 2's source then goes (404): the verifier puts export
    1's bytes back from the snapshot but cannot put its manifest back: the file is export 1 and the
    manifest still describes export 2 (pending). Invariant 1 for export 1's 200 is broken; a later
    repair can only rebuild a partial manifest (export 1's payload and history are lost)."""
    first = notification(exports.publish(b"%PDF export 1"))
    stored = await webhook.post(first)
    assert stored.body["status"] == "stored", stored.body
    name = name_of(stored.body)
    second = {**first, "exportedFileUrl": exports.publish(b"%PDF export 2", name="late2/export.pdf")}
    monkeypatch.setattr(webhook_module, "STORAGE_BUDGET_SECONDS", 1.0)
    monkeypatch.setenv("COPY_WAIT_SECONDS", "0")
    await RUNTIME.reset()
    late = async_copies.add(
        Rule(lambda r: copies_from("late2/export.pdf")(r) and "If-Match" in r.headers, times=1, delay_answer=3.0)
    )

    answer = await webhook.post(second)

    assert late.fired == 1
    assert answer.status == 503 and answer.verification, answer.body
    assert manifest_of(destination, name)["copyStatus"] == "pending"
    await asyncio.sleep(2.5)  # the late answer reaches the proxy and is dropped
    async_copies.reset()
    async_copies.source_gone(delivery_of(second["exportedFileUrl"]))

    await run_verifier(answer.verification)

    blob = destination.get_blob_client(name)
    assert blob.download_blob().readall() == b"%PDF export 1"  # the bytes came back...
    assert_stored(destination, name, b"%PDF export 1", first["exportedFileUrl"])  # ...its manifest did not


# --- every sent copy is findable from storage alone --------------------------------------------


# --- never remove another task's file ----------------------------------------------------------


async def test_a_repaired_manifest_with_a_cut_task_id_lets_another_task_retire_its_file(
    proxied: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    monkeypatch: pytest.MonkeyPatch,
    ops: Any,
) -> None:
    """Template without a task prefix. Task X has a 600-character id (valid: up to 1024). Its manifest
    write fails (503), and the operator rebuilds it with `ops check --repair` (or the reconciliation
    repairs one): a repaired manifest takes taskId from the blob's metadata, which is cut at 512
    characters. Task Y, whose id is exactly those 512 characters (same workspace), is then delivered:
    its look-up by tags finds X's manifest (tag values cut at 256), `_same_task` compares the CUT id,
    calls it Y's own older export, and retires task X's file. "Removing another task's file is the
    worst bug there is" (docs/reference.md, "One current file per task")."""
    monkeypatch.setenv("BLOB_NAME_TEMPLATE", DATED)
    await RUNTIME.reset()
    task_x = "T" + "x" * 599
    task_y = task_x[:512]
    x = notification(exports.publish(b"%PDF task X"), taskId=task_x, displayName="Contrato X")
    y = notification(exports.publish(b"%PDF task Y"), taskId=task_y, displayName="Contrato Y")
    proxied.add(busy(lambda r: r.method == "PUT" and unquote(r.path).endswith(".json"), times=8))
    first = await webhook.post(x)
    assert first.status == 503, first.body
    x_name = json.loads(first.verification or "{}")["blob"]
    proxied.reset()
    repaired = await ops("check", x_name, "--repair")
    assert "repaired" in repaired.out, repaired.out
    assert destination.get_blob_client(x_name).download_blob().readall() == b"%PDF task X"

    other = await webhook.post(y)

    assert other.status == 200 and other.body["status"] == "stored", other.body
    assert destination.get_blob_client(x_name).exists(), "task Y's delivery retired task X's file"


# --- nothing pending is left that no safety net can conclude --------------------------------------


async def test_a_repaired_pending_manifest_can_never_be_concluded_by_the_reconciliation(
    async_copies: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    monkeypatch: pytest.MonkeyPatch,
    ops: Any,
) -> None:
    """An asynchronous copy still running (202 path) whose pending-manifest write fails (503): the
    delivery answers 503 with a queue message, and the operator rebuilds the manifest with
    `ops check --repair` while the copy runs. The rebuilt manifest says `pending` but carries no
    linkExpiresOn / exportedFileExpiresOn, so the reconciliation cannot even parse it
    (pending_from_manifest: expiresOn missing) and counts an "error" on every run, for good: the copy
    completed, the queue message was lost, and nothing ever records it."""
    monkeypatch.setenv("RECONCILE_AFTER_MINUTES", "0")
    monkeypatch.setenv("COPY_WAIT_SECONDS", "1")
    await RUNTIME.reset()
    payload = notification(exports.publish())
    async_copies.keep_copies_pending()
    async_copies.add(busy(lambda r: r.method == "PUT" and unquote(r.path).endswith(".json"), times=8))
    answer = await webhook.post(payload)
    assert answer.status == 503 and answer.verification, answer.body
    name = json.loads(answer.verification)["blob"]
    repaired = await ops("check", name, "--repair")
    assert manifest_of(destination, name)["copyStatus"] == "pending", repaired.out
    async_copies.reset()  # the copy completes; its queue message is lost

    await run_timer()
    await run_timer()

    manifest = manifest_of(destination, name)
    assert manifest["copyStatus"] == "success", (
        f"the reconciliation never concludes a repaired pending manifest: {manifest.get('copyStatus')}"
    )


# --- a retry of a replaced export comes back (race with the retirement) ----------------------------


async def test_a_retry_of_the_older_export_during_its_retirement_comes_back_without_a_manifest(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """A stored at its name; B (renamed) is stored and retires A: file first, then manifest. Between the
    two deletes, SmartDocumentor's retry of A arrives: A's name is empty, so its copy lands
    (If-None-Match); its manifest write finds A's old manifest (409), re-reads it, sees `success` for
    its own delivery and stops ("nothing new to retire"): 200 stored. Then B removes A's manifest.
    End: A's bytes (replaced, listed in B's `replaced`) are back as a second file with NO manifest,
    and nothing (no pending manifest, no success manifest for the sweep) ever finds it."""
    older = notification(exports.publish(b"%PDF A"), displayName="ContratoA")
    newer = {**older, "exportedFileUrl": exports.publish(b"%PDF B"), "displayName": "ContratoB"}
    old_name = name_of((await webhook.post(older)).body)
    release = asyncio.Event()
    held = proxied.add(Rule(deletes_file(old_name + ".json"), times=1, hold=release))

    second = asyncio.ensure_future(webhook.post(newer))
    await reached(held)  # A's file is gone, its manifest not yet
    retry = await webhook.post(older)
    release.set()
    stored = await second
    proxied.reset()
    await run_timer()

    assert stored.body["status"] == "stored", stored.body
    name = name_of(stored.body)
    assert_stored(destination, name, b"%PDF B", newer["exportedFileUrl"])
    assert files(destination) == sorted([name, f"{name}.json"]), (
        f"the retry of A ({retry.status} {retry.body['status']}) left {old_name} back, without a manifest"
    )


async def test_a_late_message_of_a_replaced_export_writes_a_failed_manifest_and_an_error(
    async_copies: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A answered 202; B (renamed) is stored and retires A. A's verification message is handled after
    A's link expired (replay-poison days later): the blob is absent, the link expired, so the verifier
    concludes "failed for good" WITHOUT asking whether another file of the task replaced A (it asks
    only before a restart): it creates a new `failed` manifest at the retired name, beside no file,
    and logs an ERROR telling people to export again a document whose newer export is stored."""
    from datetime import UTC, datetime, timedelta

    async_copies.keep_copies_pending()
    older = notification(exports.publish(b"%PDF A"), displayName="ContratoA")
    pending = await webhook.post(older)
    assert pending.status == 202 and pending.verification, pending.body
    async_copies.reset()
    newer = {**older, "exportedFileUrl": exports.publish(b"%PDF B"), "displayName": "ContratoB"}
    stored = await webhook.post(newer)
    assert stored.body["status"] == "stored", stored.body
    name = name_of(stored.body)
    assert files(destination) == sorted([name, f"{name}.json"])
    message = json.loads(pending.verification)
    message["expiresOn"] = (datetime.now(UTC) - timedelta(hours=1)).isoformat()  # processed after expiry
    caplog.clear()

    await run_verifier(json.dumps(message))

    errors = [r.getMessage() for r in caplog.records if r.levelno >= 40]
    assert files(destination) == sorted([name, f"{name}.json"]), "a failed manifest appeared at the retired name"
    assert not errors, errors


async def test_a_replayed_message_of_a_retired_export_restarts_it_when_the_task_listing_fails(
    async_copies: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """A answered 202; B (renamed) is stored and retires A. A's message is replayed (replay-poison)
    while its link is valid: `replaced_elsewhere` is the only guard before the restart, and it is best
    effort (a failed listing reads as "nobody replaced it"). A is copied back into its retired name and
    concluded `finished`; with the default template nothing ever retires it again."""
    async_copies.keep_copies_pending()
    older = notification(exports.publish(b"%PDF A"), displayName="ContratoA")
    pending = await webhook.post(older)
    assert pending.status == 202 and pending.verification, pending.body
    async_copies.reset()
    newer = {**older, "exportedFileUrl": exports.publish(b"%PDF B"), "displayName": "ContratoB"}
    stored = await webhook.post(newer)
    assert stored.body["status"] == "stored", stored.body
    name = name_of(stored.body)
    assert files(destination) == sorted([name, f"{name}.json"])
    async_copies.add(busy(is_task_listing, times=8))

    with pytest.raises(StorageUnavailable):  # not restarted on a guess: the host tries the message again
        await run_verifier(pending.verification)
    async_copies.reset()
    await run_verifier(pending.verification)
    await run_timer()

    assert_stored(destination, name, b"%PDF B", newer["exportedFileUrl"])
    assert files(destination) == sorted([name, f"{name}.json"]), "the replayed message brought A back beside B"


# --- "newer" decided by wall clocks of different instances ---------------------------------------


# --- `replaced` is lost whenever the webhook did not write the manifest itself ---------------------


async def test_a_re_export_finished_by_the_verifier_forgets_what_it_replaced(
    proxied: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stored (200). Re-export B's copy lands over A but its answer comes too late (503 with a queue
    message); the "unconfirmed" pending manifest and then the verifier's `success` manifest are
    written from the payload, which does not know what B replaced: `replaced` stays empty. A late
    retry of A is then not recognised as a replay: it is copied over B and answered 200 stored."""
    older = notification(exports.publish(b"%PDF export A", name="ra/export.pdf"))
    newer = {**older, "exportedFileUrl": exports.publish(b"%PDF export B", name="rb/export.pdf")}
    name = name_of((await webhook.post(older)).body)
    monkeypatch.setattr(webhook_module, "STORAGE_BUDGET_SECONDS", 1.0)
    monkeypatch.setenv("COPY_WAIT_SECONDS", "0")
    await RUNTIME.reset()
    proxied.add(Rule(lambda r: copies_from("rb/export.pdf")(r) and "If-Match" in r.headers, 1, delay_answer=3.0))
    answer = await webhook.post(newer)
    assert answer.status == 503 and answer.verification, answer.body
    await asyncio.sleep(2.5)
    proxied.reset()
    await run_verifier(answer.verification)
    manifest = assert_stored(destination, name, b"%PDF export B", newer["exportedFileUrl"])

    replaced_a = delivery_of(older["exportedFileUrl"]) in manifest["replaced"]

    retry = await webhook.post(older)  # a late retry of A

    assert retry.body["status"] == "superseded", (retry.body["status"], "B's manifest lists A", replaced_a)
    assert_stored(destination, name, b"%PDF export B", newer["exportedFileUrl"])


# --- the operator's replay-poison foresees the wrong fate ----------------------------------------


async def test_replay_poison_dry_run_says_finish_for_a_message_the_verifier_will_supersede(
    async_copies: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    azurite: Any,
    queues: Any,
    ops: Any,
) -> None:
    """A answered 202 (its message later poisoned); B (renamed) is stored and retires A. `replay-poison
    --dry-run` judges only A's own name: no copy there and the link valid, so it says "finish: it
    copies again". The verifier will answer "superseded" (B lists A in `replaced`). docs/reference.md, "Operations": the
    command "says before a replay what each message will do"; its verdicts are right or say "don't know"."""
    import base64

    main, poison = queues
    async_copies.keep_copies_pending()
    older = notification(exports.publish(b"%PDF A"), displayName="ContratoA")
    pending = await webhook.post(older)
    assert pending.status == 202 and pending.verification, pending.body
    async_copies.reset()
    newer = {**older, "exportedFileUrl": exports.publish(b"%PDF B"), "displayName": "ContratoB"}
    assert (await webhook.post(newer)).body["status"] == "stored"
    poison.send_message(base64.b64encode(pending.verification.encode()).decode())
    host = ["--host-connection-string", azurite.host_storage, "--queue", main.queue_name]

    dry = await ops("replay-poison", *host, "--dry-run", "--json")

    fates = [(m.get("will"), m.get("why")) for m in dry.json()["messages"]]
    assert [fate for fate, _ in fates] == ["superseded"], fates


# --- a sender's extra fields pose as the receiver's own manifest keys ------------------------------


async def test_a_senders_extra_field_named_replaced_makes_the_next_export_superseded(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """Unknown extra fields are kept in the manifest (docs/reference.md, "The notification").
    A sender's extra field `replaced`
    (or `history`, `previous`, `completedAt`, `partial`) is merged into the receiver's own keys: the
    stored export's manifest then "replaced" whatever the sender listed, and the task's real next
    export is answered 200 superseded with nothing copied: the older export stays for good."""
    url_b = exports.publish(b"%PDF B", name="xb/export.pdf")
    older = notification(exports.publish(b"%PDF A", name="xa/export.pdf"), replaced=[delivery_of(url_b)])
    newer = {**older, "exportedFileUrl": url_b}
    newer.pop("replaced")
    stored = await webhook.post(older)
    assert stored.body["status"] == "stored", stored.body
    name = name_of(stored.body)

    answer = await webhook.post(newer)

    assert answer.body["status"] == "stored", answer.body
    assert_stored(destination, name, b"%PDF B", url_b)


async def test_a_senders_extra_field_named_previous_keeps_a_failed_copy_from_ever_concluding(
    async_copies: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A first delivery whose payload carries an extra field `previous` (kept: docs/reference.md,
    "The notification") with a
    snapshot id. Its asynchronous copy is still running at the 202; the pending manifest keeps the
    sender's `previous` as its own. The source then goes (404): every driver that concludes the
    failure tries to "restore" that snapshot, gets 404, and raises: the verifier on every try (then
    the poison queue), the reconciliation on every run. The empty blob and the pending manifest stay."""
    monkeypatch.setenv("RECONCILE_AFTER_MINUTES", "0")
    monkeypatch.setenv("COPY_WAIT_SECONDS", "1")
    await RUNTIME.reset()
    payload = notification(
        exports.publish(), previous={"snapshot": "2020-01-01T00:00:00.0000000Z", "delivery": "0" * 64}
    )
    async_copies.keep_copies_pending()
    pending = await webhook.post(payload)
    assert pending.status == 202 and pending.verification, pending.body
    name = name_of(pending.body)
    async_copies.reset()
    async_copies.source_gone()

    await run_verifier(pending.verification)  # concludes: the sender's field is not the receiver's own
    await run_timer()

    manifest = manifest_of(destination, name)
    assert manifest["copyStatus"] == "failed", f"never concluded: {manifest['copyStatus']}"
    assert manifest["senderFields"]["previous"]["delivery"] == "0" * 64  # kept, under its own key


# --- a dated template: the same delivery, retried across the date boundary ------------------------


async def test_a_retry_across_midnight_is_a_second_copy_that_nothing_retires(
    configured: dict[str, str],
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A template with the receive date first, e.g. "{yyyy}/{mm}/{dd}/{workspaceId}/{taskId}/{fileName}"
    (the same holds for the brief's "{yyyy}/..." at New Year). A delivery is received at 23:59:59 and
    its 200 is lost on the way back (or it was answered 503); SmartDocumentor retries the very same
    notification two seconds later: a new day, a new name. It is copied again and answered 200
    `stored`; the older file holds the SAME delivery, so retire_older_exports skips it
    (`theirs == target.delivery`), and so does the timer's sweep a minute later: two files of one
    delivery, for good (docs/reference.md, "Delivery semantics": one copy per delivery; one current file per task)."""
    from datetime import UTC, datetime, timedelta

    import function_app

    monkeypatch.setenv("BLOB_NAME_TEMPLATE", "{yyyy}/{mm}/{dd}/{workspaceId}/{taskId}/{fileName}")
    await RUNTIME.reset()
    payload = notification(exports.publish(b"%PDF once"))
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)

    def clock(at: datetime) -> type[datetime]:
        class Fixed(datetime):
            @classmethod
            def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
                return at

        return Fixed

    monkeypatch.setattr(function_app, "datetime", clock(midnight - timedelta(seconds=1)))
    first = await webhook.post(payload)
    assert first.body["status"] == "stored", first.body
    monkeypatch.setattr(function_app, "datetime", clock(midnight + timedelta(seconds=1)))
    retry = await webhook.post(payload)
    monkeypatch.setattr(function_app, "datetime", clock(midnight + timedelta(seconds=60)))
    await run_timer()
    monkeypatch.setattr(function_app, "datetime", datetime)

    assert retry.status == 200, retry.body
    stored = [name for name in files(destination) if not name.endswith(".json")]
    assert len(stored) == 1, (retry.body["status"], stored)


async def test_three_exports_a_failed_third_restores_the_first_bytes_under_the_third_manifest(
    async_copies: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No fault at all, only bad luck. Export 1 stored (200). Export 2 (asynchronous) snapshots it and
    is still copying (202, `previous` in its pending manifest). Export 3 (asynchronous) aborts export 2
    and starts over the aborted blob: no new snapshot (the blob is not settled), and its pending
    manifest does not carry export 2's `previous`. Export 3's source goes (404): the verifier finds
    export 1's snapshot by listing and puts its BYTES back, but has no manifest of export 1 to put
    back: the task's file is export 1 and its manifest describes export 3 (pending)."""
    monkeypatch.setenv("COPY_WAIT_SECONDS", "1")
    await RUNTIME.reset()
    first = notification(exports.publish(b"%PDF export 1"))
    name = name_of((await webhook.post(first)).body)
    second = {**first, "exportedFileUrl": exports.publish(b"%PDF export 2")}
    third = {**first, "exportedFileUrl": exports.publish(b"%PDF export 3")}
    async_copies.keep_copies_pending(delivery_of(second["exportedFileUrl"]))
    assert (await webhook.post(second)).status == 202
    async_copies.reset()
    both = frozenset({delivery_of(second["exportedFileUrl"]), delivery_of(third["exportedFileUrl"])})
    async_copies.add(Rule(is_properties, 10_000, copy_status="pending", of_delivery=both))
    copying = await webhook.post(third)
    assert copying.status == 202 and copying.verification, copying.body
    async_copies.reset()
    async_copies.source_gone(delivery_of(third["exportedFileUrl"]))

    await run_verifier(copying.verification)

    assert destination.get_blob_client(name).download_blob().readall() == b"%PDF export 1"
    assert_stored(destination, name, b"%PDF export 1", first["exportedFileUrl"])
