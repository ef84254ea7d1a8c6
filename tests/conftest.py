"""Shared fixtures: a real Azurite for the session, the real function app, SAS-bearing exports."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import azure.functions as func
import hypothesis
import pytest
from azure.functions.queue import QueueMessage
from azure.storage.blob import (
    BlobSasPermissions,
    BlobServiceClient,
    ContainerClient,
    ContentSettings,
    generate_blob_sas,
)

from devtools.azurite import (
    CUSTOMER_ACCOUNT,
    CUSTOMER_KEY,
    EXPORTS_ACCOUNT,
    EXPORTS_KEY,
    Azurite,
    connection_string,
    start_azurite,
)
from devtools.localhost import Out
from function_app import app
from receiver.models import State, TaskRecord, record_name
from receiver.runtime import RUNTIME

from .faultproxy import FaultProxy, Rule

# The SDK's retries back off 10 ms, not seconds: every throttling test retries at once. Set before the
# first store is built (receiver.store reads it then), and inherited by the hosts the tests start.
os.environ.setdefault("RECEIVER_STORAGE_RETRY_BACKOFF", "0.01")

# Shared, noisy machines: property tests judge behaviour, never speed.
hypothesis.settings.register_profile("receiver", deadline=None, print_blob=True)
hypothesis.settings.load_profile("receiver")

EXPORT_CONTAINER = "anonymized-exports"
PDF_BYTES = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
PNG_BYTES = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000") + b"\x00" * 16


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    with start_azurite() as running:
        BlobServiceClient.from_connection_string(running.exports).create_container(EXPORT_CONTAINER)
        yield running


class Secrets:
    """Every SAS signature a test handed out, to prove none leaks."""

    def __init__(self) -> None:
        self.signatures: set[str] = set()

    def add_url(self, url: str) -> None:
        for part in url.split("?", 1)[-1].split("&"):
            if part.startswith("sig="):
                raw = part[4:]
                self.signatures.update({raw, unquote(raw)})

    def leaks_in(self, text: str) -> list[str]:
        return [sig for sig in self.signatures if sig and sig in text]


@pytest.fixture
def secrets() -> Secrets:
    return Secrets()


@dataclass
class Exports:
    """SmartDocumentor's export storage stand-in: real files behind real SAS URLs."""

    azurite: Azurite
    secrets: Secrets
    client: BlobServiceClient = field(init=False)

    def __post_init__(self) -> None:
        self.client = BlobServiceClient.from_connection_string(self.azurite.exports)

    def publish(
        self,
        data: bytes = PDF_BYTES,
        *,
        name: str | None = None,
        content_type: str = "application/pdf",
        expires_in: timedelta = timedelta(hours=2),
    ) -> str:
        name = name or f"{uuid.uuid4()}/export.pdf"
        blob = self.client.get_blob_client(EXPORT_CONTAINER, name)
        blob.upload_blob(data, overwrite=True, content_settings=ContentSettings(content_type=content_type))
        return self.sas_url(name, expires_in=expires_in)

    def sas_url(self, name: str, *, expires_in: timedelta = timedelta(hours=2)) -> str:
        sas = generate_blob_sas(
            EXPORTS_ACCOUNT,
            EXPORT_CONTAINER,
            name,
            account_key=EXPORTS_KEY,
            permission=BlobSasPermissions(read=True),
            expiry=datetime.now(UTC) + expires_in,
        )
        url = f"{self.client.get_blob_client(EXPORT_CONTAINER, name).url}?{sas}"
        self.secrets.add_url(url)
        return url


@pytest.fixture
def exports(azurite: Azurite, secrets: Secrets) -> Exports:
    return Exports(azurite, secrets)


