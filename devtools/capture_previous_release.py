"""Capture a container written by the release before the task record: tests/data/previous_release_container.json.

The release before the task record (commit 1d6565d) wrote one file per task at the template's name,
a manifest ``<name>.json`` beside it, and the ids and the delivery hash in the file's metadata; no
record. This script drives that release's own webhook (``receiver.webhook.handle_delivery``, the
function the Functions host calls) against a private Azurite, then dumps the destination container
(every blob and snapshot: name, bytes in base64, Content-Type, metadata, tags, last-modified) and
the notifications it posted (their links are signed for 30 days from the capture).

How the committed fixture was made (from a clone of the repository)::

    git worktree add /tmp/previous-release 1d6565d
    ln -s "$PWD/node_modules" /tmp/previous-release/node_modules
    .venv/bin/python devtools/capture_previous_release.py --previous /tmp/previous-release

It imports the previous release's ``receiver`` package from ``--previous`` (first on ``sys.path``),
and this tree's ``devtools.azurite`` for Azurite. Nothing here runs in the tests.

The deliveries (ids and names as in the fixture):

- ``ws-acme/task-101``, ``ws-acme/task-102``: one PDF each;
- ``ws-acme/task-201``: a re-export under the same name (the file overwritten, ``replaced`` in its manifest);
- ``ws-acme/task-301``: a re-export under another name (the release retired the older file itself);
- ``ws-acme/task-401``: copied asynchronously (SYNC_COPY_MAX_MIB=0); Azurite finishes a copy at once,
  so its second export's manifest is then written back to ``pending`` as the release writes it for a
  202 whose copy has not landed, over a blob that still holds the first export;
- ``Société Générale/tâche №7``: non-ASCII ids;
- template ``{yyyy}/{workspaceId}/{taskNumber}-{fileName}`` (no task prefix): ``ws-acme/task-501``,
  with a renamed re-export.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "previous_release_container.json"
CONTAINER = "legacy-customer"
EXPORTS_CONTAINER = "anonymized-exports"
PREVIOUS_COMMIT = "1d6565d"
LINK_LIFETIME = timedelta(days=30)


def pdf(label: str) -> bytes:
    return f"%PDF-1.4\n% {label}\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n".encode()


def _previous_release(previous: Path) -> None:
    sys.path.insert(0, str(previous))
    webhook: Any = importlib.import_module("receiver.webhook")
    assert Path(webhook.__file__).resolve().is_relative_to(previous.resolve()), "not the previous release's code"


async def capture(previous: Path) -> dict[str, Any]:
    azurite_module: Any = importlib.import_module("devtools.azurite")
    blob_module: Any = importlib.import_module("azure.storage.blob")
    webhook: Any = importlib.import_module("receiver.webhook")
    runtime_module: Any = importlib.import_module("receiver.runtime")
    runtime = runtime_module.RUNTIME
    posted: list[dict[str, Any]] = []
    with azurite_module.start_azurite() as azurite:
        exports = blob_module.BlobServiceClient.from_connection_string(azurite.exports)
        exports.create_container(EXPORTS_CONTAINER)
        customer = blob_module.BlobServiceClient.from_connection_string(azurite.customer)
        destination = customer.get_container_client(CONTAINER)

        async def configure(**extra: str) -> None:
            os.environ.update(
                {
                    "DESTINATION_CONNECTION_STRING": azurite.customer,
                    "DESTINATION_CONTAINER": CONTAINER,
                    "ALLOWED_SOURCE_HOSTS": azurite.blob_host,
                    "ALLOW_HTTP_SOURCES": "true",
                    "COPY_WAIT_SECONDS": "2",
                    "SYNC_COPY_MAX_MIB": "256",
                    "BLOB_NAME_TEMPLATE": "{workspaceId}/{taskId}/{fileName}",
                    **extra,
                }
            )
            await runtime.reset()

        number = 0

        async def post(workspace: str, task: str, display: str, *, task_number: int = 7) -> dict[str, Any]:
            nonlocal number
            number += 1
            data = pdf(f"{workspace}/{task} export {number}")
            source = f"{number:03d}/export.pdf"
            exports.get_blob_client(EXPORTS_CONTAINER, source).upload_blob(
                data, overwrite=True, content_settings=blob_module.ContentSettings(content_type="application/pdf")
            )
            expiry = datetime.now(UTC) + LINK_LIFETIME
            sas = blob_module.generate_blob_sas(
                azurite_module.EXPORTS_ACCOUNT,
                EXPORTS_CONTAINER,
                source,
                account_key=azurite_module.EXPORTS_KEY,
                permission=blob_module.BlobSasPermissions(read=True),
                expiry=expiry,
            )
            url = f"{exports.get_blob_client(EXPORTS_CONTAINER, source).url}?{sas}"
            body = {
                "taskId": task,
                "taskNumber": task_number,
                "workspaceId": workspace,
                "displayName": display,
                "exportedFileUrl": url,
                "exportedFileContentType": "application/pdf",
                "exportedFileExpiresOn": expiry.isoformat(),
            }
            raw = json.dumps(body).encode()
            answer = await webhook.handle_delivery(
                raw, {"content-type": "application/json"}, runtime=runtime, now=datetime.now(UTC)
            )
            entry = {
                "body": body,
                "data": base64.b64encode(data).decode(),
                "status": answer.status_code,
                "answer": answer.body.get("status"),
                "blob": answer.body.get("blob") or answer.body.get("blobName"),
            }
            posted.append(entry)
            print(f"{workspace}/{task} {display}: {answer.status_code} {answer.body.get('status')}")
            return entry

        await configure()
        await post("ws-acme", "task-101", "invoice-101.pdf")
        await post("ws-acme", "task-102", "invoice-102.pdf")
        await post("ws-acme", "task-201", "contract.pdf")
        await post("ws-acme", "task-201", "contract.pdf")
        await post("ws-acme", "task-301", "offer-v1.pdf")
        await post("ws-acme", "task-301", "offer-v2.pdf")
        await post("Société Générale", "tâche №7", "relevé.pdf")
        # Asynchronous copies: the first lands (Azurite finishes at once), the second is then made pending.
        await configure(SYNC_COPY_MAX_MIB="0")
        await post("ws-acme", "task-401", "scan.pdf")
        first_state = destination.get_blob_client("ws-acme/task-401/scan.pdf")
        kept = first_state.download_blob().readall()
        kept_properties = first_state.get_blob_properties()
        second = await post("ws-acme", "task-401", "scan.pdf")
        second["note"] = "made pending after the capture: the blob is put back to the first export"
        await _make_pending(destination, blob_module, "ws-acme/task-401/scan.pdf", kept, kept_properties)
        await configure(BLOB_NAME_TEMPLATE="{yyyy}/{workspaceId}/{taskNumber}-{fileName}")
        await post("ws-acme", "task-501", "report.pdf", task_number=501)
        await post("ws-acme", "task-501", "report-final.pdf", task_number=501)
        await runtime.reset()
        blobs = _dump(destination)
    return {
        "capturedFrom": PREVIOUS_COMMIT,
        "capturedAt": datetime.now(UTC).isoformat(),
        "container": CONTAINER,
        "sourceHost": azurite.blob_host,
        "deliveries": posted,
        "blobs": blobs,
    }


async def _make_pending(destination: Any, blob_module: Any, name: str, kept: bytes, properties: Any) -> None:
    """The second asynchronous export's state after a 202 whose copy has not landed: the blob still
    holds the first export (bytes and metadata), the manifest says ``pending`` for the second."""
    manifest_client = destination.get_blob_client(f"{name}.json")
    manifest = json.loads(manifest_client.download_blob().readall())
    manifest_meta = dict(manifest_client.get_blob_properties().metadata)
    tags = dict(manifest_client.get_blob_tags())
    manifest["copyStatus"] = "pending"
    for key in ("completedAt",):
        manifest.pop(key, None)
    manifest["history"] = [step for step in manifest.get("history", []) if step.get("outcome") != "stored"]
    if "copystatus" in manifest_meta:
        manifest_meta["copystatus"] = "pending"
    manifest_client.upload_blob(
        json.dumps(manifest, ensure_ascii=True, indent=2).encode("ascii"),
        overwrite=True,
        metadata=manifest_meta,
        content_settings=blob_module.ContentSettings(content_type="application/json"),
    )
    if tags:
        manifest_client.set_blob_tags({**tags, "copyStatus": "pending"})
    client = destination.get_blob_client(name)
    file_tags = client.get_blob_tags()
    client.upload_blob(
        kept,
        overwrite=True,
        metadata=dict(properties.metadata),
        content_settings=blob_module.ContentSettings(content_type=properties.content_settings.content_type),
    )
    client.set_blob_tags(file_tags)


def _dump(destination: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for item in destination.list_blobs(include=["metadata", "snapshots", "tags"]):
        client = destination.get_blob_client(item.name, snapshot=item.snapshot)
        data = client.download_blob().readall()
        found.append(
            {
                "name": item.name,
                "snapshot": item.snapshot,
                "contentType": item.content_settings.content_type,
                "metadata": dict(item.metadata or {}),
                "tags": dict(item.tags or {}),
                "lastModified": item.last_modified.astimezone(UTC).isoformat(),
                "created": (item.creation_time or item.last_modified).astimezone(UTC).isoformat(),
                "data": base64.b64encode(data).decode(),
            }
        )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--previous", type=Path, required=True, help=f"a worktree of commit {PREVIOUS_COMMIT}")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    _previous_release(args.previous)
    document = asyncio.run(capture(args.previous))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{len(document['blobs'])} blobs -> {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
