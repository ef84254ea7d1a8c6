"""``python -m ops smoke``: after ``azd up``, prove the deployment end to end, one line per check.

What it does, in order (docs/deploying.md, "Smoke test"):

1. ``health``: GET /api/health answers 200 ``ok``.
2. ``export``: uploads a small sample PDF (devtools/sample_pdf.py) to a scratch container of its own
   (``smoke-<random>``) and puts it behind a short-lived read-only **user-delegation SAS** (your
   identity, no account key: ``get_user_delegation_key``). Given a connection string instead (Azurite,
   the tests), it signs an account-key SAS and says so.
3. ``delivery``: POSTs the notification SmartDocumentor would send to the webhook with the function key
   (header ``x-functions-key``); expects 200 ``stored`` (or 202 ``copying`` that finishes in time).
4. ``stored``: the blob holds the sample's bytes, its index tags and ``delivery`` metadata are the
   receiver's, and the manifest ``<blob>.json`` says ``success`` for this very delivery.
5. ``duplicate``: the same notification again answers 200 ``duplicate``.
6. ``timer``: the reconciliation timer's last run, from the host's status blob
   (``azure-webjobs-hosts/timers/<host id>/<function>/status``) when your identity may read it.
7. ``telemetry``: with ``--app-insights`` (the Application Insights resource id) and
   ``azure-monitor-query`` installed, that both deliveries' records arrived (ingestion takes minutes).
8. ``cleanup``: removes the scratch container and, conditionally (If-Match on what it checked), the
   stored test blob and its manifest.

Exit code 0 when every check is ``ok`` (a ``skip`` says what it could not check and does not fail the
run), 1 when a check failed, 2 for a bad command line. The function key and the SAS are never printed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO
from urllib.parse import urlsplit

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError
from azure.storage.blob import BlobSasPermissions, BlobServiceClient, ContentSettings, generate_blob_sas

from devtools.sample_pdf import anonymized_pdf

WEBHOOK_PATH = "/api/smartdocumentor/anonymization"
HEALTH_PATH = "/api/health"
TIMER_FUNCTION = "reconcile_deliveries"
HOSTS_CONTAINER = "azure-webjobs-hosts"
# A workspaceId of its own, so an operator can tell the smoke test's documents from real ones.
SMOKE_WORKSPACE = "5a0e7e57-0000-4000-8000-00000000500e"
SAS_MINUTES = 30  # the link only has to outlive the copy: short-lived on purpose
HTTP_TIMEOUT = 90.0  # the receiver answers within about 45 s; a cold start adds some
KEY_HINT = 'pass --key or set FUNCTION_KEY: export FUNCTION_KEY="$(sh -c "$(azd env get-value WEBHOOK_KEY_COMMAND)")"'


@dataclass
class Report:
    """The lines printed so far; ``failed`` once any check failed."""

    out: TextIO
    failed: bool = False
    lines: list[str] = field(default_factory=list)

    def line(self, verdict: str, check: str, text: str) -> None:
        if verdict == "FAIL":
            self.failed = True
        line = f"{verdict:<4}  {check:<10} {text}"
        self.lines.append(line)
        self.out.write(line + "\n")
        self.out.flush()


class CheckFailed(Exception):
    """A check that later checks depend on failed (already reported)."""


@dataclass
class Answer:
    status: int
    body: dict[str, Any]


def _post_or_get(url: str, *, key: str | None, body: bytes | None = None) -> Answer:
    """One HTTP call; the key travels in a header, so it is in no URL that could be printed."""
    headers = {"Accept": "application/json"}
    if key:
        headers["x-functions-key"] = key
    if body is not None:
        headers["Content-Type"] = "application/json"
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError("only http and https URLs")
    method = "POST" if body is not None else "GET"
    request = urllib.request.Request(url, data=body, headers=headers, method=method)  # noqa: S310 - checked above
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:  # noqa: S310 - checked above
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    except (urllib.error.URLError, OSError) as error:  # nothing answered: no status, and no URL in the text
        reason = getattr(error, "reason", error)
        return Answer(0, {"message": f"no answer from {urlsplit(url).netloc} ({type(reason).__name__})"})
    try:
        parsed = json.loads(raw.decode("utf-8")) if raw else {}
    except (UnicodeDecodeError, ValueError):
        parsed = {}
    return Answer(status, parsed if isinstance(parsed, dict) else {})


def _said(answer: Answer) -> str:
    """What an answer said, for a check line (the receiver's messages never hold a secret)."""
    if answer.status == 401:
        return "401 from the Functions host: the function key is missing or wrong (" + KEY_HINT + ")"
    if answer.status == 0:
        return str(answer.body.get("message"))
    parts = [str(answer.status), str(answer.body.get("status") or "")]
    if answer.body.get("error"):
        parts.append(str(answer.body["error"]))
    text = " ".join(part for part in parts if part)
    message = answer.body.get("message")
    return f"{text}: {message}" if message else text


def base_url(url: str) -> str:
    """The function app's base URL from its base, health or webhook URL (query dropped)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("--url must be the function app's https URL, e.g. https://<app>.azurewebsites.net")
    path = parts.path.split("/api/", 1)[0].rstrip("/")
    if path == "/api":
        path = ""
    return f"{parts.scheme}://{parts.netloc}{path}"


def split_container_url(url: str) -> tuple[str, str | None]:
    """azd's DESTINATION_CONTAINER_URL (https://<account>.blob.core.windows.net/<container>): account URL, container."""
    parts = urlsplit(url.strip())
    return f"{parts.scheme}://{parts.netloc}", parts.path.strip("/").split("/")[0] or None


def _client(connection_string: str | None, account_url: str | None) -> BlobServiceClient:
    if connection_string:
        return BlobServiceClient.from_connection_string(connection_string)
    if not account_url:
        raise ValueError("no storage given")
    from azure.identity import DefaultAzureCredential

    return BlobServiceClient(
        account_url, credential=DefaultAzureCredential(exclude_interactive_browser_credential=True)
    )


def _uses_key(client: BlobServiceClient) -> bool:
    return client.credential is not None and hasattr(client.credential, "account_key")


@dataclass
class Export:
    client: BlobServiceClient
    container: str
    name: str
    url: str  # holds the SAS: never printed, logged or put in an exception
    kind: str


def publish_sample(client: BlobServiceClient, data: bytes, now: datetime) -> Export:
    """The sample in a new scratch container behind a read-only SAS of SAS_MINUTES."""
    container = f"smoke-{uuid.uuid4().hex[:12]}"
    name = "ops-smoke-sample.pdf"
    client.create_container(container)
    blob = client.get_blob_client(container, name)
    blob.upload_blob(data, content_settings=ContentSettings(content_type="application/pdf"))
    start, expiry = now - timedelta(minutes=5), now + timedelta(minutes=SAS_MINUTES)
    account = str(client.account_name)
    if _uses_key(client):
        # Azurite answers Get User Delegation Key only to OAuth over https; the tests' Azurite is http.
        sas = generate_blob_sas(
            account,
            container,
            name,
            account_key=client.credential.account_key,
            permission=BlobSasPermissions(read=True),
            start=start,
            expiry=expiry,
        )
        kind = "account-key SAS (a connection string was given)"
    else:
        key = client.get_user_delegation_key(start, expiry)
        sas = generate_blob_sas(
            account,
            container,
            name,
            user_delegation_key=key,
            permission=BlobSasPermissions(read=True),
            start=start,
            expiry=expiry,
        )
        kind = "user-delegation SAS (your identity, no account key)"
    return Export(client, container, name, f"{blob.url}?{sas}", kind)


def sample_notification(url: str, expires_on: datetime, task_id: str) -> dict[str, Any]:
    """What SmartDocumentor's "Webhook Url to File (Anonymization)" sends (README, sample notification)."""
    return {
        "taskId": task_id,
        "taskNumber": 1,
        "workspaceId": SMOKE_WORKSPACE,
        "totalPages": 1,
        "displayName": "ops smoke test.pdf",
        "exportedFileUrl": url,
        "exportedFileContentType": "application/pdf",
        "exportedFileExpiresOn": expires_on.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "metadata": {"smokeTest": "python -m ops smoke"},
    }


@dataclass
class Stored:
    """What the ``stored`` check read, so cleanup deletes exactly that (If-Match)."""

    name: str
    etag: str | None = None
    manifest_etag: str | None = None


def check_stored(
    container: Any, name: str, *, data: bytes, delivery: str, task_id: str, wait: float, stored: Stored
) -> str:
    """Problems with the stored blob and manifest, as one sentence; empty when all is right."""
    blob = container.get_blob_client(name)
    manifest_client = container.get_blob_client(f"{name}.json")
    deadline = time.monotonic() + wait
    while True:  # a 202 "copying" finishes in the background: wait for its manifest to conclude
        try:
            manifest_download = manifest_client.download_blob()
            manifest = json.loads(manifest_download.readall())
            stored.manifest_etag = manifest_download.properties.etag
        except ResourceNotFoundError:
            manifest = {}
        if manifest.get("copyStatus") != "pending" or time.monotonic() > deadline:
            break
        time.sleep(2)
    problems = []
    try:
        download = blob.download_blob()
        content = download.readall()
        properties = download.properties
        stored.etag = properties.etag
    except ResourceNotFoundError:
        return f"the blob {name} is missing"
    if content != data:
        problems.append(f"its bytes differ from the sample's ({len(content)} bytes, sent {len(data)})")
    if properties.content_settings.content_type != "application/pdf":
        problems.append(f"its Content-Type is {properties.content_settings.content_type}")
    if (properties.metadata or {}).get("delivery") != delivery:
        problems.append("its metadata 'delivery' does not name this delivery")
    try:
        tags = blob.get_blob_tags()
    except HttpResponseError as error:
        tags = {}
        problems.append(f"its index tags could not be read ({_storage_reason(error)})")
    else:
        if tags.get("taskId") != task_id or tags.get("workspaceId") != SMOKE_WORKSPACE:
            problems.append(f"its index tags are not the receiver's (taskId/workspaceId: {sorted(tags)})")
    if not manifest:
        problems.append("its manifest is missing")
    else:
        if manifest.get("copyStatus") != "success":
            problems.append(f"its manifest says copyStatus {manifest.get('copyStatus')!r}, not 'success'")
        if manifest.get("delivery") != delivery or manifest.get("taskId") != task_id:
            problems.append("its manifest describes another delivery")
    return "; ".join(problems)


def check_timer(hosts: BlobServiceClient, *, now: datetime, max_age: timedelta) -> tuple[str, str]:
    """(verdict, text) for the reconciliation timer, from the status blob the host keeps for it."""
    container = hosts.get_container_client(HOSTS_CONTAINER)
    found: list[tuple[str, dict[str, Any]]] = []
    try:
        for item in container.list_blobs(name_starts_with="timers/"):
            parts = item.name.split("/")
            if parts[-1] == "status" and any(part.endswith(TIMER_FUNCTION) for part in parts):
                found.append((item.name, json.loads(container.get_blob_client(item.name).download_blob().readall())))
    except ResourceNotFoundError:  # no azure-webjobs-hosts container: no host has kept any state here yet
        found = []
    if not found:
        return "skip", (
            f"could not check: no status blob for {TIMER_FUNCTION} in the host storage yet, so the timer has not "
            "run (a new deployment: it runs on RECONCILE_SCHEDULE, every 10 minutes by default; the local host "
            "of `make run` keeps no timer status: `ops pending` shows its last run)"
        )
    last_text = max(str(status.get("Last") or "") for _, status in found)
    if not last_text:
        return "skip", f"the timer's status blob names no last run yet ({TIMER_FUNCTION})"
    last = _parse_time(last_text)
    if last is None:
        return "skip", f"could not read the timer's last run from its status blob ({last_text[:40]!r})"
    age = now - last
    minutes = int(age.total_seconds() // 60)
    if age > max_age:
        return "FAIL", (
            f"{TIMER_FUNCTION} last ran {minutes} min ago ({last_text}), "
            f"more than {int(max_age.total_seconds() // 60)}: "
            "is the app running? Look for errors in Application Insights"
        )
    return "ok", f"{TIMER_FUNCTION} last ran {minutes} min ago ({last_text})"


def _parse_time(text: str) -> datetime | None:
    # The host writes e.g. 2026-12-05T14:10:00.0061232+00:00 (seven fraction digits).
    head, sep, rest = text.partition(".")
    if sep:
        digits = "".join(ch for ch in rest if ch.isdigit())
        zone = rest[len(digits) :]
        text = f"{head}.{digits[:6]}{zone}"
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def telemetry_query(task_id: str) -> str:
    return (
        "traces | where timestamp > ago(2h) "
        f"| where tostring(customDimensions['receiver.taskId']) == '{task_id}' "
        "| where tostring(customDimensions['receiver.operation']) == 'delivery' "
        "| summarize records = count() by outcome = tostring(customDimensions['receiver.outcome'])"
    )


def check_telemetry(resource_id: str, task_id: str, *, wait: float) -> tuple[str, str]:
    """(verdict, text): did the delivery records of this task reach Application Insights?"""
    try:
        from azure.identity import DefaultAzureCredential
        from azure.monitor.query import LogsQueryClient, LogsQueryStatus
    except ImportError:
        return "skip", "azure-monitor-query is not installed: pip install -r requirements-ops.txt"
    client = LogsQueryClient(DefaultAzureCredential(exclude_interactive_browser_credential=True))
    deadline = time.monotonic() + wait
    seen: dict[str, int] = {}
    while True:
        result: Any = client.query_resource(resource_id, telemetry_query(task_id), timespan=timedelta(hours=2))
        if result.status == LogsQueryStatus.SUCCESS and result.tables:
            seen = {str(row[0]): int(row[1]) for row in result.tables[0].rows}
        if {"stored", "duplicate"} <= set(seen) or time.monotonic() > deadline:
            break
        time.sleep(15)
    if {"stored", "duplicate"} <= set(seen):
        return "ok", "Application Insights has the records of both deliveries (stored, duplicate)"
    return "FAIL", (
        f"after {int(wait)} s Application Insights shows {seen or 'no records'} for this task: ingestion can "
        "take several minutes (try --telemetry-wait 600); otherwise check PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"
    )


def _storage_reason(error: Exception) -> str:
    """Why a storage call failed, for a check line: status and code only (never a URL or its query)."""
    if isinstance(error, HttpResponseError) and error.status_code is not None:
        raw = getattr(error, "error_code", None)
        code = getattr(raw, "value", raw)
        advice = ""
        if error.status_code == 403 and code == "AuthorizationPermissionMismatch":
            advice = ": your identity lacks a data role there"
        elif error.status_code == 403:
            advice = ": check the key, the role, or the account's firewall"
        return f"{error.status_code} {code or ''}".strip() + advice
    return type(error).__name__


def _option(args: argparse.Namespace, environ: Mapping[str, str], name: str, *env: str) -> str | None:
    value = getattr(args, name)
    if value:
        return str(value)
    for variable in env:
        if environ.get(variable):
            return environ[variable]
    return None


def _host_storage(environ: Mapping[str, str], args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(connection string, blob account URL) of the Functions host storage, from options or app settings."""
    connection = args.host_connection_string or environ.get("AzureWebJobsStorage")
    if connection == "UseDevelopmentStorage=true":
        connection = None  # the Azurite defaults; ops gives them explicitly
    url = args.host_account_url or environ.get("AzureWebJobsStorage__blobServiceUri")
    if not url and environ.get("AzureWebJobsStorage__accountName"):
        url = f"https://{environ['AzureWebJobsStorage__accountName']}.blob.core.windows.net"
    return connection, url


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The smoke command's options (ops/cli.py registers the command with these)."""
    where = parser.add_argument_group("the deployment (azd env get-values has them)")
    where.add_argument("--url", help="the function app's URL (base, health or webhook URL; env WEBHOOK_URL)")
    where.add_argument(
        "--key", help="the webhook's function key (env FUNCTION_KEY; never printed; an env var keeps it out of ps)"
    )
    where.add_argument(
        "--account-url",
        help="the destination account, as you (env DESTINATION_ACCOUNT_URL, or azd's DESTINATION_CONTAINER_URL)",
    )
    where.add_argument(
        "--connection-string",
        metavar="CS",
        help="the destination by connection string (env DESTINATION_CONNECTION_STRING)",
    )
    where.add_argument("--container", help="the destination container (env DESTINATION_CONTAINER; smartdocumentor)")
    where.add_argument(
        "--source-account-url",
        help="where to put the scratch export (default: the destination account; "
        "its host must be in ALLOWED_SOURCE_HOSTS)",
    )
    where.add_argument(
        "--source-connection-string", metavar="CS", help="the scratch export's account by connection string"
    )
    where.add_argument(
        "--host-account-url",
        help="the Functions host storage's blob URL, for the timer check (env AzureWebJobsStorage__blobServiceUri)",
    )
    where.add_argument("--host-connection-string", metavar="CS", help="the host storage by connection string")
    where.add_argument(
        "--app-insights",
        metavar="RESOURCE_ID",
        help="Application Insights resource id (env APPLICATIONINSIGHTS_RESOURCE_ID)",
    )
    tuning = parser.add_argument_group("waiting")
    tuning.add_argument("--telemetry-wait", type=float, default=300, help="seconds to wait for the records (300)")
    tuning.add_argument("--copy-wait", type=float, default=120, help="seconds to wait for a 202 copy to finish (120)")
    tuning.add_argument(
        "--timer-max-age", type=float, default=30, help="minutes since the timer's last run still ok (30)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ops smoke", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return parser


def smoke(
    args: argparse.Namespace,
    environ: Mapping[str, str],
    out: TextIO,
    *,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> int:
    """Run every check and print one line each; 0 when none failed, 1 otherwise."""
    report = Report(out)
    url = _option(args, environ, "url", "WEBHOOK_URL", "HEALTH_URL")
    if not url:
        report.line("FAIL", "setup", "no function app URL: pass --url or set WEBHOOK_URL (azd env get-values)")
        return 1
    try:
        base = base_url(url)
    except ValueError as error:
        report.line("FAIL", "setup", str(error))
        return 1
    key = _option(args, environ, "key", "FUNCTION_KEY")
    destination_cs = _option(args, environ, "connection_string", "DESTINATION_CONNECTION_STRING")
    destination_url = None if destination_cs else _option(args, environ, "account_url", "DESTINATION_ACCOUNT_URL")
    container_name = _option(args, environ, "container", "DESTINATION_CONTAINER")
    if not destination_cs and not destination_url and environ.get("DESTINATION_CONTAINER_URL"):
        destination_url, from_url = split_container_url(environ["DESTINATION_CONTAINER_URL"])
        container_name = container_name or from_url
    container_name = container_name or "smartdocumentor"
    if not destination_cs and not destination_url:
        report.line(
            "FAIL",
            "setup",
            "no destination storage: pass --account-url https://<account>.blob.core.windows.net "
            "(or set DESTINATION_ACCOUNT_URL) to read what the receiver stored",
        )
        return 1
    if not key and urlsplit(base).hostname not in ("127.0.0.1", "localhost"):
        report.line("FAIL", "setup", "no function key: " + KEY_HINT)
        return 1

    health = _post_or_get(base + HEALTH_PATH, key=None)
    ok = health.status == 200 and health.body.get("status") == "ok"
    report.line("ok" if ok else "FAIL", "health", f"GET {HEALTH_PATH}: {_said(health)}")

    destination = _client(destination_cs, destination_url)
    source_cs = args.source_connection_string
    source = destination if not (source_cs or args.source_account_url) else _client(source_cs, args.source_account_url)
    data = anonymized_pdf()
    export: Export | None = None
    stored: Stored | None = None
    try:
        now = clock()
        try:
            export = publish_sample(source, data, now)
        except (AzureError, ValueError) as error:
            report.line(
                "FAIL",
                "export",
                f"could not put the sample in a scratch container of {source.account_name} ({_storage_reason(error)}); "
                "your identity needs Storage Blob Data Contributor there (it creates a container and asks "
                "for a user-delegation key)",
            )
            raise CheckFailed from None
        report.line(
            "ok",
            "export",
            f"sample PDF ({len(data)} bytes) in {source.account_name}/{export.container} behind a "
            f"{SAS_MINUTES}-minute read-only {export.kind}",
        )
        task_id = str(uuid.uuid4())
        body = json.dumps(sample_notification(export.url, now + timedelta(minutes=SAS_MINUTES), task_id)).encode()
        delivery = hashlib.sha256(export.url.encode("utf-8")).hexdigest()

        first = _post_or_get(base + WEBHOOK_PATH, key=key, body=body)
        accepted = (first.status, first.body.get("status")) in ((200, "stored"), (202, "copying"))
        report.line("ok" if accepted else "FAIL", "delivery", f"POST {WEBHOOK_PATH} (task {task_id}): {_said(first)}")
        if first.body.get("error") == "source-not-allowed":
            report.line(
                "FAIL",
                "delivery",
                f"ALLOWED_SOURCE_HOSTS does not allow {urlsplit(export.url).netloc}: pass --source-account-url "
                "an account it allows, or add that host while you run the smoke test",
            )
        blob = str(first.body.get("blob") or "")
        if not accepted or "/" not in blob:
            raise CheckFailed
        stored = Stored(blob.split("/", 1)[1])
        container = destination.get_container_client(container_name)
        try:
            problems = check_stored(
                container,
                stored.name,
                data=data,
                delivery=delivery,
                task_id=task_id,
                wait=args.copy_wait,
                stored=stored,
            )
        except AzureError as error:
            problems = f"could not read it ({_storage_reason(error)}): you need Storage Blob Data Reader or more"
        report.line(
            "FAIL" if problems else "ok",
            "stored",
            f"{blob}: {problems}"
            if problems
            else f"{blob}: the sample's bytes, index tags, metadata, manifest success",
        )

        again = _post_or_get(base + WEBHOOK_PATH, key=key, body=body)
        duplicate = again.status == 200 and again.body.get("status") == "duplicate"
        report.line("ok" if duplicate else "FAIL", "duplicate", f"the same notification again: {_said(again)}")

        _timer(args, environ, report, clock())
        _telemetry(args, environ, report, task_id)
    except CheckFailed:
        pass
    finally:
        _cleanup(report, export, destination, container_name, stored)
    return 1 if report.failed else 0


def _timer(args: argparse.Namespace, environ: Mapping[str, str], report: Report, now: datetime) -> None:
    connection, url = _host_storage(environ, args)
    if not connection and not url:
        report.line(
            "skip", "timer", "could not check: no host storage (pass --host-account-url https://<host account>.blob...)"
        )
        return
    try:
        verdict, text = check_timer(_client(connection, url), now=now, max_age=timedelta(minutes=args.timer_max_age))
    except (AzureError, ValueError) as error:
        verdict, text = (
            "skip",
            (
                f"could not read the host storage's timer status ({_storage_reason(error)}); "
                "Storage Blob Data Reader on the host storage account lets it"
            ),
        )
    report.line(verdict, "timer", text)


def _telemetry(args: argparse.Namespace, environ: Mapping[str, str], report: Report, task_id: str) -> None:
    resource = _option(args, environ, "app_insights", "APPLICATIONINSIGHTS_RESOURCE_ID")
    if not resource:
        report.line(
            "skip",
            "telemetry",
            "could not check: pass --app-insights <Application Insights resource id> to see the records arrive",
        )
        return
    try:
        verdict, text = check_telemetry(resource, task_id, wait=args.telemetry_wait)
    except (AzureError, ValueError) as error:
        verdict, text = (
            "skip",
            (f"could not query Application Insights ({_storage_reason(error)}); Monitoring Reader on it lets it"),
        )
    report.line(verdict, "telemetry", text)


def _cleanup(
    report: Report, export: Export | None, destination: BlobServiceClient, container_name: str, stored: Stored | None
) -> None:
    removed, problems = [], []
    if stored is not None and stored.etag is not None:
        container = destination.get_container_client(container_name)
        for name, etag in ((stored.name, stored.etag), (f"{stored.name}.json", stored.manifest_etag)):
            if etag is None:
                continue
            try:
                container.get_blob_client(name).delete_blob(
                    etag=etag, match_condition=MatchConditions.IfNotModified, delete_snapshots="include"
                )
                removed.append(name)
            except ResourceNotFoundError:
                pass
            except AzureError as error:
                problems.append(f"{name} ({_storage_reason(error)})")
    elif stored is not None:
        problems.append(f"{stored.name} (not read, so not removed)")
    if export is not None:
        try:
            export.client.delete_container(export.container)
            removed.append(f"the scratch container {export.container}")
        except AzureError as error:
            problems.append(f"the scratch container {export.container} ({_storage_reason(error)})")
    if not removed and not problems:
        return
    if problems:
        report.line(
            "FAIL", "cleanup", "left behind: " + ", ".join(problems) + (f"; removed {len(removed)}" if removed else "")
        )
    else:
        report.line("ok", "cleanup", "removed " + ", ".join(removed))


def run(
    argv: Sequence[str] | None = None, *, environ: Mapping[str, str] | None = None, out: TextIO | None = None
) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    return smoke(args, os.environ if environ is None else environ, out or sys.stdout)
