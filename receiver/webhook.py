"""The receiver's use cases: a delivery and a health check, from plain values to an :class:`Outcome`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime

from . import outcome, verification
from .engine import Alerts, Job, Trace, alerts_of, drop_own_manifests, run
from .intake import arrival_job, is_large, prepare
from .machine import Answer
from .outcome import Outcome
from .payload import MAX_ID_LENGTH
from .plan import CopyPlan, renamed
from .runtime import Runtime
from .settings import Settings, SettingsError
from .source import MAX_SOURCE_URL_LENGTH, link_secret_pattern, redact, without_secrets
from .storage import Immutable, Storage, StoreError, UnreadableRecord
from .telemetry import Record, recording

log = logging.getLogger("receiver")

# Time for storage round trips on top of COPY_WAIT_SECONDS; the answer stays well inside 60 s.
STORAGE_BUDGET_SECONDS = 25.0


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
        return outcome.failed(500, "misconfigured", f"{exc.message} {_ASK_OPERATOR}")
    plan = prepare(body, headers, settings, now=now)
    if isinstance(plan, Outcome):
        if plan.body.get("error") == "source-not-allowed":
            # The answer speaks to SmartDocumentor's users; the log names the setting for whoever runs this.
            record.reason = f"{plan.body.get('message')} (app setting ALLOWED_SOURCE_HOSTS / ALLOW_HTTP_SOURCES)"
        return plan
    record.task_id, record.workspace_id = plan.task_id, plan.workspace_id
    record.blob = f"{settings.destination_container}/{plan.blob_name}"
    record.delivery = plan.delivery
    trace = Trace()

    def decided() -> CopyPlan:  # the plan at the name the delivery was decided at (its record's, when not today's)
        return renamed(plan, trace.blob, settings) if trace.blob else plan

    def queued() -> str:  # the queue message, built only for the answers that send one (not on the common path)
        return verification.message(body, now, plan=decided())

    job: Job | None = None
    timed_out, alerts = False, Alerts([], [])
    budget_ends = asyncio.get_running_loop().time() + settings.copy_wait_seconds + STORAGE_BUDGET_SECONDS
    try:
        storage = runtime.store()
        async with asyncio.timeout_at(budget_ends):
            large = await is_large(storage, plan, settings)
            deadline = time.monotonic() + settings.copy_wait_seconds
            job = arrival_job(plan, settings, by="webhook", patient=False, large=large, deadline=deadline)
            answer, trace = await run(storage, job, now=now, trace=trace, wall=runtime.clock)
        if answer.kind in ("superseded", "failed") and trace.manifests:
            # A manifest it wrote whose file moved on meanwhile goes, in what the answer's time leaves (never past it).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(budget_ends):
                    await drop_own_manifests(storage, trace)
    except SettingsError as exc:
        record.reason, record.final_failure = exc.message, True
        return outcome.failed(500, "misconfigured", f"{exc.message} {_ASK_OPERATOR}", taskId=plan.task_id)
    except StoreError as exc:
        record.reason = exc.message
        record.final_failure = exc.kind in ("misconfigured", "rejected", "immutable")
        if exc.kind == "leased":  # it may lapse: the queue tries again when a copy was sent (it may have landed)
            message = queued() if trace.copy_sent else None
            if message is not None and _refers_to_record(message):
                message = None  # a large body's message is rebuilt from the record, which the lease may have kept out
            text = outcome.LEASED_QUEUED if message else outcome.LEASED
            return outcome.failed(503, "storage-unavailable", text, taskId=plan.task_id, verification=message)
        if trace.copy_sent and exc.kind == "unavailable" and exc.code not in ("fence-refused", "record-full"):
            # A copy may have landed: the queue function finishes it (or finds it did not).
            return _after_copy(plan.task_id, queued())
        return storage_failure(plan.task_id, exc)
    except TimeoutError:
        timed_out = True
        record.reason = "timed out" + (" after the copy was sent" if trace.copy_sent else "")
        if trace.copy_sent:
            return _after_copy(plan.task_id, queued())
        return outcome.failed(503, "storage-unavailable", _NO_ANSWER, taskId=plan.task_id)
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
        record.copy_mode = trace.mode if trace.copy_sent else None
        record.copy_sent = trace.copy_sent
        record.arrows = ",".join(trace.arrows)
        if job is not None:
            # One ERROR for what this request's changes failed that an earlier request accepted (maybe answered 2xx);
            # one whose outcome was not known is read back, unless the request's time ran out (its answer is bounded).
            try:
                async with asyncio.timeout_at(budget_ends):
                    alerts = await alerts_of(storage, job, trace, sender=True, read_back=not timed_out)
            except TimeoutError:  # the read-back did not fit in the answer's time: named as "may have failed"
                alerts = await alerts_of(storage, job, trace, sender=True, read_back=False)
            _alert_failed(record, alerts)
    if answer.error == "immutable":
        # Refused for good by a policy the document's owner set: a person decides (one ERROR).
        record.final_failure = True
        record.reason = outcome.refused_by(answer.reason or "retention policy")
        _alert_failed(record, alerts)
    record.blob = f"{settings.destination_container}/{decided().blob_name}"
    return answered(decided(), answer, storage, settings, queued)


def _alert_failed(record: Record, alerts: Alerts) -> None:
    """A delivery an earlier request accepted (maybe answered 2xx: a 202'd copy, or a current file an older late copy
    replaced) failed for good in this request: its answer goes to the sender, but SmartDocumentor archived the
    earlier 2xx (one ERROR)."""
    if not alerts:
        return
    record.final_failure = True
    said = alerts.said("this request's")
    if not (record.reason and said in record.reason):
        record.reason = "; ".join(filter(None, [said, record.reason]))


_ASK_OPERATOR = "Ask whoever runs the receiver to fix it, then send the document again."
_NO_ANSWER = "Azure Storage did not answer in time. Send the document again later."


def _after_copy(task_id: str, message: str) -> Outcome:
    """A copy was sent and not confirmed: the queue function finishes it. A large body's message is rebuilt
    from the record, which may not name the delivery yet: then nothing is promised but to send it again."""
    text = _NOT_CONFIRMED if _refers_to_record(message) else _AFTER_COPY
    return outcome.failed(503, "storage-unavailable", text, taskId=task_id, verification=message)


def _refers_to_record(message: str) -> bool:
    """Is it a large body's message, which the queue function rebuilds from the task record?"""
    return isinstance(verification.read_message(message.encode()), verification.Reference)


