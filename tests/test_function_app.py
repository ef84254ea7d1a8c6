"""The real function app (found through app.get_functions()) against a real Azurite."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from azure.functions.queue import QueueMessage
from azure.storage.blob import ContainerClient

from receiver.models import RECORD_PREFIX, State, TaskRecord, record_name
from receiver.reconciliation import reconcile_run
from receiver.runtime import RUNTIME
from receiver.store import RETRY_BACKOFF_VARIABLE
from receiver.verification import message

from .conftest import FUNCTIONS, PDF_BYTES, PNG_BYTES, Exports, Webhook, delivery_of, notification, run_verifier
from .faultproxy import FaultProxy, Match, Rule, is_overwrite_copy, is_record, is_record_read, is_record_write


@pytest.fixture(autouse=True)
def tiny_retry_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK's retries sleep a few milliseconds, not seconds (set before `configured` resets the runtime)."""
    monkeypatch.setenv(RETRY_BACKOFF_VARIABLE, "0.01")


def stored_blobs(destination: ContainerClient) -> list[str]:
    """Every blob in the container but the task records (see :func:`record_of`)."""
    if not destination.exists():
        return []
    return sorted(blob.name for blob in destination.list_blobs() if not blob.name.startswith(RECORD_PREFIX))


def record_names(destination: ContainerClient) -> list[str]:
    if not destination.exists():
        return []
    return sorted(blob.name for blob in destination.list_blobs(name_starts_with=RECORD_PREFIX))


def record_of(destination: ContainerClient, payload: dict[str, Any]) -> TaskRecord:
    """The task's record, read from the container as any driver reads it."""
    name = record_name(str(payload["workspaceId"]), str(payload["taskId"]))
    return TaskRecord.from_bytes(destination.get_blob_client(name).download_blob().readall())


def manifest_of(destination: ContainerClient, blob_name: str) -> dict[str, Any]:
    data = destination.get_blob_client(f"{blob_name}.json").download_blob().readall()
    document: dict[str, Any] = json.loads(data)
    return document


def blob_name_of(body: dict[str, Any], container: str) -> str:
    prefix = f"{container}/"
    assert body["blob"].startswith(prefix)
    return str(body["blob"][len(prefix) :])


def test_app_registers_the_contract_endpoints() -> None:
    functions = FUNCTIONS
    webhook: Any = functions["anonymization_webhook"].get_trigger()
    assert webhook.route == "smartdocumentor/anonymization"
    assert [getattr(m, "value", m) for m in webhook.methods] == ["POST"]
    assert str(webhook.auth_level).endswith("FUNCTION")
    health: Any = functions["health"].get_trigger()
    assert health.route == "health"
    assert str(health.auth_level).endswith("ANONYMOUS")
    outputs: list[Any] = [b for b in functions["anonymization_webhook"].get_bindings() if b.type == "queue"]
    assert outputs and outputs[0].queue_name == "smartdocumentor-copy-verifications"
    timer: Any = functions["reconcile_deliveries"].get_trigger()
    assert timer.type == "timerTrigger" and timer.schedule == "%RECONCILE_SCHEDULE%"


async def test_pdf_is_copied_with_tags_metadata_and_manifest(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient, container_name: str
) -> None:
    url = exports.publish(PDF_BYTES, content_type="application/pdf")
    payload = notification(url, extraField={"kept": True})

    response = await webhook.post(payload)

    assert response.status == 200, response.body
    assert response.body["status"] == "stored"
    assert response.body["taskId"] == payload["taskId"]
    name = blob_name_of(response.body, container_name)
    assert name == f"{payload['workspaceId']}/{payload['taskId']}/Contrato de serviços.pdf"
    assert response.body["url"].endswith(destination.get_blob_client(name).url.split("/", 3)[-1])
    assert "?" not in response.body["url"]
    assert "copyId" not in response.body  # copies are synchronous or staged: there is no copy to name

    blob = destination.get_blob_client(name)
    assert blob.download_blob().readall() == PDF_BYTES
    props = blob.get_blob_properties()
    assert props.content_settings.content_type == "application/pdf"
    assert props.metadata["taskid"] == payload["taskId"]
    assert props.metadata["tasknumber"] == "1207"
    assert props.metadata["displayname"] == "Contrato de servi%C3%A7os"
    assert props.metadata["totalpages"] == "3"
    assert props.metadata["source"] == url.split("?")[0]
    assert len(props.metadata["delivery"]) == 64
    assert blob.get_blob_tags() == {
        "taskId": payload["taskId"],
        "taskNumber": "1207",
        "workspaceId": payload["workspaceId"],
        "Department": "Legal",
        "Relatorio": "Anual 2026",
    }

    manifest = manifest_of(destination, name)
    assert manifest["taskId"] == payload["taskId"]
    assert manifest["exportedFileUrl"] == url.split("?")[0]
    assert manifest["blob"] == f"{container_name}/{name}"
    assert "copyId" not in manifest
    assert manifest["copyStatus"] == "success"  # written only once the file is committed
    assert manifest["extraField"] == {"kept": True}
    assert manifest["metadata"] == {"Department": "Legal", "Relatório": "Anual 2026"}  # exactly as received
    assert manifest["delivery"] == props.metadata["delivery"]  # it describes the blob next to it
    assert manifest["tagsDropped"] == []
    assert "receivedAt" in manifest
    assert manifest["tagsWritten"] is True
    assert manifest["completedAt"] and manifest["replaced"] == []
    assert [step["outcome"] for step in manifest["history"]] == ["stored"]  # the record's story of it
    manifest_blob = destination.get_blob_client(f"{name}.json")
    manifest_props = manifest_blob.get_blob_properties()
    assert manifest_props.content_settings.content_type == "application/json"
    assert manifest_props.metadata == {
        "receiverkind": "manifest",
        "delivery": props.metadata["delivery"],
        "taskkey": props.metadata["taskkey"],
    }
    assert manifest_blob.get_blob_tags() == {}  # no index tags on a manifest
    raw = manifest_blob.download_blob().readall()
    assert raw == json.dumps(json.loads(raw), separators=(",", ":")).encode()  # compact JSON
    assert stored_blobs(destination) == sorted([name, f"{name}.json"])
    assert record_names(destination) == [record_name(payload["workspaceId"], payload["taskId"])]


