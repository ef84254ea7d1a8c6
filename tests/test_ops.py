"""The operator command line (ops/) against the session Azurite, on deliveries the real function app made."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.functions.queue import QueueMessage
from azure.storage.blob import ContainerClient
from azure.storage.queue import QueueClient

from devtools.azurite import Azurite
from ops.cli import run
from ops.output import NOT_FOUND, OK, STORAGE, USAGE
from receiver.runtime import RUNTIME

from .conftest import FUNCTIONS, PDF_BYTES, Exports, Secrets, Webhook, notification
from .faultproxy import FaultProxy, Rule, is_manifest_write, is_properties

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, as an operator's is."""

    def isatty(self) -> bool:
        return True


Cli = Callable[..., Awaitable[Ran]]


@pytest.fixture
def ops(secrets: Secrets) -> Cli:
    """Runs the command line in-process (its entry function), and proves no SAS signature is in its output."""

    async def call(*argv: str, environ: dict[str, str] | None = None, err: io.StringIO | None = None) -> Ran:
        out, errors = io.StringIO(), err if err is not None else io.StringIO()
        code = await run(list(argv), environ=environ, out=out, err=errors)
        ran = Ran(code, out.getvalue(), errors.getvalue())
        assert not secrets.leaks_in(ran.out + ran.err), "a SAS signature leaked into the command line's output"
        return ran

    return call


def name_of(body: dict[str, Any]) -> str:
    return str(body["blob"].split("/", 1)[1])


