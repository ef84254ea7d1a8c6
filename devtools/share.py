"""`make share FILE=scan.pdf`: put a local file behind a real SAS URL, ready to send to `make run`.

Needs `make run` running in another terminal: the file goes into the stand-in for SmartDocumentor's
export storage (account ``exports`` in `make run`'s Azurite, data in .azurite/), so the link works as
long as that Azurite runs. Prints the notification SmartDocumentor would send, a `curl` line that
sends it, and the line to paste into requests.http.

The full SAS URL is printed to your terminal, because you need it to send the notification; it is
for this machine's Azurite only, and nothing here logs it.

    python -m devtools.share FILE [--hours 24] [--content-type TYPE]   (make share FILE=... HOURS=...)

Run with `make run PORT=... AZURITE_PORTS=...`, it finds those ports itself (.azurite/make-run.json).
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import random
import shlex
import socket
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from azure.core.exceptions import AzureError
from azure.storage.blob import BlobSasPermissions, BlobServiceClient, ContentSettings, generate_blob_sas

from devtools.azurite import EXPORTS_ACCOUNT, EXPORTS_CONTAINER, EXPORTS_KEY, connection_string
from devtools.ports import DEFAULT_AZURITE_PORTS, DEFAULT_HOST_PORT, read_state
from devtools.sample_pdf import anonymized_pdf

ROOT = Path(__file__).resolve().parent.parent
ENDPOINT = "/api/smartdocumentor/anonymization"
LOCAL_KEY = "local-key-not-enforced"  # `func start` and the local host do not check function keys
WORKSPACE_ID = "2f0c7a55-8f0e-4c1b-9a43-5b1f0c6d3e21"
SENT_TYPES = ("application/pdf", "image/jpeg", "image/png")  # what SmartDocumentor exports
MAX_HOURS = 168  # SmartDocumentor's longest "hours until expiry"

# requests.http's first example points here: `make run` publishes this sample at start, and the SAS
# below (fixed expiry, signed with the dev-only exports key) is written into requests.http as is.
SAMPLE_BLOB = "samples/contrato.pdf"
SAMPLE_EXPIRY = datetime(2099, 12, 31, tzinfo=UTC)


class ShareError(Exception):
    """An expected problem, told to the developer in one line."""


def exports_client(blob_port: int) -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(connection_string(EXPORTS_ACCOUNT, EXPORTS_KEY, blob_port))


def sas_url(client: BlobServiceClient, name: str, expiry: datetime) -> str:
    sas = generate_blob_sas(
        EXPORTS_ACCOUNT,
        EXPORTS_CONTAINER,
        name,
        account_key=EXPORTS_KEY,
        permission=BlobSasPermissions(read=True),
        expiry=expiry,
    )
    return f"{client.get_blob_client(EXPORTS_CONTAINER, name).url}?{sas}"


def publish(client: BlobServiceClient, name: str, data: bytes, content_type: str, expiry: datetime) -> str:
    """Upload ``data`` as ``name`` in the export container; return its read-only SAS URL."""
    container = client.get_container_client(EXPORTS_CONTAINER)
    if not container.exists():
        container.create_container()
    container.upload_blob(name, data, overwrite=True, content_settings=ContentSettings(content_type=content_type))
    return sas_url(client, name, expiry)


def publish_sample(blob_port: int) -> str:
    """The PDF requests.http's first example sends (`make run` calls this once Azurite is up)."""
    return publish(exports_client(blob_port), SAMPLE_BLOB, anonymized_pdf(), "application/pdf", SAMPLE_EXPIRY)


def notification(url: str, display_name: str, content_type: str, expires_on: datetime) -> dict[str, Any]:
    """The body SmartDocumentor's "Webhook Url to File (Anonymization)" would send for this file."""
    return {
        "taskId": str(uuid.uuid4()),
        "taskNumber": random.randint(1, 99999),
        "workspaceId": WORKSPACE_ID,
        "displayName": display_name,
        "exportedFileUrl": url,
        "exportedFileContentType": content_type,
        "exportedFileExpiresOn": expires_on.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "metadata": {"Source": "make share"},
    }


