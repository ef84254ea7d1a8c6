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

from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError

from function_app import VERIFICATION_QUEUE
from receiver.settings import SettingsError
from receiver.source import redact
from receiver.store import StoreError

from . import smoke
from .connect import (
    ConfigError,
    add_destination_options,
    add_host_options,
    destination_configured,
    host_configured,
    open_host_queues,
    open_store,
)
from .deliveries import check, deliveries_in, find
from .output import INTERRUPTED, STORAGE, USAGE, Console, Result
from .poison import replay

EXIT_CODES = """exit codes:
  0  found / the manifest matches / done
  1  nothing found, a mismatch, or something left undone (the output says what)
  2  bad command line
  3  cannot connect, not allowed, or storage failed"""

DESCRIPTION = """Operator command line of the SmartDocumentor receiver: find a document, list pending
and failed deliveries, check (and repair) a manifest, move poisoned verification messages back.
Connects with a connection string or, with --account-url, as you (DefaultAzureCredential: az login)."""


COMMANDS = ("find", "pending", "failed", "check", "replay-poison", "smoke")


def _hide_values(message: str) -> str:
    """argparse's error message without any value the operator typed: a mistyped option's value may
    be a connection string with its account key, or a SAS (issue 16). Option names stay."""
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
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(USAGE, f"{self.prog}: error: {_hide_values(message)}\n")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _minutes(text: str) -> timedelta:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more minutes")
    return timedelta(minutes=value)