async def test_png_gets_its_content_type_fixed_and_keeps_md5(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient, container_name: str
) -> None:
    # The export storage served it as octet-stream: the receiver sets image/png, keeping Content-MD5.
    url = exports.publish(PNG_BYTES, name="scans/page-1", content_type="application/octet-stream")
    source_md5 = exports.client.get_blob_client("anonymized-exports", "scans/page-1").get_blob_properties()
    payload = notification(url, displayName="scan", exportedFileContentType="image/png", metadata=None)

    response = await webhook.post(payload)

    assert response.status == 200, response.body
    name = blob_name_of(response.body, container_name)
    assert name.endswith("/scan.png")
    props = destination.get_blob_client(name).get_blob_properties()
    assert props.content_settings.content_type == "image/png"
    assert props.content_settings.content_md5 == source_md5.content_settings.content_md5
    assert destination.get_blob_client(name).download_blob().readall() == PNG_BYTES


@pytest.mark.parametrize(
    ("content_type", "source_name", "expected_file"),
    [
        ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", "x/report.docx", "Report.docx"),
        ("text/plain; charset=utf-8", "x/notes.TXT", "Report.txt"),
        ("application/x-unknown", "x/blob", "Report"),
    ],
    ids=["docx", "text-with-parameter", "no-extension"],
)
async def test_other_content_types_are_accepted_and_kept_as_given(
    content_type: str,
    source_name: str,
    expected_file: str,
    configured: dict[str, str],
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    container_name: str,
) -> None:
    # Only pdf, jpeg and png have a known extension; any other type is stored as sent, its extension
    # from the export's own name (none when it has none), the Content-Type set to exactly what was given.
    source = f"{source_name.split('/')[0]}-{container_name}/{source_name.split('/')[1]}"
    url = exports.publish(b"some bytes", name=source, content_type="application/octet-stream")
    md5 = exports.client.get_blob_client("anonymized-exports", source).get_blob_properties().content_settings
    payload = notification(url, displayName="Report", exportedFileContentType=content_type)

    response = await webhook.post(payload)

    assert response.status == 200 and response.body["status"] == "stored", response.body
    name = blob_name_of(response.body, container_name)
    assert name == f"{payload['workspaceId']}/{payload['taskId']}/{expected_file}"
    props = destination.get_blob_client(name).get_blob_properties()
    assert props.content_settings.content_type == content_type
    assert props.content_settings.content_md5 == md5.content_md5
    assert manifest_of(destination, name)["exportedFileContentType"] == content_type


@pytest.mark.parametrize(
    ("display_name", "expected_file"),
    [
        ("Relatório/2026: Q1?*", "Relatório_2026_ Q1__.pdf"),
        ('a\\b"c<d>e|f', "a_b_c_d_e_f.pdf"),
        ("scan.pdf", "scan.pdf"),
        ("scan.PDF", "scan.PDF"),
        ("notes.", "notes.pdf"),
        ("", "{taskId}.pdf"),
        ("..", "{taskId}.pdf"),
        ("Bezpečnost 日本語", "Bezpečnost 日本語.pdf"),
    ],
)
async def test_display_names_become_safe_names_that_keep_unicode(
    display_name: str,
    expected_file: str,
    configured: dict[str, str],
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    container_name: str,
) -> None:
    payload = notification(exports.publish(), displayName=display_name)
    response = await webhook.post(payload)
    assert response.status == 200, response.body
    name = blob_name_of(response.body, container_name)
    assert name == f"{payload['workspaceId']}/{payload['taskId']}/{expected_file.format(taskId=payload['taskId'])}"
    assert destination.get_blob_client(name).download_blob().readall() == PDF_BYTES
    metadata = destination.get_blob_client(name).get_blob_properties().metadata
    assert all(value.isascii() for value in metadata.values())


async def test_more_metadata_than_tag_slots_keeps_the_rest_in_the_manifest(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient, container_name: str
) -> None:
    entries = [{"key": f"field{i:02d}", "value": f"value {i}"} for i in range(12)]
    entries.insert(0, {"key": "taskId", "value": "collides with the tagged field"})
    payload = notification(exports.publish(), metadata=entries)

    response = await webhook.post(payload)

    assert response.status == 200, response.body
    assert "did not fit" in response.body["message"]
    name = blob_name_of(response.body, container_name)
    tags = destination.get_blob_client(name).get_blob_tags()
    assert len(tags) == 10
    assert tags["taskId"] == payload["taskId"]
    assert [k for k in tags if k.startswith("field")] == [f"field{i:02d}" for i in range(7)]
    manifest = manifest_of(destination, name)
    assert [d["key"] for d in manifest["tagsDropped"]] == ["taskId"] + [f"field{i:02d}" for i in range(7, 12)]
    assert manifest["metadata"] == entries


