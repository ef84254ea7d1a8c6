"""``python -m ops COMMAND``: the operator command line (see README, "Operator command line").

Every command has ``--help`` and ``--json``; exit codes: 0 found / matches / done, 1 nothing found,
a mismatch or work left undone, 2 bad command line, 3 cannot connect or storage failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TextIO

from receiver.settings import Settings, SettingsError
from receiver.source import holds_key, holds_signature, redact, signatures_apart
from receiver.storage import StoreError
from receiver.verification import QUEUE as VERIFICATION_QUEUE

from . import commands, smoke, telemetry
from .commands import RECORDED_BEFORE_READ, Context
from .connect import (
    ConfigError,
    UsageError,
    add_destination_options,
    add_host_options,
    close_storage,
    host_configured,
    open_host_queues,
    open_storage,
    operator_settings,
)
from .output import INTERRUPTED, NOT_FOUND, STORAGE, USAGE, Console, Result
from .queues import HostQueue
from .records import Unreadable

EXIT_CODES = """exit codes:
  0  found and consistent / done / nothing listed
  1  nothing found, a problem (the output names the next command), or with --alert: something listed
  2  bad command line (the value is never repeated)
  3  cannot connect, not allowed, or storage failed"""

DESCRIPTION = """Operator command line of the SmartDocumentor receiver: a task's story from its task
record, pending and failed deliveries, check (and repair) a task as the reconciliation would, give
up a delivery, move poisoned verification messages back.
Connects with a connection string or, with --account-url, as you (DefaultAzureCredential: az login)."""


COMMANDS = ("find", "pending", "failed", "check", "fail", "replay-poison", "smoke")
# Rows pending and failed show (and task records they read) by default: a screenful. The first line
# counts them all; --max N shows more, at one record read a row.
LIST_MAX = 20


def _hide_values(message: str) -> str:
    """argparse's error message without any value the operator typed: a mistyped option's value may
    be a connection string with its account key, or a SAS. Option names stay."""
    prefix = "unrecognized arguments: "
    if message.startswith(prefix):
        tokens = message[len(prefix) :].split()
        options = [token.split("=", 1)[0] for token in tokens if token.startswith("--")]
        others = len(tokens) - len(options)
        shown = ", ".join(options) if options else ""
        extra = f"{' and ' if shown else ''}{others} other argument(s)" if others else ""
        return f"unrecognized {shown}{extra} (values are not shown)"
    if "invalid choice" in message:
        head = message.split("invalid choice", 1)[0]
        return f"{head}unknown command (choose from {', '.join(COMMANDS)})"
    if " value:" in message:
        message = message.split(" value:", 1)[0] + " value (not shown)"
    return re.sub(r"'.*'", "(value not shown)", message, flags=re.DOTALL)


class _Parser(argparse.ArgumentParser):
    last_error: str | None = None  # for --json: the same line as JSON on stdout

    def error(self, message: str) -> NoReturn:
        # One line (no usage block): what was wrong, never the value typed, and where to look.
        _Parser.last_error = f"{_hide_values(message)} (see {self.prog} --help)"
        self.exit(USAGE, f"{self.prog}: error: {_Parser.last_error}\n")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


# A hundred years of minutes: more is no age a delivery can have (and overflows a date).
_MAX_MINUTES = 100 * 366 * 24 * 60


def _minutes(text: str) -> timedelta:
    value = float(text)
    if not 0 <= value <= _MAX_MINUTES:  # NaN too
        raise argparse.ArgumentTypeError(f"must be 0 to {_MAX_MINUTES} minutes")
    return timedelta(minutes=value)


def _since(text: str) -> datetime | timedelta:
    """MINUTES ago, or an ISO time (UTC when it names no zone)."""
    try:
        minutes = float(text)
    except ValueError:
        minutes = None
    if minutes is not None:
        if not 0 <= minutes <= _MAX_MINUTES:  # NaN too
            raise argparse.ArgumentTypeError(f"must be 0 to {_MAX_MINUTES} minutes, or an ISO time")
        return timedelta(minutes=minutes)  # before the command's now (resolved by _dispatch)
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        return when.astimezone(UTC) if when.tzinfo is not None else when.replace(tzinfo=UTC)
    except OverflowError:  # a zone that moves it past year 1 or 9999
        raise argparse.ArgumentTypeError("give an ISO time between the years 1 and 9999 in UTC") from None
    except ValueError:
        raise argparse.ArgumentTypeError("give minutes (60) or an ISO time (2026-03-02T08:00Z)") from None


def _add_common(parser: argparse.ArgumentParser, *, default: Any) -> None:
    """Options every command takes, before or after the command's name."""
    parser.add_argument(
        "--json", action="store_true", default=default, help="JSON on stdout for scripts (no progress bar)"
    )
    add_destination_options(parser, default=default)
    add_host_options(parser, default=default)
    parser.add_argument(
        "--queue",
        default=default,
        help=f"the verification queue (default {VERIFICATION_QUEUE}); its poison queue is <queue>-poison",
    )