def _since(text: str) -> datetime:
    """MINUTES ago, or an ISO time (UTC when it names no zone)."""
    try:
        minutes = float(text)
    except ValueError:
        minutes = None
    if minutes is not None:
        if minutes < 0:
            raise argparse.ArgumentTypeError("must be 0 or more minutes, or an ISO time")
        return datetime.now(UTC) - timedelta(minutes=minutes)
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError("give minutes (60) or an ISO time (2026-03-02T08:00Z)") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


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
        summary="the stored file(s) of a task or workspace, newest first, with each delivery's story",
        description="""The stored file(s) of a task (or of a workspace), newest first: blob URL (never a
query), size, Content-Type, the manifest (status, when received, completed or failed and why,
which exports it replaced, its history), and whether manifest and blob agree. One Find Blobs by
Tags query; the ids are folded to the tag alphabet as the receiver folds them, then confirmed
against each manifest's real ids. Exit 1 when nothing is found or something is inconsistent.""",
        example="python -m ops find --task 7d1e0c8a-1b2c-4d5e-8f90-a1b2c3d4e5f6",
    )
    found.add_argument("--task", metavar="TASK_ID", help="the task's taskId")
    found.add_argument("--workspace", metavar="WORKSPACE_ID", help="the workspaceId (alone: all its documents)")
    found.add_argument("--max", type=_positive, default=100, help="read at most the newest N documents (100)")

    for status, what in (("pending", "still copying"), ("failed", "failed for good")):
        when = "received" if status == "pending" else "failed (received, for manifests without failedAt)"
        listed = _command(
            commands,
            status,
            summary=f"deliveries whose manifest says {status} ({what}): a summary, then the oldest",
            description=f"""Deliveries whose manifest says copyStatus {status}, oldest first: a summary line
(counts by age, expired links), then one narrow row each. Built from the manifests' index tags
(one Find Blobs by Tags query per 5000, no download), then only the rows shown are read.
AGE: time since the delivery was {when}. Exit 0 also when nothing is found (the healthy case);
with --alert, exit 1 when anything is found (something needs a person).""",
            example=f"python -m ops {status} --since 60 --alert",
        )
        listed.add_argument(
            "--older-than", type=_minutes, default=timedelta(0), metavar="MINUTES", help=f"{when} before now - MINUTES"
        )
        listed.add_argument(
            "--since", type=_since, metavar="WHEN", help=f"{when} at or after WHEN: MINUTES ago or an ISO time"
        )
        listed.add_argument(
            "--max", type=_positive, default=100, help="show (and read) at most the oldest N rows (100)"
        )
        listed.add_argument(
            "--alert", action="store_true", help="exit 1 when anything is found, 0 when nothing (for cron, Logic Apps)"
        )

    checked = _command(
        commands,
        "check",
        summary="does a manifest describe its blob; --repair fixes what can be fixed",
        description="""Does the manifest <blob>.json describe the blob next to it (the same delivery hash,
and a status that agrees with the copy)? Before saying a delivery cannot finish it looks at the
verification queue, its poison queue (give the host storage) and the link's expiry. Every
inconsistent state exits 1 and names the next command. With --repair: a finished copy is
recorded, a stale or missing manifest is rebuilt from the blob (receivedAt from the blob's own
times, marked repaired), and a delivery nothing can finish any more is marked failed. Every
write is conditional on the manifest as read and appends an operator entry to its history.""",
        example="python -m ops check '2f0c7a55-.../7d1e0c8a-.../Contrato.pdf' --repair "
        '--host-connection-string "$HOST_CS"',
    )
    checked.add_argument("blob", help="the blob's name (or container/name, its URL, its manifest's name)")
    checked.add_argument("--repair", action="store_true", help="make the manifest describe the blob")

    replayed = _command(
        commands,
        "replay-poison",
        summary="move poisoned verification messages back; --dry-run says what each will do",
        description=f"""Moves messages from <queue>-poison back to <queue> ({VERIFICATION_QUEUE}):
receive, send, then delete (a crash duplicates a message, never loses one). For each message it
says, from what is stored now (give the destination too), whether the queue function will finish
it, find it superseded, or fail it (and why). Prints the taskId, workspaceId and blob of each,
never a message's content (it holds the export link with its SAS).""",
        example="python -m ops replay-poison --dry-run",
    )
    replayed.add_argument("--dry-run", action="store_true", help="show what would happen (at most 32); change nothing")
    replayed.add_argument("--max", type=_positive, default=100, help="move at most N messages (100)")

    smoke.add_arguments(
        commands.add_parser(
            "smoke",
            help="after azd up: prove the deployment end to end (ops/smoke.py)",
            description=smoke.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    return parser


async def _dispatch(args: argparse.Namespace, console: Console, environ: Mapping[str, str]) -> Result:
    now = datetime.now(UTC)
    queue_name = args.queue or VERIFICATION_QUEUE
    if args.command == "replay-poison":
        queues = open_host_queues(args, environ)
        store = open_store(args, environ) if destination_configured(args, environ) else None
        try:
            return await replay(
                queues.queue(queue_name),
                queues.queue(f"{queue_name}-poison"),
                store,
                console,
                dry_run=args.dry_run,
                limit=args.max,
                now=now,
            )
        finally:
            await queues.close()
            if store is not None:
                await store.close()
    store = open_store(args, environ)
    try:
        if args.command == "find":
            return await find(store, console, task_id=args.task, workspace_id=args.workspace, limit=args.max, now=now)
        if args.command in ("pending", "failed"):
            return await deliveries_in(
                store,
                console,
                status=args.command,
                older_than=args.older_than,
                since=args.since,
                limit=args.max,
                alert=args.alert,
                now=now,
            )
        host = open_host_queues(args, environ) if host_configured(args, environ) else None
        try:
            return await check(store, args.blob, repair=args.repair, now=now, queues=host, queue_name=queue_name)
        finally:
            if host is not None:
                await host.close()
    finally:
        await store.close()


def _storage_message(exc: Exception) -> str:
    """What went wrong, for a person at a terminal; never a URL query (redacted anyway)."""
    if isinstance(exc, StoreError):
        message = exc.message
        if exc.kind == "misconfigured" and exc.code == "AuthenticationFailed":
            # A request signed with a wrong (or rotated) account key: roles and az login are not the cure.
            return (
                "Azure Storage did not accept the account key (or SAS) in the connection string "
                "(AuthenticationFailed): it is wrong or was rotated. Copy the connection string again "
                "(portal: the storage account's Access keys), or use --account-url and sign in (az login)."
            )
        if exc.kind == "misconfigured":
            message += (
                " From an operator's machine: sign in (az login) as someone with Storage Blob Data Owner on the "
                "container (Find Blobs by Tags and tags need it), or pass --connection-string."
            )
        return message
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
    if isinstance(exc, (ConfigError, SettingsError)):
        return str(exc)
    return f"Azure Storage could not be reached ({type(exc).__name__})."


async def run(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Parse ``argv``, run the command, print its result; returns the exit code (never raises for
    a usage or storage problem). The entry point tests call in-process."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): argparse has printed it
        return exc.code if isinstance(exc.code, int) else USAGE
    if args.command == "smoke":
        return await asyncio.to_thread(smoke.smoke, args, os.environ if environ is None else environ, out)
    if args.command == "find" and args.task is None and args.workspace is None:
        err.write("python -m ops find: error: give --task, --workspace or both\n")
        return USAGE
    for one, other in (("connection_string", "account_url"), ("host_connection_string", "host_queue_url")):
        if getattr(args, one) and getattr(args, other):
            first, second = (f"--{name.replace('_', '-')}" for name in (one, other))
            err.write(f"python -m ops: error: give {first} or {second}, not both\n")
            return USAGE
    args.json = bool(args.json)
    console = Console(err, args.json)
    try:
        result = await _dispatch(args, console, os.environ if environ is None else environ)
    except (ConfigError, SettingsError, StoreError, AzureError) as exc:
        message = redact(_storage_message(exc))
        kind = "config" if isinstance(exc, ConfigError | SettingsError) else "storage"
        if args.json:
            out.write(json.dumps({"error": kind, "message": message}) + "\n")
        err.write(f"error: {message}\n")
        return STORAGE
    result.write(out, as_json=args.json)
    return result.code


def main(argv: Sequence[str] | None = None) -> int:
    """The console entry point: ``python -m ops``."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    # The command prints storage failures itself; the SDK's and the store's warnings would repeat them.
    for name in ("azure", "receiver.store"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        return asyncio.run(run(argv))
    except KeyboardInterrupt:
        return INTERRUPTED