async def test_same_delivery_again_is_a_duplicate_without_a_second_copy(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient, container_name: str
) -> None:
    payload = notification(exports.publish())
    first = await webhook.post(payload)
    name = blob_name_of(first.body, container_name)
    etag = destination.get_blob_client(name).get_blob_properties().etag

    second = await webhook.post(payload)

    assert second.status == 200
    assert second.body["status"] == "duplicate"
    assert second.body["blob"] == first.body["blob"]
    assert destination.get_blob_client(name).get_blob_properties().etag == etag
    assert stored_blobs(destination) == sorted([name, f"{name}.json"])


async def test_a_duplicate_restores_a_missing_manifest_and_leaves_the_record_alone(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient, container_name: str
) -> None:
    payload = notification(exports.publish())
    first = await webhook.post(payload)
    name = blob_name_of(first.body, container_name)
    destination.get_blob_client(f"{name}.json").delete_blob()
    record_etag = destination.get_blob_client(record_name(payload["workspaceId"], payload["taskId"]))
    before = record_etag.get_blob_properties().etag

    second = await webhook.post(payload)

    # A duplicate is answered once its manifest describes it: the missing one is written again.
    assert second.status == 200 and second.body["status"] == "duplicate"
    assert manifest_of(destination, name)["taskId"] == payload["taskId"]
    assert stored_blobs(destination) == sorted([name, f"{name}.json"])
    assert record_etag.get_blob_properties().etag == before
    # The queue function, driving the same delivery again, changes nothing more.
    verify = FUNCTIONS["verify_pending_copy"].get_user_function()
    queued = message(json.dumps(payload).encode(), datetime.now(UTC)).encode()
    await verify(QueueMessage(id="m", body=queued))  # type: ignore[no-untyped-call]
    assert stored_blobs(destination) == sorted([name, f"{name}.json"])


async def test_re_export_with_a_new_link_overwrites_with_the_newest_file(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient, container_name: str
) -> None:
    payload = notification(exports.publish(b"%PDF-1.4 first export"), metadata={"version": "1"})
    first = await webhook.post(payload)
    name = blob_name_of(first.body, container_name)

    newer = {**payload, "exportedFileUrl": exports.publish(b"%PDF-1.4 second export"), "metadata": {"version": "2"}}
    second = await webhook.post(newer)

    assert second.status == 200
    assert second.body["status"] == "stored"
    assert blob_name_of(second.body, container_name) == name
    blob = destination.get_blob_client(name)
    assert blob.download_blob().readall() == b"%PDF-1.4 second export"
    assert blob.get_blob_tags()["version"] == "2"
    assert manifest_of(destination, name)["metadata"] == {"version": "2"}
    assert manifest_of(destination, name)["delivery"] == blob.get_blob_properties().metadata["delivery"]
    assert stored_blobs(destination) == sorted([name, f"{name}.json"])


async def test_concurrent_identical_deliveries_make_one_copy_and_all_succeed(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient, container_name: str
) -> None:
    payload = notification(exports.publish())

    responses = await asyncio.gather(*(webhook.post(payload) for _ in range(12)))

    assert all(r.status == 200 for r in responses), [r.body for r in responses]
    statuses = sorted(r.body["status"] for r in responses)
    assert statuses.count("stored") == 1
    assert statuses.count("duplicate") == 11
    name = blob_name_of(responses[0].body, container_name)
    assert stored_blobs(destination) == sorted([name, f"{name}.json"])