_NOT_CONFIRMED = "Azure Storage did not confirm that the file was stored. Send the document again later."
_AFTER_COPY = (
    "Azure Storage did not confirm that the file was stored. The receiver checks the copy again by itself; "
    "send the document again later to have it archived."
)


def answered(
    plan: CopyPlan, answer: Answer, storage: Storage, settings: Settings, message: Callable[[], str]
) -> Outcome:
    """The engine's answer as the webhook's HTTP answer."""
    blob, url = f"{settings.destination_container}/{plan.blob_name}", storage.url(plan.blob_name)
    if answer.kind in ("stored", "duplicate", "superseded"):
        note = None
        if plan.tags_dropped:
            note = (
                f"{len(plan.tags_dropped)} metadata entries did not fit in the 10 index tags; they are in the manifest."
            )
        if not storage.tags_supported and plan.tags:
            note = "This storage account has no blob index tags: the tags are in the manifest."
        return outcome.delivered(answer.kind, task_id=plan.task_id, blob=blob, url=url, note=note)
    if answer.kind == "copying" and answer.status == 202:
        return outcome.delivered("copying", task_id=plan.task_id, blob=blob, url=url, verification=message())
    if answer.error == "immutable":
        return outcome.failed(
            409, "immutable", outcome.refused_by(answer.reason or "retention policy"), taskId=plan.task_id
        )
    if answer.error == "name-taken":
        return outcome.failed(409, "name-taken", answer.reason or "", taskId=plan.task_id)
    if answer.error == "link-expired":
        return outcome.failed(
            410,
            "link-expired",
            "The file link expired before the copy could finish. Export the document again from SmartDocumentor.",
            taskId=plan.task_id,
        )
    if answer.error == "copy-failed":
        return outcome.failed(
            502,
            "copy-failed",
            f"{answer.reason} The link may have been revoked or the file removed; export the document again.",
            taskId=plan.task_id,
        )
    text = answer.reason or _AFTER_COPY
    return outcome.failed(
        503, "storage-unavailable", text, taskId=plan.task_id, verification=message() if answer.enqueue else None
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
    text = str(task)
    # Scrubbed whole, then cut: a cut through a signature would leave all but its end, which no pattern finds.
    if url is None:
        return redact(text)[:MAX_ID_LENGTH]  # no link, no secret of its own to repeat
    if not isinstance(url, str) or len(url) > MAX_SOURCE_URL_LENGTH:
        return None  # its secret's pattern is not built (a link in a list, or too long), so nothing may repeat it
    return redact(without_secrets(text, link_secret_pattern(url)))[:MAX_ID_LENGTH]


def storage_failure(task_id: str, exc: StoreError) -> Outcome:
    if exc.kind == "source":
        return outcome.failed(
            502,
            "copy-failed",
            "Azure Storage could not read the exported file (the link was refused or the file no longer exists). "
            "Export the document again from SmartDocumentor.",
            taskId=task_id,
        )
    if exc.kind == "immutable":
        policy, copied = (exc.policy, exc.copied) if isinstance(exc, Immutable) else ("retention policy", None)
        return outcome.failed(409, "immutable", outcome.refused_by(policy, copied), taskId=task_id)
    if exc.kind == "leased":
        return outcome.failed(503, "storage-unavailable", outcome.LEASED, taskId=task_id)
    if exc.code in ("fence-refused", "record-full"):  # its message says why, and when to send it again
        return outcome.failed(503, "storage-unavailable", exc.message, taskId=task_id)
    if exc.kind == "misconfigured":
        return outcome.failed(500, "misconfigured", f"{exc.message} {_ASK_OPERATOR}", taskId=task_id)
    if isinstance(exc, UnreadableRecord):
        return outcome.failed(500, "internal-error", f"{exc.message} {_ASK_OPERATOR}", taskId=task_id)
    if exc.kind == "rejected":
        return outcome.failed(
            500,
            "internal-error",
            f"{exc.message} This is a receiver bug, not an outage: report it with the taskId.",
            taskId=task_id,
        )
    return outcome.failed(
        503,
        "storage-unavailable",
        "The customer's storage is unavailable or busy right now. Send the document again in a few minutes.",
        taskId=task_id,
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
        # Without this, an account without index tags would say `indexTags: true` until its first delivery.
        check_account = getattr(store, "check_account", None)
        if check_account is not None:
            await check_account()
    # Anyone may call /api/health: the answer says what kind of problem in general words (docs/reference.md,
    # Endpoints), and the details (the setting, the account, the container, the role) go to the log at ERROR.
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
    # Which mode the receiver is in: an account without blob index tags (a hierarchical namespace) stores
    # everything without them, and says so here.
    return Outcome(
        200,
        {
            "status": "ok",
            "message": "Settings are valid and the destination container is reachable.",
            "indexTags": store.tags_supported,
        },
    )
