"""openapi.yaml stays true: its examples pass the receiver's own model and match its answers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from receiver.outcome import Outcome
from receiver.plan import CopyPlan
from receiver.settings import Settings
from receiver.webhook import prepare

SPEC: dict[str, Any] = yaml.safe_load((Path(__file__).resolve().parent.parent / "openapi.yaml").read_text())
WEBHOOK = SPEC["paths"]["/smartdocumentor/anonymization"]["post"]
RESULT = SPEC["components"]["schemas"]["Result"]
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
SETTINGS = Settings(destination_connection_string="UseDevelopmentStorage=true")

# The contract's response table: error code -> HTTP status.
CONTRACT_ERRORS = {
    "invalid-json": 400,
    "invalid-payload": 400,
    "source-not-allowed": 400,
    "link-expired": 410,
    "payload-too-large": 413,
    "unsupported-media-type": 415,
    "misconfigured": 500,
    "copy-failed": 502,
    "storage-unavailable": 503,
    "internal-error": 500,  # not in the contract's table: a bug still answers in JSON
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
    assert documented == CONTRACT_ERRORS
    assert set(RESULT["properties"]["error"]["enum"]) == set(CONTRACT_ERRORS)


@pytest.mark.parametrize(
    ("code", "name", "body"),
    response_examples(WEBHOOK) + response_examples(SPEC["paths"]["/health"]["get"]),
)
def test_response_examples_fit_the_result_schema(code: int, name: str, body: dict[str, Any]) -> None:
    assert set(RESULT["required"]) <= set(body)
    assert set(body) <= set(RESULT["properties"])
    assert body["status"] in RESULT["properties"]["status"]["enum"]
    if code >= 400 and "error" in body:
        assert name == body["error"] or name == "unhealthy"
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
    assert CONTRACT_ERRORS[result.body["error"]] == result.status_code
    documented = {str(code) for code in WEBHOOK["responses"]}
    assert str(result.status_code) in documented
