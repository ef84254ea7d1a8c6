"""The ops command line never prints a secret, whatever argument it was typed into, and its usage
errors are one line with exit 2 (never a traceback)."""

from __future__ import annotations

import base64
import io
import json
import logging
import subprocess
import sys
import uuid
from typing import Any

import pytest

from ops.cli import build_parser, run
from ops.output import OK, USAGE

from .test_ops import ROOT, Ops

KEY = base64.b64encode(b"a-secret-account-key-that-must-never-print").decode()
SIG = "c2VjcmV0LXNpZ25hdHVyZQ%3D%3D"
WITH_KEY = f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={KEY};EndpointSuffix=core.windows.net"
WITH_SAS = (
    "BlobEndpoint=https://acct.blob.core.windows.net/;"
    f"SharedAccessSignature=sv=2022-11-02&ss=b&srt=co&sp=rl&se=2030-01-01T00%3A00%3A00Z&sig={SIG}"
)
SAS_URL = f"https://acct.blob.core.windows.net/c/x.pdf?sv=2022-11-02&sig={SIG}"
SECRETS = {"key": WITH_KEY, "sas-cs": WITH_SAS, "sas-url": SAS_URL}
LEAKS = (KEY, SIG, "c2VjcmV0LXNpZ25hdHVyZQ")

BASE = {
    "find": ["find", "--task", "task-1"],
    "pending": ["pending"],
    "failed": ["failed"],
    "check": ["check", "--task", "task-1"],
    "fail": ["fail", "--task", "task-1", "--reason", "r"],
    "replay-poison": ["replay-poison", "--dry-run"],
}


def _options(command: str) -> list[str]:
    """Every option of the command that takes a value (from the parser itself)."""
    parser = build_parser()
    sub = next(action for action in parser._actions if action.dest == "command")
    choices: Any = sub.choices
    command_parser = choices[command]
    return [
        action.option_strings[-1]
        for action in command_parser._actions
        if action.option_strings and action.nargs != 0 and action.dest != "help"
    ]


CASES = [
    (command, option, which) for command in BASE for option in [*_options(command), "positional"] for which in SECRETS
]


@pytest.mark.parametrize(("command", "option", "which"), CASES, ids=["-".join(case) for case in CASES])
async def test_no_secret_in_any_argument_is_ever_printed(
    command: str, option: str, which: str, caplog: pytest.LogCaptureFixture
) -> None:
    ops = Ops()
    await ops.world.post(ops.world.export("task-1"))
    secret = SECRETS[which]
    argv = list(BASE[command])
    if option == "positional":
        argv.append(secret)
    elif option in argv:
        argv[argv.index(option) + 1] = secret
    else:
        argv += [option, secret]
    for as_json in (False, True):
        out, err = io.StringIO(), io.StringIO()
        await run(
            [*argv, "--json"] if as_json else argv,
            environ={},
            out=out,
            err=err,
            storage=ops.world.storage,
            settings=ops.world.settings,
            queues=ops.queues,
            now=ops.world.now,
        )
        printed = out.getvalue() + err.getvalue() + "".join(r.getMessage() for r in caplog.records)
        for leak in LEAKS:
            assert leak not in printed, (argv, printed)


async def test_a_secret_stored_in_a_record_is_not_printed(caplog: pytest.LogCaptureFixture) -> None:
    ops = Ops()
    await ops.accept(ops.world.export("task-1"))
    ran = io.StringIO()
    code = await run(
        ["fail", "--task", "task-1", "--reason", "see https://h/x?sig=abc", "--force"],
        environ={},
        out=ran,
        err=io.StringIO(),
        storage=ops.world.storage,
        settings=ops.world.settings,
        now=ops.world.now,
    )
    assert code == USAGE  # a reason that holds a SAS is refused whole
    for command in (["find", "--task", "task-1"], ["find", "--task", "task-1", "--json"]):
        out = io.StringIO()
        await run(
            command, environ={}, out=out, storage=ops.world.storage, settings=ops.world.settings, now=ops.world.now
        )
        assert ops.world.export("task-1").url.split("?")[1] not in out.getvalue()
        assert "sig=" not in out.getvalue()


