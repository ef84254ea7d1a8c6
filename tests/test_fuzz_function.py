"""Fuzz the real function against Azurite: every answer is a clean 4xx or a stored, legal result."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.azurite import Azurite
from receiver.models import RECORD_PREFIX, TaskRecord
from receiver.runtime import RUNTIME
from receiver.store import RETRY_BACKOFF_VARIABLE

from .conftest import Exports, Secrets, Webhook, notification

TAG_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 +-./:=_")
text = st.text(max_size=120)
overrides = st.fixed_dictionaries(
    {},
    optional={
        "displayName": st.one_of(st.none(), text),
        "taskNumber": st.one_of(st.integers(-5, 10**6), st.text(max_size=6), st.booleans()),
        "totalPages": st.one_of(st.none(), st.integers(-2, 500)),
        "metadata": st.one_of(
            st.none(),
            st.dictionaries(text, text, max_size=14),
            st.lists(st.fixed_dictionaries({"key": text, "value": text}), max_size=14),
            st.integers(),
        ),
        "exportedFileContentType": st.sampled_from(["application/pdf", "image/png", "image/jpeg", "x/odd", ""]),
        "extra": st.recursive(st.none() | st.integers() | text, lambda c: st.lists(c, max_size=3), max_leaves=5),
    },
)


@pytest.fixture
def fuzz_env(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> str:
    container = f"fuzz-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("DESTINATION_CONNECTION_STRING", azurite.customer)
    monkeypatch.setenv("DESTINATION_CONTAINER", container)
    monkeypatch.setenv("ALLOWED_SOURCE_HOSTS", azurite.blob_host)
    monkeypatch.setenv("ALLOW_HTTP_SOURCES", "true")
    monkeypatch.setenv(RETRY_BACKOFF_VARIABLE, "0.01")
    for name in ("DESTINATION_ACCOUNT_URL", "BLOB_NAME_TEMPLATE", "TAG_FIELDS", "WRITE_MANIFEST", "MAX_BODY_BYTES"):
        monkeypatch.delenv(name, raising=False)
    return container


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(changes=overrides)
def test_fuzzed_notifications_are_stored_legally_or_rejected_cleanly(
    changes: dict[str, Any], fuzz_env: str, azurite: Azurite, exports: Exports, secrets: Secrets
) -> None:
    container = BlobServiceClient.from_connection_string(azurite.customer).get_container_client(fuzz_env)
    payload = notification(exports.publish(), **changes)
    before = {b.name for b in container.list_blobs()} if container.exists() else set()

    async def post() -> Any:
        try:
            return await Webhook(secrets).post(payload)
        finally:
            await RUNTIME.close()

    response = asyncio.run(post())
    after = {b.name for b in container.list_blobs()} if container.exists() else set()
    if response.status != 200:
        assert response.status == 400, response.body
        assert response.body["status"] == "rejected"
        assert after == before  # nothing left behind
        return
    name = response.body["blob"].split("/", 1)[1]
    [record] = [blob for blob in after - before if blob.startswith(RECORD_PREFIX)]
    assert after - before == {name, f"{name}.json", record}
    stored = TaskRecord.from_bytes(container.get_blob_client(record).download_blob().readall())
    assert stored.current_delivery is not None and stored.current_delivery.blob == name
    assert not secrets.leaks_in(json.dumps(stored.dump()))
    blob = container.get_blob_client(name)
    props = blob.get_blob_properties()
    assert all(value.isascii() for value in props.metadata.values())
    tags = blob.get_blob_tags()
    assert len(tags) <= 10
    assert all(set(key) <= TAG_CHARS and set(value) <= TAG_CHARS for key, value in tags.items())
    manifest = json.loads(container.get_blob_client(f"{name}.json").download_blob().readall())
    assert manifest["taskId"] == payload["taskId"]
