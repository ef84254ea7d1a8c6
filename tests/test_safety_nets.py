"""The task record's scenarios: no export lost or brought back by a retry, a rename, a failed large copy or a
sender's metadata; the verifier and the reconciliation obey the webhook's rules
(docs/reference.md, "Delivery semantics").

Each test drives the real function app against Azurite, with the fault proxy holding, delaying or
failing the chosen request so the interleaving happens on every run, then judges what is in storage.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.storage.blob import ContainerClient
from hypothesis import given
from hypothesis import strategies as st

from receiver import webhook as webhook_module
from receiver.plan import MANIFEST_SUFFIX, blob_name, file_name, not_a_manifest_name
from receiver.runtime import RUNTIME

from .conftest import FUNCTIONS, PDF_BYTES, Exports, Webhook, notification
from .faultproxy import FaultProxy, Rule, copies_from, is_copy, is_delete, is_properties
from .test_integrity import (
    assert_stored,
    delivery_of,
    files,
    name_of,
    reached,
    run_verifier,
)
from .test_integrity import async_copies as async_copies  # a fixture


def manifest_of(destination: ContainerClient, name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(destination.get_blob_client(f"{name}.json").download_blob().readall())
    return document


async def run_timer() -> None:
    await FUNCTIONS["reconcile_deliveries"].get_user_function()(None)


def is_listing(request: Any) -> bool:
    return bool(request.method == "GET" and request.query.get("comp") == "list")


# --- 1. files and manifests live in disjoint namespaces ------------------------------------------


async def test_a_file_never_lands_on_another_exports_manifest(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """Export 2 has a type outside the three, a source named .json and displayName 'Contrato 2026.pdf':
    named by the old rules, it was export 1's manifest. Now each keeps its own name, and the newer is
    the task's one current file; a retry of export 1 brings nothing back."""
    first = notification(exports.publish(), displayName="Contrato 2026")
    stored = await webhook.post(first)
    assert stored.body["status"] == "stored", stored.body
    first_name = name_of(stored.body)
    assert first_name.endswith("/Contrato 2026.pdf")
    second_url = exports.publish(b'{"not": "a manifest"}', name="e2/export.json", content_type="application/x-sd")
    second = {**first, "exportedFileUrl": second_url, "exportedFileContentType": "application/x-sd"}
    second["displayName"] = "Contrato 2026.pdf"

    answer = await webhook.post(second)

    assert answer.status == 200 and answer.body["status"] == "stored", answer.body
    second_name = name_of(answer.body)
    assert second_name != f"{first_name}{MANIFEST_SUFFIX}" and not second_name.endswith(MANIFEST_SUFFIX)
    manifest = assert_stored(destination, second_name, b'{"not": "a manifest"}', second_url)
    assert manifest["history"][-1]["outcome"] == "retired"
    assert manifest["history"][-1]["retired"] == [first_name]
    assert delivery_of(first["exportedFileUrl"]) in manifest["replaced"]
    assert files(destination) == sorted([second_name, f"{second_name}.json"])

    retry = await webhook.post(first)  # a late retry of export 1

    assert retry.status == 200 and retry.body["status"] == "superseded", retry.body
    assert files(destination) == sorted([second_name, f"{second_name}.json"])
    assert_stored(destination, second_name, b'{"not": "a manifest"}', second_url)


