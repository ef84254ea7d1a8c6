"""The receiver's use cases: a delivery and a health check, from plain values to an :class:`Outcome`."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from datetime import datetime

from . import outcome
from .delivery import CopyFailed, Delivered, NotStored, Progress, deliver
from .outcome import Outcome
from .payload import MAX_ID_LENGTH, PayloadError, parse_notification
from .plan import CopyPlan, make_plan
from .runtime import Runtime
from .settings import Settings, SettingsError
from .source import SourceError, check_source, link_secret_pattern, redact, without_secrets
from .store import BlobStore, StoreError
from .telemetry import Record, recording
from .transitions import UNREAD, Step, record_manifest

log = logging.getLogger("receiver")

# Time for storage round trips on top of COPY_WAIT_SECONDS; the answer stays well inside 60 s.
STORAGE_BUDGET_SECONDS = 25.0
_JSON_TYPES = ("application/json", "text/json")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _is_json(content_type: str) -> bool:
    base = content_type.split(";", 1)[0].strip().lower()
    return base in _JSON_TYPES or base.endswith("+json")


def prepare(body: bytes, headers: Mapping[str, str], settings: Settings, *, now: datetime) -> CopyPlan | Outcome:
    """Everything decided before storage: a plan to carry out, or the 4xx answer. Pure."""
    content_type = _header(headers, "content-type")
    if content_type and not _is_json(content_type):
        return outcome.rejected(415, "unsupported-media-type", "The notification must be sent as application/json.")
    if len(body) > settings.max_body_bytes:
        return outcome.rejected(
            413, "payload-too-large", f"The notification is larger than {settings.max_body_bytes} bytes."
        )
    try:
        notification = parse_notification(body)
    except PayloadError as exc:
        return outcome.rejected(400, exc.code, exc.message, details=exc.details or None)
    try:
        link = check_source(
            notification.exported_file_url,
            payload_expires_on=notification.exported_file_expires_on,
            allowed_hosts=settings.allowed_source_hosts,
            allow_http=settings.allow_http_sources,
            now=now,
        )
    except SourceError as exc:
        status = 410 if exc.code == "link-expired" else 400
        return outcome.rejected(status, exc.code, exc.message, taskId=notification.task_id)
    return make_plan(notification, link, settings, now=now)


async def handle_delivery(body: bytes, headers: Mapping[str, str], *, runtime: Runtime, now: datetime) -> Outcome:
    """Validate one notification and store its file; every path ends in an Outcome and one record."""
    with recording("delivery") as record:
        result = await _handle(body, headers, runtime=runtime, now=now, record=record)
        record.answered(result.status_code, result.body)
        if record.task_id is None:
            record.task_id = result.body.get("taskId") or _task_hint(body)
        return result


async def _handle(
    body: bytes, headers: Mapping[str, str], *, runtime: Runtime, now: datetime, record: Record
) -> Outcome:
    try:
        settings = runtime.settings()
    except SettingsError as exc:
        record.reason, record.final_failure = exc.message, True
        return outcome.failed(500, "misconfigured", exc.message)
    plan = prepare(body, headers, settings, now=now)
    if isinstance(plan, Outcome):
        return plan
    record.task_id, record.workspace_id = plan.task_id, plan.workspace_id
    record.blob = f"{settings.destination_container}/{plan.blob_name}"
    record.delivery = plan.delivery
    progress = Progress()
    try:
        store = runtime.store()
        async with asyncio.timeout(settings.copy_wait_seconds + STORAGE_BUDGET_SECONDS):
            result = await deliver(
                store,
                plan,
                now=now,
                wait_seconds=settings.copy_wait_seconds,
                sync_copy_max_mib=settings.sync_copy_max_mib,
                progress=progress,
            )
    except SettingsError as exc:
        record.reason, record.final_failure = exc.message, True
        return outcome.failed(500, "misconfigured", exc.message, taskId=plan.task_id)
    except CopyFailed as exc:
        record.reason = exc.message
        return outcome.failed(
            502,
            "copy-failed",
            f"{exc.message} The link may have been revoked or the file removed; export the document again.",
            taskId=plan.task_id,
        )
    except NotStored as exc:
        record.reason = exc.message
        if exc.track:
            await _track_unconfirmed(store, plan, progress, now=now, status=503)
        return _unavailable(plan, exc.message, settings, progress, track=exc.track)
    except StoreError as exc:
        record.reason = exc.message
        if exc.kind == "unavailable" and progress.copy_sent:
            await _track_unconfirmed(store, plan, progress, now=now, status=503)
            return _unavailable(plan, _AFTER_COPY, settings, progress, track=True)
        record.final_failure = exc.kind in ("misconfigured", "rejected")
        failure = _storage_failure(plan, exc)
        if progress.copy_sent and exc.kind != "source":
            # A later step was refused after a copy that may have landed: the queue function tracks it.
            # (A refusal is an answer: the refused request itself did nothing, so no pending record.)
            return Outcome(failure.status_code, failure.body, _verification(plan, settings, progress))
        return failure
    except TimeoutError:
        record.reason = "timed out" + (" after the copy was sent" if progress.copy_sent else "")
        if progress.copy_sent:
            await _track_unconfirmed(store, plan, progress, now=now, status=503)
        return _unavailable(
            plan, _AFTER_COPY if progress.copy_sent else _NO_ANSWER, settings, progress, track=progress.copy_sent
        )
    except Exception as exc:  # a bug must still answer in JSON, and never with a stack trace or a SAS
        record.reason, record.final_failure = f"unexpected {type(exc).__name__}: {redact(str(exc))}", True
        return outcome.failed(
            500,
            "internal-error",
            "The receiver failed unexpectedly. Send the document again; "
            "if it keeps failing, check the function's logs.",
            taskId=plan.task_id,
        )
    finally:
        record.copy_mode = progress.mode if progress.copy_sent else None
        record.copy_sent, record.copy_id = progress.copy_sent, progress.copy_id
    return _delivered(plan, result, store.blob_url(plan.blob_name), settings.destination_container)


_NO_ANSWER = "Azure Storage did not answer in time. Send the document again later."
_AFTER_COPY = (
    "Azure Storage did not confirm that the file was stored. The receiver checks the copy again by itself; "
    "send the document again later to have it archived."
)


# Time left for recording a copy whose answer was lost, after the delivery's own budget ran out.
TRACKING_BUDGET_SECONDS = 5.0


async def _track_unconfirmed(
    store: BlobStore, plan: CopyPlan, progress: Progress, *, now: datetime, status: int
) -> None:
    """A copy was sent and its outcome is unknown: leave a ``pending`` manifest, so the copy is findable
    from storage alone (the reconciliation), not only through the queue message that may be lost.
    Written only while the blob is this delivery's or still absent (the copy may yet land); never
    over a newer export's manifest. Best effort: storage may be what failed."""
    if plan.manifest_name is None:
        return
    try:
        async with asyncio.timeout(TRACKING_BUDGET_SECONDS):
            await record_manifest(
                store,
                plan,
                copy_status="pending",
                step=Step("webhook", now, "unconfirmed", {"status": status, "copyId": progress.copy_id}),
                copy_id=progress.copy_id,
                tags_written=progress.tags_written,
                snapshot=UNREAD,
                confirmed=False,
                absent_ok=True,
                replaced=progress.replaces,
                previous=progress.previous,
            )
    except (StoreError, TimeoutError) as exc:
        log.warning(
            "could not record the unconfirmed copy of %s in storage (%s); its queue message tracks it",
            plan.blob_name,
            type(exc).__name__,
        )


