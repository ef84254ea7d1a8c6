"""The operator command line's verdicts on bad states (issue 15): each state built by driving the real
function app against the session Azurite, then editing storage with the SDK; each verdict asserted
on the output and the exit code, and each repair on what is stored and logged."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.functions.queue import QueueMessage
from azure.storage.blob import ContainerClient
from azure.storage.queue import QueueClient

from devtools.azurite import Azurite
from ops.output import NOT_FOUND, OK
from receiver.plan import manifest_labels

from . import test_ops
from .conftest import FUNCTIONS, PDF_BYTES, Exports, Webhook, notification
from .faultproxy import FaultProxy
from .test_ops import Cli, manifest_of, name_of

# The command line's fixtures, shared with tests/test_ops.py.
ops = test_ops.ops
pending_copies = test_ops.pending_copies
queues = test_ops.queues


def poisoned(poison: QueueClient, verification: str) -> None:
    """As the host poisons a message: base64 of the JSON, in <queue>-poison."""
    poison.send_message(base64.b64encode(verification.encode()).decode())


def rewrite_manifest(destination: ContainerClient, name: str, **changes: Any) -> dict[str, Any]:
    """Edit a manifest the way the receiver writes one (labels, marker), e.g. to give it the fields
    of CONTRACT revision 3 before the receiver writes them itself."""
    document = {**manifest_of(destination, name), **changes}
    tags, metadata = manifest_labels(document, str(document["copyStatus"]))
    blob = destination.get_blob_client(f"{name}.json")
    blob.upload_blob(json.dumps(document).encode(), overwrite=True, metadata={**metadata, "receiverkind": "manifest"})
    blob.set_blob_tags(tags)
    return document


async def pending_without_blob(
    exports: Exports, webhook: Webhook, destination: ContainerClient, **overrides: Any
) -> tuple[dict[str, Any], str, str]:
    """A delivery answered 202 (its copy kept pending), whose blob then disappeared: the manifest says
    pending and no copy exists."""
    payload = notification(exports.publish(), **overrides)
    response = await webhook.post(payload)
    assert response.status == 202 and response.verification
    name = name_of(response.body)
    destination.get_blob_client(name).delete_blob()
    assert manifest_of(destination, name)["copyStatus"] == "pending"
    return payload, name, response.verification


# --- a delivery a queue can still finish is never failed ------------------------------------------


async def test_a_recoverable_delivery_is_not_failed_and_replay_poison_finishes_it(
    pending_copies: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    azurite: Azurite,
    queues: tuple[QueueClient, QueueClient],
    ops: Cli,
) -> None:
    main, poison = queues
    payload, name, verification = await pending_without_blob(exports, webhook, destination)
    poisoned(poison, verification)
    host = ["--host-connection-string", azurite.host_storage, "--queue", main.queue_name]

    ran = await ops("check", name, "--repair", *host)

    assert ran.code == NOT_FOUND
    assert "verdict:    recoverable: no copy exists, but its verification message waits in" in ran.out
    assert "replay-poison will finish it" in ran.out
    assert f"next:       python -m ops replay-poison --queue {main.queue_name}" in ran.out
    assert "repair:     nothing" in ran.out
    assert manifest_of(destination, name)["copyStatus"] == "pending"  # not failed

    # Without the host storage it cannot look at the queues: it says so and does not conclude failed.
    blind = await ops("check", name, "--repair", "--json")
    assert blind.code == NOT_FOUND and blind.json()["verdict"] == "unknown"
    assert "I don't know" in blind.json()["explanation"] and "no host storage given" in blind.json()["explanation"]
    assert manifest_of(destination, name)["copyStatus"] == "pending"

    dry = await ops("replay-poison", *host, "--dry-run", "--json")
    assert dry.code == OK
    [message] = dry.json()["messages"]
    assert message["will"] == "finish" and "no copy exists; it copies again" in message["why"]

    moved = await ops("replay-poison", *host)
    assert moved.code == OK and "1 will finish" in moved.out
    pending_copies.reset()
    replayed = main.receive_message()
    assert replayed is not None
    body = base64.b64decode(replayed.content)
    verify = FUNCTIONS["verify_pending_copy"].get_user_function()  # the queue function, as the host runs it
    await verify(QueueMessage(id="replayed", body=body, dequeue_count=1))  # type: ignore[no-untyped-call]
    assert manifest_of(destination, name)["copyStatus"] == "success"
    assert destination.get_blob_client(name).download_blob().readall() == PDF_BYTES
    assert (await ops("check", name, *host)).code == OK
    assert payload["taskId"] in (await ops("find", "--task", payload["taskId"])).out


async def test_a_message_waiting_in_the_queue_means_wait(
    pending_copies: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    azurite: Azurite,
    queues: tuple[QueueClient, QueueClient],
    ops: Cli,
) -> None:
    main, _ = queues
    _, name, verification = await pending_without_blob(exports, webhook, destination)
    main.send_message(base64.b64encode(verification.encode()).decode())

    ran = await ops(
        "check",
        name,
        "--repair",
        "--json",
        "--host-connection-string",
        azurite.host_storage,
        "--queue",
        main.queue_name,
    )

    assert ran.code == NOT_FOUND and ran.json()["verdict"] == "waiting"
    assert ran.json()["queues"] == {"queue": "there", "poison": "absent", "note": None}
    assert ran.json()["next"].startswith("wait a few minutes")
    assert manifest_of(destination, name)["copyStatus"] == "pending"


async def test_a_stranded_delivery_is_failed_with_its_reason_recorded_and_logged(
    pending_copies: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    azurite: Azurite,
    queues: tuple[QueueClient, QueueClient],
    ops: Cli,
    caplog: pytest.LogCaptureFixture,
) -> None:
    main, _ = queues
    payload, name, _ = await pending_without_blob(exports, webhook, destination)  # its message was lost
    host = ["--host-connection-string", azurite.host_storage, "--queue", main.queue_name]

    look = await ops("check", name, *host)
    assert look.code == NOT_FOUND
    assert "verdict:    stranded: no copy exists, and no queue message holds its link (valid until" in look.out
    assert "--repair (marks it failed)" in look.out
    assert manifest_of(destination, name)["copyStatus"] == "pending"  # check alone writes nothing

    repaired = await ops("check", name, "--repair", *host, "--json")

    assert repaired.code == OK and repaired.json()["action"] == "failed" and repaired.json()["verdict"] == "failed"
    manifest = manifest_of(destination, name)
    assert manifest["copyStatus"] == "failed" and manifest["failedAt"]
    assert manifest["failureReason"].startswith("no copy exists, and no queue message holds its link")
    assert manifest["failureReason"].endswith("export the document again")
    assert manifest["receivedAt"] == repaired.json()["before"]["manifest"]["receivedAt"]  # kept, not invented
    entry = manifest["history"][-1]
    assert entry["by"] == "operator" and entry["outcome"] == "failed" and entry["reason"] == manifest["failureReason"]
    tags = destination.get_blob_client(f"{name}.json").get_blob_tags()
    assert tags["copyStatus"] == "failed" and tags["failedAt"]
    errors = [r for r in caplog.records if r.name == "ops" and r.levelno == logging.ERROR]
    assert len(errors) == 1 and "operator failed" in errors[0].getMessage() and name in errors[0].getMessage()

    failed = await ops("failed", "--json")
    assert failed.code == OK
    [row] = failed.json()["deliveries"]
    assert row["taskId"] == payload["taskId"] and row["failureReason"] == manifest["failureReason"]
    assert row["failedAt"] == manifest["failedAt"] and row["linkExpired"] is False
    text = await ops("failed", "--since", "5")
    assert text.out.startswith("1 failed delivery since ") and "why: no copy exists" in text.out
    assert all(len(line) < 100 for line in text.out.splitlines())
    assert (await ops("failed", "--since", "5", "--alert")).code == NOT_FOUND  # needs a person
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    calm = await ops("failed", "--since", future, "--alert")
    assert calm.code == OK and "OK: nothing needs a person." in calm.out
    assert (await ops("pending", "--alert")).code == OK

    story = await ops("find", "--task", payload["taskId"])
    assert story.code == OK  # failed for good is a consistent state
    assert f"  failed:     {manifest['failedAt']}: {manifest['failureReason']}" in story.out
    assert "operator       failed: no copy exists" in story.out


# --- inconsistent states are flagged, with the next command ----------------------------------------


async def test_a_success_manifest_whose_blob_is_gone_is_flagged_by_find_and_check(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient, ops: Cli
) -> None:
    payload = notification(exports.publish())
    response = await webhook.post(payload)
    assert response.status == 200
    name = name_of(response.body)
    destination.get_blob_client(name).delete_blob()

    found = await ops("find", "--task", payload["taskId"])
    assert found.code == NOT_FOUND
    assert "verdict:    blob-missing: the manifest says success but the blob is gone" in found.out
    assert "next:       restore the blob" in found.out and "1 need(s) attention" in found.out

    checked = await ops("check", name, "--repair", "--json")
    assert checked.code == NOT_FOUND and checked.json()["verdict"] == "blob-missing"
    assert checked.json()["action"] == "none"
    assert manifest_of(destination, name)["copyStatus"] == "success"  # a failed never replaces a success


async def test_a_blob_without_manifest_is_flagged_and_rebuilt_with_receivedat_from_the_blob(
    configured: dict[str, str],
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    ops: Cli,
    caplog: pytest.LogCaptureFixture,
) -> None:
    payload = notification(exports.publish())
    response = await webhook.post(payload)
    assert response.status == 200
    name = name_of(response.body)
    destination.get_blob_client(f"{name}.json").delete_blob()
    await asyncio.sleep(1.1)  # a repair at "now" would be visibly later than the blob's own times

    found = await ops("find", "--task", payload["taskId"])
    assert found.code == NOT_FOUND  # found by the blob's own tags
    assert "manifest:   missing" in found.out and "verdict:    manifest-missing: the blob has no manifest" in found.out
    assert f"next:       python -m ops check '{name}' --repair" in found.out

    repaired = await ops("check", name, "--repair")
    assert repaired.code == OK, repaired.out
    assert "repair:     manifest rebuilt from the blob; receivedAt from the blob's" in repaired.out

    manifest = manifest_of(destination, name)
    props = destination.get_blob_client(name).get_blob_properties()
    blob_times = {
        when.isoformat().replace("+00:00", "Z")
        for when in (props.copy.completion_time, props.last_modified, props.creation_time)
        if when is not None
    }
    assert manifest["receivedAt"] in blob_times and manifest["receivedAtFrom"].startswith("the blob's")
    assert manifest["receivedAt"] < manifest["repairedAt"]
    assert manifest["taskId"] == payload["taskId"] and manifest["partial"] is True
    [entry] = manifest["history"]
    assert (
        entry["by"] == "operator" and entry["outcome"] == "repaired" and entry["reason"] == "the blob had no manifest"
    )
    assert destination.get_blob_client(f"{name}.json").get_blob_properties().metadata["receiverkind"] == "manifest"
    warnings = [r for r in caplog.records if r.name == "ops" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "operator repaired" in warnings[0].getMessage()
    assert (await ops("find", "--task", payload["taskId"])).code == OK


async def test_a_rebuilt_stale_manifest_does_not_keep_the_older_exports_receivedat(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient, ops: Cli
) -> None:
    payload = notification(exports.publish(b"%PDF older"))
    response = await webhook.post(payload)
    assert response.status == 200
    name = name_of(response.body)
    older = manifest_of(destination, name)
    await asyncio.sleep(1.1)
    newer = await webhook.post({**payload, "exportedFileUrl": exports.publish(b"%PDF newer")})
    assert newer.status == 200
    # The manifest of the older export is put back: it describes another export than the blob holds.
    rewrite_manifest(destination, name, **{key: older[key] for key in ("delivery", "receivedAt", "copyId")})

    stale = await ops("check", name)
    assert stale.code == NOT_FOUND and "verdict:    stale: the manifest describes another export" in stale.out

    assert (await ops("check", name, "--repair")).code == OK
    manifest = manifest_of(destination, name)
    assert manifest["delivery"] == destination.get_blob_client(name).get_blob_properties().metadata["delivery"]
    assert manifest["receivedAt"] > older["receivedAt"]
    assert manifest["history"][-1]["reason"].startswith(
        f"the manifest described another export ({older['delivery'][:12]}"
    )


async def test_a_file_that_is_not_a_manifest_is_never_read_or_overwritten_as_one(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient, ops: Cli
) -> None:
    response = await webhook.post(notification(exports.publish()))
    assert response.status == 200
    name = name_of(response.body)
    impostor = b'{"copyStatus": "failed", "delivery": "x"}'
    destination.get_blob_client(f"{name}.json").upload_blob(impostor, overwrite=True)  # no marker

    ran = await ops("check", name, "--repair", "--json")

    assert ran.code == NOT_FOUND and ran.json()["verdict"] == "not-a-manifest"
    assert ran.json()["manifest"] is None and ran.json()["action"] == "none"
    assert destination.get_blob_client(f"{name}.json").download_blob().readall() == impostor


# --- find tells the delivery's story ---------------------------------------------------------------


async def test_find_shows_the_story_newest_first_and_where_it_looked(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient, ops: Cli
) -> None:
    workspace = f"ws-{datetime.now(UTC).timestamp()}"
    first = notification(exports.publish(), workspaceId=workspace)
    assert (await webhook.post(first)).status == 200
    second = notification(exports.publish(), workspaceId=workspace)
    response = await webhook.post(second)
    assert response.status == 200
    name = name_of(response.body)
    earlier = hashlib.sha256(b"an earlier export").hexdigest()
    history = [
        {"at": "2026-03-02T10:14:07Z", "by": "webhook", "outcome": "copying", "status": 202},
        {"at": "2026-03-02T10:15:07Z", "by": "verifier", "outcome": "stored", "retired": ["old/name.pdf"]},
    ]
    rewrite_manifest(destination, name, history=history, completedAt="2026-03-02T10:15:07Z", replaced=[earlier])

    ran = await ops("find", "--workspace", workspace)

    assert ran.code == OK
    assert ran.out.startswith(
        f"Searched container {destination.container_name} of customer for workspaceId {workspace}"
    )
    assert ran.out.index(second["taskId"]) < ran.out.index(first["taskId"])  # newest first
    story = ran.out[: ran.out.index(first["taskId"])]
    assert "  completed:  2026-03-02T10:15:07Z" in story and f"  replaced:   {earlier[:12]}" in story
    assert story.index("webhook        copying (202)") < story.index("verifier       stored: old/name.pdf")
    as_json = await ops("find", "--workspace", workspace, "--json")
    assert [d["taskId"] for d in as_json.json()["documents"]] == [second["taskId"], first["taskId"]]
    assert as_json.json()["container"] == destination.container_name
    assert as_json.json()["documents"][0]["manifest"]["history"] == history


# --- replay-poison says what each message will do ---------------------------------------------------


async def test_replay_poison_dry_run_foresees_finish_superseded_and_fail_from_what_is_stored(
    pending_copies: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    azurite: Azurite,
    queues: tuple[QueueClient, QueueClient],
    ops: Cli,
) -> None:
    main, poison = queues
    # finish: the blob holds this export (its copy completed; only the manifest is left to write)
    stored = await webhook.post(notification(exports.publish()))
    assert stored.status == 202 and stored.verification
    poisoned(poison, stored.verification)
    # superseded: a re-export overwrote the blob after this message was poisoned
    pending_copies.keep_copies_pending()
    task = notification(exports.publish())
    older = await webhook.post(task)
    assert older.status == 202 and older.verification
    poisoned(poison, older.verification)
    pending_copies.keep_copies_pending()
    assert (await webhook.post({**task, "exportedFileUrl": exports.publish(b"%PDF newer")})).status == 202
    # superseded: the stored manifest lists this export as replaced (no blob to compare with)
    pending_copies.keep_copies_pending()
    _, gone, message = await pending_without_blob(exports, webhook, destination)
    earlier = hashlib.sha256(b"an earlier export").hexdigest()
    rewrite_manifest(destination, gone, replaced=[earlier])
    poisoned(poison, json.dumps({**json.loads(message), "delivery": earlier}))
    # fail: no copy, and the link expired
    pending_copies.keep_copies_pending()
    soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    _, _, expiring = await pending_without_blob(exports, webhook, destination, exportedFileExpiresOn=soon)
    poisoned(poison, expiring)
    await asyncio.sleep(2.2)
    host = ["--host-connection-string", azurite.host_storage, "--queue", main.queue_name]

    dry = await ops("replay-poison", *host, "--dry-run", "--json")

    assert dry.code == OK
    fates = [(m["will"], m["why"]) for m in dry.json()["messages"]]
    assert fates[0] == ("finish", "its copy is still running")
    assert fates[1][0] == "superseded" and fates[1][1].startswith(
        ("the blob holds another export", "the stored export replaced")
    )
    assert fates[2] == ("superseded", "the stored export replaced this one (it is in the manifest's replaced list)")
    assert fates[3][0] == "fail" and "the link expired at" in fates[3][1]
    assert dry.json()["will"] == {"finish": 1, "superseded": 2, "fail": 1, "unknown": 0}
    text = await ops("replay-poison", *host, "--dry-run")
    assert "1 will finish, 2 superseded, 1 will fail; nothing changed." in text.out
    assert "Messages marked FAIL will be failed by the queue function" in text.out
    assert poison.get_queue_properties().approximate_message_count == 4


async def test_older_manifests_without_the_newer_fields_are_listed_and_said_so(
    pending_copies: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    ops: Cli,
) -> None:
    payload, name, _ = await pending_without_blob(exports, webhook, destination)
    # As a receiver before CONTRACT revision 3 wrote it: failed, no failedAt, reason, history or
    # linkExpiresOn, and only the four older tags.
    document = {
        key: value
        for key, value in manifest_of(destination, name).items()
        if key not in ("linkExpiresOn", "exportedFileExpiresOn", "history")
    }
    document["copyStatus"] = "failed"
    blob = destination.get_blob_client(f"{name}.json")
    blob.upload_blob(
        json.dumps(document).encode(),
        overwrite=True,
        metadata={"copystatus": "failed", "receivedat": document["receivedAt"]},  # no marker: older manifests
    )
    blob.set_blob_tags(
        {
            "copyStatus": "failed",
            "receivedAt": document["receivedAt"],
            "taskId": payload["taskId"],
            "workspaceId": payload["workspaceId"],
        }
    )

    failed = await ops("failed")
    assert failed.code == OK
    assert failed.out.splitlines()[0] == "1 failed delivery: 1 under 1h; links expired: 0, 1 not recorded."
    assert "why: no reason recorded (an older manifest)" in failed.out
    since = await ops("failed", "--since", "10", "--json")  # no failedAt: its receivedAt counts
    assert [d["taskId"] for d in since.json()["deliveries"]] == [payload["taskId"]]
    found = await ops("find", "--task", payload["taskId"])
    assert found.code == OK and "failed:     ?: no reason recorded" in found.out


async def test_a_message_that_became_visible_while_being_moved_is_still_reported(
    configured: dict[str, str],
    exports: Exports,
    webhook: Webhook,
    azurite: Azurite,
    queues: tuple[QueueClient, QueueClient],
    ops: Cli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    main, poison = queues
    response = await webhook.post(notification(exports.publish()))
    assert response.status == 200
    fake = {"container": "c", "blob": "b", "sourceUrl": "https://x/y", "expiresOn": "2099-01-01T00:00:00Z",
            "delivery": "d" * 64, "contentType": "application/pdf", "metadata": {}, "tags": {},
            "taskId": "late-task", "workspaceId": "w"}  # fmt: skip
    poisoned(poison, json.dumps(fake))

    async def slow_foresee(store: object, pending: object, now: datetime) -> tuple[str, str]:
        # Meanwhile the message's hidden time runs out and another reader takes it.
        await asyncio.sleep(1.5)
        assert poison.receive_message(visibility_timeout=30) is not None
        return "finish", "its copy restarts"

    monkeypatch.setattr("ops.poison.VISIBILITY_SECONDS", 1)
    monkeypatch.setattr("ops.poison.foresee", slow_foresee)

    ran = await ops("replay-poison", "--host-connection-string", azurite.host_storage, "--queue", main.queue_name)

    assert ran.code == NOT_FOUND  # something to look at
    assert "Moved 1 message(s)" in ran.out and "late-task: sent back, but it could not be deleted" in ran.out
    assert main.get_queue_properties().approximate_message_count == 1