def _answers(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _shown(path: Path) -> str:
    """An absolute path: the printed commands work from any directory."""
    return str(path.resolve())


def share(file: Path, *, hours: float, content_type: str | None, blob_port: int, receiver: str, out: Path) -> list[str]:
    """Publish ``file`` and return the lines to print; raise :class:`ShareError` for expected problems."""
    if not file.is_file():
        raise ShareError(f"{file} is not a file: give one with FILE=path/to/scan.pdf")
    if not 0 < hours <= MAX_HOURS:
        raise ShareError(f"--hours must be between 0 and {MAX_HOURS} (SmartDocumentor's longest expiry)")
    if not _answers(blob_port):
        raise ShareError(
            f"nothing answers on 127.0.0.1:{blob_port} (Azurite): start `make run` in another terminal first, "
            "then run this again; the link works while that `make run` runs"
        )
    content_type = content_type or mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    expires_on = (datetime.now(UTC) + timedelta(hours=hours)).replace(microsecond=0)
    name = f"shared/{uuid.uuid4()}/{file.name}"
    try:
        url = publish(exports_client(blob_port), name, file.read_bytes(), content_type, expires_on)
    except AzureError as error:
        raise ShareError(
            f"the storage on 127.0.0.1:{blob_port} refused the upload ({type(error).__name__}): is it "
            f"`make run`'s Azurite? Another Azurite (e.g. VS Code's) has no `{EXPORTS_ACCOUNT}` account"
        ) from None
    body = notification(url, file.name, content_type, expires_on)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / f"notification-{body['taskId']}.json"
    saved.write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    endpoint = f"{receiver.rstrip('/')}{ENDPOINT}?code={LOCAL_KEY}"
    lines = [
        f"Shared {file.name} ({file.stat().st_size} bytes, {content_type}) in the local export storage,",
        f"readable until {body['exportedFileExpiresOn']} (a real SAS for this machine's Azurite; nothing logs it):",
        f"  {url}",
    ]
    if content_type not in SENT_TYPES:
        lines.append(f"Note: SmartDocumentor only exports {', '.join(SENT_TYPES)}; the receiver keeps other types.")
    lines += [
        "",
        f"Notification (saved as {_shown(saved)}):",
        json.dumps(body, indent=2, ensure_ascii=False),
        "",
        "Send it to the receiver `make run` serves:",
        f"  curl -sS -X POST {shlex.quote(endpoint)} -H 'Content-Type: application/json' "
        f"--data-binary @{shlex.quote(_shown(saved))} -w '\\nHTTP %{{http_code}}\\n'",
        "",
        "Or in requests.http, replace the @exportedFileUrl line with:",
        f"  @exportedFileUrl = {url}",
        "(its first request keeps the sample's taskId: your file is then a re-export of that task and",
        " replaces the sample PDF; change that taskId to store it as a task of its own)",
    ]
    port = receiver.rstrip("/").rsplit(":", 1)[-1]
    if port.isdigit() and not _answers(int(port)):
        lines.append(f"(Nothing answers on {receiver} yet: is `make run` still starting?)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make share FILE=...", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("file", type=Path, nargs="?", help="the file to share (PDF, JPEG or PNG)")
    parser.add_argument("--hours", type=float, default=24, help="how long the link works (default 24, at most 168)")
    parser.add_argument("--content-type", help="exportedFileContentType (default: guessed from the file name)")
    parser.add_argument(
        "--blob-port", type=int, help="Azurite's blob port (default: the running `make run`'s, else 10000)"
    )
    parser.add_argument(
        "--receiver", help="where the receiver listens (default: the running `make run`'s, else http://127.0.0.1:7071)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / ".azurite" / "shared", help="where to save the JSON")
    args = parser.parse_args(argv)
    running = read_state() or {}  # `make run PORT=... AZURITE_PORTS=...` says which ports it uses
    if args.blob_port is None:
        args.blob_port = int((running.get("azurite_ports") or DEFAULT_AZURITE_PORTS)[0])
    if args.receiver is None:
        args.receiver = f"http://127.0.0.1:{running.get('port') or DEFAULT_HOST_PORT}"
    if args.file is None:
        print("make share: say which file, e.g. `make share FILE=scan.pdf`", file=sys.stderr)
        return 2
    try:
        lines = share(
            args.file,
            hours=args.hours,
            content_type=args.content_type,
            blob_port=args.blob_port,
            receiver=args.receiver,
            out=args.out,
        )
    except ShareError as error:
        print(f"make share: {error}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