def _task_hint(body: bytes) -> str | None:
    """The taskId of a rejected body, when there is one to name in the log line (never more)."""
    try:
        document = json.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    task = document.get("taskId") if isinstance(document, dict) else None
    if not isinstance(task, str | int) or isinstance(task, bool):
        return None
    url = document.get("exportedFileUrl")
    text = str(task)[:MAX_ID_LENGTH]
    return redact(without_secrets(text, link_secret_pattern(url)) if isinstance(url, str) else text)


def _unavailable(plan: CopyPlan, message: str, settings: Settings, progress: Progress, *, track: bool) -> Outcome:
    """503; with ``track``, the verification message that finishes or removes the blob later."""
    failed = outcome.failed(503, "storage-unavailable", message, taskId=plan.task_id)
    return Outcome(failed.status_code, failed.body, _verification(plan, settings, progress) if track else None)


def _verification(plan: CopyPlan, settings: Settings, progress: Progress) -> str:
    """The queue message that finishes, restarts or removes this delivery's blob later."""
    from .verification import verification_message  # only the tracked paths need it

    return verification_message(
        plan,
        progress.copy_id,
        settings.destination_container,
        tags_written=progress.tags_written,
        replaced=progress.replaces,
    )


def _storage_failure(plan: CopyPlan, exc: StoreError) -> Outcome:
    if exc.kind == "source":
        return outcome.failed(
            502,
            "copy-failed",
            "Azure Storage could not read the exported file (the link was refused or the file no longer exists). "
            "Export the document again from SmartDocumentor.",
            taskId=plan.task_id,
        )
    if exc.kind == "misconfigured":
        return outcome.failed(500, "misconfigured", exc.message, taskId=plan.task_id)
    if exc.kind == "rejected":
        return outcome.failed(
            500,
            "internal-error",
            f"{exc.message} This is a receiver bug, not an outage: report it with the taskId.",
            taskId=plan.task_id,
        )
    return outcome.failed(
        503,
        "storage-unavailable",
        "The customer's storage is unavailable or busy right now. Send the document again in a few minutes.",
        taskId=plan.task_id,
    )