@given(
    display=st.text(max_size=40),
    content_type=st.sampled_from(["application/pdf", "image/png", "application/json", "text/x-json", "x/y"]),
    source=st.sampled_from(["/c/export.json", "/c/export.JSON", "/c/x.pdf", "/c/noext", "/c/a.json.json"]),
    template=st.sampled_from(
        [
            "{workspaceId}/{taskId}/{fileName}",
            "{workspaceId}/{taskId}/doc.{ext}",
            "{yyyy}/{workspaceId}/{taskId}/{fileName}",
            "{workspaceId}/{taskId}/{displayName}.{ext}",
        ]
    ),
)
def test_no_file_name_is_ever_a_manifest_name(display: str, content_type: str, source: str, template: str) -> None:
    """Whatever the display name, content type and template: a file's name never ends like a manifest's,
    so it can equal no manifest name (every manifest is ``<file name>.json``)."""
    file = file_name(display, "task-1", content_type, source)
    values = {
        "workspaceId": "ws",
        "taskId": "task-1",
        "taskNumber": "7",
        "displayName": display or "task-1",
        "ext": "json" if source.lower().endswith(".json") else "pdf",
        "yyyy": "2026",
        "mm": "12",
        "dd": "05",
    }
    limit = 1024 - len(MANIFEST_SUFFIX)
    name = not_a_manifest_name(blob_name(template, values, file, limit=limit), limit)
    assert not name.lower().endswith(MANIFEST_SUFFIX)
    assert 0 < len(name) <= limit