USAGE_ERRORS = [
    ["replay-poison", "--host-queue-url", "http://acct.queue.core.windows.net"],
    ["replay-poison", "--host-queue-url", SAS_URL],
    ["find"],
    ["check"],
    ["pending", "--connection-string", WITH_KEY, "--account-url", "https://acct.blob.core.windows.net"],
    ["--conection-string", WITH_KEY, "pending"],
    ["pending", f"--conection-string={WITH_KEY}"],
    [WITH_KEY, "pending"],
    ["pending", "--max", WITH_KEY],
    ["pending", "--since", WITH_KEY],
    ["find", "--task", WITH_KEY],
    ["fail", "--task", "t", "--reason", SAS_URL],
    ["--connection-string", WITH_KEY, "nonsense"],
    # Numbers and times past what a date holds (float("inf"), a zone that moves year 9999 past its end).
    ["pending", "--older-than", "inf"],
    ["pending", "--older-than", "nan"],
    ["pending", "--older-than", "1e12"],
    ["pending", "--since", "1e12"],
    ["failed", "--since", "inf"],
    ["failed", "--since", "9999-12-31T23:59:59-01:00"],
    ["pending", "--since", "0001-01-01T00:00+01:00"],
]


@pytest.mark.parametrize("argv", USAGE_ERRORS, ids=range(len(USAGE_ERRORS)))
async def test_usage_errors_exit_2_with_one_line_and_no_value(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = await run(argv, environ={}, out=out, err=err)
    printed = out.getvalue() + err.getvalue() + "".join(capsys.readouterr())
    assert code == USAGE, printed
    assert "Traceback" not in printed and "error:" in printed
    for leak in (*LEAKS, "AccountKey=", "SharedAccessSignature"):
        assert leak not in printed, printed


@pytest.mark.parametrize(
    "argv",
    [
        ["--json", "pendng"],
        ["pending", "--json", "--since", "yesterday"],
        ["pending", "--jso", "--since", "yesterday"],
        ["find", "--json"],
        [
            "find",
            "--json",
            "--task",
            "t",
            "--connection-string",
            "UseDevelopmentStorage=true",
            "--account-url",
            "https://a.blob.core.windows.net",
        ],
    ],
)
async def test_a_usage_error_with_json_is_one_json_document_on_stdout(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert await run(argv, environ={}, out=out, err=err) == USAGE
    document = json.loads(out.getvalue())
    assert document["error"] == "usage" and document["message"], document
    assert "yesterday" not in document["message"]  # never the value typed


async def test_a_mistyped_option_is_named_and_the_commands_listed(capsys: pytest.CaptureFixture[str]) -> None:
    await run(["pending", "--conection-string", WITH_KEY], environ={})
    assert "unrecognized --conection-string and 1 other argument(s) (values are not shown)" in capsys.readouterr().err
    await run([WITH_KEY], environ={})
    assert "unknown command (choose from find, pending, failed, check, fail, replay-poison, smoke)" in (
        capsys.readouterr().err
    )


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
    assert len(shown.stderr.strip().splitlines()) == 1  # one line, no usage block, no traceback


def test_logging_of_the_receiver_logger_is_not_silenced() -> None:
    assert logging.getLogger("receiver").getEffectiveLevel() <= logging.ERROR


async def test_a_task_id_holding_a_url_query_is_found_and_shown_as_it_is_named() -> None:
    """Task ids keep a URL's query (docs/reference.md, Secrets): --task takes such an id whole, and the output
    shows it whole (in the commands it proposes too), so it can be pasted back; two ids that differ only in
    their query stay apart. Other URLs' queries are still hidden."""
    ops = Ops()
    for task in ("ref://erp/doc?id=1001", "ref://erp/doc?id=1002"):
        assert (await ops.world.post(ops.world.export(task))).status_code == 200
    found = await ops("find", "--task", "ref://erp/doc?id=1001")
    assert found.code == OK and "1 delivery(ies)" in found.out, (found.code, found.out, found.err)
    assert "task ref://erp/doc?id=1001 " in found.out and "?REDACTED" not in found.out.split("\n")[0], found.out
    listed = await ops("find", "--workspace", "ws-1", "--json")
    shown = {item["taskId"] for item in listed.json()["tasks"]}
    assert shown == {"ref://erp/doc?id=1001", "ref://erp/doc?id=1002"}, shown


async def test_a_task_whose_id_held_a_sig_is_found_by_the_id_intake_stored_or_as_sent_and_listed_whole() -> None:
    """Intake stores a `sig` value in an id as `sig=REDACTED~` and 16 hex digits of its hash (docs/reference.md,
    Secrets): the answer names the task that way, the listing shows it whole (with its file's name), and
    --task takes it, and the id as sent (its secret never echoed)."""
    ops = Ops()
    tasks = ("lot-sig=SECRETAAAA", "lot-sig=SECRETBBBB")
    answers = [await ops.world.post(ops.world.export(task, "x.pdf")) for task in tasks]
    assert [answer.status_code for answer in answers] == [200, 200], [answer.body for answer in answers]
    first, second = (answer.body["taskId"] for answer in answers)
    assert first.startswith("lot-sig=REDACTED~") and first != second, (first, second)
    listed = await ops("find", "--workspace", "ws-1")
    assert first in listed.out and second in listed.out and "SECRET" not in listed.out, listed.out
    found = await ops("find", "--task", first, "--workspace", "ws-1")
    assert found.code == OK and "1 delivery(ies)" in found.out and "x.pdf" in found.out, (found.out, found.err)
    # The id as SmartDocumentor shows it, secret and all: looked up as intake stored it, the secret never echoed.
    typed = await ops("find", "--task", "lot-sig=SECRETAAAA", "--workspace", "ws-1")
    assert typed.code == OK and "1 delivery(ies)" in typed.out, (typed.out, typed.err)
    assert first in typed.err and "SECRETAAAA" not in typed.err + typed.out, typed.err


async def test_a_file_whose_name_cut_the_hashed_sig_of_its_task_id_in_two_is_shown_whole() -> None:
    """A long id's identity segment is cut before its own "~" and hash, possibly inside the `REDACTED~<hash>`
    intake left of a sig: the output keeps such a name whole (it holds no secret), so it can be copied."""
    ops = Ops()
    answer = await ops.world.post(ops.world.export("x" * 90 + "sig=abcdefgh", "invoice.pdf"))
    assert answer.status_code == 200, answer.body
    blob, stored_id = answer.body["blob"], answer.body["taskId"]
    assert "sig=REDACTED~" in stored_id and "sig=REDACTED_" in blob and "abcdefgh" not in blob, (stored_id, blob)
    shown = await ops("find", "--task", stored_id)
    assert shown.code == OK and blob.split("/", 1)[1] in shown.out, shown.out


async def test_an_id_holding_a_key_beside_a_sig_is_refused_before_anything_is_repeated() -> None:
    ops = Ops()
    for argv in (
        ("find", "--task", "lot?sig=abc&AccountKey=S3CRETKEYs3cretkey=="),
        ("find", "--task", "lot?sig=abc&SharedAccessKey=S3CRETKEYs3cretkey==", "--json"),
        ("fail", "--task", "t", "--workspace", "w?sig=zz&AccountKey=S3CRETKEYs3cretkey==", "--reason", "x"),
    ):
        ran = await ops(*argv)
        assert ran.code == USAGE and "S3CRETKEY" not in ran.out + ran.err, (argv, ran.out, ran.err)


@pytest.mark.parametrize("task", ["-lot-7", "ref://erp/doc?id=1001", "it's a 'quote'"])
async def test_the_command_an_alert_names_finds_the_task(task: str, caplog: pytest.LogCaptureFixture) -> None:
    """The reconciliation fails a copy whose link expired: its ERROR names `python -m ops find` for the task;
    pasted into a shell as it is, that command finds the task (an id with a query, a quote, or a leading dash)."""
    import shlex
    from datetime import timedelta

    ops = Ops()
    await ops.accept(ops.world.export(task, expires_in=timedelta(minutes=30)))
    ops.world.clock.advance(timedelta(hours=2))
    caplog.set_level(logging.INFO, logger="receiver")
    await ops.reconcile()
    [line] = [
        r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and "python -m ops find" in r.getMessage()
    ]
    command = line[line.index("python -m ops find") :].split(" tells its story")[0]
    found = await ops(*shlex.split(command)[3:])
    assert found.code != USAGE and "1 delivery(ies)" in found.out, (command, found.out, found.err)


@pytest.mark.parametrize("task", ["AccountKeyRotation-7", "sharedaccesskeys-review"])
async def test_a_task_id_holding_a_key_word_but_no_key_is_found_as_the_alerts_name_it(task: str) -> None:
    """Only an id that holds a key (the word, then `=` or `:`) is refused; the bare word is an id like any other,
    and the command the receiver's alerts print for it runs."""
    ops = Ops()
    answer = await ops.world.post(ops.world.export(task))
    assert answer.status_code == 200 and answer.body["taskId"] == task, answer.body
    found = await ops("find", "--task", task)
    assert found.code == OK and "1 delivery(ies)" in found.out, (found.out, found.err)
    spaces = ("", "  ", " " * 17, "%20", "%2520", "\u00a0", "+", "%09", "%C2%A0", "\u200b", "%E2%80%8B" * 6, "%2B")
    disguised = ("AccountKey%25%33%44S3CRETKEY", "AccountKey\uff1dS3CRETKEY", "Account\u200bKey=S3CRETKEY")
    for keyed in (*(f"AccountKey{space}=S3CRETKEY" for space in spaces), *disguised):
        refused = await ops("find", "--task", f"{task};{keyed}")
        assert refused.code == USAGE and "S3CRETKEY" not in refused.out + refused.err, (keyed, refused)