def _delivered(plan: CopyPlan, result: Delivered, url: str, container: str) -> Outcome:
    blob = f"{container}/{result.blob_name}"
    verification = None
    if result.kind == "copying":
        from .verification import verification_message  # only the 202 path needs it

        verification = verification_message(plan, result.copy_id, container, tags_written=result.tags_written)
    notes = []
    if not result.tags_written and plan.tags:
        notes.append(
            "This storage account does not support blob index tags: the tags were kept in the blob's "
            "metadata (indextags) and in the manifest."
        )
    elif plan.tags_dropped:
        notes.append(
            f"{len(plan.tags_dropped)} metadata entries did not fit in the 10 index tags; they are in the manifest."
        )
    note = " ".join(notes) or None
    return outcome.delivered(
        result.kind,
        task_id=plan.task_id,
        blob=blob,
        url=url,
        copy_id=result.copy_id,
        note=note,
        verification=verification,
    )


_HEALTH_MISCONFIGURED = "The receiver's settings are missing or invalid. The function's log (ERROR) names the setting."
_HEALTH_UNAVAILABLE = (
    "The destination storage cannot be used right now (unreachable, or access refused). "
    "The function's log (ERROR) says why."
)


async def check_health(*, runtime: Runtime) -> Outcome:
    """200 when the settings are valid and the destination container is reachable (created if missing), else 503."""
    try:
        runtime.settings()
        store = runtime.store()
        await store.ensure_container()
        await store.probe()
    # Anyone may call /api/health: the answer says what kind of problem in general words (CONTRACT 3), and
    # the details (the setting, the account, the container, the role) go to the log at ERROR.
    except SettingsError as exc:
        log.error("health: %s", exc.message)
        return Outcome(503, {"status": "unhealthy", "error": "misconfigured", "message": _HEALTH_MISCONFIGURED})
    except StoreError as exc:
        log.error("health: the destination container is not usable: %s", exc.message)
        return Outcome(503, {"status": "unhealthy", "error": "storage-unavailable", "message": _HEALTH_UNAVAILABLE})
    except Exception as exc:  # health must answer, whatever broke
        log.error("health check failed unexpectedly: %s %s", type(exc).__name__, redact(str(exc)))
        return Outcome(
            503, {"status": "unhealthy", "error": "internal-error", "message": "The health check failed unexpectedly."}
        )
    return Outcome(200, {"status": "ok", "message": "Settings are valid and the destination container is reachable."})
