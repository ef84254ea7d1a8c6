"""openapi.yaml stays true: its examples pass the receiver's own model and match its answers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from receiver import outcome
from receiver.intake import prepare
from receiver.outcome import Outcome
from receiver.plan import CopyPlan
from receiver.settings import Settings
from receiver.storage import Immutable, Misconfigured, Rejected, SourceUnreadable, StoreError, Unavailable
from receiver.webhook import storage_failure

SPEC: dict[str, Any] = yaml.safe_load((Path(__file__).resolve().parent.parent / "openapi.yaml").read_text())
WEBHOOK = SPEC["paths"]["/smartdocumentor/anonymization"]["post"]
RESULT = SPEC["components"]["schemas"]["Result"]
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
SETTINGS = Settings(destination_connection_string="UseDevelopmentStorage=true")

# The answers' table (docs/reference.md, "Responses"): error code -> HTTP status.
ERRORS = {
    "invalid-json": 400,
    "invalid-payload": 400,
    "source-not-allowed": 400,
    "link-expired": 410,
    "immutable": 409,
    "name-taken": 409,
    "payload-too-large": 413,
    "unsupported-media-type": 415,
    "misconfigured": 500,
    "copy-failed": 502,
    "storage-unavailable": 503,
    "internal-error": 500,  # a bug still answers in JSON
}


def response_examples(operation: dict[str, Any]) -> list[tuple[int, str, dict[str, Any]]]:
    found = []
    for code, response in operation["responses"].items():
        if "content" not in response:  # the host's 401: no body
            continue
        for name, example in response["content"]["application/json"]["examples"].items():
            found.append((int(code), name, example["value"]))
    return found


@pytest.mark.parametrize("name", list(WEBHOOK["requestBody"]["content"]["application/json"]["examples"]))
def test_request_examples_pass_the_receivers_model(name: str) -> None:
    example = WEBHOOK["requestBody"]["content"]["application/json"]["examples"][name]["value"]
    result = prepare(json.dumps(example).encode(), {"Content-Type": "application/json"}, SETTINGS, now=NOW)
    assert isinstance(result, CopyPlan), getattr(result, "body", None)


def test_the_hosts_401_is_documented_without_a_body() -> None:
    unauthorized = WEBHOOK["responses"]["401"]
    assert "content" not in unauthorized
    assert "not checked locally" in unauthorized["description"]
    assert "401" not in SPEC["paths"]["/health"]["get"]["responses"]  # anonymous


def test_every_contract_error_is_documented_with_its_status() -> None:
    documented = {body["error"]: code for code, _, body in response_examples(WEBHOOK) if "error" in body}
    assert documented == ERRORS
    assert set(RESULT["properties"]["error"]["enum"]) == set(ERRORS)


@pytest.mark.parametrize(
    ("code", "name", "body"),
    response_examples(WEBHOOK) + response_examples(SPEC["paths"]["/health"]["get"]),
)
def test_response_examples_fit_the_result_schema(code: int, name: str, body: dict[str, Any]) -> None:
    assert set(RESULT["required"]) <= set(body)
    assert set(body) <= set(RESULT["properties"])
    assert body["status"] in RESULT["properties"]["status"]["enum"]
    if code >= 400 and "error" in body:
        assert name == body["error"] or name.startswith(f"{body['error']}-") or name == "unhealthy"
    assert "sig=" not in json.dumps(body)


@pytest.mark.parametrize(
    ("raw", "headers"),
    [
        (b"nope", {}),
        (b'{"taskId": 1}', {}),
        (b"{}", {"Content-Type": "text/plain"}),
        (b"x" * 70000, {}),
    ],
)
def test_real_rejections_fit_the_documented_schema(raw: bytes, headers: dict[str, str]) -> None:
    result = prepare(raw, headers, SETTINGS, now=NOW)
    assert isinstance(result, Outcome)
    assert set(result.body) <= set(RESULT["properties"])
    assert ERRORS[result.body["error"]] == result.status_code
    documented = {str(code) for code in WEBHOOK["responses"]}
    assert str(result.status_code) in documented


TASK = "8c1f0f64-2b1e-4a8e-9c55-0d7e2c1f9a10"


@pytest.mark.parametrize("status", ["stored", "duplicate", "superseded", "copying"])
def test_every_delivered_answer_is_documented_with_its_status_and_fits_the_schema(status: str) -> None:
    answer = outcome.delivered(status, task_id=TASK, blob="c/n.pdf", url="https://a/c/n.pdf")
    assert set(answer.body) <= set(RESULT["properties"])
    assert "copyId" not in answer.body and "copyId" not in RESULT["properties"]
    documented = [(code, body) for code, _, body in response_examples(WEBHOOK) if body["status"] == status]
    assert documented, f"no example answers {status}"
    assert {code for code, _ in documented} == {answer.status_code}
    assert all(body["message"] == answer.body["message"] for _, body in documented)
    assert all(set(body) == set(answer.body) for _, body in documented), [sorted(body) for _, body in documented]


@pytest.mark.parametrize(
    "error",
    [
        SourceUnreadable("gone", status=404),
        Immutable("refused", code="BlobImmutableDueToPolicy", status=409),
        Immutable("refused", code="BlobImmutableDueToLegalHold", status=409),
        Misconfigured("The identity may not write blobs."),
        Rejected("A 400 the receiver did not expect."),
        Unavailable("busy"),
    ],
    ids=lambda error: f"{error.kind}-{error.code}",
)
def test_every_storage_failure_answers_a_documented_error_with_its_status(error: StoreError) -> None:
    answer = storage_failure(TASK, error)
    assert ERRORS[answer.body["error"]] == answer.status_code
    assert set(answer.body) <= set(RESULT["properties"])
    assert str(answer.status_code) in WEBHOOK["responses"]


def test_the_immutable_answer_names_the_policy_as_documented() -> None:
    examples = {name: (code, body) for code, name, body in response_examples(WEBHOOK)}
    code, body = examples["immutable"]
    policy = storage_failure(TASK, Immutable("refused", code="BlobImmutableDueToPolicy", status=409))
    assert code == 409 and body["message"] == policy.body["message"]
    hold = storage_failure(TASK, Immutable("refused", code="BlobImmutableDueToLegalHold", status=409))
    assert "legal hold" in hold.body["message"] and "retention policy" not in hold.body["message"]
    code, body = examples["storage-unavailable-lease"]
    from receiver.outcome import LEASED_QUEUED

    assert code == 503 and body["message"] == LEASED_QUEUED  # what the webhook answers when a lease refused its copy


def test_the_202_is_described_as_the_new_core_answers_it() -> None:
    description = WEBHOOK["responses"]["202"]["description"]
    assert "SYNC_COPY_MAX_MIB" in description and "COPY_WAIT_SECONDS" in description
    assert "newer export" in description  # behind a newer copy
    assert "pending" not in json.dumps(SPEC).lower()  # no pending manifests any more


def test_health_documents_index_tags_as_it_answers() -> None:
    examples = SPEC["paths"]["/health"]["get"]["responses"]["200"]["content"]["application/json"]["examples"]
    assert {example["value"]["indexTags"] for example in examples.values()} == {True, False}
    assert RESULT["properties"]["indexTags"]["type"] == "boolean"


def test_other_content_types_are_documented_as_kept_as_given() -> None:
    description = SPEC["components"]["schemas"]["Notification"]["properties"]["exportedFileContentType"]
    assert "kept as given" in description["description"]
    body = {
        "taskId": TASK,
        "taskNumber": 1,
        "workspaceId": "w",
        "displayName": "Report",
        "exportedFileUrl": "https://127.0.0.1/x/report.docx?se=2026-12-05T10%3A00%3A00Z&sig=s",
        "exportedFileContentType": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "exportedFileExpiresOn": "2026-12-05T10:00:00Z",
    }
    settings = Settings(destination_connection_string="UseDevelopmentStorage=true", allowed_source_hosts="127.0.0.1")
    plan = prepare(json.dumps(body).encode(), {}, settings, now=NOW)
    assert isinstance(plan, CopyPlan), getattr(plan, "body", None)
    assert plan.content_type == body["exportedFileContentType"] and plan.blob_name.endswith("/Report.docx")


async def _answer_with_settings_env(monkeypatch: pytest.MonkeyPatch, body: dict[str, Any], **env: str) -> Outcome:
    from receiver.runtime import Runtime
    from receiver.webhook import handle_delivery

    monkeypatch.setenv("DESTINATION_CONNECTION_STRING", "UseDevelopmentStorage=true")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return await handle_delivery(
        json.dumps(body).encode(), {"Content-Type": "application/json"}, runtime=Runtime(), now=NOW
    )


async def _real_error_answers(monkeypatch: pytest.MonkeyPatch) -> dict[str, Outcome]:
    """The receiver's own answer for each documented error example, from an input that makes it."""
    request = next(iter(WEBHOOK["requestBody"]["content"]["application/json"]["examples"].values()))["value"]
    headers = {"Content-Type": "application/json"}

    def prepared(body: dict[str, Any] | bytes, sent: dict[str, str] = headers) -> Outcome:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        answer = prepare(raw, sent, SETTINGS, now=NOW)
        assert isinstance(answer, Outcome), answer
        return answer

    answers = {
        "invalid-json": prepared(b"nope"),
        "invalid-payload": prepared({**request, "taskNumber": "twelve"}),
        "source-not-allowed": prepared({**request, "exportedFileUrl": "https://evil.example.com/c/f.pdf?sv=1&sig=s"}),
        "link-expired": prepared({**request, "exportedFileExpiresOn": "2026-11-20T10:00:00Z"}),
        "payload-too-large": prepared(b"x" * (SETTINGS.max_body_bytes + 1)),
        "unsupported-media-type": prepared(b"{}", {"Content-Type": "text/plain"}),
        "copy-failed": storage_failure(TASK, SourceUnreadable("gone", status=404)),
        "storage-unavailable": storage_failure(TASK, Unavailable("busy")),
        "misconfigured": await _answer_with_settings_env(monkeypatch, request, COPY_WAIT_SECONDS="soon"),
    }

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr("receiver.webhook.run", broken)
    monkeypatch.delenv("COPY_WAIT_SECONDS")
    answers["internal-error"] = await _answer_with_settings_env(monkeypatch, request)
    return answers


async def test_every_error_example_is_the_receivers_own_answer_to_such_a_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each example of a rejection or failure is what the receiver answers, whole (message, details, taskId)."""
    real = await _real_error_answers(monkeypatch)
    examples = {name: (code, body) for code, name, body in response_examples(WEBHOOK)}
    differ = {name: answer.body for name, answer in real.items() if examples[name] != (answer.status_code, answer.body)}
    assert not differ, differ
