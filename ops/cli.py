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
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TextIO

from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError

from function_app import VERIFICATION_QUEUE
from receiver.settings import SettingsError
from receiver.source import redact
from receiver.store import StoreError

from . import smoke
from .connect import ConfigError, add_destination_options, add_host_options, open_host_queues, open_store
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


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    *,
    summary: str,
    description: str,
    example: str,
    host: bool = False,
) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=f"example:\n  {example}\n\n{EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="JSON on stdout for scripts (no progress bar)")
    if host:
        add_host_options(parser)
    else:
        add_destination_options(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ops",
        description=DESCRIPTION,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    found = _command(
        commands,
        "find",
        summary="the stored file(s) of a task or workspace",
        description="""The stored file(s) of a task (or of a workspace): blob URL (never a query), size,
Content-Type, manifest summary, and whether the manifest matches the blob. One Find Blobs by
Tags query; the ids are folded to the tag alphabet as the receiver folds them, then confirmed
against each manifest's real ids.""",
        example="python -m ops find --task 7d1e0c8a-1b2c-4d5e-8f90-a1b2c3d4e5f6",
    )
    found.add_argument("--task", metavar="TASK_ID", help="the task's taskId")
    found.add_argument("--workspace", metavar="WORKSPACE_ID", help="the workspaceId (alone: all its documents)")
    found.add_argument("--max", type=_positive, default=100, help="read at most this many documents (100)")

    for status, what in (("pending", "still copying"), ("failed", "failed for good")):
        listed = _command(
            commands,
            status,
            summary=f"deliveries whose manifest says {status} ({what}), oldest first",
            description=f"""Deliveries whose manifest says copyStatus {status}, oldest first, with their age.
One Find Blobs by Tags query (on accounts without index tags: a listing of the container).""",
            example=f"python -m ops {status} --older-than 60",
        )
        listed.add_argument(
            "--older-than", type=_minutes, default=timedelta(0), metavar="MINUTES", help="received before now - MINUTES"
        )
        listed.add_argument("--max", type=_positive, default=1000, help="show at most the oldest N (1000)")

    checked = _command(
        commands,
        "check",
        summary="does a manifest describe its blob; --repair fixes it",
        description="""Does the manifest <blob>.json describe the blob next to it (the same delivery hash,
and a status that agrees with the copy)? With --repair: a pending manifest is settled with
the reconciliation's rules; any other stale one is rewritten from the blob's own metadata
and tags. Every write is conditional on the manifest as read.""",
        example="python -m ops check '2f0c7a55-.../7d1e0c8a-.../Contrato.pdf' --repair",
    )
    checked.add_argument("blob", help="the blob's name (or container/name, its URL, its manifest's name)")
    checked.add_argument("--repair", action="store_true", help="make the manifest describe the blob")

    replayed = _command(
        commands,
        "replay-poison",
        summary="move poisoned verification messages back to the verification queue",
        description=f"""Moves messages from <queue>-poison back to <queue> ({VERIFICATION_QUEUE}):
receive, send, then delete (a crash duplicates a message, never loses one). Prints the
taskId, workspaceId and blob of each, never a message's content (it holds the export link
with its SAS).""",
        example="python -m ops replay-poison --dry-run",
        host=True,
    )
    replayed.add_argument("--dry-run", action="store_true", help="show what would move (at most 32); change nothing")
    replayed.add_argument("--max", type=_positive, default=100, help="move at most N messages (100)")
    replayed.add_argument("--queue", default=VERIFICATION_QUEUE, help=f"the verification queue ({VERIFICATION_QUEUE})")

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
    if args.command == "replay-poison":
        queues = open_host_queues(args, environ)
        try:
            return await replay(
                queues.queue(args.queue),
                queues.queue(f"{args.queue}-poison"),
                console,
                dry_run=args.dry_run,
                limit=args.max,
                now=now,
            )
        finally:
            await queues.close()
    store = open_store(args, environ)
    try:
        if args.command == "find":
            return await find(store, console, task_id=args.task, workspace_id=args.workspace, limit=args.max, now=now)
        if args.command in ("pending", "failed"):
            return await deliveries_in(
                store, console, status=args.command, older_than=args.older_than, limit=args.max, now=now
            )
        return await check(store, args.blob, repair=args.repair, now=now)
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
        hint = (
            " Grant Storage Queue Data Contributor on the host storage account, or pass --host-connection-string."
            if exc.status_code in (401, 403)
            else ""
        )
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