def _command(
    commands: argparse._SubParsersAction[_Parser],
    name: str,
    *,
    summary: str,
    description: str,
    example: str,
) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=f"example:\n  {example}\n\n{EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(parser, default=argparse.SUPPRESS)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m ops",
        description=DESCRIPTION,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(parser, default=None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    found = _command(
        commands,
        "find",
        summary="a task's whole story from its task record, or the tasks of a workspace",
        description="""--task: the task's record (.smartdocumentor/tasks/<workspace>/<task>.json): every delivery
in the order the receiver accepted it (short hash, blob, state, received, completed or failed and
why, history), which file is current, the names still to retire, whether the current file and its
manifest hold the current delivery, and what the reconciliation would do (receiver.machine.decide).
With the host storage options it looks for the task's messages in the verification queue and its
poison queue, and gives each delivery still copying a verdict (queued, poisoned, lost, expired,
adopt) instead of "unconfirmed". Without --workspace, one listing of the records' labels finds
the task's workspace. --workspace alone: the first --max tasks of the workspace (its records'
prefix, listed a page of --max at a time: N records read). Exit 1 when nothing is found or
something needs a person.""",
        example='python -m ops find --task 7d1e0c8a-1b2c-4d5e-8f90-a1b2c3d4e5f6 --host-connection-string "$HOST_CS"',
    )
    found.add_argument("--task", metavar="TASK_ID", help="the task's taskId")
    found.add_argument("--workspace", metavar="WORKSPACE_ID", help="the workspaceId (alone: its tasks)")
    found.add_argument("--max", type=_positive, default=100, help="--workspace alone: at most N tasks (100)")

    pending = _command(
        commands,
        "pending",
        summary="deliveries still copying past their time, oldest first",
        description="""Deliveries still copying past their time: received over --older-than minutes ago
(by default RECONCILE_AFTER_MINUTES, 10: when the reconciliation takes a copy as its own work),
oldest first. From the summary the last reconciliation run wrote
(.smartdocumentor/attention/pending.json: the tasks it saw copying), each confirmed from its task
record: only the records shown are read. It says when that run completed; a summary older than
its schedule allows (25 minutes by default) or none at all is a PROBLEM (exit 1): the safety net
is not running. AGE: since the delivery was received. The last column says why one will not finish
by itself (its link expired, or it waited past every try of its queue message; under a container
retention policy or legal hold that refused those tries, it names the policy: replay-poison once it
is lifted). Exit 0 also when nothing is listed; with --alert, exit 1 when anything is.""",
        example="python -m ops pending --older-than 60 --alert",
    )
    pending.add_argument(
        "--older-than",
        type=_minutes,
        default=None,
        metavar="MINUTES",
        help="received before now - MINUTES (default RECONCILE_AFTER_MINUTES, 10)",
    )
    pending.add_argument("--since", type=_since, metavar="WHEN", help="received at or after WHEN: MINUTES ago or ISO")
    pending.add_argument(
        "--max", type=_positive, default=LIST_MAX, help=f"show (and read) at most the oldest N tasks ({LIST_MAX})"
    )
    pending.add_argument("--alert", action="store_true", help="exit 1 when anything is listed (cron, Logic Apps)")

    failed = _command(
        commands,
        "failed",
        summary="every delivery that will not finish by itself",
        description="""Every delivery that will not finish by itself: failed in its task record (link expired,
source refused or gone, given up; a large re-export that failed after its 202 is listed while the
earlier file stays current), and deliveries still copying whose link expired or that waited past
every try of their queue message (under a container policy that refused those tries: named, to replay
once it is lifted). Failures are found by their markers
(.smartdocumentor/attention/failed/<hour>/..., one listing per hour of the window, or per day over a
day; kept 7 days: without --since, the last 7 days), copies that cannot finish by the last
reconciliation run's summary; each is confirmed from its task record, and only the records shown are
read. A missing or stale summary is a PROBLEM (exit 1), as in pending. Exit 0 also when nothing is
listed; with --alert, exit 1 when anything is.""",
        example="python -m ops failed --since 15 --alert",
    )
    failed.add_argument(
        "--since", type=_since, metavar="WHEN", help="failed (or stuck) at or after WHEN: MINUTES ago or ISO"
    )
    failed.add_argument(
        "--max", type=_positive, default=LIST_MAX, help=f"show (and read) at most the newest N tasks ({LIST_MAX})"
    )
    failed.add_argument("--alert", action="store_true", help="exit 1 when anything is listed (cron, Logic Apps)")

    checked = _command(
        commands,
        "check",
        summary="what the reconciliation would do to a task now; --repair does it",
        description="""Runs receiver.machine.decide on the task's record and the blob of the delivery still
copying, as the reconciliation does (a Sweep by the operator), and says what it would do: ADOPT
(the bytes are at the name: record it stored, write its manifest), EXPIRE (the link expired: fail
it), RETIRE (delete names a newer export replaced, If-Match), WAITING (copying with a valid link:
only its queue or poison message can finish it) or NOTHING; and whether the current file and its
manifest hold the current delivery. With --repair it runs the same loop as the reconciliation
(receiver.engine.run): every write conditional, each step in the record's history by operator.
--dry-run: say what --repair would do, change nothing. Exit 1 while something needs a person.""",
        example="python -m ops check --task 7d1e0c8a-1b2c-4d5e-8f90-a1b2c3d4e5f6 --repair",
    )
    checked.add_argument("--task", metavar="TASK_ID", required=True, help="the task's taskId")
    checked.add_argument("--workspace", metavar="WORKSPACE_ID", help="its workspaceId (found by a listing if omitted)")
    checked.add_argument("--repair", action="store_true", help="do what the reconciliation would do, now")
    checked.add_argument("--dry-run", action="store_true", help="with --repair: say what it would do, change nothing")

    given_up = _command(
        commands,
        "fail",
        summary="give up a delivery still copying (recorded failed with your reason)",
        description="""Marks the task's delivery still copying failed with REASON (a Sweep with give_up through
receiver.engine.run: in the record's history by operator, one ERROR log record). Refused while
its link is valid and a verification or poison message holds it, or while the queues cannot be
looked at (give the host storage options), unless --force, which the reason then records. A
delivery whose bytes are at its name is recorded stored instead.""",
        example="python -m ops fail --task 7d1e0c8a-... --reason 'customer re-exported by hand' "
        '--host-connection-string "$HOST_CS"',
    )
    given_up.add_argument("--task", metavar="TASK_ID", required=True, help="the task's taskId")
    given_up.add_argument("--workspace", metavar="WORKSPACE_ID", help="its workspaceId (found by a listing if omitted)")
    given_up.add_argument("--reason", required=True, help="why (kept in the record; one or two sentences, no secret)")
    given_up.add_argument("--force", action="store_true", help="even while a message or a valid link could finish it")

    replayed = _command(
        commands,
        "replay-poison",
        summary="move poisoned verification messages back; --dry-run says what each will do",
        description=f"""Moves messages from <queue>-poison back to <queue> ({VERIFICATION_QUEUE}):
receive, send, then delete (a crash duplicates a message, never loses one). For each message it
says what the queue function will do, by running its own steps (receiver.engine.run on the message's
Arrival) with every write kept in memory (give the destination options too): FINISH, DUPLICATE,
SUPERSEDED, WAITING or FAIL, and why. Prints the taskId, workspaceId and delivery of each, never a
message's content (it holds the export link with its SAS). A message nothing can read stays unless
--drop-unreadable deletes it (the queue function would drop it too).""",
        example="python -m ops replay-poison --dry-run",
    )
    replayed.add_argument("--dry-run", action="store_true", help="show what would happen (at most 32); change nothing")
    replayed.add_argument("--max", type=_positive, default=100, help="move at most N messages (100)")
    replayed.add_argument(
        "--drop-unreadable",
        action="store_true",
        help="delete the messages nothing can read (not a verification message: the queue function drops them too)",
    )

    smoke.add_arguments(
        commands.add_parser(
            "smoke",
            help="after azd up: prove the deployment end to end (ops/smoke.py)",
            description=smoke.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    return parser


# Arguments whose value the command line repeats or stores: one that holds a secret is refused whole.
_ECHOED = ("task", "workspace", "reason", "queue")
# Ids keep a URL's query (docs/reference.md, Secrets: `ref://erp/doc?id=1001` is a task id), and are printed whole
# (ops/output.py); a sig value in one is looked up as intake stores it, a key in one is refused.
_IDS = ("task", "workspace")


def _check_values(args: argparse.Namespace, err: TextIO) -> None:
    for name in _ECHOED:
        value = getattr(args, name, None)
        if not isinstance(value, str):
            continue
        if name in _IDS and holds_key(value):
            raise UsageError(f"--{name} holds what looks like a connection string or a SAS (not shown)")
        if name in _IDS and holds_signature(value):
            # An id as SmartDocumentor shows it, with a `sig` value in it: intake stored it with each such value
            # replaced by `sig=REDACTED~<hash>`; that form names the task (the value itself is never printed).
            value = signatures_apart(value)
            setattr(args, name, value)
            err.write(f"python -m ops: --{name} holds a sig value: looked up as the receiver stores it, {value}\n")
        secret = holds_signature(value) if name in _IDS else redact(value) != value or "sig=" in value.lower()
        if secret or holds_key(value):
            option = f"--{name.replace('_', '-')}"
            raise UsageError(f"{option} holds what looks like a connection string or a SAS (not shown)")


async def _dispatch(
    args: argparse.Namespace,
    console: Console,
    environ: Mapping[str, str],
    *,
    storage: Any,
    settings: Settings | None,
    queues: Mapping[str, HostQueue] | None,
    now: datetime,
) -> Result:
    queue_name = args.queue or VERIFICATION_QUEUE
    replaying = args.command == "replay-poison"
    injected = storage is not None
    if settings is None:
        settings = operator_settings(args, environ, need_destination=not replaying or _destination_given(args, environ))
    if storage is None and (not replaying or _destination_given(args, environ)):
        storage = open_storage(settings)
    host = None
    pair: tuple[HostQueue, HostQueue] | None = None
    if queues is not None:
        pair = (queues[queue_name], queues[f"{queue_name}-poison"])
    elif replaying or (args.command in ("find", "check", "fail") and host_configured(args, environ)):
        host = open_host_queues(args, environ)
        pair = host.pair(queue_name)
    if replaying and pair is None:
        raise ConfigError("replay-poison needs the host storage: pass --host-connection-string or --host-queue-url.")
    ctx = Context(storage=storage, settings=settings, queues=pair, now=now, console=console)
    since = getattr(args, "since", None)
    if isinstance(since, timedelta):
        args.since = now - since
    try:
        if args.command == "find":
            if args.task is not None:
                return await commands.find_task(ctx, args.task, args.workspace)
            return await commands.find_workspace(ctx, args.workspace, args.max)
        if args.command == "pending":
            return await commands.pending(
                ctx, older_than=args.older_than, since=args.since, limit=args.max, alert=args.alert
            )
        if args.command == "failed":
            return await commands.failed(ctx, since=args.since, limit=args.max, alert=args.alert)
        if args.command == "check":
            return await commands.check(ctx, args.task, args.workspace, repair=args.repair, dry_run=args.dry_run)
        if args.command == "fail":
            return await commands.fail(ctx, args.task, args.workspace, reason=args.reason, force=args.force)
        return await commands.replay(ctx, dry_run=args.dry_run, limit=args.max, drop_unreadable=args.drop_unreadable)
    finally:
        if host is not None:
            await host.close()
        if storage is not None and not injected:
            await close_storage(storage)


def _destination_given(args: argparse.Namespace, environ: Mapping[str, str]) -> bool:
    return bool(
        args.connection_string
        or args.account_url
        or environ.get("DESTINATION_CONNECTION_STRING")
        or environ.get("DESTINATION_ACCOUNT_URL")
    )


def _storage_message(exc: BaseException, *, signed_by: str | None = None) -> str:
    """What went wrong, for a person at a terminal (redacted by the caller anyway). ``signed_by``: the
    destination's connection string carries an account ``key`` or a ``sas`` (roles and az login do not
    apply to either)."""
    if isinstance(exc, StoreError):
        message = exc.message
        if exc.code == "AuthenticationFailed":
            # A request signed with a wrong (or rotated) account key: roles and az login are not the cure.
            return (
                "Azure Storage did not accept the account key (or SAS) in the connection string "
                "(AuthenticationFailed): it is wrong or was rotated. Copy the connection string again "
                "(portal: the storage account's Access keys), or use --account-url and sign in (az login)."
            )
        if exc.kind == "unavailable" and exc.code != RECORDED_BEFORE_READ:
            return (
                f"{message} Check the account name and endpoint in the connection string or --account-url, this "
                "machine's network path to it (VPN, proxy, the account's firewall), and the service's health "
                "(Azure status, the account's Resource health); then run the command again."
            )
        if exc.kind == "misconfigured" and signed_by == "sas":
            return (
                f"Azure Storage refused the request ({exc.code or exc.status}) signed by the SAS in the connection "
                "string: it expired, its signature is wrong, or it lacks a permission the command needs (read, list; "
                "write and delete for --repair and fail), or the account's firewall keeps this machine out. Make a new "
                "one, or use the account's connection string (portal: Access keys)."
            )
        if exc.kind == "misconfigured" and signed_by == "key":
            # A key signs every request, so a refusal is the key itself (the local emulator answers a wrong key
            # this way) or the account's network rules; the service's own answer to a wrong key is above.
            return (
                f"Azure Storage refused the request ({exc.code or exc.status}) although the connection string has "
                "an account key: the key is wrong or was rotated, or the account's firewall (Networking) keeps this "
                "machine out. Copy the connection string again (portal: the storage account's Access keys), and "
                "check Networking."
            )
        if exc.kind == "misconfigured" and message.startswith("The function could not get a token"):
            return (
                "Could not get a token for the storage account with DefaultAzureCredential: sign in (az login) as "
                "someone with Storage Blob Data Owner on the container, or pass --connection-string."
            )
        if exc.kind == "misconfigured":
            message += (
                " From an operator's machine: sign in (az login) as someone with Storage Blob Data Owner on the "
                "container, or pass --connection-string."
            )
        return message
    if isinstance(exc, (ConfigError, SettingsError, Unreadable)):
        return str(exc)
    try:
        from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
    except ImportError:  # pragma: no cover - the SDK is in requirements-ops.txt
        return f"Azure Storage could not be reached ({type(exc).__name__})."
    if isinstance(exc, ClientAuthenticationError) and getattr(exc, "status_code", None) is None:
        return "Could not get a token with DefaultAzureCredential: sign in with az login, or pass a connection string."
    if isinstance(exc, HttpResponseError) and exc.status_code is not None:
        raw = getattr(exc, "error_code", None)
        code = str(getattr(raw, "value", raw) or "")
        if code == "AuthenticationFailed":
            hint = (
                " The account key (or SAS) in the host storage connection string is wrong or was rotated: copy "
                "it again (the storage account's Access keys), or use --host-queue-url and sign in (az login)."
            )
        elif exc.status_code in (401, 403):
            hint = (
                " Grant Storage Queue Data Contributor on the host storage account (signed in with az login), "
                "or pass --host-connection-string."
            )
        else:
            hint = ""
        return f"Azure Storage answered {exc.status_code} {code}.{hint}"
    return (
        f"Azure Storage could not be reached ({type(exc).__name__}). Check the account name and endpoint, and this "
        "machine's network path to it (VPN, proxy, the account's firewall); then run the command again."
    )


def _usage(err: TextIO, message: str, *, json_out: TextIO | None = None) -> int:
    """One line on stderr; with --json (``json_out``), the same as one JSON document on stdout too."""
    if json_out is not None:
        json_out.write(json.dumps({"error": "usage", "message": redact(message)}) + "\n")
    err.write(f"python -m ops: error: {redact(message)}\n")
    return USAGE


def _asks_json(given: Sequence[str]) -> bool:
    """--json, or an abbreviation of it argparse accepts."""
    return any(len(item) > 3 and "--json".startswith(item) for item in given)


async def run(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    storage: Any = None,
    settings: Settings | None = None,
    queues: Mapping[str, HostQueue] | None = None,
    now: datetime | None = None,
) -> int:
    """Parse ``argv``, run the command, print its result; returns the exit code (never raises for
    a usage or storage problem). The entry point tests call in-process: ``storage`` (a
    :class:`receiver.storage.Storage`, with its ``settings``) and ``queues`` (by name) replace what
    the options would open; ``now`` replaces the clock."""
    out = out or sys.stdout
    err = err or sys.stderr
    environ = os.environ if environ is None else environ
    try:
        _Parser.last_error = None
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): argparse has printed it
        given = list(argv) if argv is not None else sys.argv[1:]
        if exc.code == USAGE and _asks_json(given) and _Parser.last_error is not None:
            out.write(json.dumps({"error": "usage", "message": redact(_Parser.last_error)}) + "\n")
        return exc.code if isinstance(exc.code, int) else USAGE
    if args.command == "smoke":
        return await asyncio.to_thread(smoke.smoke, args, environ, out)
    json_out = out if args.json else None
    if args.command == "find" and args.task is None and args.workspace is None:
        return _usage(err, "find needs --task, --workspace or both", json_out=json_out)
    if args.command == "check" and args.dry_run and not args.repair:
        args.repair = True  # --dry-run alone: what --repair would do
    for one, other in (("connection_string", "account_url"), ("host_connection_string", "host_queue_url")):
        if getattr(args, one) and getattr(args, other):
            first, second = (f"--{name.replace('_', '-')}" for name in (one, other))
            return _usage(err, f"give {first} or {second}, not both", json_out=json_out)
    args.json = bool(args.json)
    console = Console(err, args.json)
    try:
        _check_values(args, err)
        result = await _dispatch(
            args, console, environ, storage=storage, settings=settings, queues=queues, now=now or datetime.now(UTC)
        )
    except UsageError as exc:
        return _usage(err, str(exc), json_out=json_out)
    except Exception as exc:
        if not _is_storage_problem(exc):
            raise
        # The string actually used: an --account-url given wins over one in the environment.
        environment = "" if args.account_url else environ.get("DESTINATION_CONNECTION_STRING") or ""
        destination: str = args.connection_string or environment
        if not destination and settings is not None and settings.destination_connection_string is not None:
            destination = settings.destination_connection_string.get_secret_value()
        lowered = destination.lower()
        signed_by = "key" if "accountkey=" in lowered else "sas" if "sharedaccesssignature=" in lowered else None
        message = redact(_storage_message(exc, signed_by=signed_by))
        kind = "config" if isinstance(exc, ConfigError | SettingsError) else "storage"
        if isinstance(exc, Unreadable):  # storage answered; what it holds needs a person (exit 1, not 3)
            kind = "unreadable-record"
        if args.json:
            out.write(json.dumps({"error": kind, "message": message}) + "\n")
        err.write(f"error: {message}\n")
        return NOT_FOUND if isinstance(exc, Unreadable) else STORAGE
    result.write(out, as_json=args.json)
    return result.code


def _is_storage_problem(exc: Exception) -> bool:
    if isinstance(exc, (ConfigError, SettingsError, StoreError, Unreadable)):
        return True
    try:
        from azure.core.exceptions import AzureError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, AzureError)


def main(
    argv: Sequence[str] | None = None,
    *,
    storage: Any = None,
    settings: Settings | None = None,
    queues: Mapping[str, HostQueue] | None = None,
    now: datetime | None = None,
) -> int:
    """The console entry point: ``python -m ops`` (the keyword arguments are for tests, as in :func:`run`)."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    # The command prints storage failures itself; the SDK's and the store's warnings would repeat them.
    for name in ("azure", "receiver.store", "receiver.engine"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # The same records to Application Insights when APPLICATIONINSIGHTS_CONNECTION_STRING is set (never
    # in the function app: the worker configures it there), sent before the process exits.
    flush = telemetry.configure(os.environ)
    try:
        return asyncio.run(run(argv, storage=storage, settings=settings, queues=queues, now=now))
    except KeyboardInterrupt:
        return INTERRUPTED
    finally:
        if flush is not None:
            flush()
