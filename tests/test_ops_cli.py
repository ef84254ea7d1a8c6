"""The ops command line's argument forms (issue 16, item 1): options before or after the command, and
no error message that echoes an option's value, whatever was mistyped."""

from __future__ import annotations

import base64
import subprocess
import sys
import uuid

import pytest
from azure.storage.blob import ContainerClient

from devtools.azurite import Azurite
from ops.output import OK, USAGE

from . import test_ops
from .test_ops import ROOT, Cli

ops = test_ops.ops

KEY = base64.b64encode(b"a-secret-account-key-that-must-never-print").decode()
SIG = "c2VjcmV0LXNpZ25hdHVyZQ%3D%3D"
WITH_KEY = f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={KEY};EndpointSuffix=core.windows.net"
WITH_SAS = (
    "BlobEndpoint=https://acct.blob.core.windows.net/;"
    f"SharedAccessSignature=sv=2022-11-02&ss=b&srt=co&sp=rl&se=2030-01-01T00%3A00%3A00Z&sig={SIG}"
)
SAS_URL = f"https://acct.blob.core.windows.net/?sv=2022-11-02&sig={SIG}"


async def test_options_go_before_or_after_the_command(azurite: Azurite, destination: ContainerClient, ops: Cli) -> None:
    destination.create_container()
    container = destination.container_name
    before = await ops("--connection-string", azurite.customer, "--container", container, "pending", environ={})
    after = await ops("pending", "--connection-string", azurite.customer, "--container", container, environ={})
    mixed = await ops("--json", "--container", container, "failed", "--connection-string", azurite.customer, environ={})
    assert before.code == after.code == OK and before.out == after.out
    assert before.out.startswith("No pending deliveries.")
    assert mixed.code == OK and mixed.json()["container"] == container


async def test_both_ways_to_connect_across_the_command_is_a_usage_error(
    azurite: Azurite, ops: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    ran = await ops("--connection-string", WITH_KEY, "pending", "--account-url", "https://acct.blob.core.windows.net")
    assert ran.code == USAGE and "give --connection-string or --account-url, not both" in ran.err
    assert KEY not in ran.err + capsys.readouterr().err


MISTYPED = [
    ["--conection-string", WITH_KEY, "pending"],  # before the command: the value is taken for the command
    ["pending", "--conection-string", WITH_KEY],
    ["pending", f"--conection-string={WITH_KEY}"],
    [WITH_KEY, "pending"],
    ["pending", "--max", WITH_KEY],
    ["pending", "--since", WITH_KEY],
    ["find", "--task", "t", WITH_SAS],
    ["pending", "--conection-string", WITH_SAS],
    ["replay-poison", "--host-conection-string", WITH_KEY],
    ["check", "--acount-url", SAS_URL, "x"],
    ["--connection-string", WITH_KEY, "nonsense"],
]


@pytest.mark.parametrize("argv", MISTYPED, ids=range(len(MISTYPED)))
async def test_no_error_echoes_an_options_value(argv: list[str], ops: Cli, capsys: pytest.CaptureFixture[str]) -> None:
    ran = await ops(*argv, environ={})
    printed = ran.out + ran.err + "".join(capsys.readouterr())
    assert ran.code == USAGE
    assert "error:" in printed
    for secret in (KEY, SIG, "AccountKey=", "SharedAccessSignature", "sig="):
        assert secret not in printed, printed


async def test_a_mistyped_option_is_named_and_the_commands_listed(ops: Cli, capsys: pytest.CaptureFixture[str]) -> None:
    await ops("pending", "--conection-string", WITH_KEY, environ={})
    assert "unrecognized --conection-string and 0" not in (shown := capsys.readouterr().err)
    assert "unrecognized --conection-string and 1 other argument(s) (values are not shown)" in shown
    await ops(WITH_KEY, environ={})
    assert "unknown command (choose from find, pending, failed, check, replay-poison, smoke)" in capsys.readouterr().err


async def test_an_invalid_connection_string_is_not_repeated(ops: Cli) -> None:
    ran = await ops("pending", "--connection-string", f"AccountKey={KEY};nonsense", environ={})
    assert ran.code == 3 and "not a valid storage connection string" in ran.err and KEY not in ran.err + ran.out


def test_the_real_entry_point_hides_a_mistyped_options_value() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "ops", "pending", "--conection-string", WITH_KEY, "--container", uuid.uuid4().hex],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == USAGE and "--conection-string" in shown.stderr
    assert KEY not in shown.stdout + shown.stderr and "AccountKey" not in shown.stdout + shown.stderr