async def test_the_reconciliation_never_touches_a_file_tagged_like_a_pending_manifest(
    configured: dict[str, str],
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sender's metadata copyStatus=pending and receivedAt=2000-01-01 is never a tag of the file
    (reserved keys: skipped and listed in tagsDropped); and a blob that carries such tags without the
    receiver's manifest marker is never read, repaired or overwritten as a manifest."""
    monkeypatch.setenv("RECONCILE_AFTER_MINUTES", "0")
    await RUNTIME.reset()
    payload = notification(
        exports.publish(), metadata={"copyStatus": "pending", "receivedAt": "2000-01-01", "Department": "Legal"}
    )
    stored = await webhook.post(payload)
    assert stored.body["status"] == "stored", stored.body
    name = name_of(stored.body)
    tags = destination.get_blob_client(name).get_blob_tags()
    assert "copyStatus" not in tags and "receivedAt" not in tags and tags["Department"] == "Legal"
    dropped = {item["key"]: item["reason"] for item in manifest_of(destination, name)["tagsDropped"]}
    assert set(dropped) == {"copyStatus", "receivedAt"} and all("reserved" in reason for reason in dropped.values())
    # A file that got such tags some other way (an older receiver, a hand-made upload):
    foreign = destination.get_blob_client("legacy/old.pdf.json")
    foreign.upload_blob(PDF_BYTES, tags={"copyStatus": "pending", "receivedAt": "2000-01-01"})
    before = foreign.get_blob_properties().etag

    await run_timer()

    assert foreign.download_blob().readall() == PDF_BYTES
    assert foreign.get_blob_properties().etag == before
    assert_stored(destination, name, PDF_BYTES, payload["exportedFileUrl"])


# --- 3. exact replays never win -----------------------------------------------------------------


async def test_a_replay_of_an_older_export_is_superseded_and_copies_nothing(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    older = notification(exports.publish(b"%PDF export A", name="a/export.pdf"))
    newer = {**older, "exportedFileUrl": exports.publish(b"%PDF export B", name="b/export.pdf")}
    assert (await webhook.post(older)).body["status"] == "stored"
    stored = await webhook.post(newer)
    assert stored.body["status"] == "stored", stored.body
    name = name_of(stored.body)
    before = destination.get_blob_client(name).get_blob_properties().etag
    # Counts, changes nothing: a copy of A over what is stored (If-Match). Its first request, a copy
    # only where nothing is stored (If-None-Match), is refused by storage, as for every re-delivery.
    overwrite = proxied.add(Rule(lambda r: copies_from("a/export.pdf")(r) and "If-Match" in r.headers, times=10))

    replay = await webhook.post(older)

    assert replay.status == 200 and replay.body["status"] == "superseded", replay.body
    assert overwrite.fired == 0, "the replayed export was copied over the newer one"
    assert destination.get_blob_client(name).get_blob_properties().etag == before
    manifest = assert_stored(destination, name, b"%PDF export B", newer["exportedFileUrl"])
    assert manifest["replaced"] == [delivery_of(older["exportedFileUrl"])]


async def test_a_replayed_verification_message_of_a_replaced_export_restarts_nothing(
    async_copies: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """A's copy was pending (202), B replaced it under another name; A's message, replayed from the
    poison queue, must not copy A back into the name B retired."""
    async_copies.keep_copies_pending()
    older = notification(exports.publish(b"%PDF export A", name="a/export.pdf"), displayName="Old name")
    pending = await webhook.post(older)
    assert pending.status == 202 and pending.verification, pending.body
    async_copies.reset()
    newer = {**older, "exportedFileUrl": exports.publish(b"%PDF export B", name="b/export.pdf")}
    newer["displayName"] = "New name"
    stored = await webhook.post(newer)
    assert stored.body["status"] == "stored", stored.body
    # B finds A still "running" only if the proxy says so; here A's copy completed: B retired it.
    assert files(destination) == sorted([name_of(stored.body), f"{name_of(stored.body)}.json"])
    restarted = async_copies.add(Rule(copies_from("a/export.pdf"), times=10))

    await run_verifier(pending.verification)

    assert restarted.fired == 0
    assert files(destination) == sorted([name_of(stored.body), f"{name_of(stored.body)}.json"])


# --- 4. one current file per task ---------------------------------------------------------------


@pytest.mark.parametrize("template", ["{workspaceId}/{taskId}/{fileName}", "{yyyy}/{workspaceId}/{taskId}/{fileName}"])
async def test_a_renamed_re_export_retires_the_older_file(
    configured: dict[str, str],
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    monkeypatch: pytest.MonkeyPatch,
    template: str,
) -> None:
    """The default template finds the task's files under its own prefix; a template with a date first
    has none, and finds them by their index tags."""
    monkeypatch.setenv("BLOB_NAME_TEMPLATE", template)
    await RUNTIME.reset()
    first = notification(exports.publish(b"%PDF first"), displayName="Contrato")
    other_task = notification(exports.publish(b"%PDF other task"), displayName="Contrato")
    renamed = {**first, "exportedFileUrl": exports.publish(b"%PDF renamed"), "displayName": "Contrato assinado"}
    old_name = name_of((await webhook.post(first)).body)
    other_name = name_of((await webhook.post(other_task)).body)

    answer = await webhook.post(renamed)

    assert answer.status == 200 and answer.body["status"] == "stored", answer.body
    new_name = name_of(answer.body)
    manifest = assert_stored(destination, new_name, b"%PDF renamed", renamed["exportedFileUrl"])
    assert manifest["history"][-1]["retired"] == [old_name]
    assert files(destination) == sorted([new_name, f"{new_name}.json", other_name, f"{other_name}.json"])


async def test_two_tasks_whose_tag_values_fold_alike_never_retire_each_other(
    configured: dict[str, str],
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """taskIds 'Relatório' and 'Relatorio' fold to the same tag value: the look-up by tags finds both,
    the exact ids in the manifest tell them apart."""
    monkeypatch.setenv("BLOB_NAME_TEMPLATE", "{yyyy}/{workspaceId}/{taskId}/{fileName}")
    await RUNTIME.reset()
    one = notification(exports.publish(b"%PDF one"), taskId="Relatório")
    two = notification(exports.publish(b"%PDF two"), taskId="Relatorio", displayName="Outro")
    first = await webhook.post(one)
    second = await webhook.post(two)
    assert first.body["status"] == second.body["status"] == "stored"
    assert_stored(destination, name_of(first.body), b"%PDF one", one["exportedFileUrl"])
    assert_stored(destination, name_of(second.body), b"%PDF two", two["exportedFileUrl"])


async def test_racing_renamed_exports_end_with_the_newest_alone(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """A's look-up of the task's files is held until B (received later, another name) is stored and has
    retired A: A then finds it was replaced, removes nothing of B's, and is answered superseded."""
    older = notification(exports.publish(b"%PDF A"), displayName="Nome A")
    newer = {**older, "exportedFileUrl": exports.publish(b"%PDF B"), "displayName": "Nome B"}
    release = asyncio.Event()
    held = proxied.add(Rule(is_listing, times=1, hold=release))

    first = asyncio.ensure_future(webhook.post(older))
    await reached(held)
    second = await webhook.post(newer)
    release.set()
    answer = await first

    assert second.body["status"] == "stored", second.body
    assert answer.status == 200 and answer.body["status"] == "superseded", answer.body
    name = name_of(second.body)
    assert files(destination) == sorted([name, f"{name}.json"])
    assert_stored(destination, name, b"%PDF B", newer["exportedFileUrl"])


# --- 5. a re-export never leaves the task without a file -----------------------------------------


async def test_a_failed_asynchronous_re_export_finished_by_the_verifier_puts_the_earlier_back(
    async_copies: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    first = notification(exports.publish(b"%PDF export 1"))
    stored = await webhook.post(first)
    assert stored.body["status"] == "stored", stored.body
    name = name_of(stored.body)
    second = {**first, "exportedFileUrl": exports.publish(b"%PDF export 2")}
    async_copies.keep_copies_pending(delivery_of(second["exportedFileUrl"]))
    pending = await webhook.post(second)
    assert pending.status == 202 and pending.verification, pending.body
    assert manifest_of(destination, name)["previous"]["delivery"] == delivery_of(first["exportedFileUrl"])
    async_copies.reset()
    async_copies.source_gone(delivery_of(second["exportedFileUrl"]))

    await run_verifier(pending.verification)

    manifest = assert_stored(destination, name, b"%PDF export 1", first["exportedFileUrl"])
    restored = manifest["history"][-1]
    assert restored["outcome"] == "restored" and restored["by"] == "verifier"
    assert "previous" not in manifest
    assert [b for b in destination.list_blobs(include=["snapshots"]) if b.snapshot] == []


# --- 6. every sent copy is findable from storage alone ---------------------------------------------


async def test_a_copy_answered_too_late_is_finished_by_the_reconciliation_without_its_message(
    proxied: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(webhook_module, "STORAGE_BUDGET_SECONDS", 1.0)
    monkeypatch.setenv("COPY_WAIT_SECONDS", "0")
    monkeypatch.setenv("RECONCILE_AFTER_MINUTES", "0")
    await RUNTIME.reset()
    proxied.add(Rule(is_copy, times=1, delay_answer=3.0))  # Azurite copies; the answer comes too late
    payload = notification(exports.publish())

    response = await webhook.post(payload)

    assert response.status == 503, response.body
    name = json.loads(response.verification or "{}")["blob"]
    tracked = manifest_of(destination, name)
    assert tracked["copyStatus"] == "pending" and tracked["history"][-1]["outcome"] == "unconfirmed"
    await asyncio.sleep(2.5)  # the late answer reaches the proxy and is dropped
    # The queue message is lost: the reconciliation alone finishes it, from storage.
    await run_timer()
    manifest = assert_stored(destination, name, PDF_BYTES, payload["exportedFileUrl"])
    assert [entry["by"] for entry in manifest["history"]] == ["webhook", "reconciliation"]
    assert manifest["completedAt"]


# --- 7. the safety nets obey the same rules -------------------------------------------------------


async def test_the_verifier_that_loses_its_cleanup_race_writes_nothing(
    async_copies: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The verifier reads A's copy as failed for good and deletes the empty blob If-Match; meanwhile A is
    sent again, copied over the failed blob and answered stored. The delete gets 412: the verifier ends
    there, never marking the stored delivery failed nor telling anyone to export again."""
    payload = notification(exports.publish())
    async_copies.keep_copies_pending()
    pending = await webhook.post(payload)
    assert pending.status == 202 and pending.verification
    name = name_of(pending.body)
    async_copies.reset()
    async_copies.source_gone(times=2)
    release = asyncio.Event()
    delete = async_copies.add(Rule(is_delete, times=1, hold=release))

    verifier = asyncio.ensure_future(run_verifier(pending.verification))
    await reached(delete)
    again = await webhook.post(payload)
    caplog.clear()
    release.set()
    await verifier

    assert again.status == 200 and again.body["status"] == "stored", again.body
    manifest = assert_stored(destination, name, PDF_BYTES, payload["exportedFileUrl"])
    assert "failedAt" not in manifest
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_the_reconciliation_never_fails_a_copy_its_message_can_still_finish(
    async_copies: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A copy that failed while its link is valid: only the queue (or poison) message holds the link.
    The reconciliation leaves it pending and says so; the message then finishes it."""
    monkeypatch.setenv("RECONCILE_AFTER_MINUTES", "0")
    await RUNTIME.reset()
    payload = notification(exports.publish())
    async_copies.keep_copies_pending()
    pending = await webhook.post(payload)
    assert pending.status == 202 and pending.verification
    name = name_of(pending.body)
    async_copies.reset()
    async_copies.add(Rule(is_properties, times=10_000, copy_status="failed", copy_description="500 InternalError"))

    await run_timer()

    assert manifest_of(destination, name)["copyStatus"] == "pending"
    async_copies.reset()
    await run_verifier(pending.verification)
    assert_stored(destination, name, PDF_BYTES, payload["exportedFileUrl"])


async def test_the_reconciliation_retires_what_a_failed_or_lagging_tag_look_up_missed(
    proxied: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a task prefix (a date first in the template) the task's files are found through the tag
    index. When that look-up fails (or lags), the file is stored and recorded, and the timer's sweep
    retires the older file afterwards."""
    monkeypatch.setenv("BLOB_NAME_TEMPLATE", "{yyyy}/{workspaceId}/{taskId}/{fileName}")
    await RUNTIME.reset()
    first = notification(exports.publish(b"%PDF first"), displayName="Contrato")
    renamed = {**first, "exportedFileUrl": exports.publish(b"%PDF renamed"), "displayName": "Contrato v2"}
    old_name = name_of((await webhook.post(first)).body)
    lookup = proxied.add(
        Rule(lambda r: r.method == "GET" and r.query.get("comp") == "blobs", times=4, status=503, code="ServerBusy")
    )

    answer = await webhook.post(renamed)

    # Stored and recorded, but whether a newer export replaced it could not be looked up: no 2xx on a
    # guess; the answer says the receiver checks again by itself.
    assert answer.status == 503 and answer.verification, answer.body
    assert lookup.fired == 4
    new_name = json.loads(answer.verification)["blob"]
    assert manifest_of(destination, new_name)["copyStatus"] == "success"
    assert files(destination) == sorted([old_name, f"{old_name}.json", new_name, f"{new_name}.json"])

    await run_timer()

    assert files(destination) == sorted([new_name, f"{new_name}.json"])
    manifest = assert_stored(destination, new_name, b"%PDF renamed", renamed["exportedFileUrl"])
    assert manifest["history"][-1]["by"] == "reconciliation" and manifest["history"][-1]["retired"] == [old_name]


async def test_each_reconciliation_run_reports_the_poison_queue_as_an_error_naming_replay_poison(
    configured: dict[str, str],
    azurite: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from azure.storage.queue import QueueClient

    monkeypatch.setenv("AzureWebJobsStorage", azurite.host_storage)
    poison = QueueClient.from_connection_string(azurite.host_storage, "smartdocumentor-copy-verifications-poison")
    poison.create_queue()
    try:
        for number in range(3):
            poison.send_message(json.dumps({"n": number}))
        caplog.clear()
        await run_timer()
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, errors
        assert "holds 3 messages" in errors[0] and "replay-poison" in errors[0]

        poison.clear_messages()
        caplog.clear()
        await run_timer()
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        runs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("reconciliation run")]
        assert runs and "poison=0" in runs[-1]
    finally:
        poison.delete_queue()


def test_every_test_the_state_machine_page_names_exists() -> None:
    """docs/state-machine.md names the test of each arrow: each named test must exist."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    page = (root / "docs" / "state-machine.md").read_text(encoding="utf-8")
    named = set(re.findall(r"(test_\w+\.py)::(test_\w+)(…?)", page))
    assert len(named) >= 15
    missing = []
    for file, test, cut in sorted(named):
        ending = "" if cut else r"\("  # "name…" stands for a test whose name starts so
        if not re.search(f"def {test}{ending}", (root / "tests" / file).read_text(encoding="utf-8")):
            missing.append(f"{file}::{test}{cut}")
    assert not missing, missing


async def test_a_delivery_that_overwrites_the_blob_always_rewrites_the_manifest(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """B overwrites A; B's header read and manifest write are held. A arrives again (B's manifest, which
    would name A as replaced, is not written yet), copies over B, and finds the manifest already says A.
    It must still rewrite it: B's held write, conditional on the manifest it read before its copy, then
    fails instead of describing B beside A's bytes."""
    older = notification(exports.publish(b"%PDF export A"))
    newer = {**older, "exportedFileUrl": exports.publish(b"%PDF export B")}
    assert (await webhook.post(older)).body["status"] == "stored"
    release = asyncio.Event()
    b_read = proxied.add(Rule(is_properties, times=1, hold=release))
    b_manifest = proxied.add(Rule(lambda r: r.method == "PUT" and r.path.endswith(".json"), times=1, hold=release))

    second = asyncio.ensure_future(webhook.post(newer))
    await reached(b_read)
    await reached(b_manifest)
    again = await webhook.post(older)
    release.set()
    answer = await second

    assert again.status == 200 and again.body["status"] == "stored", again.body
    assert answer.status == 200 and answer.body["status"] == "superseded", answer.body
    manifest = assert_stored(destination, name_of(again.body), b"%PDF export A", older["exportedFileUrl"])
    assert delivery_of(newer["exportedFileUrl"]) in manifest["replaced"]


_SIG_PIECES = st.sampled_from(
    ["a", "B", "7", "+", " ", "/", "=", "%", "%2B", "%2b", "%252B", "%37", "%2537", "x", "%25"]
)


@given(
    signature=st.text(alphabet="ab7+/XYZ", min_size=8, max_size=14),
    before=st.lists(_SIG_PIECES, max_size=6),
    after=st.lists(_SIG_PIECES, max_size=6),
    encode=st.lists(st.sampled_from(["raw", "pct", "pct25", "space"]), min_size=14, max_size=14),
)
def test_the_cheap_secret_check_is_never_weaker_than_the_pattern(
    signature: str, before: list[str], after: list[str], encode: list[str]
) -> None:
    """Only notifications the cheap check flags get the signature pattern compiled (about 1 ms each):
    wherever the pattern would find the signature, the cheap check must say so."""
    from urllib.parse import quote

    from receiver.source import link_secret_pattern, may_repeat_secret

    url = f"https://acct.blob.core.windows.net/c/x.pdf?sv=2024&sig={quote(signature, safe='')}"
    pattern = link_secret_pattern(url)
    assert pattern is not None
    forms = []
    for char, how in zip(signature, encode, strict=False):
        code = f"{ord(char):02X}"
        forms.append(
            {"raw": char, "pct": f"%{code}", "pct25": f"%25{code}", "space": " " if char == "+" else char}[how]
        )
    text = "".join(before) + "".join(forms) + "".join(after)
    for candidate in (text, "".join(before) + "".join(after)):
        if pattern.search(candidate):
            assert may_repeat_secret(url, {"displayName": candidate, "metadata": {candidate: "v"}})
            assert may_repeat_secret(url, {"metadata": [{"key": "k", "value": candidate}]})


def pending_manifest(destination: ContainerClient, name: str, *, received: datetime, link_valid: bool) -> None:
    """A pending manifest as the receiver writes it (marker, tags), with no blob: its copy never started
    or its blob is gone, and only its queue message (which holds the link) could restart it."""
    from datetime import timedelta as _timedelta

    document = {
        "taskId": name.split("/")[1],
        "workspaceId": name.split("/")[0],
        "blob": f"{destination.container_name}/{name}",
        "delivery": hashlib.sha256(name.encode()).hexdigest(),
        "exportedFileContentType": "application/pdf",
        "linkExpiresOn": (datetime.now(UTC) + _timedelta(hours=20 if link_valid else -1)).isoformat(),
        "copyStatus": "pending",
        "receivedAt": received.isoformat().replace("+00:00", "Z"),
    }
    destination.get_blob_client(f"{name}.json").upload_blob(
        json.dumps(document),
        metadata={"receiverkind": "manifest", "copystatus": "pending", "receivedat": document["receivedAt"]},
        tags={"copyStatus": "pending", "receivedAt": document["receivedAt"], "taskId": document["taskId"]},
    )


async def test_deliveries_that_can_only_wait_never_starve_the_reconciliation(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """Six pending deliveries that only their message can restart, and one whose copy completed; each
    run settles two. Every run starts at another point of the list, so the completed one is reached."""
    import random

    from receiver.reconciliation import reconcile_run

    destination.create_container()
    old = datetime.now(UTC) - timedelta(minutes=30)
    for number in range(6):
        pending_manifest(destination, f"ws/waiting-{number}/doc.pdf", received=old, link_valid=True)
    # Last by name and by receive time: a run that always took the first two would never reach it.
    payload = notification(exports.publish(), taskId="zz-completed", workspaceId="zz-workspace")
    stored = await webhook.post(payload)
    name = name_of(stored.body)
    manifest = destination.get_blob_client(f"{name}.json")
    document = json.loads(manifest.download_blob().readall())
    later = old + timedelta(minutes=1)
    document.update(copyStatus="pending", receivedAt=later.isoformat().replace("+00:00", "Z"))
    manifest.upload_blob(
        json.dumps(document),
        overwrite=True,
        metadata={"receiverkind": "manifest", "copystatus": "pending", "receivedat": document["receivedAt"]},
        tags={"copyStatus": "pending", "receivedAt": document["receivedAt"], "taskId": payload["taskId"]},
    )
    rng = random.Random(7)
    for _ in range(30):
        report = await reconcile_run(runtime=RUNTIME, now=datetime.now(UTC), max_items=2, rng=rng)
        assert report.processed == 2 and report.found >= 6
        if manifest_of(destination, name)["copyStatus"] == "success":
            break
    assert manifest_of(destination, name)["copyStatus"] == "success"
    assert manifest_of(destination, "ws/waiting-0/doc.pdf")["copyStatus"] == "pending"  # never failed early


async def test_a_delivery_waiting_past_every_queue_try_is_an_error_naming_the_next_command(
    configured: dict[str, str], destination: ContainerClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Its message is lost or poisoned and its link still valid: nothing retries it by itself and it
    must not be failed yet. The run says so at ERROR, naming the command to run."""
    destination.create_container()
    pending_manifest(destination, "ws/lost-1/doc.pdf", received=datetime.now(UTC) - timedelta(hours=3), link_valid=True)
    caplog.clear()
    await run_timer()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "lost or poisoned" in errors[0] and "python -m ops check 'ws/lost-1/doc.pdf'" in errors[0]
    assert manifest_of(destination, "ws/lost-1/doc.pdf")["copyStatus"] == "pending"