def manifest_of(destination: ContainerClient, name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(destination.get_blob_client(f"{name}.json").download_blob().readall())
    return document


@pytest.fixture
async def pending_copies(proxied: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> FaultProxy:
    """Asynchronous copies (SYNC_COPY_MAX_MIB=0) that the proxy keeps pending; the command line goes
    through the same proxy (DESTINATION_CONNECTION_STRING), so it sees what the receiver sees."""
    monkeypatch.setenv("SYNC_COPY_MAX_MIB", "0")
    await RUNTIME.reset()
    proxied.keep_copies_pending()
    return proxied


# --- find ----------------------------------------------------------------------------------------


async def test_find_by_task_shows_the_file_its_manifest_and_that_they_match(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient, ops: Cli
) -> None:
    payload = notification(exports.publish(PDF_BYTES))
    response = await webhook.post(payload)
    assert response.status == 200
    name = name_of(response.body)
    other = await webhook.post(notification(exports.publish(PDF_BYTES)))  # another task, same workspace
    assert other.status == 200

    ran = await ops("find", "--task", payload["taskId"], "--json")

    assert ran.code == OK, ran.err
    found = ran.json()
    assert found["count"] == 1 and found["method"] == "tags" and found["truncated"] is False
    document = found["documents"][0]
    assert document["blob"] == name
    assert document["url"] == destination.get_blob_client(name).url and "?" not in document["url"]
    assert document["size"] == len(PDF_BYTES) and document["contentType"] == "application/pdf"
    assert document["taskId"] == payload["taskId"] and document["workspaceId"] == payload["workspaceId"]
    stored = destination.get_blob_client(name).get_blob_properties().metadata["delivery"]
    assert document["manifest"]["copyStatus"] == "success" and document["manifest"]["delivery"] == stored
    assert document["manifest"]["receivedAt"] == manifest_of(destination, name)["receivedAt"]
    assert document["matches"] is True

    text = await ops("find", "--task", payload["taskId"])
    assert text.code == OK
    assert name in text.out and document["url"] in text.out and "matches:    yes" in text.out
    assert "1 document(s)" in text.out

    workspace = await ops("find", "--workspace", payload["workspaceId"], "--json")
    assert workspace.code == OK
    assert {d["blob"] for d in workspace.json()["documents"]} == {name, name_of(other.body)}


async def test_find_folds_the_task_id_like_the_receiver_and_confirms_the_real_one(
    configured: dict[str, str], exports: Exports, webhook: Webhook, ops: Cli
) -> None:
    # Both ids fold to the tag value "Relatorio_7": one Find Blobs by Tags query finds both, the
    # manifests tell them apart.
    first = await webhook.post(notification(exports.publish(), taskId="Relatório#7"))
    second = await webhook.post(notification(exports.publish(), taskId="Relatorio_7"))
    assert first.status == second.status == 200

    ran = await ops("find", "--task", "Relatório#7", "--json")

    assert ran.code == OK
    assert [d["blob"] for d in ran.json()["documents"]] == [name_of(first.body)]
    assert ran.json()["documents"][0]["taskId"] == "Relatório#7"


async def test_find_of_an_unknown_task_exits_1(
    configured: dict[str, str], ops: Cli, destination: ContainerClient
) -> None:
    destination.create_container()
    ran = await ops("find", "--task", str(uuid.uuid4()), "--json")
    assert ran.code == NOT_FOUND
    assert ran.json()["count"] == 0 and ran.json()["documents"] == []
    text = await ops("find", "--task", "nobody")
    assert text.code == NOT_FOUND and "Nothing stored for taskId nobody in container" in text.out


# --- pending and failed --------------------------------------------------------------------------


async def test_pending_lists_unfinished_deliveries_oldest_first_and_failed_is_empty(
    pending_copies: FaultProxy, exports: Exports, webhook: Webhook, ops: Cli
) -> None:
    payloads = []
    for _ in range(2):
        payload = notification(exports.publish())
        response = await webhook.post(payload)
        assert response.status == 202
        payloads.append((payload, name_of(response.body)))
        pending_copies.keep_copies_pending()

    ran = await ops("pending", "--json")

    assert ran.code == OK, ran.err
    listed = ran.json()
    assert listed["count"] == listed["total"] == 2 and listed["method"] == "tags"
    assert [d["taskId"] for d in listed["deliveries"]] == [p["taskId"] for p, _ in payloads]  # oldest first
    assert [d["blob"] for d in listed["deliveries"]] == [name for _, name in payloads]
    received = [d["receivedAt"] for d in listed["deliveries"]]
    assert received == sorted(received)
    assert all(d["copyStatus"] == "pending" and 0 <= d["ageSeconds"] < 120 for d in listed["deliveries"])
    assert all("?" not in d["url"] for d in listed["deliveries"])

    text = await ops("pending")
    assert text.code == OK
    lines = text.out.splitlines()
    assert lines[0] == "2 pending deliveries: 2 under 1h; links expired: 0."  # the summary first
    assert lines[1].split() == ["AGE", "LINK", "TASK", "FILE"]
    assert all(len(line) < 100 for line in lines)

    one = await ops("pending", "--max", "1", "--json")
    assert one.json()["count"] == 1 and one.json()["truncated"] is True
    assert one.json()["deliveries"][0]["taskId"] == payloads[0][0]["taskId"]

    assert (await ops("pending", "--older-than", "60", "--json")).json()["count"] == 0
    failed = await ops("failed", "--json")
    assert failed.code == OK and failed.json()["deliveries"] == []  # nothing failed: the healthy case


async def test_progress_shows_on_a_terminal_and_never_in_json(
    pending_copies: FaultProxy, exports: Exports, webhook: Webhook, ops: Cli
) -> None:
    assert (await webhook.post(notification(exports.publish()))).status == 202

    terminal = Terminal()
    shown = await ops("pending", err=terminal)
    assert shown.code == OK and "reading manifests" in terminal.getvalue()  # the bar, on stderr
    assert "reading manifests" not in shown.out

    quiet = Terminal()
    as_json = await ops("pending", "--json", err=quiet)
    assert as_json.code == OK and quiet.getvalue() == ""
    assert as_json.json()["count"] == 1  # stdout is nothing but the JSON

    piped = await ops("pending")  # stderr is not a terminal: no bar
    assert piped.code == OK and piped.err == ""


# --- check ---------------------------------------------------------------------------------------


async def test_a_stale_manifest_is_found_by_check_and_repaired(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient, ops: Cli
) -> None:
    payload = notification(exports.publish(b"%PDF older"))
    assert (await webhook.post(payload)).status == 200
    # A newer export's copy lands, but its request dies before its manifest write: the manifest
    # still describes the older export.
    newer_url = exports.publish(b"%PDF newer")
    proxied.add(Rule(is_manifest_write, times=10, status=503, code="ServerBusy"))
    newer = await webhook.post({**payload, "exportedFileUrl": newer_url})
    assert newer.status == 503
    proxied.reset()
    name = f"{payload['workspaceId']}/{payload['taskId']}/Contrato de serviços.pdf"
    newer_delivery = hashlib.sha256(newer_url.encode()).hexdigest()

    ran = await ops("check", name, "--json")
    assert ran.code == NOT_FOUND
    assert ran.json()["verdict"] == "stale" and ran.json()["matches"] is False and ran.json()["action"] is None
    found = await ops("find", "--task", payload["taskId"], "--json")
    assert found.json()["documents"][0]["matches"] is False
    assert manifest_of(destination, name)["delivery"] != newer_delivery  # check alone writes nothing

    repaired = await ops("check", name, "--repair")
    assert repaired.code == OK, repaired.out
    assert "repair:     manifest rebuilt from the blob" in repaired.out and "verdict:    ok" in repaired.out

    manifest = manifest_of(destination, name)
    assert manifest["delivery"] == newer_delivery
    assert manifest["delivery"] == destination.get_blob_client(name).get_blob_properties().metadata["delivery"]
    assert manifest["taskId"] == payload["taskId"] and manifest["partial"] is True
    assert destination.get_blob_client(f"{name}.json").get_blob_tags()["copyStatus"] == "success"
    again = await ops("check", f"{destination.container_name}/{name}", "--json")  # also as container/name
    assert again.code == OK and again.json()["verdict"] == "ok" and again.json()["matches"] is True


async def test_check_repair_settles_a_pending_delivery_like_the_reconciliation(
    pending_copies: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient, ops: Cli
) -> None:
    payload = notification(exports.publish(PDF_BYTES, content_type="application/octet-stream"))
    response = await webhook.post(payload)
    assert response.status == 202
    name = name_of(response.body)
    url = (await ops("find", "--task", payload["taskId"], "--json")).json()["documents"][0]["url"]

    still = await ops("check", url, "--json")  # by URL; the copy is still running: that is consistent
    assert still.code == OK and still.json()["verdict"] == "ok" and still.json()["manifest"]["copyStatus"] == "pending"

    pending_copies.reset()  # the copy completes; its verification message was lost
    unfinished = await ops("check", name, "--json")
    assert unfinished.code == NOT_FOUND and unfinished.json()["verdict"] == "unfinished"

    repaired = await ops("check", f"{name}.json", "--repair", "--json")  # by its manifest's name
    assert repaired.code == OK
    assert repaired.json()["action"] == "finished" and repaired.json()["verdict"] == "ok"
    assert repaired.json()["before"]["manifest"]["copyStatus"] == "pending"
    manifest = manifest_of(destination, name)
    assert manifest["copyStatus"] == "success" and manifest["metadata"] == payload["metadata"]
    assert manifest["history"][-1]["by"] == "operator" and manifest["history"][-1]["outcome"] == "finished"
    assert manifest["completedAt"] and manifest["receivedAt"] == repaired.json()["before"]["manifest"]["receivedAt"]
    assert destination.get_blob_client(name).get_blob_properties().content_settings.content_type == "application/pdf"


async def test_a_copy_that_failed_after_its_link_expired_is_failed_by_check_and_listed_by_failed(
    pending_copies: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient, ops: Cli
) -> None:
    payload = notification(
        exports.publish(), exportedFileExpiresOn=(datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    )
    response = await webhook.post(payload)
    assert response.status == 202
    name = name_of(response.body)
    pending_copies.reset()
    pending_copies.add(Rule(is_properties, 10_000, copy_status="failed", copy_description="500 InternalError"))
    await asyncio.sleep(2.2)  # the link expires

    repaired = await ops("check", name, "--repair", "--json")

    assert repaired.code == OK
    assert repaired.json()["action"] == "failed" and repaired.json()["verdict"] == "failed"
    assert not destination.get_blob_client(name).exists()
    assert manifest_of(destination, name)["copyStatus"] == "failed"
    failed = await ops("failed", "--json")
    assert failed.code == OK
    assert [(d["taskId"], d["blob"]) for d in failed.json()["deliveries"]] == [(payload["taskId"], name)]
    assert (await ops("pending", "--json")).json()["count"] == 0
    found = await ops("find", "--task", payload["taskId"], "--json")
    assert found.code == OK
    assert found.json()["documents"][0]["exists"] is False
    assert found.json()["documents"][0]["manifest"]["copyStatus"] == "failed"


async def test_check_of_a_blob_that_is_not_there_exits_1(
    configured: dict[str, str], destination: ContainerClient, ops: Cli
) -> None:
    destination.create_container()
    ran = await ops("check", "no/such/file.pdf", "--repair", "--json")
    assert ran.code == NOT_FOUND and ran.json()["verdict"] == "not-found" and ran.json()["action"] == "none"


# --- accounts without index tags -----------------------------------------------------------------


async def test_without_index_tags_pending_and_find_fall_back_to_a_listing(
    pending_copies: FaultProxy, exports: Exports, webhook: Webhook, ops: Cli
) -> None:
    # Ahead of the pending-copy rules: every request with tags, and every Find Blobs by Tags, is refused.
    pending_copies.rules.insert(
        0,
        Rule(
            lambda r: "x-ms-tags" in r.headers or "where" in r.query,
            times=10_000,
            status=400,
            code="BlobTagsNotSupportedForAccountType",
        ),
    )
    payload = notification(exports.publish())
    response = await webhook.post(payload)
    assert response.status == 202

    pending = await ops("pending", "--json")
    assert pending.code == OK and pending.json()["method"] == "listing"
    assert [d["taskId"] for d in pending.json()["deliveries"]] == [payload["taskId"]]
    found = await ops("find", "--task", payload["taskId"])
    assert found.code == OK and name_of(response.body) in found.out and "whole container was listed" in found.out


# --- replay-poison -------------------------------------------------------------------------------


@pytest.fixture
def queues(azurite: Azurite) -> tuple[QueueClient, QueueClient]:
    """A verification queue of this test's own on Azurite's queue service, and its poison queue."""
    name = f"verify-{uuid.uuid4().hex[:12]}"
    main = QueueClient.from_connection_string(azurite.host_storage, name)
    poison = QueueClient.from_connection_string(azurite.host_storage, f"{name}-poison")
    main.create_queue()
    poison.create_queue()
    return main, poison


async def test_replay_poison_moves_messages_back_without_printing_the_sas(
    pending_copies: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    azurite: Azurite,
    queues: tuple[QueueClient, QueueClient],
    secrets: Secrets,
    ops: Cli,
) -> None:
    main, poison = queues
    delivered = []
    for _ in range(2):
        payload = notification(exports.publish())
        response = await webhook.post(payload)
        assert response.status == 202 and response.verification
        assert secrets.leaks_in(response.verification)  # the message holds the link's signature
        poison.send_message(base64.b64encode(response.verification.encode()).decode())  # as the host poisons it
        delivered.append((payload, name_of(response.body), response.verification))
        pending_copies.keep_copies_pending()
    poison.send_message(base64.b64encode(b"not a verification message").decode())
    host = ["--host-connection-string", azurite.host_storage, "--queue", main.queue_name]

    dry = await ops("replay-poison", *host, "--dry-run", "--json")
    assert dry.code == NOT_FOUND  # one unreadable message would stay
    assert dry.json()["wouldMove"] == 2 and dry.json()["moved"] == 0 and dry.json()["leftUnreadable"] == 1
    assert main.get_queue_properties().approximate_message_count == 0
    assert poison.get_queue_properties().approximate_message_count == 3

    first = await ops("replay-poison", *host, "--max", "1")
    assert first.code == OK
    assert delivered[0][0]["taskId"] in first.out and delivered[0][1] in first.out
    assert f"Moved 1 message(s) from {main.queue_name}-poison back to {main.queue_name}: 1 will finish." in first.out

    rest = await ops("replay-poison", *host, "--json")
    assert rest.code == NOT_FOUND  # the unreadable one stays in the poison queue
    assert rest.json()["moved"] == 1 and rest.json()["leftUnreadable"] == 1
    moved = [m for m in rest.json()["messages"] if m["action"] == "moved"]
    assert [(m["taskId"], m["blob"]) for m in moved] == [
        (delivered[1][0]["taskId"], f"{destination.container_name}/{delivered[1][1]}")
    ]
    assert "sig=" not in first.out + rest.out and "sourceUrl" not in first.out + rest.out
    assert poison.get_queue_properties().approximate_message_count == 1

    # What came back is the host's message exactly (base64), and the queue function finishes it.
    messages = list(main.receive_messages(max_messages=10))
    bodies = [base64.b64decode(m.content).decode() for m in messages]
    assert sorted(bodies) == sorted(verification for _, _, verification in delivered)
    pending_copies.reset()
    verify = FUNCTIONS["verify_pending_copy"].get_user_function()
    for body in bodies:
        await verify(QueueMessage(id="replayed", body=body.encode(), dequeue_count=1))  # type: ignore[no-untyped-call]
    assert all(manifest_of(destination, name)["copyStatus"] == "success" for _, name, _ in delivered)


async def test_replay_poison_with_nothing_poisoned_does_nothing(
    azurite: Azurite, queues: tuple[QueueClient, QueueClient], ops: Cli
) -> None:
    main, _ = queues
    environ = {"AzureWebJobsStorage": azurite.host_storage}
    ran = await ops("replay-poison", "--queue", main.queue_name, "--json", environ=environ)
    assert ran.code == OK and ran.json()["moved"] == 0 and ran.json()["messages"] == []
    missing = await ops("replay-poison", "--queue", f"never-{uuid.uuid4().hex[:8]}", environ=environ)
    assert missing.code == OK and "Moved 0 message(s)" in missing.out


# --- the command line itself ---------------------------------------------------------------------


@pytest.mark.parametrize("command", ["find", "pending", "failed", "check", "replay-poison"])
async def test_every_command_has_help_with_an_example_and_the_exit_codes(
    command: str, ops: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    ran = await ops(command, "--help")
    shown = capsys.readouterr().out  # argparse prints help to sys.stdout
    assert ran.code == OK
    assert f"python -m ops {command}" in shown and "example:" in shown and "3  cannot connect" in shown


async def test_usage_errors_exit_2_and_configuration_errors_exit_3(
    azurite: Azurite, ops: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (await ops("find")).code == USAGE  # neither --task nor --workspace
    assert (await ops("pending", "--max", "0")).code == USAGE
    assert (await ops("find", "--task", "t", "--connection-string", "x", "--account-url", "https://a")).code == USAGE
    assert (await ops("nonsense")).code == USAGE
    capsys.readouterr()

    nothing = await ops("pending", "--json", environ={})
    assert nothing.code == STORAGE and nothing.json()["error"] == "config"
    assert "--connection-string" in nothing.json()["message"]
    bad = await ops("pending", "--connection-string", "not a connection string", environ={})
    assert bad.code == STORAGE and "not a valid storage connection string" in bad.err
    container = await ops(
        "find", "--task", "t", "--container", "Bad_Name", environ={"DESTINATION_CONNECTION_STRING": azurite.customer}
    )
    assert container.code == STORAGE and "--container is invalid" in container.err
    missing = await ops(
        "pending", "--json", "--container", f"missing-{uuid.uuid4().hex[:8]}", "--connection-string", azurite.customer
    )
    assert missing.code == STORAGE and missing.json()["error"] == "storage"
    assert "does not exist" in missing.json()["message"]
    no_host = await ops("replay-poison", environ={})
    assert no_host.code == STORAGE and "--host-connection-string" in no_host.err


def test_python_dash_m_ops_runs_the_entry_point() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "ops", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert shown.returncode == OK and "replay-poison" in shown.stdout
    usage = subprocess.run(
        [sys.executable, "-m", "ops", "find"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert usage.returncode == USAGE and "--task" in usage.stderr