@pytest.fixture
def container_name() -> str:
    return f"dest-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def configured(
    azurite: Azurite, container_name: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[dict[str, str]]:
    """App settings pointing at Azurite, with a container of this test's own."""
    settings = {
        "DESTINATION_CONNECTION_STRING": azurite.customer,
        "DESTINATION_CONTAINER": container_name,
        "ALLOWED_SOURCE_HOSTS": azurite.blob_host,
        "ALLOW_HTTP_SOURCES": "true",
        "COPY_WAIT_SECONDS": "2",
    }
    for name in ("DESTINATION_ACCOUNT_URL", "BLOB_NAME_TEMPLATE", "TAG_FIELDS", "WRITE_MANIFEST", "MAX_BODY_BYTES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    await RUNTIME.reset()
    yield settings
    await RUNTIME.reset()


@pytest.fixture
def destination(azurite: Azurite, container_name: str) -> ContainerClient:
    return BlobServiceClient.from_connection_string(azurite.customer).get_container_client(container_name)


@dataclass
class Response:
    status: int
    body: dict[str, Any]
    text: str
    headers: dict[str, str]
    verification: str | None


# app.get_functions() indexes the app and may run only once per process, like the worker does.
FUNCTIONS = {function.get_function_name(): function for function in app.get_functions()}


def user_function(name: str) -> Any:
    return FUNCTIONS[name].get_user_function()


@dataclass
class Webhook:
    secrets: Secrets

    async def post(self, payload: dict[str, Any] | bytes, *, headers: dict[str, str] | None = None) -> Response:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        request = func.HttpRequest(
            method="POST",
            url="http://localhost:7071/api/smartdocumentor/anonymization",
            headers={"Content-Type": "application/json"} if headers is None else headers,
            params={"code": "test-key"},
            body=body,
        )
        out = Out()
        response = await user_function("anonymization_webhook")(request, out)
        return self._read(response, out.value)

    async def health(self) -> Response:
        request = func.HttpRequest(method="GET", url="http://localhost:7071/api/health", headers={}, body=b"")
        return self._read(await user_function("health")(request), None)

    def _read(self, response: func.HttpResponse, verification: str | None) -> Response:
        text = response.get_body().decode("utf-8")
        assert response.mimetype == "application/json"
        assert not self.secrets.leaks_in(text), "a SAS signature leaked into a response"
        body = json.loads(text)
        assert isinstance(body.get("status"), str) and isinstance(body.get("message"), str)
        return Response(response.status_code, body, text, dict(response.headers), verification)


@pytest.fixture
def webhook(secrets: Secrets) -> Webhook:
    return Webhook(secrets)


@pytest.fixture(autouse=True)
def no_sas_in_logs(caplog: pytest.LogCaptureFixture, secrets: Secrets) -> Iterator[None]:
    """Every test: capture all log records at DEBUG and prove no SAS signature is in any of them."""
    caplog.set_level(logging.DEBUG)
    yield
    for record in caplog.records:
        text = record.getMessage() + (caplog.handler.format(record) if record.exc_info else "")
        leaks = secrets.leaks_in(text)
        assert not leaks, f"SAS signature leaked into log line from {record.name}: {text[:200]}"


def notification(url: str, **overrides: Any) -> dict[str, Any]:
    """A realistic SmartDocumentor notification for ``url``."""
    body: dict[str, Any] = {
        "taskId": str(uuid.uuid4()),
        "taskNumber": 1207,
        "workspaceId": "2f0c7a55-8f0e-4c1b-9a43-5b1f0c6d3e21",
        "totalPages": 3,
        "displayName": "Contrato de serviços",
        "exportedFileUrl": url,
        "exportedFileContentType": "application/pdf",
        "exportedFileExpiresOn": (datetime.now(UTC) + timedelta(hours=24)).isoformat(),
        "lastCheckoutByUserName": "Ana Sousa",
        "lastCheckedOutBy": "f7c5a3de-0000-4000-8000-000000000001",
        "lastIntegratedBy": None,
        "lastIntegratedByUserName": None,
        "lastCheckedOutUntil": None,
        "metadata": {"Department": "Legal", "Relatório": "Anual 2026"},
    }
    body.update(overrides)
    return body


@pytest.fixture
async def proxy(azurite: Azurite) -> AsyncIterator[FaultProxy]:
    running = await FaultProxy(azurite.blob_port).start()
    yield running
    await running.stop()


@pytest.fixture
async def proxied(
    configured: dict[str, str], proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch, destination: ContainerClient
) -> FaultProxy:
    """The receiver talks to the customer's storage through the proxy; the container exists."""
    monkeypatch.setenv("DESTINATION_CONNECTION_STRING", connection_string(CUSTOMER_ACCOUNT, CUSTOMER_KEY, proxy.port))
    monkeypatch.setenv("COPY_WAIT_SECONDS", "1")
    await RUNTIME.reset()
    destination.create_container()
    return proxy


# --- what the Azurite suites read back ------------------------------------------------------------------


def delivery_of(url: str) -> str:
    """The `delivery` of an export: the sha256 of its link."""
    return hashlib.sha256(url.encode()).hexdigest()


def name_of(body: dict[str, Any]) -> str:
    """The blob name (without the container) of a webhook answer."""
    return str(body["blob"].split("/", 1)[1])


def manifest_of(destination: ContainerClient, name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(destination.get_blob_client(f"{name}.json").download_blob().readall())
    return document


def record_of(destination: ContainerClient, payload: dict[str, Any]) -> TaskRecord | None:
    """The task record of ``payload``'s task, or None."""
    blob = destination.get_blob_client(record_name(str(payload["workspaceId"]), str(payload["taskId"])))
    if not blob.exists():
        return None
    return TaskRecord.from_bytes(blob.download_blob().readall())


def files(destination: ContainerClient) -> list[str]:
    """The files in the container: no manifests, no task records."""
    return sorted(
        b.name for b in destination.list_blobs() if not b.name.endswith(".json") and not b.name.startswith(".")
    )


def assert_delivered(destination: ContainerClient, payload: dict[str, Any], name: str, data: bytes) -> dict[str, Any]:
    """What a 2xx stored/duplicate/superseded guarantees of the task's file: it exists and holds ``data`` (one
    of the task's 2xx'd exports), its metadata `delivery` names that export, its manifest describes it, and
    the task record says it is the current one at that name."""
    url = payload["exportedFileUrl"]
    blob = destination.get_blob_client(name)
    assert blob.download_blob().readall() == data, f"{name} holds another export's bytes"
    assert blob.get_blob_properties().metadata["delivery"] == delivery_of(url)
    manifest = manifest_of(destination, name)
    assert manifest["delivery"] == delivery_of(url), "the manifest describes another export"
    assert manifest["copyStatus"] == "success" and manifest["taskId"] == payload["taskId"]
    record = record_of(destination, payload)
    assert record is not None and record.current == delivery_of(url), "the record names another current file"
    current = record.current_delivery
    assert current is not None and current.blob == name and current.state is State.STORED
    return manifest


async def run_verifier(message: str, *, dequeue_count: int = 1) -> None:
    """The real queue function on ``message`` (raises CopyStillRunning while the copy is unfinished)."""
    function = FUNCTIONS["verify_pending_copy"].get_user_function()
    # The worker's own message class (untyped): it carries dequeue_count, which func.QueueMessage cannot.
    message_in = QueueMessage(id="test-message", body=message.encode(), dequeue_count=dequeue_count)  # type: ignore[no-untyped-call]
    await function(message_in)


async def run_timer() -> None:
    """The real reconciliation timer function."""
    await FUNCTIONS["reconcile_deliveries"].get_user_function()(None)


async def reached(rule: Rule) -> None:
    """Wait until the proxy has caught the request ``rule`` holds."""
    await asyncio.wait_for(rule.reached.wait(), timeout=20)


def every_blob(destination: ContainerClient) -> list[str]:
    """Every blob in the container: files, manifests and task records."""
    return sorted(b.name for b in destination.list_blobs())


def assert_stored(destination: ContainerClient, name: str, data: bytes, url: str) -> dict[str, Any]:
    """The blob holds this export's bytes and names it in `delivery`, and so does its manifest."""
    blob = destination.get_blob_client(name)
    assert blob.download_blob().readall() == data
    assert blob.get_blob_properties().metadata["delivery"] == delivery_of(url)
    manifest = manifest_of(destination, name)
    assert manifest["delivery"] == delivery_of(url), "the manifest describes another export"
    return manifest


# --- scheduling under pytest-xdist (`make test`) -------------------------------------------------------

# The longest tests, first. `make test` runs pytest-xdist's work-stealing scheduler (--dist worksteal):
# each worker gets one contiguous share of this order, kept together by module (each module's fixtures
# set up on few workers), and an idle worker steals from the end of another's queue. (--dist load hands
# tests out in small batches and spread every module over every worker: about 200 s of wall time on two
# cores, against about 125 s; the order itself moves it by less than the noise between runs.)
LONGEST_FIRST = (
    "tests/test_load.py::",
    "tests/test_infra.py::test_checkov",
    "tests/test_simulator.py::test_random_schedules",
    "tests/test_fuzz_function.py::",
    "tests/test_openapi_schema.py::",
    "tests/test_run.py::",
    "tests/test_queries.py::",
    "tests/test_core.py::",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # one process: the files' own order (module fixtures are set up once)

    def rank(item: pytest.Item) -> int:
        return next((n for n, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)), len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: the same order on every worker, as xdist requires
