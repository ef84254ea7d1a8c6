"""`python -m ops smoke` against the real app served over HTTP by the local host, on a real Azurite.

Azurite answers Get User Delegation Key only to OAuth over https (checked: over http, with the
account key, it says "Only authentication scheme Bearer is supported"), and the test session's Azurite
is http. So here the smoke test is given connection strings and signs an **account-key SAS**, and its
export line says so; in Azure, given --account-url, it signs a user-delegation SAS with your identity.
The local host runs no timer triggers: the tests write the status blob the Functions host keeps for the
reconciliation timer (its path and JSON as the host writes them) to check how the smoke test reads it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from azure.storage.blob import BlobServiceClient

from devtools.azurite import Azurite, free_port
from ops.cli import run

from .test_localhost import Host

KEY = "smoke-test-function-key-0123456789"
STATUS_BLOB = "timers/localhost-1234/Host.Functions.reconcile_deliveries/status"


@pytest.fixture
def served(azurite: Azurite, container_name: str) -> Iterator[Host]:
    host = Host(azurite, container_name, azurite.customer)
    yield host
    logged = host.stop()
    assert "sig=" not in logged, "the scratch export's SAS reached the local host's log"


def _timer_ran(azurite: Azurite, ago: timedelta) -> None:
    last = (datetime.now(UTC) - ago).strftime("%Y-%m-%dT%H:%M:%S.%f0+00:00")  # seven digits, as the host
    status = {"Last": last, "Next": last, "LastUpdated": last}
    hosts = BlobServiceClient.from_connection_string(azurite.host_storage).get_container_client("azure-webjobs-hosts")
    if not hosts.exists():
        hosts.create_container()
    hosts.upload_blob(STATUS_BLOB, json.dumps(status), overwrite=True)


def _argv(azurite: Azurite, host: Host, container: str, *extra: str) -> list[str]:
    return [
        "smoke",
        "--url",
        f"{host.base}/api/smartdocumentor/anonymization",
        "--connection-string",
        azurite.customer,
        "--container",
        container,
        "--host-connection-string",
        azurite.host_storage,
        "--copy-wait",
        "10",
        *extra,
    ]


def _smoke_containers(azurite: Azurite) -> list[str]:
    client = BlobServiceClient.from_connection_string(azurite.customer)
    return [c.name for c in client.list_containers(name_starts_with="smoke-")]


async def _ready(host: Host) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        await host.wait_ready(session)


async def test_smoke_passes_end_to_end_and_cleans_up(azurite: Azurite, served: Host, container_name: str) -> None:
    await _ready(served)
    _timer_ran(azurite, timedelta(minutes=3))
    out = io.StringIO()

    code = await run(_argv(azurite, served, container_name), environ={"FUNCTION_KEY": KEY}, out=out)

    text = out.getvalue()
    lines = text.splitlines()
    verdicts = {line.split()[1]: line.split()[0] for line in lines}
    assert verdicts == {
        "health": "ok",
        "export": "ok",
        "delivery": "ok",
        "stored": "ok",
        "duplicate": "ok",
        "timer": "ok",
        "telemetry": "skip",  # no --app-insights: it says it could not check
        "cleanup": "ok",
    }, text
    assert code == 0
    assert "account-key SAS" in text  # the Azurite path, said so (see the module docstring)
    assert "200 duplicate" in text
    assert "reconcile_deliveries last ran 3 min ago" in text
    assert KEY not in text and "sig=" not in text and "AccountKey" not in text
    # What it created is gone: the stored test blob, its manifest, the scratch container.
    destination = BlobServiceClient.from_connection_string(azurite.customer).get_container_client(container_name)
    assert [blob.name for blob in destination.list_blobs(name_starts_with="5a0e7e57-")] == []
    assert _smoke_containers(azurite) == []


async def test_smoke_fails_on_a_timer_that_stopped(azurite: Azurite, served: Host, container_name: str) -> None:
    await _ready(served)
    _timer_ran(azurite, timedelta(hours=2))
    out = io.StringIO()

    code = await run(_argv(azurite, served, container_name, "--timer-max-age", "30"), environ={}, out=out)

    assert code == 1
    timer = [line for line in out.getvalue().splitlines() if line.split()[1] == "timer"]
    assert timer and timer[0].startswith("FAIL") and "120 min ago" in timer[0], out.getvalue()


async def test_smoke_without_a_timer_status_says_it_could_not_check(
    azurite: Azurite, served: Host, container_name: str
) -> None:
    await _ready(served)
    hosts = BlobServiceClient.from_connection_string(azurite.host_storage).get_container_client("azure-webjobs-hosts")
    if hosts.exists():
        hosts.delete_blob(STATUS_BLOB)
    out = io.StringIO()

    code = await run(_argv(azurite, served, container_name), environ={}, out=out)

    assert code == 0, out.getvalue()
    assert "skip  timer" in out.getvalue() and "has not run" in out.getvalue()


async def test_smoke_fails_when_nothing_answers_and_still_cleans_up(azurite: Azurite, container_name: str) -> None:
    out = io.StringIO()
    argv = [
        "smoke",
        "--url",
        f"http://127.0.0.1:{free_port()}",
        "--connection-string",
        azurite.customer,
        "--container",
        container_name,
        "--key",
        KEY,
    ]

    code = await run(argv, environ={}, out=out)

    text = out.getvalue()
    assert code == 1
    assert text.startswith("FAIL  health") and "no answer from 127.0.0.1:" in text
    assert "FAIL  delivery" in text and "ok    cleanup" in text
    assert KEY not in text and "sig=" not in text
    assert _smoke_containers(azurite) == []


async def test_smoke_without_a_key_for_azure_says_how_to_get_one() -> None:
    out = io.StringIO()
    argv = [
        "smoke",
        "--url",
        "https://example-app.azurewebsites.net",
        "--account-url",
        "https://acct.blob.core.windows.net",
    ]

    code = await run(argv, environ={}, out=out)

    assert code == 1
    assert "no function key" in out.getvalue() and "WEBHOOK_KEY_COMMAND" in out.getvalue()


def test_base_url_accepts_the_base_health_or_webhook_url() -> None:
    from ops.smoke import base_url

    for given in (
        "https://app.azurewebsites.net",
        "https://app.azurewebsites.net/api/health",
        "https://app.azurewebsites.net/api/smartdocumentor/anonymization?code=secret",
    ):
        assert base_url(given) == "https://app.azurewebsites.net"
    with pytest.raises(ValueError, match="https URL"):
        base_url("app.azurewebsites.net")


async def test_smoke_reads_azds_outputs_from_the_environment(azurite: Azurite) -> None:
    """`set -a; eval "$(azd env get-values)"`: WEBHOOK_URL and DESTINATION_CONTAINER_URL are enough to start;
    without a key it stops before sending anything, naming how to get one."""
    out = io.StringIO()
    environ = {
        "WEBHOOK_URL": "https://func-sd-abc.azurewebsites.net/api/smartdocumentor/anonymization",
        "DESTINATION_CONTAINER_URL": "https://stdocsabc.blob.core.windows.net/smartdocumentor",
    }

    code = await run(["smoke"], environ=environ, out=out)

    assert code == 1
    assert out.getvalue().startswith("FAIL  setup      no function key:"), out.getvalue()


def test_azds_container_url_gives_the_account_and_the_container() -> None:
    from ops.smoke import split_container_url

    assert split_container_url("https://stdocsabc.blob.core.windows.net/smartdocumentor") == (
        "https://stdocsabc.blob.core.windows.net",
        "smartdocumentor",
    )
    assert split_container_url("https://stdocsabc.blob.core.windows.net/") == (
        "https://stdocsabc.blob.core.windows.net",
        None,
    )
