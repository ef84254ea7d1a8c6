"""`make demo`: the receiver's main job, end to end, on this machine.

Starts Azurite (loopback, in memory) and the receiver (over HTTP, via the local host),
publishes an anonymized PDF behind a real SAS URL in a stand-in for SmartDocumentor's
export storage, POSTs the notification SmartDocumentor would send, and prints what was
stored. Then a repeated delivery (duplicate) and an expired link (what the person reviewing the document reads).
Exits 0 only if the file was really stored with its index tags.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from azure.storage.blob import BlobServiceClient

from devtools.azurite import Azurite, free_port, start_azurite, stop_process
from devtools.sample_pdf import anonymized_pdf
from devtools.share import exports_client, publish
from devtools.staging_proxy import start_child, through_proxy

ROOT = Path(__file__).resolve().parent.parent
CONTAINER = "smartdocumentor"
BOLD, DIM, GREEN, RED, RESET = (
    ("\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m") if sys.stdout.isatty() else ("",) * 5
)


def heading(text: str) -> None:
    print(f"\n{BOLD}== {text}{RESET}")


def post(url: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(  # noqa: S310 - loopback only
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - loopback only
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_for_host(base: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the local host exited early")
        try:
            with urllib.request.urlopen(f"{base}/api/health", timeout=5):  # noqa: S310
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise RuntimeError("the local host did not start in time")


def start_receiver(azurite: Azurite, port: int, staging_port: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        {
            "AzureWebJobsStorage": azurite.host_storage,
            # The destination through the staging proxy: a large file is staged in blocks, as in Azure.
            "DESTINATION_CONNECTION_STRING": through_proxy(azurite.customer, azurite.blob_port, staging_port),
            "DESTINATION_CONTAINER": CONTAINER,
            "ALLOWED_SOURCE_HOSTS": azurite.blob_host,
            "ALLOW_HTTP_SOURCES": "true",
        }
    )
    return subprocess.Popen(
        [sys.executable, "-m", "devtools.localhost", "--port", str(port), "--settings", "/nonexistent"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def publish_export(azurite: Azurite, pdf: bytes, *, expires_in: timedelta) -> str:
    return publish(
        exports_client(azurite.blob_port),
        f"{uuid.uuid4()}/export.pdf",
        pdf,
        "application/pdf",
        datetime.now(UTC) + expires_in,
    )


def show(status: int, body: dict[str, Any]) -> None:
    colour = GREEN if 200 <= status < 300 else RED
    print(f"HTTP {colour}{status}{RESET}")
    print(json.dumps(body, indent=2, ensure_ascii=False))


def main() -> int:
    print("Starting Azurite (loopback, in memory) and the receiver ...")
    with start_azurite() as azurite:
        port = free_port()
        staging = start_child(azurite.blob_port, cwd=ROOT)
        receiver = start_receiver(azurite, port, staging.port)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for_host(base, receiver)
            endpoint = f"{base}/api/smartdocumentor/anonymization"
            pdf = anonymized_pdf()
            source = publish_export(azurite, pdf, expires_in=timedelta(hours=168))
            task_id = str(uuid.uuid4())
            payload = {
                "taskId": task_id,
                "taskNumber": 1207,
                "workspaceId": "2f0c7a55-8f0e-4c1b-9a43-5b1f0c6d3e21",
                "totalPages": 1,
                "displayName": "Contrato de prestação de serviços",
                "exportedFileUrl": source,
                "exportedFileContentType": "application/pdf",
                "exportedFileExpiresOn": (datetime.now(UTC) + timedelta(hours=168)).isoformat(),
                "lastCheckoutByUserName": "Ana Sousa",
                "lastCheckedOutBy": "f7c5a3de-0000-4000-8000-000000000001",
                "lastCheckedOutUntil": None,
                "metadata": {"Departamento": "Jurídico", "Cliente": "Açores Energia", "Ano": "2026"},
            }
            heading(f"1. SmartDocumentor POSTs the notification to {endpoint}")
            print(f"{DIM}(exportedFileUrl: {source.split('?')[0]}?<SAS hidden>, {len(pdf)} bytes){RESET}")
            print(f"{DIM}(to send a file yourself: `make run`, then `make share FILE=scan.pdf`){RESET}")
            status, body = post(endpoint, payload)
            show(status, body)
            if status != 200 or body.get("status") != "stored":
                print(f"{RED}The file was not stored.{RESET}")
                return 1

            name = body["blob"].split("/", 1)[1]
            destination = BlobServiceClient.from_connection_string(azurite.customer).get_container_client(CONTAINER)
            blob = destination.get_blob_client(name)
            props = blob.get_blob_properties()
            tags = blob.get_blob_tags()
            stored_bytes = blob.download_blob().readall()
            manifest = json.loads(destination.get_blob_client(f"{name}.json").download_blob().readall())
            heading("2. What is in the customer's storage")
            print(f"blob URL     : {body['url']}")
            print(f"size         : {props.size} bytes (same bytes as the export: {stored_bytes == pdf})")
            print(f"Content-Type : {props.content_settings.content_type}")
            print("index tags   :")
            for key, value in tags.items():
                print(f"  {key} = {value}")
            print("metadata     :")
            for key, value in props.metadata.items():
                shown = unquote(value) if "%" in value else value
                print(f"  {key} = {value}" + (f"   ({shown})" if shown != value else ""))
            print(f"manifest     : {CONTAINER}/{name}.json")
            print(json.dumps(manifest, indent=2, ensure_ascii=False))

            heading("3. The same notification again (SmartDocumentor retries)")
            show(*post(endpoint, payload))

            heading("4. A notification whose link has expired (what the reviewer reads)")
            expired = {
                **payload,
                "taskId": str(uuid.uuid4()),
                "exportedFileUrl": publish_export(azurite, pdf, expires_in=timedelta(hours=-1)),
                "exportedFileExpiresOn": (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
            }
            show(*post(endpoint, expired))

            ok = stored_bytes == pdf and tags.get("taskId") == task_id and len(tags) >= 3
            print(
                f"\n{GREEN if ok else RED}{'OK' if ok else 'FAILED'}{RESET}: "
                f"{'the file was copied server-side and tagged' if ok else 'stored file or tags are wrong'}."
            )
            return 0 if ok else 1
        finally:
            stop_process(receiver)
            staging.stop()


if __name__ == "__main__":
    sys.exit(main())
