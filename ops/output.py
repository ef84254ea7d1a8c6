"""What a command returns, how it is printed (text or ``--json``), the progress bar, exit codes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TextIO, TypeVar

from tqdm import tqdm

from receiver.source import printable_id, redact_keeping

# Exit codes (README "Operator command line"): scripts branch on these.
OK = 0  # found / matches / done
NOT_FOUND = 1  # nothing found, a problem, or work left undone (said why); --alert: something listed
USAGE = 2  # bad command line (argparse's own code)
STORAGE = 3  # cannot connect, not allowed, or storage failed
INTERRUPTED = 130

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Result:
    """A command's outcome: the exit code, the data ``--json`` prints, and the text people read."""

    code: int
    data: dict[str, Any]
    text: list[str] = field(default_factory=list)

    def write(self, out: TextIO, *, as_json: bool) -> None:
        """Printed redacted, whatever a record, a blob name or an argument holds (no SAS, no key), but for the
        task and workspace ids the data names, shown whole when they hold no secret: an id keeps its URL query
        (``ref://erp/doc?id=7`` and ``?id=8`` are two tasks), and ``--task`` needs it as it is."""
        ids = _printable_ids(self.data)
        if as_json:
            dumped = json.dumps(self.data, indent=2, ensure_ascii=False)
            out.write(redact_keeping(dumped, [json.dumps(value, ensure_ascii=False)[1:-1] for value in ids]) + "\n")
        else:
            out.write("".join(f"{redact_keeping(line, ids)}\n" for line in self.text))


def _printable_ids(data: Any) -> list[str]:
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("taskId", "workspaceId") and isinstance(item, str) and item and printable_id(item):
                    found.add(item)
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(data)
    return sorted(found)


class Progress(Protocol):
    def update(self, n: float | None = 1) -> bool | None: ...
    def close(self) -> None: ...


class NoProgress:
    def update(self, n: float | None = 1) -> bool | None:
        return None

    def close(self) -> None:
        return None


@dataclass
class Console:
    """Where a command's progress goes: a bar on stderr, only when stderr is a terminal and the
    output is not JSON (stdout stays clean for scripts either way)."""

    err: TextIO
    as_json: bool

    @property
    def interactive(self) -> bool:
        return not self.as_json and self.err.isatty()

    def progress(self, description: str, *, total: int | None = None, unit: str = "blob") -> Progress:
        if not self.interactive:
            return NoProgress()
        bar: Progress = tqdm(total=total, desc=description, unit=unit, file=self.err, leave=False, dynamic_ncols=True)
        return bar


async def each(
    items: Iterable[T], work: Callable[[T], Awaitable[R]], progress: Progress, *, concurrency: int = 8
) -> list[R]:
    """``work`` on every item, a few at a time (storage reads), in the items' order."""
    gate = asyncio.Semaphore(concurrency)

    async def one(item: T) -> R:
        async with gate:
            result = await work(item)
        progress.update(1)
        return result

    try:
        return list(await asyncio.gather(*(one(item) for item in items)))
    finally:
        progress.close()


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def age_seconds(received: str | None, now: datetime) -> int | None:
    when = parse_time(received)
    return None if when is None or when.tzinfo is None else max(0, int((now - when).total_seconds()))


def human_age(seconds: int | None) -> str:
    if seconds is None:
        return "?"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Left-aligned columns; the last column is never padded."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    return [
        "  ".join([*(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])), row[-1]]).rstrip()
        for row in [header, *rows]
    ]