async def test_expired_payload_date_is_rejected_before_any_copy(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    expired = datetime(2026, 1, 20, 10, 0, tzinfo=UTC)
    payload = notification(exports.publish(), exportedFileExpiresOn="2026-01-20T10:00:00")
    response = await webhook.post(payload)
    assert response.status == 410
    assert response.body["error"] == "link-expired"
    assert response.body["message"] == (
        f"The file link expired at {expired:%Y-%m-%dT%H:%M:%SZ}. Export the document again from SmartDocumentor."
    )
    assert stored_blobs(destination) == []


async def test_expired_sas_is_rejected_even_when_the_payload_date_is_later(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    url = exports.publish(expires_in=timedelta(minutes=-5))
    response = await webhook.post(notification(url))
    assert response.status == 410
    assert response.body["error"] == "link-expired"
    assert stored_blobs(destination) == []


@pytest.mark.parametrize(
    ("make_url", "reason"),
    [
        (lambda u: u.replace("http://", "ftp://"), "https"),
        (lambda u: u.replace("http://127.0.0.1", "http://evil.example.com"), "does not accept files from"),
        (lambda u: u.replace("http://127.0.0.1:", "http://127.0.0.1.evil.com:"), "does not accept files from"),
        (lambda u: u.replace("http://", "http://user:pass@"), "user name"),
        (lambda u: u.split("?")[0], "SAS"),
        (lambda u: u + "&pad=" + "x" * 2100, "2048"),
        (lambda u: re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:1", u), "does not accept files from"),
    ],
    ids=["scheme", "host", "suffix-trick", "userinfo", "no-sas", "too-long", "other-port"],
)
async def test_disallowed_source_urls_are_rejected(
    make_url: Any,
    reason: str,
    configured: dict[str, str],
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
) -> None:
    response = await webhook.post(notification(make_url(exports.publish())))
    assert response.status == 400
    assert response.body["error"] == "source-not-allowed"
    assert reason in response.body["message"]
    assert stored_blobs(destination) == []


async def test_https_is_required_unless_http_sources_are_allowed(
    configured: dict[str, str], exports: Exports, webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALLOW_HTTP_SOURCES", "false")
    await RUNTIME.reset()
    response = await webhook.post(notification(exports.publish()))
    assert response.status == 400
    assert "https" in response.body["message"]


async def test_wrong_sas_signature_fails_the_copy_and_leaves_nothing(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    url = exports.publish()
    forged = url.replace("sig=", "sig=AAAA")
    exports.secrets.add_url(forged)
    response = await webhook.post(notification(forged))
    assert response.status == 502
    assert response.body["status"] == "failed"
    assert response.body["error"] == "copy-failed"
    assert "export the document again" in response.body["message"].lower()
    assert stored_blobs(destination) == []


async def test_missing_source_file_fails_the_copy_and_leaves_nothing(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    url = exports.sas_url("never/uploaded.pdf")
    response = await webhook.post(notification(url))
    assert response.status == 502
    assert response.body["error"] == "copy-failed"
    assert stored_blobs(destination) == []


async def test_re_export_with_a_broken_link_keeps_the_stored_file(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient, container_name: str
) -> None:
    payload = notification(exports.publish(b"%PDF-1.4 good"))
    first = await webhook.post(payload)
    name = blob_name_of(first.body, container_name)
    broken = {**payload, "exportedFileUrl": exports.sas_url("gone/missing.pdf")}
    response = await webhook.post(broken)
    assert response.status == 502
    assert destination.get_blob_client(name).download_blob().readall() == b"%PDF-1.4 good"


@pytest.mark.parametrize(
    ("body", "headers", "status", "error"),
    [
        (b"{not json", None, 400, "invalid-json"),
        (b"", None, 400, "invalid-json"),
        (b"[1, 2]", None, 400, "invalid-json"),
        (b"\xff\xfe{}", None, 400, "invalid-json"),
        (b'{"taskId": "x"}', None, 400, "invalid-payload"),
        (b"{}", {"Content-Type": "text/plain"}, 415, "unsupported-media-type"),
        (b"{}", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported-media-type"),
        (b'{"pad": "' + b"x" * 70000 + b'"}', None, 413, "payload-too-large"),
    ],
    ids=["broken", "empty", "array", "not-utf8", "invalid-fields", "text-plain", "form", "oversized"],
)
async def test_bad_bodies_get_a_clear_rejection(
    body: bytes,
    headers: dict[str, str] | None,
    status: int,
    error: str,
    configured: dict[str, str],
    webhook: Webhook,
    destination: ContainerClient,
) -> None:
    response = await webhook.post(body, headers=headers)
    assert response.status == status
    assert response.body["status"] == "rejected"
    assert response.body["error"] == error
    assert stored_blobs(destination) == []


async def test_invalid_fields_are_named(configured: dict[str, str], exports: Exports, webhook: Webhook) -> None:
    payload = notification(exports.publish(), taskNumber="twelve", exportedFileExpiresOn="soon")
    del payload["workspaceId"]
    response = await webhook.post(payload)
    assert response.status == 400
    assert response.body["error"] == "invalid-payload"
    fields = {d["field"] for d in response.body["details"]}
    assert fields == {"taskNumber", "exportedFileExpiresOn", "workspaceId"}
    for field_name in fields:
        assert field_name in response.body["message"]


async def test_missing_content_type_is_accepted_as_json(
    configured: dict[str, str], exports: Exports, webhook: Webhook
) -> None:
    response = await webhook.post(json.dumps(notification(exports.publish())).encode(), headers={})
    assert response.status == 200, response.body


async def test_numeric_string_task_number_and_metadata_list(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient, container_name: str
) -> None:
    payload = notification(exports.publish(), taskNumber="42", metadata=[{"key": "Cliente", "value": "Açores"}])
    response = await webhook.post(payload)
    assert response.status == 200, response.body
    tags = destination.get_blob_client(blob_name_of(response.body, container_name)).get_blob_tags()
    assert tags["taskNumber"] == "42"
    assert tags["Cliente"] == "Acores"


async def test_unreachable_storage_answers_503_quickly(
    configured: dict[str, str], exports: Exports, webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    from devtools.azurite import CUSTOMER_ACCOUNT, CUSTOMER_KEY, connection_string, free_port

    monkeypatch.setenv("DESTINATION_CONNECTION_STRING", connection_string(CUSTOMER_ACCOUNT, CUSTOMER_KEY, free_port()))
    await RUNTIME.reset()
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await webhook.post(notification(exports.publish()))
    elapsed = loop.time() - started
    assert response.status == 503
    assert response.body["error"] == "storage-unavailable"
    # A functional bound (retries are bounded), not a performance assertion: the SDK default would sleep ~1 min.
    assert elapsed < 45


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"DESTINATION_CONNECTION_STRING": ""}, "DESTINATION_CONNECTION_STRING"),
        ({"COPY_WAIT_SECONDS": "soon"}, "COPY_WAIT_SECONDS"),
        ({"BLOB_NAME_TEMPLATE": "{displayName}"}, "BLOB_NAME_TEMPLATE"),
        ({"DESTINATION_CONTAINER": "Bad_Name"}, "DESTINATION_CONTAINER"),
        ({"TAG_FIELDS": "taskId,secret"}, "TAG_FIELDS"),
        ({"ALLOWED_SOURCE_HOSTS": "https://x/"}, "ALLOWED_SOURCE_HOSTS"),
    ],
)
async def test_missing_or_invalid_settings_answer_misconfigured_naming_the_setting(
    env: dict[str, str],
    setting: str,
    configured: dict[str, str],
    exports: Exports,
    webhook: Webhook,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    await RUNTIME.reset()
    response = await webhook.post(notification(exports.publish()))
    assert response.status == 500
    assert response.body["status"] == "failed"
    assert response.body["error"] == "misconfigured"
    assert setting in response.body["message"]
    health = await webhook.health()
    assert health.status == 503
    assert health.body["error"] == "misconfigured"
    # Anonymous: general words only (docs/reference.md, "Endpoints"); the setting is named in the log, at ERROR.
    assert setting not in health.text
    assert any(r.levelname == "ERROR" and setting in r.getMessage() for r in caplog.records)


async def test_health_is_ok_and_creates_the_container(
    configured: dict[str, str], webhook: Webhook, destination: ContainerClient
) -> None:
    response = await webhook.health()
    assert response.status == 200
    assert response.body["status"] == "ok"
    assert destination.exists()
    assert destination.get_container_properties().public_access is None


async def test_health_reports_unreachable_storage(
    configured: dict[str, str],
    webhook: Webhook,
    monkeypatch: pytest.MonkeyPatch,
    container_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from devtools.azurite import CUSTOMER_ACCOUNT, CUSTOMER_KEY, connection_string, free_port

    monkeypatch.setenv("DESTINATION_CONNECTION_STRING", connection_string(CUSTOMER_ACCOUNT, CUSTOMER_KEY, free_port()))
    await RUNTIME.reset()
    response = await webhook.health()
    assert response.status == 503
    assert response.body["error"] == "storage-unavailable"
    # Anonymous: no account, container or key in the answer (docs/reference.md, "Endpoints"); details go to ERROR.
    for private in ("AccountKey", CUSTOMER_ACCOUNT, container_name, "127.0.0.1"):
        assert private not in response.text
    assert any(r.levelname == "ERROR" and r.getMessage().startswith("health: ") for r in caplog.records)


async def test_custom_template_and_tag_fields(
    configured: dict[str, str],
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    container_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BLOB_NAME_TEMPLATE", "{yyyy}/{mm}/{workspaceId}-{taskNumber}.{ext}")
    monkeypatch.setenv("TAG_FIELDS", "taskId,displayName")
    monkeypatch.setenv("WRITE_MANIFEST", "false")
    await RUNTIME.reset()
    payload = notification(exports.publish())
    response = await webhook.post(payload)
    assert response.status == 200, response.body
    now = datetime.now(UTC)
    name = blob_name_of(response.body, container_name)
    assert name == f"{now:%Y}/{now:%m}/{payload['workspaceId']}-1207.pdf"
    tags = destination.get_blob_client(name).get_blob_tags()
    assert list(tags)[:2] == ["taskId", "displayName"]
    assert tags["displayName"] == "Contrato de servicos"
    assert stored_blobs(destination) == [name]


async def test_secrets_never_reach_logs_or_responses_on_any_path(
    configured: dict[str, str], exports: Exports, webhook: Webhook, caplog: pytest.LogCaptureFixture
) -> None:
    url = exports.publish()
    forged = url.replace("sig=", "sig=BBBB")
    exports.secrets.add_url(forged)
    responses = [
        await webhook.post(notification(url)),
        await webhook.post(notification(url)),
        await webhook.post(notification(forged)),
        await webhook.post(notification(url, exportedFileExpiresOn="2020-01-01T00:00:00Z")),
        await webhook.post(notification(url.replace("http://", "http://u:p@"))),
    ]
    assert [r.status for r in responses] == [200, 200, 502, 410, 400]
    everything = "\n".join(r.text for r in responses) + "\n".join(rec.getMessage() for rec in caplog.records)
    assert exports.secrets.signatures
    assert not exports.secrets.leaks_in(everything)
    assert "sig=" not in everything


async def test_an_unexpected_failure_still_answers_json_without_secrets(
    configured: dict[str, str],
    exports: Exports,
    webhook: Webhook,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Our own code is made to fail (Azurite is not mocked): the answer must stay readable and clean.
    url = exports.publish()

    async def broken_run(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"bug while copying {url}")

    monkeypatch.setattr("receiver.webhook.run", broken_run)  # the engine's loop, as the webhook calls it
    response = await webhook.post(notification(url))
    assert response.status == 500
    assert response.body["error"] == "internal-error"
    assert "Traceback" not in response.text
    errors = [r.getMessage() for r in caplog.records if r.name == "receiver" and r.levelname == "ERROR"]
    assert errors and "RuntimeError" in errors[0]


# ---- the task record, renames, late retries, accounts without tags, retention policies ----


async def test_the_task_record_exists_after_a_delivery_and_holds_it(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient, container_name: str
) -> None:
    payload = notification(exports.publish())
    response = await webhook.post(payload)
    assert response.status == 200, response.body
    name = blob_name_of(response.body, container_name)
    props = destination.get_blob_client(name).get_blob_properties()

    record = record_of(destination, payload)

    assert (record.workspace_id, record.task_id) == (payload["workspaceId"], payload["taskId"])
    assert record.current == props.metadata["delivery"]
    [delivery] = record.deliveries
    assert delivery.delivery == props.metadata["delivery"] and delivery.blob == name
    assert delivery.state is State.STORED and delivery.completed_at is not None
    # Kept while it is current: the reconciliation writes the manifest again from it if a driver stopped.
    assert delivery.manifest is not None and delivery.manifest["delivery"] == delivery.delivery
    assert [(step.by, step.outcome) for step in delivery.history] == [("webhook", "stored")]
    assert record.retire == []
    # The record never holds the link's signature, only its hash.
    raw = destination.get_blob_client(record_name(payload["workspaceId"], payload["taskId"])).download_blob()
    assert not exports.secrets.leaks_in(raw.readall().decode())


async def test_a_re_export_replaces_the_file_and_the_record_lists_both_deliveries(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient, container_name: str
) -> None:
    payload = notification(exports.publish(b"%PDF-1.4 first"))
    await webhook.post(payload)
    newer = {**payload, "exportedFileUrl": exports.publish(b"%PDF-1.4 second")}
    second = await webhook.post(newer)
    assert second.status == 200 and second.body["status"] == "stored"
    name = blob_name_of(second.body, container_name)

    record = record_of(destination, payload)
    first_entry, second_entry = record.deliveries
    assert record.current == second_entry.delivery
    assert second_entry.state is State.STORED and first_entry.state is not State.COPYING
    assert destination.get_blob_client(name).get_blob_properties().metadata["delivery"] == second_entry.delivery
    assert manifest_of(destination, name)["replaced"] == [first_entry.delivery]


async def test_a_renamed_re_export_leaves_one_file_and_no_manifest_at_the_old_name(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient, container_name: str
) -> None:
    payload = notification(exports.publish(b"%PDF-1.4 draft"), displayName="Draft")
    first = await webhook.post(payload)
    old = blob_name_of(first.body, container_name)
    renamed = {**payload, "exportedFileUrl": exports.publish(b"%PDF-1.4 final"), "displayName": "Final"}

    second = await webhook.post(renamed)

    assert second.status == 200 and second.body["status"] == "stored"
    new = blob_name_of(second.body, container_name)
    assert new != old and new.endswith("/Final.pdf")
    assert stored_blobs(destination) == sorted([new, f"{new}.json"])
    assert destination.get_blob_client(new).download_blob().readall() == b"%PDF-1.4 final"
    record = record_of(destination, payload)
    assert record.retire == []  # the old name was retired, and dropped from the list
    assert record.current_delivery is not None and record.current_delivery.blob == new


async def test_a_late_retry_after_two_renames_is_superseded_and_leaves_nothing(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient, container_name: str
) -> None:
    first = notification(exports.publish(b"%PDF-1.4 one"), displayName="One")
    second = {**first, "exportedFileUrl": exports.publish(b"%PDF-1.4 two"), "displayName": "Two"}
    third = {**first, "exportedFileUrl": exports.publish(b"%PDF-1.4 three"), "displayName": "Three"}
    answers = [await webhook.post(body) for body in (first, second, third)]
    assert [answer.body["status"] for answer in answers] == ["stored", "stored", "stored"]
    newest = blob_name_of(answers[2].body, container_name)
    etag = destination.get_blob_client(newest).get_blob_properties().etag

    late = await webhook.post(first)

    assert late.status == 200 and late.body["status"] == "superseded"
    # Its create-only copy may have landed at its old name before the record was read: removed again.
    assert stored_blobs(destination) == sorted([newest, f"{newest}.json"])
    assert destination.get_blob_client(newest).get_blob_properties().etag == etag
    record = record_of(destination, first)
    assert record.current_delivery is not None and record.current_delivery.blob == newest
    assert record.retire == []


async def test_health_reports_index_tags(configured: dict[str, str], webhook: Webhook) -> None:
    response = await webhook.health()
    assert response.status == 200
    assert response.body["indexTags"] is True


async def test_health_reports_no_index_tags_on_an_account_without_them_before_any_delivery(
    proxied: FaultProxy, webhook: Webhook
) -> None:
    proxied.hierarchical_namespace()
    await RUNTIME.reset()
    response = await webhook.health()
    assert response.status == 200
    assert response.body["indexTags"] is False


async def test_an_account_without_index_tags_stores_everything_without_them_at_no_extra_round_trip(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient, container_name: str
) -> None:
    tagged = await webhook.post(notification(exports.publish()))
    assert tagged.status == 200
    tagged_name = blob_name_of(tagged.body, container_name)
    with_tags = len(proxied.seen)

    proxied.reset()
    proxied.hierarchical_namespace()
    await RUNTIME.reset()
    payload = notification(exports.publish())
    response = await webhook.post(payload)

    assert response.status == 200 and response.body["status"] == "stored", response.body
    assert "no blob index tags" in response.body["message"]
    # Account information (asked once, as on a tagged account) says so: no write is refused first.
    assert len(proxied.seen) == with_tags
    assert not any(rule.fired for rule in proxied.rules if rule.status in (400, 409))
    name = blob_name_of(response.body, container_name)
    props = destination.get_blob_client(name).get_blob_properties()
    assert props.metadata["taskid"] == payload["taskId"] and props.metadata["delivery"]
    assert props.tag_count in (None, 0)
    manifest = manifest_of(destination, name)
    assert manifest["tagsWritten"] is False
    assert manifest["tags"]["taskId"] == payload["taskId"]  # the tags it would have had
    assert stored_blobs(destination) == sorted([tagged_name, f"{tagged_name}.json", name, f"{name}.json"])
    assert record_of(destination, payload).current == props.metadata["delivery"]
    health = await webhook.health()
    assert health.status == 200 and health.body["indexTags"] is False


async def test_a_legal_hold_placed_while_the_app_runs_is_a_409_naming_the_copy_it_keeps_and_is_asked_again(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient, container_name: str
) -> None:
    """The container's policy is asked once a process; a legal hold placed afterwards lets a renamed export's
    create-only copy land and then refuses its record. The 409 says the export was copied, where, and that it
    cannot be removed while the hold lasts (not "not stored"); the next delivery asks the container again."""
    payload = notification(exports.publish(b"%PDF-1.4 first"), displayName="A.pdf")
    first = await webhook.post(payload)
    assert first.status == 200, first.body
    proxied.immutable("BlobImmutableDueToLegalHold")
    again = await webhook.post({**payload, "displayName": "B.pdf", "exportedFileUrl": exports.publish(b"%PDF-1.4 b")})
    assert (again.status, again.body["error"]) == (409, "immutable"), again.body
    copied = next(name for name in stored_blobs(destination) if name.endswith("B.pdf"))
    assert f"copied to {copied}" in again.body["message"] and "legal hold" in again.body["message"], again.body
    assert again.verification is None
    proxied.seen.clear()
    third = await webhook.post({**payload, "displayName": "C.pdf", "exportedFileUrl": exports.publish(b"%PDF-1.4 c")})
    assert third.status == 409, third.body
    asked = [path for method, path in proxied.seen if method == "GET" and "restype=container" in path]
    assert asked and "comp=" not in asked[0], proxied.seen


def is_container_properties(request: web.Request) -> bool:
    return (
        request.method in ("GET", "HEAD")
        and request.query.get("restype") == "container"
        and "comp" not in request.query
    )


# Get Container Properties of a container under a legal hold, as the service answers it.
HOLD_HEADERS = {
    "ETag": '"0x8DCAFE"',
    "Last-Modified": "Mon, 07 Dec 2026 03:00:00 GMT",
    "x-ms-has-legal-hold": "true",
    "x-ms-has-immutability-policy": "false",
    "x-ms-version": "2025-01-05",
}
HOLD_MESSAGE = "This operation is not permitted as the blob is immutable due to one or more legal holds."


async def test_a_legal_hold_lifted_lets_the_next_re_export_be_stored_at_once(
    proxied: FaultProxy, exports: Exports, webhook: Webhook
) -> None:
    """A hold placed while the app runs, then seen by the process (the container says so): re-exports are
    refused before anything is written. Once it is lifted, as the 409 asks, the documents sent again are stored
    at once, without a restart: a policy once seen is asked again each time."""
    payload = notification(exports.publish(b"%PDF-1.4 first"), displayName="A.pdf")
    assert (await webhook.post(payload)).status == 200
    proxied.immutable("BlobImmutableDueToLegalHold")
    proxied.add(Rule(is_container_properties, times=10_000, status=200, answer_headers=HOLD_HEADERS))
    renamed = {**payload, "displayName": "B.pdf", "exportedFileUrl": exports.publish(b"%PDF-1.4 b")}
    other = {**payload, "displayName": "C.pdf", "exportedFileUrl": exports.publish(b"%PDF-1.4 c")}
    assert (await webhook.post(renamed)).status == 409
    refused = await webhook.post(other)
    assert (refused.status, refused.body["error"]) == (409, "immutable"), refused.body
    proxied.reset()  # lifted
    assert (await webhook.post(renamed)).status == 200
    again = await webhook.post(other)
    assert (again.status, again.body["status"]) == (200, "stored"), again.body


def hold_record_writes_after(proxied: FaultProxy, passes: Match) -> None:
    """A legal hold placed right after the first request ``passes`` matches (which goes through): every task record
    write from then on is refused as the service refuses it."""
    placed = False

    def after_it(request: web.Request) -> bool:
        nonlocal placed
        if not placed and passes(request):
            placed = True
            return False
        return placed and is_record_write(request)

    proxied.add(Rule(after_it, times=10_000, status=409, code="BlobImmutableDueToLegalHold", message=HOLD_MESSAGE))


async def test_a_hold_placed_after_a_renamed_export_was_recorded_and_its_older_file_deleted_answers_stored(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient, container_name: str
) -> None:
    """The hold comes between the older file's delete and the record write that drops its name from the list:
    the export is stored and current, so the answer is 200 (not a 409 calling it unrecorded); the name stays
    listed (already gone), for a later driver."""
    payload = notification(exports.publish(b"%PDF-1.4 first"), displayName="A.pdf")
    first = await webhook.post(payload)
    earlier = blob_name_of(first.body, container_name)
    hold_record_writes_after(proxied, lambda request: request.method == "DELETE" and not is_record(request))
    renamed = {**payload, "displayName": "B.pdf", "exportedFileUrl": exports.publish(b"%PDF-1.4 b")}
    answer = await webhook.post(renamed)
    assert (answer.status, answer.body["status"]) == (200, "stored"), answer.body
    record = record_of(destination, renamed)
    assert record.current_delivery is not None and record.current_delivery.blob == blob_name_of(
        answer.body, container_name
    )
    assert earlier not in stored_blobs(destination) and [item.blob for item in record.retire] == [earlier]


async def test_a_hold_placed_after_a_same_name_re_export_replaced_the_file_says_so_and_the_lift_records_it(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient, container_name: str
) -> None:
    """A same-name re-export is accepted (copying in the record) and its copy replaces the earlier export; a hold
    placed right after refuses the record write that stores it. The 409 names the file and says the copy replaced any
    earlier export at that name (not that the earlier file is kept); once the hold is lifted the reconciliation
    records it, and the document sent again is a duplicate."""
    payload = notification(exports.publish(b"%PDF-1.4 first"), displayName="A.pdf")
    first = await webhook.post(payload)
    name = blob_name_of(first.body, container_name)
    hold_record_writes_after(proxied, is_overwrite_copy)
    again = {**payload, "exportedFileUrl": exports.publish(b"%PDF-1.4 b")}
    answer = await webhook.post(again)
    assert (answer.status, answer.body["error"]) == (409, "immutable"), answer.body
    assert f"copied to {name}" in answer.body["message"], answer.body
    assert "replaced any earlier export stored at that very name" in answer.body["message"], answer.body
    assert "the earlier file is kept" not in answer.body["message"], answer.body
    assert destination.get_blob_client(name).download_blob().readall() == b"%PDF-1.4 b"
    proxied.reset()  # lifted
    await reconcile_run(runtime=RUNTIME, now=datetime.now(UTC) + timedelta(minutes=15))
    record = record_of(destination, again)
    assert record.current_delivery is not None and record.current_delivery.blob == name
    assert record.current == delivery_of(again["exportedFileUrl"])
    resent = await webhook.post(again)
    assert (resent.status, resent.body["status"]) == (200, "duplicate"), resent.body


async def test_the_queue_function_refused_by_a_hold_after_its_copy_landed_names_the_copy(
    proxied: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The queue function drives a renamed export; a hold placed meanwhile lets its copy land and refuses its
    record: its try names the copy that stays (not "this export was not stored") and is tried again (a hold is
    lifted some day: nothing failed the delivery); its last try is the ERROR that names the poison queue."""
    from receiver.verification import MAX_DEQUEUE_COUNT, CopyStillRunning

    payload = notification(exports.publish(b"%PDF-1.4 first"), displayName="A.pdf")
    assert (await webhook.post(payload)).status == 200
    proxied.immutable("BlobImmutableDueToLegalHold")
    renamed = {**payload, "displayName": "B.pdf", "exportedFileUrl": exports.publish(b"%PDF-1.4 b")}
    text = message(json.dumps(renamed).encode(), datetime.now(UTC))
    with pytest.raises(CopyStillRunning):
        await run_verifier(text)
    landed = next(name for name in stored_blobs(destination) if name.endswith("B.pdf"))
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and " held " in r.getMessage()]
    assert any(f"Its copy landed at {landed} before the legal hold" in line for line in said), said
    caplog.clear()
    with pytest.raises(CopyStillRunning):
        await run_verifier(text, dequeue_count=MAX_DEQUEUE_COUNT)
    said = [r.getMessage() for r in caplog.records if r.levelname == "ERROR" and "legal hold" in r.getMessage()]
    assert any("poison" in line and "replay-poison" in line for line in said), said


async def test_a_task_record_a_lifecycle_rule_archived_is_a_500_naming_it_and_the_copy_made_meanwhile(
    proxied: FaultProxy, exports: Exports, webhook: Webhook, destination: ContainerClient, container_name: str
) -> None:
    """A lifecycle rule moved the task record to the Archive tier: Get Blob answers 409 BlobArchived. That is no
    conflict to look at again (nor a 503 "send again in a few minutes", which never succeeds): a 500 names the
    record, the tier and what to do, and the renamed export's create-only copy made beside the read."""
    payload = notification(exports.publish(b"%PDF-1.4 first"), displayName="A.pdf")
    first = await webhook.post(payload)
    assert first.status == 200, first.body
    archived = "This operation is not permitted on an archived blob."
    proxied.add(Rule(is_record_read, times=10_000, status=409, code="BlobArchived", message=archived))
    renamed = {**payload, "displayName": "B.pdf", "exportedFileUrl": exports.publish(b"%PDF-1.4 second")}
    again = await webhook.post(renamed)
    assert (again.status, again.body["error"]) == (500, "misconfigured"), again.body
    message = again.body["message"]
    assert "Archive tier" in message and "rehydrate" in message and ".smartdocumentor/tasks/" in message, message
    assert "A copy of this export was made at" in message and "B.pdf" in message, message
    assert again.verification is None
    proxied.reset()  # rehydrated: sent again, the copy is recorded and the earlier file retired
    resent = await webhook.post(renamed)
    assert (resent.status, resent.body["status"]) == (200, "stored"), resent.body
    assert stored_blobs(destination) == sorted(
        [blob_name_of(resent.body, container_name), f"{blob_name_of(resent.body, container_name)}.json"]
    )


@pytest.mark.parametrize(
    ("code", "policy"),
    [("BlobImmutableDueToPolicy", "retention policy"), ("BlobImmutableDueToLegalHold", "legal hold")],
)
async def test_a_retention_policy_keeps_the_first_export_and_refuses_a_re_export_with_409(
    code: str,
    policy: str,
    proxied: FaultProxy,
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    container_name: str,
) -> None:
    proxied.immutable(code)
    payload = notification(exports.publish(b"%PDF-1.4 kept"))
    first = await webhook.post(payload)
    assert first.status == 200 and first.body["status"] == "stored", first.body
    name = blob_name_of(first.body, container_name)
    before = {blob: destination.get_blob_client(blob).get_blob_properties().etag for blob in stored_blobs(destination)}
    record_before = record_of(destination, payload)

    again = await webhook.post({**payload, "exportedFileUrl": exports.publish(b"%PDF-1.4 refused")})

    assert again.status == 409, again.body
    assert again.body["status"] == "failed" and again.body["error"] == "immutable"
    assert policy in again.body["message"]
    assert again.verification is None  # nothing to finish later
    # Nothing half-done: the same file, manifest and record, and no other blob.
    assert stored_blobs(destination) == sorted([name, f"{name}.json"])
    after = {blob: destination.get_blob_client(blob).get_blob_properties().etag for blob in stored_blobs(destination)}
    assert after == before
    assert destination.get_blob_client(name).download_blob().readall() == b"%PDF-1.4 kept"
    assert record_of(destination, payload) == record_before
