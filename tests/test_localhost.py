"""The dev-only local host over real HTTP: same routes, same answers, and the queue path works."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient

from devtools.azurite import CUSTOMER_ACCOUNT, CUSTOMER_KEY, Azurite, connection_string, free_port, stop_process
from devtools.localhost import every_minutes
from receiver.attention import PENDING_NAME

from .conftest import PDF_BYTES, Exports, Secrets, notification
from .faultproxy import FaultProxy

ROOT = Path(__file__).resolve().parent.parent


class Host:
    def __init__(self, azurite: Azurite, container: str, destination: str, extra: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        env.update(
            {
                "AzureWebJobsStorage": azurite.host_storage,
                "DESTINATION_CONNECTION_STRING": destination,
                "DESTINATION_CONTAINER": container,
                "ALLOWED_SOURCE_HOSTS": azurite.blob_host,
                "ALLOW_HTTP_SOURCES": "true",
                "COPY_WAIT_SECONDS": "1",
                **(extra or {}),
            }
        )
        self.log = tempfile.NamedTemporaryFile(prefix="localhost-", suffix=".log", delete=False)  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "devtools.localhost", "--port", str(self.port), "--settings", "/nonexistent"],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    async def wait_ready(self, session: aiohttp.ClientSession) -> None:
        for _ in range(200):
            assert self.process.poll() is None, "local host exited"
            try:
                async with session.get(f"{self.base}/api/health") as response:
                    if response.status in (200, 503):
                        return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
        raise AssertionError("local host did not start")

    def stop(self) -> str:
        """Stop the host and return everything it logged."""
        stop_process(self.process)
        self.log.close()
        text = Path(self.log.name).read_text(errors="replace")
        Path(self.log.name).unlink()
        return text


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as client:
        yield client


@pytest.fixture
def host(azurite: Azurite, container_name: str, secrets: Secrets) -> Iterator[Host]:
    running = Host(azurite, container_name, azurite.customer)
    yield running
    logged = running.stop()
    assert "delivery stored status=200 task=" in logged  # the host's log was really captured
    assert '"POST /api/smartdocumentor/anonymization" 200' in logged  # the access log, without its query
    assert "code=" not in logged, "the function key (?code=) reached the local host's access log"
    assert f"INFO receiver.store: created the container {container_name}" in logged  # expected: not a WARNING
    assert not secrets.leaks_in(logged), "a SAS signature leaked into the local host's log"


async def test_local_host_serves_the_webhook_over_http(
    host: Host, session: aiohttp.ClientSession, exports: Exports, destination: ContainerClient
) -> None:
    await host.wait_ready(session)
    payload = notification(exports.publish())
    url = f"{host.base}/api/smartdocumentor/anonymization?code=any"

    async with session.post(url, json=payload) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/json")
        body = await response.json()
    assert body["status"] == "stored"
    name = body["blob"].split("/", 1)[1]
    assert destination.get_blob_client(name).download_blob().readall() == PDF_BYTES
    assert destination.get_blob_client(name).get_blob_tags()["taskId"] == payload["taskId"]

    async with session.post(url, data=b"not json", headers={"Content-Type": "application/json"}) as response:
        assert response.status == 400
        assert (await response.json())["error"] == "invalid-json"
    for empty in (b"", b" \r\n"):  # what curl sends for --data-binary @a-path-that-does-not-exist
        async with session.post(url, data=empty, headers={"Content-Type": "application/json"}) as response:
            assert response.status == 400
            answer = await response.json()
        assert answer["error"] == "invalid-json" and "body is empty" in answer["message"]
    async with session.get(url) as response:
        assert response.status == 405  # POST only, like the function's route
    async with session.get(f"{host.base}/api/health") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ok"

    # One reconciliation run on demand, as the Functions host's admin endpoint runs a timer function.
    async with session.post(f"{host.base}/admin/functions/reconcile_deliveries", json={}) as response:
        assert response.status == 202
    summary = destination.get_blob_client(PENDING_NAME)
    for _ in range(300):  # another process: wait for what it writes
        if summary.exists():
            break
        await asyncio.sleep(0.05)
    assert json.loads(summary.download_blob().readall())["records"] == 1


@pytest.mark.parametrize(
    ("schedule", "minutes"),
    [
        ("0 */10 * * * *", 10),
        ("%RECONCILE_SCHEDULE%", 5),
        ("0 0 * * * *", None),
        ("0 */0 * * * *", None),
        ("0 */7 * * * *", None),
    ],
)
def test_the_local_host_runs_a_timer_every_n_minutes_only_for_that_form(
    schedule: str, minutes: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECONCILE_SCHEDULE", "0 */5 * * * *")
    assert every_minutes(schedule) == minutes


async def test_local_host_runs_the_verification_queue(
    azurite: Azurite,
    container_name: str,
    session: aiohttp.ClientSession,
    exports: Exports,
    destination: ContainerClient,
) -> None:
    # The proxy performs Put Block From URL for Azurite; every file is staged, and the answer never waits
    # for the blocks (202): the local host's queue loop runs the queue function, which commits it.
    proxy = await FaultProxy(azurite.blob_port).start()
    destination_string = connection_string(CUSTOMER_ACCOUNT, CUSTOMER_KEY, proxy.port)
    host = Host(azurite, container_name, destination_string, {"SYNC_COPY_MAX_MIB": "0", "COPY_WAIT_SECONDS": "0"})
    try:
        BlobServiceClient.from_connection_string(azurite.customer).create_container(container_name)
        await host.wait_ready(session)
        payload = notification(exports.publish())
        async with session.post(f"{host.base}/api/smartdocumentor/anonymization", json=payload) as response:
            assert response.status == 202
            body = await response.json()
        assert body["status"] == "copying"
        name = body["blob"].split("/", 1)[1]
        manifest = destination.get_blob_client(f"{name}.json")
        for _ in range(300):  # another process: wait for what it writes
            if manifest.exists():
                break
            await asyncio.sleep(0.05)
        document = json.loads(manifest.download_blob().readall())
        assert document["copyStatus"] == "success"
        assert document["taskId"] == payload["taskId"]
        assert destination.get_blob_client(name).download_blob().readall() == PDF_BYTES
    finally:
        logged = host.stop()
        await proxy.stop()
    assert not exports.secrets.leaks_in(logged), "a SAS signature leaked into the local host's log"


async def test_local_host_names_a_bad_setting_once_at_start(
    azurite: Azurite, container_name: str, session: aiohttp.ClientSession
) -> None:
    host = Host(azurite, container_name, azurite.customer, {"COPY_WAIT_SECONDS": "600"})
    try:
        await host.wait_ready(session)
        async with session.get(f"{host.base}/api/health") as response:
            assert response.status == 503
    finally:
        logged = host.stop()
    at_start = [line for line in logged.splitlines() if " ERROR " in line and "health:" not in line]
    assert len(at_start) == 1, logged  # once at start, before any request (each health request logs its own)
    assert "COPY_WAIT_SECONDS" in at_start[0] and "misconfigured" in at_start[0]
    assert logged.index(at_start[0]) < logged.index("GET /api/health")
