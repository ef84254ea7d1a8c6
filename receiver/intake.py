"""From a notification to the engine's job: parse and check it (pure), and what its copy needs.

Shared by the webhook and the queue function, which drive the same delivery.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from . import outcome
from .engine import Job
from .machine import Arrival, Notice
from .models import Driver
from .outcome import Outcome
from .payload import PayloadError, parse_notification
from .plan import CopyPlan, make_plan
from .settings import SYNC_COPY_LIMIT_MIB, Settings
from .source import SourceError, check_source
from .storage import Storage

MIB = 1024 * 1024
_JSON_TYPES = ("application/json", "text/json")


def _is_json(content_type: str) -> bool:
    base = content_type.split(";", 1)[0].strip().lower()
    return base in _JSON_TYPES or base.endswith("+json")


def prepare(
    body: bytes,
    headers: Mapping[str, str],
    settings: Settings,
    *,
    now: datetime,
    queued: bool = False,
    rebuilt: bool = False,
) -> CopyPlan | Outcome:
    """Everything decided before storage: a plan to carry out, or the 4xx answer. Pure. ``queued``: a queue
    message's body, which the webhook (or an earlier release) took: its size was checked as sent. ``rebuilt``: made
    again from what intake made of it (see :func:`receiver.payload.parse_notification`)."""
    content_type = next((value for key, value in headers.items() if key.lower() == "content-type"), None)
    if content_type and not _is_json(content_type):
        return outcome.rejected(
            415,
            "unsupported-media-type",
            "The notification must be sent as application/json. Check the webhook's content type in "
            "SmartDocumentor, then send the document again.",
        )
    if len(body) > settings.max_body_bytes and not queued:
        return outcome.rejected(
            413,
            "payload-too-large",
            f"The notification is larger than {settings.max_body_bytes} bytes. Check the webhook's body (its "
            "metadata) in SmartDocumentor, then send the document again.",
        )
    try:
        notification = parse_notification(body, queued=queued, rebuilt=rebuilt)
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


def arrival_job(
    plan: CopyPlan,
    settings: Settings,
    *,
    by: Driver,
    patient: bool,
    large: bool,
    deadline: float | None,
) -> Job:
    """The engine's job for one notification: the webhook's, or the queue function's (``patient``)."""
    notice = Notice(
        workspace_id=plan.workspace_id,
        task_id=plan.task_id,
        delivery=plan.delivery,
        blob=plan.blob_name,
        received_at=datetime.fromisoformat(str(plan.manifest["receivedAt"]).replace("Z", "+00:00")),
        link_expires_on=plan.source.expires_on,
        manifest=plan.manifest,
        large=large,
    )
    return Job(
        event=Arrival(notice, by=by, patient=patient),
        workspace_id=plan.workspace_id,
        task_id=plan.task_id,
        source_url=plan.source.url,
        metadata=plan.metadata,
        tags=plan.tags,
        content_type=plan.content_type,
        write_manifest=settings.write_manifest,
        deadline=deadline,
    )


async def is_large(storage: Storage, plan: CopyPlan, settings: Settings) -> bool:
    """Staged in blocks? Always with SYNC_COPY_MAX_MIB=0; up to the service's 256 MiB, the service
    itself refuses what Copy Blob From URL cannot take; a lower setting asks the source's size first."""
    if settings.sync_copy_max_mib <= 0:
        return True
    if settings.sync_copy_max_mib >= SYNC_COPY_LIMIT_MIB:
        return False
    source = await storage.source_version(plan.source.url)
    return source is not None and source.size > settings.sync_copy_max_mib * MIB
